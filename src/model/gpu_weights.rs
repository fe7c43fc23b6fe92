//! The model's weights on the GPU, laid out for the forward pass.
//!
//! Projections that read the same input are fused at load time, so a layer runs fewer,
//! larger GEMMs (the decode step is launch- and latency-bound at batch 256; see
//! docs/notes/gemm.md): q/k/v into one `[q + k + v, hidden]` weight (vision: with the biases
//! concatenated the same way), and gate/up into one `[2 * inter, hidden]` weight with gate first,
//! the layout `silu_mul` expects. Concatenation happens on the host from the memory-mapped
//! file, so each byte is uploaded once and nothing is duplicated on the device.

use super::names::{text_layer, vision_layer, EMBED_TOKENS, LM_HEAD};
use super::weights::ValidatedWeights;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::attention::AttentionKernels;
use crate::runtime::{DType, DeviceTensor, Gpu, TensorView};

pub struct VisionLayerWeights {
    pub ln1_w: DeviceTensor,
    pub ln1_b: DeviceTensor,
    /// [3 * hidden, hidden]: q, k, v rows.
    pub qkv_w: DeviceTensor,
    /// [3 * hidden].
    pub qkv_b: DeviceTensor,
    pub out_w: DeviceTensor,
    pub out_b: DeviceTensor,
    pub ln2_w: DeviceTensor,
    pub ln2_b: DeviceTensor,
    pub fc1_w: DeviceTensor,
    pub fc1_b: DeviceTensor,
    pub fc2_w: DeviceTensor,
    pub fc2_b: DeviceTensor,
}

pub struct TextLayerWeights {
    pub input_ln: DeviceTensor,
    /// [q_width + 2 * kv_width, hidden]: q, k, v rows.
    pub qkv_w: DeviceTensor,
    pub o_w: DeviceTensor,
    pub post_ln: DeviceTensor,
    /// [2 * inter, hidden]: gate rows, then up rows.
    pub gate_up_w: DeviceTensor,
    pub down_w: DeviceTensor,
}

pub struct ModelWeights {
    /// [vision hidden, 3 * 14 * 14]: the patch convolution as a GEMM weight.
    pub patch_w: DeviceTensor,
    pub patch_b: DeviceTensor,
    /// [side * side, vision hidden].
    pub pos_table: DeviceTensor,
    pub vision: Vec<VisionLayerWeights>,
    pub post_ln_w: DeviceTensor,
    pub post_ln_b: DeviceTensor,
    pub proj_ln_w: DeviceTensor,
    pub proj_ln_b: DeviceTensor,
    pub proj_l1_w: DeviceTensor,
    pub proj_l1_b: DeviceTensor,
    pub proj_l2_w: DeviceTensor,
    pub proj_l2_b: DeviceTensor,
    pub embed: DeviceTensor,
    pub text: Vec<TextLayerWeights>,
    pub norm: DeviceTensor,
    /// None when the checkpoint ties lm_head to the embedding.
    lm_head: Option<DeviceTensor>,
    /// Which attention kernels the forwards use (FA2 after upload; the model runner sets the
    /// version `FLAGS_flash_attn_version` resolves to).
    pub attention: AttentionKernels,
}

/// Uploads host tensors, concatenated along dim 0, as one device tensor of `dims`.
struct Uploader<'a, 'w> {
    gpu: &'a Gpu,
    host: &'a ValidatedWeights<'w>,
}

impl Uploader<'_, '_> {
    fn cat(&self, names: &[String], dims: &[usize]) -> Result<DeviceTensor> {
        let mut bytes = Vec::new();
        for name in names {
            let t = self
                .host
                .get(name)
                .ok_or_else(|| Error::invalid("load weights", format!("missing tensor {name}")))?;
            if t.dtype != DType::BF16 {
                return Err(Error::invalid(
                    "load weights",
                    format!("{name} is {}, expected bf16", t.dtype),
                ));
            }
            bytes.extend_from_slice(t.data);
        }
        if bytes.len() != dims.iter().product::<usize>() * 2 {
            return Err(Error::invalid(
                "load weights",
                format!("{names:?} do not make {dims:?}"),
            ));
        }
        DeviceTensor::from_bytes(self.gpu, DType::BF16, dims, &bytes)
    }

    fn one(&self, name: &str) -> Result<DeviceTensor> {
        let t = self
            .host
            .get(name)
            .ok_or_else(|| Error::invalid("load weights", format!("missing tensor {name}")))?;
        // The patch convolution [out, 3, 14, 14] is used as a GEMM weight [out, 588].
        let dims: Vec<usize> = if t.shape.len() == 4 {
            vec![t.shape[0], t.shape[1..].iter().product()]
        } else {
            t.shape.to_vec()
        };
        DeviceTensor::from_bytes(self.gpu, t.dtype, &dims, t.data)
    }
}

