//! The `#[repr(C)]` structs of `ffi/ocrvl.h`, field for field in the same order (checked by
//! `tests/cpu/ffi_header.rs`), and their conversion into the service's types. A zero field means
//! the default, so a zeroed struct with `struct_size` set is valid.

use std::ffi::{c_char, CStr};
use std::mem::size_of;
use std::path::PathBuf;

use super::{
    guard, non_null, ocrvl_status, out_ptr, Fail, FfiResult, OCRVL_QUANTIZATION_NONE, OCRVL_QUANTIZATION_WINT8,
    OCRVL_SWITCH_DEFAULT, OCRVL_SWITCH_OFF, OCRVL_SWITCH_ON,
};
use crate::config::{EngineConfig, EnvFlags, Quantization};
use crate::kernels::sampling::SamplingParams;
use crate::service::ServiceConfig;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ocrvl_engine_config {
    pub struct_size: u32,
    pub device: u32,
    pub model_dir: *const c_char,
    pub synthetic_dir: *const c_char,
    pub max_model_len: u64,
    pub max_num_batched_tokens: u64,
    pub max_num_seqs: u32,
    pub max_images_per_request: u32,
    pub gpu_memory_utilization: f64,
    pub enable_prefix_caching: i32,
    pub enforce_eager: i32,
    pub quantization: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ocrvl_sampling_params {
    pub struct_size: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: i32,
    pub seed: u64,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub max_tokens: u32,
    pub ignore_eos: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ocrvl_token_event {
    pub struct_size: u32,
    pub kind: i32,
    pub token: u32,
    pub logprob: f32,
    pub finish_reason: i32,
    pub text_len: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ocrvl_request_info {
    pub struct_size: u32,
    pub finish_reason: i32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
}

/// Structs that start with `struct_size`; `SIZE` is this library's `sizeof`, `MIN_SIZE` the
/// first layout's (fields are only appended; a caller built with an older header passes a
/// smaller `struct_size`, and the fields past it keep their zero, the default).
///
/// # Safety
/// An implementer must be valid when all its bytes are zero (numbers and raw pointers only).
pub(crate) unsafe trait Versioned {
    const NAME: &'static str;
    const SIZE: u32;
    const MIN_SIZE: u32 = Self::SIZE;
}

macro_rules! sized {
    ($t:ident) => {
        unsafe impl Versioned for $t {
            const NAME: &'static str = stringify!($t);
            const SIZE: u32 = size_of::<$t>() as u32;
        }
    };
    ($t:ident, first_layout_ends_at: $field:ident) => {
        unsafe impl Versioned for $t {
            const NAME: &'static str = stringify!($t);
            const SIZE: u32 = size_of::<$t>() as u32;
            const MIN_SIZE: u32 = std::mem::offset_of!($t, $field) as u32;
        }
    };
}
// `quantization` was appended after the first layout.
sized!(ocrvl_engine_config, first_layout_ends_at: quantization);
sized!(ocrvl_sampling_params);
sized!(ocrvl_token_event);
sized!(ocrvl_request_info);

/// Reads a struct the caller passed in. A larger `struct_size` (a newer header) is accepted
/// and only the fields this library knows are read; a smaller one down to the first layout
/// (an older header) reads that many bytes and leaves the rest zero, the defaults; anything
/// smaller is a forgotten or wrong `struct_size`.
///
/// # Safety
/// A non-null `ptr` must point at `struct_size` readable bytes.
pub(crate) unsafe fn read_in<T: Versioned + Copy>(ptr: *const T, what: &str) -> FfiResult<T> {
    let value = non_null(ptr, what)?;
    let size = *(ptr as *const u32);
    check_size::<T>(size, what)?;
    if size >= T::SIZE {
        return Ok(*value);
    }
    // SAFETY: T is valid zeroed (`Versioned`); the caller's `size` bytes are readable and
    // fewer than T's.
    let mut out: T = std::mem::zeroed();
    std::ptr::copy_nonoverlapping(ptr as *const u8, &mut out as *mut T as *mut u8, size as usize);
    Ok(out)
}

/// Checks an out-struct's `struct_size` and returns the pointer to write through.
///
/// # Safety
/// A non-null `ptr` must point at `struct_size` writable bytes.
pub(crate) unsafe fn check_out<T: Versioned>(ptr: *mut T, what: &str) -> FfiResult<*mut T> {
    let ptr = out_ptr(ptr, what)?;
    check_size::<T>(*(ptr as *const u32), what)?;
    Ok(ptr)
}

fn check_size<T: Versioned>(struct_size: u32, what: &str) -> FfiResult {
    if struct_size < T::MIN_SIZE {
        return Err(Fail::invalid(format!(
            "`{what}`: struct_size is {struct_size} but sizeof({}) is {} in this library (the oldest layout \
             it reads is {} bytes): set struct_size = sizeof({0}) (the *_default functions do)",
            T::NAME,
            T::SIZE,
            T::MIN_SIZE
        )));
    }
    Ok(())
}

/// Fills `config` with the defaults and `struct_size`.
///
/// # Safety
/// A non-null `config` must point at a writable `ocrvl_engine_config`.
#[no_mangle]
pub unsafe extern "C" fn ocrvl_engine_config_default(config: *mut ocrvl_engine_config) -> ocrvl_status {
    guard("ocrvl_engine_config_default", || {
        let out = out_ptr(config, "config")?;
        out.write(ocrvl_engine_config::defaults());
        Ok(())
    })
}

/// Fills `params` with the defaults (greedy) and `struct_size`.
///
/// # Safety
/// A non-null `params` must point at a writable `ocrvl_sampling_params`.
#[no_mangle]
pub unsafe extern "C" fn ocrvl_sampling_params_default(params: *mut ocrvl_sampling_params) -> ocrvl_status {
    guard("ocrvl_sampling_params_default", || {
        let out = out_ptr(params, "params")?;
        out.write(ocrvl_sampling_params::defaults());
        Ok(())
    })
}

impl ocrvl_engine_config {
    /// The defaults written out: what zero fields stand for.
    pub fn defaults() -> Self {
        let e = EngineConfig::default();
        let s = ServiceConfig::default();
        let switch = |on: bool| if on { OCRVL_SWITCH_ON } else { OCRVL_SWITCH_OFF };
        ocrvl_engine_config {
            struct_size: <Self as Versioned>::SIZE,
            device: s.device as u32,
            model_dir: std::ptr::null(),
            synthetic_dir: std::ptr::null(),
            max_model_len: e.max_model_len as u64,
            max_num_batched_tokens: e.max_num_batched_tokens as u64,
            max_num_seqs: e.max_num_seqs as u32,
            max_images_per_request: s.max_images_per_request as u32,
            gpu_memory_utilization: e.gpu_memory_utilization,
            enable_prefix_caching: switch(e.enable_prefix_caching),
            enforce_eager: switch(e.enforce_eager),
            quantization: OCRVL_QUANTIZATION_NONE,
        }
    }

    /// The service config these settings describe, zeros replaced by defaults. Only the
    /// checks that need no model happen here (switch values, paths, sizes that fit usize);
    /// ranges are checked against the model by `EngineConfig::validate`.
    ///
    /// # Safety
    /// The two path pointers must be NULL or NUL-terminated strings.
    pub(crate) unsafe fn to_service_config(self) -> FfiResult<ServiceConfig> {
        let d = EngineConfig::default();
        let s = ServiceConfig::default();
        let count = |v: u64, default: usize, what: &str| -> FfiResult<usize> {
            match v {
                0 => Ok(default),
                v => usize::try_from(v).map_err(|_| Fail::invalid(format!("{what} {v} does not fit in size_t"))),
            }
        };
        let engine = EngineConfig {
            max_model_len: count(self.max_model_len, d.max_model_len, "max_model_len")?,
            max_num_seqs: count(self.max_num_seqs.into(), d.max_num_seqs, "max_num_seqs")?,
            max_num_batched_tokens: count(
                self.max_num_batched_tokens,
                d.max_num_batched_tokens,
                "max_num_batched_tokens",
            )?,
            gpu_memory_utilization: if self.gpu_memory_utilization == 0.0 {
                d.gpu_memory_utilization
            } else {
                self.gpu_memory_utilization
            },
            dtype: d.dtype,
            enable_prefix_caching: switch(
                self.enable_prefix_caching,
                d.enable_prefix_caching,
                "enable_prefix_caching",
            )?,
            enforce_eager: switch(self.enforce_eager, d.enforce_eager, "enforce_eager")?,
            model: path(self.model_dir, "model_dir")?,
            quantization: match self.quantization {
                OCRVL_QUANTIZATION_NONE => Quantization::None,
                OCRVL_QUANTIZATION_WINT8 => Quantization::ExpertsInt8,
                v => {
                    return Err(Fail::invalid(format!(
                        "quantization is {v}; valid: 0 (OCRVL_QUANTIZATION_NONE), 1 (OCRVL_QUANTIZATION_WINT8)"
                    )))
                }
            },
            // Settings the C config does not carry (yet) keep their defaults.
            ..EngineConfig::default()
        };
        let env = EnvFlags::from_env().map_err(|e| Fail::invalid(e.to_string()))?;
        Ok(ServiceConfig {
            engine,
            env,
            device: self.device as usize,
            synthetic_dir: path(self.synthetic_dir, "synthetic_dir")?,
            max_images_per_request: count(
                self.max_images_per_request.into(),
                s.max_images_per_request,
                "max_images_per_request",
            )?,
            ..ServiceConfig::default()
        })
    }
}

fn switch(v: i32, default: bool, what: &str) -> FfiResult<bool> {
    match v {
        OCRVL_SWITCH_DEFAULT => Ok(default),
        OCRVL_SWITCH_ON => Ok(true),
        OCRVL_SWITCH_OFF => Ok(false),
        v => Err(Fail::invalid(format!(
            "{what} is {v}; valid: 0 (OCRVL_SWITCH_DEFAULT), 1 (OCRVL_SWITCH_ON), 2 (OCRVL_SWITCH_OFF)"
        ))),
    }
}

/// A NUL-terminated path, or None for NULL. On Unix the bytes are taken as they are (paths
/// need not be UTF-8); elsewhere they must be UTF-8.
///
/// # Safety
/// `p` must be NULL or a NUL-terminated string.
unsafe fn path(p: *const c_char, what: &str) -> FfiResult<Option<PathBuf>> {
    if p.is_null() {
        return Ok(None);
    }
    let bytes = CStr::from_ptr(p).to_bytes();
    if bytes.is_empty() {
        return Err(Fail::invalid(format!(
            "{what} is an empty string (use NULL for the default)"
        )));
    }
    #[cfg(unix)]
    let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes));
    #[cfg(not(unix))]
    let path =
        PathBuf::from(std::str::from_utf8(bytes).map_err(|_| Fail::invalid(format!("{what} is not valid UTF-8")))?);
    Ok(Some(path))
}

impl ocrvl_sampling_params {
    pub fn defaults() -> Self {
        let d = SamplingParams::greedy();
        ocrvl_sampling_params {
            struct_size: <Self as Versioned>::SIZE,
            temperature: d.temperature,
            top_p: d.top_p,
            top_k: d.top_k,
            seed: d.seed,
            repetition_penalty: d.repetition_penalty,
            frequency_penalty: d.frequency_penalty,
            presence_penalty: d.presence_penalty,
            max_tokens: 0,
            ignore_eos: 0,
        }
    }

    /// (sampling, max_tokens, ignore_eos) for an `OcrRequest`; value ranges are checked by
    /// `SamplingParams::validate` inside `Service::submit`.
    pub(crate) fn to_request_parts(self) -> FfiResult<(SamplingParams, Option<usize>, bool)> {
        let one_if_zero = |v: f32| if v == 0.0 { 1.0 } else { v };
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: one_if_zero(self.top_p),
            seed: self.seed,
            step: 0,
            repetition_penalty: one_if_zero(self.repetition_penalty),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
        };
        let max_tokens = match self.max_tokens {
            0 => None,
            n => Some(n as usize),
        };
        let ignore_eos = match self.ignore_eos {
            0 => false,
            1 => true,
            v => return Err(Fail::invalid(format!("ignore_eos is {v}; valid: 0, 1"))),
        };
        Ok((sampling, max_tokens, ignore_eos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_config_means_defaults() {
        let zero = ocrvl_engine_config {
            struct_size: size_of::<ocrvl_engine_config>() as u32,
            device: 0,
            model_dir: std::ptr::null(),
            synthetic_dir: std::ptr::null(),
            max_model_len: 0,
            max_num_batched_tokens: 0,
            max_num_seqs: 0,
            max_images_per_request: 0,
            gpu_memory_utilization: 0.0,
            enable_prefix_caching: 0,
            enforce_eager: 0,
            quantization: 0,
        };
        let from_zero = unsafe { zero.to_service_config() }.unwrap();
        let from_defaults = unsafe { ocrvl_engine_config::defaults().to_service_config() }.unwrap();
        assert_eq!(from_zero.engine, EngineConfig::default());
        assert_eq!(from_defaults.engine, EngineConfig::default());
        assert_eq!(
            from_zero.max_images_per_request,
            ServiceConfig::default().max_images_per_request
        );
    }

    #[test]
    fn bad_switch_and_short_struct_are_rejected() {
        let mut c = ocrvl_engine_config::defaults();
        c.enforce_eager = 3;
        let e = unsafe { c.to_service_config() }.unwrap_err();
        assert!(e.msg.contains("enforce_eager is 3"), "{}", e.msg);
        c.struct_size = 8;
        let e = unsafe { read_in(&c, "config") }.unwrap_err();
        assert!(e.msg.contains("struct_size is 8"), "{}", e.msg);
    }

    #[test]
    fn zeroed_sampling_is_greedy() {
        let mut p = ocrvl_sampling_params::defaults();
        p.top_p = 0.0;
        p.repetition_penalty = 0.0;
        let (s, max, eos) = p.to_request_parts().unwrap();
        assert_eq!(s, SamplingParams::greedy());
        assert_eq!((max, eos), (None, false));
        p.ignore_eos = 2;
        assert!(p.to_request_parts().is_err());
    }

    #[test]
    fn an_engine_config_of_the_first_layout_reads_with_the_appended_fields_at_their_defaults() {
        let mut c = ocrvl_engine_config::defaults();
        c.quantization = OCRVL_QUANTIZATION_WINT8;
        c.max_num_seqs = 7;
        let whole = unsafe { read_in(&c, "config") }.unwrap();
        assert_eq!((whole.max_num_seqs, whole.quantization), (7, OCRVL_QUANTIZATION_WINT8));
        // A caller built before `quantization` existed passes the first layout's size.
        c.struct_size = <ocrvl_engine_config as Versioned>::MIN_SIZE;
        assert!(c.struct_size < <ocrvl_engine_config as Versioned>::SIZE);
        let old = unsafe { read_in(&c, "config") }.unwrap();
        assert_eq!((old.max_num_seqs, old.quantization), (7, OCRVL_QUANTIZATION_NONE));
        c.struct_size -= 4;
        let err = unsafe { read_in(&c, "config") }.unwrap_err();
        assert!(err.msg.contains("struct_size"), "{}", err.msg);
    }

    #[test]
    fn quantization_maps_to_the_engine_setting_and_bad_values_are_refused() {
        let mut c = ocrvl_engine_config::defaults();
        let q = |c: ocrvl_engine_config| unsafe { c.to_service_config() }.map(|s| s.engine.quantization);
        assert_eq!(q(c).unwrap(), Quantization::None);
        c.quantization = OCRVL_QUANTIZATION_WINT8;
        assert_eq!(q(c).unwrap(), Quantization::ExpertsInt8);
        c.quantization = 7;
        let err = q(c).unwrap_err();
        assert!(err.msg.contains("quantization is 7"), "{}", err.msg);
    }
}
