//! The caller's end of one request: tokens arrive from the engine thread; this side turns them
//! into text (incremental detokenisation, [`super::detokenize`]: never a split character),
//! applies stop strings, and builds the final result.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::detokenize::IncrementalDetokenizer;
use super::reasoning::{ReasoningParser, ReasoningSplitter};
use super::{EngineEvent, Frontend, Service};
use crate::engine::FinishReason;
use crate::error::{Error, Result};

/// How a request's tokens become text: its stop strings, and vLLM's detokenisation flags.
///
/// `spaces_between_special_tokens` only matters to vLLM's slow-tokenizer path, which joins
/// special tokens with spaces; PaddleOCR-VL ships a fast tokenizer (`tokenizer.json`), for
/// which vLLM decodes with the tokenizers library and the flag changes nothing. It is kept
/// here so the request says what it asked for, and the text matches vLLM's either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TextOptions {
    pub stop: Vec<String>,
    pub skip_special_tokens: bool,
    #[allow(dead_code)]
    pub spaces_between_special_tokens: bool,
    /// The prompt leaves a `<think>` open (ERNIE-4.5-VL with thinking on): with the
    /// `ernie-45-vl` parser the output starts as reasoning.
    pub prompt_opens_thinking: bool,
}

/// Latencies of one request, from `submit`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Submit to the first token (includes preprocessing queueing and prefill).
    pub time_to_first_token: Duration,
    /// Submit to the last token.
    pub total: Duration,
    /// Mean time between tokens after the first (zero for one token).
    pub time_per_output_token: Duration,
}

/// The final result of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// Generated text (special tokens skipped unless the request kept them), a matched stop
    /// string and what follows removed.
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Log-probability of each generated token.
    pub logprobs: Vec<f32>,
    /// Per token, the top alternatives asked for (empty when none were).
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    pub finish_reason: FinishReason,
    /// The stop string that ended the request, if one did.
    pub stop_string: Option<String>,
    pub prompt_tokens: usize,
    pub timings: Timings,
}

/// What [`RequestHandle::recv`] returns.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// One generated token and the text it completes (may be empty while a multi-byte
    /// character or a possible stop string is pending).
    Token {
        token: u32,
        logprob: f32,
        top: Vec<(u32, f32)>,
        text: String,
    },
    /// The request ended; no more events follow. `text` is the part of the completion's text
    /// not yet handed out by `Token` events (held back for stop strings or pending bytes).
    Done { completion: Completion, text: String },
}

/// The caller's handle to one request. Dropping it before the end aborts the request.
pub struct RequestHandle {
    id: u64,
    service: Service,
    front: Arc<Frontend>,
    events: Receiver<EngineEvent>,
    stop: Vec<String>,
    /// Leave special tokens out of the text.
    skip_special: bool,
    prompt_tokens: usize,
    submitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    top: Vec<Vec<(u32, f32)>>,
    text: String,
    /// Bytes of `text` already handed out in `Event::Token`.
    sent: usize,
    detokenizer: IncrementalDetokenizer,
    finished: bool,
    prompt_opens_thinking: bool,
}

impl RequestHandle {
    pub(crate) fn new(
        id: u64,
        service: Service,
        front: Arc<Frontend>,
        events: Receiver<EngineEvent>,
        text: TextOptions,
        prompt_tokens: usize,
        submitted: Instant,
    ) -> RequestHandle {
        RequestHandle {
            id,
            service,
            front,
            events,
            stop: text.stop.into_iter().filter(|s| !s.is_empty()).collect(),
            skip_special: text.skip_special_tokens,
            prompt_tokens,
            submitted,
            first_token: None,
            last_token: None,
            ids: Vec::new(),
            logprobs: Vec::new(),
            top: Vec::new(),
            text: String::new(),
            sent: 0,
            detokenizer: IncrementalDetokenizer::new(),
            finished: false,
            prompt_opens_thinking: text.prompt_opens_thinking,
        }
    }

    /// A splitter of this request's output into reasoning and content under `parser`, or None
    /// when the model's vocabulary has no think markers (its output is all content).
    pub fn reasoning_splitter(&self, parser: ReasoningParser) -> Option<ReasoningSplitter> {
        let tokens = self.front.think_tokens?;
        let starts = match parser {
            ReasoningParser::Ernie45Vl => self.prompt_opens_thinking,
            ReasoningParser::Ernie45VlThinking => true,
        };
        Some(ReasoningSplitter::new(tokens, starts))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Waits for the next event; `Ok(None)` once the request has finished.
    pub fn recv(&mut self) -> Result<Option<Event>> {
        self.recv_inner(None)
    }

    /// Like [`Self::recv`] with a time limit: `Err` with "timed out" when nothing came.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        self.recv_inner(Some(timeout))
    }

