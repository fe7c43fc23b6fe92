//! The norm kernels (RMSNorm and LayerNorm, each plain and fused with the residual add) against
//! f64 references: the model's widths (1024 text, 1152 vision), a tiny row (8), a wide row that
//! is not a power of two (4104, one block per row), every row layout the launcher picks and its
//! edges, token counts from one to a long prefill, strided row views, and rejected widths,
//! alignments, dtypes and shapes.
//!
//! Tolerance of `out`: BF16_RTOL relative plus 1e-2 · rms(ref) absolute. The kernels reduce in
//! f32 in another order than the f64 reference, use rsqrtf (2 ulp), and round to bf16 (RMSNorm
//! twice, as the model's reference does: the normalised row, then the product with the weight;
//! 2 · 2⁻⁹ relative in all); the absolute term covers outputs near zero, where LayerNorm's
//! `x - mean` and the bias make relative error meaningless. The budget is the ~1e-2 of bf16 for
//! reductions. The updated residual is compared exactly: it is one rounding of an exact sum.

use half::bf16;
use ocrvl::kernels::norm::{layernorm, layernorm_add, rmsnorm, rmsnorm_add};
use ocrvl::runtime::{DType, DeviceTensor, Gpu, TensorView, TensorViewMut};
use ocrvl::sys::OcrvlStatus;
use ocrvl::{Error, Result};

use crate::common::ref_norm;
use crate::common::tol::{assert_close, rms, BF16_RTOL};
use crate::common::{gpu, rand_bf16, rng};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Rms,
    RmsAdd,
    Ln,
    LnAdd,
}

const OPS: [Op; 4] = [Op::Rms, Op::RmsAdd, Op::Ln, Op::LnAdd];

impl Op {
    fn has_residual(self) -> bool {
        matches!(self, Op::RmsAdd | Op::LnAdd)
    }

    fn is_layernorm(self) -> bool {
        matches!(self, Op::Ln | Op::LnAdd)
    }

    /// The model's: RMSNorm 1e-5 (text decoder), LayerNorm 1e-6 (vision encoder).
    fn eps(self) -> f32 {
        if self.is_layernorm() {
            1e-6
        } else {
            1e-5
        }
    }

