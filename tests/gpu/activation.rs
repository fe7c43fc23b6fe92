//! The row-wise elementwise kernels (silu_mul, GELU tanh and erf, bias_add) against f64
//! references, at the model's widths (3072, 4304, 4608, 1024, 1152) and awkward neighbours, with
//! strided views whose padding must stay untouched, and the shapes they must reject.
//!
//! Tolerance: each output is one f32 computation rounded once to bf16, so the bound is
//! BF16_RTOL relative, plus 1e-6 absolute for the f32 cancellation in 1 + tanh / 1 + erf at very
//! negative inputs (about 6e-8 · |x|/2; PyTorch's formula cancels the same way).

use half::bf16;
use ocrvl::kernels::elementwise::{bias_add, bias_add_in_place, gelu, gelu_in_place, silu_mul, Gelu};
use ocrvl::runtime::{DType, DeviceTensor, Gpu};
use ocrvl::sys::OcrvlStatus;
use ocrvl::Error;

use crate::common::ref_elementwise::{erf, gelu_erf, gelu_tanh, quick_gelu, silu};
use crate::common::tol::{assert_close, BF16_RTOL};
use crate::common::{bf16_to_f64, gpu, rand_bf16, rng};

const ATOL: f64 = 1e-6;
const TOKENS: [usize; 4] = [1, 7, 83, 5040];

/// f(v) for every bf16 bit pattern: inputs are bf16, so references become table lookups (the
/// erf series is too slow to run per element on 20M elements in a debug build).
fn table_of(f: impl Fn(f64) -> f64) -> Vec<f64> {
    (0..=u16::MAX).map(|b| f(bf16::from_bits(b).to_f64())).collect()
}

/// Inputs that probe the tails and signs: zeros, saturating tanh/erf, exp over- and underflow.
const SPECIALS: [f32; 16] = [
    0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 3.0, -3.0, 10.0, -10.0, 30.0, -30.0, 88.0, -88.0, 100.0, -100.0,
];

/// A [rows, width] bf16 matrix stored at columns `pad..pad + width` of a [rows, width + 2 pad]
/// buffer, so that views of it are strided (pad is a multiple of 8: the views stay aligned).
struct Padded {
    buf: DeviceTensor,
    rows: usize,
    width: usize,
    pad: usize,
}

impl Padded {
    fn upload(g: &Gpu, rows: usize, width: usize, pad: usize, data: &[bf16]) -> Padded {
        let full = width + 2 * pad;
        let mut host = vec![bf16::from_bits(0xFFFF); rows * full];
        for r in 0..rows {
            host[r * full + pad..r * full + pad + width].copy_from_slice(&data[r * width..(r + 1) * width]);
        }
        let buf = DeviceTensor::from_host(g, &[rows, full], &host).unwrap();
        Padded { buf, rows, width, pad }
    }

    /// Poisoned with NaN everywhere.
    fn poisoned(g: &Gpu, rows: usize, width: usize, pad: usize) -> Padded {
        let mut buf = DeviceTensor::alloc(g, DType::BF16, &[rows, width + 2 * pad]).unwrap();
        buf.view_mut().fill_bytes(g, 0xFF).unwrap();
        Padded { buf, rows, width, pad }
    }

    /// The viewed values, and a check that the padding still holds NaN (never written).
    fn download(&self, g: &Gpu, what: &str) -> Vec<f64> {
        let full = self.width + 2 * self.pad;
        let host = self.buf.to_host::<bf16>(g).unwrap();
        let mut out = Vec::with_capacity(self.rows * self.width);
        for r in 0..self.rows {
            let row = &host[r * full..(r + 1) * full];
            for (c, v) in row.iter().enumerate() {
                if c < self.pad || c >= self.pad + self.width {
                    assert!(v.is_nan(), "{what}: padding at row {r} column {c} was written");
                }
            }
            out.extend(bf16_to_f64(&row[self.pad..self.pad + self.width]));
        }
        out
    }
}

