//! The rope kernels (text M-RoPE and 2-D vision rope) against f64 references: q and k carved as
//! column views of one fused qkv buffer (as the model's fused projection produces them), token
//! counts from one to a long prefill, three different position rows, positions with a row
//! stride and as one shared row, f16 as well as bf16, and rejected head dims, alignments,
//! dtypes and shapes. The v columns of the fused buffer must come back bit for bit.
//!
//! Tolerance: BF16_RTOL (F16_RTOL) relative plus 1e-2 · rms(ref) absolute. The output is one
//! rounding of an f32 computation, but the f32 angle `pos * inv_freq` itself carries up to
//! ~1.5 ulp of error; at text positions near 16k that is ~1e-3 rad, i.e. ~1.5e-3 · |x| of
//! output error where the relative term of small outputs does not reach: the absolute term
//! (about 6e-3 for inputs uniform in [-1, 1)) covers it with room. Unwritten elements keep
//! their input and fail the comparison (every angle is non-zero but for row or column 0).

use half::{bf16, f16};
use ocrvl::kernels::rope::{mrope, mrope_interleaved, vision_rope};
use ocrvl::runtime::{DType, DeviceTensor, Gpu, TensorViewMut};
use ocrvl::sys::OcrvlStatus;
use ocrvl::{Error, Result};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::common::ref_rope::{ernie_angles, mrope_angles, rotate_half, rotate_interleaved, vision_angles};
use crate::common::tol::{assert_close, rms, BF16_RTOL, F16_RTOL};
use crate::common::{gpu, rand_f32, rng};

/// The text decoder's: 16 q heads, 2 kv heads, head_dim 128, theta 5e5, sections [16, 24, 24].
const TEXT_THETA: f32 = 500000.0;
const TEXT_SECTIONS: [u32; 3] = [16, 24, 24];
/// The vision tower's: 16 heads of 72, theta 1e4.
const VISION_THETA: f32 = 10000.0;

/// A fused [tokens, width] buffer of random values in [-1, 1), rounded to `dtype`; returns
/// the device tensor and the values it holds (as f64) and as raw 16-bit patterns.
fn fused_buffer(g: &Gpu, r: &mut ChaCha8Rng, dtype: DType, tokens: usize, width: usize) -> (DeviceTensor, Vec<u16>) {
    let vals = rand_f32(r, tokens * width, 1.0);
    match dtype {
        DType::BF16 => {
            let v: Vec<bf16> = vals.iter().map(|&x| bf16::from_f32(x)).collect();
            (
                DeviceTensor::from_host(g, &[tokens, width], &v).unwrap(),
                v.iter().map(|x| x.to_bits()).collect(),
            )
        }
        DType::F16 => {
            let v: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
            (
                DeviceTensor::from_host(g, &[tokens, width], &v).unwrap(),
                v.iter().map(|x| x.to_bits()).collect(),
            )
        }
        d => panic!("no 16-bit buffer of {d}"),
    }
}

fn download_bits(g: &Gpu, t: &DeviceTensor) -> Vec<u16> {
    match t.dtype() {
        DType::BF16 => t.to_host::<bf16>(g).unwrap().iter().map(|x| x.to_bits()).collect(),
        DType::F16 => t.to_host::<f16>(g).unwrap().iter().map(|x| x.to_bits()).collect(),
        d => panic!("no 16-bit buffer of {d}"),
    }
}

fn to_f64(dtype: DType, bits: u16) -> f64 {
    match dtype {
        DType::BF16 => bf16::from_bits(bits).to_f64(),
        _ => f16::from_bits(bits).to_f64(),
    }
}

/// Columns `start..start+len` of a row-major [rows, width] host buffer, as f64.
fn host_columns(dtype: DType, data: &[u16], width: usize, start: usize, len: usize) -> Vec<f64> {
    data.chunks(width)
        .flat_map(|row| row[start..start + len].iter().map(|&b| to_f64(dtype, b)))
        .collect()
}

