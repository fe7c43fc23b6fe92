//! The C ABI (`ffi/ocrvl.h`): a thin layer over [`crate::service`] that turns C pointers
//! into Rust values, results into status codes, and messages into a per-thread last error.
//!
//! Rules every export here follows:
//! - The body runs inside [`guard`], which catches panics (status `OCRVL_INTERNAL`, the panic
//!   message as last error), so no unwind ever crosses into C.
//! - Every pointer is checked (null, alignment) and every length bounded before use; a bad one
//!   is `OCRVL_INVALID_ARGUMENT` with a message naming the argument, never a crash.
//! - Out-pointers for handles are set to NULL first, so a failed call never leaves a stale
//!   value the caller might free.
//! - Nothing the caller passes is kept after the call; nothing returned must be freed with
//!   free(): handles have their own free functions, text goes into caller buffers.
//!
//! Names are the C names (`ocrvl_engine_config`, `OCRVL_TASK_OCR`) so that
//! `tests/cpu/ffi_header.rs` can match the header against this code line by line.
//!
//! Files: `mod.rs` status codes, last error, the panic guard and pointer checks;
//! `types.rs` the `#[repr(C)]` structs and their conversion; `engine.rs` create, destroy,
//! submit; `request.rs` streaming, waiting, text, info, cancel, free.

#![allow(non_camel_case_types)]

mod engine;
mod request;
mod types;

pub use engine::{ocrvl_engine, ocrvl_engine_create, ocrvl_engine_destroy, ocrvl_submit};
pub use request::{
    ocrvl_request, ocrvl_request_cancel, ocrvl_request_free, ocrvl_request_get_info, ocrvl_request_next,
    ocrvl_request_text, ocrvl_request_wait,
};
pub use types::{
    ocrvl_engine_config, ocrvl_engine_config_default, ocrvl_request_info, ocrvl_sampling_params,
    ocrvl_sampling_params_default, ocrvl_token_event,
};

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::config::ConfigError;
use crate::error::Error;
use crate::model::weights::WeightsError;
use crate::preprocess::PreprocessError;

/// `OCRVL_ABI_VERSION` in the header; bump both together on any incompatible change.
pub const OCRVL_ABI_VERSION: u32 = 2;

/// The status every export returns (`typedef int32_t ocrvl_status`).
pub type ocrvl_status = i32;

/// The values of `enum ocrvl_status_code`, in order; `ocrvl_status_name` and the header test
/// depend on the discriminants matching the header.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    InvalidArgument = 1,
    BufferTooSmall = 2,
    Timeout = 3,
    Finished = 4,
    Cancelled = 5,
    NotReady = 6,
    NoDevice = 7,
    Io = 8,
    Model = 9,
    Gpu = 10,
    RequestFailed = 11,
    Internal = 12,
}

impl Status {
    pub const ALL: [Status; 13] = [
        Status::Ok,
        Status::InvalidArgument,
        Status::BufferTooSmall,
        Status::Timeout,
        Status::Finished,
        Status::Cancelled,
        Status::NotReady,
        Status::NoDevice,
        Status::Io,
        Status::Model,
        Status::Gpu,
        Status::RequestFailed,
        Status::Internal,
    ];

    /// The header's constant name, as a static C string.
    pub fn name(self) -> &'static CStr {
        match self {
            Status::Ok => c"OCRVL_OK",
            Status::InvalidArgument => c"OCRVL_INVALID_ARGUMENT",
            Status::BufferTooSmall => c"OCRVL_BUFFER_TOO_SMALL",
            Status::Timeout => c"OCRVL_TIMEOUT",
            Status::Finished => c"OCRVL_FINISHED",
            Status::Cancelled => c"OCRVL_CANCELLED",
            Status::NotReady => c"OCRVL_NOT_READY",
            Status::NoDevice => c"OCRVL_NO_DEVICE",
            Status::Io => c"OCRVL_IO",
            Status::Model => c"OCRVL_MODEL",
            Status::Gpu => c"OCRVL_GPU",
            Status::RequestFailed => c"OCRVL_REQUEST_FAILED",
            Status::Internal => c"OCRVL_INTERNAL",
        }
    }
}

