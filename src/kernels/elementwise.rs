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
