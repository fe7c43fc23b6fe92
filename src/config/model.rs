//! The model's `config.json`: dimensions, RoPE parameters and special token ids.
//!
//! Two layouts exist for PaddleOCR-VL and both are accepted (MODEL_SPEC §2 and §8):
//! - the hub "flat" form: text fields at the top level, `vision_config` nested,
//!   `rope_theta` plus `rope_scaling.mrope_section`;
//! - the transformers v5 nested form: `text_config` and `vision_config` sub-objects, with RoPE in
//!   `rope_parameters {rope_type, rope_theta, mrope_section?}`.
//!
//! The hub remote code has placeholder class defaults (hidden 768, theta 1e4, ...), so in the
//! flat form every dimension must come from the file. The v5 form falls back only where
//! transformers 5.23 itself does (`mrope_section` → [16, 24, 24], text `rope_theta` → 5e5).
//! Unknown fields (ERNIE leftovers, `auto_map`, ...) are ignored.

use std::path::Path;

use serde_json::{json, Value};

use super::fields::Fields;
use super::ConfigError;

/// The one text activation the engine implements (ERNIE-4.5 SwiGLU).
const TEXT_ACT: &str = "silu";
/// The one vision activation the engine implements (SigLIP MLP).
const VISION_ACT: &str = "gelu_pytorch_tanh";
/// transformers 5.23 `PaddleOCRRotaryEmbedding` fallback when `mrope_section` is absent.
const DEFAULT_MROPE_SECTION: [usize; 3] = [16, 24, 24];
/// `PaddleOCRTextConfig.default_theta` in transformers 5.x.
const DEFAULT_TEXT_ROPE_THETA: f64 = 500_000.0;
/// Vision 2D RoPE theta: neither form stores it in the hub file; v5 has it in
/// `vision_config.rope_parameters` (MODEL_SPEC §3.4).
const DEFAULT_VISION_ROPE_THETA: f64 = 10_000.0;
/// The hub projector hard-codes a 2×2 merge (MODEL_SPEC §3.7), and so does our model code.
const SUPPORTED_MERGE: usize = 2;

/// The ERNIE-4.5 language model.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Not hidden/heads in this model: 1024 hidden with 16 heads of 128.
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Frequencies given to the (T, H, W) position streams; sums to head_dim / 2.
    pub mrope_section: [usize; 3],
}

impl TextConfig {
    /// Output width of q_proj (2048 for the real model).
    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Output width of k_proj and of v_proj (256 for the real model).
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// GQA group size: query heads that share one KV head (8 for the real model).
    pub fn queries_per_kv(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// The SigLIP vision tower.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    /// Only used to size the learned position table: side = image_size / patch_size.
    pub image_size: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub layer_norm_eps: f64,
    pub rope_theta: f64,
}

impl VisionConfig {
    /// 72 for the real model (1152 / 16).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Side of the learned position grid: 384 / 14 = 27 (floor, as the hub code does).
    pub fn position_table_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Rows of `position_embedding.weight`: 27 × 27 = 729.
    pub fn num_positions(&self) -> usize {
        self.position_table_side() * self.position_table_side()
    }

    /// Length of one flattened patch, (c, ky, kx): 3 × 14 × 14 = 588.
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }

    /// Width of one merged token entering the projector: 1152 × 2 × 2 = 4608.
    pub fn merged_width(&self) -> usize {
        self.hidden_size * self.spatial_merge_size * self.spatial_merge_size
    }

    /// Frequencies per axis of the 2D RoPE: head_dim / 4 = 18 (MODEL_SPEC §3.4).
    pub fn rope_freqs_per_axis(&self) -> usize {
        self.head_dim() / 4
    }
}

/// Token ids with a meaning to the engine. Use sites read them from here, never as literals,
/// so that the tiny test model (small vocab, different ids) runs through the same code.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecialTokens {
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these; HF allows a single id or a list.
    pub eos_token_ids: Vec<u32>,
    /// `<|IMAGE_PLACEHOLDER|>`: one per merged image token.
    pub image_token_id: u32,
    /// Unused for images; kept so the file round-trips.
    pub video_token_id: Option<u32>,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

