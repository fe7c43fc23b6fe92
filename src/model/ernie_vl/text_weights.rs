//! The ERNIE-4.5-VL language model's weights on the GPU, laid out for [`super::decoder`]:
//!
//! | tensor | layout | from the hub (spec §4.2) |
//! |---|---|---|
//! | `qkv_w` | bf16 `[q + 2·kv, H]` | q_proj, k_proj, v_proj rows concatenated (one GEMM) |
//! | `o_w` | bf16 `[H, q]` | o_proj |
//! | dense `gate_up_w` | bf16 `[2·I, H]` | gate_proj rows, then up_proj rows (`silu_mul`'s order) |
//! | dense `down_w` | bf16 `[H, I]` | down_proj |
//! | MoE | see [`super::moe_weights`] | routers transposed to f32, experts interleaved and padded; with `--quantization wint8` the experts int8 with f32 row scales ([`crate::model::quantize`]) |
//! | `lm_head` | the embedding when tied | `lm_head.weight` otherwise |
//!
//! Concatenation and rearrangement happen on the host from the memory-mapped files; every
//! byte is uploaded once.

use super::moe_block::{ExpertPoolWeights, MoeBlockShape, MoeBlockWeights};
use super::moe_weights::{moe_layer_host, MoeLayerHost};
use super::names::{text_layer, EMBED_TOKENS};
use crate::config::{ErnieVlConfig, Quantization};
use crate::error::{Error, Result};
use crate::model::names::LM_HEAD;
use crate::model::quantize::{quantize_rows_int8, Int8Rows};
use crate::model::weights::ValidatedWeights;
use crate::runtime::{DType, DeviceTensor, Gpu, TensorView};

const OP: &str = "ernie text weights";

/// One MoE block's device tensors (see [`super::moe_weights::MoeLayerHost`]).
pub struct MoeLayerDevice {
    pub router: DeviceTensor,
    pub correction_bias: DeviceTensor,
    /// Per pool: `[E, 2·Ip, H]` and `[E, H, Ip]`, bf16, or int8 with `scales`.
    pub gate_up: Vec<DeviceTensor>,
    pub down: Vec<DeviceTensor>,
    /// `--quantization wint8`: per pool the f32 row scales of gate/up `[E, 2·Ip]` and down
    /// `[E, H]`; empty for bf16 experts.
    pub scales: Vec<(DeviceTensor, DeviceTensor)>,
    pub shared_gate_up: Option<DeviceTensor>,
    pub shared_down: Option<DeviceTensor>,
    /// The block's sizes, padded widths included.
    pub shape: MoeBlockShape,
}

impl MoeLayerDevice {
    /// The views `moe_block` reads.
    pub fn views(&self) -> MoeBlockWeights<'_> {
        MoeBlockWeights {
            router: self.router.view(),
            correction_bias: self.correction_bias.view(),
            pools: self
                .gate_up
                .iter()
                .zip(&self.down)
                .enumerate()
                .map(|(p, (gu, d))| ExpertPoolWeights {
                    gate_up: gu.view(),
                    down: d.view(),
                    scales: self.scales.get(p).map(|(gs, ds)| (gs.view(), ds.view())),
                })
                .collect(),
            shared_gate_up: self.shared_gate_up.as_ref().map(|t| t.view()),
            shared_down: self.shared_down.as_ref().map(|t| t.view()),
        }
    }

    fn nbytes(&self) -> usize {
        let opt = |t: &Option<DeviceTensor>| t.as_ref().map_or(0, |t| t.nbytes());
        self.router.nbytes()
            + self.correction_bias.nbytes()
            + self.gate_up.iter().chain(&self.down).map(|t| t.nbytes()).sum::<usize>()
            + self.scales.iter().map(|(g, d)| g.nbytes() + d.nbytes()).sum::<usize>()
            + opt(&self.shared_gate_up)
            + opt(&self.shared_down)
    }
}

/// The dense SwiGLU: `[2·I, H]` gate rows then up rows, and `[H, I]`.
pub struct DenseFfn {
    pub gate_up_w: DeviceTensor,
    pub down_w: DeviceTensor,
}

/// A decoder layer's feed-forward: the dense SwiGLU (layer 0 of 28B-A3B) or the MoE block.
pub enum FeedForward {
    Dense(Box<DenseFfn>),
    Moe(Box<MoeLayerDevice>),
}

pub struct ErnieTextLayer {
    pub input_ln: DeviceTensor,
    pub qkv_w: DeviceTensor,
    pub o_w: DeviceTensor,
    pub post_ln: DeviceTensor,
    pub ffn: FeedForward,
}

pub struct ErnieTextWeights {
    pub embed: DeviceTensor,
    pub layers: Vec<ErnieTextLayer>,
    pub norm: DeviceTensor,
    /// None when tied to the embedding.
    lm_head: Option<DeviceTensor>,
}

