//! Reading an ERNIE-4.5-VL `config.json` in either layout (spec §2.1 flat, §2.2 native).
//!
//! Defaults are those of the readers the spec names, and only where the file may leave a field
//! out: start/end token ids (transformers' class defaults), `freq_allocation` 20, shared
//! experts 0 (transformers: `None` → 0), `moe_layer_interval` 1, `tie_word_embeddings` true
//! (the class default), the vision LayerNorm eps 1e-6 (spec §13.2). Every dimension must come
//! from the file.

use std::path::Path;

use serde_json::Value;

use super::{ErnieConfigLayout, ErnieMoeConfig, ErnieTextConfig, ErnieTokens, ErnieVisionConfig, ErnieVlConfig};
use crate::config::fields::Fields;
use crate::config::ConfigError;

/// The text activation of every ERNIE-4.5 checkpoint (SwiGLU).
pub(super) const TEXT_ACT: &str = "silu";
/// The ViT MLP activation.
pub(super) const VISION_ACT: &str = "quick_gelu";
/// transformers' converter hard-codes this theta whatever the flat file says (spec §2.1).
const DEFAULT_ROPE_THETA: f64 = 500_000.0;
/// Rotary pairs on the time axis when the flat file has no `freq_allocation` (vLLM, spec §2.1).
const DEFAULT_FREQ_ALLOCATION: usize = 20;
/// `moe_norm_min` of transformers' text config.
const DEFAULT_NORM_MIN: f64 = 1e-12;
/// Vision LayerNorm eps (spec §3.4, §13.2); the flat file does not carry it.
const DEFAULT_VISION_EPS: f64 = 1e-6;
const DEFAULT_VISION_THETA: f64 = 10_000.0;
/// transformers' `Ernie4_5_VLMoeConfig` defaults (spec §2.2).
const DEFAULT_START_END_IDS: [u32; 4] = [101_304, 101_305, 101_306, 101_307];

impl ErnieVlConfig {
    /// Reads and validates `dir/config.json`; the EOS ids of `dir/generation_config.json`, when
    /// it exists, follow the config's own (FastDeploy stops on the generation config's, spec
    /// §6.2; the config's first stays the engine's end-of-sequence token).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = dir.as_ref().join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let mut cfg = Self::from_json_str(&text, &path.display().to_string())?;
        let generation = dir.as_ref().join("generation_config.json");
        match std::fs::read_to_string(&generation) {
            Ok(text) => {
                let origin = generation.display().to_string();
                let value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
                    origin: origin.clone(),
                    source,
                })?;
                let fields = Fields::root(&value, &origin)?;
                for id in fields.token_list_opt("eos_token_id")?.unwrap_or_default() {
                    if !cfg.tokens.eos_token_ids.contains(&id) {
                        cfg.tokens.eos_token_ids.push(id);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ConfigError::Io {
                    path: generation,
                    source,
                })
            }
        }
        Ok(cfg)
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
        let top = Fields::root(value, origin)?;
        let cfg = match top.obj_opt("text_config")? {
            Some(text) => parse_native(&top, &text)?,
            None => parse_flat(&top)?,
        };
        cfg.validate_in(origin)?;
        Ok(cfg)
    }
}

/// Baidu's flat file: text and MoE fields at the top level, `vision_config` nested.
fn parse_flat(top: &Fields) -> Result<ErnieVlConfig, ConfigError> {
    let mut text = parse_text_common(top)?;
    let half = text.head_dim / 2;
    let t_pairs = top.usize_opt("freq_allocation")?.unwrap_or(DEFAULT_FREQ_ALLOCATION);
    if t_pairs > half || (half - t_pairs) % 2 != 0 {
        return Err(top.invalid(
            "freq_allocation",
            format!("({t_pairs}) must leave an even number of the head_dim / 2 = {half} rotary pairs for H and W"),
        ));
    }
    let hw = (half - t_pairs) / 2;
    text.mrope_section = [hw, hw, t_pairs];
    text.rope_theta = top.f64_opt("rope_theta")?.unwrap_or(DEFAULT_ROPE_THETA);

    let [text_experts, vision_experts] = top
        .usize_pair_opt("moe_num_experts")?
        .ok_or_else(|| top.missing("moe_num_experts"))?;
    if text_experts != vision_experts {
        return Err(top.invalid(
            "moe_num_experts",
            format!("[{text_experts}, {vision_experts}]: the text and vision pools must have the same expert count"),
        ));
    }
    let moe_layers = moe_layers_from_ranges(top, text.num_hidden_layers)?;
    let moe = parse_moe_common(top, text_experts, moe_layers)?;

    let v = top.obj_req("vision_config")?;
    let hidden = match (v.usize_opt("hidden_size")?, v.usize_opt("embed_dim")?) {
        (Some(h), Some(e)) if h != e => {
            return Err(v.invalid("embed_dim", format!("({e}) must equal vision_config.hidden_size ({h})")));
        }
        (Some(h), _) | (None, Some(h)) => h,
        (None, None) => return Err(v.missing("hidden_size")),
    };
    let intermediate = match v.usize_opt("intermediate_size")? {
        Some(i) => i,
        None => hidden * v.usize_opt("mlp_ratio")?.ok_or_else(|| v.missing("mlp_ratio"))?,
    };
    if let Some(pixel) = top.usize_opt("pixel_hidden_size")? {
        if pixel != hidden {
            return Err(top.invalid(
                "pixel_hidden_size",
                format!("({pixel}) must equal vision_config.hidden_size ({hidden})"),
            ));
        }
    }
    let spatial = top.usize_opt("spatial_conv_size")?;
    let temporal = top.usize_opt("temporal_conv_size")?;
    let vision = parse_vision_common(&v, hidden, intermediate, spatial, temporal)?;

    let image_token_id = match top.token_opt("im_patch_id")? {
        Some(id) => id,
        None => top
            .token_opt("image_token_id")?
            .ok_or_else(|| top.missing("im_patch_id"))?,
    };
    let tokens = parse_tokens(top, top, image_token_id)?;
    Ok(ErnieVlConfig {
        text,
        moe,
        vision,
        tokens,
        tie_word_embeddings: top.bool_opt("tie_word_embeddings")?.unwrap_or(true),
        use_temporal_conv: top.bool_opt("use_temporal_conv")?.unwrap_or(true),
        layout: ErnieConfigLayout::HubFlat,
    })
}

