//! Checks a chat-completions request and turns it into a [`ChatPlan`], with no engine and no
//! GPU: JSON parsing, the model name, the messages, counts and sampling ranges. What needs the
//! model's tokenizer and processor (a prompt over `--max-model-len`, an image that does not
//! decode past its header) is checked by `Service::submit` afterwards.
//!
//! Conversation shape: a model with conversations (ERNIE-4.5-VL, `Limits::conversations`) takes
//! system, user and assistant turns in order, images in user turns, ending with a user turn.
//! PaddleOCR-VL is a single-turn model (one user turn holding images and an instruction,
//! MODEL_SPEC §6.3), so for it a request must hold exactly one `user` message.
//! System and developer messages are rejected with a 400 rather than folded into the user
//! text: the model was never trained with a system turn, and silently changing the prompt the
//! caller wrote would make results differ from the reference pipelines without telling anyone.
//! Assistant and tool messages (multi-turn) are rejected for the same reason.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use crate::kernels::sampling::SamplingParams;
use crate::preprocess::ProcessorConfig;
use crate::service::limits::{self, check_sampling};
use crate::service::{ChatPart, ChatRole, ChatTurn, OcrRequest, PixelBounds, PromptInput};

use super::api::{ChatCompletionRequest, ContentPart, MessageContent, StopSpec};
use super::error::ApiError;

/// The most alternatives reported per token (the sampler's limit and OpenAI's).
pub const MAX_TOP_LOGPROBS: usize = limits::MAX_TOP_LOGPROBS;

/// What validation needs to know about the server.
#[derive(Clone, Debug)]
pub struct Limits {
    pub served_model_names: Vec<String>,
    /// `--limit-mm-per-prompt`.
    pub max_images: usize,
    /// `--max-model-len`: `max_tokens` above it can never fit.
    pub max_model_len: usize,
    /// Upper end of `temperature`.
    pub max_temperature: f32,
    /// The served model takes conversations (system, user and assistant turns: ERNIE-4.5-VL);
    /// otherwise one user message (PaddleOCR-VL).
    pub conversations: bool,
}

/// A checked request, ready for its images to be loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatPlan {
    /// The served name the request asked for (echoed back in responses).
    pub model: String,
    /// `image_url` URLs in prompt order.
    pub image_urls: Vec<String>,
    /// The text parts, joined by newlines (single-turn models).
    pub text: String,
    /// The conversation, for models that take one (`Limits::conversations`).
    pub turns: Option<Vec<ChatTurn>>,
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub logprobs: bool,
    pub top_logprobs: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// `mm_processor_kwargs` resize bounds for this request's images.
    pub pixel_bounds: Option<PixelBounds>,
    pub skip_special_tokens: bool,
    pub spaces_between_special_tokens: bool,
    /// `chat_template_kwargs.enable_thinking`.
    pub enable_thinking: Option<bool>,
    /// Fields of the request this server does not read (ignored).
    pub ignored_fields: Vec<String>,
}

impl ChatPlan {
    /// The service request, once the images' bytes are loaded (in `image_urls` order).
    pub fn to_ocr_request(&self, images: Vec<Vec<u8>>) -> OcrRequest {
        let prompt = match &self.turns {
            Some(turns) => PromptInput::Chat(turns.clone()),
            None => PromptInput::Text(self.text.clone()),
        };
        let mut req = OcrRequest::new(images, prompt);
        req.sampling = self.sampling;
        req.max_tokens = self.max_tokens;
        req.stop = self.stop.clone();
        req.stop_token_ids = self.stop_token_ids.clone();
        req.ignore_eos = self.ignore_eos;
        // Alternatives are only computed when asked for; the chosen token's own logprob
        // always comes with the token.
        req.top_logprobs = if self.logprobs { self.top_logprobs } else { 0 };
        req.pixel_bounds = self.pixel_bounds;
        req.skip_special_tokens = self.skip_special_tokens;
        req.spaces_between_special_tokens = self.spaces_between_special_tokens;
        req.enable_thinking = self.enable_thinking;
        req
    }
}

/// Parses the body; a syntax or type error is a 400 naming where it is.
pub fn parse_chat(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))
}

