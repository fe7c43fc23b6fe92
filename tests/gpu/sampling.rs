//! The sampling kernel (kernels/include/sampling.h for the definitions), tested by value where
//! the answer is unique (greedy, penalties, log-probs, top-n) and statistically and by
//! invariant where it is random (STYLE.md §11): about a million draws per case, histogram
//! cosine > 0.99 against the truncated distribution, never a token outside the allowed set,
//! and the same token for the same (seed, step) wherever the row sits in whatever batch.
//!
//! References use the kernel's own f32 z = x * (1 / temperature), so that ties and order in
//! the reference are exactly the kernel's, and f64 for every softmax and mass.

use std::f64::consts::PI;

use half::bf16;
use ocrvl::config::SamplingClass;
use ocrvl::kernels::sampling::{
    sample, PenaltyBatch, Sampler, SamplingBatch, SamplingOutputs, SamplingParams, STATUS_BAD_HISTORY,
    STATUS_BAD_LOGITS, STATUS_BAD_PARAMS, STATUS_OK,
};
use ocrvl::runtime::{DType, DeviceTensor, Gpu};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::common::ref_sampling as rs;
use crate::common::{gpu, rng};

const CLASSES: [SamplingClass; 2] = [SamplingClass::Base, SamplingClass::Rejection];
/// i32 outputs are poisoned with 0xFE bytes (0xFF would read as the legitimate token -1);
/// f32 outputs with 0xFF (NaN).
pub(super) const POISON_I32: i32 = 0xFEFE_FEFEu32 as i32;
/// Log-probs of f32 (and exactly held bf16) logits against f64: the kernel's f32 sum of up
/// to 103424 exponentials and one logf.
pub(super) const LOGPROB_ATOL: f64 = 1e-4;

fn normal(r: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = r.random_range(1e-12..1.0);
    let u2: f64 = r.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// The logits the kernel sees: z = x * (1 / t) in f32 (x itself for t < 1e-5), as f64.
pub(super) fn kernel_z(x: &[f32], temperature: f32) -> Vec<f64> {
    if temperature < 1e-5 {
        return x.iter().map(|&v| v as f64).collect();
    }
    let inv = 1.0f32 / temperature;
    x.iter().map(|&v| (v * inv) as f64).collect()
}

/// Uploads logits in `dtype`; returns the tensor and the values it holds.
pub(super) fn device_logits(g: &Gpu, dtype: DType, dims: &[usize], vals: &[f32]) -> (DeviceTensor, Vec<f32>) {
    match dtype {
        DType::BF16 => {
            let v: Vec<bf16> = vals.iter().map(|&x| bf16::from_f32(x)).collect();
            (
                DeviceTensor::from_host(g, dims, &v).unwrap(),
                v.iter().map(|x| x.to_f32()).collect(),
            )
        }
        _ => (DeviceTensor::from_host(g, dims, vals).unwrap(), vals.to_vec()),
    }
}

fn read_logits(g: &Gpu, t: &DeviceTensor) -> Vec<f32> {
    match t.dtype() {
        DType::BF16 => t.to_host::<bf16>(g).unwrap().iter().map(|x| x.to_f32()).collect(),
        _ => t.to_host::<f32>(g).unwrap(),
    }
}

/// Poisoned output buffers (also used by sampling_greedy.rs).
pub(super) struct Out {
    token: DeviceTensor,
    logprob: DeviceTensor,
    status: DeviceTensor,
    top: Option<(DeviceTensor, DeviceTensor)>,
}

pub(super) struct Host {
    pub(super) token: Vec<i32>,
    pub(super) logprob: Vec<f32>,
    pub(super) status: Vec<i32>,
    pub(super) top_ids: Vec<i32>,
    pub(super) top_lps: Vec<f32>,
}

impl Out {
    pub(super) fn new(g: &Gpu, batch: usize, n_top: usize) -> Out {
        let poisoned = |dtype: DType, dims: &[usize]| {
            let mut t = DeviceTensor::alloc(g, dtype, dims).unwrap();
            let byte = if dtype == DType::I32 { 0xFE } else { 0xFF };
            t.view_mut().fill_bytes(g, byte).unwrap();
            t
        };
        Out {
            token: poisoned(DType::I32, &[batch]),
            logprob: poisoned(DType::F32, &[batch]),
            status: poisoned(DType::I32, &[batch]),
            top: (n_top > 0).then(|| {
                (
                    poisoned(DType::I32, &[batch, n_top]),
                    poisoned(DType::F32, &[batch, n_top]),
                )
            }),
        }
    }

    pub(super) fn views(&mut self) -> SamplingOutputs<'_> {
        SamplingOutputs {
            token: self.token.view_mut(),
            logprob: self.logprob.view_mut(),
            status: self.status.view_mut(),
            top: self.top.as_mut().map(|(a, b)| (a.view_mut(), b.view_mut())),
        }
    }

    /// Downloads and checks that every element was written.
    pub(super) fn read(&self, g: &Gpu) -> Host {
        let h = Host {
            token: self.token.to_host(g).unwrap(),
            logprob: self.logprob.to_host(g).unwrap(),
            status: self.status.to_host(g).unwrap(),
            top_ids: self.top.as_ref().map_or(vec![], |(a, _)| a.to_host(g).unwrap()),
            top_lps: self.top.as_ref().map_or(vec![], |(_, b)| b.to_host(g).unwrap()),
        };
        for (i, (&t, &s)) in h.token.iter().zip(&h.status).enumerate() {
            assert!(t != POISON_I32 && s != POISON_I32, "row {i}: token or status unwritten");
            assert!(!h.logprob[i].is_nan(), "row {i}: logprob unwritten (NaN)");
        }
        for (i, (&id, &lp)) in h.top_ids.iter().zip(&h.top_lps).enumerate() {
            assert!(id != POISON_I32 && !lp.is_nan(), "top entry {i} unwritten");
        }
        h
    }
}