/// Two mutable column views (`q` and `k`: (start, len) each) of one fused [tokens, width]
/// tensor, as the model takes them from its fused qkv projection.
fn qk_views(t: &mut DeviceTensor, q: (usize, usize), k: (usize, usize)) -> (TensorViewMut<'_>, TensorViewMut<'_>) {
    assert!(q.0 + q.1 <= k.0 || k.0 + k.1 <= q.0, "column ranges overlap");
    let whole = t.view_mut();
    let (ptr, dtype, dims, stride) = (
        whole.device_ptr(),
        whole.dtype(),
        whole.dims().to_vec(),
        whole.stride0(),
    );
    // SAFETY: both views lie inside `t`, which stays mutably borrowed while they live, and
    // their column ranges are disjoint, so no element is reachable through both.
    let (a, b) = unsafe {
        (
            TensorViewMut::from_raw(ptr, dtype, &dims, stride).unwrap(),
            TensorViewMut::from_raw(ptr, dtype, &dims, stride).unwrap(),
        )
    };
    (a.columns(q.0, q.1).unwrap(), b.columns(k.0, k.1).unwrap())
}

/// How the text case passes positions.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pos {
    /// [3, tokens], three different random rows.
    Rows3,
    /// The first `tokens` columns of a [3, tokens + 5] buffer (row stride tokens + 5).
    Rows3Strided,
    /// [tokens]: one row for all three axes.
    Shared,
}

struct TextCase {
    tokens: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    sections: [u32; 3],
    pos: Pos,
    dtype: DType,
}

fn run_text(g: &Gpu, c: &TextCase, seed: u64) {
    let what = format!(
        "mrope tokens={} heads=({}, {}) d={} {:?} {}",
        c.tokens, c.q_heads, c.kv_heads, c.head_dim, c.pos, c.dtype
    );
    let mut r = rng(seed);
    let (qw, kw) = (c.q_heads * c.head_dim, c.kv_heads * c.head_dim);
    let width = qw + 2 * kw; // q | k | v
    let (mut fused, before) = fused_buffer(g, &mut r, c.dtype, c.tokens, width);

    // Three different rows of random positions in [0, 16384).
    let rows: Vec<Vec<i32>> = (0..3)
        .map(|_| (0..c.tokens).map(|_| r.random_range(0..16384)).collect())
        .collect();
    let used: [&[i32]; 3] = match c.pos {
        Pos::Shared => [&rows[0], &rows[0], &rows[0]],
        _ => [&rows[0], &rows[1], &rows[2]],
    };
    let pad = if c.pos == Pos::Rows3Strided { 5 } else { 0 };
    let pos_host: Vec<i32> = match c.pos {
        Pos::Shared => rows[0].clone(),
        _ => rows
            .iter()
            .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(-7, pad)))
            .collect(),
    };
    let pos_dims = match c.pos {
        Pos::Shared => vec![c.tokens],
        _ => vec![3, c.tokens + pad],
    };
    let pos_dev = DeviceTensor::from_host(g, &pos_dims, &pos_host).unwrap();
    let pos_view = match c.pos {
        Pos::Shared => pos_dev.view(),
        _ => pos_dev.view().columns(0, c.tokens).unwrap(),
    };

    {
        let (mut q, mut k) = qk_views(&mut fused, (0, qw), (qw, kw));
        mrope(g, &mut q, &mut k, &pos_view, c.head_dim, c.sections, TEXT_THETA).unwrap();
    }
    let after = download_bits(g, &fused);

    let s = c.sections.map(|x| x as usize);
    let angles = mrope_angles(used, c.head_dim, s, TEXT_THETA as f64);
    check_qkv(
        &what,
        c.dtype,
        &before,
        &after,
        width,
        (c.q_heads, c.kv_heads),
        c.head_dim,
        &angles,
        rotate_half,
    );
}

/// A reference rotation: rotate-half (neox) or interleaved pairs.
type Rotate = fn(&[f64], usize, usize, &[Vec<f64>]) -> Vec<f64>;

