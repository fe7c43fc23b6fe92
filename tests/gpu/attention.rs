//! The prefill attention kernels (`kernels/attention/`) against the f64 reference in
//! `tests/common/ref_attention.rs`, on seeded random inputs. Every test runs each path the GPU
//! has ([`versions`]): FA2 everywhere, FA3 on sm_90 (where it must be built and run). The
//! FA3-only checks (FA3 == FA2, version resolution) are in `attention_fa3.rs`, which reuses the
//! helpers here.
//!
//! Tolerance: each output is a convex combination of v rows (|v| <= 1 here), so its error
//! scales with the data rather than with |out|: the kernel rounds P to bf16 (2^-9 relative per
//! term) before P·V and rounds the output once more. Long rows average thousands of v values
//! and shrink towards 0, so a pure relative bound would be meaningless there; the check is
//! `|got - want| <= 2e-2 · rms(want) + BF16_RTOL · |want|` per sequence, about 10x the
//! expected rounding error (budget ~1e-2 relative in bf16, as for reductions).
//!
//! Every run writes into a NaN-poisoned output that is wider than the view the kernel gets:
//! every element of the view must be written and finite, every element outside it untouched.
//! Long runs compare a sample of query rows (`sample_rows`) with the reference, but all rows
//! are checked for NaN. Paged runs use a pool 3x larger than needed, shuffled block tables,
//! NaN in every unused cache slot and -1 in every unused table entry.

use half::bf16;
use ocrvl::kernels::attention::{
    fa3_unavailable_reason, prefill_paged_version, prefill_paged_with, vision_varlen_version, vision_varlen_with,
    AttentionKernels, AttentionVersion, PagedKv, PrefillOptions, Varlen, VisionQkv, VisionTile,
};
use ocrvl::runtime::{DType, DeviceTensor, Gpu};
use ocrvl::sys::OcrvlStatus;
use ocrvl::Error;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::common::ref_attention::{attention_rows, sample_rows, SeqInputs};
use crate::common::tol::{assert_close, rms, BF16_RTOL};
use crate::common::{bf16_to_f64, gpu, rand_bf16, rng};

/// The language model's attention: 16 query heads over 2 kv heads, head_dim 128.
pub(crate) const HQ: usize = 16;
pub(crate) const HKV: usize = 2;
pub(crate) const D: usize = 128;
pub(crate) const Q_COLS: usize = HQ * D;
/// q is a column slice of the fused qkv row, as in the model.
pub(crate) const FUSED_COLS: usize = (HQ + 2 * HKV) * D;
/// The vision tower: 16 heads of 72, q/k/v column slices of a [total, 3 * 1152] buffer.
pub(crate) const HV: usize = 16;
pub(crate) const DV: usize = 72;
pub(crate) const V_COLS: usize = HV * DV;
/// Outputs are written into buffers this much wider than the view; these columns must stay
/// poisoned.
pub(crate) const OUT_EXTRA: usize = 64;
/// bf16 NaN: the poison of outputs and unused cache slots.
pub(crate) const POISON: u16 = 0xFFFF;

pub(crate) fn text_scale() -> f32 {
    1.0 / (D as f32).sqrt()
}

pub(crate) fn vision_scale() -> f32 {
    1.0 / (DV as f32).sqrt()
}

/// The paths this GPU runs: FA2 always; FA3 on sm_90, where the build must have it (a build
/// without sm_90a code fails here rather than skipping the FA3 runs). Elsewhere FA3 must refuse.
pub(crate) fn versions(g: &Gpu) -> Vec<AttentionVersion> {
    if g.compute_capability() == (9, 0) {
        if let Some(why) = fa3_unavailable_reason(g) {
            panic!("sm_90 GPU but the FA3 path is unavailable: {why}");
        }
        vec![AttentionVersion::Fa2, AttentionVersion::Fa3]
    } else {
        assert!(
            fa3_unavailable_reason(g).is_some(),
            "FA3 claims to run on {:?}",
            g.compute_capability()
        );
        vec![AttentionVersion::Fa2]
    }
}

/// The vision tiles each path builds: FA2 72/80 and padded 96, FA3 72/80 and P·V over 128.
pub(crate) fn vision_tiles(version: AttentionVersion) -> [VisionTile; 2] {
    match version {
        AttentionVersion::Fa2 => [VisionTile::Qk80, VisionTile::Pad96],
        AttentionVersion::Fa3 => [VisionTile::Qk80, VisionTile::Pv128],
    }
}

