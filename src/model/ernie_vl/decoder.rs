//! The ERNIE-4.5-VL language model on the GPU (docs/ERNIE_4_5_VL_SPEC.md §3.8–§3.13), one
//! engine step over a flat batch: decode tokens first, then prefill chunks, K/V written to the
//! block-paged cache before attention, as PaddleOCR-VL's decoder does (`model::text`). What
//! differs: the 3D rotary with interleaved pairs, GQA 20:4 at head_dim 128, and the
//! feed-forward, dense in layer 0 and the MoE block (two expert pools) in the others, each
//! token in the pool `token_pool` names.
//!
//! Per layer (pre-norm, residual stream `res` in bf16):
//! ```text
//! qkv = y·Wqkvᵀ                          one GEMM                   [T, q + 2·kv]
//! rope3d(q, k) + write_kv(k, v → cache)   one launch; interleaved pairs, H/W/T
//! o   = attention(q, cache)              decode | prefill           [T, q]
//! y   = rmsnorm(res += o·Woᵀ, post_ln)
//! d   = dense SwiGLU(y) | moe_block(y, token_pool)                  [T, H]
//! y   = rmsnorm(res += d, next input_ln)  or the final norm
//! ```
//! Then the rows that need logits go through lm_head (the tied embedding in 28B-A3B).

use super::moe_block::{moe_block, MoeScratch};
use super::text_weights::{ErnieTextWeights, FeedForward};
use crate::config::ErnieVlConfig;
use crate::error::{Error, Result};
use crate::kernels::attention::AttentionKernels;
use crate::kernels::elementwise::silu_mul;
use crate::kernels::norm::{rmsnorm, rmsnorm_add};
use crate::kernels::rope::{mrope_interleaved_and_cache, CacheWrite};
use crate::model::text::{
    check_step, embed_step, paged_attention, step_logits, DecodePath, DecoderDims, KvCache, StepBuffers, StepInputs,
};
use crate::runtime::{DType, DeviceTensor, Epilogue, Gemm, Gpu, TensorView, TensorViewMut, Workspace};

/// The block-paged KV cache of every layer, `[blocks, kv_heads, block_size, head_dim]` bf16.
pub fn new_kv_cache(gpu: &Gpu, cfg: &ErnieVlConfig, num_blocks: usize, block_size: usize) -> Result<KvCache> {
    let t = &cfg.text;
    let dims = [num_blocks, t.num_key_value_heads, block_size, t.head_dim];
    let mut k = Vec::with_capacity(t.num_hidden_layers);
    let mut v = Vec::with_capacity(t.num_hidden_layers);
    for _ in 0..t.num_hidden_layers {
        k.push(DeviceTensor::alloc(gpu, DType::BF16, &dims)?);
        v.push(DeviceTensor::alloc(gpu, DType::BF16, &dims)?);
    }
    Ok(KvCache {
        k,
        v,
        num_blocks,
        block_size,
    })
}

/// Bytes of one KV block over all layers, K and V (28B-A3B: 56 KiB per token).
pub fn kv_bytes_per_block(cfg: &ErnieVlConfig, block_size: usize) -> usize {
    let t = &cfg.text;
    2 * t.num_hidden_layers * t.num_key_value_heads * block_size * t.head_dim * 2
}

/// The decoder's sizes (the dense layer's SwiGLU width for the shared buffers).
pub fn dims(cfg: &ErnieVlConfig) -> DecoderDims {
    let t = &cfg.text;
    DecoderDims {
        hidden: t.hidden_size,
        q_width: t.q_width(),
        kv_width: t.kv_width(),
        intermediate: t.intermediate_size,
        heads: t.num_attention_heads,
        head_dim: t.head_dim,
        vocab: t.vocab_size,
    }
}

/// Workspace bytes of [`forward`] (the MoE block's intermediates live in its [`MoeScratch`]).
pub fn workspace_bytes(cfg: &ErnieVlConfig, tokens: usize, logit_rows: usize, decode_seqs: usize) -> usize {
    dims(cfg).workspace_bytes(tokens, logit_rows, decode_seqs)
}

/// Pairs of the head that turn by the H and W positions (the rest take T): 44 of 64.
pub fn rope_section_hw(cfg: &ErnieVlConfig) -> usize {
    cfg.text.mrope_section[0] + cfg.text.mrope_section[1]
}

