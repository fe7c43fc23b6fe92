//! The `config.json` of ERNIE-4.5-VL (docs/ERNIE_4_5_VL_SPEC.md §2): the MoE language model,
//! the DFNRope vision tower, the resampler between them and the special token ids.
//!
//! Two layouts are read ([`parse`]): Baidu's flat hub file of `baidu/ERNIE-4.5-VL-28B-A3B-PT`
//! (model_type `ernie4_5_moe_vl`, text fields at the top level, per-modality `[text, vision]`
//! lists) and the transformers-native nested form (model_type `ernie4_5_vl_moe`,
//! `text_config` / `vision_config`). Both become one [`ErnieVlConfig`]; [`hub_json`] writes the
//! flat form back for synthetic checkpoints.

mod hub_json;
mod parse;

use super::ConfigError;

/// The ERNIE-4.5 MoE language model.
#[derive(Clone, Debug, PartialEq)]
pub struct ErnieTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// SwiGLU width of the dense layers (layer 0 of 28B-A3B).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Rotary pairs per position axis in transformers' `mrope_section` order `[H, W, T]`:
    /// `[22, 22, 20]` for head_dim 128. The H and W pairs interleave over pairs
    /// `0..H+W` (even H, odd W) and T takes the last ones (spec §3.10); the flat file says only
    /// the T count (`freq_allocation`).
    pub mrope_section: [usize; 3],
}

impl ErnieTextConfig {
    /// Output width of q_proj and input width of o_proj.
    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Output width of k_proj and of v_proj.
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

/// The mixture of experts: two pools (text, vision) of the same expert count, each with its own
/// router and correction-bias row, plus the shared experts every token runs (spec §3.12).
#[derive(Clone, Debug, PartialEq)]
pub struct ErnieMoeConfig {
    /// Experts per pool (64); the hub checkpoint numbers text experts `0..n` and vision
    /// experts `n..2n`.
    pub num_experts: usize,
    /// SwiGLU width of a text expert (1536).
    pub text_intermediate_size: usize,
    /// SwiGLU width of a vision expert (512).
    pub vision_intermediate_size: usize,
    /// Experts chosen per token within its pool (6).
    pub top_k: usize,
    /// Shared experts, fused into one SwiGLU of `num_shared_experts × text width`; 0 = none.
    pub num_shared_experts: usize,
    /// Clamp of the top-k probability sum before renormalising (1e-12).
    pub norm_min: f64,
    /// Per decoder layer, true where the feed-forward is the MoE block (transformers'
    /// `mlp_layer_types == "sparse"`).
    pub moe_layers: Vec<bool>,
}

impl ErnieMoeConfig {
    /// Width of the fused shared-expert SwiGLU (2 × 1536 = 3072).
    pub fn shared_intermediate_size(&self) -> usize {
        self.num_shared_experts * self.text_intermediate_size
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe_layers.get(layer).copied().unwrap_or(false)
    }

    pub fn num_moe_layers(&self) -> usize {
        self.moe_layers.iter().filter(|&&m| m).count()
    }
}

/// The vision tower (a Qwen2-VL-style ViT without a learned position table) and the merge
/// sizes of the resampler that follows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ErnieVisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    /// 2×2 spatial merge in the resampler.
    pub spatial_merge_size: usize,
    /// Frames merged by the resampler's temporal Linear (2; an image is paired with itself).
    pub temporal_merge_size: usize,
    /// Eps of the ViT and resampler LayerNorms: 1e-6 (spec §13.2).
    pub layer_norm_eps: f64,
    /// 2D rotary theta (1e4; no config file states it).
    pub rope_theta: f64,
}

impl ErnieVisionConfig {
    /// 80 for 28B-A3B (1280 / 16).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Length of one flattened patch, (c, ky, kx): 3 × 14 × 14 = 588.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.patch_size * self.patch_size
    }

    /// Width of one spatially merged token: 1280 × 2 × 2 = 5120.
    pub fn merged_width(&self) -> usize {
        self.hidden_size * self.spatial_merge_size * self.spatial_merge_size
    }
}

/// Token ids with a meaning to the model (spec §6.2). ERNIE-4.5-VL's start/end ids are one
/// below PaddleOCR-VL's: never share constants between the families.
#[derive(Clone, Debug, PartialEq)]
pub struct ErnieTokens {
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    /// From config.json when it says; empty otherwise (generation_config.json then decides).
    pub eos_token_ids: Vec<u32>,
    /// `<|IMAGE_PLACEHOLDER|>` (`im_patch_id`, 100295).
    pub image_token_id: u32,
    /// `<|IMAGE_START|>` / `<|IMAGE_END|>` (101304 / 101305).
    pub image_start_token_id: u32,
    pub image_end_token_id: u32,
    /// `<|VIDEO_START|>` / `<|VIDEO_END|>` (101306 / 101307).
    pub video_start_token_id: u32,
    pub video_end_token_id: u32,
    /// transformers' separate `<|VIDEO_PLACEHOLDER|>` (103367); absent in the flat file.
    pub video_token_id: Option<u32>,
}