// The other C enums are plain int32_t fields and arguments: a value from C is checked, never
// transmuted into a Rust enum (an out-of-range discriminant would be undefined behaviour).
pub const OCRVL_TASK_OCR: i32 = 0;
pub const OCRVL_TASK_TABLE: i32 = 1;
pub const OCRVL_TASK_FORMULA: i32 = 2;
pub const OCRVL_TASK_CHART: i32 = 3;
pub const OCRVL_TASK_PROMPT: i32 = 4;
/// PaddleOCR-VL-1.5 and later (ABI 2).
pub const OCRVL_TASK_SPOTTING: i32 = 5;
pub const OCRVL_TASK_SEAL: i32 = 6;

pub const OCRVL_FINISH_NONE: i32 = 0;
pub const OCRVL_FINISH_STOP: i32 = 1;
pub const OCRVL_FINISH_LENGTH: i32 = 2;
pub const OCRVL_FINISH_CANCELLED: i32 = 3;
pub const OCRVL_FINISH_FAILED: i32 = 4;

pub const OCRVL_EVENT_TOKEN: i32 = 1;
pub const OCRVL_EVENT_DONE: i32 = 2;

pub const OCRVL_SWITCH_DEFAULT: i32 = 0;
pub const OCRVL_SWITCH_ON: i32 = 1;
pub const OCRVL_SWITCH_OFF: i32 = 2;

pub const OCRVL_QUANTIZATION_NONE: i32 = 0;
pub const OCRVL_QUANTIZATION_WINT8: i32 = 1;

/// A failed call: the status to return and the message for `ocrvl_last_error`.
#[derive(Clone, Debug)]
pub(crate) struct Fail {
    pub(crate) status: Status,
    pub(crate) msg: String,
}

