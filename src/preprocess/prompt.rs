//! Prompt construction (MODEL_SPEC §3.8, §6): the chat template, the task prompts, the
//! tokenizer, and the expansion of each image's placeholder to one token per merged patch.
//!
//! The template is rendered with one `<|IMAGE_PLACEHOLDER|>` per image, tokenised, and then each
//! placeholder *id* is repeated `(h/2)·(w/2)` times. This gives the same ids as the hub
//! processor's expand-the-text-then-tokenise: the placeholder is an added special token, which
//! the tokenizer splits out before normalising or pre-tokenising the text around it, so the
//! text segments are tokenised identically either way. It also avoids tokenising thousands of
//! placeholder strings per page.
//!
//! Special ids come from `config.json` ([`PromptTokens`]), never from literals here; at load
//! time the tokenizer must agree with them.

use std::ops::Range;
use std::path::Path;

use minijinja::Environment;
use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use super::image::ImageGrid;
use super::processor_config::read_optional;
use super::sentencepiece;
use super::{PreprocessError, Result};
use crate::config::{ErnieVlConfig, ModelConfig};
use crate::model::ernie_vl::synthetic::CHAT_TEMPLATE as ERNIE_CHAT_TEMPLATE;

/// The chat template of MODEL_SPEC §6.3 (the current hub form, generation prompt
/// `"Assistant:\n"`), used when the model directory carries none. The spec elides the
/// assistant and system bodies; they are written out here the way the template's structure
/// implies (text items, then `eos_token` after an assistant turn; a newline after a system turn).
pub const DEFAULT_CHAT_TEMPLATE: &str = r#"{%- if not add_generation_prompt is defined -%}
{%- set add_generation_prompt = true -%}
{%- endif -%}
{%- if not cls_token is defined -%}
{%- set cls_token = "<|begin_of_sentence|>" -%}
{%- endif -%}
{%- if not eos_token is defined -%}
{%- set eos_token = "</s>" -%}
{%- endif -%}
{{- cls_token -}}
{%- for message in messages -%}
{%- if message["role"] == "user" -%}
{{- "User: " -}}
{%- for content in message["content"] -%}
{%- if content["type"] == "image" -%}
{{ "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>" }}
{%- endif -%}
{%- endfor -%}
{%- for content in message["content"] -%}
{%- if content["type"] == "text" -%}
{{ content["text"] }}
{%- endif -%}
{%- endfor -%}
{{ "\n" -}}
{%- elif message["role"] == "assistant" -%}
{{- "Assistant:\n" -}}
{%- for content in message["content"] -%}
{%- if content["type"] == "text" -%}
{{ content["text"] }}
{%- endif -%}
{%- endfor -%}
{{ eos_token -}}
{%- elif message["role"] == "system" -%}
{%- for content in message["content"] -%}
{%- if content["type"] == "text" -%}
{{ content["text"] }}
{%- endif -%}
{%- endfor -%}
{{ "\n" -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- "Assistant:\n" -}}
{%- endif -%}
"#;

/// Name of the template inside the minijinja environment.
const TEMPLATE_NAME: &str = "chat";

/// Special-token strings transformers passes to every chat template (`special_tokens_map`).
const TEMPLATE_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// The tasks of PaddleOCR-VL (MODEL_SPEC §6.2): the four of 0.9B v1, and `Spotting` and
/// `Seal` added by PaddleOCR-VL-1.5 (also in 1.6). A v1 checkpoint was not trained on the last
/// two; nothing stops asking it, as nothing stops the official pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    Ocr,
    Table,
    Formula,
    Chart,
    /// Text lines, each followed by its quadrilateral as 8 `<|LOC_n|>` tokens
    /// ([`crate::postprocess::spotting`]).
    Spotting,
    /// Text of seals and stamps.
    Seal,
}

impl Task {
    pub const ALL: [Task; 6] = [
        Task::Ocr,
        Task::Table,
        Task::Formula,
        Task::Chart,
        Task::Spotting,
        Task::Seal,
    ];

    /// The exact text the model was trained with.
    pub fn prompt(self) -> &'static str {
        match self {
            Task::Ocr => "OCR:",
            Task::Table => "Table Recognition:",
            Task::Formula => "Formula Recognition:",
            Task::Chart => "Chart Recognition:",
            Task::Spotting => "Spotting:",
            Task::Seal => "Seal Recognition:",
        }
    }

    /// The short name [`Task::from_name`] reads: `ocr`, `table`, `formula`, `chart`,
    /// `spotting`, `seal`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Ocr => "ocr",
            Task::Table => "table",
            Task::Formula => "formula",
            Task::Chart => "chart",
            Task::Spotting => "spotting",
            Task::Seal => "seal",
        }
    }

    /// Short names as PaddleX and candle spell them (any case), [`Task::name`].
    pub fn from_name(name: &str) -> Option<Task> {
        let name = name.to_ascii_lowercase();
        Task::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The short names, comma-separated, for error messages and usage text.
    pub fn names() -> String {
        Task::ALL.map(Task::name).join(", ")
    }
}