impl SpecialTokens {
    pub fn is_eos(&self, token: u32) -> bool {
        self.eos_token_ids.contains(&token)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub tokens: SpecialTokens,
    /// What the file says. The loader does not rely on it: it uses `lm_head.weight` when the
    /// checkpoint has one and `model.embed_tokens.weight` otherwise (MODEL_SPEC §4.4).
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// LayerNorm eps of `mlp_AR.pre_norm`. The hub code hard-codes it (MODEL_SPEC §3.7); it is
    /// not in config.json.
    pub const PROJECTOR_LAYER_NORM_EPS: f64 = 1e-5;

    /// PaddleOCR-VL-0.9B as released (MODEL_SPEC §0 and §2).
    pub fn paddleocr_vl_0_9b() -> Self {
        ModelConfig {
            text: TextConfig {
                vocab_size: 103_424,
                hidden_size: 1024,
                intermediate_size: 3072,
                num_hidden_layers: 18,
                num_attention_heads: 16,
                num_key_value_heads: 2,
                head_dim: 128,
                max_position_embeddings: 131_072,
                rms_norm_eps: 1e-5,
                rope_theta: 500_000.0,
                mrope_section: [16, 24, 24],
            },
            vision: VisionConfig {
                hidden_size: 1152,
                intermediate_size: 4304,
                num_hidden_layers: 27,
                num_attention_heads: 16,
                num_channels: 3,
                image_size: 384,
                patch_size: 14,
                spatial_merge_size: 2,
                layer_norm_eps: 1e-6,
                rope_theta: 10_000.0,
            },
            tokens: SpecialTokens {
                pad_token_id: Some(0),
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
                image_token_id: 100_295,
                video_token_id: Some(101_307),
                vision_start_token_id: 101_305,
                vision_end_token_id: 101_306,
            },
            tie_word_embeddings: false,
        }
    }

    /// A small model for tests that keeps every shape rule of the real one: text heads 16/2 of
    /// 128 (so q_proj is 2048 wide and the M-RoPE sections are the real [16, 24, 24]), vision
    /// heads of 72, the 27×27 position table, 2×2 merge. Only widths, depth and vocab shrink.
    /// The vocab is 1024, so the special ids move to the top of it (1000..=1003).
    pub fn tiny() -> Self {
        let full = Self::paddleocr_vl_0_9b();
        ModelConfig {
            text: TextConfig {
                vocab_size: 1024,
                hidden_size: 256,
                intermediate_size: 512,
                num_hidden_layers: 2,
                ..full.text
            },
            vision: VisionConfig {
                hidden_size: 2 * 72,
                // Like 4304, not a multiple of 64: keeps GEMM tails exercised.
                intermediate_size: 304,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                ..full.vision
            },
            tokens: SpecialTokens {
                pad_token_id: Some(0),
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
                image_token_id: 1000,
                video_token_id: Some(1003),
                vision_start_token_id: 1001,
                vision_end_token_id: 1002,
            },
            tie_word_embeddings: false,
        }
    }

    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = dir.as_ref().join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses either layout; `origin` names the source in error messages.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            origin: origin.to_string(),
            source,
        })?;
        Self::from_json_value(&value, origin)
    }

    pub fn from_json_value(value: &Value, origin: &str) -> Result<Self, ConfigError> {
        // Another family's config gets that family's message, not a PaddleOCR-VL field error.
        if super::detect_model_family(value) == super::ModelFamilyKind::ErnieVl {
            return Err(super::model_family::not_servable(value, origin));
        }
        let top = Fields::root(value, origin)?;
        if let Some(model_type) = top.str_opt("model_type")? {
            if model_type != "paddleocr_vl" {
                return Err(top.bad_value("model_type", model_type, "\"paddleocr_vl\""));
            }
        }
        // transformers v5 nests the text fields; the hub file keeps them at the top level.
        let nested_text = top.obj_opt("text_config")?;
        let nested = nested_text.is_some();
        let text_fields = nested_text.unwrap_or_else(|| top.clone());
        let vision_fields = top.obj_req("vision_config")?;

        let text = parse_text(&text_fields, nested)?;
        let vision = parse_vision(&vision_fields)?;

        // v5 moves pad/bos/eos into text_config; the hub file has them at the top.
        let pad = top
            .token_opt("pad_token_id")?
            .or(text_fields.token_opt("pad_token_id")?);
        let bos = top
            .token_opt("bos_token_id")?
            .or(text_fields.token_opt("bos_token_id")?);
        let eos = match top.token_list_opt("eos_token_id")? {
            Some(ids) => ids,
            None => text_fields
                .token_list_opt("eos_token_id")?
                .ok_or_else(|| top.missing("eos_token_id"))?,
        };
        let tokens = SpecialTokens {
            pad_token_id: pad,
            bos_token_id: bos,
            eos_token_ids: eos,
            image_token_id: top.token_req("image_token_id")?,
            video_token_id: top.token_opt("video_token_id")?,
            vision_start_token_id: top.token_req("vision_start_token_id")?,
            vision_end_token_id: top.token_req("vision_end_token_id")?,
        };
        // Absent: each form's own default (hub false, v5 class default true).
        let tie_word_embeddings = match top.bool_opt("tie_word_embeddings")? {
            Some(tie) => tie,
            None => text_fields.bool_opt("tie_word_embeddings")?.unwrap_or(nested),
        };

        let cfg = ModelConfig {
            text,
            vision,
            tokens,
            tie_word_embeddings,
        };
        cfg.validate_in(origin)?;
        Ok(cfg)
    }

    /// Checks the rules the kernels and model code rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_in("model config")
    }

    fn validate_in(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            reason,
        };
        let t = &self.text;
        let v = &self.vision;
        let positive = [
            ("vocab_size", t.vocab_size),
            ("hidden_size", t.hidden_size),
            ("intermediate_size", t.intermediate_size),
            ("num_hidden_layers", t.num_hidden_layers),
            ("num_attention_heads", t.num_attention_heads),
            ("num_key_value_heads", t.num_key_value_heads),
            ("head_dim", t.head_dim),
            ("max_position_embeddings", t.max_position_embeddings),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.patch_size", v.patch_size),
        ];
        super::fields::check_shared_rules(
            origin,
            &positive,
            &[
                ("rms_norm_eps", t.rms_norm_eps),
                ("rope_theta", t.rope_theta),
                ("vision_config.layer_norm_eps", v.layer_norm_eps),
                ("vision_config.rope_theta", v.rope_theta),
            ],
            (t.num_attention_heads, t.num_key_value_heads),
        )?;
        if t.head_dim % 2 != 0 {
            return Err(invalid(
                "head_dim",
                format!("must be even (neox RoPE), found {}", t.head_dim),
            ));
        }
        let mrope_sum: usize = t.mrope_section.iter().sum();
        if mrope_sum != t.head_dim / 2 {
            return Err(invalid(
                "mrope_section",
                format!(
                    "{:?} sums to {mrope_sum} but must sum to head_dim / 2 = {}",
                    t.mrope_section,
                    t.head_dim / 2
                ),
            ));
        }
        if v.hidden_size % v.num_attention_heads != 0 {
            return Err(invalid(
                "vision_config.hidden_size",
                format!(
                    "({}) must be a multiple of vision_config.num_attention_heads ({})",
                    v.hidden_size, v.num_attention_heads
                ),
            ));
        }
        // The 2D RoPE gives head_dim/2 dims to each axis and rotates them in pairs.
        if v.head_dim() % 4 != 0 {
            return Err(invalid(
                "vision_config.hidden_size",
                format!(
                    "gives a vision head_dim of {} (hidden_size / num_attention_heads), which must \
                     be a multiple of 4 for the 2D RoPE",
                    v.head_dim()
                ),
            ));
        }
        if v.position_table_side() == 0 {
            return Err(invalid(
                "vision_config.image_size",
                format!("({}) must be at least patch_size ({})", v.image_size, v.patch_size),
            ));
        }
        if v.spatial_merge_size != SUPPORTED_MERGE {
            return Err(ConfigError::FieldValue {
                origin: origin.to_string(),
                field: "vision_config.spatial_merge_size".into(),
                value: v.spatial_merge_size.to_string(),
                valid: SUPPORTED_MERGE.to_string(),
            });
        }

        let tok = &self.tokens;
        if tok.eos_token_ids.is_empty() {
            return Err(invalid("eos_token_id", "must name at least one token".into()));
        }
        let mut ids = vec![
            ("image_token_id", tok.image_token_id),
            ("vision_start_token_id", tok.vision_start_token_id),
            ("vision_end_token_id", tok.vision_end_token_id),
        ];
        ids.extend(tok.pad_token_id.map(|id| ("pad_token_id", id)));
        ids.extend(tok.bos_token_id.map(|id| ("bos_token_id", id)));
        ids.extend(tok.video_token_id.map(|id| ("video_token_id", id)));
        ids.extend(tok.eos_token_ids.iter().map(|&id| ("eos_token_id", id)));
        for (field, id) in ids {
            if id as usize >= t.vocab_size {
                return Err(invalid(
                    field,
                    format!("({id}) must be below vocab_size ({})", t.vocab_size),
                ));
            }
        }
        if tok.image_token_id == tok.vision_start_token_id || tok.image_token_id == tok.vision_end_token_id {
            return Err(invalid(
                "image_token_id",
                format!("({}) must differ from the vision start/end ids", tok.image_token_id),
            ));
        }
        Ok(())
    }

    /// The hub "flat" `config.json` (MODEL_SPEC §2), as written for synthetic checkpoints,
    /// plus a `text_config` holding the same text fields in the transformers 5 spelling.
    ///
    /// Why both: transformers 5 builds its text sub-config from the flat keys it recognises,
    /// and `tie_word_embeddings` is not among them (the top-level config consumes it), so the
    /// text config keeps its class default, true, and the model ties `lm_head` to the
    /// embedding: a flat `false` reads as true, and vLLM then drops `lm_head.weight`. With
    /// `text_config` present, transformers takes the text fields (the tie included) from it.
    /// The flat keys stay for loaders that read them (the hub's remote code, PaddleX, older
    /// ocrvl). This reader takes `text_config` when present and the top-level tie first, so
    /// both halves say the same thing by construction.
    pub fn to_hub_json(&self) -> String {
        let t = &self.text;
        let v = &self.vision;
        let tok = &self.tokens;
        let eos = match tok.eos_token_ids.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let mut vision = json!({
            "architectures": ["PaddleOCRVisionModel"],
            "model_type": "paddleocr_vl",
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads,
            "num_channels": v.num_channels,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "hidden_act": VISION_ACT,
            "layer_norm_eps": v.layer_norm_eps,
            "attention_dropout": 0.0,
            "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
        });
        // The hub file has no vision theta; write one only when it is not the implied 1e4,
        // in the v5 spelling, so the file still round-trips.
        if v.rope_theta != DEFAULT_VISION_ROPE_THETA {
            vision["rope_parameters"] = json!({"rope_type": "axial", "rope_theta": v.rope_theta});
        }
        // The text fields, written flat at the top and again in `text_config` (see above).
        let text_fields = json!({
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "hidden_act": TEXT_ACT,
            "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps,
            "use_bias": false,
            "tie_word_embeddings": self.tie_word_embeddings,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": eos,
        });
        let mut text_config = text_fields.clone();
        text_config["rope_parameters"] = text_rope_parameters(t);
        let mut config = text_fields;
        for (key, value) in [
            ("architectures", json!(["PaddleOCRVLForConditionalGeneration"])),
            ("model_type", json!("paddleocr_vl")),
            ("rope_theta", json!(t.rope_theta)),
            (
                "rope_scaling",
                json!({"mrope_section": t.mrope_section, "rope_type": "default", "type": "default"}),
            ),
            ("image_token_id", json!(tok.image_token_id)),
            ("video_token_id", json!(tok.video_token_id)),
            ("vision_start_token_id", json!(tok.vision_start_token_id)),
            ("vision_end_token_id", json!(tok.vision_end_token_id)),
            ("torch_dtype", json!("bfloat16")),
            ("text_config", text_config),
            ("vision_config", vision),
        ] {
            config[key] = value;
        }
        serde_json::to_string_pretty(&config).expect("a json! value always serializes")
    }
}

