//! Paged decode attention against an f64 reference, at the model's shape (16 query heads over
//! 2 kv heads, head_dim 128): every context length of the issue alone and mixed in one batch
//! (up to 256 sequences), block sizes 16 and 64, the pool three times larger than needed under
//! a shuffled block table with NaN wherever a correct kernel must not read, partially filled
//! last blocks, q as a column slice of a fused qkv buffer, split and unsplit runs (1, 3 and the
//! heuristic's count), a batch of N equal to N single runs, and the rejected shapes.
//!
//! Tolerance, per sequence: `|got - want| <= 2e-2 * rms(want) + BF16_RTOL * |want|`. The output
//! is a softmax-weighted average of v rows. The kernel computes q.k exactly (bf16 products, f32
//! sums), rounds the weights P to bf16 for the tensor-core PV product (2^-9 relative each, with
//! random signs, so o moves by about 2^-9 * rms(v) / sqrt(keys), far below 2e-2 * rms(o)),
//! accumulates in f32 and rounds o once to bf16 (BF16_RTOL). The absolute part covers elements
//! near zero, where averaging many v values cancels and only absolute error is left; it is
//! scaled per sequence because rms(o) shrinks like 1/sqrt(len) between lengths 1 and 5120.

use half::bf16;
use ocrvl::kernels::decode::{decode_num_splits, decode_paged, decode_workspace_bytes, PagedKv, MAX_SPLITS};
use ocrvl::runtime::{DType, DeviceTensor, Gpu, TensorView};
use ocrvl::sys::OcrvlStatus;
use ocrvl::Error;
use rand::Rng;

use crate::common::ref_decode::{build_pool, decode_attention, PagedPool};
use crate::common::tol::{assert_close, rms, BF16_RTOL};
use crate::common::{bf16_to_f64, gpu, rand_bf16, rng};

const HQ: usize = 16;
const HKV: usize = 2;
const D: usize = 128;
/// A fused qkv row: q (16 x 128), then k and v (2 x 128 each).
const QKV_WIDTH: usize = (HQ + 2 * HKV) * D;
const LENGTHS: [usize; 6] = [1, 2, 17, 128, 1000, 5120];

fn scale() -> f32 {
    1.0 / (D as f32).sqrt()
}

struct Batch {
    lens: Vec<usize>,
    /// [n, HQ, D]
    q: Vec<bf16>,
    /// [len, HKV, D] per sequence
    k_seqs: Vec<Vec<bf16>>,
    v_seqs: Vec<Vec<bf16>>,
    pool: PagedPool,
    block_size: usize,
}

/// q uniform in [-q_scale, q_scale), k and v in [-1, 1): scores have a standard deviation of
/// about 0.33 * q_scale, so q_scale 1 gives a flat softmax and 6 a peaked one.
fn make_batch(seed: u64, lens: &[usize], block_size: usize, q_scale: f32) -> Batch {
    let mut r = rng(seed);
    let q = rand_bf16(&mut r, lens.len() * HQ * D, q_scale);
    let k_seqs: Vec<Vec<bf16>> = lens.iter().map(|&l| rand_bf16(&mut r, l * HKV * D, 1.0)).collect();
    let v_seqs: Vec<Vec<bf16>> = lens.iter().map(|&l| rand_bf16(&mut r, l * HKV * D, 1.0)).collect();
    let pool = build_pool(&mut r, &k_seqs, &v_seqs, lens, HKV, D, block_size, 3);
    Batch {
        lens: lens.to_vec(),
        q,
        k_seqs,
        v_seqs,
        pool,
        block_size,
    }
}

struct DeviceBatch {
    /// [n, QKV_WIDTH]: q in columns 0..HQ*D, NaN in the k and v columns (never read).
    qkv: DeviceTensor,
    /// [n, HQ, D], the same q contiguous.
    q3: DeviceTensor,
    k: DeviceTensor,
    v: DeviceTensor,
    block_tables: DeviceTensor,
    seq_lens: DeviceTensor,
    max_seq_len: usize,
}

