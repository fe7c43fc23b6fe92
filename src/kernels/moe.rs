//! Wrappers for `kernels/include/moe.h`: the steps of one mixture-of-experts layer
//! (ERNIE-4.5-VL, docs/ERNIE_4_5_VL_SPEC.md §3.12). The header states each step's exact math.
//!
//! 1. [`router_logits`]: f32 logits of every pool's router, `[tokens, pools · experts]`.
//! 2. [`topk`]: per token, its pool's softmax, the top-k by probability plus correction bias,
//!    the renormalised weights; expert ids are global (`pool · experts + e`).
//! 3. [`align`]: the `tokens · top_k` pairs sorted by expert into tiles of [`BLOCK_M`] slots.
//! 4. [`grouped_gemm`] per pool, twice: gate/up with the SwiGLU epilogue (weights laid out by
//!    [`interleave_gate_up`]), then down.
//! 5. [`combine`]: the weighted sum back into token order, plus the shared experts' output.
//!
//! Buffer sizes depend only on the token count and top-k ([`max_tiles`]), never on the
//! routing, so a layer needs no device-to-host read and can be captured in a CUDA graph.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::runtime::{DType, Gpu, TensorView, TensorViewMut};
use crate::sys;

use super::check;

/// Slots per tile of the grouped GEMM; each expert's run of slots is padded to a multiple.
pub const BLOCK_M: usize = sys::OCRVL_MOE_BLOCK_M as usize;
/// The grouped GEMM's `n` must be a multiple of this.
pub const BLOCK_N: usize = sys::OCRVL_MOE_BLOCK_N as usize;
/// The grouped GEMM's `k` must be a multiple of this.
pub const BLOCK_K: usize = sys::OCRVL_MOE_BLOCK_K as usize;
/// Experts over all pools ([`align`]).
pub const MAX_EXPERTS: usize = sys::OCRVL_MOE_MAX_EXPERTS as usize;
/// Experts in one pool ([`topk`]).
pub const MAX_POOL_EXPERTS: usize = sys::OCRVL_MOE_MAX_POOL_EXPERTS as usize;
/// The largest top-k.
pub const MAX_TOP_K: usize = sys::OCRVL_MOE_MAX_TOP_K as usize;
/// [`router_logits`] uses its split-k kernel up to this many tokens (when the shapes allow it),
/// its tiled kernel above.
pub const ROUTER_SPLIT_K_MAX_TOKENS: usize = sys::OCRVL_MOE_ROUTER_SPLIT_K_MAX_TOKENS as usize;

/// What the grouped GEMM does with its f32 accumulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `out[s, c] = bf16(acc[s, c])`, `n` columns.
    None,
    /// `out[s, c] = bf16(bf16(silu(bf16(gate))) · bf16(up))`, `n / 2` columns, from weight rows
    /// laid out by [`interleave_gate_up`].
    SwiGlu,
}

/// Which kernel [`grouped_gemm_with`] runs (bf16 weights; int8 weights have only [`Self::Mma`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// The 2-stage wgmma kernel where it runs and the step is prefill-sized (at least
    /// [`WGMMA_MIN_TILES_PER_EXPERT`] tiles per expert of the range), else mma.sync. The
    /// environment's `OCRVL_MOE_GEMM=mma|wgmma|wgmma2|wgmma-inflight|wgmma-inflight5`
    /// replaces the choice (A/B runs).
    Auto,
    /// mma.sync over tiles of 64 slots x 128 columns: any CUDA GPU.
    Mma,
    /// wgmma over tiles of 64 slots x 256 columns, a 4-stage ring: an sm_90 GPU with a build
    /// for sm_90a, and `n` a multiple of 256; otherwise an unsupported error.
    Wgmma,
    /// As [`Self::Wgmma`] with a 2-stage ring (two blocks per SM).
    Wgmma2Stage,
    /// As [`Self::Wgmma`], keeping one wgmma group in flight across k steps.
    WgmmaInFlight,
    /// As [`Self::WgmmaInFlight`] with a 5-stage ring (copies three k steps ahead).
    WgmmaInFlight5,
}

