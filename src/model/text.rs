//! The ERNIE-4.5-0.3B decoder on the GPU (MODEL_SPEC.md §3.8–§3.11), one engine step over a
//! flat batch of tokens: first the decode tokens (one per decoding sequence), then the prefill
//! chunks (a run of tokens per sequence). K/V go to the block-paged cache before attention; the
//! decode tokens use the paged decode kernel and the chunks the paged prefill kernel, so one
//! step mixes both.
//!
//! Per layer (pre-norm, residual stream `res` in bf16):
//! ```text
//! qkv = y·Wqkvᵀ                          one GEMM               [T, 2048+256+256]
//! mrope(q, k) + write_kv(k, v → cache)   one launch
//! o   = attention(q, cache)              decode | prefill       [T, 2048]
//! d   = o·Woᵀ
//! y   = rmsnorm(res += d, post_ln)       fused add + RMSNorm
//! a   = silu(g) * u,  [g|u] = y·Wguᵀ     one GEMM + silu_mul    [T, 3072]
//! d   = a·Wdᵀ
//! y   = rmsnorm(res += d, next in_ln)    or the final norm after the last layer
//! ```
//! Then the rows that need logits are gathered and multiplied by lm_head into f32 logits.

use super::gpu_weights::ModelWeights;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::attention::{prefill_paged_version, AttentionKernels, PagedKv, Varlen};
use crate::kernels::decode::{self, decode_paged};
use crate::kernels::elementwise::silu_mul;
use crate::kernels::embedding::{embedding_gather, scatter_rows};
use crate::kernels::norm::{rmsnorm, rmsnorm_add};
use crate::kernels::rope::{mrope_and_cache, CacheWrite};
use crate::runtime::{DType, DeviceTensor, Epilogue, Gemm, Gpu, TensorView, TensorViewMut, Workspace};

/// The block-paged KV cache of every layer: K and V each
/// `[num_blocks, num_kv_heads, block_size, head_dim]` bf16 (layout in kernels/include/kv_cache.h).
pub struct KvCache {
    pub k: Vec<DeviceTensor>,
    pub v: Vec<DeviceTensor>,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl KvCache {
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, num_blocks: usize, block_size: usize) -> Result<KvCache> {
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

    /// Bytes one block takes over all layers, K and V.
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize) -> usize {
        let t = &cfg.text;
        2 * t.num_hidden_layers * t.num_key_value_heads * block_size * t.head_dim * 2
    }
}

/// Device views of one step's inputs, built and uploaded by the caller (the engine).
pub struct StepInputs<'a> {
    /// i32 [T]: token ids; image placeholder rows are overwritten by `image_rows`.
    pub ids: TensorView<'a>,
    /// i32 [3, T]: M-RoPE positions (T, H, W rows).
    pub positions: TensorView<'a>,
    /// i32 [T]: cache slot of each token.
    pub slot_mapping: TensorView<'a>,
    /// The first `num_decode` tokens are single decode tokens of `num_decode` sequences.
    pub num_decode: usize,
    /// i32 [num_decode, max_blocks]; i32 [num_decode] keys per sequence (the new one included).
    pub decode_block_tables: Option<TensorView<'a>>,
    pub decode_seq_lens: Option<TensorView<'a>>,
    pub decode_max_len: usize,
    /// Split-KV count for the decode kernel; `None` lets its heuristic choose from
    /// `decode_max_len`. A captured graph fixes it, as the grid depends on it.
    pub decode_splits: Option<usize>,
    /// Prefill chunks over tokens `num_decode..T`: i32 [num_prefill + 1] offsets relative to
    /// `num_decode`, i32 [num_prefill, max_blocks], i32 [num_prefill] keys per sequence.
    pub prefill_cu_seqlens: Option<TensorView<'a>>,
    pub prefill_max_q: usize,
    pub prefill_block_tables: Option<TensorView<'a>>,
    pub prefill_seqused_k: Option<TensorView<'a>>,
    /// Image tokens to place: i32 [n] rows of the batch, bf16 [n, hidden] features.
    pub image_rows: Option<(TensorView<'a>, TensorView<'a>)>,
    /// i32 [S]: the rows whose logits are wanted, in output order.
    pub logits_rows: TensorView<'a>,
}