fn upload(g: &Gpu, b: &Batch) -> DeviceBatch {
    let n = b.lens.len();
    let mut qkv = vec![bf16::from_bits(0x7FC0); n * QKV_WIDTH];
    for s in 0..n {
        qkv[s * QKV_WIDTH..s * QKV_WIDTH + HQ * D].copy_from_slice(&b.q[s * HQ * D..(s + 1) * HQ * D]);
    }
    let cache_dims = [b.pool.num_blocks, HKV, b.block_size, D];
    let lens: Vec<i32> = b.lens.iter().map(|&l| l as i32).collect();
    DeviceBatch {
        qkv: DeviceTensor::from_host(g, &[n, QKV_WIDTH], &qkv).unwrap(),
        q3: DeviceTensor::from_host(g, &[n, HQ, D], &b.q).unwrap(),
        k: DeviceTensor::from_host(g, &cache_dims, &b.pool.k).unwrap(),
        v: DeviceTensor::from_host(g, &cache_dims, &b.pool.v).unwrap(),
        block_tables: DeviceTensor::from_host(g, &[n, b.pool.max_blocks_per_seq], &b.pool.block_tables).unwrap(),
        seq_lens: DeviceTensor::from_host(g, &[n], &lens).unwrap(),
        max_seq_len: b.lens.iter().cloned().max().unwrap_or(0),
    }
}

/// Runs sequences `first..first + count` of the batch (all of it by default); q from the
/// fused qkv buffer (strided) or the contiguous copy. The output and the workspace are
/// poisoned with NaN first. Returns o as f64 and the split count used.
fn run(
    g: &Gpu,
    db: &DeviceBatch,
    rows: Option<(usize, usize)>,
    splits: Option<usize>,
    fused_q: bool,
) -> (Vec<f64>, usize) {
    let n_all = db.seq_lens.dims()[0];
    let (first, n) = rows.unwrap_or((0, n_all));
    let q_full: TensorView = if fused_q {
        db.qkv.view().columns(0, HQ * D).unwrap()
    } else {
        db.q3.view()
    };
    let q = q_full.narrow0(first, n).unwrap();
    let kv = PagedKv {
        k_cache: db.k.view(),
        v_cache: db.v.view(),
        block_tables: db.block_tables.view().narrow0(first, n).unwrap(),
        seq_lens: db.seq_lens.view().narrow0(first, n).unwrap(),
        max_seq_len: db.max_seq_len,
    };
    let expect_splits = splits.unwrap_or_else(|| decode_num_splits(n, HKV, db.max_seq_len, g.sm_count()));
    let ws_bytes = decode_workspace_bytes(n, HQ, D, expect_splits);
    let mut ws = DeviceTensor::alloc(g, DType::F32, &[ws_bytes.div_ceil(4).max(1)]).unwrap();
    ws.view_mut().fill_bytes(g, 0xFF).unwrap();
    let mut o = DeviceTensor::alloc(g, DType::BF16, &[n, HQ, D]).unwrap();
    o.view_mut().fill_bytes(g, 0xFF).unwrap();
    let used = decode_paged(g, &mut o.view_mut(), &q, &kv, scale(), splits, Some(&mut ws.view_mut())).unwrap();
    assert_eq!(used, expect_splits, "split count");
    (bf16_to_f64(&o.to_host::<bf16>(g).unwrap()), used)
}