impl ErnieTextWeights {
    pub fn upload(
        gpu: &Gpu,
        cfg: &ErnieVlConfig,
        host: &ValidatedWeights<'_>,
        quantization: Quantization,
    ) -> Result<ErnieTextWeights> {
        let t = &cfg.text;
        let h = t.hidden_size;
        let mut moe = upload_moe_layers(gpu, cfg, host, quantization)?;
        let layers = (0..t.num_hidden_layers)
            .map(|l| {
                let n = |s: &str| text_layer(l, s);
                let ffn = if let Some(m) = moe[l].take() {
                    FeedForward::Moe(Box::new(m))
                } else {
                    FeedForward::Dense(Box::new(DenseFfn {
                        gate_up_w: cat(
                            gpu,
                            host,
                            &[n("mlp.gate_proj.weight"), n("mlp.up_proj.weight")],
                            &[2 * t.intermediate_size, h],
                        )?,
                        down_w: one(gpu, host, &n("mlp.down_proj.weight"))?,
                    }))
                };
                Ok(ErnieTextLayer {
                    input_ln: one(gpu, host, &n("input_layernorm.weight"))?,
                    qkv_w: cat(
                        gpu,
                        host,
                        &[
                            n("self_attn.q_proj.weight"),
                            n("self_attn.k_proj.weight"),
                            n("self_attn.v_proj.weight"),
                        ],
                        &[t.q_width() + 2 * t.kv_width(), h],
                    )?,
                    o_w: one(gpu, host, &n("self_attn.o_proj.weight"))?,
                    post_ln: one(gpu, host, &n("post_attention_layernorm.weight"))?,
                    ffn,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ErnieTextWeights {
            embed: one(gpu, host, EMBED_TOKENS)?,
            layers,
            norm: one(gpu, host, "model.norm.weight")?,
            lm_head: if cfg.tie_word_embeddings {
                None
            } else {
                Some(one(gpu, host, LM_HEAD)?)
            },
        })
    }

    /// bf16 `[vocab, H]`: lm_head, or the embedding when tied.
    pub fn lm_head(&self) -> TensorView<'_> {
        self.lm_head.as_ref().unwrap_or(&self.embed).view()
    }

    pub fn total_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let ffn = match &l.ffn {
                    FeedForward::Dense(d) => d.gate_up_w.nbytes() + d.down_w.nbytes(),
                    FeedForward::Moe(m) => m.nbytes(),
                };
                l.input_ln.nbytes() + l.qkv_w.nbytes() + l.o_w.nbytes() + l.post_ln.nbytes() + ffn
            })
            .sum();
        layers + self.embed.nbytes() + self.norm.nbytes() + self.lm_head.as_ref().map_or(0, |t| t.nbytes())
    }
}

/// The MoE shape of layer `layer` with the padded expert widths the upload used.
pub fn moe_shape(cfg: &ErnieVlConfig, pool_inter: Vec<usize>, shared_inter: usize) -> MoeBlockShape {
    MoeBlockShape {
        hidden: cfg.text.hidden_size,
        experts_per_pool: cfg.moe.num_experts,
        pool_inter,
        shared_inter,
        top_k: cfg.moe.top_k,
        norm_min: cfg.moe.norm_min as f32,
    }
}

/// Every MoE layer's weights on the GPU, indexed by layer (None for a dense layer). The host
/// rearrangement (`moe_layer_host`: ~2 GB of expert weights per 28B-A3B layer, copied, padded
/// and interleaved) runs for a batch of layers at once on up to 8 threads. The uploads stay on
/// this thread, in layer order. On one thread it was most of the full model's 83 s start-up
/// (round 8). Host memory peaks at about one batch of rearranged layers (16 GB at 8 threads).
/// With `--quantization wint8` each thread also quantises its layer's experts.
fn upload_moe_layers(
    gpu: &Gpu,
    cfg: &ErnieVlConfig,
    host: &ValidatedWeights<'_>,
    quantization: Quantization,
) -> Result<Vec<Option<MoeLayerDevice>>> {
    let count = cfg.text.num_hidden_layers;
    let moe_layers: Vec<usize> = (0..count).filter(|&l| cfg.moe.is_moe_layer(l)).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let mut out: Vec<Option<MoeLayerDevice>> = (0..count).map(|_| None).collect();
    for batch in moe_layers.chunks(threads) {
        let hosts: Vec<Result<PreparedMoe>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&l| scope.spawn(move || prepare_moe(cfg, l, host, quantization)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::invalid(OP, "a thread preparing MoE weights panicked")))
                })
                .collect()
        });
        for (&l, m) in batch.iter().zip(hosts) {
            out[l] = Some(upload_moe(gpu, cfg, m?)?);
        }
    }
    Ok(out)
}

