//! One MoE block of ERNIE-4.5-VL on the GPU (docs/ERNIE_4_5_VL_SPEC.md §3.12): the routed
//! experts through the steps of `kernels::moe`, the shared experts through the dense GEMM.
//! For `T` tokens of the block's input `y` ([T, H] bf16), top-k `K`, pools `P` of `E` experts:
//!
//! ```text
//! shared = down_s(silu(gate_s(y)) · up_s(y))       [T, H]      two GEMMs + silu_mul
//! logits = f32(y) · routerᵀ                        [T, P·E]    f32
//! ids, w = top-K of each token's pool              [T, K]
//! slots  = the T·K pairs sorted by expert          [tiles · 64]
//! h      = swiglu(y[token] · W_gate_upᵀ)           [slots, I_p]  per pool
//! e      = h · W_downᵀ                             [slots, H]    per pool
//! out    = Σ_k w · e + shared                      [T, H]
//! ```
//!
//! [`MoeScratch`] holds every intermediate for up to `max_tokens` tokens, allocated once; a
//! block of `T <= max_tokens` tokens uses the leading rows, and every size is a function of
//! `T` alone, so the block can run inside a captured CUDA graph.

use crate::error::{Error, Result};
use crate::kernels::elementwise::silu_mul;
use crate::kernels::moe::{self, Epilogue, ExpertWeight, BLOCK_M};
use crate::runtime::{DType, DeviceTensor, Epilogue as GemmEpilogue, Gemm, Gpu, TensorView, TensorViewMut};

/// The sizes of one MoE block.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeBlockShape {
    pub hidden: usize,
    pub experts_per_pool: usize,
    /// The SwiGLU width of each pool's experts (ERNIE-4.5-VL: text 1536, vision 512).
    pub pool_inter: Vec<usize>,
    /// The shared experts' SwiGLU width (their count times the text width; 0: none).
    pub shared_inter: usize,
    pub top_k: usize,
    pub norm_min: f32,
}

impl MoeBlockShape {
    fn pools(&self) -> usize {
        self.pool_inter.len()
    }

    fn total_experts(&self) -> usize {
        self.pools() * self.experts_per_pool
    }
}

/// One pool's expert weights, as `kernels::moe::grouped_gemm` reads them.
pub struct ExpertPoolWeights<'a> {
    /// bf16 (or int8, see `scales`) `[E, 2·I, H]`: each expert's gate and up rows interleaved
    /// in groups of 8 (`kernels::moe::interleave_gate_up`).
    pub gate_up: TensorView<'a>,
    /// bf16 (or int8) `[E, H, I]`.
    pub down: TensorView<'a>,
    /// `--quantization wint8`: the two weights are int8 and these are their f32 row scales,
    /// `[E, 2·I]` (in the interleaved row order) and `[E, H]`. None: bf16.
    pub scales: Option<(TensorView<'a>, TensorView<'a>)>,
}

impl<'a> ExpertPoolWeights<'a> {
    fn gate_up_weight(&self) -> ExpertWeight<'_, 'a> {
        match &self.scales {
            None => ExpertWeight::Bf16(&self.gate_up),
            Some((s, _)) => ExpertWeight::Int8 {
                weight: &self.gate_up,
                scales: s,
            },
        }
    }

    fn down_weight(&self) -> ExpertWeight<'_, 'a> {
        match &self.scales {
            None => ExpertWeight::Bf16(&self.down),
            Some((_, s)) => ExpertWeight::Int8 {
                weight: &self.down,
                scales: s,
            },
        }
    }
}

/// The weights of one MoE block.
pub struct MoeBlockWeights<'a> {
    /// f32 `[P·E, H]`: the pools' routers stacked (the hub stores each `[H, E]`, transposed at load).
    pub router: TensorView<'a>,
    /// f32 `[P, E]`: the selection-only correction bias.
    pub correction_bias: TensorView<'a>,
    pub pools: Vec<ExpertPoolWeights<'a>>,
    /// bf16 `[2·Is, H]`: the shared experts' gate rows, then their up rows (None: no shared experts).
    pub shared_gate_up: Option<TensorView<'a>>,
    /// bf16 `[H, Is]`.
    pub shared_down: Option<TensorView<'a>>,
}