/// Which layout a config file had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErnieConfigLayout {
    /// Baidu's flat hub file (model_type `ernie4_5_moe_vl`).
    HubFlat,
    /// transformers' nested form (model_type `ernie4_5_vl_moe`).
    Native,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ErnieVlConfig {
    pub text: ErnieTextConfig,
    pub moe: ErnieMoeConfig,
    pub vision: ErnieVisionConfig,
    pub tokens: ErnieTokens,
    /// LM head tied to `model.embed_tokens.weight` (true for 28B-A3B, false for 424B).
    pub tie_word_embeddings: bool,
    /// The resampler's temporal Linear pair exists (true in every released checkpoint).
    pub use_temporal_conv: bool,
    pub layout: ErnieConfigLayout,
}

impl ErnieVlConfig {
    /// ERNIE-4.5-VL-28B-A3B(-PT / -Thinking) as the spec's §2 tables give it.
    pub fn ernie_4_5_vl_28b_a3b() -> Self {
        ErnieVlConfig {
            text: ErnieTextConfig {
                vocab_size: 103_424,
                hidden_size: 2560,
                intermediate_size: 12_288,
                num_hidden_layers: 28,
                num_attention_heads: 20,
                num_key_value_heads: 4,
                head_dim: 128,
                max_position_embeddings: 131_072,
                rms_norm_eps: 1e-5,
                rope_theta: 500_000.0,
                mrope_section: [22, 22, 20],
            },
            moe: ErnieMoeConfig {
                num_experts: 64,
                text_intermediate_size: 1536,
                vision_intermediate_size: 512,
                top_k: 6,
                num_shared_experts: 2,
                norm_min: 1e-12,
                moe_layers: (0..28).map(|layer| layer >= 1).collect(),
            },
            vision: ErnieVisionConfig {
                depth: 32,
                hidden_size: 1280,
                intermediate_size: 5120,
                num_heads: 16,
                in_channels: 3,
                patch_size: 14,
                spatial_merge_size: 2,
                temporal_merge_size: 2,
                layer_norm_eps: 1e-6,
                rope_theta: 10_000.0,
            },
            tokens: ErnieTokens {
                pad_token_id: Some(0),
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
                image_token_id: 100_295,
                image_start_token_id: 101_304,
                image_end_token_id: 101_305,
                video_start_token_id: 101_306,
                video_end_token_id: 101_307,
                video_token_id: None,
            },
            tie_word_embeddings: true,
            use_temporal_conv: true,
            layout: ErnieConfigLayout::HubFlat,
        }
    }

    /// A small model for CPU tests that keeps the shape rules of the real one: text heads of
    /// 128 in a 5:1 GQA with the real [22, 22, 20] rotary sections, vision heads of 80, the
    /// 2×2 and temporal merges, a dense layer 0 then MoE layers, two pools of different expert
    /// widths, top-k below the pool size, 2 shared experts. Widths, depth, expert count and
    /// vocabulary shrink; the special ids move to the top of the 1024-token vocabulary.
    pub fn tiny() -> Self {
        let full = Self::ernie_4_5_vl_28b_a3b();
        ErnieVlConfig {
            text: ErnieTextConfig {
                vocab_size: 1024,
                hidden_size: 256,
                intermediate_size: 384,
                num_hidden_layers: 3,
                num_attention_heads: 5,
                num_key_value_heads: 1,
                ..full.text
            },
            moe: ErnieMoeConfig {
                num_experts: 8,
                text_intermediate_size: 96,
                vision_intermediate_size: 32,
                top_k: 2,
                moe_layers: vec![false, true, true],
                ..full.moe
            },
            vision: ErnieVisionConfig {
                depth: 2,
                hidden_size: 160,
                intermediate_size: 640,
                num_heads: 2,
                ..full.vision
            },
            tokens: ErnieTokens {
                image_token_id: 1000,
                image_start_token_id: 1001,
                image_end_token_id: 1002,
                video_start_token_id: 1003,
                video_end_token_id: 1004,
                ..full.tokens
            },
            ..full
        }
    }