/// Compares the q and k columns of the fused buffer with the reference rotation of their
/// inputs, and the v columns (the rest of the row) bit for bit with their inputs.
#[allow(clippy::too_many_arguments)]
fn check_qkv(
    what: &str,
    dtype: DType,
    before: &[u16],
    after: &[u16],
    width: usize,
    heads: (usize, usize),
    head_dim: usize,
    angles: &[Vec<f64>],
    rotate: Rotate,
) {
    let (qw, kw) = (heads.0 * head_dim, heads.1 * head_dim);
    let rtol = if dtype == DType::F16 { F16_RTOL } else { BF16_RTOL };
    for (name, start, len, h) in [("q", 0, qw, heads.0), ("k", qw, kw, heads.1)] {
        let want = rotate(&host_columns(dtype, before, width, start, len), h, head_dim, angles);
        let got = host_columns(dtype, after, width, start, len);
        assert_close(&format!("{what} {name}"), &got, &want, 1e-2 * rms(&want), rtol);
    }
    let v_start = qw + kw;
    for (t, (b, a)) in before.chunks(width).zip(after.chunks(width)).enumerate() {
        assert!(b[v_start..] == a[v_start..], "{what}: v columns of token {t} changed");
    }
}

#[test]
#[ignore = "needs GPU"]
fn mrope_matches_f64_reference_at_model_shapes() {
    let g = gpu();
    for (i, &tokens) in [1usize, 7, 83, 5040, 16384].iter().enumerate() {
        for (j, &pos) in [Pos::Rows3, Pos::Rows3Strided].iter().enumerate() {
            let c = TextCase {
                tokens,
                q_heads: 16,
                kv_heads: 2,
                head_dim: 128,
                sections: TEXT_SECTIONS,
                pos,
                dtype: DType::BF16,
            };
            run_text(&g, &c, 0x60BE_0000 + 10 * i as u64 + j as u64);
        }
    }
}

/// Plain 1-D rope from one shared position row; head_dim 64 with other head counts and
/// sections (one of them empty); f16.
#[test]
#[ignore = "needs GPU"]
fn mrope_shared_positions_head_dim_64_and_f16() {
    let g = gpu();
    let cases = [
        (83, 16, 2, 128, TEXT_SECTIONS, Pos::Shared, DType::BF16),
        (1, 16, 2, 128, TEXT_SECTIONS, Pos::Shared, DType::BF16),
        (7, 5, 1, 64, [8, 12, 12], Pos::Rows3, DType::BF16),
        (1030, 5, 1, 64, [0, 20, 12], Pos::Rows3Strided, DType::BF16),
        (83, 16, 2, 128, TEXT_SECTIONS, Pos::Rows3, DType::F16),
        (2049, 3, 3, 64, [32, 0, 0], Pos::Rows3, DType::F16),
    ];
    for (i, &(tokens, q_heads, kv_heads, head_dim, sections, pos, dtype)) in cases.iter().enumerate() {
        let c = TextCase {
            tokens,
            q_heads,
            kv_heads,
            head_dim,
            sections,
            pos,
            dtype,
        };
        run_text(&g, &c, 0x60BE_1000 + i as u64);
    }
}

fn run_vision(g: &Gpu, tokens: usize, heads: usize, dtype: DType, seed: u64) {
    run_vision_d(g, tokens, heads, 72, dtype, seed)
}

fn run_vision_d(g: &Gpu, tokens: usize, heads: usize, head_dim: usize, dtype: DType, seed: u64) {
    let what = format!("vision_rope tokens={tokens} heads={heads} d={head_dim} {dtype}");
    let mut r = rng(seed);
    let w = heads * head_dim;
    let width = 3 * w; // q | k | v
    let (mut fused, before) = fused_buffer(g, &mut r, dtype, tokens, width);
    let rows: Vec<i32> = (0..tokens).map(|_| r.random_range(0..100)).collect();
    let cols: Vec<i32> = (0..tokens).map(|_| r.random_range(0..100)).collect();
    let rows_dev = DeviceTensor::from_host(g, &[tokens], &rows).unwrap();
    let cols_dev = DeviceTensor::from_host(g, &[tokens], &cols).unwrap();
    {
        let (mut q, mut k) = qk_views(&mut fused, (0, w), (w, w));
        vision_rope(
            g,
            &mut q,
            &mut k,
            &rows_dev.view(),
            &cols_dev.view(),
            head_dim,
            VISION_THETA,
        )
        .unwrap();
    }
    let after = download_bits(g, &fused);
    let angles = vision_angles(&rows, &cols, head_dim, VISION_THETA as f64);
    check_qkv(
        &what,
        dtype,
        &before,
        &after,
        width,
        (heads, heads),
        head_dim,
        &angles,
        rotate_half,
    );
}

