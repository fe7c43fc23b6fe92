//! Writes an [`ErnieVlConfig`] as Baidu's flat hub `config.json` (spec §2.1), for synthetic
//! checkpoints. The keys are those the spec's readers (transformers' converter, vLLM,
//! FastDeploy) take from the file, in their spelling: per-modality `[text, vision]` lists,
//! `im_patch_id`, `freq_allocation`, the vision tower's `depth` / `embed_dim` / `mlp_ratio`.

use serde_json::json;

use super::parse::{TEXT_ACT, VISION_ACT};
use super::ErnieVlConfig;
use crate::config::ConfigError;

impl ErnieVlConfig {
    /// The flat hub form. MoE layers are written as one `moe_layer_start_index ..=
    /// moe_layer_end_index` range with interval 1, so a config whose MoE layers are not one
    /// contiguous run is refused rather than written wrong.
    pub fn to_hub_json(&self) -> Result<String, ConfigError> {
        let t = &self.text;
        let m = &self.moe;
        let v = &self.vision;
        let tok = &self.tokens;
        let first = m.moe_layers.iter().position(|&x| x);
        let last = m.moe_layers.iter().rposition(|&x| x);
        let (start, end) = match (first, last) {
            (Some(first), Some(last)) if m.moe_layers[first..=last].iter().all(|&x| x) => (first, last),
            _ => {
                return Err(ConfigError::Invalid {
                    origin: "ERNIE-4.5-VL model config".into(),
                    field: "moe_layers".into(),
                    reason: format!(
                        "{:?} is not one contiguous run of MoE layers, which the flat file cannot express",
                        m.moe_layers
                    ),
                })
            }
        };
        let eos = match tok.eos_token_ids.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let (mlp_ratio, ratio_exact) = (
            v.intermediate_size / v.hidden_size,
            v.intermediate_size % v.hidden_size == 0,
        );
        let mut vision = json!({
            "depth": v.depth,
            "embed_dim": v.hidden_size,
            "hidden_size": v.hidden_size,
            "num_heads": v.num_heads,
            "hidden_act": VISION_ACT,
            "in_channels": v.in_channels,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size,
        });
        if ratio_exact {
            vision["mlp_ratio"] = json!(mlp_ratio);
        } else {
            vision["intermediate_size"] = json!(v.intermediate_size);
        }
        let mut config = json!({
            "architectures": ["Ernie4_5_VLMoeForConditionalGeneration"],
            "model_type": "ernie4_5_moe_vl",
            "torch_dtype": "bfloat16",
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "hidden_act": TEXT_ACT,
            "rms_norm_eps": t.rms_norm_eps,
            "vocab_size": t.vocab_size,
            "max_position_embeddings": t.max_position_embeddings,
            "rope_theta": t.rope_theta,
            "freq_allocation": t.mrope_section[2],
            "rope_3d": true,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_bias": false,
            "moe_num_experts": [m.num_experts, m.num_experts],
            "moe_intermediate_size": [m.text_intermediate_size, m.vision_intermediate_size],
            "moe_k": m.top_k,
            "moe_num_shared_experts": m.num_shared_experts,
            "moe_layer_start_index": [start, start],
            "moe_layer_end_index": [end, end],
            "moe_layer_interval": 1,
            "moe_norm_min": m.norm_min,
            "pixel_hidden_size": v.hidden_size,
            "spatial_conv_size": v.spatial_merge_size,
            "temporal_conv_size": v.temporal_merge_size,
            "use_temporal_conv": self.use_temporal_conv,
            "im_patch_id": tok.image_token_id,
            "image_start_token_id": tok.image_start_token_id,
            "image_end_token_id": tok.image_end_token_id,
            "video_start_token_id": tok.video_start_token_id,
            "video_end_token_id": tok.video_end_token_id,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": eos,
            "vision_config": vision,
        });
        if let Some(id) = tok.video_token_id {
            config["video_token_id"] = json!(id);
        }
        Ok(serde_json::to_string_pretty(&config).expect("a json! value always serializes"))
    }
}