/// The model's scale, `causal`, and the kernels (a version, or FA3 with a mainloop).
pub(crate) fn text_opts(causal: bool, kernels: impl Into<AttentionKernels>) -> PrefillOptions {
    PrefillOptions {
        scale: text_scale(),
        causal,
        kernels: kernels.into(),
    }
}

fn causal(version: AttentionVersion) -> PrefillOptions {
    text_opts(true, version)
}

/// Runs the batch on every path this GPU has ([`versions`]), `causal` or not, with the LSE
/// when `lse`, and checks each run against the reference; `label` names the case.
fn check_every_version(g: &Gpu, b: &TextBatch, pool: &Pool, causal: bool, lse: bool, label: &str) {
    for v in versions(g) {
        let run = run_text(g, b, pool, &pool.tables, text_opts(causal, v), lse);
        check_text(&format!("{v:?} {label}"), b, &run, causal);
    }
}

/// A text batch: (q_len, seqused_k) per sequence and the exact bf16 inputs.
pub(crate) struct TextBatch {
    pub(crate) seqs: Vec<(usize, usize)>,
    /// `[total_q, HQ, D]`
    q: Vec<bf16>,
    /// Per sequence `[seqused_k, HKV, D]`: every key in the cache, the new tokens included.
    k: Vec<Vec<bf16>>,
    v: Vec<Vec<bf16>>,
}

impl TextBatch {
    /// q uniform in ±q_scale (larger makes the softmax peakier), k and v in ±1.
    pub(crate) fn new(r: &mut ChaCha8Rng, seqs: &[(usize, usize)], q_scale: f32) -> TextBatch {
        let total_q: usize = seqs.iter().map(|s| s.0).sum();
        let q = rand_bf16(r, total_q * Q_COLS, q_scale);
        let k = seqs.iter().map(|&(_, kl)| rand_bf16(r, kl * HKV * D, 1.0)).collect();
        let v = seqs.iter().map(|&(_, kl)| rand_bf16(r, kl * HKV * D, 1.0)).collect();
        TextBatch {
            seqs: seqs.to_vec(),
            q,
            k,
            v,
        }
    }

    pub(crate) fn total_q(&self) -> usize {
        self.seqs.iter().map(|s| s.0).sum()
    }

    /// Sequence `s` alone, with its own inputs.
    fn single(&self, s: usize) -> TextBatch {
        let q0: usize = self.seqs[..s].iter().map(|x| x.0).sum();
        let ql = self.seqs[s].0;
        TextBatch {
            seqs: vec![self.seqs[s]],
            q: self.q[q0 * Q_COLS..(q0 + ql) * Q_COLS].to_vec(),
            k: vec![self.k[s].clone()],
            v: vec![self.v[s].clone()],
        }
    }
}

pub(crate) fn cu_seqlens(lens: impl Iterator<Item = usize>) -> Vec<i32> {
    let mut cu = vec![0i32];
    for l in lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    cu
}

/// The paged cache of a batch, built on the host: 3x the blocks needed, handed out in a
/// shuffled order; unused slots NaN, unused table entries -1.
pub(crate) struct Pool {
    block_size: usize,
    num_blocks: usize,
    /// `[num_blocks, HKV, block_size, D]`
    k: Vec<bf16>,
    v: Vec<bf16>,
    /// `[num_seqs, max_blocks]`
    pub(crate) tables: Vec<i32>,
    max_blocks: usize,
}