#[test]
#[ignore = "needs GPU"]
fn vision_rope_matches_f64_reference() {
    let g = gpu();
    for (i, &tokens) in [1usize, 7, 83, 5040, 16384].iter().enumerate() {
        run_vision(&g, tokens, 16, DType::BF16, 0x60BE_2000 + i as u64);
    }
    // A head count that leaves a partial round of work items, and f16.
    run_vision(&g, 1030, 3, DType::BF16, 0x60BE_2100);
    run_vision(&g, 83, 16, DType::F16, 0x60BE_2101);
    // ERNIE-4.5-VL's ViT: 16 heads of 80.
    for (i, &tokens) in [1usize, 7, 3996].iter().enumerate() {
        run_vision_d(&g, tokens, 16, 80, DType::BF16, 0x60BE_2200 + i as u64);
    }
}

/// The rows and the columns must not be swapped, and row and column must each matter: a
/// token at (r, 0) and one at (0, r) get different rotations.
#[test]
#[ignore = "needs GPU"]
fn vision_rope_rows_and_cols_differ() {
    let g = gpu();
    let (heads, head_dim) = (1, 72);
    let x: Vec<bf16> = (0..2 * 3 * head_dim)
        .map(|i| bf16::from_f32(0.25 + (i % 5) as f32 * 0.125))
        .collect();
    let mut fused = DeviceTensor::from_host(&g, &[2, 3 * head_dim], &x).unwrap();
    let rows = DeviceTensor::from_host(&g, &[2], &[3i32, 0]).unwrap();
    let cols = DeviceTensor::from_host(&g, &[2], &[0i32, 3]).unwrap();
    {
        let (mut q, mut k) = qk_views(&mut fused, (0, heads * head_dim), (head_dim, head_dim));
        vision_rope(&g, &mut q, &mut k, &rows.view(), &cols.view(), head_dim, VISION_THETA).unwrap();
    }
    let out = fused.to_host::<bf16>(&g).unwrap();
    // Token 0 (row 3, col 0) turns pairs 0..18 and leaves pairs 18..36 exactly as they were
    // (angle 0); token 1 (row 0, col 3) the other way round. Only the 8 fastest frequencies of
    // an axis (angles of 0.08 rad and more) are sure to move a bf16 value.
    let w = 3 * head_dim;
    for j in 0..36 {
        for (t, rotated_axis) in [(0usize, 0usize), (1, 1)] {
            let (axis, f) = (j / 18, j % 18);
            let (got, input) = (out[t * w + j], x[t * w + j]);
            if axis != rotated_axis {
                assert_eq!(got, input, "token {t}, element {j}: the other axis's pair moved");
            } else if f < 8 {
                assert_ne!(got, input, "token {t}, element {j}: pair did not turn");
            }
        }
    }
}