/// The f64 reference of every sequence ([HQ * D] each), sequences spread over threads.
fn reference(b: &Batch) -> Vec<Vec<f64>> {
    let threads = std::thread::available_parallelism().map_or(4, |t| t.get()).min(16);
    let n = b.lens.len();
    let chunk = n.div_ceil(threads).max(1);
    let idx: Vec<usize> = (0..n).collect();
    std::thread::scope(|sc| {
        let handles: Vec<_> = idx
            .chunks(chunk)
            .map(|part| {
                sc.spawn(move || {
                    part.iter()
                        .map(|&s| {
                            decode_attention(
                                &bf16_to_f64(&b.q[s * HQ * D..(s + 1) * HQ * D]),
                                &bf16_to_f64(&b.k_seqs[s]),
                                &bf16_to_f64(&b.v_seqs[s]),
                                b.lens[s],
                                HKV,
                                D,
                                scale() as f64,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// Per-sequence comparison with the tolerance of the module doc.
fn check(what: &str, b: &Batch, got: &[f64], want: &[Vec<f64>]) {
    assert_eq!(got.len(), want.len() * HQ * D, "{what}: output size");
    for (s, w) in want.iter().enumerate() {
        let atol = 2e-2 * rms(w);
        let label = format!("{what}: seq {s} (len {})", b.lens[s]);
        assert_close(&label, &got[s * HQ * D..(s + 1) * HQ * D], w, atol, BF16_RTOL);
    }
}

/// Runs the batch unsplit, with 3 splits and with the heuristic's count; each must match the
/// reference, and the split runs must match the unsplit one.
fn check_all_splits(g: &Gpu, what: &str, b: &Batch, fused_q: bool) {
    let db = upload(g, b);
    let want = reference(b);
    let (unsplit, _) = run(g, &db, None, Some(1), fused_q);
    check(&format!("{what}, 1 split"), b, &unsplit, &want);
    for splits in [Some(3), None] {
        let (got, used) = run(g, &db, None, splits, fused_q);
        check(&format!("{what}, {used} splits"), b, &got, &want);
        let as_ref: Vec<Vec<f64>> = unsplit.chunks(HQ * D).map(|c| c.to_vec()).collect();
        // Both carry the kernel's rounding, so twice the relative part.
        for (s, w) in as_ref.iter().enumerate() {
            let label = format!("{what}: {used} splits vs 1, seq {s} (len {})", b.lens[s]);
            assert_close(
                &label,
                &got[s * HQ * D..(s + 1) * HQ * D],
                w,
                2e-2 * rms(w),
                2.0 * BF16_RTOL,
            );
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn decode_each_length_matches_reference_split_and_unsplit() {
    let g = gpu();
    for &bs in &[16usize, 64] {
        for (i, &len) in LENGTHS.iter().enumerate() {
            let b = make_batch(0xDEC0_0000 + (bs * 100 + i) as u64, &[len], bs, 1.0);
            check_all_splits(&g, &format!("block {bs}, len {len}"), &b, true);
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn decode_mixed_batches_match_reference() {
    let g = gpu();
    // Every length twice, block size 16, a peaked softmax (the running max moves a lot).
    let mut lens: Vec<usize> = LENGTHS.to_vec();
    lens.extend(LENGTHS.iter().rev());
    let b = make_batch(0xDEC1, &lens, 16, 6.0);
    check_all_splits(&g, "12 mixed, block 16", &b, true);

    // 256 sequences, block size 64: the lengths first, then random lengths up to
    // 1500 (most with a partly filled last block); q contiguous this time.
    let mut r = rng(0xDEC2);
    let mut lens: Vec<usize> = LENGTHS.iter().chain(LENGTHS.iter()).cloned().collect();
    while lens.len() < 256 {
        lens.push(r.random_range(1..=1500));
    }
    let b = make_batch(0xDEC3, &lens, 64, 2.0);
    check_all_splits(&g, "256 mixed, block 64", &b, false);
}

#[test]
#[ignore = "needs GPU"]
fn decode_batch_of_n_equals_n_single_runs() {
    let g = gpu();
    let lens = [5120usize, 1, 300, 17, 1000, 64, 65, 2];
    let b = make_batch(0xDEC4, &lens, 16, 3.0);
    let db = upload(&g, &b);
    let want = reference(&b);
    for splits in [1usize, 3] {
        let (batch, _) = run(&g, &db, None, Some(splits), true);
        check(&format!("batch, {splits} splits"), &b, &batch, &want);
        for s in 0..lens.len() {
            let (single, _) = run(&g, &db, Some((s, 1)), Some(splits), true);
            // Same CTAs doing the same work in the same order: bit-identical.
            assert_eq!(
                single,
                batch[s * HQ * D..(s + 1) * HQ * D],
                "{splits} splits: sequence {s} (len {}) alone differs from its row in the batch",
                lens[s]
            );
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn decode_zero_length_sequences_get_zeros() {
    let g = gpu();
    // Length 0 (a padded batch slot) among real ones, each split mode.
    let lens = [0usize, 5, 0, 300, 129];
    let b = make_batch(0xDEC5, &lens, 64, 1.0);
    check_all_splits(&g, "with empty sequences", &b, true);
}

fn assert_unsupported(what: &str, r: ocrvl::Result<usize>) {
    match r {
        Err(Error::Kernel { status, .. }) => assert_eq!(status, OcrvlStatus::OCRVL_STATUS_UNSUPPORTED, "{what}"),
        other => panic!("{what}: expected UNSUPPORTED, got {other:?}"),
    }
}

fn assert_invalid(what: &str, r: ocrvl::Result<usize>, needle: &str) {
    match r {
        Err(e @ Error::Invalid { .. }) => assert!(e.to_string().contains(needle), "{what}: {e}"),
        other => panic!("{what}: expected an invalid-argument error about {needle:?}, got {other:?}"),
    }
}

/// Tensors of one decode call, zero-filled (nothing here is launched).
struct Shapes {
    q: DeviceTensor,
    o: DeviceTensor,
    k: DeviceTensor,
    v: DeviceTensor,
    bt: DeviceTensor,
    sl: DeviceTensor,
}

fn shapes(g: &Gpu, dtype: DType, n: usize, hq: usize, hkv: usize, bs: usize, d: usize) -> Shapes {
    Shapes {
        q: DeviceTensor::zeros(g, dtype, &[n, hq, d]).unwrap(),
        o: DeviceTensor::zeros(g, dtype, &[n, hq, d]).unwrap(),
        k: DeviceTensor::zeros(g, dtype, &[4, hkv, bs, d]).unwrap(),
        v: DeviceTensor::zeros(g, dtype, &[4, hkv, bs, d]).unwrap(),
        bt: DeviceTensor::zeros(g, DType::I32, &[n, 4]).unwrap(),
        sl: DeviceTensor::zeros(g, DType::I32, &[n]).unwrap(),
    }
}

fn call(g: &Gpu, t: &mut Shapes, splits: Option<usize>) -> ocrvl::Result<usize> {
    let bs = t.k.dims()[2];
    let kv = PagedKv {
        k_cache: t.k.view(),
        v_cache: t.v.view(),
        block_tables: t.bt.view(),
        seq_lens: t.sl.view(),
        max_seq_len: 4 * bs,
    };
    decode_paged(g, &mut t.o.view_mut(), &t.q.view(), &kv, scale(), splits, None)
}

#[test]
#[ignore = "needs GPU"]
fn decode_rejects_unsupported_and_invalid_arguments() {
    let g = gpu();
    let bf = DType::BF16;
    // The supported shape is accepted (all lengths 0 here: o becomes zeros).
    call(&g, &mut shapes(&g, bf, 2, 16, 2, 64, 128), Some(1)).unwrap();

    // Unsupported by the kernel: head_dim, a head ratio over 8 (ratios 1..8: decode_gqa.rs),
    // block size, dtype, q token stride.
    assert_unsupported("head_dim 64", call(&g, &mut shapes(&g, bf, 2, 16, 2, 64, 64), Some(1)));
    assert_unsupported("head_dim 72", call(&g, &mut shapes(&g, bf, 2, 16, 2, 64, 72), Some(1)));
    assert_unsupported(
        "16 q heads over 1",
        call(&g, &mut shapes(&g, bf, 2, 16, 1, 64, 128), Some(1)),
    );
    assert_unsupported(
        "18 q heads over 2",
        call(&g, &mut shapes(&g, bf, 2, 18, 2, 64, 128), Some(1)),
    );
    for bs in [8usize, 48, 512] {
        assert_unsupported(
            &format!("block {bs}"),
            call(&g, &mut shapes(&g, bf, 2, 16, 2, bs, 128), Some(1)),
        );
    }
    assert_unsupported("f16", call(&g, &mut shapes(&g, DType::F16, 2, 16, 2, 64, 128), Some(1)));
    {
        let mut t = shapes(&g, bf, 2, 16, 2, 64, 128);
        let wide = DeviceTensor::zeros(&g, bf, &[2, 16 * 128 + 4]).unwrap();
        let q = wide.view().columns(0, 16 * 128).unwrap();
        let kv = PagedKv {
            k_cache: t.k.view(),
            v_cache: t.v.view(),
            block_tables: t.bt.view(),
            seq_lens: t.sl.view(),
            max_seq_len: 64,
        };
        let r = decode_paged(&g, &mut t.o.view_mut(), &q, &kv, scale(), Some(1), None);
        assert_unsupported("q token stride 2052", r);
    }

    // Invalid arguments, caught by the wrapper.
    let mut t = shapes(&g, bf, 2, 16, 2, 64, 128);
    assert_invalid("0 splits", call(&g, &mut t, Some(0)), "num_splits");
    assert_invalid("too many splits", call(&g, &mut t, Some(MAX_SPLITS + 1)), "num_splits");
    assert_invalid("3 splits, no workspace", call(&g, &mut t, Some(3)), "workspace");
    {
        let need = decode_workspace_bytes(2, 16, 128, 3);
        let mut small = DeviceTensor::zeros(&g, DType::F32, &[need / 4 - 1]).unwrap();
        let kv = PagedKv {
            k_cache: t.k.view(),
            v_cache: t.v.view(),
            block_tables: t.bt.view(),
            seq_lens: t.sl.view(),
            max_seq_len: 64,
        };
        let r = decode_paged(
            &g,
            &mut t.o.view_mut(),
            &t.q.view(),
            &kv,
            scale(),
            Some(3),
            Some(&mut small.view_mut()),
        );
        assert_invalid("small workspace", r, "workspace");
    }
    let mut bad = shapes(&g, bf, 2, 16, 2, 64, 128);
    bad.o = DeviceTensor::zeros(&g, bf, &[2, 15, 128]).unwrap();
    assert_invalid("o heads", call(&g, &mut bad, Some(1)), "o:");
    let mut bad = shapes(&g, bf, 2, 16, 2, 64, 128);
    bad.sl = DeviceTensor::zeros(&g, DType::I32, &[3]).unwrap();
    assert_invalid("seq_lens length", call(&g, &mut bad, Some(1)), "seq_lens");
    let mut bad = shapes(&g, bf, 2, 16, 2, 64, 128);
    bad.bt = DeviceTensor::zeros(&g, DType::I32, &[1, 4]).unwrap();
    assert_invalid("block_tables rows", call(&g, &mut bad, Some(1)), "block_tables");
    let mut bad = shapes(&g, bf, 2, 16, 2, 64, 128);
    bad.v = DeviceTensor::zeros(&g, bf, &[5, 2, 64, 128]).unwrap();
    assert_invalid("v_cache dims", call(&g, &mut bad, Some(1)), "v_cache");
    let mut bad = shapes(&g, bf, 2, 12, 8, 64, 128);
    bad.o = DeviceTensor::zeros(&g, bf, &[2, 12, 128]).unwrap();
    assert_invalid("12 q heads over 8", call(&g, &mut bad, Some(1)), "multiple");
    let mut bad = shapes(&g, bf, 2, 16, 2, 64, 128);
    bad.q = DeviceTensor::zeros(&g, DType::F16, &[2, 16, 128]).unwrap();
    assert_invalid("q dtype", call(&g, &mut bad, Some(1)), "q is");
    {
        let mut t = shapes(&g, bf, 2, 16, 2, 64, 128);
        let kv = PagedKv {
            k_cache: t.k.view(),
            v_cache: t.v.view(),
            block_tables: t.bt.view(),
            seq_lens: t.sl.view(),
            max_seq_len: 4 * 64 + 1,
        };
        let r = decode_paged(&g, &mut t.o.view_mut(), &t.q.view(), &kv, scale(), Some(1), None);
        assert_invalid("max_seq_len", r, "max_seq_len");
    }
}
