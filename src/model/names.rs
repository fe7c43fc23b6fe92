//! The tensor inventory of a PaddleOCR-VL checkpoint, in the hub layout (MODEL_SPEC §4.1):
//! `visual.vision_model.*`, `mlp_AR.*`, `model.*` and `lm_head.weight`. Shapes are PyTorch
//! `[out, in]`.
//!
//! This file is the single place that knows tensor names; model code builds names with the
//! helpers below rather than with string literals of its own.

use std::borrow::Cow;

use crate::config::ModelConfig;
use crate::runtime::DType;

pub const VISION_PREFIX: &str = "visual.vision_model.";
pub const PROJECTOR_PREFIX: &str = "mlp_AR.";
pub const TEXT_PREFIX: &str = "model.";
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// Rows of the unused NaViT packing table, fixed in the hub code independently of the config.
pub const PACKING_POSITIONS: usize = 32768;

/// What a tensor is, so a synthetic initialiser can pick a sensible distribution without
/// parsing names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Weight of a matmul or convolution; `fan_in` is the length of the dot product.
    Linear {
        fan_in: usize,
    },
    Bias,
    /// LayerNorm / RMSNorm scale (≈ 1).
    NormWeight,
    /// LayerNorm shift (≈ 0).
    NormBias,
    /// Token, position or probe table read by lookup.
    Embedding,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub kind: TensorKind,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype.size_bytes()
    }
}

/// `visual.vision_model.encoder.layers.{layer}.{suffix}`.
pub fn vision_layer(layer: usize, suffix: &str) -> String {
    format!("{VISION_PREFIX}encoder.layers.{layer}.{suffix}")
}

/// `model.layers.{layer}.{suffix}`.
pub fn text_layer(layer: usize, suffix: &str) -> String {
    format!("{TEXT_PREFIX}layers.{layer}.{suffix}")
}

/// Appends specs, all bf16 (every tensor of PaddleOCR-VL, and the ERNIE-4.5-VL inventory).
pub(crate) struct Inventory(pub(crate) Vec<TensorSpec>);

impl Inventory {
    pub(crate) fn push(&mut self, name: String, shape: &[usize], kind: TensorKind) {
        self.0.push(TensorSpec {
            name,
            shape: shape.to_vec(),
            dtype: DType::BF16,
            kind,
        });
    }

    /// `{prefix}weight [out, in]` and `{prefix}bias [out]`.
    pub(crate) fn linear_with_bias(&mut self, prefix: &str, out: usize, inp: usize) {
        self.push(
            format!("{prefix}weight"),
            &[out, inp],
            TensorKind::Linear { fan_in: inp },
        );
        self.push(format!("{prefix}bias"), &[out], TensorKind::Bias);
    }

    pub(crate) fn linear(&mut self, name: String, out: usize, inp: usize) {
        self.push(name, &[out, inp], TensorKind::Linear { fan_in: inp });
    }

    pub(crate) fn layer_norm(&mut self, prefix: &str, width: usize) {
        self.push(format!("{prefix}weight"), &[width], TensorKind::NormWeight);
        self.push(format!("{prefix}bias"), &[width], TensorKind::NormBias);
    }
}

/// Every tensor the model reads, in a fixed order: vision tower, projector, language model,
/// `lm_head.weight` last. `lm_head.weight` is listed although a checkpoint may omit it (the
/// loader then uses `model.embed_tokens.weight`, MODEL_SPEC §4.4).
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let v = &cfg.vision;
    let t = &cfg.text;
    let mut inv = Inventory(Vec::new());

    let emb = format!("{VISION_PREFIX}embeddings.");
    inv.push(
        format!("{emb}patch_embedding.weight"),
        &[v.hidden_size, v.num_channels, v.patch_size, v.patch_size],
        TensorKind::Linear { fan_in: v.patch_dim() },
    );
    inv.push(format!("{emb}patch_embedding.bias"), &[v.hidden_size], TensorKind::Bias);
    inv.push(
        format!("{emb}position_embedding.weight"),
        &[v.num_positions(), v.hidden_size],
        TensorKind::Embedding,
    );
    let (h, i) = (v.hidden_size, v.intermediate_size);
    for layer in 0..v.num_hidden_layers {
        inv.layer_norm(&vision_layer(layer, "layer_norm1."), h);
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            inv.linear_with_bias(&vision_layer(layer, &format!("self_attn.{proj}.")), h, h);
        }
        inv.layer_norm(&vision_layer(layer, "layer_norm2."), h);
        inv.linear_with_bias(&vision_layer(layer, "mlp.fc1."), i, h);
        inv.linear_with_bias(&vision_layer(layer, "mlp.fc2."), h, i);
    }
    inv.layer_norm(&format!("{VISION_PREFIX}post_layernorm."), h);

    let merged = v.merged_width();
    inv.layer_norm(&format!("{PROJECTOR_PREFIX}pre_norm."), h);
    inv.linear_with_bias(&format!("{PROJECTOR_PREFIX}linear_1."), merged, merged);
    inv.linear_with_bias(&format!("{PROJECTOR_PREFIX}linear_2."), t.hidden_size, merged);

    let d = t.hidden_size;
    inv.push(EMBED_TOKENS.to_string(), &[t.vocab_size, d], TensorKind::Embedding);
    for layer in 0..t.num_hidden_layers {
        inv.push(
            text_layer(layer, "input_layernorm.weight"),
            &[d],
            TensorKind::NormWeight,
        );
        inv.linear(text_layer(layer, "self_attn.q_proj.weight"), t.q_width(), d);
        inv.linear(text_layer(layer, "self_attn.k_proj.weight"), t.kv_width(), d);
        inv.linear(text_layer(layer, "self_attn.v_proj.weight"), t.kv_width(), d);
        inv.linear(text_layer(layer, "self_attn.o_proj.weight"), d, t.q_width());
        inv.push(
            text_layer(layer, "post_attention_layernorm.weight"),
            &[d],
            TensorKind::NormWeight,
        );
        inv.linear(text_layer(layer, "mlp.gate_proj.weight"), t.intermediate_size, d);
        inv.linear(text_layer(layer, "mlp.up_proj.weight"), t.intermediate_size, d);
        inv.linear(text_layer(layer, "mlp.down_proj.weight"), d, t.intermediate_size);
    }
    inv.push(format!("{TEXT_PREFIX}norm.weight"), &[d], TensorKind::NormWeight);
    inv.linear(LM_HEAD.to_string(), t.vocab_size, d);
    inv.0
}