/// Checks everything that can be checked without the engine.
pub fn plan_chat(req: ChatCompletionRequest, limits: &Limits) -> Result<ChatPlan, ApiError> {
    let model = match &req.model {
        None => limits.served_model_names.first().cloned().unwrap_or_default(),
        Some(m) if limits.served_model_names.iter().any(|s| s == m) => m.clone(),
        Some(m) => return Err(ApiError::model_not_found(m, &limits.served_model_names)),
    };
    reject_unsupported(&req)?;
    let (image_urls, text, turns) = if limits.conversations {
        let (urls, turns) = conversation(&req)?;
        (urls, String::new(), Some(turns))
    } else {
        let (urls, text) = user_turn(&req)?;
        (urls, text, None)
    };
    if image_urls.len() > limits.max_images {
        return Err(ApiError::invalid(
            format!(
                "{} images in one request; at most {} are allowed (--limit-mm-per-prompt)",
                image_urls.len(),
                limits.max_images
            ),
            Some("messages"),
        ));
    }
    if let Some(n) = req.n {
        if n != 1 {
            return Err(ApiError::invalid(format!("n must be 1 (got {n})"), Some("n")));
        }
    }
    let req = top_p_zero_is_greedy(req);
    let sampling = sampling(&req, limits.max_temperature)?;
    let max_tokens = max_tokens(&req, limits.max_model_len)?;
    let pixel_bounds = pixel_bounds(&req, limits.max_model_len)?;
    let (enable_thinking, unread_kwargs) = template_kwargs(&req)?;
    let mut ignored_fields: Vec<String> = req.unknown.keys().cloned().collect();
    ignored_fields.extend(unread_kwargs);
    log_ignored_fields(&ignored_fields);

    let logprobs = req.logprobs.unwrap_or(false);
    let top_logprobs = match req.top_logprobs {
        None => 0,
        Some(k) if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) => {
            return Err(ApiError::invalid(
                format!("top_logprobs must be in 0..={MAX_TOP_LOGPROBS} (got {k})"),
                Some("top_logprobs"),
            ))
        }
        Some(k) if k > 0 && !logprobs => {
            return Err(ApiError::invalid(
                "top_logprobs needs logprobs set to true",
                Some("top_logprobs"),
            ))
        }
        Some(k) => k as usize,
    };
    let stop = match req.stop {
        None => Vec::new(),
        Some(StopSpec::One(s)) => vec![s],
        Some(StopSpec::Many(v)) => v,
    };
    let stream = req.stream.unwrap_or(false);
    Ok(ChatPlan {
        model,
        image_urls,
        text,
        turns,
        sampling,
        max_tokens,
        stop,
        stop_token_ids: req.stop_token_ids.unwrap_or_default(),
        ignore_eos: req.ignore_eos.unwrap_or(false),
        logprobs,
        top_logprobs,
        stream,
        include_usage: stream && req.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        pixel_bounds,
        skip_special_tokens: req.skip_special_tokens.unwrap_or(true),
        spaces_between_special_tokens: req.spaces_between_special_tokens.unwrap_or(true),
        enable_thinking,
        ignored_fields,
    })
}

/// `chat_template_kwargs`: `enable_thinking` (a bool, else a 400 naming it), and the names of
/// the keys not read (`chat_template_kwargs.KEY`, logged as ignored).
fn template_kwargs(req: &ChatCompletionRequest) -> Result<(Option<bool>, Vec<String>), ApiError> {
    const FIELD: &str = "chat_template_kwargs";
    let map = match &req.chat_template_kwargs {
        None | Some(serde_json::Value::Null) => return Ok((None, Vec::new())),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(ApiError::invalid(format!("{FIELD} must be an object"), Some(FIELD))),
    };
    let thinking = match map.get("enable_thinking") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(ApiError::invalid(
                format!("{FIELD}.enable_thinking must be true or false (got {other})"),
                Some(FIELD),
            ))
        }
    };
    let unread = map
        .keys()
        .filter(|k| k.as_str() != "enable_thinking")
        .map(|k| format!("{FIELD}.{k}"))
        .collect();
    Ok((thinking, unread))
}

/// Fields whose meaning this server cannot honour: rejected, not ignored.
fn reject_unsupported(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    let present = |v: &Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    };
    if present(&req.tools) {
        return Err(ApiError::invalid(
            "tools are not supported by this model",
            Some("tools"),
        ));
    }
    if present(&req.logit_bias) {
        return Err(ApiError::invalid("logit_bias is not supported", Some("logit_bias")));
    }
    if let Some(rf) = &req.response_format {
        let kind = rf.get("type").and_then(|t| t.as_str());
        if !rf.is_null() && kind != Some("text") {
            return Err(ApiError::invalid(
                "only response_format {\"type\": \"text\"} is supported",
                Some("response_format"),
            ));
        }
    }
    Ok(())
}

