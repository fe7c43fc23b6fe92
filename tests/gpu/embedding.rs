//! The embedding family: the token-embedding gather (exact copies, out-of-range ids zeroed and
//! reported), the scatter of image features into placeholder rows (untouched rows stay
//! untouched), and the per-image bilinear position embedding against an f64 reference, with
//! several images of different grids packed in one call.

use half::bf16;
use ocrvl::kernels::embedding::{embedding_gather, pos_embed_resample_add, scatter_rows, take_embedding_error};
use ocrvl::runtime::{DType, DeviceTensor, Gpu};
use ocrvl::sys::OcrvlStatus;
use ocrvl::Error;
use rand::Rng;

use crate::common::ref_elementwise::resize_pos_embed;
use crate::common::tol::{assert_close, BF16_RTOL};
use crate::common::{bf16_to_f64, gpu, rand_bf16, rng};

const VOCAB: usize = 103424;
const HIDDEN: usize = 1024;
const TOKENS: [usize; 4] = [1, 7, 83, 5040];

/// A table whose every element is distinct enough to tell rows apart, cheap to build at the
/// real vocabulary (106M elements), and never NaN (so poisoned outputs stay distinguishable).
fn table_values(rows: usize, width: usize) -> Vec<bf16> {
    (0..rows * width)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2654435761) >> 16;
            bf16::from_f32((h % 4093) as f32 / 64.0 - 32.0)
        })
        .collect()
}

fn assert_unsupported(what: &str, r: ocrvl::Result<()>) {
    match r {
        Err(Error::Kernel { status, .. }) => {
            assert_eq!(status, OcrvlStatus::OCRVL_STATUS_UNSUPPORTED, "{what}")
        }
        other => panic!("{what}: expected UNSUPPORTED, got {other:?}"),
    }
}

fn assert_invalid(what: &str, r: ocrvl::Result<()>, needle: &str) {
    match r {
        Err(e @ Error::Invalid { .. }) => assert!(e.to_string().contains(needle), "{what}: {e}"),
        other => panic!("{what}: expected an invalid-argument error about {needle:?}, got {other:?}"),
    }
}

/// Runs the gather into columns `pad..pad + HIDDEN` of a poisoned [tokens, HIDDEN + 2 pad]
/// buffer; returns the whole buffer and the error word.
fn gather(g: &Gpu, table: &DeviceTensor, ids: &[i32], pad: usize, err: &mut DeviceTensor) -> Vec<bf16> {
    let tokens = ids.len();
    let d_ids = DeviceTensor::from_host(g, &[tokens], ids).unwrap();
    let mut out = DeviceTensor::alloc(g, DType::BF16, &[tokens, HIDDEN + 2 * pad]).unwrap();
    out.view_mut().fill_bytes(g, 0xFF).unwrap();
    {
        let mut view = out.view_mut().columns(pad, HIDDEN).unwrap();
        embedding_gather(g, &mut view, &table.view(), &d_ids.view(), &mut err.view_mut()).unwrap();
    }
    out.to_host::<bf16>(g).unwrap()
}