/// ERNIE-4.5-VL's 3D rope (interleaved pairs) on a fused q | k | v buffer: `shared` passes one
/// position row for all axes (text), else three different rows.
#[allow(clippy::too_many_arguments)]
fn run_ernie(
    g: &Gpu,
    tokens: usize,
    heads: (usize, usize),
    head_dim: usize,
    section_hw: usize,
    shared: bool,
    dtype: DType,
    seed: u64,
) {
    let what = format!(
        "mrope_interleaved tokens={tokens} heads={heads:?} d={head_dim} hw={section_hw} shared={shared} {dtype}"
    );
    let mut r = rng(seed);
    let (qw, kw) = (heads.0 * head_dim, heads.1 * head_dim);
    let width = qw + 2 * kw;
    let (mut fused, before) = fused_buffer(g, &mut r, dtype, tokens, width);
    let rows: Vec<Vec<i32>> = (0..3)
        .map(|_| (0..tokens).map(|_| r.random_range(0..16384)).collect())
        .collect();
    let (used, pos_dev): ([&[i32]; 3], DeviceTensor) = if shared {
        (
            [&rows[0], &rows[0], &rows[0]],
            DeviceTensor::from_host(g, &[tokens], &rows[0]).unwrap(),
        )
    } else {
        (
            [&rows[0], &rows[1], &rows[2]],
            DeviceTensor::from_host(g, &[3, tokens], &rows.concat()).unwrap(),
        )
    };
    {
        let (mut q, mut k) = qk_views(&mut fused, (0, qw), (qw, kw));
        mrope_interleaved(g, &mut q, &mut k, &pos_dev.view(), head_dim, section_hw, TEXT_THETA).unwrap();
    }
    let after = download_bits(g, &fused);
    let angles = ernie_angles(used, head_dim, section_hw, TEXT_THETA as f64);
    check_qkv(
        &what,
        dtype,
        &before,
        &after,
        width,
        heads,
        head_dim,
        &angles,
        rotate_interleaved,
    );
}

#[test]
#[ignore = "needs GPU"]
fn mrope_interleaved_matches_f64_reference() {
    let g = gpu();
    // ERNIE-4.5-VL-28B-A3B: 20 q heads, 4 kv heads of 128, 22 H + 22 W pairs then 20 T pairs.
    for (i, tokens) in [1usize, 7, 300, 4099].into_iter().enumerate() {
        run_ernie(&g, tokens, (20, 4), 128, 44, false, DType::BF16, 0xe3d0 + i as u64);
    }
    // Text-only positions; every pair on T (section_hw 0) and every pair on H/W; head_dim 64;
    // f16.
    run_ernie(&g, 33, (20, 4), 128, 44, true, DType::BF16, 0xe3e0);
    run_ernie(&g, 17, (2, 1), 64, 0, false, DType::BF16, 0xe3e1);
    run_ernie(&g, 17, (2, 1), 64, 32, false, DType::F16, 0xe3e2);
    // A pair rotates by its own axis: with H and W rows swapped, a pair below section_hw
    // changes and a T pair does not.
    let rows_a: [&[i32]; 3] = [&[5], &[100], &[3000]];
    let rows_b: [&[i32]; 3] = [&[5], &[3000], &[100]];
    let (a, b) = (ernie_angles(rows_a, 128, 44, 5e5), ernie_angles(rows_b, 128, 44, 5e5));
    assert!(a[0][0] != b[0][0] && a[0][1] != b[0][1] && a[0][50] == b[0][50]);
}

fn is_status(r: &Result<()>, status: OcrvlStatus) -> bool {
    matches!(r, Err(Error::Kernel { status: s, .. }) if *s == status)
}

fn is_invalid(r: &Result<()>) -> bool {
    matches!(r, Err(Error::Invalid { .. }))
}