/// The one user turn: its image URLs and its text.
fn user_turn(req: &ChatCompletionRequest) -> Result<(Vec<String>, String), ApiError> {
    let param = Some("messages");
    let mut user = None;
    for m in &req.messages {
        match m.role.as_str() {
            "user" if user.is_none() => user = Some(m),
            "user" => {
                return Err(ApiError::invalid(
                    "only one user message is supported (PaddleOCR-VL is a single-turn model)",
                    param,
                ))
            }
            "system" | "developer" => {
                return Err(ApiError::invalid(
                    format!(
                        "{} messages are not supported: PaddleOCR-VL has no system turn; put the \
                         instruction in the user message",
                        m.role
                    ),
                    param,
                ))
            }
            "assistant" | "tool" | "function" => {
                return Err(ApiError::invalid(
                    format!("{} messages are not supported (single-turn model)", m.role),
                    param,
                ))
            }
            other => return Err(ApiError::invalid(format!("unknown message role `{other}`"), param)),
        }
    }
    let user = user.ok_or_else(|| ApiError::invalid("messages must hold one user message", param))?;
    let mut urls = Vec::new();
    let mut texts = Vec::new();
    match &user.content {
        None => return Err(ApiError::invalid("the user message has no content", param)),
        Some(MessageContent::Text(t)) => texts.push(t.as_str()),
        Some(MessageContent::Parts(parts)) => {
            for p in parts {
                match p {
                    ContentPart::Text { text } => texts.push(text),
                    ContentPart::ImageUrl { image_url } => urls.push(image_url.url().to_string()),
                }
            }
        }
    }
    let text = texts.join("\n");
    if urls.is_empty() && text.trim().is_empty() {
        return Err(ApiError::invalid("the user message is empty", param));
    }
    Ok((urls, text))
}

/// A conversation's turns and its image URLs in the order their parts appear: system (and
/// `developer`) messages, user messages with text and images, assistant messages with text and
/// their `reasoning_content`; the last message is the user's (the answer follows it).
fn conversation(req: &ChatCompletionRequest) -> Result<(Vec<String>, Vec<ChatTurn>), ApiError> {
    let param = Some("messages");
    let mut urls = Vec::new();
    let mut turns = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => ChatRole::System,
            "user" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            "tool" | "function" => {
                return Err(ApiError::invalid(
                    format!("messages[{i}]: {} messages are not supported", m.role),
                    param,
                ))
            }
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}]: unknown role `{other}`"),
                    param,
                ))
            }
        };
        let mut parts = Vec::new();
        match &m.content {
            None => {
                return Err(ApiError::invalid(
                    format!("messages[{i}] ({}) has no content", m.role),
                    param,
                ))
            }
            Some(MessageContent::Text(t)) => parts.push(ChatPart::Text(t.clone())),
            Some(MessageContent::Parts(list)) => {
                for p in list {
                    match p {
                        ContentPart::Text { text } => parts.push(ChatPart::Text(text.clone())),
                        ContentPart::ImageUrl { image_url } if role == ChatRole::User => {
                            urls.push(image_url.url().to_string());
                            parts.push(ChatPart::Image);
                        }
                        ContentPart::ImageUrl { .. } => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}]: images go in user messages, not {} ones", m.role),
                                param,
                            ))
                        }
                    }
                }
            }
        }
        let reasoning = match (&m.reasoning_content, role) {
            (Some(r), ChatRole::Assistant) => Some(r.clone()),
            (Some(_), _) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}]: reasoning_content belongs to assistant messages"),
                    param,
                ))
            }
            (None, _) => None,
        };
        turns.push(ChatTurn { role, parts, reasoning });
    }
    let last = turns
        .last()
        .ok_or_else(|| ApiError::invalid("messages must hold at least one user message", param))?;
    if last.role != ChatRole::User {
        return Err(ApiError::invalid(
            "the last message must be the user's (the answer follows it)",
            param,
        ));
    }
    let empty = last
        .parts
        .iter()
        .all(|p| matches!(p, ChatPart::Text(t) if t.trim().is_empty()));
    if empty {
        return Err(ApiError::invalid("the last user message is empty", param));
    }
    Ok((urls, turns))
}

