//! The greedy fast path (`sample_greedy`, kernels/sampling/greedy.cuh): by value against an
//! f64 reference at the model's shape and awkward neighbours, at every split count; against
//! the general kernel (`sample`) on the same greedy rows; row statuses; and the `Sampler`'s
//! choice between the two (all-greedy batches take the fast path, mixed ones, top-n and
//! penalties keep the general kernel with unchanged results).
//!
//! As in sampling.rs, the reference works on the kernel's own f32 z = x * (1 / temperature),
//! so ties and order are exactly the kernel's, and sums in f64.

use ocrvl::config::SamplingClass;
use ocrvl::kernels::sampling::{
    greedy_workspace_bytes, sample, sample_greedy, Sampler, SamplingBatch, SamplingParams, GREEDY_MAX_SPLITS,
    STATUS_BAD_LOGITS, STATUS_BAD_PARAMS, STATUS_NOT_GREEDY, STATUS_OK,
};
use ocrvl::runtime::{DType, DeviceTensor, Gpu, TensorView};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::sampling::{device_logits, kernel_z, Host, Out, LOGPROB_ATOL};
use crate::common::ref_sampling as rs;
use crate::common::{gpu, rng};

const CLASSES: [SamplingClass; 2] = [SamplingClass::Base, SamplingClass::Rejection];
/// Split counts tried: the heuristic's, one block per row, and forced splits that leave some
/// slices short or empty (32 slices of a 1000-logit row: only 8 hold anything).
const SPLITS: [Option<usize>; 6] = [None, Some(1), Some(2), Some(3), Some(7), Some(GREEDY_MAX_SPLITS)];
/// The model's vocabulary.
const VOCAB: usize = 103424;

/// A batch's parameters on the device, for the kernels' free functions.
struct DevParams {
    temperature: DeviceTensor,
    top_k: DeviceTensor,
    top_p: DeviceTensor,
    seed: DeviceTensor,
    step: DeviceTensor,
}

impl DevParams {
    fn new(g: &Gpu, p: &[SamplingParams]) -> DevParams {
        let n = p.len();
        let words = |v: u64| [v as u32 as i32, (v >> 32) as u32 as i32];
        let f = |v: Vec<f32>| DeviceTensor::from_host(g, &[n], &v).unwrap();
        let pairs = |v: Vec<i32>| DeviceTensor::from_host(g, &[n, 2], &v).unwrap();
        DevParams {
            temperature: f(p.iter().map(|q| q.temperature).collect()),
            top_k: DeviceTensor::from_host(g, &[n], &p.iter().map(|q| q.top_k).collect::<Vec<i32>>()).unwrap(),
            top_p: f(p.iter().map(|q| q.top_p).collect()),
            seed: pairs(p.iter().flat_map(|q| words(q.seed)).collect()),
            step: pairs(p.iter().flat_map(|q| words(q.step)).collect()),
        }
    }

    fn batch(&self) -> SamplingBatch<'_> {
        SamplingBatch {
            temperature: self.temperature.view(),
            top_k: self.top_k.view(),
            top_p: self.top_p.view(),
            seed: self.seed.view(),
            step: self.step.view(),
            penalties: None,
        }
    }
}

/// The f64 answer for one row of kernel z: (token, log-prob), or None where the kernel must
/// report bad logits (a NaN, a +inf, or no finite value).
fn reference(z: &[f64]) -> Option<(usize, f64)> {
    if z.iter().any(|v| v.is_nan() || *v == f64::INFINITY) {
        return None;
    }
    let t = rs::argmax_lowest(z);
    if z[t] == f64::NEG_INFINITY {
        return None;
    }
    let s: f64 = z.iter().map(|&v| (v - z[t]).exp()).sum();
    Some((t, -s.ln()))
}