/// transformers' nested form (`Ernie4_5_VLMoeConfig`).
fn parse_native(top: &Fields, t: &Fields) -> Result<ErnieVlConfig, ConfigError> {
    let mut text = parse_text_common(t)?;
    let mut theta = None;
    let mut section = None;
    if let Some(p) = t.obj_opt("rope_parameters")? {
        if let Some(kind) = p.str_opt("rope_type")? {
            if kind != "default" {
                return Err(p.bad_value("rope_type", kind, "\"default\""));
            }
        }
        theta = p.f64_opt("rope_theta")?;
        section = p.mrope_section_opt()?;
    }
    text.rope_theta = match theta {
        Some(theta) => theta,
        None => t.f64_opt("rope_theta")?.unwrap_or(DEFAULT_ROPE_THETA),
    };
    // The rotary module's fallback when the file has no sections (spec §2.2).
    text.mrope_section = section.unwrap_or([22, 22, 20]);

    let experts = t.usize_req("moe_num_experts")?;
    let moe_layers = match t.str_list_opt("mlp_layer_types")? {
        Some(kinds) => kinds
            .iter()
            .map(|kind| match *kind {
                "dense" => Ok(false),
                "sparse" => Ok(true),
                other => Err(t.bad_value("mlp_layer_types", other, "\"dense\", \"sparse\"")),
            })
            .collect::<Result<Vec<bool>, _>>()?,
        None => moe_layers_from_ranges(t, text.num_hidden_layers)?,
    };
    let moe = parse_moe_common(t, experts, moe_layers)?;

    let v = top.obj_req("vision_config")?;
    let hidden = v.usize_req("hidden_size")?;
    let intermediate = v.usize_req("intermediate_size")?;
    let mut vision = parse_vision_common(&v, hidden, intermediate, None, None)?;
    if let Some(eps) = v.f64_opt("rms_norm_eps")? {
        vision.layer_norm_eps = eps;
    }

    let image_token_id = top.token_req("image_token_id")?;
    let tokens = parse_tokens(top, t, image_token_id)?;
    let tie = match top.bool_opt("tie_word_embeddings")? {
        Some(tie) => tie,
        None => t.bool_opt("tie_word_embeddings")?.unwrap_or(true),
    };
    Ok(ErnieVlConfig {
        text,
        moe,
        vision,
        tokens,
        tie_word_embeddings: tie,
        use_temporal_conv: true,
        layout: ErnieConfigLayout::Native,
    })
}