impl Pool {
    pub(crate) fn new(r: &mut ChaCha8Rng, b: &TextBatch, block_size: usize) -> Pool {
        let per_seq: Vec<usize> = b.seqs.iter().map(|&(_, kl)| kl.div_ceil(block_size)).collect();
        let needed: usize = per_seq.iter().sum();
        let num_blocks = 3 * needed.max(1);
        // Two spare columns: entries the kernel must never read.
        let max_blocks = per_seq.iter().copied().max().unwrap_or(0) + 2;
        let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
        ids.shuffle(r);
        let mut tables = vec![-1i32; b.seqs.len() * max_blocks];
        let mut k = vec![bf16::from_bits(POISON); num_blocks * HKV * block_size * D];
        let mut v = k.clone();
        let mut next = 0;
        for (s, &(_, kl)) in b.seqs.iter().enumerate() {
            for j in 0..per_seq[s] {
                tables[s * max_blocks + j] = ids[next];
                next += 1;
            }
            for p in 0..kl {
                let blk = tables[s * max_blocks + p / block_size] as usize;
                for h in 0..HKV {
                    let dst = ((blk * HKV + h) * block_size + p % block_size) * D;
                    let src = (p * HKV + h) * D;
                    k[dst..dst + D].copy_from_slice(&b.k[s][src..src + D]);
                    v[dst..dst + D].copy_from_slice(&b.v[s][src..src + D]);
                }
            }
        }
        Pool {
            block_size,
            num_blocks,
            k,
            v,
            tables,
            max_blocks,
        }
    }

    /// The table rows of sequences `seqs`, in that order.
    fn rows(&self, seqs: &[usize]) -> Vec<i32> {
        seqs.iter()
            .flat_map(|&s| {
                self.tables[s * self.max_blocks..(s + 1) * self.max_blocks]
                    .iter()
                    .copied()
            })
            .collect()
    }
}

pub(crate) struct TextRun {
    /// `[total_q, HQ * D]`
    pub(crate) out: Vec<bf16>,
    /// `[HQ, total_q]`, when asked for.
    pub(crate) lse: Option<Vec<f32>>,
}

/// Runs the paged prefill with q the first 2048 columns of a fused [total_q, 2560] buffer and
/// out the first 2048 columns of a poisoned, wider buffer; `tables` are the block-table rows
/// of `b`'s sequences. Asserts the columns past the out view are untouched.
pub(crate) fn run_text(
    g: &Gpu,
    b: &TextBatch,
    pool: &Pool,
    tables: &[i32],
    opts: PrefillOptions,
    want_lse: bool,
) -> TextRun {
    let total_q = b.total_q();
    let n = b.seqs.len();
    let mut fused = vec![bf16::from_f32(0.25); total_q * FUSED_COLS];
    for t in 0..total_q {
        fused[t * FUSED_COLS..t * FUSED_COLS + Q_COLS].copy_from_slice(&b.q[t * Q_COLS..(t + 1) * Q_COLS]);
    }
    let qkv = DeviceTensor::from_host(g, &[total_q, FUSED_COLS], &fused).unwrap();
    let kc = DeviceTensor::from_host(g, &[pool.num_blocks, HKV, pool.block_size, D], &pool.k).unwrap();
    let vc = DeviceTensor::from_host(g, &[pool.num_blocks, HKV, pool.block_size, D], &pool.v).unwrap();
    let bt = DeviceTensor::from_host(g, &[n, pool.max_blocks], tables).unwrap();
    let used: Vec<i32> = b.seqs.iter().map(|s| s.1 as i32).collect();
    let used = DeviceTensor::from_host(g, &[n], &used).unwrap();
    let cu = DeviceTensor::from_host(g, &[n + 1], &cu_seqlens(b.seqs.iter().map(|s| s.0))).unwrap();
    let out_cols = Q_COLS + OUT_EXTRA;
    let mut out = DeviceTensor::alloc(g, DType::BF16, &[total_q, out_cols]).unwrap();
    out.view_mut().fill_bytes(g, 0xFF).unwrap();
    let mut lse = DeviceTensor::alloc(g, DType::F32, &[HQ, total_q]).unwrap();
    lse.view_mut().fill_bytes(g, 0xFF).unwrap();
    let max_q = b.seqs.iter().map(|s| s.0).max().unwrap_or(0);
    {
        let q = qkv.view().columns(0, Q_COLS).unwrap();
        let mut o = out.view_mut().columns(0, Q_COLS).unwrap();
        let kv = PagedKv {
            k_cache: kc.view(),
            v_cache: vc.view(),
            block_tables: bt.view(),
            seqused_k: used.view(),
        };
        let queries = Varlen {
            cu_seqlens: cu.view(),
            max_seqlen: max_q,
        };
        let mut lse_view = lse.view_mut();
        let lse_arg = if want_lse { Some(&mut lse_view) } else { None };
        prefill_paged_with(g, &mut o, lse_arg, &q, &queries, &kv, opts).unwrap();
    }
    let all: Vec<bf16> = out.to_host(g).unwrap();
    let mut res = Vec::with_capacity(total_q * Q_COLS);
    for t in 0..total_q {
        let row = &all[t * out_cols..(t + 1) * out_cols];
        res.extend_from_slice(&row[..Q_COLS]);
        assert!(
            row[Q_COLS..].iter().all(|x| x.to_bits() == POISON),
            "token {t}: columns past the out view were written"
        );
    }
    TextRun {
        out: res,
        lse: want_lse.then(|| lse.to_host::<f32>(g).unwrap()),
    }
}

