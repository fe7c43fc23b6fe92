//! Request handles: stream events (`ocrvl_request_next`), wait for the end, read the text and
//! counters, cancel, free.
//!
//! Two locks, so that a consumer blocked in `next` or `wait` never blocks the others:
//! `stream` holds the service's handle and is held while waiting for an event; `progress`
//! holds what has arrived (text, counts, finish reason) and is held only to copy. `cancel`
//! takes neither (it sends an abort by id).

use std::ffi::c_char;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::types::{check_out, ocrvl_request_info, ocrvl_token_event};
use super::{
    copy_text, guard, non_null, ocrvl_status, out_ptr, Fail, FfiResult, Status, OCRVL_EVENT_DONE, OCRVL_EVENT_TOKEN,
    OCRVL_FINISH_CANCELLED, OCRVL_FINISH_FAILED, OCRVL_FINISH_LENGTH, OCRVL_FINISH_NONE, OCRVL_FINISH_STOP,
};
use crate::engine::FinishReason;
use crate::error::Error;
use crate::service::{Event, RequestHandle, Service, Timings};

/// The request behind an `ocrvl_request*`.
pub struct ocrvl_request {
    id: u64,
    service: Service,
    stream: Mutex<Stream>,
    progress: Mutex<Progress>,
}

struct Stream {
    handle: RequestHandle,
    /// An event received but not yet handed out (the caller's buffer was too small, or
    /// `wait` is draining): the next `next` delivers it.
    pending: Option<Pending>,
    /// The DONE event has been handed out: `next` answers FINISHED from now on.
    done_delivered: bool,
    /// Why the request failed; every later call returns it again.
    failure: Option<Fail>,
}

#[derive(Clone, Debug)]
struct Pending {
    kind: i32,
    token: u32,
    logprob: f32,
    finish_reason: i32,
    text: String,
}

#[derive(Default)]
struct Progress {
    /// The text of every event received so far; after DONE, the final text.
    text: String,
    completion_tokens: u64,
    prompt_tokens: u64,
    finish_reason: i32,
    timings: Timings,
}

impl ocrvl_request {
    pub(crate) fn new(service: Service, handle: RequestHandle) -> ocrvl_request {
        ocrvl_request {
            id: handle.id(),
            service,
            progress: Mutex::new(Progress {
                prompt_tokens: handle.prompt_tokens() as u64,
                ..Progress::default()
            }),
            stream: Mutex::new(Stream {
                handle,
                pending: None,
                done_delivered: false,
                failure: None,
            }),
        }
    }

    fn stream(&self) -> FfiResult<MutexGuard<'_, Stream>> {
        self.stream.lock().map_err(|_| poisoned())
    }

    fn progress(&self) -> FfiResult<MutexGuard<'_, Progress>> {
        self.progress.lock().map_err(|_| poisoned())
    }

    /// Makes sure `s.pending` holds the next event, waiting until `deadline` (None: no limit).
    /// Errors: TIMEOUT (still running), FINISHED (DONE already delivered), or the failure.
    fn fill(&self, s: &mut Stream, deadline: Option<Instant>) -> FfiResult {
        if s.pending.is_some() {
            return Ok(());
        }
        if let Some(f) = &s.failure {
            return Err(f.clone());
        }
        if s.done_delivered {
            return Err(Fail::new(
                Status::Finished,
                "the request has finished and every event was delivered",
            ));
        }
        let got = match deadline {
            None => s.handle.recv(),
            Some(d) => s.handle.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let event = match got {
            Ok(Some(ev)) => ev,
            Ok(None) => return Err(Fail::new(Status::Finished, "the request has finished")),
            // A timeout leaves the handle's request running and can only happen once the
            // deadline has passed; that is how it is told from a failure (the error text is
            // not relied upon).
            Err(_) if !s.handle.is_finished() && deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(Fail::new(
                    Status::Timeout,
                    "no event within the timeout; the request is running",
                ))
            }
            Err(e) => {
                let status = match e {
                    Error::NotReady(_) => Status::NotReady,
                    _ => Status::RequestFailed,
                };
                let fail = Fail::new(status, e.to_string());
                self.progress()?.finish_reason = OCRVL_FINISH_FAILED;
                s.failure = Some(fail.clone());
                return Err(fail);
            }
        };
        let mut p = self.progress()?;
        s.pending = Some(match event {
            Event::Token {
                token, logprob, text, ..
            } => {
                p.completion_tokens += 1;
                p.text.push_str(&text);
                Pending {
                    kind: OCRVL_EVENT_TOKEN,
                    token,
                    logprob,
                    finish_reason: OCRVL_FINISH_NONE,
                    text,
                }
            }
            Event::Done { completion, text } => {
                p.text.push_str(&text);
                // The streamed pieces add up to the final text; should they ever not, the
                // final text wins.
                if p.text != completion.text {
                    p.text = completion.text.clone();
                }
                p.completion_tokens = completion.token_ids.len() as u64;
                p.timings = completion.timings;
                p.finish_reason = finish_code(completion.finish_reason);
                Pending {
                    kind: OCRVL_EVENT_DONE,
                    token: 0,
                    logprob: 0.0,
                    finish_reason: p.finish_reason,
                    text,
                }
            }
        });
        Ok(())
    }
}

fn finish_code(r: FinishReason) -> i32 {
    match r {
        FinishReason::Stop => OCRVL_FINISH_STOP,
        FinishReason::Length => OCRVL_FINISH_LENGTH,
        FinishReason::Aborted => OCRVL_FINISH_CANCELLED,
    }
}

