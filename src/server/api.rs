//! The OpenAI chat-completions wire types this server reads and writes (the subset that
//! matters for an OCR model), plus the vLLM extensions users of vLLM send (`top_k`,
//! `repetition_penalty`, `stop_token_ids`, `ignore_eos`).
//!
//! Requests are parsed strictly where a wrong type would silently change the result (numbers,
//! content parts) and leniently elsewhere: unknown fields are ignored, as vLLM does (OpenAI
//! clients add new ones over time) and named once in the log, except the few whose meaning
//! this server cannot honour (`tools`, `response_format` other than text, `logit_bias`), which
//! are rejected in validation rather than ignored. From vLLM also: `mm_processor_kwargs`
//! (per-request resize bounds, as PaddleOCR's pipeline sends them), `skip_special_tokens` and
//! `spaces_between_special_tokens`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ChatCompletionRequest {
    /// Optional here (the first served name when absent), as in vLLM.
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// vLLM extension; -1 and 0 mean off.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; both are accepted, the
    /// newer one wins.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub stop: Option<StopSpec>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    // Read only to reject them (see the module doc).
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub logit_bias: Option<Value>,
    /// vLLM: the processor's arguments for this request, here `min_pixels` / `max_pixels`
    /// (or `size: {shortest_edge, longest_edge}`), checked in validation.
    #[serde(default)]
    pub mm_processor_kwargs: Option<Value>,
    #[serde(default)]
    pub skip_special_tokens: Option<bool>,
    #[serde(default)]
    pub spaces_between_special_tokens: Option<bool>,
    /// vLLM's and FastDeploy's variables for the chat template; `enable_thinking` (a bool) is
    /// read, ERNIE-4.5-VL's thinking switch.
    #[serde(default)]
    pub chat_template_kwargs: Option<Value>,
    /// Every field not named above: ignored, and named once in the log.
    #[serde(flatten)]
    pub unknown: serde_json::Map<String, Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// An assistant turn's thinking, as a previous answer returned it (models with
    /// conversations and thinking: ERNIE-4.5-VL).
    #[serde(default)]
    pub reasoning_content: Option<String>,
}

/// A message's content: a plain string, or a list of typed parts.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

/// `{"url": "...", "detail": "..."}`, or the bare string vLLM also accepts.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ImageUrl {
    Object {
        url: String,
        /// OpenAI's low/high/auto; the model has one resolution policy, so it is ignored.
        #[serde(default)]
        #[allow(dead_code)]
        detail: Option<String>,
    },
    Bare(String),
}

impl ImageUrl {
    pub fn url(&self) -> &str {
        match self {
            ImageUrl::Object { url, .. } | ImageUrl::Bare(url) => url,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

// ---------------------------------------------------------------------------------------
// Responses.

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
    /// The thinking text, with `--reasoning-parser` (FastDeploy's and vLLM's field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// `logprobs` of a choice or a chunk: one entry per generated token.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// Null on every chunk but the one carrying `finish_reason` and the optional trailing
    /// usage chunk (see `chat.rs`).
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// vLLM reports it; clients use it to size prompts.
    pub max_model_len: usize,
}