/// Every element written and finite.
pub(crate) fn assert_all_finite(label: &str, out: &[bf16], row_len: usize) {
    if let Some(i) = out.iter().position(|x| !x.to_f32().is_finite()) {
        panic!(
            "{label}: token {} column {} is {} (unwritten or invalid)",
            i / row_len,
            i % row_len,
            out[i]
        );
    }
}

/// Compares sampled rows of every sequence (and the LSE, when present) with the reference.
pub(crate) fn check_text(label: &str, b: &TextBatch, run: &TextRun, causal: bool) {
    assert_all_finite(label, &run.out, Q_COLS);
    let total_q = b.total_q();
    let mut q0 = 0;
    for (s, &(ql, kl)) in b.seqs.iter().enumerate() {
        let q = bf16_to_f64(&b.q[q0 * Q_COLS..(q0 + ql) * Q_COLS]);
        let k = bf16_to_f64(&b.k[s]);
        let v = bf16_to_f64(&b.v[s]);
        let inputs = SeqInputs {
            q: &q,
            k: &k,
            v: &v,
            q_len: ql,
            k_len: kl,
            hq: HQ,
            hkv: HKV,
            d: D,
            scale: text_scale() as f64,
            causal,
        };
        let rows = sample_rows(ql);
        let (want, want_lse) = attention_rows(&inputs, &rows);
        let got: Vec<f64> = rows
            .iter()
            .flat_map(|&r| {
                run.out[(q0 + r) * Q_COLS..(q0 + r + 1) * Q_COLS]
                    .iter()
                    .map(|x| x.to_f64())
            })
            .collect();
        let what = format!("{label}: seq {s} (q_len {ql}, keys {kl})");
        assert_close(&what, &got, &want, 2e-2 * rms(&want), BF16_RTOL);
        if let Some(lse) = &run.lse {
            // Scores are exact bf16 products summed in f32; 1e-3 absolute is generous.
            let got: Vec<f64> = rows
                .iter()
                .flat_map(|&r| (0..HQ).map(move |h| lse[h * total_q + q0 + r] as f64))
                .collect();
            assert_close(&format!("{what} lse"), &got, &want_lse, 1e-3, 1e-4);
        }
        q0 += ql;
    }
}

/// (q_len, seqused_k): fresh prompts of every test length, decode-like single queries, chunks
/// that start in the middle of a cached sequence (on and off tile boundaries), an empty run.
pub(crate) const MIXED: &[(usize, usize)] = &[
    (1, 1),
    (2, 2),
    (17, 17),
    (128, 128),
    (1000, 1000),
    (5120, 5120),
    (1, 1000),
    (1, 64),
    (17, 300),
    (128, 2048),
    (100, 5000),
    (64, 129),
    (2, 65),
    (200, 263),
    (0, 100),
];

