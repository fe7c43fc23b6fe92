//! The tensor inventory of an ERNIE-4.5-VL checkpoint in the hub layout of
//! `baidu/ERNIE-4.5-VL-28B-A3B-PT` (spec §4.2): `vision_model.*`, `model.resampler_model.*`,
//! `model.*` and, when untied, `lm_head.weight`. Shapes are PyTorch `[out, in]` except the
//! routers, stored `[hidden, experts]` (a former `nn.Parameter`; the loader will transpose).
//!
//! This file is the one place that knows ERNIE tensor names; model code builds them with the
//! helpers below.

use crate::config::ErnieVlConfig;
use crate::model::names::{Inventory, TensorKind, TensorSpec, LM_HEAD};

pub const VISION_PREFIX: &str = "vision_model.";
pub const RESAMPLER_PREFIX: &str = "model.resampler_model.";
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";

/// `vision_model.blocks.{block}.{suffix}`.
pub fn vision_block(block: usize, suffix: &str) -> String {
    format!("{VISION_PREFIX}blocks.{block}.{suffix}")
}

/// `model.layers.{layer}.{suffix}`.
pub fn text_layer(layer: usize, suffix: &str) -> String {
    format!("model.layers.{layer}.{suffix}")
}

/// Which pool an expert of the hub numbering belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertPool {
    Text,
    Vision,
}

/// `model.layers.{layer}.mlp.experts.{n}.{proj}.weight`, where the hub numbers text experts
/// `0..E` and vision experts `E..2E` (spec §4.2: one 2E-entry list, split in halves).
pub fn expert(cfg: &ErnieVlConfig, layer: usize, pool: ExpertPool, index: usize, proj: &str) -> String {
    let offset = match pool {
        ExpertPool::Text => 0,
        ExpertPool::Vision => cfg.moe.num_experts,
    };
    text_layer(layer, &format!("mlp.experts.{}.{proj}.weight", offset + index))
}

/// The router of `pool`: `mlp.gate.weight` (text) or `mlp.gate.weight_1` (vision).
pub fn router(layer: usize, pool: ExpertPool) -> String {
    match pool {
        ExpertPool::Text => text_layer(layer, "mlp.gate.weight"),
        ExpertPool::Vision => text_layer(layer, "mlp.gate.weight_1"),
    }
}

/// `mlp.moe_statics.e_score_correction_bias` `[2, E]`: row 0 text, row 1 vision.
pub fn correction_bias(layer: usize) -> String {
    text_layer(layer, "mlp.moe_statics.e_score_correction_bias")
}

/// True for the tensors the references keep in fp32 (the routers and the correction bias,
/// spec §3.12): a checkpoint may store them in f32 instead of bf16.
pub fn may_be_f32(name: &str) -> bool {
    name.ends_with(".mlp.gate.weight")
        || name.ends_with(".mlp.gate.weight_1")
        || name.ends_with(".mlp.moe_statics.e_score_correction_bias")
}

/// Stored tensors the model never reads: `lm_head.weight` of a tied model (vLLM and
/// transformers ignore it) and multi-token-prediction weights (vLLM skips names with `mtp`;
/// spec §4.2).
pub fn is_known_unused(cfg: &ErnieVlConfig, name: &str) -> bool {
    (cfg.tie_word_embeddings && name == LM_HEAD) || name.contains("mtp")
}

/// Every tensor the model reads, in a fixed order: vision tower, resampler, language model,
/// and `lm_head.weight` last when the config is untied.
pub fn expected_tensors(cfg: &ErnieVlConfig) -> Vec<TensorSpec> {
    let mut inv = Inventory(Vec::new());
    push_vision(&mut inv, cfg);
    push_resampler(&mut inv, cfg);
    push_language_model(&mut inv, cfg);
    inv.0
}

fn push_vision(inv: &mut Inventory, cfg: &ErnieVlConfig) {
    let v = &cfg.vision;
    let (h, i) = (v.hidden_size, v.intermediate_size);
    // The patch embedding is a bias-free Linear over the flattened (c, ky, kx) patch.
    inv.linear(format!("{VISION_PREFIX}patch_embed.proj.weight"), h, v.patch_dim());
    for block in 0..v.depth {
        inv.layer_norm(&vision_block(block, "norm1."), h);
        inv.linear_with_bias(&vision_block(block, "attn.qkv."), 3 * h, h);
        inv.linear_with_bias(&vision_block(block, "attn.proj."), h, h);
        inv.layer_norm(&vision_block(block, "norm2."), h);
        inv.linear_with_bias(&vision_block(block, "mlp.fc1."), i, h);
        inv.linear_with_bias(&vision_block(block, "mlp.fc2."), h, i);
    }
    inv.layer_norm(&format!("{VISION_PREFIX}ln."), h);
}