macro_rules! view {
    ($p:expr) => {
        $p.buf.view().columns($p.pad, $p.width).unwrap()
    };
}
macro_rules! view_mut {
    ($p:expr) => {
        $p.buf.view_mut().columns($p.pad, $p.width).unwrap()
    };
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

#[test]
fn erf_reference_matches_known_values() {
    // erf(x) as f64, from Python's math.erf (libm).
    for (x, want) in [
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (3.0, 0.999_977_909_503_001_4),
        (-1.0, -0.842_700_792_949_714_9),
        (1e-3, 0.001_128_378_790_969_236_5),
        (4.0, 0.999_999_984_582_742_1),
        (5.0, 0.999_999_999_998_462_5),
    ] {
        let got = erf(x);
        assert!(
            (got - want).abs() <= 1e-15 * want.abs(),
            "erf({x}) = {got}, want {want}"
        );
    }
    assert_eq!(erf(0.0), 0.0);
    assert_eq!(erf(7.0), 1.0);
    assert_eq!(erf(-7.0), -1.0);
}

fn run_silu_mul(g: &Gpu, tokens: usize, inter: usize, pad: usize, seed: u64) {
    let what = format!("silu_mul tokens={tokens} inter={inter} pad={pad}");
    let mut r = rng(seed);
    let mut gate_up = rand_bf16(&mut r, tokens * 2 * inter, 8.0);
    // Row 0's gate starts with the special values (its up half keeps random values).
    for (v, s) in gate_up.iter_mut().zip(SPECIALS.iter().take(inter)) {
        *v = bf16::from_f32(*s);
    }
    let input = Padded::upload(g, tokens, 2 * inter, pad, &gate_up);
    let mut out = Padded::poisoned(g, tokens, inter, pad);
    silu_mul(g, &mut view_mut!(out), &view!(input)).unwrap();
    let got = out.download(g, &what);

    let silu_of = table_of(silu);
    let want: Vec<f64> = (0..tokens * inter)
        .map(|i| {
            let (t, j) = (i / inter, i % inter);
            let (gate, up) = (gate_up[t * 2 * inter + j], gate_up[t * 2 * inter + inter + j]);
            silu_of[gate.to_bits() as usize] * up.to_f64()
        })
        .collect();
    assert_close(&what, &got, &want, ATOL, BF16_RTOL);
}

#[test]
#[ignore = "needs GPU"]
fn silu_mul_matches_f64_reference() {
    let g = gpu();
    for (i, &tokens) in TOKENS.iter().enumerate() {
        // 3072: the model's MLP (384 vectors: two blocks of 192 threads per row).
        run_silu_mul(&g, tokens, 3072, 0, 0x5117 + i as u64);
    }
    // 8: one vector; 1160: 145 vectors, one block with a partial last warp; 4104: three
    // blocks per row.
    for (i, &inter) in [8usize, 1160, 4104].iter().enumerate() {
        run_silu_mul(&g, 83, inter, 0, 0x5200 + i as u64);
    }
    // Strided rows on both sides.
    run_silu_mul(&g, 7, 3072, 8, 0x5300);
    run_silu_mul(&g, 83, 1160, 16, 0x5301);
}

fn run_gelu(g: &Gpu, kind: Gelu, rows: usize, width: usize, pad: usize, in_place: bool, seed: u64) {
    let what = format!("{kind:?} rows={rows} width={width} pad={pad} in_place={in_place}");
    let mut r = rng(seed);
    let mut x = rand_bf16(&mut r, rows * width, 8.0);
    for (v, s) in x.iter_mut().zip(SPECIALS.iter()) {
        *v = bf16::from_f32(*s);
    }
    let got = if in_place {
        let mut buf = Padded::upload(g, rows, width, pad, &x);
        gelu_in_place(g, &mut view_mut!(buf), kind).unwrap();
        buf.download(g, &what)
    } else {
        let input = Padded::upload(g, rows, width, pad, &x);
        let mut out = Padded::poisoned(g, rows, width, pad);
        gelu(g, &mut view_mut!(out), &view!(input), kind).unwrap();
        out.download(g, &what)
    };
    let f = table_of(match kind {
        Gelu::Tanh => gelu_tanh,
        Gelu::Erf => gelu_erf,
        Gelu::Quick => quick_gelu,
    });
    let want: Vec<f64> = x.iter().map(|v| f[v.to_bits() as usize]).collect();
    assert_close(&what, &got, &want, ATOL, BF16_RTOL);
}

#[test]
#[ignore = "needs GPU"]
fn gelu_tanh_erf_and_quick_match_f64_reference() {
    let g = gpu();
    let mut seed = 0x6E10;
    for kind in [Gelu::Tanh, Gelu::Erf, Gelu::Quick] {
        for &rows in &TOKENS {
            // 4304: the vision MLP (538 vectors: three blocks of 192 threads, 180 busy);
            // 4608: the projector; 5120: ERNIE-4.5-VL's ViT MLP (quick_gelu) and resampler.
            for width in [4304usize, 4608, 5120] {
                seed += 1;
                run_gelu(&g, kind, rows, width, 0, false, seed);
            }
        }
        // 16 and 1000 (125 vectors): small and odd vector counts; strided; in place.
        for (rows, width, pad, in_place) in [
            (7, 16, 0, false),
            (83, 1000, 8, false),
            (83, 4304, 0, true),
            (7, 4608, 24, true),
        ] {
            seed += 1;
            run_gelu(&g, kind, rows, width, pad, in_place, seed);
        }
    }
}

fn run_bias_add(g: &Gpu, rows: usize, width: usize, residual: bool, in_place: bool, pad: usize, seed: u64) {
    let what = format!("bias_add rows={rows} width={width} residual={residual} in_place={in_place} pad={pad}");
    let mut r = rng(seed);
    let x = rand_bf16(&mut r, rows * width, 4.0);
    let b = rand_bf16(&mut r, width, 1.0);
    let res = rand_bf16(&mut r, rows * width, 4.0);
    let bias = DeviceTensor::from_host(g, &[width], &b).unwrap();
    let res_buf = Padded::upload(g, rows, width, pad, &res);
    let res_view = view!(res_buf);
    let res_arg = residual.then_some(&res_view);
    let got = if in_place {
        let mut buf = Padded::upload(g, rows, width, pad, &x);
        bias_add_in_place(g, &mut view_mut!(buf), &bias.view(), res_arg).unwrap();
        buf.download(g, &what)
    } else {
        let input = Padded::upload(g, rows, width, pad, &x);
        let mut out = Padded::poisoned(g, rows, width, pad);
        bias_add(g, &mut view_mut!(out), &view!(input), &bias.view(), res_arg).unwrap();
        out.download(g, &what)
    };
    let want: Vec<f64> = (0..rows * width)
        .map(|i| x[i].to_f64() + b[i % width].to_f64() + if residual { res[i].to_f64() } else { 0.0 })
        .collect();
    assert_close(&what, &got, &want, ATOL, BF16_RTOL);
}

#[test]
#[ignore = "needs GPU"]
fn bias_add_matches_f64_reference() {
    let g = gpu();
    let mut seed = 0xB1A5;
    for &rows in &TOKENS {
        for width in [1024usize, 1152, 4608] {
            for (residual, in_place) in [(false, false), (true, false), (true, true)] {
                seed += 1;
                run_bias_add(&g, rows, width, residual, in_place, 0, seed);
            }
        }
    }
    run_bias_add(&g, 83, 1000, true, false, 8, seed + 1);
    run_bias_add(&g, 7, 1152, false, true, 16, seed + 2);
}

#[test]
#[ignore = "needs GPU"]
fn row_kernels_reject_unsupported_shapes_and_dtypes() {
    let g = gpu();
    let z = |dtype, dims: &[usize]| DeviceTensor::zeros(&g, dtype, dims).unwrap();

    // Widths that are not a multiple of 8 elements.
    let (gu, mut out) = (z(DType::BF16, &[4, 2 * 1001]), z(DType::BF16, &[4, 1001]));
    assert_unsupported("silu_mul inter 1001", silu_mul(&g, &mut out.view_mut(), &gu.view()));
    let x = z(DType::BF16, &[4, 1001]);
    for kind in [Gelu::Tanh, Gelu::Erf, Gelu::Quick] {
        assert_unsupported("gelu width 1001", gelu(&g, &mut out.view_mut(), &x.view(), kind));
        assert_unsupported("gelu in place width 1001", gelu_in_place(&g, &mut out.view_mut(), kind));
    }
    let b = z(DType::BF16, &[1001]);
    assert_unsupported(
        "bias_add width 1001",
        bias_add(&g, &mut out.view_mut(), &x.view(), &b.view(), None),
    );

    // A row stride that is not a multiple of 8, and a view that starts 2 bytes past 16-byte
    // alignment.
    let wide = z(DType::BF16, &[4, 1030]);
    let mut out1024 = z(DType::BF16, &[4, 1024]);
    let odd_stride = wide.view().columns(0, 1024).unwrap();
    assert_unsupported(
        "gelu stride 1030",
        gelu(&g, &mut out1024.view_mut(), &odd_stride, Gelu::Erf),
    );
    let wide8 = z(DType::BF16, &[4, 1032]);
    let misaligned = wide8.view().columns(1, 1024).unwrap();
    assert_unsupported(
        "gelu misaligned",
        gelu(&g, &mut out1024.view_mut(), &misaligned, Gelu::Tanh),
    );

    // Dtypes other than bf16.
    let (gu16, mut out16) = (z(DType::F16, &[4, 2048]), z(DType::F16, &[4, 1024]));
    assert_unsupported("silu_mul f16", silu_mul(&g, &mut out16.view_mut(), &gu16.view()));
    let (x32, mut out32) = (z(DType::F32, &[4, 1024]), z(DType::F32, &[4, 1024]));
    assert_unsupported("gelu f32", gelu(&g, &mut out32.view_mut(), &x32.view(), Gelu::Erf));

    // Shapes and dtypes that disagree: invalid, caught by the wrappers.
    let gu = z(DType::BF16, &[4, 2048]);
    let mut out_bad = z(DType::BF16, &[4, 1016]);
    assert_invalid(
        "silu_mul widths",
        silu_mul(&g, &mut out_bad.view_mut(), &gu.view()),
        "gate_up",
    );
    let mut out_rows = z(DType::BF16, &[5, 1024]);
    assert_invalid(
        "silu_mul rows",
        silu_mul(&g, &mut out_rows.view_mut(), &gu.view()),
        "gate_up",
    );
    assert_invalid(
        "gelu dtypes",
        gelu(&g, &mut out1024.view_mut(), &x32.view(), Gelu::Tanh),
        "f32",
    );
    let flat = z(DType::BF16, &[4096]);
    assert_invalid(
        "gelu rank",
        gelu(&g, &mut out1024.view_mut(), &flat.view(), Gelu::Tanh),
        "2-D",
    );
    let b1024 = z(DType::BF16, &[1024]);
    let b1016 = z(DType::BF16, &[1016]);
    let x1024 = z(DType::BF16, &[4, 1024]);
    assert_invalid(
        "bias_add bias length",
        bias_add(&g, &mut out1024.view_mut(), &x1024.view(), &b1016.view(), None),
        "bias",
    );
    let res_short = z(DType::BF16, &[3, 1024]);
    assert_invalid(
        "bias_add residual rows",
        bias_add(
            &g,
            &mut out1024.view_mut(),
            &x1024.view(),
            &b1024.view(),
            Some(&res_short.view()),
        ),
        "residual",
    );

    // Zero rows launch nothing and succeed.
    let (gu0, mut out0) = (z(DType::BF16, &[0, 6144]), z(DType::BF16, &[0, 3072]));
    silu_mul(&g, &mut out0.view_mut(), &gu0.view()).unwrap();
    gelu_in_place(&g, &mut out0.view_mut(), Gelu::Erf).unwrap();
}