/// Random logits with a row kind by b % 7: plain; a planted tie of 2-4 maxima (the lowest
/// index must win); the maximum at the last index; a tie of the middle and last index (in
/// different slices once split); half the entries -inf; a single finite entry (log-prob 0);
/// a constant row (token 0, log-prob -ln vocab). Planted values are exact in bf16.
fn make_rows(r: &mut ChaCha8Rng, batch: usize, vocab: usize) -> Vec<f32> {
    let mut vals: Vec<f32> = (0..batch * vocab).map(|_| r.random_range(-8.0f32..8.0)).collect();
    for b in 0..batch {
        let row = &mut vals[b * vocab..(b + 1) * vocab];
        match b % 7 {
            1 => {
                for _ in 0..2 + b % 3 {
                    row[r.random_range(0..vocab)] = 9.0;
                }
            }
            2 => row[vocab - 1] = 9.5,
            3 => {
                row[vocab / 2] = 10.0;
                row[vocab - 1] = 10.0;
            }
            4 => row
                .iter_mut()
                .filter(|_| r.random_bool(0.5))
                .for_each(|v| *v = f32::NEG_INFINITY),
            5 => {
                let keep = r.random_range(0..vocab);
                for (i, v) in row.iter_mut().enumerate() {
                    if i != keep {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            6 => row.fill(1.5),
            _ => {}
        }
    }
    vals
}

/// Greedy rows of four kinds (the general kernel's greedy test uses the same): temperature 0;
/// 1e-6 with top_p; top_k 1 at temperature 0.8 (z = 1.25 x); temperature 0 with top-k/top-p.
fn greedy_params(batch: usize) -> Vec<SamplingParams> {
    (0..batch)
        .map(|b| match b % 4 {
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
        })
        .collect()
}

/// The references of every row of `held` ([batch, vocab] values as the kernel reads them).
fn references(held: &[f32], vocab: usize, params: &[SamplingParams]) -> Vec<Option<(usize, f64)>> {
    params
        .iter()
        .enumerate()
        .map(|(b, p)| reference(&kernel_z(&held[b * vocab..(b + 1) * vocab], p.temperature)))
        .collect()
}

fn check_rows(what: &str, h: &Host, want: &[Option<(usize, f64)>]) {
    for (b, w) in want.iter().enumerate() {
        match *w {
            None => assert_eq!(
                (h.status[b], h.token[b], h.logprob[b]),
                (STATUS_BAD_LOGITS, -1, f32::NEG_INFINITY),
                "{what}: row {b}"
            ),
            Some((t, lp)) => {
                assert_eq!((h.status[b], h.token[b]), (STATUS_OK, t as i32), "{what}: row {b}");
                assert!(
                    (h.logprob[b] as f64 - lp).abs() <= LOGPROB_ATOL,
                    "{what}: row {b}: logprob {} vs {lp}",
                    h.logprob[b]
                );
            }
        }
    }
}

/// A workspace for up to 256 rows at the largest split count, filled with garbage first: the
/// kernel needs no initialised workspace.
fn dirty_workspace(g: &Gpu) -> DeviceTensor {
    let mut ws = DeviceTensor::alloc(g, DType::I32, &[greedy_workspace_bytes(256, GREEDY_MAX_SPLITS) / 4]).unwrap();
    ws.view_mut().fill_bytes(g, 0xAB).unwrap();
    ws
}

fn run_greedy(g: &Gpu, logits: &TensorView<'_>, dev: &DevParams, splits: Option<usize>, ws: &mut DeviceTensor) -> Host {
    let batch = logits.dims()[0];
    let mut out = Out::new(g, batch, 0);
    sample_greedy(
        g,
        logits,
        &dev.batch(),
        &mut out.views(),
        splits,
        Some(&mut ws.view_mut()),
    )
    .unwrap();
    out.read(g)
}

#[test]
#[ignore = "needs GPU"]
fn greedy_matches_the_f64_reference_at_every_split() {
    let g = gpu();
    let mut r = rng(0x6EED);
    let mut ws = dirty_workspace(&g);
    // 103424: the model (f32: 16-byte vectors); 103423 and 7: scalar loads; 1: one logit.
    let shapes = [
        (256usize, VOCAB),
        (1, VOCAB),
        (3, VOCAB),
        (1, 1),
        (3, 1),
        (4, 7),
        (7, 1000),
        (5, 103423),
        (9, 32000),
    ];
    for dtype in [DType::F32, DType::BF16] {
        for &(batch, vocab) in &shapes {
            let vals = make_rows(&mut r, batch, vocab);
            let params = greedy_params(batch);
            let (logits, held) = device_logits(&g, dtype, &[batch, vocab], &vals);
            let want = references(&held, vocab, &params);
            let dev = DevParams::new(&g, &params);
            for splits in SPLITS {
                let h = run_greedy(&g, &logits.view(), &dev, splits, &mut ws);
                check_rows(&format!("{dtype} {batch} x {vocab} splits {splits:?}"), &h, &want);
            }
        }
        // Strided rows: the first 1000 columns of wider rows, with a row stride that keeps
        // 16-byte vectors (1032) and one that does not (1003).
        for width in [1032usize, 1003] {
            let (batch, vocab) = (6usize, 1000usize);
            let vals = make_rows(&mut r, batch, width);
            let params = greedy_params(batch);
            let (logits, held) = device_logits(&g, dtype, &[batch, width], &vals);
            let narrow: Vec<f32> = held.chunks(width).flat_map(|row| row[..vocab].to_vec()).collect();
            let want = references(&narrow, vocab, &params);
            let dev = DevParams::new(&g, &params);
            for splits in SPLITS {
                let view = logits.view().columns(0, vocab).unwrap();
                let h = run_greedy(&g, &view, &dev, splits, &mut ws);
                check_rows(&format!("{dtype} stride {width} splits {splits:?}"), &h, &want);
            }
        }
    }
}

/// Rows both kernels must reject, planted into batches of 16 rows or more: NaN, +inf and
/// all -inf logits (status 1); bad parameters on greedy rows (status 3).
fn plant_bad_rows(vals: &mut [f32], params: &mut [SamplingParams], vocab: usize) {
    if params.len() < 16 {
        return;
    }
    vals[10 * vocab + vocab / 3] = f32::NAN;
    vals[11 * vocab + 17] = f32::INFINITY;
    vals[12 * vocab..13 * vocab].fill(f32::NEG_INFINITY);
    params[13].temperature = -1.0;
    params[14].top_p = f32::NAN;
    params[15].top_k = -1;
}

#[test]
#[ignore = "needs GPU"]
fn greedy_equals_the_general_kernel_on_greedy_rows() {
    let g = gpu();
    let mut r = rng(0x6E4E);
    let mut ws = dirty_workspace(&g);
    let shapes = [(256usize, VOCAB), (1, VOCAB), (3, 7), (5, 103423), (2, 1), (64, 32000)];
    for dtype in [DType::F32, DType::BF16] {
        for &(batch, vocab) in &shapes {
            let mut vals = make_rows(&mut r, batch, vocab);
            let mut params = greedy_params(batch);
            plant_bad_rows(&mut vals, &mut params, vocab);
            let (mut logits, _) = device_logits(&g, dtype, &[batch, vocab], &vals);
            let dev = DevParams::new(&g, &params);
            for class in CLASSES {
                let mut out = Out::new(&g, batch, 0);
                sample(&g, class, &mut logits.view_mut(), &dev.batch(), &mut out.views(), None).unwrap();
                let general = out.read(&g);
                for splits in [None, Some(1), Some(4)] {
                    let what = format!("{dtype} {batch} x {vocab} {class:?} splits {splits:?}");
                    let h = run_greedy(&g, &logits.view(), &dev, splits, &mut ws);
                    assert_eq!(h.status, general.status, "{what}");
                    assert_eq!(h.token, general.token, "{what}");
                    for b in 0..batch {
                        let (a, e) = (h.logprob[b] as f64, general.logprob[b] as f64);
                        // Both are -log S of f32 sums in different orders: their difference
                        // is relative to S, hence absolute in the log; 1e-5 of the log-prob,
                        // or of 1 where the log-prob is smaller.
                        let ok = if e == f64::NEG_INFINITY {
                            a == e
                        } else {
                            (a - e).abs() <= 1e-5 * e.abs().max(1.0)
                        };
                        assert!(ok, "{what}: row {b}: logprob {a} vs general {e}");
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn bad_and_non_greedy_rows_get_their_status_alone() {
    let g = gpu();
    let mut r = rng(0xBAD6);
    let mut ws = dirty_workspace(&g);
    let vocab = 32000;
    for dtype in [DType::F32, DType::BF16] {
        let mut rows: Vec<Vec<f32>> = (0..11)
            .map(|_| (0..vocab).map(|_| r.random_range(-6.0f32..6.0)).collect())
            .collect();
        rows[1][5000] = f32::NAN;
        rows[2][17] = f32::INFINITY;
        for v in rows[3].iter_mut().skip(1).step_by(2) {
            *v = f32::NEG_INFINITY; // a valid mask
        }
        rows[4].fill(f32::NEG_INFINITY);
        rows[10][123] = 3.0e38; // finite, but +inf once divided by temperature 0.7
        let mut params = vec![SamplingParams::greedy(); 11];
        params[5].temperature = -1.0;
        params[6].top_p = f32::NAN;
        params[7].top_p = 0.0;
        params[8] = SamplingParams {
            temperature: 0.7,
            ..Default::default()
        };
        params[9].top_k = -1;
        params[10] = SamplingParams {
            temperature: 0.7,
            top_k: 1,
            ..Default::default()
        };
        let want = [
            STATUS_OK,
            STATUS_BAD_LOGITS,
            STATUS_BAD_LOGITS,
            STATUS_OK,
            STATUS_BAD_LOGITS,
            STATUS_BAD_PARAMS,
            STATUS_BAD_PARAMS,
            STATUS_BAD_PARAMS,
            STATUS_NOT_GREEDY,
            STATUS_BAD_PARAMS,
            STATUS_BAD_LOGITS,
        ];
        let (logits, held) = device_logits(&g, dtype, &[11, vocab], &rows.concat());
        let dev = DevParams::new(&g, &params);
        let good = [0usize, 3];
        let sub: Vec<f32> = good
            .iter()
            .flat_map(|&b| held[b * vocab..(b + 1) * vocab].to_vec())
            .collect();
        let (sub_dev, _) = device_logits(&g, dtype, &[2, vocab], &sub);
        let sub_params = DevParams::new(&g, &[params[0], params[3]]);
        for splits in [None, Some(1), Some(4)] {
            let what = format!("{dtype} splits {splits:?}");
            let h = run_greedy(&g, &logits.view(), &dev, splits, &mut ws);
            assert_eq!(h.status, want, "{what}");
            for (b, &s) in want.iter().enumerate() {
                if s != STATUS_OK {
                    assert_eq!((h.token[b], h.logprob[b]), (-1, f32::NEG_INFINITY), "{what}: row {b}");
                }
            }
            assert!(h.token[3] >= 0 && h.token[3] % 2 == 0, "{what}: a -inf token");
            for &b in &good {
                let z = kernel_z(&held[b * vocab..(b + 1) * vocab], params[b].temperature);
                let (t, lp) = reference(&z).unwrap();
                assert_eq!(h.token[b], t as i32, "{what}: row {b}");
                assert!((h.logprob[b] as f64 - lp).abs() <= LOGPROB_ATOL, "{what}: row {b}");
            }
            // The good rows alone (same dtype, same split count): the same bits, whatever the
            // other rows held.
            let hs = run_greedy(&g, &sub_dev.view(), &sub_params, splits, &mut ws);
            for (i, &b) in good.iter().enumerate() {
                assert_eq!(hs.token[i], h.token[b], "{what}: row {b} alone");
                assert_eq!(hs.logprob[i].to_bits(), h.logprob[b].to_bits(), "{what}: row {b} alone");
            }
        }
    }
}

/// Runs the Sampler on a copy of `vals` ([batch, vocab] f32).
fn run_sampler(
    g: &Gpu,
    sampler: &mut Sampler,
    class: SamplingClass,
    vals: &[f32],
    params: &[SamplingParams],
    histories: &[&[i32]],
    n_top: usize,
) -> (Host, bool) {
    let batch = params.len();
    let mut logits = DeviceTensor::from_host(g, &[batch, vals.len() / batch], vals).unwrap();
    sampler.set_batch(g, params, histories).unwrap();
    let fast = sampler.uses_greedy_path(n_top > 0);
    let mut out = Out::new(g, batch, n_top);
    sampler
        .sample(g, class, &mut logits.view_mut(), &mut out.views())
        .unwrap();
    (out.read(g), fast)
}

/// The general kernel through the free function, on a copy of `vals`.
fn run_general(g: &Gpu, class: SamplingClass, vals: &[f32], params: &[SamplingParams], n_top: usize) -> Host {
    let batch = params.len();
    let mut logits = DeviceTensor::from_host(g, &[batch, vals.len() / batch], vals).unwrap();
    let dev = DevParams::new(g, params);
    let mut out = Out::new(g, batch, n_top);
    sample(g, class, &mut logits.view_mut(), &dev.batch(), &mut out.views(), None).unwrap();
    out.read(g)
}

fn assert_same_bits(what: &str, a: &Host, b: &Host) {
    assert_eq!(a.status, b.status, "{what}: status");
    assert_eq!(a.token, b.token, "{what}: token");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&a.logprob), bits(&b.logprob), "{what}: logprob");
    assert_eq!(a.top_ids, b.top_ids, "{what}: top ids");
    assert_eq!(bits(&a.top_lps), bits(&b.top_lps), "{what}: top logprobs");
}

#[test]
#[ignore = "needs GPU"]
fn sampler_takes_the_greedy_path_only_for_all_greedy_batches() {
    let g = gpu();
    let mut r = rng(0x5A3B);
    let mut sampler = Sampler::new(&g, 256, 64).unwrap();
    sampler.set_greedy_kernel(true);
    let mut ws = dirty_workspace(&g);
    let batch = 256;
    let vals = make_rows(&mut r, batch, VOCAB);
    let greedy = greedy_params(batch);
    let want = references(&vals, VOCAB, &greedy);

    // All greedy: the fast path, the same bits as sample_greedy at its default split count.
    let (h, fast) = run_sampler(&g, &mut sampler, SamplingClass::Base, &vals, &greedy, &[], 0);
    assert!(fast, "an all-greedy batch must take the greedy path");
    check_rows("sampler greedy", &h, &want);
    let logits = DeviceTensor::from_host(&g, &[batch, VOCAB], &vals).unwrap();
    let direct = run_greedy(&g, &logits.view(), &DevParams::new(&g, &greedy), None, &mut ws);
    assert_same_bits("sampler vs sample_greedy", &h, &direct);

    // Greedy rows asking for top-n alternatives: the general kernel, unchanged.
    for class in CLASSES {
        let (h, fast) = run_sampler(&g, &mut sampler, class, &vals, &greedy, &[], 5);
        assert!(!fast, "top-n must keep the general kernel");
        assert_same_bits(
            &format!("greedy + top-5 {class:?}"),
            &h,
            &run_general(&g, class, &vals, &greedy, 5),
        );
    }

    // Mixed: odd rows sample with top-k/top-p. The general kernel, the same bits as calling it
    // directly, and its greedy rows are still the argmax.
    let mixed: Vec<SamplingParams> = (0..batch)
        .map(|b| {
            if b % 2 == 0 {
                greedy[b]
            } else {
                SamplingParams {
                    temperature: 0.7,
                    top_k: 50,
                    top_p: 0.9,
                    seed: 77 + b as u64,
                    step: 5,
                    ..Default::default()
                }
            }
        })
        .collect();
    for class in CLASSES {
        let (h, fast) = run_sampler(&g, &mut sampler, class, &vals, &mixed, &[], 0);
        assert!(!fast, "a mixed batch must keep the general kernel");
        assert_same_bits(
            &format!("mixed {class:?}"),
            &h,
            &run_general(&g, class, &vals, &mixed, 0),
        );
        for b in (0..batch).step_by(2) {
            check_rows(
                &format!("mixed {class:?} greedy row {b}"),
                &pick(&h, b),
                &want[b..b + 1],
            );
        }
    }

    // Greedy rows with penalties: the general kernel applies them before its argmax. With
    // histories given but every penalty neutral, the fast path again.
    let (small_batch, small_vocab) = (8usize, 1000usize);
    let small = make_rows(&mut r, small_batch, small_vocab);
    let histories: Vec<Vec<i32>> = (0..small_batch)
        .map(|b| {
            let row = &small[b * small_vocab..(b + 1) * small_vocab];
            let top = kernel_z(row, 0.0);
            vec![rs::argmax_lowest(&top) as i32, (b * 37 % small_vocab) as i32]
        })
        .collect();
    let refs: Vec<&[i32]> = histories.iter().map(Vec::as_slice).collect();
    let neutral = vec![SamplingParams::greedy(); small_batch];
    let (_, fast) = run_sampler(&g, &mut sampler, SamplingClass::Base, &small, &neutral, &refs, 0);
    assert!(fast, "neutral penalties need no general kernel");
    let penalized: Vec<SamplingParams> = (0..small_batch)
        .map(|b| SamplingParams {
            repetition_penalty: if b % 2 == 0 { 2.0 } else { 1.0 },
            frequency_penalty: if b % 3 == 0 { 0.5 } else { 0.0 },
            ..SamplingParams::greedy()
        })
        .collect();
    let (h, fast) = run_sampler(&g, &mut sampler, SamplingClass::Base, &small, &penalized, &refs, 0);
    assert!(!fast, "penalties must keep the general kernel");
    for (b, p) in penalized.iter().enumerate() {
        let mut row = small[b * small_vocab..(b + 1) * small_vocab].to_vec();
        rs::apply_penalties_f32(
            &mut row,
            &histories[b],
            p.repetition_penalty,
            p.frequency_penalty,
            p.presence_penalty,
        );
        let want = reference(&kernel_z(&row, 0.0));
        check_rows(&format!("penalized row {b}"), &pick(&h, b), &[want]);
    }
}

/// Row b of a result, as a one-row result.
fn pick(h: &Host, b: usize) -> Host {
    Host {
        token: vec![h.token[b]],
        logprob: vec![h.logprob[b]],
        status: vec![h.status[b]],
        top_ids: vec![],
        top_lps: vec![],
    }
}

#[test]
#[ignore = "needs GPU"]
fn greedy_bad_arguments_are_errors() {
    let g = gpu();
    let params = DevParams::new(&g, &[SamplingParams::greedy(); 4]);
    let x = DeviceTensor::zeros(&g, DType::F32, &[4, 100000]).unwrap();
    let mut out = Out::new(&g, 4, 0);
    let mut ws = dirty_workspace(&g);
    let call = |logits: &TensorView<'_>, out: &mut Out, splits: Option<usize>, ws: Option<&mut DeviceTensor>| {
        let mut wsv = ws.map(|w| w.view_mut());
        sample_greedy(&g, logits, &params.batch(), &mut out.views(), splits, wsv.as_mut())
    };
    let half = DeviceTensor::zeros(&g, DType::F16, &[4, 100]).unwrap();
    let err = call(&half.view(), &mut out, None, None).unwrap_err();
    assert!(err.to_string().contains("f32 and bf16"), "{err}");
    let flat = DeviceTensor::zeros(&g, DType::F32, &[400]).unwrap();
    assert!(call(&flat.view(), &mut out, None, None).is_err());
    let three = DeviceTensor::zeros(&g, DType::F32, &[3, 100]).unwrap();
    assert!(call(&three.view(), &mut out, None, None).is_err());
    for bad in [0, GREEDY_MAX_SPLITS + 1] {
        let err = call(&x.view(), &mut out, Some(bad), Some(&mut ws)).unwrap_err();
        assert!(err.to_string().contains("splits"), "{err}");
    }
    let err = call(&x.view(), &mut out, Some(4), None).unwrap_err();
    assert!(err.to_string().contains("workspace"), "{err}");
    let mut tiny = DeviceTensor::zeros(&g, DType::I32, &[4]).unwrap();
    let err = call(&x.view(), &mut out, Some(4), Some(&mut tiny)).unwrap_err();
    assert!(err.to_string().contains("workspace"), "{err}");
    let mut with_top = Out::new(&g, 4, 3);
    let err = call(&x.view(), &mut with_top, None, Some(&mut ws)).unwrap_err();
    assert!(err.to_string().contains("top-n"), "{err}");
    // The same call, well formed, runs; zero logits are a 100000-way tie: token 0.
    call(&x.view(), &mut out, Some(4), Some(&mut ws)).unwrap();
    let h = out.read(&g);
    assert_eq!((h.token, h.status), (vec![0; 4], vec![STATUS_OK; 4]));
}
