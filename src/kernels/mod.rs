//! Safe wrappers over the C launchers: one file per kernel family in `kernels/`. Each wrapper
//! checks dtypes, shapes and contiguity, then calls the `sys` symbol on the GPU's stream.
//! Model code calls these, never `sys` directly.

pub mod attention;
pub mod decode;
pub mod elementwise;
pub mod embedding;
pub mod kv_cache;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod sampling;

use crate::error::{Error, Result};
use crate::runtime::DType;
use crate::sys::{OcrvlDType, OcrvlStatus};

/// Turns a launcher's status into a `Result` that names the launcher.
pub(crate) fn check(op: &'static str, status: i32) -> Result<()> {
    let status = match status {
        0 => return Ok(()),
        1 => OcrvlStatus::OCRVL_STATUS_INVALID_ARGUMENT,
        2 => OcrvlStatus::OCRVL_STATUS_UNSUPPORTED,
        _ => OcrvlStatus::OCRVL_STATUS_CUDA_ERROR,
    };
    if status == OcrvlStatus::OCRVL_STATUS_CUDA_ERROR {
        // SAFETY: returns a pointer to a static, NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(crate::sys::ocrvl_last_cuda_error()) };
        return Err(Error::invalid(
            op,
            format!("CUDA error at launch: {}", name.to_string_lossy()),
        ));
    }
    Err(Error::Kernel { op, status })
}

pub(crate) fn c_dtype(dtype: DType) -> OcrvlDType {
    match dtype {
        DType::BF16 => OcrvlDType::OCRVL_DTYPE_BF16,
        DType::F16 => OcrvlDType::OCRVL_DTYPE_F16,
        DType::F32 => OcrvlDType::OCRVL_DTYPE_F32,
        DType::I32 => OcrvlDType::OCRVL_DTYPE_I32,
        DType::I8 => OcrvlDType::OCRVL_DTYPE_I8,
    }
}
