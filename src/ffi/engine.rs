//! Engine handles: create (blocking until ready), destroy, submit.

use std::ffi::{c_char, CStr};
use std::ptr::null_mut;
use std::time::Duration;

use super::request::ocrvl_request;
use super::types::{ocrvl_engine_config, ocrvl_sampling_params, read_in};
use super::{
    guard, non_null, ocrvl_status, out_ptr, Fail, FfiResult, Phase, OCRVL_TASK_CHART, OCRVL_TASK_FORMULA,
    OCRVL_TASK_OCR, OCRVL_TASK_PROMPT, OCRVL_TASK_SEAL, OCRVL_TASK_SPOTTING, OCRVL_TASK_TABLE,
};
use crate::config::{FamilyConfig, ModelConfig};
use crate::error::Error;
use crate::preprocess::Task;
use crate::service::{OcrRequest, PromptInput, Service, ServiceConfig};

/// The engine behind an `ocrvl_engine*`. `Service` is a thread-safe handle, so C callers may
/// share the pointer across threads; only destroy needs exclusive use.
pub struct ocrvl_engine {
    service: Service,
    /// Checked before any image is copied (the service checks it too, after preprocessing).
    max_images: usize,
}

/// Starts an engine and blocks until it is ready or failed.
///
/// # Safety
/// `config` must be NULL or point at an `ocrvl_engine_config` of `struct_size` bytes whose
/// path fields are NULL or NUL-terminated; `out_engine` must point at writable storage.
#[no_mangle]
pub unsafe extern "C" fn ocrvl_engine_create(
    config: *const ocrvl_engine_config,
    out_engine: *mut *mut ocrvl_engine,
) -> ocrvl_status {
    guard("ocrvl_engine_create", || {
        let out = out_ptr(out_engine, "out_engine")?;
        out.write(null_mut());
        let c = if config.is_null() {
            ocrvl_engine_config::defaults()
        } else {
            read_in(config, "config")?
        };
        let service_config = c.to_service_config()?;
        check_config(&service_config)?;
        let max_images = service_config.max_images_per_request;
        let service = Service::spawn(service_config);
        if let Err(e) = service.wait_ready(None) {
            // The typed start-up error gives the status (no device, bad model, GPU failure);
            // `wait_ready`'s own error is only "not ready" with the text.
            let fail = Fail::from_error(service.startup_error().unwrap_or(&e), Phase::Startup);
            // Dropping the last handle stops and joins the (failed) engine thread.
            drop(service);
            return Err(fail);
        }
        out.write(Box::into_raw(Box::new(ocrvl_engine { service, max_images })));
        Ok(())
    })
}

/// The checks that need the model's config but no GPU, done before the engine thread starts
/// so that a bad setting is OCRVL_INVALID_ARGUMENT at once (and testable without a GPU), not
/// a failed start-up after the GPU and the weights have loaded.
fn check_config(c: &ServiceConfig) -> FfiResult {
    let max_positions = match &c.engine.model {
        Some(dir) => FamilyConfig::from_dir(dir)
            .map_err(|e| Fail::from_error(&Error::Config(e), Phase::Startup))?
            .max_position_embeddings(),
        // The synthetic model is always the full-size PaddleOCR-VL-0.9B.
        None => ModelConfig::paddleocr_vl_0_9b().text.max_position_embeddings,
    };
    c.engine
        .validate(max_positions)
        .map_err(|e| Fail::invalid(e.to_string()))
}

/// Stops the engine (running requests end as cancelled) and frees the handle.
///
/// # Safety
/// `engine` must be NULL or a handle from `ocrvl_engine_create` not yet destroyed, with no
/// other call on it running.
#[no_mangle]
pub unsafe extern "C" fn ocrvl_engine_destroy(engine: *mut ocrvl_engine) -> ocrvl_status {
    guard("ocrvl_engine_destroy", || {
        if engine.is_null() {
            return Ok(());
        }
        let engine = Box::from_raw(engine);
        // Requests hold clones of the service, so dropping this one alone would leave the
        // engine running until the last request is freed; shut it down explicitly.
        engine.service.shutdown(Duration::ZERO);
        Ok(())
    })
}

/// Preprocesses and queues one request.
///
/// # Safety
/// `engine` must be a live handle; for `num_images > 0`, `images` and `image_lens` must
/// point at `num_images` entries and each `images[i]` at `image_lens[i]` readable bytes;
/// `prompt` must be NULL or NUL-terminated; `sampling` NULL or an `ocrvl_sampling_params` of
/// `struct_size` bytes; `out_request` writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // the C signature, documented in the header
pub unsafe extern "C" fn ocrvl_submit(
    engine: *mut ocrvl_engine,
    images: *const *const u8,
    image_lens: *const usize,
    num_images: usize,
    task: i32,
    prompt: *const c_char,
    sampling: *const ocrvl_sampling_params,
    out_request: *mut *mut ocrvl_request,
) -> ocrvl_status {
    guard("ocrvl_submit", || {
        let out = out_ptr(out_request, "out_request")?;
        out.write(null_mut());
        let engine = non_null(engine.cast_const(), "engine")?;
        if num_images > engine.max_images {
            return Err(Fail::invalid(format!(
                "{num_images} images in one request; the limit is {} (max_images_per_request)",
                engine.max_images
            )));
        }
        let images = read_images(images, image_lens, num_images)?;
        let prompt = read_prompt(task, prompt)?;
        let params = if sampling.is_null() {
            ocrvl_sampling_params::defaults()
        } else {
            read_in(sampling, "sampling")?
        };
        let (sampling, max_tokens, ignore_eos) = params.to_request_parts()?;
        let mut req = OcrRequest::new(images, prompt);
        req.sampling = sampling;
        req.max_tokens = max_tokens;
        req.ignore_eos = ignore_eos;
        let handle = engine
            .service
            .submit(req)
            .map_err(|e| Fail::from_error(&e, Phase::Request))?;
        out.write(Box::into_raw(Box::new(ocrvl_request::new(
            engine.service.clone(),
            handle,
        ))));
        Ok(())
    })
}