/// One decoder step: f32 logits `[S, vocab]` of `inputs.logits_rows` into `logits`.
/// `token_pool`: i32 `[T]`, 0 text / 1 vision per token of the batch (`token_pools`; decode
/// tokens are text). `moe`: the MoE block's scratch, sized for at least `T` tokens (None only
/// for a model without MoE layers). `decode_path`: how decode rows are attended (the paged
/// decode kernel, for GQA groups of 1..8 at head_dim 128; [`DecodePath::Prefill`] otherwise).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    gpu: &Gpu,
    gemm: &mut Gemm,
    ws: &Workspace,
    cfg: &ErnieVlConfig,
    w: &ErnieTextWeights,
    attention: AttentionKernels,
    cache: &mut KvCache,
    inputs: &StepInputs<'_>,
    token_pool: &TensorView<'_>,
    mut moe: Option<&mut MoeScratch>,
    decode_path: DecodePath<'_>,
    embed_error: &mut TensorViewMut<'_>,
    logits: &mut TensorViewMut<'_>,
) -> Result<()> {
    const OP: &str = "ernie text forward";
    let t = &cfg.text;
    let hd = t.head_dim;
    let (qw, kvw) = (t.q_width(), t.kv_width());
    let tokens = check_step(OP, inputs, t.vocab_size, logits)?;
    if token_pool.dtype() != DType::I32 || token_pool.numel() != tokens {
        return Err(Error::invalid(
            OP,
            format!(
                "token_pool is {} [{}]; expected i32 [{tokens}]",
                token_pool.dtype(),
                token_pool.numel()
            ),
        ));
    }
    if w.layers.len() != t.num_hidden_layers || cache.k.len() != t.num_hidden_layers {
        return Err(Error::invalid(
            OP,
            format!(
                "{} weight layers and {} cache layers for a {}-layer model",
                w.layers.len(),
                cache.k.len(),
                t.num_hidden_layers
            ),
        ));
    }
    let eps = t.rms_norm_eps as f32;
    let scale = 1.0 / (hd as f32).sqrt();
    let section_hw = rope_section_hw(cfg);

    let mut res = embed_step(gpu, ws, &w.embed.view(), inputs, embed_error)?;
    let StepBuffers {
        mut y,
        mut qkv,
        mut o,
        mut delta,
        mut gate_up,
        mut act,
        mut decode_ws,
    } = StepBuffers::alloc(ws, &dims(cfg), tokens, inputs.num_decode)?;

    rmsnorm(gpu, &mut y, &res.as_view(), &w.layers[0].input_ln.view(), eps)?;
    for (l, lw) in w.layers.iter().enumerate() {
        gemm.matmul(
            gpu,
            &mut qkv,
            &y.as_view(),
            &lw.qkv_w.view(),
            None,
            Epilogue::None,
            false,
        )?;
        {
            let [mut q, mut k, v] = qkv.reborrow().split_columns([qw, kvw, kvw])?;
            // Rope and the cache write in one launch (kernels/rope/rope.cuh, CacheSink).
            let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
            mrope_interleaved_and_cache(
                gpu,
                &mut q,
                &mut k,
                &inputs.positions,
                hd,
                section_hw,
                t.rope_theta as f32,
                CacheWrite {
                    k_cache: &mut kc.view_mut(),
                    v_cache: &mut vc.view_mut(),
                    v: &v.as_view(),
                    slot_mapping: &inputs.slot_mapping,
                },
            )?;
        }
        let q_all = qkv.as_view().columns(0, qw)?;
        paged_attention(
            gpu,
            &mut o,
            &q_all,
            cache,
            l,
            inputs,
            scale,
            attention,
            decode_path,
            &mut decode_ws,
        )?;
        gemm.matmul(
            gpu,
            &mut delta,
            &o.as_view(),
            &lw.o_w.view(),
            None,
            Epilogue::None,
            false,
        )?;
        rmsnorm_add(gpu, &mut y, &delta.as_view(), &mut res, &lw.post_ln.view(), eps)?;
        match &lw.ffn {
            FeedForward::Dense(d) => {
                gemm.matmul(
                    gpu,
                    &mut gate_up,
                    &y.as_view(),
                    &d.gate_up_w.view(),
                    None,
                    Epilogue::None,
                    false,
                )?;
                silu_mul(gpu, &mut act, &gate_up.as_view())?;
                gemm.matmul(
                    gpu,
                    &mut delta,
                    &act.as_view(),
                    &d.down_w.view(),
                    None,
                    Epilogue::None,
                    false,
                )?;
            }
            FeedForward::Moe(m) => {
                let scratch = moe.as_deref_mut().ok_or_else(|| {
                    Error::invalid(OP, format!("layer {l} is an MoE layer and no MoE scratch was given"))
                })?;
                moe_block(gpu, gemm, &mut delta, &y.as_view(), token_pool, &m.views(), scratch)?;
            }
        }
        let next_norm = w.layers.get(l + 1).map_or(&w.norm, |n| &n.input_ln);
        rmsnorm_add(gpu, &mut y, &delta.as_view(), &mut res, &next_norm.view(), eps)?;
    }

    step_logits(gpu, gemm, ws, &y.as_view(), &inputs.logits_rows, &w.lm_head(), logits)
}