/// Every intermediate of the block for up to `max_tokens` tokens, and the shape it was sized for.
pub struct MoeScratch {
    shape: MoeBlockShape,
    max_tokens: usize,
    logits: DeviceTensor,
    ids: DeviceTensor,
    weights: DeviceTensor,
    sorted_pairs: DeviceTensor,
    pair_slot: DeviceTensor,
    tile_expert: DeviceTensor,
    h: DeviceTensor,
    expert_out: DeviceTensor,
    shared_gate_up: DeviceTensor,
    shared_act: DeviceTensor,
    shared_out: DeviceTensor,
}

impl MoeScratch {
    pub fn new(gpu: &Gpu, shape: &MoeBlockShape, max_tokens: usize) -> Result<MoeScratch> {
        let (t, k, hd) = (max_tokens.max(1), shape.top_k, shape.hidden);
        let tiles = moe::max_tiles(t * k, shape.total_experts());
        let slots = tiles * BLOCK_M;
        let max_inter = shape.pool_inter.iter().copied().max().unwrap_or(0);
        let si = shape.shared_inter.max(1);
        Ok(MoeScratch {
            shape: shape.clone(),
            max_tokens: t,
            logits: DeviceTensor::alloc(gpu, DType::F32, &[t, shape.total_experts()])?,
            ids: DeviceTensor::alloc(gpu, DType::I32, &[t, k])?,
            weights: DeviceTensor::alloc(gpu, DType::F32, &[t, k])?,
            sorted_pairs: DeviceTensor::alloc(gpu, DType::I32, &[slots])?,
            pair_slot: DeviceTensor::alloc(gpu, DType::I32, &[t * k])?,
            tile_expert: DeviceTensor::alloc(gpu, DType::I32, &[tiles])?,
            h: DeviceTensor::alloc(gpu, DType::BF16, &[slots, max_inter])?,
            expert_out: DeviceTensor::alloc(gpu, DType::BF16, &[slots, hd])?,
            shared_gate_up: DeviceTensor::alloc(gpu, DType::BF16, &[t, 2 * si])?,
            shared_act: DeviceTensor::alloc(gpu, DType::BF16, &[t, si])?,
            shared_out: DeviceTensor::alloc(gpu, DType::BF16, &[t, hd])?,
        })
    }

    /// The most tokens a block may run with this scratch.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Device bytes the scratch takes (for the engine's memory plan).
    pub fn nbytes(&self) -> usize {
        [
            &self.logits,
            &self.ids,
            &self.weights,
            &self.sorted_pairs,
            &self.pair_slot,
            &self.tile_expert,
            &self.h,
            &self.expert_out,
            &self.shared_gate_up,
            &self.shared_act,
            &self.shared_out,
        ]
        .iter()
        .map(|t| t.nbytes())
        .sum()
    }
}