    /// Calls the wrapper; `residual` and `bias` are ignored by the ops that take none.
    fn call(
        self,
        g: &Gpu,
        out: &mut TensorViewMut<'_>,
        x: &TensorView<'_>,
        residual: &mut TensorViewMut<'_>,
        [weight, bias]: [&TensorView<'_>; 2],
        eps: f32,
    ) -> Result<()> {
        match self {
            Op::Rms => rmsnorm(g, out, x, weight, eps),
            Op::RmsAdd => rmsnorm_add(g, out, x, residual, weight, eps),
            Op::Ln => layernorm(g, out, x, weight, bias, eps),
            Op::LnAdd => layernorm_add(g, out, x, residual, weight, bias, eps),
        }
    }
}

/// The model's token counts and neighbours: one decode row, odd counts that leave a partial
/// 4-row block (7, 83, 2051), a vision page (5040), a long prefill (16384).
const TOKENS: [usize; 6] = [1, 7, 83, 2051, 5040, 16384];
/// Tiny (one vector per row), the text and vision widths, and a wide non-power of two.
const HIDDENS: [usize; 4] = [8, 1024, 1152, 4104];

/// `vals` ([tokens, hidden]) placed at columns `col0..col0+hidden` of a [tokens, width] buffer
/// whose other columns are NaN, so that a read outside the view shows in the output.
fn embed(vals: &[bf16], tokens: usize, hidden: usize, width: usize, col0: usize) -> Vec<bf16> {
    let mut full = vec![bf16::NAN; tokens * width];
    for t in 0..tokens {
        full[t * width + col0..t * width + col0 + hidden].copy_from_slice(&vals[t * hidden..(t + 1) * hidden]);
    }
    full
}

/// Columns `col0..col0+hidden` of a [tokens, width] buffer, and whether every other column
/// still holds `other` bits (nothing written outside the view).
fn extract(full: &[bf16], tokens: usize, hidden: usize, width: usize, col0: usize, other: u16) -> (Vec<bf16>, bool) {
    let mut inside = Vec::with_capacity(tokens * hidden);
    let mut untouched = true;
    for row in full.chunks_exact(width).take(tokens) {
        inside.extend_from_slice(&row[col0..col0 + hidden]);
        untouched &= row[..col0]
            .iter()
            .chain(&row[col0 + hidden..])
            .all(|v| v.to_bits() == other);
    }
    (inside, untouched)
}

fn to_f64(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// One op at one shape against the f64 reference. Strided: x is the first half of 2·hidden
/// rows, out and residual the second half of theirs.
fn run_case(g: &Gpu, op: Op, tokens: usize, hidden: usize, strided: bool, seed: u64) {
    let what = format!("{op:?} tokens={tokens} hidden={hidden} strided={strided}");
    let mut r = rng(seed);
    // LayerNorm rows get a per-row offset of a few units, so the mean subtraction matters.
    let offset = if op.is_layernorm() { 4.0 } else { 0.0 };
    let x = ref_norm::rows(&mut r, tokens, hidden, offset);
    let res0 = if op.has_residual() {
        ref_norm::rows(&mut r, tokens, hidden, offset)
    } else {
        vec![bf16::ZERO; tokens * hidden]
    };
    let w = ref_norm::norm_weights(&mut r, hidden);
    let b = rand_bf16(&mut r, hidden, 0.5);

    let width = if strided { 2 * hidden } else { hidden };
    let hi = width - hidden; // first column of out and residual
    let dx = DeviceTensor::from_host(g, &[tokens, width], &embed(&x, tokens, hidden, width, 0)).unwrap();
    let mut dres = DeviceTensor::from_host(g, &[tokens, width], &embed(&res0, tokens, hidden, width, hi)).unwrap();
    let dw = DeviceTensor::from_host(g, &[hidden], &w).unwrap();
    let db = DeviceTensor::from_host(g, &[hidden], &b).unwrap();
    let mut dout = DeviceTensor::alloc(g, DType::BF16, &[tokens, width]).unwrap();
    dout.view_mut().fill_bytes(g, 0xFF).unwrap(); // NaN: unwritten elements fail
    {
        let xv = dx.view().columns(0, hidden).unwrap();
        let mut ov = dout.view_mut().columns(hi, hidden).unwrap();
        let mut rv = dres.view_mut().columns(hi, hidden).unwrap();
        op.call(g, &mut ov, &xv, &mut rv, [&dw.view(), &db.view()], op.eps())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    // The rows the norm sees: x, or the bf16-rounded residual sum.
    let input = if op.has_residual() {
        ref_norm::add_bf16(&res0, &x)
    } else {
        x
    };
    let eps = op.eps() as f64;
    let want = if op.is_layernorm() {
        ref_norm::layernorm(&input, &w, &b, hidden, eps)
    } else {
        ref_norm::rmsnorm(&input, &w, hidden, eps)
    };
    let (got, untouched) = extract(&dout.to_host::<bf16>(g).unwrap(), tokens, hidden, width, hi, 0xFFFF);
    assert!(untouched, "{what}: out written outside its columns");
    assert_close(&what, &to_f64(&got), &want, 1e-2 * rms(&want), BF16_RTOL);

    let (got_res, untouched) = extract(
        &dres.to_host::<bf16>(g).unwrap(),
        tokens,
        hidden,
        width,
        hi,
        bf16::NAN.to_bits(),
    );
    assert!(untouched, "{what}: residual written outside its columns");
    // The plain ops must leave the residual buffer alone; the fused ones write the rounded sum.
    let want_res = if op.has_residual() { input } else { res0 };
    for (i, (g, w)) in got_res.iter().zip(&want_res).enumerate() {
        assert!(
            g.to_f64() == w.to_f64(),
            "{what}: residual element {i} (row {}): got {g}, want {w}",
            i / hidden
        );
    }
}

fn sweep(op: Op, seed: u64) {
    let g = gpu();
    for (i, &tokens) in TOKENS.iter().enumerate() {
        for (j, &hidden) in HIDDENS.iter().enumerate() {
            let case_seed = seed + 100 * i as u64 + j as u64;
            run_case(&g, op, tokens, hidden, false, case_seed);
            // Strided rows at the smaller token counts (the views cost a 2x-wide buffer).
            if tokens <= 5040 {
                run_case(&g, op, tokens, hidden, true, case_seed + 50);
            }
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn rmsnorm_matches_f64_reference() {
    sweep(Op::Rms, 0x4E_0000);
}

#[test]
#[ignore = "needs GPU"]
fn rmsnorm_add_matches_f64_reference() {
    sweep(Op::RmsAdd, 0x4E_1000);
}

#[test]
#[ignore = "needs GPU"]
fn layernorm_matches_f64_reference() {
    sweep(Op::Ln, 0x4E_2000);
}

#[test]
#[ignore = "needs GPU"]
fn layernorm_add_matches_f64_reference() {
    sweep(Op::LnAdd, 0x4E_3000);
}

/// Each instantiated row layout (warp rows of 1, 2, 4, 5, 8 vectors per lane; block rows of 2,
/// 3, 4 per thread) at its largest width and the next one up, up to the 8192 maximum, with 5
/// and 1030 rows (partial 4-row blocks).
#[test]
#[ignore = "needs GPU"]
fn every_row_layout_and_its_edges() {
    let g = gpu();
    let hiddens = [256, 264, 512, 520, 1280, 1288, 2048, 2056, 4096, 4104, 6144, 6152, 8192];
    for (k, &op) in OPS.iter().enumerate() {
        for (j, &hidden) in hiddens.iter().enumerate() {
            for &tokens in &[5usize, 1030] {
                run_case(
                    &g,
                    op,
                    tokens,
                    hidden,
                    false,
                    0x4E_5000 + 1000 * k as u64 + 10 * j as u64 + tokens as u64,
                );
            }
        }
    }
}

fn is_status(r: &Result<()>, status: OcrvlStatus) -> bool {
    matches!(r, Err(Error::Kernel { status: s, .. }) if *s == status)
}

fn is_invalid(r: &Result<()>) -> bool {
    matches!(r, Err(Error::Invalid { .. }))
}

/// Tensors for the rejection tests: x, out, residual [tokens, width] and weight, bias [hidden].
struct Bufs {
    x: DeviceTensor,
    out: DeviceTensor,
    res: DeviceTensor,
    w: DeviceTensor,
    b: DeviceTensor,
}

impl Bufs {
    fn new(g: &Gpu, dtype: DType, tokens: usize, width: usize, hidden: usize) -> Bufs {
        let z = |dims: &[usize]| DeviceTensor::zeros(g, dtype, dims).unwrap();
        Bufs {
            x: z(&[tokens, width]),
            out: z(&[tokens, width]),
            res: z(&[tokens, width]),
            w: z(&[hidden]),
            b: z(&[hidden]),
        }
    }

    /// Every op on columns `col0..col0+hidden` of x, out and residual.
    fn call(&mut self, g: &Gpu, op: Op, col0: usize, hidden: usize, eps: f32) -> Result<()> {
        let xv = self.x.view().columns(col0, hidden).unwrap();
        let mut ov = self.out.view_mut().columns(col0, hidden).unwrap();
        let mut rv = self.res.view_mut().columns(col0, hidden).unwrap();
        op.call(g, &mut ov, &xv, &mut rv, [&self.w.view(), &self.b.view()], eps)
    }
}

#[test]
#[ignore = "needs GPU"]
fn unsupported_widths_alignments_and_dtypes_are_rejected() {
    let g = gpu();
    for op in OPS {
        // Not a multiple of the 8-element vector, and past the 8192 maximum.
        for hidden in [1023usize, 1, 8200] {
            let r = Bufs::new(&g, DType::BF16, 4, hidden, hidden).call(&g, op, 0, hidden, 1e-5);
            assert!(
                is_status(&r, OcrvlStatus::OCRVL_STATUS_UNSUPPORTED),
                "{op:?} hidden {hidden}: {r:?}"
            );
        }
        // Only bf16 is built.
        for dtype in [DType::F32, DType::F16] {
            let r = Bufs::new(&g, dtype, 4, 1024, 1024).call(&g, op, 0, 1024, 1e-5);
            assert!(
                is_status(&r, OcrvlStatus::OCRVL_STATUS_UNSUPPORTED),
                "{op:?} {dtype}: {r:?}"
            );
        }
        // Rows starting 4 elements (8 bytes) into a buffer: not 16-byte aligned.
        let r = Bufs::new(&g, DType::BF16, 4, 1032, 1024).call(&g, op, 4, 1024, 1e-5);
        assert!(
            is_status(&r, OcrvlStatus::OCRVL_STATUS_UNSUPPORTED),
            "{op:?} misaligned: {r:?}"
        );
        // A row stride that is not a multiple of 8 (the rows after the first are misaligned).
        let r = Bufs::new(&g, DType::BF16, 4, 1028, 1024).call(&g, op, 0, 1024, 1e-5);
        assert!(
            is_status(&r, OcrvlStatus::OCRVL_STATUS_UNSUPPORTED),
            "{op:?} stride 1028: {r:?}"
        );
        // A negative eps is an invalid argument.
        let r = Bufs::new(&g, DType::BF16, 4, 1024, 1024).call(&g, op, 0, 1024, -1.0);
        assert!(
            is_status(&r, OcrvlStatus::OCRVL_STATUS_INVALID_ARGUMENT),
            "{op:?} eps: {r:?}"
        );
        // Zero tokens: nothing to do, no error.
        let r = Bufs::new(&g, DType::BF16, 0, 1024, 1024).call(&g, op, 0, 1024, 1e-5);
        assert!(r.is_ok(), "{op:?} zero tokens: {r:?}");
    }
}

#[test]
#[ignore = "needs GPU"]
fn mismatched_shapes_and_dtypes_are_rejected() {
    let g = gpu();
    let z = |dtype: DType, dims: &[usize]| DeviceTensor::zeros(&g, dtype, dims).unwrap();
    let bf = DType::BF16;
    let (x, w, b) = (z(bf, &[4, 1024]), z(bf, &[1024]), z(bf, &[1024]));
    for op in OPS {
        let try_op =
            |out: &mut DeviceTensor, x: &DeviceTensor, res: &mut DeviceTensor, w: &DeviceTensor, b: &DeviceTensor| {
                let r = op.call(
                    &g,
                    &mut out.view_mut(),
                    &x.view(),
                    &mut res.view_mut(),
                    [&w.view(), &b.view()],
                    1e-5,
                );
                assert!(
                    is_invalid(&r),
                    "{op:?} out {:?} x {:?} residual {:?} weight {} {:?} bias {:?}: {r:?}",
                    out.dims(),
                    x.dims(),
                    res.dims(),
                    w.dtype(),
                    w.dims(),
                    b.dims()
                );
            };
        let (mut out, mut res) = (z(bf, &[4, 1024]), z(bf, &[4, 1024]));
        // out with another token count.
        try_op(&mut z(bf, &[5, 1024]), &x, &mut res, &w, &b);
        // weight of the wrong length, of another dtype, and 2-D.
        for bad_w in [z(bf, &[1000]), z(DType::F32, &[1024]), z(bf, &[1, 1024])] {
            try_op(&mut out, &x, &mut res, &bad_w, &b);
        }
        // x that is not 2-D.
        try_op(&mut out, &z(bf, &[2, 2, 1024]), &mut res, &w, &b);
        // Fused ops: residual of another shape or dtype.
        if op.has_residual() {
            for mut bad in [z(bf, &[4, 1016]), z(DType::F32, &[4, 1024])] {
                try_op(&mut out, &x, &mut bad, &w, &b);
            }
        }
        // LayerNorm: bias of the wrong length.
        if op.is_layernorm() {
            try_op(&mut out, &x, &mut res, &w, &z(bf, &[1016]));
        }
    }
}