fn run(
    g: &Gpu,
    sampler: &mut Sampler,
    class: SamplingClass,
    logits: &mut DeviceTensor,
    params: &[SamplingParams],
    histories: &[&[i32]],
    n_top: usize,
) -> Host {
    sampler.set_batch(g, params, histories).unwrap();
    let mut out = Out::new(g, params.len(), n_top);
    sampler
        .sample(g, class, &mut logits.view_mut(), &mut out.views())
        .unwrap();
    out.read(g)
}

/// Checks a row's top-n against the reference order and log-softmax.
fn check_top(what: &str, h: &Host, row: usize, n: usize, z: &[f64]) {
    let order = rs::order_desc(z);
    let ls = rs::log_softmax(z);
    for j in 0..n {
        let (id, lp) = (h.top_ids[row * n + j], h.top_lps[row * n + j]);
        if j < order.len() {
            assert_eq!(id, order[j] as i32, "{what}: row {row} top {j}");
            assert!(
                (lp as f64 - ls[order[j]]).abs() <= LOGPROB_ATOL,
                "{what}: row {row} top {j}: logprob {lp} vs {}",
                ls[order[j]]
            );
        } else {
            assert_eq!(
                (id, lp),
                (-1, f32::NEG_INFINITY),
                "{what}: row {row} top {j} past the finite logits"
            );
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn greedy_is_the_lowest_index_argmax() {
    let g = gpu();
    let mut r = rng(0x5A17);
    let mut sampler = Sampler::new(&g, 256, 0).unwrap();
    sampler.set_greedy_kernel(true);
    // 103424: the model; 32000 and 111: other vocabularies; 103423 and 111: rows that are not
    // 16-byte aligned (scalar loads).
    for dtype in [DType::F32, DType::BF16] {
        for &(batch, vocab) in &[(1usize, 103424usize), (7, 32000), (83, 111), (256, 103424), (5, 103423)] {
            let mut vals: Vec<f32> = (0..batch * vocab).map(|_| r.random_range(-8.0f32..8.0)).collect();
            let mut params = Vec::with_capacity(batch);
            for b in 0..batch {
                let row = &mut vals[b * vocab..(b + 1) * vocab];
                // Planted maxima (exact in bf16): one to three copies, the last index in some rows.
                let top = 9.0 + 0.5 * (b % 3) as f32;
                for _ in 0..1 + b % 3 {
                    row[r.random_range(0..vocab)] = top;
                }
                if b % 5 == 4 {
                    row[vocab - 1] = top + 1.0;
                }
                params.push(match b % 4 {
                    0 => SamplingParams::greedy(),
                    1 => SamplingParams {
                        temperature: 1e-6,
                        top_p: 0.5,
                        ..Default::default()
                    },
                    2 => SamplingParams {
                        temperature: 0.8,
                        top_k: 1,
                        seed: b as u64,
                        ..Default::default()
                    },
                    _ => SamplingParams {
                        temperature: 0.0,
                        top_k: 50,
                        top_p: 0.3,
                        ..Default::default()
                    },
                });
            }
            let (mut logits, held) = device_logits(&g, dtype, &[batch, vocab], &vals);
            for class in CLASSES {
                let h = run(&g, &mut sampler, class, &mut logits, &params, &[], 0);
                for b in 0..batch {
                    let what = format!("{dtype} batch {batch} vocab {vocab} {class:?} row {b}");
                    let z = kernel_z(&held[b * vocab..(b + 1) * vocab], params[b].temperature);
                    let want = rs::argmax_lowest(&z);
                    assert_eq!(h.status[b], STATUS_OK, "{what}");
                    assert_eq!(h.token[b], want as i32, "{what}");
                    let lp = rs::log_softmax(&z)[want];
                    assert!(
                        (h.logprob[b] as f64 - lp).abs() <= LOGPROB_ATOL,
                        "{what}: logprob {} vs {lp}",
                        h.logprob[b]
                    );
                }
            }
        }
    }
}

/// One statistical case: every one of `rows` rows holds the same logits; launch l gives row b
/// the step l * rows + b, so that the draws are independent.
struct StatCase {
    name: &'static str,
    temperature: f32,
    top_k: usize,
    top_p: f64,
}

fn statistics_for_vocab(vocab: usize) {
    const ROWS: usize = 256;
    const LAUNCHES: usize = 4096; // 2^20 draws per case
    let g = gpu();
    let mut r = rng(0x57A7 + vocab as u64);
    // A: continuous logits, no ties; B: logits on a 0.25 grid, so that the top-p boundary falls
    // between tie groups whose mass is large against f32 error.
    let a: Vec<f32> = (0..vocab).map(|_| (2.0 * normal(&mut r)) as f32).collect();
    let b: Vec<f32> = (0..vocab)
        .map(|_| ((normal(&mut r) * 8.0).round() / 4.0) as f32)
        .collect();
    let small = vocab < 1000;
    let rep = |v: &[f32]| -> Vec<f32> { (0..ROWS).flat_map(|_| v.iter().cloned()).collect() };
    let (mut dev_a, _) = device_logits(&g, DType::F32, &[ROWS, vocab], &rep(&a));
    let (mut dev_b, _) = device_logits(&g, DType::F32, &[ROWS, vocab], &rep(&b));
    let steps: Vec<i32> = (0..LAUNCHES * ROWS).flat_map(|i| [i as i32, 0]).collect();
    let steps = DeviceTensor::from_host(&g, &[LAUNCHES * ROWS, 2], &steps).unwrap();
    let mut tokens = DeviceTensor::alloc(&g, DType::I32, &[LAUNCHES * ROWS]).unwrap();
    let mut logprobs = DeviceTensor::alloc(&g, DType::F32, &[LAUNCHES * ROWS]).unwrap();
    let mut statuses = DeviceTensor::alloc(&g, DType::I32, &[LAUNCHES * ROWS]).unwrap();

    let za = kernel_z(&a, 1.0);
    let zb7 = kernel_z(&b, 0.7);
    let zb = kernel_z(&b, 1.0);
    let (p_small, m_small) = rs::safe_top_p(&kernel_z(&a, 0.7), 0.3);
    let (p_90, m_90) = rs::safe_top_p(&zb7, 0.9);
    let (p_95, m_95) = rs::safe_top_p(&zb, 0.95);
    for (p, margin) in [(p_small, m_small), (p_90, m_90), (p_95, m_95)] {
        assert!(
            margin > 2e-4,
            "test distribution: top_p {p} has a margin of only {margin}"
        );
    }
    // The first k from 20 (50) whose boundary gap dwarfs f32 error.
    let k0 = if small { 20 } else { 50 };
    let k_small = (k0..k0 + 40)
        .find(|&k| rs::top_k_gap(&za, k) > 1e-3)
        .expect("test distribution: no top-k boundary with a gap");
    let cases = [
        (
            StatCase {
                name: "none",
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
            },
            false,
        ),
        (
            StatCase {
                name: "top_k",
                temperature: 1.0,
                top_k: k_small,
                top_p: 1.0,
            },
            false,
        ),
        (
            StatCase {
                name: "top_p small",
                temperature: 0.7,
                top_k: 0,
                top_p: p_small,
            },
            false,
        ),
        (
            StatCase {
                name: "top_p",
                temperature: 0.7,
                top_k: 0,
                top_p: p_90,
            },
            true,
        ),
        (
            StatCase {
                name: "top_k and top_p",
                temperature: 1.0,
                top_k: if small { 60 } else { 1000 },
                top_p: p_95,
            },
            true,
        ),
    ];
    for (case, on_b) in &cases {
        let x = if *on_b { &b } else { &a };
        let z = kernel_z(x, case.temperature);
        let target = rs::truncated(&z, case.top_k, case.top_p);
        let allowed = rs::allowed(&z, case.top_k, case.top_p);
        let ls = rs::log_softmax(&z);
        for class in CLASSES {
            let what = format!("vocab {vocab} {} {class:?}", case.name);
            // "none" also checks that top_k >= vocab and top_p >= 1 mean no truncation.
            let top_k: Vec<i32> = (0..ROWS)
                .map(|i| {
                    if case.name == "none" && i % 2 == 1 {
                        vocab as i32
                    } else {
                        case.top_k as i32
                    }
                })
                .collect();
            let top_p: Vec<f32> = (0..ROWS)
                .map(|i| {
                    if case.name == "none" && i % 2 == 1 {
                        1.5
                    } else {
                        case.top_p as f32
                    }
                })
                .collect();
            let temperature = DeviceTensor::from_host(&g, &[ROWS], &vec![case.temperature; ROWS]).unwrap();
            let top_k = DeviceTensor::from_host(&g, &[ROWS], &top_k).unwrap();
            let top_p = DeviceTensor::from_host(&g, &[ROWS], &top_p).unwrap();
            let seed_words: Vec<i32> = (0..ROWS).flat_map(|_| [0x1234_5678, class as i32 + 1]).collect();
            let seed = DeviceTensor::from_host(&g, &[ROWS, 2], &seed_words).unwrap();
            tokens.view_mut().fill_bytes(&g, 0xFE).unwrap();
            statuses.view_mut().fill_bytes(&g, 0xFE).unwrap();
            let logits = if *on_b { &mut dev_b } else { &mut dev_a };
            for l in 0..LAUNCHES {
                let params = SamplingBatch {
                    temperature: temperature.view(),
                    top_k: top_k.view(),
                    top_p: top_p.view(),
                    seed: seed.view(),
                    step: steps.view().narrow0(l * ROWS, ROWS).unwrap(),
                    penalties: None,
                };
                let mut out = SamplingOutputs {
                    token: tokens.view_mut().narrow0(l * ROWS, ROWS).unwrap(),
                    logprob: logprobs.view_mut().narrow0(l * ROWS, ROWS).unwrap(),
                    status: statuses.view_mut().narrow0(l * ROWS, ROWS).unwrap(),
                    top: None,
                };
                sample(&g, class, &mut logits.view_mut(), &params, &mut out, None).unwrap();
            }
            let toks: Vec<i32> = tokens.to_host(&g).unwrap();
            let lps: Vec<f32> = logprobs.to_host(&g).unwrap();
            let sts: Vec<i32> = statuses.to_host(&g).unwrap();
            let mut hist = vec![0f64; vocab];
            for (i, (&t, &s)) in toks.iter().zip(&sts).enumerate() {
                assert_eq!(s, STATUS_OK, "{what}: draw {i}");
                assert!(t >= 0 && (t as usize) < vocab, "{what}: draw {i} is token {t}");
                assert!(
                    allowed[t as usize],
                    "{what}: draw {i} is token {t}, outside the allowed set"
                );
                hist[t as usize] += 1.0;
                if i % 997 == 0 {
                    assert!(
                        (lps[i] as f64 - ls[t as usize]).abs() <= LOGPROB_ATOL,
                        "{what}: draw {i} logprob"
                    );
                }
            }
            let cos = rs::cosine(&hist, &target);
            eprintln!(
                "{what}: cosine {cos:.5}, {} allowed",
                allowed.iter().filter(|&&x| x).count()
            );
            assert!(cos > 0.99, "{what}: histogram cosine {cos}");
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn statistics_vocab_111() {
    statistics_for_vocab(111);
}

#[test]
#[ignore = "needs GPU"]
fn statistics_vocab_32000() {
    statistics_for_vocab(32000);
}

#[test]
#[ignore = "needs GPU"]
fn statistics_vocab_103424() {
    statistics_for_vocab(103424);
}

#[test]
#[ignore = "needs GPU"]
fn same_seed_and_step_give_the_same_token_in_any_batch() {
    let g = gpu();
    let mut r = rng(0x5EED);
    let mut sampler = Sampler::new(&g, 256, 0).unwrap();
    for &vocab in &[32000usize, 103424] {
        // The target row: grid logits (large tie groups, top-p sets that overflow the list)
        // in half the trials' parameters, continuous ones otherwise.
        let target: Vec<f32> = (0..vocab)
            .map(|_| ((normal(&mut r) * 8.0).round() / 4.0) as f32)
            .collect();
        let mut big: Vec<f32> = (0..256 * vocab).map(|_| (3.0 * normal(&mut r)) as f32).collect();
        big[200 * vocab..201 * vocab].copy_from_slice(&target);
        let mut seven: Vec<f32> = big[..7 * vocab].to_vec();
        seven[3 * vocab..4 * vocab].copy_from_slice(&target);
        let (mut one_dev, _) = device_logits(&g, DType::F32, &[1, vocab], &target);
        let (mut seven_dev, _) = device_logits(&g, DType::F32, &[7, vocab], &seven);
        let (mut big_dev, _) = device_logits(&g, DType::F32, &[256, vocab], &big);
        let others: Vec<SamplingParams> = (0..256)
            .map(|i| SamplingParams {
                temperature: [0.0, 0.5, 1.0, 1.3][i % 4],
                top_k: [0, 40, 1, 700][i % 4],
                top_p: [1.0, 0.8, 0.5, 0.95][(i / 4) % 4],
                seed: r.random(),
                step: r.random(),
                ..Default::default()
            })
            .collect();
        for class in CLASSES {
            for trial in 0..8u64 {
                let p = SamplingParams {
                    temperature: 0.8,
                    top_k: [50, 0, 0, 1000][trial as usize % 4],
                    top_p: [1.0, 0.9, 0.5, 0.95][trial as usize % 4],
                    seed: 1000 + trial,
                    step: 77 * trial + (trial << 40),
                    ..Default::default()
                };
                let what = format!("vocab {vocab} {class:?} trial {trial}");
                let h1 = run(&g, &mut sampler, class, &mut one_dev, &[p], &[], 3);
                let mut ps = others[..7].to_vec();
                ps[3] = p;
                let h7 = run(&g, &mut sampler, class, &mut seven_dev, &ps, &[], 3);
                let mut ps = others.clone();
                ps[200] = p;
                let h256 = run(&g, &mut sampler, class, &mut big_dev, &ps, &[], 3);
                for (h, row) in [(&h7, 3usize), (&h256, 200)] {
                    assert_eq!(h.status[row], STATUS_OK, "{what}");
                    assert_eq!(h.token[row], h1.token[0], "{what}: row {row} of {}", h.token.len());
                    assert_eq!(h.logprob[row].to_bits(), h1.logprob[0].to_bits(), "{what}");
                    assert_eq!(h.top_ids[row * 3..row * 3 + 3], h1.top_ids[..3], "{what}");
                }
                // The same launch twice gives the same result in every row.
                let again = run(&g, &mut sampler, class, &mut big_dev, &ps, &[], 3);
                assert_eq!(again.token, h256.token, "{what}: rerun");
                assert_eq!(again.top_ids, h256.top_ids, "{what}: rerun");
            }
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn nan_and_inf_rows_are_reported_and_other_rows_unaffected() {
    let g = gpu();
    let mut r = rng(0xBAD);
    let vocab = 32000;
    let mut sampler = Sampler::new(&g, 64, 0).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let normal_row = |r: &mut ChaCha8Rng| -> Vec<f32> { (0..vocab).map(|_| (2.0 * normal(r)) as f32).collect() };
        let mut rows: Vec<Vec<f32>> = (0..9).map(|_| normal_row(&mut r)).collect();
        rows[1][5000] = f32::NAN;
        rows[2][17] = f32::INFINITY;
        for (i, v) in rows[3].iter_mut().enumerate() {
            if i % 2 == 1 {
                *v = f32::NEG_INFINITY; // a valid mask: odd tokens can never be drawn
            }
        }
        rows[4] = vec![f32::NEG_INFINITY; vocab];
        let base = SamplingParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.9,
            ..Default::default()
        };
        let mut params: Vec<SamplingParams> = (0..9)
            .map(|i| SamplingParams {
                seed: 10 + i as u64,
                step: 3,
                top_k: if i % 2 == 0 { 0 } else { 50 },
                ..base
            })
            .collect();
        params[5].temperature = -1.0;
        params[6].top_p = f32::NAN;
        params[7].top_p = 0.0;
        let flat: Vec<f32> = rows.concat();
        let (mut logits, _) = device_logits(&g, dtype, &[9, vocab], &flat);
        for class in CLASSES {
            let what = format!("{dtype} {class:?}");
            let h = run(&g, &mut sampler, class, &mut logits, &params, &[], 4);
            let want = [
                STATUS_OK,
                STATUS_BAD_LOGITS,
                STATUS_BAD_LOGITS,
                STATUS_OK,
                STATUS_BAD_LOGITS,
                STATUS_BAD_PARAMS,
                STATUS_BAD_PARAMS,
                STATUS_BAD_PARAMS,
                STATUS_OK,
            ];
            assert_eq!(h.status, want, "{what}");
            for (b, &s) in want.iter().enumerate() {
                if s != STATUS_OK {
                    assert_eq!((h.token[b], h.logprob[b]), (-1, f32::NEG_INFINITY), "{what}: row {b}");
                    assert!(h.top_ids[b * 4..b * 4 + 4].iter().all(|&t| t == -1), "{what}: row {b}");
                    assert!(
                        h.top_lps[b * 4..b * 4 + 4].iter().all(|&v| v == f32::NEG_INFINITY),
                        "{what}: row {b}"
                    );
                }
            }
            assert!(h.token[3] % 2 == 0, "{what}: a -inf token was drawn");
            // The good rows alone, same parameters: the same results.
            let good = [0usize, 3, 8];
            let sub: Vec<f32> = good.iter().flat_map(|&b| rows[b].iter().cloned()).collect();
            let (mut sub_dev, _) = device_logits(&g, dtype, &[3, vocab], &sub);
            let sub_params: Vec<SamplingParams> = good.iter().map(|&b| params[b]).collect();
            let hs = run(&g, &mut sampler, class, &mut sub_dev, &sub_params, &[], 4);
            for (i, &b) in good.iter().enumerate() {
                assert_eq!(hs.token[i], h.token[b], "{what}: row {b}");
                assert_eq!(hs.logprob[i].to_bits(), h.logprob[b].to_bits(), "{what}: row {b}");
            }
            // The masked row over 64 steps: never an odd (-inf) token.
            let masked: Vec<f32> = (0..64).flat_map(|_| rows[3].iter().cloned()).collect();
            let (mut masked_dev, _) = device_logits(&g, dtype, &[64, vocab], &masked);
            let mp: Vec<SamplingParams> = (0..64).map(|s| SamplingParams { step: s, ..params[3] }).collect();
            let hm = run(&g, &mut sampler, class, &mut masked_dev, &mp, &[], 0);
            assert!(hm.token.iter().all(|&t| t >= 0 && t % 2 == 0), "{what}: {:?}", hm.token);
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn penalties_match_the_cpu_processed_logits() {
    let g = gpu();
    let mut r = rng(0x9E4A);
    let (batch, vocab) = (8usize, 32000usize);
    let mut sampler = Sampler::new(&g, batch, 8192).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        // Multiples of 1/8 in [-4, 4): exact in bf16, and every penalty step below is exact in
        // f32 (dyadic penalties), so the CPU's f32 model is bit-exact.
        let vals: Vec<f32> = (0..batch * vocab)
            .map(|_| r.random_range(-32i32..32) as f32 / 8.0)
            .collect();
        let held: Vec<f32> = match dtype {
            DType::BF16 => vals.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
            _ => vals.clone(),
        };
        let lengths = [0usize, 1, 50, 300, 1000, 7, 64, 2000];
        let histories: Vec<Vec<i32>> = (0..batch)
            .map(|b| {
                // Half from 20 "hot" tokens among the row's largest logits, so that penalties
                // move the argmax.
                let row = &held[b * vocab..(b + 1) * vocab];
                let hot: Vec<i32> = rs::order_desc(&row.iter().map(|&v| v as f64).collect::<Vec<_>>())[..20]
                    .iter()
                    .map(|&i| i as i32)
                    .collect();
                (0..lengths[b])
                    .map(|i| {
                        if i % 2 == 0 {
                            hot[r.random_range(0..20)]
                        } else {
                            r.random_range(0..vocab as i32)
                        }
                    })
                    .collect()
            })
            .collect();
        let pen = [
            (2.0f32, 0.0f32, 0.0f32),
            (0.5, 0.25, 1.0),
            (1.0, 0.0, 0.0),
            (2.0, 0.5, 0.125),
            (1.0, 0.25, 0.0),
            (0.5, 0.0, 1.0),
            (2.0, 0.25, 0.5),
            (1.0, 0.5, 0.25),
        ];
        let params: Vec<SamplingParams> = (0..batch)
            .map(|b| SamplingParams {
                temperature: if b < 6 { 0.0 } else { 0.9 },
                top_k: if b == 7 { 20 } else { 0 },
                seed: 5 + b as u64,
                step: 11,
                repetition_penalty: pen[b].0,
                frequency_penalty: pen[b].1,
                presence_penalty: pen[b].2,
                ..Default::default()
            })
            .collect();
        let hist_refs: Vec<&[i32]> = histories.iter().map(|h| h.as_slice()).collect();
        let mut want = held.clone();
        for b in 0..batch {
            let row = &mut want[b * vocab..(b + 1) * vocab];
            rs::apply_penalties_f32(row, &histories[b], pen[b].0, pen[b].1, pen[b].2);
            if dtype == DType::BF16 {
                for v in row.iter_mut() {
                    *v = bf16::from_f32(*v).to_f32();
                }
            }
        }
        for class in CLASSES {
            let what = format!("{dtype} {class:?}");
            let (mut fresh, _) = device_logits(&g, dtype, &[batch, vocab], &held);
            let h = run(&g, &mut sampler, class, &mut fresh, &params, &hist_refs, 0);
            let got = read_logits(&g, &fresh);
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{what}: processed logit {i} (row {})",
                    i / vocab
                );
            }
            for b in 0..batch {
                let z = kernel_z(&want[b * vocab..(b + 1) * vocab], params[b].temperature);
                assert_eq!(h.status[b], STATUS_OK, "{what}: row {b}");
                if params[b].temperature == 0.0 {
                    assert_eq!(h.token[b], rs::argmax_lowest(&z) as i32, "{what}: row {b}");
                }
                let lp = rs::log_softmax(&z)[h.token[b] as usize];
                assert!((h.logprob[b] as f64 - lp).abs() <= LOGPROB_ATOL, "{what}: row {b}");
            }
            // Penalties in the kernel draw what the CPU-processed logits draw without them.
            let (mut pre, _) = device_logits(&g, dtype, &[batch, vocab], &want);
            let plain: Vec<SamplingParams> = params
                .iter()
                .map(|p| SamplingParams {
                    repetition_penalty: 1.0,
                    frequency_penalty: 0.0,
                    presence_penalty: 0.0,
                    ..*p
                })
                .collect();
            let hp = run(&g, &mut sampler, class, &mut pre, &plain, &[], 0);
            assert_eq!(hp.token, h.token, "{what}: in-kernel penalties vs pre-processed logits");
        }
        // A history token outside the vocab: status 2, and that row's logits untouched.
        let mut bad = hist_refs.clone();
        let oob = [3, vocab as i32 + 5];
        bad[1] = &oob;
        let (mut fresh, _) = device_logits(&g, dtype, &[batch, vocab], &held);
        let h = run(&g, &mut sampler, SamplingClass::Base, &mut fresh, &params, &bad, 0);
        assert_eq!(h.status[1], STATUS_BAD_HISTORY);
        assert_eq!(h.token[1], -1);
        assert_eq!(h.status[0], STATUS_OK);
        let got = read_logits(&g, &fresh);
        assert_eq!(got[vocab..2 * vocab], held[vocab..2 * vocab], "row 1 was modified");
    }
}

#[test]
#[ignore = "needs GPU"]
fn logprobs_and_top_n_match_f64_log_softmax() {
    let g = gpu();
    let mut r = rng(0x70BA);
    let mut sampler = Sampler::new(&g, 8, 0).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        for &vocab in &[32000usize, 103424] {
            let mut rows: Vec<Vec<f32>> = Vec::new();
            let nrm = |r: &mut ChaCha8Rng, s: f64| -> Vec<f32> { (0..vocab).map(|_| (s * normal(r)) as f32).collect() };
            rows.push(nrm(&mut r, 3.0));
            rows.push(nrm(&mut r, 3.0));
            rows.push(vec![0.5; vocab]); // all tied: top-n is 0..n, narrowing down to one key
            let mut few = vec![f32::NEG_INFINITY; vocab];
            for i in 0..6 {
                few[r.random_range(0..vocab)] = i as f32;
            }
            rows.push(few); // fewer finite logits than n
            rows.push((0..vocab).map(|v| -(v as f32) * 0.001).collect()); // sorted
            rows.push(nrm(&mut r, 1.0));
            let mut tied_top = nrm(&mut r, 3.0);
            for _ in 0..3 {
                tied_top[r.random_range(0..vocab)] = 20.0;
            }
            rows.push(tied_top);
            rows.push(nrm(&mut r, 3.0));
            let settings = [
                (0.7f32, 50, 1.0f32),
                (1.0, 0, 1.0),
                (1.0, 5, 1.0),
                (0.0, 0, 1.0),
                (0.7, 0, 0.9),
                (0.0, 0, 1.0),
                (1.0, 0, 0.5),
                (1.5, 1000, 0.95),
            ];
            let params: Vec<SamplingParams> = settings
                .iter()
                .enumerate()
                .map(|(i, &(t, k, p))| SamplingParams {
                    temperature: t,
                    top_k: k,
                    top_p: p,
                    seed: 99 + i as u64,
                    step: 4,
                    ..Default::default()
                })
                .collect();
            let (mut logits, held) = device_logits(&g, dtype, &[8, vocab], &rows.concat());
            for class in CLASSES {
                for n in [1usize, 5, 20] {
                    let what = format!("{dtype} vocab {vocab} {class:?} n {n}");
                    let h = run(&g, &mut sampler, class, &mut logits, &params, &[], n);
                    for b in 0..8 {
                        let z = kernel_z(&held[b * vocab..(b + 1) * vocab], params[b].temperature);
                        assert_eq!(h.status[b], STATUS_OK, "{what}: row {b}");
                        let t = h.token[b];
                        assert!(t >= 0 && z[t as usize].is_finite(), "{what}: row {b} token {t}");
                        let lp = rs::log_softmax(&z)[t as usize];
                        assert!((h.logprob[b] as f64 - lp).abs() <= LOGPROB_ATOL, "{what}: row {b}");
                        check_top(&what, &h, b, n, &z);
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn bad_arguments_are_errors() {
    let g = gpu();
    let mut sampler = Sampler::new(&g, 4, 16).unwrap();
    let params = vec![SamplingParams::default(); 4];
    sampler.set_batch(&g, &params, &[]).unwrap();
    let mut out = Out::new(&g, 4, 0);
    // f16 logits are not supported.
    let mut half = DeviceTensor::zeros(&g, DType::F16, &[4, 100]).unwrap();
    let err = sampler
        .sample(&g, SamplingClass::Base, &mut half.view_mut(), &mut out.views())
        .unwrap_err();
    assert!(err.to_string().contains("f32 and bf16"), "{err}");
    // Logits must be [batch, vocab] with the batch of set_batch.
    let mut flat = DeviceTensor::zeros(&g, DType::F32, &[400]).unwrap();
    assert!(sampler
        .sample(&g, SamplingClass::Base, &mut flat.view_mut(), &mut out.views())
        .is_err());
    let mut three = DeviceTensor::zeros(&g, DType::F32, &[3, 100]).unwrap();
    assert!(sampler
        .sample(&g, SamplingClass::Base, &mut three.view_mut(), &mut out.views())
        .is_err());
    // More than 20 alternatives.
    let mut x = DeviceTensor::zeros(&g, DType::F32, &[4, 100]).unwrap();
    let mut wide = Out::new(&g, 4, 21);
    let err = sampler
        .sample(&g, SamplingClass::Base, &mut x.view_mut(), &mut wide.views())
        .unwrap_err();
    assert!(err.to_string().contains("20"), "{err}");
    // Outputs of the wrong size.
    let mut short = Out::new(&g, 3, 0);
    assert!(sampler
        .sample(&g, SamplingClass::Base, &mut x.view_mut(), &mut short.views())
        .is_err());
    // Too many rows, histories that do not fit, a history count that does not match.
    assert!(sampler.set_batch(&g, &[SamplingParams::default(); 5], &[]).is_err());
    let pen = SamplingParams {
        repetition_penalty: 2.0,
        ..Default::default()
    };
    let long = [0i32; 17];
    assert!(sampler.set_batch(&g, &[pen], &[&long]).is_err());
    assert!(sampler.set_batch(&g, &[pen, pen], &[&long[..2]]).is_err());
    // Penalties without a workspace.
    let f = DeviceTensor::zeros(&g, DType::F32, &[4]).unwrap();
    let i = DeviceTensor::zeros(&g, DType::I32, &[4]).unwrap();
    let pairs = DeviceTensor::zeros(&g, DType::I32, &[4, 2]).unwrap();
    let hist = DeviceTensor::zeros(&g, DType::I32, &[16]).unwrap();
    let cu = DeviceTensor::zeros(&g, DType::I32, &[5]).unwrap();
    let batch = SamplingBatch {
        temperature: f.view(),
        top_k: i.view(),
        top_p: f.view(),
        seed: pairs.view(),
        step: pairs.view(),
        penalties: Some(PenaltyBatch {
            repetition: f.view(),
            frequency: f.view(),
            presence: f.view(),
            history: hist.view(),
            cu_history: cu.view(),
        }),
    };
    let err = sample(
        &g,
        SamplingClass::Base,
        &mut x.view_mut(),
        &batch,
        &mut out.views(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("workspace"), "{err}");
    // Invalid parameters are a per-row status, not an error: the other rows are sampled.
    let mut mixed = params.clone();
    mixed[2].top_k = -1;
    let h = run(&g, &mut sampler, SamplingClass::Rejection, &mut x, &mixed, &[], 0);
    assert_eq!(h.status, vec![STATUS_OK, STATUS_OK, STATUS_BAD_PARAMS, STATUS_OK]);
}