impl GemmKernel {
    /// Every wgmma kernel (tests and benches run each).
    pub const WGMMA: [GemmKernel; 4] = [
        GemmKernel::Wgmma,
        GemmKernel::Wgmma2Stage,
        GemmKernel::WgmmaInFlight,
        GemmKernel::WgmmaInFlight5,
    ];
}

/// [`GemmKernel::Auto`] takes the 2-stage wgmma kernel from this many tiles per expert.
pub const WGMMA_MIN_TILES_PER_EXPERT: usize = sys::OCRVL_MOE_WGMMA_MIN_TILES_PER_EXPERT as usize;

/// Tiles [`align`] may use for `num_pairs` pairs over `num_experts` experts; the slot buffers
/// have `max_tiles · BLOCK_M` rows.
pub fn max_tiles(num_pairs: usize, num_experts: usize) -> usize {
    // SAFETY: a pure function of two integers.
    unsafe { sys::ocrvl_moe_max_tiles(num_pairs as i64, num_experts as i64) as usize }
}

/// The gate/up weight of one expert in the layout [`Epilogue::SwiGlu`] reads: rows
/// `16g..16g+8` are gate rows `8g..8g+8` and rows `16g+8..16g+16` are up rows `8g..8g+8`.
/// `gate`, `up`: `[inter, hidden]` row-major; returns `[2 · inter, hidden]`. `inter` must be a
/// multiple of 8.
pub fn interleave_gate_up<T: Copy>(gate: &[T], up: &[T], inter: usize, hidden: usize) -> Result<Vec<T>> {
    const OP: &str = "moe::interleave_gate_up";
    if inter % 8 != 0 || gate.len() != inter * hidden || up.len() != inter * hidden {
        return Err(Error::invalid(
            OP,
            format!(
                "gate and up must be [inter, hidden] = [{inter}, {hidden}] with inter a multiple of 8; got {} and {} elements",
                gate.len(),
                up.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(2 * inter * hidden);
    for g in 0..inter / 8 {
        let rows = g * 8 * hidden..(g + 1) * 8 * hidden;
        out.extend_from_slice(&gate[rows.clone()]);
        out.extend_from_slice(&up[rows]);
    }
    Ok(out)
}

/// `logits[t, j] = Σ_i f32(x[t, i]) · weight[j, i]`, f32.
///
/// `logits`: f32 `[tokens, num_logits]` contiguous; `x`: bf16 `[tokens, hidden]` (rows may be
/// strided); `weight`: f32 `[num_logits, hidden]` contiguous.
pub fn router_logits(
    gpu: &Gpu,
    logits: &mut TensorViewMut<'_>,
    x: &TensorView<'_>,
    weight: &TensorView<'_>,
) -> Result<()> {
    const OP: &str = "moe::router_logits";
    let (tokens, hidden) = matrix(OP, "x", x, DType::BF16)?;
    let num_logits = weight.dims().first().copied().unwrap_or(0);
    weight.expect(OP, "weight", DType::F32, &[num_logits, hidden])?;
    logits
        .as_view()
        .expect(OP, "logits", DType::F32, &[tokens, num_logits])?;
    contiguous(OP, "weight", weight)?;
    contiguous(OP, "logits", &logits.as_view())?;
    // SAFETY: shapes, dtypes and contiguity were checked against the header's contract; all
    // views live on this GPU and are used on its stream.
    let status = unsafe {
        sys::ocrvl_moe_router_logits(
            logits.device_ptr() as *mut f32,
            x.device_ptr() as *const _,
            x.stride0() as i64,
            weight.device_ptr() as *const f32,
            tokens as i64,
            hidden as i64,
            num_logits as i64,
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// Top-k routing per token (the header's step 2): `ids`, `weights` `[tokens, top_k]` (i32, f32);
/// `logits` f32 `[tokens, ≥ pools · num_experts]` contiguous rows; `token_pool` i32 `[tokens]`
/// (None: every token in pool 0); `bias` f32 `[pools, num_experts]` (None: no correction).
/// `pools` is taken from `bias` when given, else from the logits' width.
#[allow(clippy::too_many_arguments)]
pub fn topk(
    gpu: &Gpu,
    ids: &mut TensorViewMut<'_>,
    weights: &mut TensorViewMut<'_>,
    logits: &TensorView<'_>,
    token_pool: Option<&TensorView<'_>>,
    bias: Option<&TensorView<'_>>,
    num_experts: usize,
    norm_min: f32,
) -> Result<()> {
    const OP: &str = "moe::topk";
    let (tokens, width) = matrix(OP, "logits", logits, DType::F32)?;
    contiguous(OP, "logits", logits)?;
    if num_experts == 0 || width < num_experts {
        return Err(Error::invalid(
            OP,
            format!("logits have {width} columns, fewer than one pool of {num_experts} experts"),
        ));
    }
    let pools = match bias {
        Some(b) => b.dims().first().copied().unwrap_or(0),
        None => width / num_experts,
    };
    if let Some(b) = bias {
        b.expect(OP, "bias", DType::F32, &[pools, num_experts])?;
        contiguous(OP, "bias", b)?;
    }
    if let Some(p) = token_pool {
        p.expect(OP, "token_pool", DType::I32, &[tokens])?;
    }
    let top_k = ids.dims().get(1).copied().unwrap_or(0);
    ids.as_view().expect(OP, "ids", DType::I32, &[tokens, top_k])?;
    weights.as_view().expect(OP, "weights", DType::F32, &[tokens, top_k])?;
    contiguous(OP, "ids", &ids.as_view())?;
    contiguous(OP, "weights", &weights.as_view())?;
    // SAFETY: as in `router_logits`; the optional operands are null when absent, which the
    // header allows.
    let status = unsafe {
        sys::ocrvl_moe_topk(
            ids.device_ptr() as *mut i32,
            weights.device_ptr() as *mut f32,
            logits.device_ptr() as *const f32,
            width as i64,
            token_pool.map_or(std::ptr::null(), |p| p.device_ptr() as *const i32),
            bias.map_or(std::ptr::null(), |b| b.device_ptr() as *const f32),
            tokens as i64,
            num_experts as i64,
            pools as i64,
            top_k as i64,
            norm_min,
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// Sorts the pairs by expert (the header's step 3). `topk_ids`: i32 `[tokens, top_k]`;
/// `sorted_pairs`: i32 `[max_tiles · BLOCK_M]`; `pair_slot`: i32 `[tokens · top_k]`;
/// `tile_expert`: i32 `[max_tiles]` with `max_tiles` at least [`max_tiles`].
pub fn align(
    gpu: &Gpu,
    sorted_pairs: &mut TensorViewMut<'_>,
    pair_slot: &mut TensorViewMut<'_>,
    tile_expert: &mut TensorViewMut<'_>,
    topk_ids: &TensorView<'_>,
    num_experts: usize,
) -> Result<()> {
    const OP: &str = "moe::align";
    let (tokens, top_k) = matrix(OP, "topk_ids", topk_ids, DType::I32)?;
    contiguous(OP, "topk_ids", topk_ids)?;
    let pairs = tokens * top_k;
    let tiles = tile_expert.dims().first().copied().unwrap_or(0);
    tile_expert.as_view().expect(OP, "tile_expert", DType::I32, &[tiles])?;
    sorted_pairs
        .as_view()
        .expect(OP, "sorted_pairs", DType::I32, &[tiles * BLOCK_M])?;
    pair_slot.as_view().expect(OP, "pair_slot", DType::I32, &[pairs])?;
    let need = max_tiles(pairs, num_experts);
    if tiles < need {
        return Err(Error::invalid(
            OP,
            format!("{pairs} pairs over {num_experts} experts need {need} tiles; tile_expert has {tiles}"),
        ));
    }
    // SAFETY: as in `router_logits`.
    let status = unsafe {
        sys::ocrvl_moe_align(
            sorted_pairs.device_ptr() as *mut i32,
            pair_slot.device_ptr() as *mut i32,
            tile_expert.device_ptr() as *mut i32,
            topk_ids.device_ptr() as *const i32,
            pairs as i64,
            num_experts as i64,
            tiles as i64,
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// An expert pool's weight for [`grouped_gemm`]: bf16 `[experts, n, k]`, or weight-only int8
/// `[experts, n, k]` with one f32 scale per row, `[experts, n]` (`--quantization wint8`; see
/// `quantize_rows_int8`).
#[derive(Clone, Copy)]
pub enum ExpertWeight<'v, 'a> {
    Bf16(&'v TensorView<'a>),
    Int8 {
        weight: &'v TensorView<'a>,
        scales: &'v TensorView<'a>,
    },
}

impl<'v, 'a> From<&'v TensorView<'a>> for ExpertWeight<'v, 'a> {
    fn from(weight: &'v TensorView<'a>) -> Self {
        ExpertWeight::Bf16(weight)
    }
}

/// The grouped GEMM over sorted slots for the experts `experts` (the header's steps 4 and 4b).
///
/// `out`: bf16 `[max_tiles · BLOCK_M, n]` (`n / 2` columns for [`Epilogue::SwiGlu`]);
/// `a`: bf16 rows of `k` columns: `[tokens, k]` read through the pairs when `gather_top_k` is
/// `Some(top_k)`, else `[max_tiles · BLOCK_M, k]` read by slot; `weight`: see
/// [`ExpertWeight`], contiguous; `sorted_pairs`, `tile_expert` as [`align`] wrote them.
/// The kernel is [`GemmKernel::Auto`]'s choice.
#[allow(clippy::too_many_arguments)]
pub fn grouped_gemm<'v, 'a>(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    a: &TensorView<'_>,
    sorted_pairs: &TensorView<'_>,
    gather_top_k: Option<usize>,
    weight: impl Into<ExpertWeight<'v, 'a>>,
    tile_expert: &TensorView<'_>,
    experts: Range<usize>,
    epilogue: Epilogue,
) -> Result<()>
where
    'a: 'v,
{
    grouped_gemm_with(
        gpu,
        GemmKernel::Auto,
        out,
        a,
        sorted_pairs,
        gather_top_k,
        weight,
        tile_expert,
        experts,
        epilogue,
    )
}

/// [`grouped_gemm`] with the kernel named (benches and tests compare them).
#[allow(clippy::too_many_arguments)]
pub fn grouped_gemm_with<'v, 'a>(
    gpu: &Gpu,
    kernel: GemmKernel,
    out: &mut TensorViewMut<'_>,
    a: &TensorView<'_>,
    sorted_pairs: &TensorView<'_>,
    gather_top_k: Option<usize>,
    weight: impl Into<ExpertWeight<'v, 'a>>,
    tile_expert: &TensorView<'_>,
    experts: Range<usize>,
    epilogue: Epilogue,
) -> Result<()>
where
    'a: 'v,
{
    const OP: &str = "moe::grouped_gemm";
    let weight = weight.into();
    let (w, w_dtype) = match weight {
        ExpertWeight::Bf16(w) => (w, DType::BF16),
        ExpertWeight::Int8 { weight, .. } => (weight, DType::I8),
    };
    let [num, n, k] = match *w.dims() {
        [e, n, k] => [e, n, k],
        _ => {
            return Err(Error::invalid(
                OP,
                format!("weight must be [experts, n, k], got {:?}", w.dims()),
            ))
        }
    };
    w.expect(OP, "weight", w_dtype, &[experts.len(), n, k])?;
    contiguous(OP, "weight", w)?;
    if let ExpertWeight::Int8 { scales, .. } = weight {
        scales.expect(OP, "scales", DType::F32, &[experts.len(), n])?;
        contiguous(OP, "scales", scales)?;
    }
    if num == 0 {
        return Err(Error::invalid(OP, "the expert range is empty"));
    }
    let tiles = tile_expert.dims().first().copied().unwrap_or(0);
    tile_expert.expect(OP, "tile_expert", DType::I32, &[tiles])?;
    sorted_pairs.expect(OP, "sorted_pairs", DType::I32, &[tiles * BLOCK_M])?;
    let (a_rows, a_cols) = matrix(OP, "a", a, DType::BF16)?;
    if a_cols != k || (gather_top_k.is_none() && a_rows != tiles * BLOCK_M) {
        return Err(Error::invalid(
            OP,
            format!(
                "a is {a_rows} x {a_cols}; expected k = {k} columns and, without gathering, {} slot rows",
                tiles * BLOCK_M
            ),
        ));
    }
    let out_cols = match epilogue {
        Epilogue::None => n,
        Epilogue::SwiGlu => n / 2,
    };
    out.as_view()
        .expect(OP, "out", DType::BF16, &[tiles * BLOCK_M, out_cols])?;
    if gather_top_k == Some(0) {
        return Err(Error::invalid(OP, "gather_top_k must be at least 1"));
    }
    let epilogue = match epilogue {
        Epilogue::None => sys::OCRVL_MOE_EPILOGUE_NONE as i32,
        Epilogue::SwiGlu => sys::OCRVL_MOE_EPILOGUE_SWIGLU as i32,
    };
    // Gathered rows are token indices: pair / top_k must stay below a's rows, which holds when
    // the pairs came from `align` over [a_rows, top_k] ids. The kernel cannot check it.
    // SAFETY: shapes and dtypes checked as above; all views live on this GPU's stream.
    let kernel = match kernel {
        GemmKernel::Auto => sys::OCRVL_MOE_GEMM_AUTO,
        GemmKernel::Mma => sys::OCRVL_MOE_GEMM_MMA,
        GemmKernel::Wgmma => sys::OCRVL_MOE_GEMM_WGMMA,
        GemmKernel::Wgmma2Stage => sys::OCRVL_MOE_GEMM_WGMMA_2STAGE,
        GemmKernel::WgmmaInFlight => sys::OCRVL_MOE_GEMM_WGMMA_INFLIGHT,
        GemmKernel::WgmmaInFlight5 => sys::OCRVL_MOE_GEMM_WGMMA_INFLIGHT5,
    } as i32;
    let wgmma = kernel != sys::OCRVL_MOE_GEMM_AUTO as i32 && kernel != sys::OCRVL_MOE_GEMM_MMA as i32;
    if matches!(weight, ExpertWeight::Int8 { .. }) && wgmma {
        return Err(Error::invalid(OP, "int8 expert weights have only the mma.sync kernel"));
    }
    let status = unsafe {
        match weight {
            ExpertWeight::Bf16(w) => sys::ocrvl_moe_grouped_gemm_with(
                out.device_ptr() as *mut _,
                out.stride0() as i64,
                a.device_ptr() as *const _,
                a.stride0() as i64,
                sorted_pairs.device_ptr() as *const i32,
                gather_top_k.unwrap_or(0) as i32,
                w.device_ptr() as *const _,
                tile_expert.device_ptr() as *const i32,
                tiles as i64,
                experts.start as i64,
                experts.end as i64,
                n as i64,
                k as i64,
                epilogue,
                kernel,
                gpu.raw_stream(),
            ),
            ExpertWeight::Int8 { weight, scales } => sys::ocrvl_moe_grouped_gemm_w8(
                out.device_ptr() as *mut _,
                out.stride0() as i64,
                a.device_ptr() as *const _,
                a.stride0() as i64,
                sorted_pairs.device_ptr() as *const i32,
                gather_top_k.unwrap_or(0) as i32,
                weight.device_ptr() as *const i8,
                scales.device_ptr() as *const f32,
                tile_expert.device_ptr() as *const i32,
                tiles as i64,
                experts.start as i64,
                experts.end as i64,
                n as i64,
                k as i64,
                epilogue,
                gpu.raw_stream(),
            ),
        }
    };
    check(OP, status)
}

/// `out[t] = bf16(Σ_k weights[t, k] · expert_out[pair_slot[t·K + k]] + shared[t])` (the
/// header's step 5). `out`, `shared`: bf16 `[tokens, hidden]`; `expert_out`: bf16
/// `[slots, hidden]`; `pair_slot`: i32 `[tokens · top_k]`; `weights`: f32 `[tokens, top_k]`.
pub fn combine(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    expert_out: &TensorView<'_>,
    pair_slot: &TensorView<'_>,
    weights: &TensorView<'_>,
    shared: Option<&TensorView<'_>>,
) -> Result<()> {
    const OP: &str = "moe::combine";
    let (tokens, top_k) = matrix(OP, "weights", weights, DType::F32)?;
    contiguous(OP, "weights", weights)?;
    pair_slot.expect(OP, "pair_slot", DType::I32, &[tokens * top_k])?;
    let (_, hidden) = matrix(OP, "expert_out", expert_out, DType::BF16)?;
    out.as_view().expect(OP, "out", DType::BF16, &[tokens, hidden])?;
    if let Some(s) = shared {
        s.expect(OP, "shared", DType::BF16, &[tokens, hidden])?;
    }
    // SAFETY: as in `router_logits`; `out` is borrowed mutably, so it overlaps no input.
    let status = unsafe {
        sys::ocrvl_moe_combine(
            out.device_ptr() as *mut _,
            out.stride0() as i64,
            expert_out.device_ptr() as *const _,
            expert_out.stride0() as i64,
            pair_slot.device_ptr() as *const i32,
            weights.device_ptr() as *const f32,
            shared.map_or(std::ptr::null(), |s| s.device_ptr() as *const _),
            shared.map_or(0, |s| s.stride0() as i64),
            tokens as i64,
            top_k as i64,
            hidden as i64,
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// Ids at most [`token_pool`] takes as vision ids.
pub const MAX_VISION_IDS: usize = 8;

/// `pool[t] = 1` where `t >= num_text_prefix` and `ids[t]` is one of `vision_ids`, else 0: the
/// MoE pool of each token of a step (its first `num_text_prefix` tokens, the decode tokens,
/// are text). `pool`, `ids`: i32 `[T]`.
pub fn token_pool(
    gpu: &Gpu,
    pool: &mut TensorViewMut<'_>,
    ids: &TensorView<'_>,
    num_text_prefix: usize,
    vision_ids: &[u32],
) -> Result<()> {
    const OP: &str = "moe::token_pool";
    let t = ids.numel();
    ids.expect(OP, "ids", DType::I32, &[t])?;
    pool.as_view().expect(OP, "pool", DType::I32, &[t])?;
    contiguous(OP, "ids", ids)?;
    contiguous(OP, "pool", &pool.as_view())?;
    if vision_ids.len() > MAX_VISION_IDS {
        return Err(Error::invalid(
            OP,
            format!("{} vision ids; at most {MAX_VISION_IDS}", vision_ids.len()),
        ));
    }
    let mut v = sys::OcrvlMoeVisionIds {
        ids: [-1; MAX_VISION_IDS],
        count: vision_ids.len() as i32,
    };
    for (slot, &id) in v.ids.iter_mut().zip(vision_ids) {
        *slot = i32::try_from(id).map_err(|_| Error::invalid(OP, format!("vision id {id}")))?;
    }
    // SAFETY: ids and pool address t contiguous i32 on this GPU (checked above); pool is
    // borrowed mutably, so it does not overlap ids.
    let status = unsafe {
        sys::ocrvl_moe_token_pool(
            pool.device_ptr() as *mut i32,
            ids.device_ptr() as *const i32,
            t as i64,
            num_text_prefix as i64,
            v,
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// `(rows, cols)` of a 2-D operand of the given dtype.
fn matrix(op: &'static str, what: &str, v: &TensorView<'_>, dtype: DType) -> Result<(usize, usize)> {
    match *v.dims() {
        [rows, cols] if v.dtype() == dtype => Ok((rows, cols)),
        _ => Err(Error::invalid(
            op,
            format!("{what} must be a {dtype} matrix, got {} {:?}", v.dtype(), v.dims()),
        )),
    }
}

fn contiguous(op: &'static str, what: &str, v: &TensorView<'_>) -> Result<()> {
    if !v.is_contiguous() {
        return Err(Error::invalid(op, format!("{what} must be contiguous")));
    }
    Ok(())
}