fn sampling(req: &ChatCompletionRequest, max_temperature: f32) -> Result<SamplingParams, ApiError> {
    // Greedy unless asked otherwise: every reference pipeline decodes PaddleOCR-VL greedily
    // (MODEL_SPEC §6.4), so an omitted temperature means 0 here, not OpenAI's 1.
    // `top_p: 0` was made greedy before this (`top_p_zero_is_greedy`); vLLM's (0, 1] range is
    // checked by `check_top_p`.
    let temperature = req.temperature.unwrap_or(0.0);
    let top_p = req.top_p.unwrap_or(1.0);
    let top_k = match req.top_k.unwrap_or(0) {
        // vLLM's "off" is -1; ours is 0.
        -1 | 0 => 0,
        k if k > 0 => i32::try_from(k).unwrap_or(i32::MAX),
        k => {
            return Err(ApiError::invalid(
                format!("top_k: must be -1 (off) or >= 1 (got {k})"),
                Some("top_k"),
            ))
        }
    };
    // Without a seed every request draws its own, so two sampled requests differ; with one,
    // the same seed reproduces the same tokens (the sampler keys on (seed, position)).
    let seed = match req.seed {
        Some(s) => s as u64,
        None => rand::random(),
    };
    let params = SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
        step: 0,
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        frequency_penalty: req.frequency_penalty.unwrap_or(0.0),
        presence_penalty: req.presence_penalty.unwrap_or(0.0),
    };
    // The same ranges `Service::submit` enforces for every caller, checked here before any
    // image is loaded.
    check_sampling(&params, max_temperature).map_err(ApiError::from)?;
    Ok(params)
}

fn max_tokens(req: &ChatCompletionRequest, max_model_len: usize) -> Result<Option<usize>, ApiError> {
    let (value, name) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(v), _) => (v, "max_completion_tokens"),
        (None, Some(v)) => (v, "max_tokens"),
        (None, None) => return Ok(None),
    };
    if value < 1 {
        return Err(ApiError::invalid(
            format!("{name} must be at least 1 (got {value})"),
            Some(name),
        ));
    }
    if value as u64 >= max_model_len as u64 {
        return Err(ApiError::invalid(
            format!("{name} {value} leaves no room for the prompt in --max-model-len {max_model_len}"),
            Some(name),
        ));
    }
    Ok(Some(value as usize))
}

// ---------------------------------------------------------------------------------------
// Fields vLLM clients and PaddleOCR's pipeline send (issue 14).

/// `top_p: 0` with any temperature is what PaddleX sends a FastDeploy backend to ask for
/// greedy decoding (`temperature: 1, top_p: 0`); FastDeploy decodes it greedily, so it is
/// greedy here too (temperature 0, top_p back to 1), not a range error.
fn top_p_zero_is_greedy(mut req: ChatCompletionRequest) -> ChatCompletionRequest {
    if req.top_p == Some(0.0) {
        req.top_p = None;
        req.temperature = Some(0.0);
    }
    req
}

