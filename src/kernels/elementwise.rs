//! Wrappers for `kernels/include/elementwise.h`.

use crate::error::{Error, Result};
use crate::runtime::{DType, Gpu, TensorView, TensorViewMut};
use crate::sys;

use super::{c_dtype, check};

/// `out = (out.dtype)(x * scale)`, elementwise, in f32. Both contiguous, same element count;
/// dtypes bf16, f16 or f32 in any pair.
pub fn cast_scale(gpu: &Gpu, out: &mut TensorViewMut<'_>, x: &TensorView<'_>, scale: f32) -> Result<()> {
    const OP: &str = "cast_scale";
    if out.numel() != x.numel() {
        return Err(Error::invalid(
            OP,
            format!("out {:?} and x {:?} differ in size", out.dims(), x.dims()),
        ));
    }
    if !out.is_contiguous() || !x.is_contiguous() {
        return Err(Error::invalid(OP, "out and x must be contiguous"));
    }
    for (what, dt) in [("out", out.dtype()), ("x", x.dtype())] {
        if dt == DType::I32 {
            return Err(Error::invalid(
                OP,
                format!("{what} is i32; only bf16, f16 and f32 are supported"),
            ));
        }
    }
    // SAFETY: both views address numel elements of their dtype on this GPU, and the stream is
    // the one every other use of them is ordered on.
    let status = unsafe {
        sys::ocrvl_cast_scale(
            out.device_ptr() as *mut _,
            c_dtype(out.dtype()),
            x.device_ptr() as *const _,
            c_dtype(x.dtype()),
            x.numel() as i64,
            scale,
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// A 2-D operand of a row-wise kernel as the launchers take it: `(rows, width, row stride)`,
/// as `i64`. A single row passes its width as the stride, since no second row is addressed.
pub(super) fn matrix(op: &'static str, what: &str, dims: &[usize], stride0: usize) -> Result<(i64, i64, i64)> {
    if dims.len() != 2 {
        return Err(Error::invalid(
            op,
            format!("{what} must be 2-D [rows, width], got {dims:?}"),
        ));
    }
    let (rows, width) = (dims[0], dims[1]);
    let stride = if rows <= 1 { width } else { stride0 };
    Ok((rows as i64, width as i64, stride as i64))
}

/// Errors unless every operand has the dtype of the first.
pub(super) fn same_dtype(op: &'static str, operands: &[(&str, DType)]) -> Result<()> {
    let (first, dtype) = operands[0];
    for &(what, dt) in &operands[1..] {
        if dt != dtype {
            return Err(Error::invalid(op, format!("{what} is {dt} but {first} is {dtype}")));
        }
    }
    Ok(())
}

fn same_rows(op: &'static str, what: &str, got: (i64, i64), want: (i64, i64)) -> Result<()> {
    if got != want {
        return Err(Error::invalid(
            op,
            format!("{what} is [{}, {}], expected [{}, {}]", got.0, got.1, want.0, want.1),
        ));
    }
    Ok(())
}

/// SwiGLU on the fused gate/up GEMM output: `out[t, j] = silu(gate_up[t, j]) * gate_up[t, inter + j]`
/// (gate in the first half of each row, up in the second), in f32, rounded once.
/// `gate_up` [tokens, 2 * inter], `out` [tokens, inter], both bf16; rows may be strided.
/// The launcher rejects (`UNSUPPORTED`) an `inter`, a row stride or an address that breaks 16-byte
/// vectors (multiples of 8 elements), and dtypes other than bf16.
pub fn silu_mul(gpu: &Gpu, out: &mut TensorViewMut<'_>, gate_up: &TensorView<'_>) -> Result<()> {
    const OP: &str = "silu_mul";
    let (tokens, inter, out_stride) = matrix(OP, "out", out.dims(), out.stride0())?;
    let (gu_rows, gu_width, gu_stride) = matrix(OP, "gate_up", gate_up.dims(), gate_up.stride0())?;
    same_rows(OP, "gate_up", (gu_rows, gu_width), (tokens, 2 * inter))?;
    same_dtype(OP, &[("out", out.dtype()), ("gate_up", gate_up.dtype())])?;
    // SAFETY: the views address [tokens, inter] and [tokens, 2 * inter] elements at the given
    // row strides on this GPU; `out` is borrowed mutably, so it cannot alias `gate_up`.
    let status = unsafe {
        sys::ocrvl_silu_mul(
            out.device_ptr() as *mut _,
            out_stride,
            gate_up.device_ptr() as *const _,
            gu_stride,
            tokens,
            inter,
            c_dtype(out.dtype()),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// The GELU forms: `Tanh` is PyTorch's `approximate="tanh"` (PaddleOCR-VL's vision MLP),
/// `Erf` the exact `approximate="none"` (the projectors), `Quick` is `x · sigmoid(1.702 x)`
/// (ERNIE-4.5-VL's ViT MLP, transformers' `quick_gelu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    Tanh,
    Erf,
    Quick,
}

impl Gelu {
    fn op(self) -> &'static str {
        match self {
            Gelu::Tanh => "gelu_tanh",
            Gelu::Erf => "gelu_erf",
            Gelu::Quick => "quick_gelu",
        }
    }
}

/// # Safety
/// `out` and `x` address `[rows, width]` bf16 at their strides and are equal or disjoint.
unsafe fn gelu_raw(gpu: &Gpu, kind: Gelu, out: (u64, i64), x: (u64, i64), rows: i64, width: i64, dtype: DType) -> i32 {
    let f = match kind {
        Gelu::Tanh => sys::ocrvl_gelu_tanh,
        Gelu::Erf => sys::ocrvl_gelu_erf,
        Gelu::Quick => sys::ocrvl_quick_gelu,
    };
    f(
        out.0 as *mut _,
        out.1,
        x.0 as *const _,
        x.1,
        rows,
        width,
        c_dtype(dtype),
        gpu.raw_stream(),
    )
}

/// `out = gelu(x)` over [rows, width] bf16 (rows may be strided), in f32, rounded once.
/// Rejected (`UNSUPPORTED`) by the launcher: widths or strides not multiples of 8, misaligned
/// views, dtypes other than bf16.
pub fn gelu(gpu: &Gpu, out: &mut TensorViewMut<'_>, x: &TensorView<'_>, kind: Gelu) -> Result<()> {
    let op = kind.op();
    let (rows, width, out_stride) = matrix(op, "out", out.dims(), out.stride0())?;
    let (x_rows, x_width, x_stride) = matrix(op, "x", x.dims(), x.stride0())?;
    same_rows(op, "x", (x_rows, x_width), (rows, width))?;
    same_dtype(op, &[("out", out.dtype()), ("x", x.dtype())])?;
    // SAFETY: both views address [rows, width] at their strides; `out` is borrowed mutably, so
    // the two are disjoint.
    let status = unsafe {
        gelu_raw(
            gpu,
            kind,
            (out.device_ptr(), out_stride),
            (x.device_ptr(), x_stride),
            rows,
            width,
            out.dtype(),
        )
    };
    check(op, status)
}

/// `x = gelu(x)` in place; otherwise as [`gelu`].
pub fn gelu_in_place(gpu: &Gpu, x: &mut TensorViewMut<'_>, kind: Gelu) -> Result<()> {
    let op = kind.op();
    let (rows, width, stride) = matrix(op, "x", x.dims(), x.stride0())?;
    let p = (x.device_ptr(), stride);
    // SAFETY: the view addresses [rows, width] at its stride; in == out is allowed.
    let status = unsafe { gelu_raw(gpu, kind, p, p, rows, width, x.dtype()) };
    check(op, status)
}

/// `out = x + bias[col] (+ residual)`, the sum in f32, rounded once; for the bias adds that a
/// cuBLASLt epilogue does not cover. `x`, `residual`, `out` [rows, width] (rows may be
/// strided), `bias` [width] contiguous, all bf16. Rejected (`UNSUPPORTED`) by the launcher as
/// for [`gelu`].
pub fn bias_add(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    x: &TensorView<'_>,
    bias: &TensorView<'_>,
    residual: Option<&TensorView<'_>>,
) -> Result<()> {
    const OP: &str = "bias_add";
    let (rows, width, out_stride) = matrix(OP, "out", out.dims(), out.stride0())?;
    let (x_rows, x_width, x_stride) = matrix(OP, "x", x.dims(), x.stride0())?;
    same_rows(OP, "x", (x_rows, x_width), (rows, width))?;
    let x = (x.device_ptr(), x_stride, x.dtype());
    bias_add_raw(
        gpu,
        (out.device_ptr(), out_stride, out.dtype()),
        x,
        bias,
        residual,
        rows,
        width,
    )
}

/// `x += bias[col] (+ residual)` in place; otherwise as [`bias_add`]. For `residual += y + bias`
/// pass the residual stream as `x` and `y` as `residual`: the sum is the same.
pub fn bias_add_in_place(
    gpu: &Gpu,
    x: &mut TensorViewMut<'_>,
    bias: &TensorView<'_>,
    residual: Option<&TensorView<'_>>,
) -> Result<()> {
    const OP: &str = "bias_add";
    let (rows, width, stride) = matrix(OP, "x", x.dims(), x.stride0())?;
    let p = (x.device_ptr(), stride, x.dtype());
    bias_add_raw(gpu, p, p, bias, residual, rows, width)
}

/// The shared tail of the two bias adds: checks `bias` and `residual`, then launches. `out` and
/// `x` are (pointer, row stride, dtype) of [rows, width] views that are equal or disjoint.
fn bias_add_raw(
    gpu: &Gpu,
    out: (u64, i64, DType),
    x: (u64, i64, DType),
    bias: &TensorView<'_>,
    residual: Option<&TensorView<'_>>,
    rows: i64,
    width: i64,
) -> Result<()> {
    const OP: &str = "bias_add";
    if bias.dims() != [width as usize] {
        return Err(Error::invalid(
            OP,
            format!("bias is {:?}, expected [{width}]", bias.dims()),
        ));
    }
    let mut dtypes = vec![("out", out.2), ("x", x.2), ("bias", bias.dtype())];
    let (res_ptr, res_stride) = match residual {
        Some(r) => {
            let (r_rows, r_width, r_stride) = matrix(OP, "residual", r.dims(), r.stride0())?;
            same_rows(OP, "residual", (r_rows, r_width), (rows, width))?;
            dtypes.push(("residual", r.dtype()));
            (r.device_ptr(), r_stride)
        }
        None => (0, 0),
    };
    same_dtype(OP, &dtypes)?;
    // SAFETY: every pointer addresses [rows, width] (bias: [width]) elements at its stride, or
    // is null (no residual); out equals x or is disjoint from it, and a residual that
    // overlaps out can only come from the caller's raw views, where it must equal out.
    let status = unsafe {
        sys::ocrvl_bias_add(
            out.0 as *mut _,
            out.1,
            x.0 as *const _,
            x.1,
            bias.device_ptr() as *const _,
            res_ptr as *const _,
            res_stride,
            rows,
            width,
            c_dtype(out.2),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}