/// The sizes a decoder step's buffers follow (PaddleOCR-VL's and ERNIE-4.5-VL's decoders).
#[derive(Clone, Copy, Debug)]
pub struct DecoderDims {
    pub hidden: usize,
    pub q_width: usize,
    pub kv_width: usize,
    /// The dense SwiGLU width (the MoE block keeps its own scratch).
    pub intermediate: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

impl DecoderDims {
    /// Bytes of workspace a step of `tokens` tokens and `logit_rows` logits rows needs.
    pub fn workspace_bytes(&self, tokens: usize, logit_rows: usize, decode_seqs: usize) -> usize {
        let qkv = self.q_width + 2 * self.kv_width;
        let elems = tokens * (self.hidden * 3 + qkv + self.q_width + 3 * self.intermediate) + logit_rows * self.hidden;
        let decode_ws =
            decode::decode_workspace_bytes(decode_seqs.max(1), self.heads, self.head_dim, decode::MAX_SPLITS);
        elems * 2 + logit_rows * self.vocab * 4 + decode_ws + 16 * 256
    }
}

/// PaddleOCR-VL's decoder sizes.
fn dims(cfg: &ModelConfig) -> DecoderDims {
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

/// Bytes of workspace [`forward`] needs for `tokens` tokens and `logit_rows` logits rows.
pub fn workspace_bytes(cfg: &ModelConfig, tokens: usize, logit_rows: usize, decode_seqs: usize) -> usize {
    dims(cfg).workspace_bytes(tokens, logit_rows, decode_seqs)
}

/// A step's intermediates, taken from the workspace in one fixed order (after the residual
/// stream [`embed_step`] takes): bf16 `y`, `delta` `[T, hidden]`, `qkv` `[T, q + 2·kv]`, `o`
/// `[T, q]`, `gate_up` `[T, 2·I]`, `act` `[T, I]`, and the decode kernel's f32 workspace.
pub struct StepBuffers<'w> {
    pub y: TensorViewMut<'w>,
    pub qkv: TensorViewMut<'w>,
    pub o: TensorViewMut<'w>,
    pub delta: TensorViewMut<'w>,
    pub gate_up: TensorViewMut<'w>,
    pub act: TensorViewMut<'w>,
    pub decode_ws: TensorViewMut<'w>,
}

impl<'w> StepBuffers<'w> {
    pub fn alloc(ws: &'w Workspace, d: &DecoderDims, tokens: usize, num_decode: usize) -> Result<StepBuffers<'w>> {
        let y = ws.alloc(DType::BF16, &[tokens, d.hidden])?;
        let qkv = ws.alloc(DType::BF16, &[tokens, d.q_width + 2 * d.kv_width])?;
        let o = ws.alloc(DType::BF16, &[tokens, d.q_width])?;
        let delta = ws.alloc(DType::BF16, &[tokens, d.hidden])?;
        let gate_up = ws.alloc(DType::BF16, &[tokens, 2 * d.intermediate])?;
        let act = ws.alloc(DType::BF16, &[tokens, d.intermediate])?;
        let decode_bytes = if num_decode > 0 {
            decode::decode_workspace_bytes(num_decode, d.heads, d.head_dim, decode::MAX_SPLITS)
        } else {
            0
        };
        let decode_ws = ws.alloc(DType::F32, &[decode_bytes.div_ceil(4).max(1)])?;
        Ok(StepBuffers {
            y,
            qkv,
            o,
            delta,
            gate_up,
            act,
            decode_ws,
        })
    }
}

/// One decoder step: writes f32 logits [S, vocab] for `inputs.logits_rows` into `logits`.
/// `embed_error`: i32 [1], set to an out-of-range token id if the batch had one (checked by
/// the caller with `take_embedding_error`).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    gpu: &Gpu,
    gemm: &mut Gemm,
    ws: &Workspace,
    cfg: &ModelConfig,
    w: &ModelWeights,
    cache: &mut KvCache,
    inputs: &StepInputs<'_>,
    embed_error: &mut TensorViewMut<'_>,
    logits: &mut TensorViewMut<'_>,
) -> Result<()> {
    const OP: &str = "text forward";
    let t = &cfg.text;
    let hd = t.head_dim;
    let (qw, kvw) = (t.q_width(), t.kv_width());
    let tokens = check_step(OP, inputs, t.vocab_size, logits)?;
    let eps = t.rms_norm_eps as f32;
    let sections = t.mrope_section.map(|v| v as u32);
    let scale = 1.0 / (hd as f32).sqrt();

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

    rmsnorm(gpu, &mut y, &res.as_view(), &w.text[0].input_ln.view(), eps)?;
    for (l, lw) in w.text.iter().enumerate() {
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
            mrope_and_cache(
                gpu,
                &mut q,
                &mut k,
                &inputs.positions,
                hd,
                sections,
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
            w.attention,
            DecodePath::Kernel,
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
        gemm.matmul(
            gpu,
            &mut gate_up,
            &y.as_view(),
            &lw.gate_up_w.view(),
            None,
            Epilogue::None,
            false,
        )?;
        silu_mul(gpu, &mut act, &gate_up.as_view())?;
        gemm.matmul(
            gpu,
            &mut delta,
            &act.as_view(),
            &lw.down_w.view(),
            None,
            Epilogue::None,
            false,
        )?;
        let next_norm = w.text.get(l + 1).map_or(&w.norm, |n| &n.input_ln);
        rmsnorm_add(gpu, &mut y, &delta.as_view(), &mut res, &next_norm.view(), eps)?;
    }

    step_logits(gpu, gemm, ws, &y.as_view(), &inputs.logits_rows, &w.lm_head(), logits)
}

/// Checks a step's shape against its logits buffer (f32 `[S, vocab]`): some tokens, at most
/// that many decode rows. Returns the token count.
pub fn check_step(
    op: &'static str,
    inputs: &StepInputs<'_>,
    vocab: usize,
    logits: &TensorViewMut<'_>,
) -> Result<usize> {
    let tokens = inputs.ids.numel();
    logits.expect(op, "logits", DType::F32, &[inputs.logits_rows.numel(), vocab])?;
    if tokens == 0 {
        return Err(Error::invalid(op, "a step with no tokens"));
    }
    if inputs.num_decode > tokens {
        return Err(Error::invalid(
            op,
            format!("{} decode tokens in a batch of {tokens}", inputs.num_decode),
        ));
    }
    Ok(tokens)
}

/// The step's residual stream: each token's embedding row (`embed_error` gets an out-of-range
/// id), then the image features over their placeholder rows. bf16 `[T, hidden]` from `ws`.
pub fn embed_step<'w>(
    gpu: &Gpu,
    ws: &'w Workspace,
    embed: &TensorView<'_>,
    inputs: &StepInputs<'_>,
    embed_error: &mut TensorViewMut<'_>,
) -> Result<TensorViewMut<'w>> {
    let hidden = embed.dims().get(1).copied().unwrap_or(0);
    let mut res = ws.alloc(DType::BF16, &[inputs.ids.numel(), hidden])?;
    embedding_gather(gpu, &mut res, embed, &inputs.ids, embed_error)?;
    if let Some((rows, feats)) = &inputs.image_rows {
        scatter_rows(gpu, &mut res, feats, rows)?;
    }
    Ok(res)
}