/// Copies the caller's images (the service takes owned bytes, and the caller may reuse its
/// buffers as soon as submit returns).
///
/// # Safety
/// As for `ocrvl_submit`.
unsafe fn read_images(images: *const *const u8, lens: *const usize, n: usize) -> FfiResult<Vec<Vec<u8>>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let ptrs = std::slice::from_raw_parts(non_null(images, "images")?, n);
    let lens = std::slice::from_raw_parts(non_null(lens, "image_lens")?, n);
    let mut out = Vec::with_capacity(n);
    for (i, (&p, &len)) in ptrs.iter().zip(lens).enumerate() {
        if p.is_null() {
            return Err(Fail::invalid(format!("images[{i}] is NULL")));
        }
        if len == 0 {
            return Err(Fail::invalid(format!("image_lens[{i}] is 0: image {i} is empty")));
        }
        // from_raw_parts requires it; a length this large is a caller bug anyway.
        if len > isize::MAX as usize {
            return Err(Fail::invalid(format!(
                "image_lens[{i}] is {len}, larger than any buffer"
            )));
        }
        out.push(std::slice::from_raw_parts(p, len).to_vec());
    }
    Ok(out)
}

/// The task, or the caller's prompt text with OCRVL_TASK_PROMPT. Exactly one of the two is
/// given, so a prompt passed with a task by mistake is an error rather than ignored.
///
/// # Safety
/// `prompt` must be NULL or NUL-terminated.
unsafe fn read_prompt(task: i32, prompt: *const c_char) -> FfiResult<PromptInput> {
    let task = match task {
        OCRVL_TASK_PROMPT => {
            if prompt.is_null() {
                return Err(Fail::invalid("task is OCRVL_TASK_PROMPT but prompt is NULL"));
            }
            let text = CStr::from_ptr(prompt)
                .to_str()
                .map_err(|e| Fail::invalid(format!("prompt is not valid UTF-8 (at byte {})", e.valid_up_to())))?;
            return Ok(PromptInput::Text(text.to_string()));
        }
        OCRVL_TASK_OCR => Task::Ocr,
        OCRVL_TASK_TABLE => Task::Table,
        OCRVL_TASK_FORMULA => Task::Formula,
        OCRVL_TASK_CHART => Task::Chart,
        OCRVL_TASK_SPOTTING => Task::Spotting,
        OCRVL_TASK_SEAL => Task::Seal,
        t => {
            return Err(Fail::invalid(format!(
                "task is {t}; valid: 0 (OCR), 1 (TABLE), 2 (FORMULA), 3 (CHART), 4 (PROMPT), 5 (SPOTTING), 6 (SEAL)"
            )))
        }
    };
    if !prompt.is_null() {
        return Err(Fail::invalid("prompt must be NULL unless task is OCRVL_TASK_PROMPT"));
    }
    Ok(PromptInput::Task(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_and_task_are_exclusive_and_utf8_checked() {
        let bad_utf8 = [b'a', 0xff, 0];
        let e = unsafe { read_prompt(OCRVL_TASK_PROMPT, bad_utf8.as_ptr().cast()) }.unwrap_err();
        assert!(e.msg.contains("not valid UTF-8 (at byte 1)"), "{}", e.msg);
        assert!(unsafe { read_prompt(OCRVL_TASK_OCR, c"x".as_ptr()) }.is_err());
        assert!(unsafe { read_prompt(OCRVL_TASK_PROMPT, std::ptr::null()) }.is_err());
        assert!(unsafe { read_prompt(9, std::ptr::null()) }.is_err());
        assert!(matches!(
            unsafe { read_prompt(OCRVL_TASK_TABLE, std::ptr::null()) },
            Ok(PromptInput::Task(Task::Table))
        ));
    }

    #[test]
    fn image_arrays_are_checked() {
        let img = [1u8, 2, 3];
        let ptrs = [img.as_ptr(), std::ptr::null()];
        let lens = [3usize, 3];
        let e = unsafe { read_images(ptrs.as_ptr(), lens.as_ptr(), 2) }.unwrap_err();
        assert!(e.msg.contains("images[1] is NULL"), "{}", e.msg);
        let e = unsafe { read_images(std::ptr::null(), lens.as_ptr(), 1) }.unwrap_err();
        assert!(e.msg.contains("`images` is NULL"), "{}", e.msg);
        let zero = [0usize];
        assert!(unsafe { read_images(ptrs.as_ptr(), zero.as_ptr(), 1) }.is_err());
        let got = unsafe { read_images(ptrs.as_ptr(), lens.as_ptr(), 1) }.unwrap();
        assert_eq!(got, vec![vec![1, 2, 3]]);
    }
}