/// `text_config.rope_parameters`. `mrope_section` only when it is not the [16, 24, 24] that
/// transformers 5 falls back to: its rope validation warns about the key for `default`.
fn text_rope_parameters(t: &TextConfig) -> Value {
    let mut p = json!({"rope_type": "default", "rope_theta": t.rope_theta});
    if t.mrope_section != DEFAULT_MROPE_SECTION {
        p["mrope_section"] = json!(t.mrope_section);
    }
    p
}

fn parse_text(t: &Fields, nested: bool) -> Result<TextConfig, ConfigError> {
    if let Some(act) = t.str_opt("hidden_act")? {
        if act != TEXT_ACT {
            return Err(t.bad_value("hidden_act", act, "\"silu\""));
        }
    }
    if t.bool_opt("use_bias")? == Some(true) {
        return Err(t.bad_value("use_bias", "true", "false"));
    }
    let hidden_size = t.usize_req("hidden_size")?;
    let num_attention_heads = t.usize_req("num_attention_heads")?;
    // HF rules: missing kv heads means MHA; missing head_dim means hidden / heads.
    let num_key_value_heads = t.usize_opt("num_key_value_heads")?.unwrap_or(num_attention_heads);
    let head_dim = match t.usize_opt("head_dim")? {
        Some(d) => d,
        None if num_attention_heads > 0 => hidden_size / num_attention_heads,
        None => 0, // validate() reports the zero heads
    };
    let (rope_theta, mrope_section) = parse_text_rope(t, nested)?;
    Ok(TextConfig {
        vocab_size: t.usize_req("vocab_size")?,
        hidden_size,
        intermediate_size: t.usize_req("intermediate_size")?,
        num_hidden_layers: t.usize_req("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        max_position_embeddings: t.usize_req("max_position_embeddings")?,
        rms_norm_eps: t.f64_req("rms_norm_eps")?,
        rope_theta,
        mrope_section,
    })
}

/// v5 `rope_parameters` wins over the flat `rope_theta` / `rope_scaling` pair.
fn parse_text_rope(t: &Fields, nested: bool) -> Result<(f64, [usize; 3]), ConfigError> {
    let params = t.obj_opt("rope_parameters")?;
    let scaling = t.obj_opt("rope_scaling")?;
    for block in params.iter().chain(scaling.iter()) {
        // HF writes the type under both names; "mrope" is the Qwen2-VL spelling of "default".
        for key in ["rope_type", "type"] {
            if let Some(kind) = block.str_opt(key)? {
                if kind != "default" && kind != "mrope" {
                    return Err(block.bad_value(key, kind, "\"default\", \"mrope\""));
                }
            }
        }
    }
    let mut theta = None;
    if let Some(p) = &params {
        theta = p.f64_opt("rope_theta")?;
    }
    if theta.is_none() {
        theta = t.f64_opt("rope_theta")?;
    }
    let theta = match theta {
        Some(theta) => theta,
        None if nested => DEFAULT_TEXT_ROPE_THETA,
        // The hub class default (1e4) is a placeholder: the flat file must say.
        None => return Err(t.missing("rope_theta")),
    };

    let mut section = None;
    for block in params.iter().chain(scaling.iter()) {
        if section.is_none() {
            section = block.mrope_section_opt()?;
        }
    }
    let section = match section {
        Some(s) => s,
        None if nested => DEFAULT_MROPE_SECTION,
        None => return Err(t.missing("rope_scaling.mrope_section")),
    };
    Ok((theta, section))
}

fn parse_vision(v: &Fields) -> Result<VisionConfig, ConfigError> {
    if let Some(act) = v.str_opt("hidden_act")? {
        if act != VISION_ACT {
            return Err(v.bad_value("hidden_act", act, "\"gelu_pytorch_tanh\""));
        }
    }
    let rope_theta = match v.obj_opt("rope_parameters")? {
        Some(p) => p.f64_opt("rope_theta")?,
        None => None,
    };
    let rope_theta = match rope_theta {
        Some(theta) => theta,
        None => v.f64_opt("rope_theta")?.unwrap_or(DEFAULT_VISION_ROPE_THETA),
    };
    Ok(VisionConfig {
        hidden_size: v.usize_req("hidden_size")?,
        intermediate_size: v.usize_req("intermediate_size")?,
        num_hidden_layers: v.usize_req("num_hidden_layers")?,
        num_attention_heads: v.usize_req("num_attention_heads")?,
        num_channels: v.usize_opt("num_channels")?.unwrap_or(3),
        image_size: v.usize_req("image_size")?,
        patch_size: v.usize_req("patch_size")?,
        spatial_merge_size: v.usize_opt("spatial_merge_size")?.unwrap_or(SUPPORTED_MERGE),
        layer_norm_eps: v.f64_req("layer_norm_eps")?,
        rope_theta,
    })
}