    /// The real widths (hidden 2560, 20/4 heads of 128, 64 + 64 experts of 1536 / 512, ViT
    /// 1280 with 16 heads of 80, the real vocabulary and ids) at reduced depth: 3 decoder
    /// layers (layer 0 dense, 1 and 2 MoE) and 2 ViT blocks. The fidelity test's model (issue
    /// 18: "a reduced-depth, full-width random model"), the shape `ernie_oracle.py --variant
    /// reduced` builds; about 2.6B parameters.
    pub fn reduced() -> Self {
        let full = Self::ernie_4_5_vl_28b_a3b();
        ErnieVlConfig {
            text: ErnieTextConfig {
                num_hidden_layers: 3,
                ..full.text
            },
            moe: ErnieMoeConfig {
                moe_layers: vec![false, true, true],
                ..full.moe
            },
            vision: ErnieVisionConfig {
                depth: 2,
                ..full.vision
            },
            ..full
        }
    }

    /// Checks the rules the model code will rely on; `origin` names the file in errors.
    pub fn validate_in(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            reason,
        };
        let (t, m, v) = (&self.text, &self.moe, &self.vision);
        let positive = [
            ("vocab_size", t.vocab_size),
            ("hidden_size", t.hidden_size),
            ("intermediate_size", t.intermediate_size),
            ("num_hidden_layers", t.num_hidden_layers),
            ("num_attention_heads", t.num_attention_heads),
            ("num_key_value_heads", t.num_key_value_heads),
            ("head_dim", t.head_dim),
            ("max_position_embeddings", t.max_position_embeddings),
            ("moe_num_experts", m.num_experts),
            ("moe_intermediate_size", m.text_intermediate_size),
            ("moe_intermediate_size", m.vision_intermediate_size),
            ("moe_k", m.top_k),
            ("vision_config.depth", v.depth),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_heads", v.num_heads),
            ("vision_config.in_channels", v.in_channels),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.spatial_merge_size", v.spatial_merge_size),
            ("vision_config.temporal_merge_size", v.temporal_merge_size),
        ];
        super::fields::check_shared_rules(
            origin,
            &positive,
            &[
                ("rms_norm_eps", t.rms_norm_eps),
                ("rope_theta", t.rope_theta),
                ("vision_config.rms_norm_eps", v.layer_norm_eps),
            ],
            (t.num_attention_heads, t.num_key_value_heads),
        )?;
        let [h, w, time] = t.mrope_section;
        if h + w + time != t.head_dim / 2 || h != w || t.head_dim % 2 != 0 {
            return Err(invalid(
                "freq_allocation",
                format!(
                    "gives rotary sections [H {h}, W {w}, T {time}], which must have H = W and sum to \
                     head_dim / 2 = {}",
                    t.head_dim / 2
                ),
            ));
        }
        if m.top_k > m.num_experts {
            return Err(invalid(
                "moe_k",
                format!("({}) exceeds moe_num_experts ({})", m.top_k, m.num_experts),
            ));
        }
        if m.moe_layers.len() != t.num_hidden_layers {
            return Err(invalid(
                "mlp_layer_types",
                format!(
                    "lists {} layers but num_hidden_layers is {}",
                    m.moe_layers.len(),
                    t.num_hidden_layers
                ),
            ));
        }
        if v.hidden_size % v.num_heads != 0 || v.head_dim() % 4 != 0 {
            return Err(invalid(
                "vision_config.hidden_size",
                format!(
                    "({}) must split into vision_config.num_heads ({}) heads of a multiple of 4 (2D rotary)",
                    v.hidden_size, v.num_heads
                ),
            ));
        }
        let tok = &self.tokens;
        let ids = [
            ("im_patch_id", tok.image_token_id),
            ("image_start_token_id", tok.image_start_token_id),
            ("image_end_token_id", tok.image_end_token_id),
            ("video_start_token_id", tok.video_start_token_id),
            ("video_end_token_id", tok.video_end_token_id),
        ];
        for (i, (field, id)) in ids.iter().enumerate() {
            // Video ids may lie outside the vocabulary (transformers' defaults in a small
            // model's config do): video input is refused, so they never reach a prompt.
            let video = field.starts_with("video_");
            if *id as usize >= t.vocab_size && !video {
                return Err(invalid(
                    field,
                    format!("({id}) is outside the vocabulary of {}", t.vocab_size),
                ));
            }
            if let Some((other, _)) = ids[..i].iter().find(|(_, o)| o == id) {
                return Err(invalid(field, format!("({id}) must differ from {other}")));
            }
        }
        Ok(())
    }
}