#[test]
#[ignore = "needs GPU"]
fn rope_rejects_unsupported_and_invalid_arguments() {
    let g = gpu();
    let tokens = 7;
    let unsupported = OcrvlStatus::OCRVL_STATUS_UNSUPPORTED;
    let pos = DeviceTensor::from_host(&g, &[3, tokens], &[5i32; 21]).unwrap();
    let rc = DeviceTensor::from_host(&g, &[tokens], &[5i32; 7]).unwrap();

    // Text: head_dim 96 has no kernel (16 heads of 96, 2 of 96; sections sum to 48).
    let mut t = DeviceTensor::zeros(&g, DType::BF16, &[tokens, 3 * 1152 + 8]).unwrap();
    let res = {
        let (mut q, mut k) = qk_views(&mut t, (0, 16 * 96), (16 * 96, 2 * 96));
        mrope(&g, &mut q, &mut k, &pos.view(), 96, [16, 16, 16], TEXT_THETA)
    };
    assert!(is_status(&res, unsupported), "head_dim 96: {res:?}");
    // Vision: only 72 is built.
    let res = {
        let (mut q, mut k) = qk_views(&mut t, (0, 16 * 64), (16 * 64, 16 * 64));
        vision_rope(&g, &mut q, &mut k, &rc.view(), &rc.view(), 64, VISION_THETA)
    };
    assert!(is_status(&res, unsupported), "vision head_dim 64: {res:?}");

    // (why, q columns, k columns, sections, theta), all with head_dim 128.
    let mut t = DeviceTensor::zeros(&g, DType::BF16, &[tokens, 2560 + 8]).unwrap();
    let bad_text = [
        (
            "sections do not sum to 64",
            (0, 2048),
            (2048, 256),
            [16, 24, 23],
            TEXT_THETA,
        ),
        (
            "q 8-byte aligned only",
            (4, 2048),
            (2052, 256),
            TEXT_SECTIONS,
            TEXT_THETA,
        ),
        ("theta 0", (0, 2048), (2048, 256), TEXT_SECTIONS, 0.0),
        (
            "q width not a multiple of head_dim",
            (0, 2000),
            (2048, 256),
            TEXT_SECTIONS,
            TEXT_THETA,
        ),
    ];
    for (why, qc, kc, sections, theta) in bad_text {
        let res = {
            let (mut q, mut k) = qk_views(&mut t, qc, kc);
            mrope(&g, &mut q, &mut k, &pos.view(), 128, sections, theta)
        };
        assert!(is_invalid(&res), "{why}: {res:?}");
    }
    // Positions of the wrong shape or dtype.
    let pos2 = DeviceTensor::from_host(&g, &[2, tokens], &[5i32; 14]).unwrap();
    let posf = DeviceTensor::zeros(&g, DType::F32, &[3, tokens]).unwrap();
    for (why, p) in [("[2, tokens] positions", &pos2), ("f32 positions", &posf)] {
        let res = {
            let (mut q, mut k) = qk_views(&mut t, (0, 2048), (2048, 256));
            mrope(&g, &mut q, &mut k, &p.view(), 128, TEXT_SECTIONS, TEXT_THETA)
        };
        assert!(is_invalid(&res), "{why}: {res:?}");
    }
    // Vision: 4-byte alignment only; rows of the wrong length.
    let mut t = DeviceTensor::zeros(&g, DType::BF16, &[tokens, 3 * 1152 + 8]).unwrap();
    let res = {
        let (mut q, mut k) = qk_views(&mut t, (2, 1152), (1154, 1152));
        vision_rope(&g, &mut q, &mut k, &rc.view(), &rc.view(), 72, VISION_THETA)
    };
    assert!(is_invalid(&res), "vision misaligned: {res:?}");
    let short = DeviceTensor::from_host(&g, &[tokens - 1], &[5i32; 6]).unwrap();
    let res = {
        let (mut q, mut k) = qk_views(&mut t, (0, 1152), (1152, 1152));
        vision_rope(&g, &mut q, &mut k, &short.view(), &rc.view(), 72, VISION_THETA)
    };
    assert!(is_invalid(&res), "vision short rows: {res:?}");

    // f32 q and k.
    let mut t = DeviceTensor::zeros(&g, DType::F32, &[tokens, 2560]).unwrap();
    let res = {
        let (mut q, mut k) = qk_views(&mut t, (0, 2048), (2048, 256));
        mrope(&g, &mut q, &mut k, &pos.view(), 128, TEXT_SECTIONS, TEXT_THETA)
    };
    assert!(is_invalid(&res), "f32: {res:?}");

    // No tokens: nothing to do, not an error.
    let mut t = DeviceTensor::zeros(&g, DType::BF16, &[0, 2560]).unwrap();
    let pos0 = DeviceTensor::zeros(&g, DType::I32, &[3, 0]).unwrap();
    let (mut q, mut k) = qk_views(&mut t, (0, 2048), (2048, 256));
    mrope(&g, &mut q, &mut k, &pos0.view(), 128, TEXT_SECTIONS, TEXT_THETA).unwrap();
}