/// A MoE layer ready to upload: the host layout, and with `--quantization wint8` each pool's
/// experts quantised (gate/up rows of `H`, down rows of `Ip`; the bf16 copies then dropped).
struct PreparedMoe {
    host: MoeLayerHost,
    int8: Vec<(Int8Rows, Int8Rows)>,
}

fn prepare_moe(
    cfg: &ErnieVlConfig,
    layer: usize,
    weights: &ValidatedWeights<'_>,
    quantization: Quantization,
) -> Result<PreparedMoe> {
    let mut host = moe_layer_host(cfg, layer, weights)?;
    let mut int8 = vec![];
    if quantization == Quantization::ExpertsInt8 {
        let h = cfg.text.hidden_size;
        for p in 0..host.pool_inter.len() {
            let what = |w: &str| format!("layer {layer} pool {p} experts' {w}");
            let gate_up = quantize_rows_int8(&what("gate/up"), &std::mem::take(&mut host.gate_up[p]), h)?;
            let down = quantize_rows_int8(&what("down"), &std::mem::take(&mut host.down[p]), host.pool_inter[p])?;
            int8.push((gate_up, down));
        }
    }
    Ok(PreparedMoe { host, int8 })
}

fn upload_moe(gpu: &Gpu, cfg: &ErnieVlConfig, prepared: PreparedMoe) -> Result<MoeLayerDevice> {
    let PreparedMoe { host: m, int8 } = prepared;
    let (h, e) = (cfg.text.hidden_size, cfg.moe.num_experts);
    let pools = m.pool_inter.len();
    let mut gate_up = Vec::with_capacity(pools);
    let mut down = Vec::with_capacity(pools);
    let mut scales = Vec::with_capacity(int8.len());
    for p in 0..pools {
        let ip = m.pool_inter[p];
        if let Some((gu, d)) = int8.get(p) {
            gate_up.push(DeviceTensor::from_host(gpu, &[e, 2 * ip, h], &gu.q)?);
            down.push(DeviceTensor::from_host(gpu, &[e, h, ip], &d.q)?);
            scales.push((
                DeviceTensor::from_host(gpu, &[e, 2 * ip], &gu.scales)?,
                DeviceTensor::from_host(gpu, &[e, h], &d.scales)?,
            ));
        } else {
            gate_up.push(DeviceTensor::from_host(gpu, &[e, 2 * ip, h], &m.gate_up[p])?);
            down.push(DeviceTensor::from_host(gpu, &[e, h, ip], &m.down[p])?);
        }
    }
    let si = m.shared_inter;
    Ok(MoeLayerDevice {
        router: DeviceTensor::from_host(gpu, &[pools * e, h], &m.router)?,
        correction_bias: DeviceTensor::from_host(gpu, &[pools, e], &m.correction_bias)?,
        gate_up,
        down,
        scales,
        shared_gate_up: m
            .shared_gate_up
            .as_ref()
            .map(|v| DeviceTensor::from_host(gpu, &[2 * si, h], v))
            .transpose()?,
        shared_down: m
            .shared_down
            .as_ref()
            .map(|v| DeviceTensor::from_host(gpu, &[h, si], v))
            .transpose()?,
        shape: moe_shape(cfg, m.pool_inter.clone(), si),
    })
}

/// A bf16 tensor as stored.
fn one(gpu: &Gpu, host: &ValidatedWeights<'_>, name: &str) -> Result<DeviceTensor> {
    let t = host
        .get(name)
        .ok_or_else(|| Error::invalid(OP, format!("missing tensor {name}")))?;
    if t.dtype != DType::BF16 {
        return Err(Error::invalid(OP, format!("{name} is {}, expected bf16", t.dtype)));
    }
    DeviceTensor::from_bytes(gpu, t.dtype, t.shape, t.data)
}

/// bf16 tensors concatenated along dim 0 into one of `dims`.
fn cat(gpu: &Gpu, host: &ValidatedWeights<'_>, names: &[String], dims: &[usize]) -> Result<DeviceTensor> {
    let mut bytes = Vec::with_capacity(dims.iter().product::<usize>() * 2);
    for name in names {
        let t = host
            .get(name)
            .ok_or_else(|| Error::invalid(OP, format!("missing tensor {name}")))?;
        if t.dtype != DType::BF16 {
            return Err(Error::invalid(OP, format!("{name} is {}, expected bf16", t.dtype)));
        }
        bytes.extend_from_slice(t.data);
    }
    if bytes.len() != dims.iter().product::<usize>() * 2 {
        return Err(Error::invalid(OP, format!("{names:?} do not make {dims:?}")));
    }
    DeviceTensor::from_bytes(gpu, DType::BF16, dims, &bytes)
}