/// Tensors the released checkpoint holds but inference never reads: the NaViT packing table
/// and the SigLIP attention-pooling head (MODEL_SPEC §4.1). vLLM and transformers drop them.
pub fn unused_tensors(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let (h, i) = (cfg.vision.hidden_size, cfg.vision.intermediate_size);
    let mut inv = Inventory(Vec::new());
    inv.push(
        format!("{VISION_PREFIX}embeddings.packing_position_embedding.weight"),
        &[PACKING_POSITIONS, h],
        TensorKind::Embedding,
    );
    let head = format!("{VISION_PREFIX}head.");
    inv.push(format!("{head}probe"), &[1, 1, h], TensorKind::Embedding);
    // nn.MultiheadAttention packs q, k and v into one [3h, h] projection.
    inv.linear(format!("{head}attention.in_proj_weight"), 3 * h, h);
    inv.push(format!("{head}attention.in_proj_bias"), &[3 * h], TensorKind::Bias);
    inv.linear_with_bias(&format!("{head}attention.out_proj."), h, h);
    inv.layer_norm(&format!("{head}layernorm."), h);
    inv.linear_with_bias(&format!("{head}mlp.fc1."), i, h);
    inv.linear_with_bias(&format!("{head}mlp.fc2."), h, i);
    inv.0
}

/// Maps a transformers-v5 saved name to its hub name (MODEL_SPEC §4.2, reversed); hub names
/// come back unchanged. `model.visual.` and `model.projector.` are tested before
/// `model.language_model.` and none of them overlaps a hub prefix, so the order is safe.
/// ERNIE-4.5-VL: transformers 5.17's `save_pretrained` writes the hub names except the vision
/// tower, which it puts under `model.vision_model.` (the hub has it top level, ERNIE spec §4.2;
/// seen on the GPU host 2026-12-07); no PaddleOCR-VL name starts so.
pub fn canonical_name(name: &str) -> Cow<'_, str> {
    const V5_TO_HUB: [(&str, &str); 4] = [
        ("model.visual.", "visual."),
        ("model.projector.", PROJECTOR_PREFIX),
        ("model.language_model.", TEXT_PREFIX),
        ("model.vision_model.", "vision_model."),
    ];
    for (v5, hub) in V5_TO_HUB {
        if let Some(rest) = name.strip_prefix(v5) {
            return Cow::Owned(format!("{hub}{rest}"));
        }
    }
    Cow::Borrowed(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(specs: &[TensorSpec]) -> usize {
        specs.iter().map(TensorSpec::numel).sum()
    }

    #[test]
    fn full_model_counts_match_the_spec() {
        let cfg = ModelConfig::paddleocr_vl_0_9b();
        let used = expected_tensors(&cfg);
        // MODEL_SPEC §0/§4.1: 905,601,648 untied, 799,695,472 with lm_head tied; 608 used
        // state-dict keys, lm_head included.
        assert_eq!(params(&used), 905_601_648);
        assert_eq!(params(&used) - 103_424 * 1024, 799_695_472);
        assert_eq!(used.len(), 608);
        let unused = unused_tensors(&cfg);
        let total = params(&used) + params(&unused);
        assert!((958_000_000..959_000_000).contains(&total), "total {total}");
    }

    #[test]
    fn names_are_unique_across_used_and_unused() {
        let cfg = ModelConfig::tiny();
        let mut names: Vec<String> = expected_tensors(&cfg)
            .into_iter()
            .chain(unused_tensors(&cfg))
            .map(|s| s.name)
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn v5_names_map_back_to_hub_names() {
        assert_eq!(
            canonical_name("model.visual.vision_model.post_layernorm.bias"),
            "visual.vision_model.post_layernorm.bias"
        );
        assert_eq!(
            canonical_name("model.projector.linear_1.weight"),
            "mlp_AR.linear_1.weight"
        );
        assert_eq!(
            canonical_name("model.language_model.layers.3.mlp.up_proj.weight"),
            "model.layers.3.mlp.up_proj.weight"
        );
        assert!(matches!(
            canonical_name("model.norm.weight"),
            Cow::Borrowed("model.norm.weight")
        ));
        assert_eq!(canonical_name(LM_HEAD), LM_HEAD);
    }
}