/// Checks every element of the gathered buffer: row t holds table[ids[t]] bit for bit (zeros
/// for a bad id), the padding is still NaN.
fn check_gather(what: &str, host_table: &[bf16], ids: &[i32], pad: usize, got: &[bf16]) {
    let full = HIDDEN + 2 * pad;
    for (t, &id) in ids.iter().enumerate() {
        let row = &got[t * full..(t + 1) * full];
        for (c, v) in row.iter().enumerate() {
            if c < pad || c >= pad + HIDDEN {
                assert!(v.is_nan(), "{what}: padding at token {t} column {c} was written");
                continue;
            }
            let want = if (0..VOCAB as i32).contains(&id) {
                host_table[id as usize * HIDDEN + c - pad]
            } else {
                bf16::ZERO
            };
            assert_eq!(
                v.to_bits(),
                want.to_bits(),
                "{what}: token {t} (id {id}) column {}",
                c - pad
            );
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn embedding_gather_copies_rows_and_reports_bad_ids() {
    let g = gpu();
    let host_table = table_values(VOCAB, HIDDEN);
    let table = DeviceTensor::from_host(&g, &[VOCAB, HIDDEN], &host_table).unwrap();
    let mut err = DeviceTensor::zeros(&g, DType::I32, &[1]).unwrap();
    let mut r = rng(0xE4BE);

    for &tokens in &TOKENS {
        let mut ids: Vec<i32> = (0..tokens).map(|_| r.random_range(0..VOCAB as i32)).collect();
        // The first and last rows of the table.
        ids[0] = 0;
        if tokens > 1 {
            ids[tokens - 1] = VOCAB as i32 - 1;
        }
        for pad in [0usize, 8] {
            let what = format!("gather tokens={tokens} pad={pad}");
            let got = gather(&g, &table, &ids, pad, &mut err);
            check_gather(&what, &host_table, &ids, pad, &got);
            assert_eq!(
                err.to_host::<i32>(&g).unwrap()[0],
                0,
                "{what}: error word set with valid ids"
            );
        }
    }

    // Bad ids: zeros in their rows, the neighbours intact, and one of them in the error word.
    let bad = [-1i32, VOCAB as i32, i32::MAX, i32::MIN];
    let mut ids: Vec<i32> = (0..83).map(|_| r.random_range(0..VOCAB as i32)).collect();
    for (k, &b) in bad.iter().enumerate() {
        ids[10 + 20 * k] = b;
    }
    let got = gather(&g, &table, &ids, 0, &mut err);
    check_gather("gather with bad ids", &host_table, &ids, 0, &got);
    let word = err.to_host::<i32>(&g).unwrap()[0];
    assert!(bad.contains(&word), "error word {word}, want one of {bad:?}");
    let e = take_embedding_error(&g, &mut err.view_mut(), VOCAB).unwrap_err();
    assert!(e.to_string().contains(&format!("token id {word} out of range")), "{e}");
    // Taking the error cleared it; a clean step leaves it clear.
    assert_eq!(err.to_host::<i32>(&g).unwrap()[0], 0);
    let ok_ids = vec![5i32; 7];
    let got = gather(&g, &table, &ok_ids, 0, &mut err);
    check_gather("gather after a report", &host_table, &ok_ids, 0, &got);
    take_embedding_error(&g, &mut err.view_mut(), VOCAB).unwrap();
}

fn run_scatter(g: &Gpu, tokens: usize, rows: &[i32], src_pad: usize, seed: u64) {
    let what = format!("scatter tokens={tokens} n={} src_pad={src_pad}", rows.len());
    let n = rows.len();
    let mut r = rng(seed);
    // dst starts with known non-NaN data: rows not named must come back bit for bit.
    let before = rand_bf16(&mut r, tokens * HIDDEN, 2.0);
    let src_vals = rand_bf16(&mut r, n * HIDDEN, 2.0);
    let full = HIDDEN + 2 * src_pad;
    let mut src_host = vec![bf16::from_bits(0xFFFF); n * full];
    for i in 0..n {
        src_host[i * full + src_pad..i * full + src_pad + HIDDEN]
            .copy_from_slice(&src_vals[i * HIDDEN..(i + 1) * HIDDEN]);
    }
    let src = DeviceTensor::from_host(g, &[n, full], &src_host).unwrap();
    let mut dst = DeviceTensor::from_host(g, &[tokens, HIDDEN], &before).unwrap();
    let d_rows = DeviceTensor::from_host(g, &[n], rows).unwrap();
    let src_view = src.view().columns(src_pad, HIDDEN).unwrap();
    scatter_rows(g, &mut dst.view_mut(), &src_view, &d_rows.view()).unwrap();
    let got = dst.to_host::<bf16>(g).unwrap();

    let mut want = before.clone();
    for (i, &row) in rows.iter().enumerate() {
        if (0..tokens as i32).contains(&row) {
            let row = row as usize;
            want[row * HIDDEN..(row + 1) * HIDDEN].copy_from_slice(&src_vals[i * HIDDEN..(i + 1) * HIDDEN]);
        }
    }
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{what}: row {} column {}",
            i / HIDDEN,
            i % HIDDEN
        );
    }
}

#[test]
#[ignore = "needs GPU"]
fn scatter_rows_places_features_and_leaves_other_rows() {
    let g = gpu();
    // Non-contiguous positions: two runs, single rows, the first and last rows.
    let mut rows: Vec<i32> = vec![0, 3, 4, 5, 10, 11];
    rows.extend(40..60);
    rows.push(82);
    run_scatter(&g, 83, &rows, 0, 0x5CA7);
    run_scatter(&g, 83, &rows, 8, 0x5CA8);
    // One image token, at a single-token prompt's only row.
    run_scatter(&g, 1, &[0], 0, 0x5CA9);
    // A prefill of 5040 tokens holding two images of 1280 and 300 placeholders.
    let mut rows: Vec<i32> = (20..1300).collect();
    rows.extend(2000..2300);
    run_scatter(&g, 5040, &rows, 0, 0x5CAA);
    // Out-of-range entries are skipped, never written.
    run_scatter(&g, 83, &[2, -1, 83, 7, i32::MAX], 0, 0x5CAB);
}

/// Uploads the packed metadata for `grids`, runs the kernel on x (rows strided by `pad`
/// columns) and checks it against x + resize(table) in f64.
fn run_pos_embed(g: &Gpu, grids: &[(usize, usize)], dim: usize, pad: usize, seed: u64) {
    const SIDE: usize = 27;
    let what = format!("pos_embed grids={grids:?} dim={dim} pad={pad}");
    let mut r = rng(seed);
    let total: usize = grids.iter().map(|(h, w)| h * w).sum();
    let table = rand_bf16(&mut r, SIDE * SIDE * dim, 1.0);
    let x = rand_bf16(&mut r, total * dim, 2.0);
    let mut cu = vec![0i32];
    for (h, w) in grids {
        cu.push(cu.last().unwrap() + (h * w) as i32);
    }
    let hw: Vec<i32> = grids.iter().flat_map(|&(h, w)| [h as i32, w as i32]).collect();

    let full = dim + 2 * pad;
    let mut x_host = vec![bf16::from_bits(0xFFFF); total * full];
    for p in 0..total {
        x_host[p * full + pad..p * full + pad + dim].copy_from_slice(&x[p * dim..(p + 1) * dim]);
    }
    let mut d_x = DeviceTensor::from_host(g, &[total, full], &x_host).unwrap();
    let d_table = DeviceTensor::from_host(g, &[SIDE * SIDE, dim], &table).unwrap();
    let d_cu = DeviceTensor::from_host(g, &[grids.len() + 1], &cu).unwrap();
    let d_hw = DeviceTensor::from_host(g, &[grids.len(), 2], &hw).unwrap();
    {
        let mut view = d_x.view_mut().columns(pad, dim).unwrap();
        pos_embed_resample_add(g, &mut view, &d_table.view(), SIDE, &d_cu.view(), &d_hw.view()).unwrap();
    }
    let host = d_x.to_host::<bf16>(g).unwrap();
    let mut got = Vec::with_capacity(total * dim);
    for p in 0..total {
        let row = &host[p * full..(p + 1) * full];
        assert!(
            row[..pad].iter().chain(&row[pad + dim..]).all(|v| v.is_nan()),
            "{what}: padding of patch {p} written"
        );
        got.extend(bf16_to_f64(&row[pad..pad + dim]));
    }

    let table64 = bf16_to_f64(&table);
    let mut want = bf16_to_f64(&x);
    for (i, &(h, w)) in grids.iter().enumerate() {
        let pos = resize_pos_embed(&table64, SIDE, dim, h, w);
        let base = cu[i] as usize * dim;
        for (k, v) in pos.iter().enumerate() {
            want[base + k] += v;
        }
    }
    // One f32 computation (four-tap weights, then the add) rounded once to bf16; 1e-5 absolute
    // covers f32 cancellation where x + pos is near zero.
    assert_close(&what, &got, &want, 1e-5, BF16_RTOL);
}

#[test]
#[ignore = "needs GPU"]
fn pos_embed_resample_add_matches_f64_bilinear() {
    let g = gpu();
    // 27x27 alone: scale 1, so the table is added exactly (every weight 0 or 1).
    run_pos_embed(&g, &[(27, 27)], 1152, 0, 0x9057);
    // Packed: downsampling (4,4), identity (27,27), upsampling both ways (36,140: a 5040-patch
    // page), down rows / up columns (2,90), a 1-wide grid (5,1) and a single patch (1,1), an
    // empty image between two others (the binary search must skip it), at the model's dim.
    run_pos_embed(
        &g,
        &[(4, 4), (27, 27), (36, 140), (2, 90), (0, 0), (5, 1), (1, 1)],
        1152,
        0,
        0x9058,
    );
    // Strided rows and a dim of 3 blocks per row.
    run_pos_embed(&g, &[(1, 1), (12, 30), (60, 2)], 2056, 8, 0x9059);
    // One 72x70 image (the bench shape) and a 1-high grid.
    run_pos_embed(&g, &[(72, 70), (1, 40)], 1152, 0, 0x905A);
}

#[test]
#[ignore = "needs GPU"]
fn embedding_kernels_reject_unsupported_shapes_and_dtypes() {
    let g = gpu();
    let z = |dtype, dims: &[usize]| DeviceTensor::zeros(&g, dtype, dims).unwrap();
    let ids = z(DType::I32, &[4]);
    let mut err = z(DType::I32, &[1]);

    // hidden not a multiple of 8.
    let (table, mut out) = (z(DType::BF16, &[16, 1001]), z(DType::BF16, &[4, 1001]));
    assert_unsupported(
        "gather hidden 1001",
        embedding_gather(&g, &mut out.view_mut(), &table.view(), &ids.view(), &mut err.view_mut()),
    );
    let src = z(DType::BF16, &[4, 1001]);
    assert_unsupported(
        "scatter hidden 1001",
        scatter_rows(&g, &mut out.view_mut(), &src.view(), &ids.view()),
    );
    let (cu, hw) = (
        DeviceTensor::from_host(&g, &[2], &[0i32, 4]).unwrap(),
        DeviceTensor::from_host(&g, &[1, 2], &[2i32, 2]).unwrap(),
    );
    let pos_table = z(DType::BF16, &[729, 1001]);
    assert_unsupported(
        "pos_embed dim 1001",
        pos_embed_resample_add(&g, &mut out.view_mut(), &pos_table.view(), 27, &cu.view(), &hw.view()),
    );

    // Dtypes other than bf16.
    let (table16, mut out16) = (z(DType::F16, &[16, 1024]), z(DType::F16, &[4, 1024]));
    assert_unsupported(
        "gather f16",
        embedding_gather(
            &g,
            &mut out16.view_mut(),
            &table16.view(),
            &ids.view(),
            &mut err.view_mut(),
        ),
    );

    // Disagreeing shapes and dtypes: invalid, caught by the wrappers.
    let table = z(DType::BF16, &[16, 1024]);
    let mut out = z(DType::BF16, &[4, 1024]);
    let ids_f32 = z(DType::F32, &[4]);
    assert_invalid(
        "gather ids dtype",
        embedding_gather(
            &g,
            &mut out.view_mut(),
            &table.view(),
            &ids_f32.view(),
            &mut err.view_mut(),
        ),
        "ids",
    );
    let ids5 = z(DType::I32, &[5]);
    assert_invalid(
        "gather ids length",
        embedding_gather(
            &g,
            &mut out.view_mut(),
            &table.view(),
            &ids5.view(),
            &mut err.view_mut(),
        ),
        "ids",
    );
    let narrow = z(DType::BF16, &[16, 1016]);
    assert_invalid(
        "gather table width",
        embedding_gather(
            &g,
            &mut out.view_mut(),
            &narrow.view(),
            &ids.view(),
            &mut err.view_mut(),
        ),
        "table",
    );
    let src = z(DType::BF16, &[3, 1024]);
    assert_invalid(
        "scatter rows length",
        scatter_rows(&g, &mut out.view_mut(), &src.view(), &ids.view()),
        "dst_rows",
    );
    let small_table = z(DType::BF16, &[700, 1024]);
    assert_invalid(
        "pos_embed table rows",
        pos_embed_resample_add(&g, &mut out.view_mut(), &small_table.view(), 27, &cu.view(), &hw.view()),
        "table",
    );
    let hw_bad = z(DType::I32, &[2, 2]);
    let pos_table = z(DType::BF16, &[729, 1024]);
    assert_invalid(
        "pos_embed grid_hw",
        pos_embed_resample_add(
            &g,
            &mut out.view_mut(),
            &pos_table.view(),
            27,
            &cu.view(),
            &hw_bad.view(),
        ),
        "grid_hw",
    );

    // Zero tokens launch nothing and succeed.
    let (ids0, mut out0) = (z(DType::I32, &[0]), z(DType::BF16, &[0, 1024]));
    embedding_gather(
        &g,
        &mut out0.view_mut(),
        &table.view(),
        &ids0.view(),
        &mut err.view_mut(),
    )
    .unwrap();
}