/// `mm_processor_kwargs`: `min_pixels` / `max_pixels`, or vLLM's `size: {shortest_edge,
/// longest_edge}` (pixel counts, as in the HF processor; the explicit keys win). Checked
/// against the hub processor's patch block (28x28) and `--max-model-len`; the service checks
/// again against the loaded model's processor. Any other key is a 400: it would change the
/// preprocessing in a way this server does not do.
fn pixel_bounds(req: &ChatCompletionRequest, max_model_len: usize) -> Result<Option<PixelBounds>, ApiError> {
    const FIELD: &str = "mm_processor_kwargs";
    let map = match &req.mm_processor_kwargs {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Object(m)) if m.is_empty() => return Ok(None),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(ApiError::invalid(format!("{FIELD} must be an object"), Some(FIELD))),
    };
    let count = |name: &str, v: &serde_json::Value| -> Result<u64, ApiError> {
        v.as_u64().ok_or_else(|| {
            ApiError::invalid(
                format!("{FIELD}.{name} must be a whole number of pixels >= 0 (got {v})"),
                Some(FIELD),
            )
        })
    };
    let mut bounds = PixelBounds::default();
    let (mut min_name, mut max_name) = ("min_pixels", "max_pixels");
    if let Some(size) = map.get("size") {
        let size = size
            .as_object()
            .ok_or_else(|| ApiError::invalid(format!("{FIELD}.size must be an object"), Some(FIELD)))?;
        for (k, v) in size {
            match k.as_str() {
                "shortest_edge" => {
                    bounds.min_pixels = Some(count("size.shortest_edge", v)?);
                    min_name = "size.shortest_edge";
                }
                "longest_edge" => {
                    bounds.max_pixels = Some(count("size.longest_edge", v)?);
                    max_name = "size.longest_edge";
                }
                other => {
                    return Err(ApiError::invalid(
                        format!("{FIELD}.size.{other} is not supported (shortest_edge, longest_edge are)"),
                        Some(FIELD),
                    ))
                }
            }
        }
    }
    for (k, v) in map {
        match k.as_str() {
            "size" => {}
            "min_pixels" => {
                bounds.min_pixels = Some(count(k, v)?);
                min_name = "min_pixels";
            }
            "max_pixels" => {
                bounds.max_pixels = Some(count(k, v)?);
                max_name = "max_pixels";
            }
            other => {
                return Err(ApiError::invalid(
                    format!("{FIELD}.{other} is not supported (min_pixels, max_pixels and size are)"),
                    Some(FIELD),
                ))
            }
        }
    }
    let hub = ProcessorConfig::default();
    let names = (format!("{FIELD}.{min_name}"), format!("{FIELD}.{max_name}"));
    bounds
        .resolve((hub.min_pixels, hub.max_pixels))
        .check(hub.factor(), max_model_len, (&names.0, &names.1))
        .map_err(|e| ApiError::invalid(e, Some(FIELD)))?;
    Ok(Some(bounds))
}

