//! `POST /v1/chat/completions`: one answer, or server-sent events in OpenAI's chunk format.
//!
//! Streaming: a first chunk with `delta.role`, one chunk per token whose text is ready
//! (tokens whose text is held back — a partial UTF-8 character or a possible stop string —
//! send nothing unless logprobs were asked for), then a chunk with `finish_reason` that also
//! carries the remaining text and the `usage`, then `data: [DONE]`. Usage rides on the finish
//! chunk always (so it is there without clients having to ask, and clients that index
//! `choices[0]` never see an empty list); with `stream_options.include_usage` the separate
//! usage chunk with `choices: []` that OpenAI defines follows it too.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::engine::FinishReason;
use crate::service::reasoning::{ReasoningSplitter, SplitText};
use crate::service::{Completion, Event, RequestHandle, Service};

use super::api::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, ChoiceLogprobs, ChunkChoice, Delta, TokenLogprob,
    TopLogprob, Usage,
};
use super::error::ApiError;
use super::metrics::Outcome;
use super::validate::{self, ChatPlan};
use super::{json_response, media, unix_now, AppState, InFlight};

/// How often a blocking task waiting for tokens checks that its client is still there.
const POLL: Duration = Duration::from_millis(50);

pub async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match handle(state, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    // Admission first: an overloaded server answers 503 without reading the body.
    let guard = state.admit()?;
    // At most `max_preparing_requests` bodies and images in memory at once; the permit is
    // released once the request is in the engine (or refused).
    let permit = state
        .preparing
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    let body = read_body(req, state.config.max_body_bytes, state.config.body_read_timeout).await?;
    let plan = validate::plan_chat(validate::parse_chat(&body)?, &state.limits())?;
    drop(body);
    if let Some(limits) = state.service.limits() {
        // Before any image is fetched or decoded.
        limits.check_stop(&plan.stop)?;
        limits.check_stop_token_ids(&plan.stop_token_ids)?;
    }

    let urls = plan.image_urls.clone();
    let mut policy = state.config.media.clone();
    if let Some(limits) = state.service.limits() {
        policy.max_decoded_pixels = limits.max_decoded_pixels;
    }
    let images = tokio::task::spawn_blocking(move || {
        urls.iter()
            .enumerate()
            .map(|(i, url)| media::load_image(url, &policy, i))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("image loading panicked: {e}")))??;
    let request = plan.to_ocr_request(images);
    let service = state.service.clone();
    let handle = state.pool.run(move || service.submit(request)).await??;
    drop(permit);

    let ctx = Ctx {
        state: state.clone(),
        id: format!("chatcmpl-{:032x}", rand::random::<u128>()),
        created: unix_now(),
        plan,
        arrived,
    };
    if ctx.plan.stream {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::task::spawn_blocking(move || run_stream(ctx, handle, guard, tx));
        let events = futures_util::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, Infallible>(SseEvent::default().data(data)), rx))
        });
        Ok(Sse::new(events).into_response())
    } else {
        let (first_tx, first_rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || run_once(ctx, handle, guard, first_tx));
        first_rx
            .await
            .map_err(|_| ApiError::internal("the request's worker ended without an answer"))?
    }
}