/// A tokenised prompt with its images' placeholders expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// Per image, in order, the range of `ids` holding its placeholder tokens (one per merged
    /// token, raster order): where the projector's output rows are scattered.
    pub image_spans: Vec<Range<usize>>,
}

/// What prompt building needs of a model's config: the image placeholder and the image's
/// start and end markers (each must be an added token of the tokenizer, with the config's
/// field name for messages), the merge that sets placeholders per image, and the template used
/// when the directory ships none.
#[derive(Clone, Debug)]
pub struct PromptTokens {
    /// `(config field, id)` of the placeholder, the start marker and the end marker.
    pub image: (&'static str, u32),
    pub start: (&'static str, u32),
    pub end: (&'static str, u32),
    pub merge: usize,
    pub default_template: &'static str,
    /// Where the default template comes from, for messages.
    pub default_template_origin: &'static str,
}

impl From<&ModelConfig> for PromptTokens {
    fn from(model: &ModelConfig) -> Self {
        let t = &model.tokens;
        PromptTokens {
            image: ("image_token_id", t.image_token_id),
            start: ("vision_start_token_id", t.vision_start_token_id),
            end: ("vision_end_token_id", t.vision_end_token_id),
            merge: model.vision.spatial_merge_size,
            default_template: DEFAULT_CHAT_TEMPLATE,
            default_template_origin: "built-in (MODEL_SPEC §6.3)",
        }
    }
}

impl From<&ErnieVlConfig> for PromptTokens {
    fn from(model: &ErnieVlConfig) -> Self {
        let t = &model.tokens;
        PromptTokens {
            image: ("im_patch_id", t.image_token_id),
            start: ("image_start_token_id", t.image_start_token_id),
            end: ("image_end_token_id", t.image_end_token_id),
            merge: model.vision.spatial_merge_size,
            default_template: ERNIE_CHAT_TEMPLATE,
            default_template_origin: "built-in (ERNIE_4_5_VL_SPEC §6.3)",
        }
    }
}

/// Renders and tokenises prompts for one model directory.
pub struct PromptBuilder {
    tokenizer: Tokenizer,
    env: Environment<'static>,
    /// Where the template came from, for error messages.
    template_origin: String,
    /// Special-token strings from `tokenizer_config.json`, passed to the template like HF does.
    template_tokens: Map<String, Value>,
    image_token_id: u32,
    merge: usize,
    tokenizer_origin: String,
}

impl PromptBuilder {
    /// Loads `tokenizer.json` (else a SentencePiece `tokenizer.model`, read by
    /// [`super::sentencepiece`]), and the chat template from `chat_template.jinja`, else the
    /// `chat_template` string of `tokenizer_config.json`, else [`DEFAULT_CHAT_TEMPLATE`].
    pub fn from_dir(dir: impl AsRef<Path>, model: impl Into<PromptTokens>) -> Result<Self> {
        let dir = dir.as_ref();
        let tokens: PromptTokens = model.into();

        let tok_config = read_optional(&dir.join("tokenizer_config.json"))?;
        let tok_config: Option<Value> = match tok_config {
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| PreprocessError::Tokenizer {
                origin: dir.join("tokenizer_config.json").display().to_string(),
                message: format!("not valid JSON: {e}"),
            })?),
            None => None,
        };

        let tok_path = dir.join("tokenizer.json");
        let sp_path = dir.join(sentencepiece::MODEL_FILE);
        let (tokenizer, tokenizer_origin) = if !tok_path.exists() && sp_path.exists() {
            // ERNIE-4.5 hub checkpoints ship only the SentencePiece model.
            let tokenizer = sentencepiece::tokenizer_from_dir(dir, tok_config.as_ref())?;
            (tokenizer, sp_path.display().to_string())
        } else {
            let origin = tok_path.display().to_string();
            let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| PreprocessError::Tokenizer {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
            (tokenizer, origin)
        };

        let jinja_path = dir.join("chat_template.jinja");
        let (template, template_origin) = match read_optional(&jinja_path)? {
            Some(text) => (text, jinja_path.display().to_string()),
            None => match tok_config
                .as_ref()
                .and_then(|c| c.get("chat_template"))
                .and_then(Value::as_str)
            {
                Some(text) => (
                    text.to_string(),
                    format!("{}: chat_template", dir.join("tokenizer_config.json").display()),
                ),
                None => (
                    tokens.default_template.to_string(),
                    tokens.default_template_origin.into(),
                ),
            },
        };

        let mut builder = Self::with_origins(tokenizer, tokenizer_origin, template, template_origin, tokens)?;
        if let Some(config) = &tok_config {
            builder.template_tokens = special_token_strings(config);
        }
        Ok(builder)
    }

    /// From an already loaded tokenizer; `chat_template` `None` uses [`DEFAULT_CHAT_TEMPLATE`].
    pub fn new(tokenizer: Tokenizer, chat_template: Option<String>, model: impl Into<PromptTokens>) -> Result<Self> {
        let tokens: PromptTokens = model.into();
        let (template, origin) = match chat_template {
            Some(t) => (t, "given template".to_string()),
            None => (
                tokens.default_template.to_string(),
                tokens.default_template_origin.to_string(),
            ),
        };
        Self::with_origins(tokenizer, "given tokenizer".into(), template, origin, tokens)
    }

    /// Replaces the chat template with the one in `path` (`--chat-template`, as vLLM and
    /// GPUStack pass it); the tokenizer and its special-token strings stay.
    pub fn with_chat_template_file(self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| PreprocessError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.with_chat_template_text(text, path.display().to_string())
    }

    /// Replaces the chat template with `text` (vLLM also takes the template itself in
    /// `--chat-template`); `origin` names it in errors.
    pub fn with_chat_template_text(mut self, text: String, origin: String) -> Result<Self> {
        self.env
            .add_template_owned(TEMPLATE_NAME, text)
            .map_err(|e| PreprocessError::ChatTemplate {
                origin: origin.clone(),
                message: format!("{e:#}"),
            })?;
        self.template_origin = origin;
        Ok(self)
    }

    fn with_origins(
        tokenizer: Tokenizer,
        tokenizer_origin: String,
        template: String,
        template_origin: String,
        tokens: PromptTokens,
    ) -> Result<Self> {
        for (role, id) in [tokens.image, tokens.start, tokens.end] {
            check_special_token(&tokenizer, &tokenizer_origin, role, id)?;
        }

        // transformers renders chat templates with trim_blocks and lstrip_blocks on; without
        // them, templates written for HF gain stray newlines.
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, template)
            .map_err(|e| PreprocessError::ChatTemplate {
                origin: template_origin.clone(),
                message: format!("{e:#}"),
            })?;
        Ok(PromptBuilder {
            tokenizer,
            env,
            template_origin,
            template_tokens: Map::new(),
            image_token_id: tokens.image.1,
            merge: tokens.merge,
            tokenizer_origin,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The prompt text for one user turn holding `num_images` images (each rendered as a
    /// single placeholder) and `text`, with the generation prompt appended. Images come before
    /// the text, as in the hub processor's messages.
    pub fn render(&self, num_images: usize, text: &str) -> Result<String> {
        self.render_with(num_images, text, &Map::new())
    }

    /// [`Self::render`] with more template variables (`chat_template_kwargs`, such as
    /// ERNIE-4.5-VL's `enable_thinking`); they cannot replace the messages or the generation
    /// prompt switch.
    pub fn render_with(&self, num_images: usize, text: &str, vars: &Map<String, Value>) -> Result<String> {
        self.render_messages(single_turn(num_images, text), vars)
    }

    /// Renders a whole conversation (`messages` as the template takes them, images as
    /// `{"type": "image"}` parts) with the generation prompt appended.
    pub fn render_messages(&self, messages: Value, vars: &Map<String, Value>) -> Result<String> {
        let mut ctx = self.template_tokens.clone();
        ctx.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        ctx.insert("messages".into(), messages);
        ctx.insert("add_generation_prompt".into(), Value::Bool(true));
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| self.template_error(e))?;
        template.render(Value::Object(ctx)).map_err(|e| self.template_error(e))
    }

    /// Renders, tokenises and expands the prompt for `grids` (one per image, in order) and
    /// `text`.
    pub fn build(&self, grids: &[ImageGrid], text: &str) -> Result<Prompt> {
        self.build_with(grids, text, &Map::new())
    }

    /// [`Self::build`] with more template variables ([`Self::render_with`]).
    pub fn build_with(&self, grids: &[ImageGrid], text: &str, vars: &Map<String, Value>) -> Result<Prompt> {
        self.build_messages(grids, single_turn(grids.len(), text), vars)
    }

    /// [`Self::build`] for a conversation ([`Self::render_messages`]); `grids` are its images
    /// in the order their parts appear.
    pub fn build_messages(&self, grids: &[ImageGrid], messages: Value, vars: &Map<String, Value>) -> Result<Prompt> {
        for (i, grid) in grids.iter().enumerate() {
            grid.check(i, self.merge)?;
        }
        let rendered = self.render_messages(messages, vars)?;
        self.tokenize_expanded(&rendered, grids)
    }

    /// Tokenises a rendered prompt and expands its image placeholders for `grids`.
    fn tokenize_expanded(&self, rendered: &str, grids: &[ImageGrid]) -> Result<Prompt> {
        // No post-processor specials: the template already inserts the first token, and the
        // hub tokenizer has add_bos_token = false.
        let encoding = self
            .tokenizer
            .encode(rendered, false)
            .map_err(|e| PreprocessError::Tokenizer {
                origin: self.tokenizer_origin.clone(),
                message: format!("cannot encode the prompt: {e}"),
            })?;
        let image_id = self.image_token_id;
        let short_ids = encoding.get_ids();
        let found = short_ids.iter().filter(|&&id| id == image_id).count();
        if found != grids.len() {
            return Err(PreprocessError::PlaceholderCount {
                expected: grids.len(),
                found,
                token_id: image_id,
            });
        }

        let expanded_len =
            short_ids.len() - grids.len() + grids.iter().map(|g| g.num_merged_tokens(self.merge)).sum::<usize>();
        let mut ids = Vec::with_capacity(expanded_len);
        let mut image_spans = Vec::with_capacity(grids.len());
        let mut next = grids.iter();
        for &id in short_ids {
            if id == image_id {
                let grid = next.next().expect("placeholders counted above");
                let n = grid.num_merged_tokens(self.merge);
                image_spans.push(ids.len()..ids.len() + n);
                ids.resize(ids.len() + n, image_id);
            } else {
                ids.push(id);
            }
        }
        Ok(Prompt { ids, image_spans })
    }

    /// [`Self::build`] with one of the task prompts as the text.
    pub fn build_task(&self, grids: &[ImageGrid], task: Task) -> Result<Prompt> {
        self.build(grids, task.prompt())
    }

    /// Generated ids back to text. The reference decodes with `skip_special_tokens=True`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| PreprocessError::Tokenizer {
                origin: self.tokenizer_origin.clone(),
                message: format!("cannot decode: {e}"),
            })
    }

    fn template_error(&self, e: minijinja::Error) -> PreprocessError {
        PreprocessError::ChatTemplate {
            origin: self.template_origin.clone(),
            message: format!("{e:#}"),
        }
    }
}

/// One user message: `num_images` images, then `text`.
fn single_turn(num_images: usize, text: &str) -> Value {
    let mut content: Vec<Value> = (0..num_images).map(|_| json!({"type": "image"})).collect();
    content.push(json!({"type": "text", "text": text}));
    json!([{"role": "user", "content": content}])
}

/// The config's id must be an added token of the tokenizer: only those are split out of the
/// rendered text whole, so only they can come out of the template's marker strings.
fn check_special_token(tokenizer: &Tokenizer, origin: &str, role: &'static str, id: u32) -> Result<()> {
    let mismatch = |found: String| PreprocessError::SpecialTokenMismatch {
        origin: origin.to_string(),
        role,
        config_id: id,
        found,
    };
    let Some(token) = tokenizer.id_to_token(id) else {
        return Err(mismatch("the tokenizer has no token with that id".into()));
    };
    if !tokenizer
        .get_added_vocabulary()
        .get_added_tokens_decoder()
        .contains_key(&id)
    {
        return Err(mismatch(format!(
            "in the tokenizer it is the ordinary token {token:?}, not an added token"
        )));
    }
    match tokenizer.token_to_id(&token) {
        Some(back) if back == id => Ok(()),
        Some(back) => Err(mismatch(format!("the tokenizer maps {token:?} to {back}"))),
        None => Err(mismatch(format!("the tokenizer cannot encode {token:?}"))),
    }
}

/// `bos_token`, `eos_token`, ... from `tokenizer_config.json`, as plain strings or as
/// `{"content": ...}` added-token objects.
fn special_token_strings(config: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for key in TEMPLATE_TOKEN_KEYS {
        let text = match config.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        if let Some(text) = text {
            out.insert(key.to_string(), Value::String(text));
        }
    }
    out
}