/// Runs the block of the scratch's shape: `out = routed(y) + shared(y)` for the `T` rows of
/// `y`, each token in the pool `token_pool[t]` (i32 `[T]`: 0 text, 1 vision).
pub fn moe_block(
    gpu: &Gpu,
    gemm: &mut Gemm,
    out: &mut TensorViewMut<'_>,
    y: &TensorView<'_>,
    token_pool: &TensorView<'_>,
    w: &MoeBlockWeights<'_>,
    s: &mut MoeScratch,
) -> Result<()> {
    const OP: &str = "moe_block";
    let shape = &s.shape.clone();
    let t = y.dims().first().copied().unwrap_or(0);
    if t > s.max_tokens {
        return Err(Error::invalid(
            OP,
            format!("{t} tokens; the scratch holds {}", s.max_tokens),
        ));
    }
    if w.pools.len() != shape.pools() {
        return Err(Error::invalid(
            OP,
            format!("{} expert pools given, the shape has {}", w.pools.len(), shape.pools()),
        ));
    }
    if t == 0 {
        return Ok(());
    }
    let k = shape.top_k;
    let pairs = t * k;
    let tiles = moe::max_tiles(pairs, shape.total_experts());
    let slots = tiles * BLOCK_M;

    // Shared experts first: their output is the combine's addend.
    let shared = match (&w.shared_gate_up, &w.shared_down) {
        (Some(gu), Some(down)) => {
            let si = shape.shared_inter;
            let mut gate_up = s.shared_gate_up.view_mut().narrow0(0, t)?.columns(0, 2 * si)?;
            gemm.matmul(gpu, &mut gate_up, y, gu, None, GemmEpilogue::None, false)?;
            let mut act = s.shared_act.view_mut().narrow0(0, t)?.columns(0, si)?;
            silu_mul(
                gpu,
                &mut act,
                &s.shared_gate_up.view().narrow0(0, t)?.columns(0, 2 * si)?,
            )?;
            let mut so = s.shared_out.view_mut().narrow0(0, t)?;
            gemm.matmul(
                gpu,
                &mut so,
                &s.shared_act.view().narrow0(0, t)?.columns(0, si)?,
                down,
                None,
                GemmEpilogue::None,
                false,
            )?;
            true
        }
        (None, None) => false,
        _ => return Err(Error::invalid(OP, "shared experts need both gate_up and down")),
    };

    let mut logits = s.logits.view_mut().narrow0(0, t)?;
    moe::router_logits(gpu, &mut logits, y, &w.router)?;
    let mut ids = s.ids.view_mut().narrow0(0, t)?;
    let mut weights = s.weights.view_mut().narrow0(0, t)?;
    moe::topk(
        gpu,
        &mut ids,
        &mut weights,
        &s.logits.view().narrow0(0, t)?,
        Some(token_pool),
        Some(&w.correction_bias),
        shape.experts_per_pool,
        shape.norm_min,
    )?;
    let mut sorted = s.sorted_pairs.view_mut().narrow0(0, slots)?;
    let mut pair_slot = s.pair_slot.view_mut().narrow0(0, pairs)?;
    let mut tile_expert = s.tile_expert.view_mut().narrow0(0, tiles)?;
    moe::align(
        gpu,
        &mut sorted,
        &mut pair_slot,
        &mut tile_expert,
        &s.ids.view().narrow0(0, t)?,
        shape.total_experts(),
    )?;

    let sorted = s.sorted_pairs.view().narrow0(0, slots)?;
    let tile_expert = s.tile_expert.view().narrow0(0, tiles)?;
    for (p, pool) in w.pools.iter().enumerate() {
        let inter = shape.pool_inter[p];
        let experts = p * shape.experts_per_pool..(p + 1) * shape.experts_per_pool;
        let mut h = s.h.view_mut().narrow0(0, slots)?.columns(0, inter)?;
        moe::grouped_gemm(
            gpu,
            &mut h,
            y,
            &sorted,
            Some(k),
            pool.gate_up_weight(),
            &tile_expert,
            experts.clone(),
            Epilogue::SwiGlu,
        )?;
        let mut e = s.expert_out.view_mut().narrow0(0, slots)?;
        moe::grouped_gemm(
            gpu,
            &mut e,
            &s.h.view().narrow0(0, slots)?.columns(0, inter)?,
            &sorted,
            None,
            pool.down_weight(),
            &tile_expert,
            experts,
            Epilogue::None,
        )?;
    }
    let shared_view = s.shared_out.view().narrow0(0, t)?;
    moe::combine(
        gpu,
        out,
        &s.expert_out.view().narrow0(0, slots)?,
        &s.pair_slot.view().narrow0(0, pairs)?,
        &s.weights.view().narrow0(0, t)?,
        shared.then_some(&shared_view),
    )
}