/// The whole body, at most `limit` bytes (413 past it, at once when the declared length is
/// over), within `timeout` of the start of reading (408 after it).
async fn read_body(req: Request, limit: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::too_large(format!(
            "the request body is over the limit of {limit} bytes (--max-request-bytes)"
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut frames = req.into_body().into_data_stream();
    let read = async {
        let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(chunk) = frames.next().await {
            let chunk = chunk.map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}"), None))?;
            if out.len() + chunk.len() > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::timeout(format!(
            "the request body did not arrive within {:.0} s",
            timeout.as_secs_f64()
        ))
    })?
}

/// What the blocking task of one request needs.
struct Ctx {
    state: Arc<AppState>,
    id: String,
    created: u64,
    plan: ChatPlan,
    arrived: Instant,
}

enum Next {
    Event(Event),
    /// The receiving side is gone: the client disconnected.
    ClientGone,
    Failed(crate::Error),
}

/// The next event, polling `gone` so a vanished client is noticed even while the request
/// waits in the queue.
fn next_event(handle: &mut RequestHandle, gone: impl Fn() -> bool) -> Next {
    loop {
        if gone() {
            return Next::ClientGone;
        }
        match handle.recv_timeout(POLL) {
            Ok(Some(ev)) => return Next::Event(ev),
            Ok(None) => return Next::Failed(crate::Error::invalid("recv", "the request had already finished")),
            // A timeout leaves the handle live; anything else ended it.
            Err(_) if !handle.is_finished() => continue,
            Err(e) => return Next::Failed(e),
        }
    }
}

/// Non-streaming: submit, wait, answer once. `answer` is dropped by the HTTP side when the
/// client goes away, which ends the wait and drops (aborts) the request.
fn run_once(
    ctx: Ctx,
    mut handle: RequestHandle,
    _guard: InFlight,
    answer: oneshot::Sender<Result<Response, ApiError>>,
) {
    // With a reasoning parser the text is split as the stream would split it.
    let mut splitter = ctx
        .state
        .config
        .reasoning_parser
        .and_then(|p| handle.reasoning_splitter(p));
    let mut split = SplitText::default();
    loop {
        match next_event(&mut handle, || answer.is_closed()) {
            Next::Event(Event::Token { token, text, .. }) => {
                if let Some(s) = splitter.as_mut() {
                    append(&mut split, s.push(token, &text));
                }
            }
            Next::Event(Event::Done { completion, text }) => {
                ctx.state.metrics.observe_completion(&completion, ctx.arrived.elapsed());
                let split = splitter.as_mut().map(|s| {
                    append(&mut split, s.finish(&text));
                    split
                });
                let _ = answer.send(Ok(json_response(StatusCode::OK, &ctx.completion(&completion, split))));
                return;
            }
            Next::ClientGone => {
                ctx.state.metrics.count(Outcome::Abort);
                return;
            }
            Next::Failed(e) => {
                ctx.state.metrics.count(Outcome::Error);
                let _ = answer.send(Err(ApiError::internal(e.to_string())));
                return;
            }
        }
    }
}

/// Streaming, once submitted (so a bad request was still an HTTP 400, not an error inside a
/// 200 stream): SSE payloads go to `out` until the end.
fn run_stream(ctx: Ctx, mut handle: RequestHandle, _guard: InFlight, out: mpsc::UnboundedSender<String>) {
    let prompt_tokens = handle.prompt_tokens();
    let role = Delta {
        role: Some("assistant"),
        content: Some(String::new()),
        reasoning_content: None,
    };
    let mut splitter = ctx
        .state
        .config
        .reasoning_parser
        .and_then(|p| handle.reasoning_splitter(p));
    // A failed send means the client is gone: returning drops the handle, which aborts.
    let gone = |ctx: &Ctx| {
        ctx.state.metrics.count(Outcome::Abort);
    };
    if out.send(ctx.chunk(role, None, None, None)).is_err() {
        return gone(&ctx);
    }
    // Tokens whose logprobs went out; a stop string ends the request on a token that has no
    // `Token` event, and its logprob rides on the finish chunk.
    let mut logprobs_sent = 0;
    loop {
        match next_event(&mut handle, || out.is_closed()) {
            Next::Event(Event::Token {
                token,
                logprob,
                top,
                text,
            }) => {
                let logprobs = ctx.plan.logprobs.then(|| ChoiceLogprobs {
                    content: vec![token_logprob(&ctx.state.service, token, logprob, &top)],
                });
                let piece = split_piece(splitter.as_mut(), token, text);
                if piece.content.is_empty() && piece.reasoning.is_empty() && logprobs.is_none() {
                    continue;
                }
                logprobs_sent += usize::from(logprobs.is_some());
                let delta = delta_of(piece);
                if out.send(ctx.chunk(delta, logprobs, None, None)).is_err() {
                    return gone(&ctx);
                }
            }
            Next::Event(Event::Done { completion, text }) => {
                ctx.state.metrics.observe_completion(&completion, ctx.arrived.elapsed());
                let usage = Usage::new(prompt_tokens, completion.token_ids.len());
                let piece = match splitter.as_mut() {
                    Some(s) => s.finish(&text),
                    None => SplitText {
                        reasoning: String::new(),
                        content: text,
                    },
                };
                let mut delta = delta_of(piece);
                delta.content = delta.content.filter(|c| !c.is_empty());
                let reason = finish_reason(completion.finish_reason);
                let rest = ctx.plan.logprobs.then(|| ctx.logprobs(&completion, logprobs_sent));
                let _ = out.send(ctx.chunk(delta, rest, Some(reason), Some(usage)));
                if ctx.plan.include_usage {
                    let _ = out.send(ctx.usage_chunk(usage));
                }
                let _ = out.send("[DONE]".into());
                return;
            }
            Next::ClientGone => return gone(&ctx),
            Next::Failed(e) => {
                // Headers are sent: the error goes in the stream, as vLLM does.
                ctx.state.metrics.count(Outcome::Error);
                let _ = out.send(ApiError::internal(e.to_string()).body().to_string());
                let _ = out.send("[DONE]".into());
                return;
            }
        }
    }
}

impl Ctx {
    /// The logprobs of the completion's tokens from `from` on.
    fn logprobs(&self, c: &Completion, from: usize) -> ChoiceLogprobs {
        ChoiceLogprobs {
            content: c
                .token_ids
                .iter()
                .zip(&c.logprobs)
                .zip(&c.top_logprobs)
                .skip(from)
                .map(|((&t, &lp), top)| token_logprob(&self.state.service, t, lp, top))
                .collect(),
        }
    }

    /// The whole answer; `split` is its text split by the reasoning parser, if one ran.
    fn completion(&self, c: &Completion, split: Option<SplitText>) -> ChatCompletion {
        let logprobs = self.plan.logprobs.then(|| self.logprobs(c, 0));
        let (content, reasoning_content) = match split {
            Some(s) => (s.content, Some(s.reasoning)),
            None => (c.text.clone(), None),
        };
        ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion",
            created: self.created,
            model: self.plan.model.clone(),
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    reasoning_content,
                },
                logprobs,
                finish_reason: finish_reason(c.finish_reason),
            }],
            usage: Usage::new(c.prompt_tokens, c.token_ids.len()),
        }
    }

    fn chunk(
        &self,
        delta: Delta,
        logprobs: Option<ChoiceLogprobs>,
        finish_reason: Option<&'static str>,
        usage: Option<Usage>,
    ) -> String {
        self.encode(ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.plan.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason,
            }],
            usage,
        })
    }

    fn usage_chunk(&self, usage: Usage) -> String {
        self.encode(ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.plan.model.clone(),
            choices: Vec::new(),
            usage: Some(usage),
        })
    }

    fn encode(&self, chunk: ChatCompletionChunk) -> String {
        // These types always serialise; an error would be a bug, shown in the stream.
        serde_json::to_string(&chunk).unwrap_or_else(|e| ApiError::internal(e.to_string()).body().to_string())
    }
}