/// Logs each ignored field name the first time any request carries it (vLLM logs them on
/// every request; once per name keeps a busy log readable). Returns the names logged now.
fn log_ignored_fields(names: &[String]) -> Vec<String> {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(mut seen) = SEEN.get_or_init(|| Mutex::new(HashSet::new())).lock() else {
        return Vec::new();
    };
    let new: Vec<String> = names.iter().filter(|n| seen.insert((*n).clone())).cloned().collect();
    if !new.is_empty() && std::env::var_os("OCRVL_QUIET").is_none() {
        eprintln!(
            "serve: request field(s) {} not used by ocrvl: ignored (logged once per field name)",
            new.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        );
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            served_model_names: vec!["ocrvl".into(), "PaddleOCR-VL-0.9B".into()],
            max_images: 2,
            max_model_len: 4096,
            max_temperature: 2.0,
            conversations: false,
        }
    }

    fn plan(body: serde_json::Value) -> Result<ChatPlan, ApiError> {
        plan_chat(parse_chat(body.to_string().as_bytes())?, &limits())
    }

    /// As a model with conversations (ERNIE-4.5-VL) is served.
    fn plan_conversation(messages: serde_json::Value) -> Result<ChatPlan, ApiError> {
        let body = serde_json::json!({"model": "ocrvl", "messages": messages});
        let limits = Limits {
            conversations: true,
            ..limits()
        };
        plan_chat(parse_chat(body.to_string().as_bytes())?, &limits)
    }

    #[test]
    fn conversations_keep_their_turns_where_the_model_has_them() {
        let p = plan_conversation(serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is it?"}, image_part("http://a/1.png")]},
            {"role": "assistant", "content": "A cat.", "reasoning_content": "Fur, whiskers."},
            {"role": "user", "content": [image_part("http://a/2.png"), {"type": "text", "text": "And this?"}]},
        ]))
        .unwrap();
        assert_eq!(p.image_urls, vec!["http://a/1.png", "http://a/2.png"]);
        let turns = p.turns.clone().unwrap();
        let roles: Vec<ChatRole> = turns.iter().map(|t| t.role).collect();
        assert_eq!(
            roles,
            [ChatRole::System, ChatRole::User, ChatRole::Assistant, ChatRole::User]
        );
        assert_eq!(turns[1].parts, [ChatPart::Text("What is it?".into()), ChatPart::Image]);
        assert_eq!(turns[2].reasoning.as_deref(), Some("Fur, whiskers."));
        assert_eq!(turns[3].parts, [ChatPart::Image, ChatPart::Text("And this?".into())]);
        assert!(matches!(p.to_ocr_request(vec![]).prompt, PromptInput::Chat(ref t) if *t == turns));

        for (messages, needle) in [
            (
                serde_json::json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
                "last message",
            ),
            (
                serde_json::json!([{"role": "assistant", "content": [image_part("http://a/1.png")]}, {"role": "user", "content": "x"}]),
                "images go in user messages",
            ),
            (
                serde_json::json!([{"role": "tool", "content": "x"}, {"role": "user", "content": "x"}]),
                "not supported",
            ),
            (
                serde_json::json!([{"role": "user", "content": "x", "reasoning_content": "y"}]),
                "assistant messages",
            ),
            (serde_json::json!([{"role": "user", "content": " "}]), "empty"),
            (serde_json::json!([]), "at least one user message"),
        ] {
            let e = plan_conversation(messages.clone()).unwrap_err();
            assert!(e.message.contains(needle), "{messages}: {}", e.message);
            assert_eq!(e.param.as_deref(), Some("messages"));
        }
        // A single-turn model still refuses a system message.
        let e = plan(serde_json::json!({"model": "ocrvl", "messages": [
            {"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}))
        .unwrap_err();
        assert!(e.message.contains("no system turn"), "{}", e.message);
    }

    fn user(content: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"model": "ocrvl", "messages": [{"role": "user", "content": content}]})
    }

    fn image_part(url: &str) -> serde_json::Value {
        serde_json::json!({"type": "image_url", "image_url": {"url": url}})
    }

    fn with(mut body: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        body[key] = value;
        body
    }

    #[test]
    fn a_typical_request() {
        let body =
            user(serde_json::json!([image_part("data:image/png;base64,AAAA"), {"type": "text", "text": "OCR:"}]));
        let body = with(body, "temperature", 0.0.into());
        let p = plan(with(body, "stop", "END".into())).unwrap();
        assert_eq!(p.model, "ocrvl");
        assert_eq!(p.image_urls, vec!["data:image/png;base64,AAAA".to_string()]);
        assert_eq!(p.text, "OCR:");
        assert_eq!(p.stop, vec!["END".to_string()]);
        assert_eq!(p.sampling.temperature, 0.0);
        assert!(!p.stream && !p.include_usage);
        let req = p.to_ocr_request(vec![vec![1, 2, 3]]);
        assert_eq!(req.images.len(), 1);
    }

    #[test]
    fn defaults_and_aliases() {
        let mut body = user("OCR:".into());
        body.as_object_mut().unwrap().remove("model");
        let p = plan(body).unwrap();
        assert_eq!(p.model, "ocrvl", "no model: the first served name");
        assert_eq!(p.sampling.temperature, 0.0, "greedy by default");
        assert_eq!(p.max_tokens, None);
        let p = plan(with(user("x".into()), "model", "PaddleOCR-VL-0.9B".into())).unwrap();
        assert_eq!(p.model, "PaddleOCR-VL-0.9B");
        let body = with(user("x".into()), "max_tokens", 10.into());
        assert_eq!(
            plan(with(body, "max_completion_tokens", 20.into())).unwrap().max_tokens,
            Some(20)
        );
        assert_eq!(
            plan(with(user("x".into()), "top_k", (-1).into()))
                .unwrap()
                .sampling
                .top_k,
            0
        );
        let bare = serde_json::json!([{"type": "image_url", "image_url": "data:image/png;base64,AA"}]);
        assert_eq!(plan(user(bare)).unwrap().image_urls.len(), 1);
        let s = with(user("x".into()), "stream", true.into());
        let p = plan(with(s, "stream_options", serde_json::json!({"include_usage": true}))).unwrap();
        assert!(p.stream && p.include_usage);
        let body = with(user("x".into()), "stop", serde_json::json!(["a", "b"]));
        assert_eq!(plan(body).unwrap().stop.len(), 2);
    }

    #[test]
    fn top_p_zero_is_greedy() {
        let body = with(with(user("x".into()), "top_p", 0.0.into()), "temperature", 0.8.into());
        let p = plan(body).unwrap();
        assert_eq!((p.sampling.temperature, p.sampling.top_p), (0.0, 1.0));
    }

    #[test]
    fn seeds_reproduce_and_default_seeds_differ() {
        let a = plan(with(user("x".into()), "seed", 7.into())).unwrap();
        let b = plan(with(user("x".into()), "seed", 7.into())).unwrap();
        assert_eq!(a.sampling.seed, b.sampling.seed);
        let c = plan(user("x".into())).unwrap();
        let d = plan(user("x".into())).unwrap();
        assert_ne!(c.sampling.seed, d.sampling.seed);
    }

    #[test]
    fn errors_are_400_with_the_param() {
        let cases: Vec<(serde_json::Value, Option<&str>)> = vec![
            (with(user("x".into()), "n", 2.into()), Some("n")),
            (
                with(user("x".into()), "temperature", (-1.0).into()),
                Some("temperature"),
            ),
            (with(user("x".into()), "top_p", (-0.1).into()), Some("top_p")),
            (with(user("x".into()), "temperature", 2.5.into()), Some("temperature")),
            (
                with(user("x".into()), "repetition_penalty", 1e-38.into()),
                Some("repetition_penalty"),
            ),
            (
                with(user("x".into()), "repetition_penalty", 2.5.into()),
                Some("repetition_penalty"),
            ),
            (with(user("x".into()), "top_p", 1.5.into()), Some("top_p")),
            (with(user("x".into()), "top_k", (-2).into()), Some("top_k")),
            (
                with(user("x".into()), "frequency_penalty", 3.0.into()),
                Some("frequency_penalty"),
            ),
            (
                with(user("x".into()), "presence_penalty", (-2.5).into()),
                Some("presence_penalty"),
            ),
            (
                with(user("x".into()), "repetition_penalty", 0.0.into()),
                Some("repetition_penalty"),
            ),
            (with(user("x".into()), "max_tokens", 0.into()), Some("max_tokens")),
            (with(user("x".into()), "max_tokens", 4096.into()), Some("max_tokens")),
            (with(user("x".into()), "top_logprobs", 3.into()), Some("top_logprobs")),
            (
                with(
                    with(user("x".into()), "logprobs", true.into()),
                    "top_logprobs",
                    21.into(),
                ),
                Some("top_logprobs"),
            ),
            (
                with(user("x".into()), "tools", serde_json::json!([{"type": "function"}])),
                Some("tools"),
            ),
            (
                with(
                    user("x".into()),
                    "response_format",
                    serde_json::json!({"type": "json_object"}),
                ),
                Some("response_format"),
            ),
            (
                user(serde_json::json!([image_part("a"), image_part("b"), image_part("c")])),
                Some("messages"),
            ),
            (user("".into()), Some("messages")),
            (serde_json::json!({"messages": []}), Some("messages")),
            (
                serde_json::json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}]}),
                Some("messages"),
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
                Some("messages"),
            ),
            (
                serde_json::json!({"messages": [{"role": "robot", "content": "x"}]}),
                Some("messages"),
            ),
        ];
        for (body, param) in cases {
            let e = plan(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
        }
    }

    #[test]
    fn bad_json_and_types_are_400() {
        for body in [
            "{",
            "[]",
            r#"{"messages": "x"}"#,
            r#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
            r#"{"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}]}"#,
        ] {
            let e = parse_chat(body.as_bytes())
                .and_then(|r| plan_chat(r, &limits()))
                .unwrap_err();
            assert_eq!(e.status, 400, "{body}");
        }
    }

    #[test]
    fn unknown_model_is_404() {
        let e = plan(with(user("x".into()), "model", "gpt-4o".into())).unwrap_err();
        assert_eq!(e.status, 404);
        assert_eq!(e.code, Some("model_not_found"));
    }

    #[test]
    fn top_p_zero_is_greedy_and_max_completion_tokens_wins() {
        let body = with(with(user("x".into()), "temperature", 1.into()), "top_p", 0.into());
        let p = plan(body).unwrap();
        assert_eq!((p.sampling.temperature, p.sampling.top_p), (0.0, 1.0));
        let body = with(user("x".into()), "max_completion_tokens", 64.into());
        assert_eq!(plan(with(body, "max_tokens", 8.into())).unwrap().max_tokens, Some(64));
    }

    #[test]
    fn chat_template_kwargs_give_the_thinking_switch() {
        let kw = |v: serde_json::Value| plan(with(user("x".into()), "chat_template_kwargs", v));
        for (value, want) in [(true, Some(true)), (false, Some(false))] {
            let p = kw(serde_json::json!({"enable_thinking": value})).unwrap();
            assert_eq!(p.enable_thinking, want);
            assert_eq!(p.to_ocr_request(vec![]).enable_thinking, want);
        }
        assert_eq!(plan(user("x".into())).unwrap().enable_thinking, None);
        assert_eq!(kw(serde_json::json!({})).unwrap().enable_thinking, None);
        // Other keys are ignored and named.
        let p = kw(serde_json::json!({"enable_thinking": true, "custom": 1})).unwrap();
        assert_eq!(p.ignored_fields, vec!["chat_template_kwargs.custom".to_string()]);
        for bad in [serde_json::json!({"enable_thinking": "yes"}), serde_json::json!([true])] {
            let err = kw(bad.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some("chat_template_kwargs"), "{bad}");
        }
    }

    #[test]
    fn pixel_bounds_from_either_form() {
        let kw = |v: serde_json::Value| plan(with(user("x".into()), "mm_processor_kwargs", v));
        let p = kw(serde_json::json!({"min_pixels": 112896, "max_pixels": 1003520})).unwrap();
        assert_eq!(
            p.pixel_bounds,
            Some(PixelBounds {
                min_pixels: Some(112896),
                max_pixels: Some(1003520)
            })
        );
        let req = p.to_ocr_request(vec![]);
        assert_eq!(req.pixel_bounds, p.pixel_bounds);
        let p = kw(serde_json::json!({"size": {"shortest_edge": 3136, "longest_edge": 200704}})).unwrap();
        assert_eq!(
            p.pixel_bounds,
            Some(PixelBounds {
                min_pixels: Some(3136),
                max_pixels: Some(200704)
            })
        );
        assert_eq!(kw(serde_json::json!({})).unwrap().pixel_bounds, None);
        assert_eq!(plan(user("x".into())).unwrap().pixel_bounds, None);
        // max_model_len 4096 in these limits: 3,000,000 / 784 = 3826 tokens fits, 4096 * 784 not.
        assert!(kw(serde_json::json!({"max_pixels": 3_000_000})).is_ok());
        for (bad, needle) in [
            (
                serde_json::json!({"min_pixels": 2_000_000, "max_pixels": 1_003_520}),
                "min_pixels (2000000) is above",
            ),
            (serde_json::json!({"max_pixels": 700}), "max_pixels (700) is below"),
            (serde_json::json!({"max_pixels": 4096 * 784}), "max_pixels"),
            (
                serde_json::json!({"size": {"longest_edge": 100}}),
                "size.longest_edge (100)",
            ),
            (
                serde_json::json!({"min_pixels": -1}),
                "min_pixels must be a whole number",
            ),
            (
                serde_json::json!({"min_pixels": 1.5}),
                "min_pixels must be a whole number",
            ),
            (serde_json::json!({"fps": 2}), "mm_processor_kwargs.fps"),
            (serde_json::json!("x"), "must be an object"),
        ] {
            let e = kw(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), Some("mm_processor_kwargs"));
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn detokenisation_flags() {
        let p = plan(user("x".into())).unwrap();
        assert!(p.skip_special_tokens && p.spaces_between_special_tokens);
        let body = with(user("x".into()), "skip_special_tokens", false.into());
        let p = plan(with(body, "spaces_between_special_tokens", false.into())).unwrap();
        assert!(!p.skip_special_tokens && !p.spaces_between_special_tokens);
        let req = p.to_ocr_request(vec![]);
        assert!(!req.skip_special_tokens && !req.spaces_between_special_tokens);
        assert_eq!(
            plan(with(user("x".into()), "skip_special_tokens", "no".into()))
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_logged_once() {
        let body = with(user("x".into()), "ocrvl_test_unknown_a", 1.into());
        let p = plan(with(body, "ocrvl_test_unknown_b", serde_json::json!({"k": 1}))).unwrap();
        let mut names = p.ignored_fields.clone();
        names.sort();
        assert_eq!(names, vec!["ocrvl_test_unknown_a", "ocrvl_test_unknown_b"]);
        let first = log_ignored_fields(&["ocrvl_test_unknown_c".to_string()]);
        assert_eq!(first, vec!["ocrvl_test_unknown_c"]);
        let again = log_ignored_fields(&["ocrvl_test_unknown_c".to_string()]);
        assert!(again.is_empty(), "logged once per name");
    }
}