impl Fail {
    pub(crate) fn new(status: Status, msg: impl Into<String>) -> Fail {
        Fail {
            status,
            msg: msg.into(),
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Fail {
        Fail::new(Status::InvalidArgument, msg)
    }

    /// A crate error seen while the engine starts (`Startup`) or on a request (`Request`):
    /// a config or preprocessing error means a bad model directory in the first case and a
    /// bad request in the second.
    pub(crate) fn from_error(e: &Error, phase: Phase) -> Fail {
        let for_phase = |startup: Status| match phase {
            Phase::Startup => startup,
            Phase::Request => Status::InvalidArgument,
        };
        let status = match e {
            Error::NoDevice(_) => Status::NoDevice,
            Error::Driver { .. } | Error::Cublas { .. } | Error::Kernel { .. } => Status::Gpu,
            Error::Invalid { .. } | Error::Request { .. } => Status::InvalidArgument,
            Error::Io { .. }
            | Error::Config(ConfigError::Io { .. })
            | Error::Weights(WeightsError::Io { .. })
            | Error::Preprocess(PreprocessError::Io { .. }) => Status::Io,
            Error::Config(_) | Error::Preprocess(_) => for_phase(Status::Model),
            Error::Weights(_) => Status::Model,
            Error::Hub(crate::hub::HubError::Io { .. }) => Status::Io,
            Error::Hub(_) => Status::Model,
            Error::NotReady(_) => Status::NotReady,
        };
        Fail::new(status, e.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Startup,
    Request,
}

pub(crate) type FfiResult<T = ()> = std::result::Result<T, Fail>;

thread_local! {
    /// Per thread, so concurrent callers never read each other's messages.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(msg: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

/// Runs an export's body: `Ok` is `OCRVL_OK`; a `Fail` sets the last error (prefixed with
/// the function's name) and returns its status; a panic becomes `OCRVL_INTERNAL`.
pub(crate) fn guard(func: &str, body: impl FnOnce() -> FfiResult) -> ocrvl_status {
    // AssertUnwindSafe: after a panic nothing the body touched is used again except through
    // Mutexes, whose poisoning the request code turns into an error.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => Status::Ok as i32,
        Ok(Err(fail)) => {
            set_last_error(format!("{func}: {}", fail.msg));
            fail.status as i32
        }
        Err(payload) => {
            set_last_error(format!(
                "{func}: internal error (a panic inside ocrvl, please report it): {}",
                panic_message(payload.as_ref())
            ));
            Status::Internal as i32
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// A reference from a pointer the caller promised valid, after the checks a C caller's
/// mistakes most often fail: null and misalignment.
///
/// # Safety
/// A non-null, aligned `ptr` must point at a live `T` for the duration of the call.
pub(crate) unsafe fn non_null<'a, T>(ptr: *const T, what: &str) -> FfiResult<&'a T> {
    if ptr.is_null() {
        return Err(Fail::invalid(format!("`{what}` is NULL")));
    }
    if !ptr.is_aligned() {
        return Err(Fail::invalid(format!("`{what}` is not aligned for its type")));
    }
    Ok(&*ptr)
}

/// Checks an out-pointer and returns it (not yet written).
pub(crate) fn out_ptr<T>(ptr: *mut T, what: &str) -> FfiResult<*mut T> {
    if ptr.is_null() {
        return Err(Fail::invalid(format!("`{what}` is NULL")));
    }
    if !ptr.is_aligned() {
        return Err(Fail::invalid(format!("`{what}` is not aligned for its type")));
    }
    Ok(ptr)
}

/// Copies `text` and a NUL into `buf` when `capacity` holds both; false (nothing written)
/// otherwise.
///
/// # Safety
/// `buf` must be valid for `capacity` bytes of writes (it may be NULL when capacity is 0).
pub(crate) unsafe fn copy_text(text: &str, buf: *mut c_char, capacity: usize) -> FfiResult<bool> {
    if capacity == 0 || capacity <= text.len() {
        return Ok(false);
    }
    if buf.is_null() {
        return Err(Fail::invalid(format!(
            "the text buffer is NULL but its capacity is {capacity}"
        )));
    }
    std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
    *buf.add(text.len()) = 0;
    Ok(true)
}

/// The library's ABI version (`OCRVL_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn ocrvl_abi_version() -> u32 {
    OCRVL_ABI_VERSION
}

/// The name of a status value as a static C string.
#[no_mangle]
pub extern "C" fn ocrvl_status_name(status: ocrvl_status) -> *const c_char {
    Status::ALL
        .iter()
        .find(|s| **s as i32 == status)
        .map_or(c"OCRVL_UNKNOWN_STATUS", |s| s.name())
        .as_ptr()
}

/// Copies this thread's last error message into `buf` (snprintf-like) and returns its full
/// length.
///
/// # Safety
/// `buf` must be valid for `capacity` bytes of writes (it may be NULL when capacity is 0).
#[no_mangle]
pub unsafe extern "C" fn ocrvl_last_error(buf: *mut c_char, capacity: usize) -> usize {
    // Cannot fail in practice; the guard is there so that even this never unwinds into C.
    catch_unwind(|| {
        LAST_ERROR.with(|e| {
            let msg = e.borrow();
            if capacity > 0 && !buf.is_null() {
                let mut n = msg.len().min(capacity - 1);
                while !msg.is_char_boundary(n) {
                    n -= 1;
                }
                std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
            msg.len()
        })
    })
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_values_are_dense_and_named() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(*s as i32, i as i32);
            let name = unsafe { CStr::from_ptr(ocrvl_status_name(*s as i32)) };
            assert_eq!(name, s.name());
        }
        let unknown = unsafe { CStr::from_ptr(ocrvl_status_name(999)) };
        assert_eq!(unknown, c"OCRVL_UNKNOWN_STATUS");
    }

    #[test]
    fn panics_become_internal_with_the_message() {
        let status = guard("ocrvl_test", || panic!("boom {}", 7));
        assert_eq!(status, Status::Internal as i32);
        let mut buf = [0 as c_char; 200];
        let n = unsafe { ocrvl_last_error(buf.as_mut_ptr(), buf.len()) };
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert_eq!(n, msg.len());
        assert!(
            msg.starts_with("ocrvl_test: internal error") && msg.ends_with("boom 7"),
            "{msg}"
        );
    }

    #[test]
    fn last_error_truncates_at_a_char_boundary() {
        let _ = guard("f", || Err(Fail::invalid("é".repeat(10))));
        let full = "f: ".len() + 20;
        // Room for "f: " and one byte of the first two-byte character: that byte is dropped.
        let mut buf = [1 as c_char; 5];
        let n = unsafe { ocrvl_last_error(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(n, full);
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }, c"f: ");
        assert_eq!(unsafe { ocrvl_last_error(std::ptr::null_mut(), 0) }, full);
    }
}