#[test]
#[ignore = "needs GPU"]
fn prefill_fresh_prompts_match_reference() {
    let g = gpu();
    let mut r = rng(0xA77E_0001);
    for &bs in &[16usize, 64] {
        for &len in &[1usize, 2, 17, 128, 1000, 5120] {
            let b = TextBatch::new(&mut r, &[(len, len)], 4.0);
            let pool = Pool::new(&mut r, &b, bs);
            check_every_version(&g, &b, &pool, true, false, &format!("fresh prompt, block_size {bs}"));
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn prefill_mixed_batch_with_cached_prefixes_matches_reference() {
    let g = gpu();
    let mut r = rng(0xA77E_0002);
    // 16 and 32 split a 64-key tile over several blocks; 64 is one block per tile; 256 puts
    // several tiles in one block.
    for &bs in &[16usize, 32, 64, 256] {
        let b = TextBatch::new(&mut r, MIXED, 4.0);
        let pool = Pool::new(&mut r, &b, bs);
        check_every_version(&g, &b, &pool, true, true, &format!("mixed batch, block_size {bs}"));
    }
}

#[test]
#[ignore = "needs GPU"]
fn prefill_peaked_softmax_matches_reference() {
    // q in ±24: scores with a standard deviation near 8, so the running max moves by large
    // steps between tiles and most probabilities underflow.
    let g = gpu();
    let mut r = rng(0xA77E_0003);
    let b = TextBatch::new(
        &mut r,
        &[(128, 128), (1000, 1000), (17, 300), (1, 5000), (300, 4000)],
        24.0,
    );
    let pool = Pool::new(&mut r, &b, 64);
    check_every_version(&g, &b, &pool, true, true, "peaked softmax");
}

#[test]
#[ignore = "needs GPU"]
fn prefill_non_causal_matches_reference() {
    let g = gpu();
    let mut r = rng(0xA77E_0004);
    let b = TextBatch::new(&mut r, &[(1, 1), (17, 300), (128, 128), (1000, 1000), (70, 2000)], 4.0);
    let pool = Pool::new(&mut r, &b, 64);
    check_every_version(&g, &b, &pool, false, true, "non-causal");
}

#[test]
#[ignore = "needs GPU"]
fn prefill_batch_equals_single_runs() {
    // The work of one (sequence, head, query tile) does not depend on the rest of the batch,
    // so a batch must reproduce each sequence's single run bit for bit.
    let g = gpu();
    let mut r = rng(0xA77E_0005);
    let b = TextBatch::new(&mut r, MIXED, 4.0);
    let pool = Pool::new(&mut r, &b, 32);
    for v in versions(&g) {
        let whole = run_text(&g, &b, &pool, &pool.tables, causal(v), false);
        assert_all_finite(&format!("{v:?} batch"), &whole.out, Q_COLS);
        let mut q0 = 0;
        for s in 0..b.seqs.len() {
            let ql = b.seqs[s].0;
            if ql == 0 {
                continue;
            }
            let one = run_text(&g, &b.single(s), &pool, &pool.rows(&[s]), causal(v), false);
            let want = &whole.out[q0 * Q_COLS..(q0 + ql) * Q_COLS];
            let same = one.out.iter().zip(want).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{v:?} sequence {s} {:?}: single run differs from the batch",
                b.seqs[s]
            );
            q0 += ql;
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn prefill_rows_without_keys_are_zero() {
    // seqused_k < q_len breaks the contract; the kernel still writes finite values: rows that
    // see no key are zero (the reference agrees), the rest normal.
    let g = gpu();
    let mut r = rng(0xA77E_0006);
    let b = TextBatch::new(&mut r, &[(5, 3), (70, 64)], 4.0);
    let pool = Pool::new(&mut r, &b, 16);
    for v in versions(&g) {
        let run = run_text(&g, &b, &pool, &pool.tables, causal(v), false);
        check_text(&format!("{v:?} rows without keys"), &b, &run, true);
        assert!(run.out[..2 * Q_COLS].iter().all(|x| x.to_f32() == 0.0), "{v:?}");
    }
}

/// Packed images with q, k, v as column slices of one fused [total, 3 * 1152] buffer.
pub(crate) struct VisionBatch {
    pub(crate) lens: Vec<usize>,
    /// `[total, 3, HV, DV]`: q, k, v of each token side by side.
    qkv: Vec<bf16>,
}

impl VisionBatch {
    pub(crate) fn new(r: &mut ChaCha8Rng, lens: &[usize]) -> VisionBatch {
        let total: usize = lens.iter().sum();
        let mut qkv = rand_bf16(r, total * 3 * V_COLS, 1.0);
        // q in ±4 like the text tests: a softmax that is neither flat nor one-hot.
        for t in 0..total {
            for x in &mut qkv[t * 3 * V_COLS..t * 3 * V_COLS + V_COLS] {
                *x = bf16::from_f32(x.to_f32() * 4.0);
            }
        }
        VisionBatch {
            lens: lens.to_vec(),
            qkv,
        }
    }

    fn total(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Image `i` alone.
    fn single(&self, i: usize) -> VisionBatch {
        let t0: usize = self.lens[..i].iter().sum();
        let n = self.lens[i];
        VisionBatch {
            lens: vec![n],
            qkv: self.qkv[t0 * 3 * V_COLS..(t0 + n) * 3 * V_COLS].to_vec(),
        }
    }

    /// Part `which` (0 q, 1 k, 2 v) of tokens t0..t0+n as `[n, HV, DV]`.
    fn part(&self, which: usize, t0: usize, n: usize) -> Vec<f64> {
        (t0..t0 + n)
            .flat_map(|t| {
                let at = (t * 3 + which) * V_COLS;
                self.qkv[at..at + V_COLS].iter().map(|x| x.to_f64())
            })
            .collect()
    }
}

/// Runs the vision kernel; out is the first 1152 columns of a poisoned, wider buffer whose
/// other columns must stay untouched. Returns `[total, HV * DV]`.
/// `kernels`: a version, or FA3 with a mainloop and a tile.
pub(crate) fn run_vision(
    g: &Gpu,
    b: &VisionBatch,
    tile: VisionTile,
    kernels: impl Into<AttentionKernels>,
) -> Vec<bf16> {
    let kernels = kernels.into();
    let total = b.total();
    let qkv = DeviceTensor::from_host(g, &[total, 3 * V_COLS], &b.qkv).unwrap();
    let cu = DeviceTensor::from_host(g, &[b.lens.len() + 1], &cu_seqlens(b.lens.iter().copied())).unwrap();
    let out_cols = V_COLS + OUT_EXTRA;
    let mut out = DeviceTensor::alloc(g, DType::BF16, &[total, out_cols]).unwrap();
    out.view_mut().fill_bytes(g, 0xFF).unwrap();
    {
        let all = qkv.view();
        let views = VisionQkv {
            q: all.columns(0, V_COLS).unwrap(),
            k: all.columns(V_COLS, V_COLS).unwrap(),
            v: all.columns(2 * V_COLS, V_COLS).unwrap(),
            num_heads: HV,
        };
        let images = Varlen {
            cu_seqlens: cu.view(),
            max_seqlen: b.lens.iter().copied().max().unwrap_or(0),
        };
        let mut o = out.view_mut().columns(0, V_COLS).unwrap();
        if tile == VisionTile::default() {
            vision_varlen_version(g, &mut o, &views, &images, vision_scale(), kernels).unwrap();
        } else {
            vision_varlen_with(g, &mut o, &views, &images, vision_scale(), tile, kernels).unwrap();
        }
    }
    let all: Vec<bf16> = out.to_host(g).unwrap();
    let mut res = Vec::with_capacity(total * V_COLS);
    for t in 0..total {
        let row = &all[t * out_cols..(t + 1) * out_cols];
        res.extend_from_slice(&row[..V_COLS]);
        assert!(
            row[V_COLS..].iter().all(|x| x.to_bits() == POISON),
            "token {t}: columns past the out view were written"
        );
    }
    res
}

pub(crate) fn check_vision(label: &str, b: &VisionBatch, got: &[bf16]) {
    assert_all_finite(label, got, V_COLS);
    let mut t0 = 0;
    for (i, &n) in b.lens.iter().enumerate() {
        let (q, k, v) = (b.part(0, t0, n), b.part(1, t0, n), b.part(2, t0, n));
        let inputs = SeqInputs {
            q: &q,
            k: &k,
            v: &v,
            q_len: n,
            k_len: n,
            hq: HV,
            hkv: HV,
            d: DV,
            scale: vision_scale() as f64,
            causal: false,
        };
        let rows = sample_rows(n);
        let (want, _) = attention_rows(&inputs, &rows);
        let g: Vec<f64> = rows
            .iter()
            .flat_map(|&r| got[(t0 + r) * V_COLS..(t0 + r + 1) * V_COLS].iter().map(|x| x.to_f64()))
            .collect();
        assert_close(
            &format!("{label}: image {i} ({n} patches)"),
            &g,
            &want,
            2e-2 * rms(&want),
            BF16_RTOL,
        );
        t0 += n;
    }
}

#[test]
#[ignore = "needs GPU"]
fn vision_each_length_matches_reference() {
    let g = gpu();
    let mut r = rng(0xA77E_0101);
    for &n in &[1usize, 2, 17, 128, 1000, 5120] {
        let b = VisionBatch::new(&mut r, &[n]);
        for v in versions(&g) {
            for tile in vision_tiles(v) {
                let got = run_vision(&g, &b, tile, v);
                check_vision(&format!("{v:?} vision {tile:?}"), &b, &got);
            }
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn vision_mixed_batch_matches_reference_and_single_runs() {
    let g = gpu();
    let mut r = rng(0xA77E_0102);
    // 576 and 4096 + 7 are real image sizes (24x24 and 64x64 patches, then an odd one).
    let b = VisionBatch::new(&mut r, &[576, 1, 5120, 17, 1000, 2, 128, 4103, 64, 65]);
    for (v, tile) in versions(&g).into_iter().flat_map(|v| vision_tiles(v).map(|t| (v, t))) {
        let got = run_vision(&g, &b, tile, v);
        check_vision(&format!("{v:?} vision mixed {tile:?}"), &b, &got);
        let mut t0 = 0;
        for i in 0..b.lens.len() {
            let n = b.lens[i];
            let one = run_vision(&g, &b.single(i), tile, v);
            let want = &got[t0 * V_COLS..(t0 + n) * V_COLS];
            let same = one.iter().zip(want).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{v:?} {tile:?} image {i} ({n} patches): single run differs from the batch"
            );
            t0 += n;
        }
    }
}

pub(crate) fn is_unsupported(e: &Error) -> bool {
    matches!(
        e,
        Error::Kernel {
            status: OcrvlStatus::OCRVL_STATUS_UNSUPPORTED,
            ..
        }
    )
}

fn is_invalid(e: &Error) -> bool {
    matches!(e, Error::Invalid { .. })
}

/// Runs the paged prefill on zeros with the given cache dims and q/out width, one sequence of
/// 3 queries; returns the launcher's verdict.
pub(crate) fn paged_try(
    g: &Gpu,
    kv_heads: usize,
    block_size: usize,
    head_dim: usize,
    q_cols: usize,
    version: AttentionVersion,
) -> ocrvl::Result<()> {
    let kc = DeviceTensor::zeros(g, DType::BF16, &[4, kv_heads, block_size, head_dim]).unwrap();
    let vc = DeviceTensor::zeros(g, DType::BF16, &[4, kv_heads, block_size, head_dim]).unwrap();
    let bt = DeviceTensor::from_host(g, &[1, 4], &[0i32, 1, 2, 3]).unwrap();
    let used = DeviceTensor::from_host(g, &[1], &[3i32]).unwrap();
    let cu = DeviceTensor::from_host(g, &[2], &[0i32, 3]).unwrap();
    let q = DeviceTensor::zeros(g, DType::BF16, &[3, q_cols]).unwrap();
    let mut o = DeviceTensor::zeros(g, DType::BF16, &[3, q_cols]).unwrap();
    let kv = PagedKv {
        k_cache: kc.view(),
        v_cache: vc.view(),
        block_tables: bt.view(),
        seqused_k: used.view(),
    };
    let queries = Varlen {
        cu_seqlens: cu.view(),
        max_seqlen: 3,
    };
    prefill_paged_version(g, &mut o.view_mut(), &q.view(), &queries, &kv, 0.1, version)
}

#[test]
#[ignore = "needs GPU"]
fn attention_rejects_unsupported_shapes() {
    let g = gpu();
    for v in versions(&g) {
        rejects_unsupported_shapes(&g, v);
    }
}

fn rejects_unsupported_shapes(g: &Gpu, version: AttentionVersion) {
    // Built: head_dim 128 with block sizes 16..=256 (powers of two).
    paged_try(g, 2, 64, 128, 16 * 128, version).unwrap();
    for (kv_heads, bs, d, q_cols, what) in [
        (2, 64, 64, 16 * 64, "head_dim 64"),
        (2, 64, 96, 16 * 96, "head_dim 96"),
        (2, 8, 128, 16 * 128, "block_size 8"),
        (2, 512, 128, 16 * 128, "block_size 512"),
        (2, 48, 128, 16 * 128, "block_size 48"),
    ] {
        let err = paged_try(g, kv_heads, bs, d, q_cols, version).unwrap_err();
        assert!(is_unsupported(&err), "{version:?} {what}: {err}");
    }
    // 12 query heads over 8 kv heads: not a whole group.
    let err = paged_try(g, 8, 64, 128, 12 * 128, version).unwrap_err();
    assert!(is_invalid(&err), "{version:?} head ratio: {err}");

    // Vision: head_dims 72 and 80 (ERNIE-4.5-VL's ViT; tests/gpu/attention_d80.rs runs it)
    // are built for both paths.
    let cu = DeviceTensor::from_host(g, &[2], &[0i32, 3]).unwrap();
    let images = Varlen {
        cu_seqlens: cu.view(),
        max_seqlen: 3,
    };
    let unbuilt: &[usize] = match version {
        AttentionVersion::Fa2 => &[64, 128],
        AttentionVersion::Fa3 => &[64, 128],
    };
    for &d in unbuilt {
        let x = DeviceTensor::zeros(g, DType::BF16, &[3, 16 * d]).unwrap();
        let mut o = DeviceTensor::zeros(g, DType::BF16, &[3, 16 * d]).unwrap();
        let qkv = VisionQkv {
            q: x.view(),
            k: x.view(),
            v: x.view(),
            num_heads: 16,
        };
        let err = vision_varlen_version(g, &mut o.view_mut(), &qkv, &images, 0.1, version).unwrap_err();
        assert!(is_unsupported(&err), "{version:?} vision head_dim {d}: {err}");
    }
    // Each path rejects the other's extra tile.
    let other_tile = match version {
        AttentionVersion::Fa2 => VisionTile::Pv128,
        AttentionVersion::Fa3 => VisionTile::Pad96,
    };
    let x = DeviceTensor::zeros(g, DType::BF16, &[3, 16 * 72]).unwrap();
    let mut o = DeviceTensor::zeros(g, DType::BF16, &[3, 16 * 72]).unwrap();
    let qkv = VisionQkv {
        q: x.view(),
        k: x.view(),
        v: x.view(),
        num_heads: 16,
    };
    vision_varlen_version(g, &mut o.view_mut(), &qkv, &images, 0.1, version).unwrap();
    let err = vision_varlen_with(g, &mut o.view_mut(), &qkv, &images, 0.1, other_tile, version).unwrap_err();
    assert!(is_unsupported(&err), "{version:?} vision {other_tile:?}: {err}");

    // Strides and alignment that 16-byte copies cannot use, a wrong dtype, a wrong lse shape.
    let wide = DeviceTensor::zeros(g, DType::BF16, &[3, 16 * 72 + 4]).unwrap();
    let wider = DeviceTensor::zeros(g, DType::BF16, &[3, 16 * 72 + 8]).unwrap();
    let ok = DeviceTensor::zeros(g, DType::BF16, &[3, 16 * 72]).unwrap();
    let f16 = DeviceTensor::zeros(g, DType::F16, &[3, 16 * 72]).unwrap();
    let cases = [
        ("stride 1156", wide.view().columns(0, 16 * 72).unwrap()),
        ("misaligned", wider.view().columns(4, 16 * 72).unwrap()),
        ("f16", f16.view()),
    ];
    for (what, q) in cases {
        let mut o = DeviceTensor::zeros(g, DType::BF16, &[3, 16 * 72]).unwrap();
        let qkv = VisionQkv {
            q,
            k: ok.view(),
            v: ok.view(),
            num_heads: 16,
        };
        let err = vision_varlen_version(g, &mut o.view_mut(), &qkv, &images, 0.1, version).unwrap_err();
        assert!(is_invalid(&err), "{version:?} {what}: {err}");
    }
    let bad_cu = DeviceTensor::zeros(g, DType::F32, &[2]).unwrap();
    let bad_images = Varlen {
        cu_seqlens: bad_cu.view(),
        max_seqlen: 3,
    };
    let mut o = DeviceTensor::zeros(g, DType::BF16, &[3, 16 * 72]).unwrap();
    let qkv = VisionQkv {
        q: ok.view(),
        k: ok.view(),
        v: ok.view(),
        num_heads: 16,
    };
    let err = vision_varlen_version(g, &mut o.view_mut(), &qkv, &bad_images, 0.1, version).unwrap_err();
    assert!(is_invalid(&err), "{version:?} f32 cu_seqlens: {err}");
    let err = vision_varlen_version(g, &mut o.view_mut(), &qkv, &images, f32::NAN, version).unwrap_err();
    assert!(is_invalid(&err), "{version:?} NaN scale: {err}");
}