/// Spatial pair (`.0` Linear, `.1` GELU without weights, `.2` Linear, `.3` LayerNorm), the
/// temporal pair on `temporal_merge_size` concatenated tokens, the projection to the text
/// width and its RMSNorm (spec §3.6).
fn push_resampler(inv: &mut Inventory, cfg: &ErnieVlConfig) {
    let merged = cfg.vision.merged_width();
    let spatial = format!("{RESAMPLER_PREFIX}spatial_linear.");
    inv.linear_with_bias(&format!("{spatial}0."), merged, merged);
    inv.linear_with_bias(&format!("{spatial}2."), merged, merged);
    inv.layer_norm(&format!("{spatial}3."), merged);
    if cfg.use_temporal_conv {
        let temporal = format!("{RESAMPLER_PREFIX}temporal_linear.");
        inv.linear_with_bias(
            &format!("{temporal}0."),
            merged,
            cfg.vision.temporal_merge_size * merged,
        );
        inv.linear_with_bias(&format!("{temporal}2."), merged, merged);
        inv.layer_norm(&format!("{temporal}3."), merged);
    }
    inv.linear_with_bias(&format!("{RESAMPLER_PREFIX}mlp."), cfg.text.hidden_size, merged);
    inv.push(
        format!("{RESAMPLER_PREFIX}after_norm.weight"),
        &[cfg.text.hidden_size],
        TensorKind::NormWeight,
    );
}

fn push_language_model(inv: &mut Inventory, cfg: &ErnieVlConfig) {
    let t = &cfg.text;
    let m = &cfg.moe;
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
        if !m.is_moe_layer(layer) {
            swiglu(inv, &text_layer(layer, "mlp."), t.intermediate_size, d);
            continue;
        }
        // Routers [hidden, experts]: the dot product runs over the hidden size.
        for pool in [ExpertPool::Text, ExpertPool::Vision] {
            inv.push(
                router(layer, pool),
                &[d, m.num_experts],
                TensorKind::Linear { fan_in: d },
            );
        }
        inv.push(correction_bias(layer), &[2, m.num_experts], TensorKind::Bias);
        for (pool, width) in [
            (ExpertPool::Text, m.text_intermediate_size),
            (ExpertPool::Vision, m.vision_intermediate_size),
        ] {
            for e in 0..m.num_experts {
                inv.linear(expert(cfg, layer, pool, e, "gate_proj"), width, d);
                inv.linear(expert(cfg, layer, pool, e, "up_proj"), width, d);
                inv.linear(expert(cfg, layer, pool, e, "down_proj"), d, width);
            }
        }
        if m.num_shared_experts > 0 {
            swiglu(
                inv,
                &text_layer(layer, "mlp.shared_experts."),
                m.shared_intermediate_size(),
                d,
            );
        }
    }
    inv.push("model.norm.weight".to_string(), &[d], TensorKind::NormWeight);
    if !cfg.tie_word_embeddings {
        inv.linear(LM_HEAD.to_string(), t.vocab_size, d);
    }
}

/// `{prefix}{gate,up}_proj.weight [width, d]` and `{prefix}down_proj.weight [d, width]`.
fn swiglu(inv: &mut Inventory, prefix: &str, width: usize, d: usize) {
    inv.linear(format!("{prefix}gate_proj.weight"), width, d);
    inv.linear(format!("{prefix}up_proj.weight"), width, d);
    inv.linear(format!("{prefix}down_proj.weight"), d, width);
}

/// Parameters one text token runs through in the decoder: everything of the language model
/// except the vision pool and its router, with `top_k` of the text experts instead of all of
/// them, and the LM head (the tied embedding counted once, as the head: a lookup is no
/// compute). The vision tower and resampler are excluded. This is what the hub's "A3B" counts.
pub fn active_params_per_text_token(cfg: &ErnieVlConfig) -> usize {
    let m = &cfg.moe;
    let mut active = 0;
    let mut one_text_expert_per_moe_layer = 0;
    for spec in expected_tensors(cfg) {
        let name = spec.name.as_str();
        if name.starts_with(VISION_PREFIX) || name.starts_with(RESAMPLER_PREFIX) || name.ends_with("mlp.gate.weight_1")
        {
            continue;
        }
        if let Some(rest) = name.split(".mlp.experts.").nth(1) {
            let index: usize = rest
                .split('.')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            // Count expert 0's tensors once per layer; scaled by top_k below.
            if index == 0 {
                one_text_expert_per_moe_layer += spec.numel();
            }
            continue;
        }
        active += spec.numel();
    }
    active + m.top_k * one_text_expert_per_moe_layer
}
