//! Wrappers for `kernels/include/norm.h`: RMSNorm and LayerNorm over the rows of a 2-D
//! `[tokens, hidden]` view, each also fused with the residual add that precedes it in the model.
//!
//! All operands are bf16. Row views may be strided in dim 0 (`stride0`, e.g. a column range of a
//! wider tensor); weight and bias are `[hidden]`. The kernels move rows as 16-byte vectors, so
//! `hidden` must be a multiple of 8 and at most 8192, and every view's base and row stride
//! 16-byte aligned: other widths and alignments (and other dtypes) fail with
//! `Error::Kernel { status: OCRVL_STATUS_UNSUPPORTED }` from the launcher. Statistics are f32.

use crate::error::{Error, Result};
use crate::runtime::{Gpu, TensorView, TensorViewMut};
use crate::sys;

use super::{c_dtype, check};

/// `out = rmsnorm(x) * weight`, row by row: `rstd = rsqrt(mean(x²) + eps)` in f32, and
/// `out = bf16(bf16(x·rstd) · weight)` (the normalised row is rounded before the weight
/// multiply, as the model's reference does).
///
/// `out`, `x`: `[tokens, hidden]`; `weight`: `[hidden]`; all bf16.
pub fn rmsnorm(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    x: &TensorView<'_>,
    weight: &TensorView<'_>,
    eps: f32,
) -> Result<()> {
    const OP: &str = "rmsnorm";
    let (tokens, hidden) = operands(OP, x, &out.as_view(), None, weight, None)?;
    // SAFETY: the views were checked to be [tokens, hidden] rows of one dtype with their row
    // strides, and weight [hidden]; they are used on the stream every other use is ordered on.
    // `out` is borrowed mutably, so it overlaps no input.
    let status = unsafe {
        sys::ocrvl_rmsnorm(
            out.device_ptr() as *mut _,
            out.stride0() as i64,
            x.device_ptr() as *const _,
            x.stride0() as i64,
            weight.device_ptr() as *const _,
            tokens as i64,
            hidden as i64,
            eps,
            c_dtype(x.dtype()),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// The decoder's `residual += x; out = rmsnorm(residual) * weight` in one pass.
///
/// `residual` is updated in place to `bf16(residual + x)` (the f32 sum of the two bf16, rounded
/// once, as PyTorch's bf16 add), and the norm's statistics are taken from that rounded bf16
/// residual; `out` is then as [`rmsnorm`] of the new residual.
///
/// `out`, `x`, `residual`: `[tokens, hidden]`; `weight`: `[hidden]`; all bf16.
pub fn rmsnorm_add(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    x: &TensorView<'_>,
    residual: &mut TensorViewMut<'_>,
    weight: &TensorView<'_>,
    eps: f32,
) -> Result<()> {
    const OP: &str = "rmsnorm_add";
    let (tokens, hidden) = operands(OP, x, &out.as_view(), Some(&residual.as_view()), weight, None)?;
    // SAFETY: as in `rmsnorm`; `out` and `residual` are distinct mutable borrows, so neither
    // overlaps the other or an input.
    let status = unsafe {
        sys::ocrvl_rmsnorm_add(
            out.device_ptr() as *mut _,
            out.stride0() as i64,
            x.device_ptr() as *const _,
            x.stride0() as i64,
            residual.device_ptr() as *mut _,
            residual.stride0() as i64,
            weight.device_ptr() as *const _,
            tokens as i64,
            hidden as i64,
            eps,
            c_dtype(x.dtype()),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// `out = (x - mean) · rsqrt(var + eps) · weight + bias`, row by row, with the biased variance
/// (PyTorch `layer_norm`); statistics and the affine step in f32, one rounding to bf16.
///
/// `out`, `x`: `[tokens, hidden]`; `weight`, `bias`: `[hidden]`; all bf16.
pub fn layernorm(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    x: &TensorView<'_>,
    weight: &TensorView<'_>,
    bias: &TensorView<'_>,
    eps: f32,
) -> Result<()> {
    const OP: &str = "layernorm";
    let (tokens, hidden) = operands(OP, x, &out.as_view(), None, weight, Some(bias))?;
    // SAFETY: as in `rmsnorm`, with bias [hidden] checked like weight.
    let status = unsafe {
        sys::ocrvl_layernorm(
            out.device_ptr() as *mut _,
            out.stride0() as i64,
            x.device_ptr() as *const _,
            x.stride0() as i64,
            weight.device_ptr() as *const _,
            bias.device_ptr() as *const _,
            tokens as i64,
            hidden as i64,
            eps,
            c_dtype(x.dtype()),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// The vision encoder's `residual += x; out = layernorm(residual)` in one pass: `residual`
/// becomes `bf16(residual + x)` in place and the statistics are taken from that rounded bf16
/// residual, as in [`rmsnorm_add`]; `out` is then as [`layernorm`] of the new residual.
///
/// `out`, `x`, `residual`: `[tokens, hidden]`; `weight`, `bias`: `[hidden]`; all bf16.
pub fn layernorm_add(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    x: &TensorView<'_>,
    residual: &mut TensorViewMut<'_>,
    weight: &TensorView<'_>,
    bias: &TensorView<'_>,
    eps: f32,
) -> Result<()> {
    const OP: &str = "layernorm_add";
    let (tokens, hidden) = operands(OP, x, &out.as_view(), Some(&residual.as_view()), weight, Some(bias))?;
    // SAFETY: as in `rmsnorm_add`, with bias [hidden] checked like weight.
    let status = unsafe {
        sys::ocrvl_layernorm_add(
            out.device_ptr() as *mut _,
            out.stride0() as i64,
            x.device_ptr() as *const _,
            x.stride0() as i64,
            residual.device_ptr() as *mut _,
            residual.stride0() as i64,
            weight.device_ptr() as *const _,
            bias.device_ptr() as *const _,
            tokens as i64,
            hidden as i64,
            eps,
            c_dtype(x.dtype()),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// The prologue of every norm: checks `x`'s rows, then that `out` (and `residual`) match
/// them and that `weight` (and `bias`) are `[hidden]`, in that order; returns `(tokens,
/// hidden)`.
fn operands(
    op: &'static str,
    x: &TensorView<'_>,
    out: &TensorView<'_>,
    residual: Option<&TensorView<'_>>,
    weight: &TensorView<'_>,
    bias: Option<&TensorView<'_>>,
) -> Result<(usize, usize)> {
    let rows = rows_of(op, "x", x)?;
    same_rows(op, "out", out, x)?;
    if let Some(r) = residual {
        same_rows(op, "residual", r, x)?;
    }
    vector_of(op, "weight", weight, x)?;
    if let Some(b) = bias {
        vector_of(op, "bias", b, x)?;
    }
    Ok(rows)
}

/// `(tokens, hidden)` of a 2-D row operand. Its dtype goes to the launcher, which rejects
/// what it has no kernel for.
fn rows_of(op: &'static str, what: &str, v: &TensorView<'_>) -> Result<(usize, usize)> {
    match *v.dims() {
        [tokens, hidden] => Ok((tokens, hidden)),
        _ => Err(Error::invalid(
            op,
            format!("{what} must be [tokens, hidden], got {:?}", v.dims()),
        )),
    }
}

/// Checks that `v` has the dims and dtype of `x`.
fn same_rows(op: &'static str, what: &str, v: &TensorView<'_>, x: &TensorView<'_>) -> Result<()> {
    if v.shape() != x.shape() || v.dtype() != x.dtype() {
        return Err(Error::invalid(
            op,
            format!(
                "{what} is {} {:?}, x is {} {:?}; they must match",
                v.dtype(),
                v.dims(),
                x.dtype(),
                x.dims()
            ),
        ));
    }
    Ok(())
}

/// Checks that `v` is `[hidden]` of x's dtype.
fn vector_of(op: &'static str, what: &str, v: &TensorView<'_>, x: &TensorView<'_>) -> Result<()> {
    let hidden = x.dims()[1];
    if v.dims() != [hidden] || v.dtype() != x.dtype() {
        return Err(Error::invalid(
            op,
            format!(
                "{what} must be {} [{hidden}] like x's rows, got {} {:?}",
                x.dtype(),
                v.dtype(),
                v.dims()
            ),
        ));
    }
    Ok(())
}