/// f32 logits `[S, vocab]` of the rows `logits_rows` of the final hidden states `y`: only the
/// rows that need logits (the last token of each sequence) go through `lm_head`.
pub fn step_logits(
    gpu: &Gpu,
    gemm: &mut Gemm,
    ws: &Workspace,
    y: &TensorView<'_>,
    logits_rows: &TensorView<'_>,
    lm_head: &TensorView<'_>,
    logits: &mut TensorViewMut<'_>,
) -> Result<()> {
    let s = logits_rows.numel();
    if s == 0 {
        return Ok(());
    }
    let hidden = y.dims().get(1).copied().unwrap_or(0);
    let mut last = ws.alloc(DType::BF16, &[s, hidden])?;
    let mut gather_error = ws.alloc(DType::I32, &[1])?;
    gather_error.fill_bytes(gpu, 0)?;
    embedding_gather(gpu, &mut last, y, logits_rows, &mut gather_error)?;
    gemm.matmul(gpu, logits, &last.as_view(), lm_head, None, Epilogue::None, false)
}

/// How [`paged_attention`] attends a step's decode rows.
#[derive(Clone, Copy)]
pub enum DecodePath<'a> {
    /// The paged decode kernel: head_dim 128 with 8 query heads per KV head (PaddleOCR-VL's
    /// decoder; kernels/include/decode.h builds that group only).
    Kernel,
    /// The paged prefill kernel with one query per sequence, for any GQA group (ERNIE-4.5-VL's
    /// 20 / 4 = 5). `iota`: i32 `[0, 1, …, n]`, n at least the step's decode rows: their query
    /// offsets. The same attention as the decode kernel; slower at large batch.
    Prefill { iota: TensorView<'a> },
}