impl ModelWeights {
    pub fn upload(gpu: &Gpu, cfg: &ModelConfig, host: &ValidatedWeights<'_>) -> Result<ModelWeights> {
        let up = Uploader { gpu, host };
        let (vc, tc) = (&cfg.vision, &cfg.text);
        let vh = vc.hidden_size;
        let vp = |s: &str| format!("visual.vision_model.{s}");
        let vision = (0..vc.num_hidden_layers)
            .map(|l| {
                let n = |s: &str| vision_layer(l, s);
                Ok(VisionLayerWeights {
                    ln1_w: up.one(&n("layer_norm1.weight"))?,
                    ln1_b: up.one(&n("layer_norm1.bias"))?,
                    qkv_w: up.cat(
                        &[
                            n("self_attn.q_proj.weight"),
                            n("self_attn.k_proj.weight"),
                            n("self_attn.v_proj.weight"),
                        ],
                        &[3 * vh, vh],
                    )?,
                    qkv_b: up.cat(
                        &[
                            n("self_attn.q_proj.bias"),
                            n("self_attn.k_proj.bias"),
                            n("self_attn.v_proj.bias"),
                        ],
                        &[3 * vh],
                    )?,
                    out_w: up.one(&n("self_attn.out_proj.weight"))?,
                    out_b: up.one(&n("self_attn.out_proj.bias"))?,
                    ln2_w: up.one(&n("layer_norm2.weight"))?,
                    ln2_b: up.one(&n("layer_norm2.bias"))?,
                    fc1_w: up.one(&n("mlp.fc1.weight"))?,
                    fc1_b: up.one(&n("mlp.fc1.bias"))?,
                    fc2_w: up.one(&n("mlp.fc2.weight"))?,
                    fc2_b: up.one(&n("mlp.fc2.bias"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let th = tc.hidden_size;
        let qkv_rows = tc.q_width() + 2 * tc.kv_width();
        let text = (0..tc.num_hidden_layers)
            .map(|l| {
                let n = |s: &str| text_layer(l, s);
                Ok(TextLayerWeights {
                    input_ln: up.one(&n("input_layernorm.weight"))?,
                    qkv_w: up.cat(
                        &[
                            n("self_attn.q_proj.weight"),
                            n("self_attn.k_proj.weight"),
                            n("self_attn.v_proj.weight"),
                        ],
                        &[qkv_rows, th],
                    )?,
                    o_w: up.one(&n("self_attn.o_proj.weight"))?,
                    post_ln: up.one(&n("post_attention_layernorm.weight"))?,
                    gate_up_w: up.cat(
                        &[n("mlp.gate_proj.weight"), n("mlp.up_proj.weight")],
                        &[2 * tc.intermediate_size, th],
                    )?,
                    down_w: up.one(&n("mlp.down_proj.weight"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelWeights {
            patch_w: up.one(&vp("embeddings.patch_embedding.weight"))?,
            patch_b: up.one(&vp("embeddings.patch_embedding.bias"))?,
            pos_table: up.one(&vp("embeddings.position_embedding.weight"))?,
            vision,
            post_ln_w: up.one(&vp("post_layernorm.weight"))?,
            post_ln_b: up.one(&vp("post_layernorm.bias"))?,
            proj_ln_w: up.one("mlp_AR.pre_norm.weight")?,
            proj_ln_b: up.one("mlp_AR.pre_norm.bias")?,
            proj_l1_w: up.one("mlp_AR.linear_1.weight")?,
            proj_l1_b: up.one("mlp_AR.linear_1.bias")?,
            proj_l2_w: up.one("mlp_AR.linear_2.weight")?,
            proj_l2_b: up.one("mlp_AR.linear_2.bias")?,
            embed: up.one(EMBED_TOKENS)?,
            text,
            norm: up.one("model.norm.weight")?,
            lm_head: if host.lm_head_tied() {
                None
            } else {
                Some(up.one(LM_HEAD)?)
            },
            attention: AttentionKernels::default(),
        })
    }

    /// [vocab, hidden]: lm_head, or the embedding when tied.
    pub fn lm_head(&self) -> TensorView<'_> {
        self.lm_head.as_ref().unwrap_or(&self.embed).view()
    }

    pub fn total_bytes(&self) -> usize {
        let v: usize = self
            .vision
            .iter()
            .map(|l| {
                [
                    &l.ln1_w, &l.ln1_b, &l.qkv_w, &l.qkv_b, &l.out_w, &l.out_b, &l.ln2_w, &l.ln2_b, &l.fc1_w, &l.fc1_b,
                    &l.fc2_w, &l.fc2_b,
                ]
                .iter()
                .map(|t| t.nbytes())
                .sum::<usize>()
            })
            .sum();
        let t: usize = self
            .text
            .iter()
            .map(|l| {
                [&l.input_ln, &l.qkv_w, &l.o_w, &l.post_ln, &l.gate_up_w, &l.down_w]
                    .iter()
                    .map(|t| t.nbytes())
                    .sum::<usize>()
            })
            .sum();
        let rest = [
            &self.patch_w,
            &self.patch_b,
            &self.pos_table,
            &self.post_ln_w,
            &self.post_ln_b,
            &self.proj_ln_w,
            &self.proj_ln_b,
            &self.proj_l1_w,
            &self.proj_l1_b,
            &self.proj_l2_w,
            &self.proj_l2_b,
            &self.embed,
            &self.norm,
        ]
        .iter()
        .map(|t| t.nbytes())
        .sum::<usize>();
        v + t + rest + self.lm_head.as_ref().map_or(0, |t| t.nbytes())
    }
}