fn poisoned() -> Fail {
    Fail::new(
        Status::Internal,
        "the request's state is unusable after an earlier internal error",
    )
}

/// None for a negative timeout (no limit).
fn deadline(timeout_ms: i64) -> Option<Instant> {
    u64::try_from(timeout_ms)
        .ok()
        .map(|ms| Instant::now() + Duration::from_millis(ms))
}

/// Waits for and delivers the next event.
///
/// # Safety
/// `request` must be a live handle; `event` must point at a writable `ocrvl_token_event` of
/// `struct_size` bytes; `text` must be valid for `text_capacity` bytes (NULL when 0).
#[no_mangle]
pub unsafe extern "C" fn ocrvl_request_next(
    request: *mut ocrvl_request,
    timeout_ms: i64,
    event: *mut ocrvl_token_event,
    text: *mut c_char,
    text_capacity: usize,
) -> ocrvl_status {
    guard("ocrvl_request_next", || {
        let req = non_null(request.cast_const(), "request")?;
        let event = check_out(event, "event")?;
        if text.is_null() && text_capacity != 0 {
            return Err(Fail::invalid(format!(
                "`text` is NULL but text_capacity is {text_capacity}"
            )));
        }
        let mut s = req.stream()?;
        req.fill(&mut s, deadline(timeout_ms))?;
        let p = s.pending.clone().expect("fill leaves an event pending");
        // Written before the size check too: on BUFFER_TOO_SMALL the caller reads text_len.
        event.write(ocrvl_token_event {
            struct_size: (*event).struct_size,
            kind: p.kind,
            token: p.token,
            logprob: p.logprob,
            finish_reason: p.finish_reason,
            text_len: p.text.len(),
        });
        let skip_text = text.is_null() && text_capacity == 0;
        if !skip_text && !copy_text(&p.text, text, text_capacity)? {
            return Err(Fail::new(
                Status::BufferTooSmall,
                format!(
                    "the event's text needs {} bytes with the NUL; the buffer has {text_capacity}",
                    p.text.len() + 1
                ),
            ));
        }
        s.pending = None;
        if p.kind == OCRVL_EVENT_DONE {
            s.done_delivered = true;
        }
        Ok(())
    })
}

/// Waits for the request to end, consuming its events.
///
/// # Safety
/// `request` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn ocrvl_request_wait(request: *mut ocrvl_request, timeout_ms: i64) -> ocrvl_status {
    guard("ocrvl_request_wait", || {
        let req = non_null(request.cast_const(), "request")?;
        let deadline = deadline(timeout_ms);
        let mut s = req.stream()?;
        loop {
            if s.done_delivered {
                break;
            }
            req.fill(&mut s, deadline)?;
            // The text is already in `progress`; the event itself is not needed.
            if let Some(p) = s.pending.take() {
                s.done_delivered = p.kind == OCRVL_EVENT_DONE;
            }
        }
        match req.progress()?.finish_reason {
            OCRVL_FINISH_CANCELLED => Err(Fail::new(Status::Cancelled, "the request was cancelled")),
            _ => Ok(()),
        }
    })
}

/// Copies the text so far (the final text once finished) into a caller buffer.
///
/// # Safety
/// `request` must be a live handle; `text` valid for `capacity` bytes (NULL when 0);
/// `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn ocrvl_request_text(
    request: *mut ocrvl_request,
    text: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
) -> ocrvl_status {
    guard("ocrvl_request_text", || {
        let req = non_null(request.cast_const(), "request")?;
        let out_len = out_ptr(out_len, "out_len")?;
        let p = req.progress()?;
        out_len.write(p.text.len());
        if !copy_text(&p.text, text, capacity)? {
            return Err(Fail::new(
                Status::BufferTooSmall,
                format!(
                    "the text needs {} bytes with the NUL; the buffer has {capacity}",
                    p.text.len() + 1
                ),
            ));
        }
        Ok(())
    })
}

/// Fills the finish reason and counters.
///
/// # Safety
/// `request` must be a live handle; `info` must point at a writable `ocrvl_request_info` of
/// `struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn ocrvl_request_get_info(
    request: *mut ocrvl_request,
    info: *mut ocrvl_request_info,
) -> ocrvl_status {
    guard("ocrvl_request_get_info", || {
        let req = non_null(request.cast_const(), "request")?;
        let info = check_out(info, "info")?;
        let p = req.progress()?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        info.write(ocrvl_request_info {
            struct_size: (*info).struct_size,
            finish_reason: p.finish_reason,
            prompt_tokens: p.prompt_tokens,
            completion_tokens: p.completion_tokens,
            time_to_first_token_ms: ms(p.timings.time_to_first_token),
            total_ms: ms(p.timings.total),
        });
        Ok(())
    })
}

/// Asks the engine to stop the request; returns at once.
///
/// # Safety
/// `request` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn ocrvl_request_cancel(request: *mut ocrvl_request) -> ocrvl_status {
    guard("ocrvl_request_cancel", || {
        let req = non_null(request.cast_const(), "request")?;
        // By id, without the stream lock, so it works while another thread waits in `next`.
        // Aborting a finished request (or after the engine is gone) does nothing.
        req.service.abort(req.id);
        Ok(())
    })
}

/// Frees the request (cancelling it if still running).
///
/// # Safety
/// `request` must be NULL or a live handle with no other call on it running.
#[no_mangle]
pub unsafe extern "C" fn ocrvl_request_free(request: *mut ocrvl_request) -> ocrvl_status {
    guard("ocrvl_request_free", || {
        if !request.is_null() {
            // Dropping the service's handle aborts an unfinished request.
            drop(Box::from_raw(request));
        }
        Ok(())
    })
}