/// The dense-transformer fields both layouts spell the same way; rotary left for the caller.
fn parse_text_common(t: &Fields) -> Result<ErnieTextConfig, ConfigError> {
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
    let head_dim = match t.usize_opt("head_dim")? {
        Some(d) => d,
        None if num_attention_heads > 0 => hidden_size / num_attention_heads,
        None => 0, // validate_in reports the zero heads
    };
    Ok(ErnieTextConfig {
        vocab_size: t.usize_req("vocab_size")?,
        hidden_size,
        intermediate_size: t.usize_req("intermediate_size")?,
        num_hidden_layers: t.usize_req("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads: t.usize_opt("num_key_value_heads")?.unwrap_or(num_attention_heads),
        head_dim,
        max_position_embeddings: t.usize_req("max_position_embeddings")?,
        rms_norm_eps: t.f64_req("rms_norm_eps")?,
        rope_theta: DEFAULT_ROPE_THETA,
        mrope_section: [0; 3],
    })
}

fn parse_moe_common(t: &Fields, experts: usize, moe_layers: Vec<bool>) -> Result<ErnieMoeConfig, ConfigError> {
    let [text_width, vision_width] = t
        .usize_pair_opt("moe_intermediate_size")?
        .ok_or_else(|| t.missing("moe_intermediate_size"))?;
    Ok(ErnieMoeConfig {
        num_experts: experts,
        text_intermediate_size: text_width,
        vision_intermediate_size: vision_width,
        top_k: t.usize_req("moe_k")?,
        num_shared_experts: t.usize_opt("moe_num_shared_experts")?.unwrap_or(0),
        norm_min: t.f64_opt("moe_norm_min")?.unwrap_or(DEFAULT_NORM_MIN),
        moe_layers,
    })
}

/// transformers' converter rule (spec §2.2): layer `i` is MoE iff `(i + 1) % interval == 0` and
/// `min(start) <= i <= max(end)`. The per-modality lists must select the same layers (vLLM
/// reads them per pool; a layer with only one pool is not a layout the hub checkpoint has).
/// An end index past the last layer (the hub file's 29 for 28 layers) or -1 means "to the end".
fn moe_layers_from_ranges(t: &Fields, layers: usize) -> Result<Vec<bool>, ConfigError> {
    let start = t
        .usize_pair_opt("moe_layer_start_index")?
        .ok_or_else(|| t.missing("moe_layer_start_index"))?;
    let end = match t.get("moe_layer_end_index") {
        None => [layers.saturating_sub(1); 2],
        Some(v) if v.as_i64() == Some(-1) => [layers.saturating_sub(1); 2],
        Some(_) => t.usize_pair_opt("moe_layer_end_index")?.expect("present"),
    };
    let interval = t.usize_opt("moe_layer_interval")?.unwrap_or(1);
    if interval == 0 {
        return Err(t.invalid("moe_layer_interval", "must be positive, found 0".into()));
    }
    let in_range = |i: usize, s: usize, e: usize| (i + 1) % interval == 0 && s <= i && i <= e;
    let mut out = Vec::with_capacity(layers);
    for i in 0..layers {
        let (text, vision) = (in_range(i, start[0], end[0]), in_range(i, start[1], end[1]));
        if text != vision {
            return Err(t.invalid(
                "moe_layer_start_index",
                format!(
                    "with moe_layer_end_index, gives layer {i} experts for only one modality \
                     (text {start:?}..={end:?}); both pools must cover the same layers"
                ),
            ));
        }
        out.push(text);
    }
    Ok(out)
}

fn parse_vision_common(
    v: &Fields,
    hidden: usize,
    intermediate: usize,
    spatial: Option<usize>,
    temporal: Option<usize>,
) -> Result<ErnieVisionConfig, ConfigError> {
    if let Some(act) = v.str_opt("hidden_act")? {
        if act != VISION_ACT {
            return Err(v.bad_value("hidden_act", act, "\"quick_gelu\""));
        }
    }
    let in_channels = match v.usize_opt("in_channels")? {
        Some(c) => c,
        None => v.usize_opt("in_chans")?.unwrap_or(3),
    };
    let spatial = match v.usize_opt("spatial_merge_size")? {
        Some(s) => s,
        None => spatial.unwrap_or(2),
    };
    let temporal = match v.usize_opt("temporal_merge_size")? {
        Some(s) => s,
        None => temporal.unwrap_or(2),
    };
    let theta = match v.obj_opt("rope_parameters")? {
        Some(p) => p.f64_opt("rope_theta")?,
        None => None,
    };
    Ok(ErnieVisionConfig {
        depth: v.usize_req("depth")?,
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_heads: v.usize_req("num_heads")?,
        in_channels,
        patch_size: v.usize_req("patch_size")?,
        spatial_merge_size: spatial,
        temporal_merge_size: temporal,
        layer_norm_eps: DEFAULT_VISION_EPS,
        rope_theta: theta.unwrap_or(DEFAULT_VISION_THETA),
    })
}

/// Special ids: image/video ids at the top level; pad/bos/eos at the top or (native) in
/// `text_config`.
fn parse_tokens(top: &Fields, text: &Fields, image_token_id: u32) -> Result<ErnieTokens, ConfigError> {
    let [start, end, vstart, vend] = DEFAULT_START_END_IDS;
    let either = |key: &str| -> Result<Option<u32>, ConfigError> { Ok(top.token_opt(key)?.or(text.token_opt(key)?)) };
    let eos = match top.token_list_opt("eos_token_id")? {
        Some(ids) => ids,
        None => text.token_list_opt("eos_token_id")?.unwrap_or_default(),
    };
    Ok(ErnieTokens {
        pad_token_id: either("pad_token_id")?,
        bos_token_id: either("bos_token_id")?,
        eos_token_ids: eos,
        image_token_id,
        image_start_token_id: top.token_opt("image_start_token_id")?.unwrap_or(start),
        image_end_token_id: top.token_opt("image_end_token_id")?.unwrap_or(end),
        video_start_token_id: top.token_opt("video_start_token_id")?.unwrap_or(vstart),
        video_end_token_id: top.token_opt("video_end_token_id")?.unwrap_or(vend),
        video_token_id: top.token_opt("video_token_id")?,
    })
}