    /// Waits for the end and returns the completion.
    pub fn wait(mut self) -> Result<Completion> {
        while let Some(ev) = self.recv()? {
            if let Event::Done { completion, .. } = ev {
                return Ok(completion);
            }
        }
        Err(Error::invalid("wait", "the request had already finished"))
    }

    /// Aborts the request; a later `recv` returns `Done` with `FinishReason::Aborted`.
    pub fn cancel(&mut self) {
        if !self.finished {
            self.service.abort(self.id);
        }
    }

    fn recv_inner(&mut self, timeout: Option<Duration>) -> Result<Option<Event>> {
        if self.finished {
            return Ok(None);
        }
        let ev = match timeout {
            None => self.events.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => self.events.recv_timeout(t),
        };
        let ev = match ev {
            Ok(ev) => ev,
            // A timeout leaves the request running (`is_finished` stays false, and dropping
            // the handle still aborts it); only a vanished engine ends it.
            Err(RecvTimeoutError::Timeout) => {
                return Err(Error::invalid("recv", "timed out waiting for the next token"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.finished = true;
                return Err(disconnected());
            }
        };
        match ev {
            EngineEvent::Token {
                token,
                logprob,
                top,
                at,
            } => {
                self.first_token.get_or_insert(at);
                self.last_token = Some(at);
                self.ids.push(token);
                self.logprobs.push(logprob);
                self.top.push(top.clone());
                self.detokenize()?;
                if let Some((cut, stop)) = self.find_stop() {
                    // A stop string: the text ends before it, and the engine stops the request.
                    self.text.truncate(cut);
                    self.service.abort(self.id);
                    return Ok(Some(self.done(FinishReason::Stop, Some(stop))));
                }
                let text = self.take_text(false);
                Ok(Some(Event::Token {
                    token,
                    logprob,
                    top,
                    text,
                }))
            }
            EngineEvent::Finished { reason, at } => {
                self.last_token.get_or_insert(at);
                // Tokens held back for an unfinished character: their text now, U+FFFD and
                // all; it may complete a stop string.
                let (p, skip) = (&self.front.prompts, self.skip_special);
                let rest = self.detokenizer.flush(&self.ids, |ids| p.decode(ids, skip))?;
                self.text.push_str(&rest);
                if let Some((cut, stop)) = self.find_stop() {
                    self.text.truncate(cut);
                    return Ok(Some(self.done(FinishReason::Stop, Some(stop))));
                }
                Ok(Some(self.done(reason, None)))
            }
            EngineEvent::Failed(msg) => {
                self.finished = true;
                Err(Error::invalid("engine", format!("request {} failed: {msg}", self.id)))
            }
        }
    }

    fn detokenize(&mut self) -> Result<()> {
        let p = &self.front.prompts;
        let skip = self.skip_special;
        let new = self.detokenizer.step(&self.ids, |ids| p.decode(ids, skip))?;
        self.text.push_str(&new);
        Ok(())
    }

    /// The earliest stop string in the text not yet handed out: (byte offset, the string).
    fn find_stop(&self) -> Option<(usize, String)> {
        let longest = self.stop.iter().map(String::len).max()?;
        // A stop string can start before `sent` only if it was held back; start the search
        // where it could begin.
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| (from + i, s.clone())))
            .min_by_key(|x| x.0)
    }

    /// Text not handed out yet; with stop strings, the last (longest stop - 1) bytes are held
    /// back while they could still be the start of a stop string.
    fn take_text(&mut self, all: bool) -> String {
        let mut end = self.text.len();
        if !all {
            if let Some(longest) = self.stop.iter().map(String::len).max() {
                end = end.saturating_sub(longest - 1).max(self.sent);
                while !self.text.is_char_boundary(end) {
                    end -= 1;
                }
            }
        }
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    fn done(&mut self, reason: FinishReason, stop: Option<String>) -> Event {
        let text = self.take_text(true);
        Event::Done {
            completion: self.complete(reason, stop),
            text,
        }
    }

    fn complete(&mut self, reason: FinishReason, stop: Option<String>) -> Completion {
        self.finished = true;
        let first = self.first_token.unwrap_or(self.submitted);
        let last = self.last_token.unwrap_or(first);
        let n = self.ids.len();
        Completion {
            text: self.text.clone(),
            token_ids: self.ids.clone(),
            logprobs: self.logprobs.clone(),
            top_logprobs: self.top.clone(),
            finish_reason: reason,
            stop_string: stop,
            prompt_tokens: self.prompt_tokens,
            timings: Timings {
                time_to_first_token: first - self.submitted,
                total: last - self.submitted,
                time_per_output_token: if n > 1 {
                    (last - first) / (n as u32 - 1)
                } else {
                    Duration::ZERO
                },
            },
        }
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.service.abort(self.id);
        }
    }
}

fn disconnected() -> Error {
    Error::NotReady("the engine stopped before the request finished".into())
}