fn append(all: &mut SplitText, piece: SplitText) {
    all.reasoning.push_str(&piece.reasoning);
    all.content.push_str(&piece.content);
}

/// One token's text, split when a reasoning parser runs (else all content).
fn split_piece(splitter: Option<&mut ReasoningSplitter>, token: u32, text: String) -> SplitText {
    match splitter {
        Some(s) => s.push(token, &text),
        None => SplitText {
            reasoning: String::new(),
            content: text,
        },
    }
}

/// A stream delta of a split piece: `content` always present unless the piece is reasoning
/// alone (as vLLM sends it), `reasoning_content` when there is some.
fn delta_of(piece: SplitText) -> Delta {
    let reasoning = (!piece.reasoning.is_empty()).then_some(piece.reasoning);
    Delta {
        role: None,
        content: (reasoning.is_none() || !piece.content.is_empty()).then_some(piece.content),
        reasoning_content: reasoning,
    }
}

/// OpenAI's names; an aborted request (shutdown ran out of time) is vLLM's "abort".
fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Aborted => "abort",
    }
}

fn token_logprob(service: &Service, token: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
    let text = |id: u32| service.decode(&[id], false).unwrap_or_default();
    let token_text = text(token);
    TokenLogprob {
        bytes: token_text.as_bytes().to_vec(),
        token: token_text,
        logprob,
        top_logprobs: top
            .iter()
            .map(|&(id, lp)| {
                let t = text(id);
                TopLogprob {
                    bytes: t.as_bytes().to_vec(),
                    token: t,
                    logprob: lp,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(reasoning: &str, content: &str) -> SplitText {
        SplitText {
            reasoning: reasoning.into(),
            content: content.into(),
        }
    }

    #[test]
    fn deltas_carry_reasoning_apart_from_content() {
        let d = delta_of(piece("", "Hello"));
        assert_eq!((d.content.as_deref(), d.reasoning_content), (Some("Hello"), None));
        // Reasoning alone: no empty content beside it.
        let d = delta_of(piece("I think", ""));
        assert_eq!((d.content, d.reasoning_content.as_deref()), (None, Some("I think")));
        // The piece where the marker falls carries both.
        let d = delta_of(piece("done.", "Answer"));
        assert_eq!(
            (d.content.as_deref(), d.reasoning_content.as_deref()),
            (Some("Answer"), Some("done."))
        );
        // An empty piece keeps the empty content (a logprobs-only chunk).
        assert_eq!(delta_of(piece("", "")).content.as_deref(), Some(""));
        // Without a splitter every token's text is content.
        let p = split_piece(None, 5, "x".into());
        assert_eq!(p, piece("", "x"));
    }
}