/// Attention of layer `layer` for every token of the step, its K/V already written to the
/// cache: the first `num_decode` rows as `decode` says, the rest through the paged prefill
/// kernel (causal). `q`, `o`: `[T, heads · head_dim]` (column slices of a fused buffer
/// allowed); `decode_ws`: the decode kernel's split-KV workspace. Every family's decoder step
/// calls it.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    gpu: &Gpu,
    o: &mut TensorViewMut<'_>,
    q: &TensorView<'_>,
    cache: &KvCache,
    layer: usize,
    inputs: &StepInputs<'_>,
    scale: f32,
    attention: AttentionKernels,
    decode: DecodePath<'_>,
    decode_ws: &mut TensorViewMut<'_>,
) -> Result<()> {
    const OP: &str = "paged attention";
    let tokens = q.dims().first().copied().unwrap_or(0);
    let nd = inputs.num_decode;
    if let (true, DecodePath::Prefill { iota }) = (nd > 0, decode) {
        if iota.numel() < nd + 1 {
            return Err(Error::invalid(
                OP,
                format!("{nd} decode rows and an iota of {}", iota.numel()),
            ));
        }
        let kv = PagedKv {
            k_cache: cache.k[layer].view(),
            v_cache: cache.v[layer].view(),
            block_tables: inputs
                .decode_block_tables
                .ok_or_else(|| Error::invalid(OP, "decode tokens without block tables"))?,
            seqused_k: inputs
                .decode_seq_lens
                .ok_or_else(|| Error::invalid(OP, "decode tokens without seq lens"))?,
        };
        let queries = Varlen {
            cu_seqlens: iota.narrow0(0, nd + 1)?,
            max_seqlen: 1,
        };
        let mut o_dec = o.reborrow().narrow0(0, nd)?;
        prefill_paged_version(gpu, &mut o_dec, &q.narrow0(0, nd)?, &queries, &kv, scale, attention)?;
    } else if nd > 0 {
        let kv = decode::PagedKv {
            k_cache: cache.k[layer].view(),
            v_cache: cache.v[layer].view(),
            block_tables: inputs
                .decode_block_tables
                .ok_or_else(|| Error::invalid(OP, "decode tokens without block tables"))?,
            seq_lens: inputs
                .decode_seq_lens
                .ok_or_else(|| Error::invalid(OP, "decode tokens without seq lens"))?,
            max_seq_len: inputs.decode_max_len,
        };
        let mut o_dec = o.reborrow().narrow0(0, nd)?;
        decode_paged(
            gpu,
            &mut o_dec,
            &q.narrow0(0, nd)?,
            &kv,
            scale,
            inputs.decode_splits,
            Some(&mut decode_ws.reborrow()),
        )?;
    }
    if nd < tokens {
        let kv = PagedKv {
            k_cache: cache.k[layer].view(),
            v_cache: cache.v[layer].view(),
            block_tables: inputs
                .prefill_block_tables
                .ok_or_else(|| Error::invalid(OP, "prefill without block tables"))?,
            seqused_k: inputs
                .prefill_seqused_k
                .ok_or_else(|| Error::invalid(OP, "prefill without seqused_k"))?,
        };
        let queries = Varlen {
            cu_seqlens: inputs
                .prefill_cu_seqlens
                .ok_or_else(|| Error::invalid(OP, "prefill without cu_seqlens"))?,
            max_seqlen: inputs.prefill_max_q,
        };
        let mut o_pre = o.reborrow().narrow0(nd, tokens - nd)?;
        prefill_paged_version(
            gpu,
            &mut o_pre,
            &q.narrow0(nd, tokens - nd)?,
            &queries,
            &kv,
            scale,
            attention,
        )?;
    }
    Ok(())
}
