//! Wrappers for `kernels/include/attention.h`: prefill attention, FlashAttention-2-style
//! (sm_80 instructions, every GPU) or FlashAttention-3-style (TMA + wgmma, sm_90 with an sm_90a
//! build), chosen per call by [`AttentionKernels`] (the version and the FA3 variants), which
//! the caller holds: the model runner after resolving `FLAGS_flash_attn_version`
//! (`config::FlashAttnVersion::resolve`), benchmarks and tests per call.
//!
//! - [`prefill_paged`]: text prefill, queries of several sequences packed, K/V from the
//!   block-paged cache (`kv_cache.h` layout), causal with the queries being the last `q_len`
//!   of the `seqused_k` keys of their sequence (fresh prompt, chunk of a long prompt, or a
//!   prompt with a cached prefix: one rule), GQA.
//! - [`vision_varlen`]: vision attention, packed images, bidirectional within each image,
//!   q/k/v token-strided (column slices of the fused qkv output).
//!
//! The C parameter struct is filled in one place, [`launch`]. Checked here: dtypes, ranks,
//! dims that must agree, 16-byte alignment and token strides that are multiples of 8 elements.
//! Checked by the launcher, as `Error::Kernel` with `OCRVL_STATUS_UNSUPPORTED`: the built set
//! (bf16; paged head_dim 128; vision head_dim 72; block_size a power of two in 16..=256; FA3
//! also needs an sm_90 GPU and sm_90a code in the build).
//! Trusted (device data, not checked): `cu_seqlens` non-decreasing from 0 with no run longer
//! than `max_seqlen`; `seqused_k[s] >= q_len[s]`; the block-table entries of the blocks that
//! hold positions below `seqused_k[s]` lie in `[0, num_blocks)`. Outputs must not overlap
//! inputs.

use crate::error::{Error, Result};
use crate::runtime::{DType, Gpu, TensorView, TensorViewMut};
use crate::sys;

use super::{c_dtype, check};

/// Which kernels run prefill attention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionVersion {
    /// FlashAttention-2 style, mma.sync from registers (`kernels/attention/fwd_sm80.cuh`); any GPU.
    #[default]
    Fa2,
    /// FlashAttention-3 style, TMA + wgmma, warp-specialised (`kernels/attention/fa3_fwd.cuh`);
    /// an sm_90 GPU and a build with sm_90a code (`OCRVL_CUDA_ARCHS` containing `90a`).
    Fa3,
}

impl std::fmt::Display for AttentionVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionVersion::Fa2 => "FA2 (mma.sync)",
            AttentionVersion::Fa3 => "FA3 (TMA + wgmma, sm_90a)",
        })
    }
}

/// The mainloop of the FA3 kernels (`OCRVL_FA3_MAINLOOP_*` in `kernels/include/attention.h`);
/// all give the same results within bf16 rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fa3Mainloop {
    /// Q·K(n+1)ᵀ issued before the softmax of tile n inside each consumer warpgroup, and the two
    /// consumer warpgroups taking turns on the tensor cores (named barriers): one's softmax runs
    /// under the other's matrix products.
    #[default]
    PingPong,
    /// The intra-warpgroup overlap alone, no turns.
    Overlap,
    /// The first mainloop: S, softmax, P·V in turn. Kept to compare and to fall back to.
    Serial,
}

impl Fa3Mainloop {
    pub const ALL: [Fa3Mainloop; 3] = [Fa3Mainloop::PingPong, Fa3Mainloop::Overlap, Fa3Mainloop::Serial];

    fn c_value(self) -> i32 {
        (match self {
            Fa3Mainloop::PingPong => sys::OCRVL_FA3_MAINLOOP_PINGPONG,
            Fa3Mainloop::Overlap => sys::OCRVL_FA3_MAINLOOP_OVERLAP,
            Fa3Mainloop::Serial => sys::OCRVL_FA3_MAINLOOP_SERIAL,
        }) as i32
    }
}

/// The tile of the FA3 vision (d 72) kernels (`OCRVL_FA3_VISION_*` in
/// `kernels/include/attention.h`); all give the same results within bf16 rounding, with every
/// [`Fa3Mainloop`]. Only [`VisionTile::Qk80`] is built on tiles other than `M128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fa3VisionTile {
    /// 128 query rows (2 consumer warpgroups), 2 K/V stages (`fa3_d72.cu`, `fa3_d80.cu`); the
    /// C default at d 72 for images under 1024 tokens, at d 80 for all.
    M128,
    /// 128 query rows, 3 K/V stages (226 KiB of shared memory; `fa3_d72_s3.cu`); d 72 only.
    M128Stages3,
    /// 192 query rows (3 consumer warpgroups, 512 threads), 2 K/V stages (`fa3_d72_m192.cu`,
    /// `fa3_d80_m192.cu`); the C default at d 72 from 1024 tokens.
    M192,
}

impl Fa3VisionTile {
    pub const ALL: [Fa3VisionTile; 3] = [Fa3VisionTile::M128, Fa3VisionTile::M128Stages3, Fa3VisionTile::M192];

    fn c_value(self) -> i32 {
        (match self {
            Fa3VisionTile::M128 => sys::OCRVL_FA3_VISION_M128,
            Fa3VisionTile::M128Stages3 => sys::OCRVL_FA3_VISION_M128_S3,
            Fa3VisionTile::M192 => sys::OCRVL_FA3_VISION_M192,
        }) as i32
    }
}

/// Which attention kernels run: the version and, for FA3, the mainloop and the vision tile
/// (FA2 ignores both; text calls ignore the tile). Chosen once by whoever owns the model (the
/// engine's model runner) and passed with every call; benchmarks and tests that compare the
/// variants pass each in turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttentionKernels {
    pub version: AttentionVersion,
    pub fa3_mainloop: Fa3Mainloop,
    /// `None`: the launcher's choice by image length (`OCRVL_FA3_VISION_DEFAULT` in
    /// `kernels/attention/fa3_attention.cu`).
    pub fa3_vision_tile: Option<Fa3VisionTile>,
}

impl AttentionKernels {
    /// FA3 with the given mainloop and vision tile.
    pub fn fa3(mainloop: Fa3Mainloop, vision_tile: Option<Fa3VisionTile>) -> AttentionKernels {
        AttentionKernels {
            version: AttentionVersion::Fa3,
            fa3_mainloop: mainloop,
            fa3_vision_tile: vision_tile,
        }
    }
}

impl From<AttentionVersion> for AttentionKernels {
    /// The version with its default variants.
    fn from(version: AttentionVersion) -> AttentionKernels {
        AttentionKernels {
            version,
            ..AttentionKernels::default()
        }
    }
}

/// True when this build contains the FA3 kernels (sm_90a code); says nothing about the GPU.
pub fn fa3_built() -> bool {
    // SAFETY: reads a compile-time constant; no arguments.
    unsafe { sys::ocrvl_attention_fa3_supported() != 0 }
}

/// Why the FA3 path cannot run on `gpu` in this build, or `None` when it can.
pub fn fa3_unavailable_reason(gpu: &Gpu) -> Option<String> {
    if !fa3_built() {
        return Some(
            "this build has no sm_90a code (OCRVL_CUDA_ARCHS must contain 90a, as the default 80;90a does)".into(),
        );
    }
    let (major, minor) = gpu.compute_capability();
    if (major, minor) != (9, 0) {
        return Some(format!(
            "GPU {} is sm_{major}{minor}; the FA3 kernels are sm_90a code and run only on sm_90 (H100, H200)",
            gpu.name()
        ));
    }
    None
}

/// Packed variable-length runs: `cu_seqlens` is i32 `[num_seqs + 1]`, the token offsets of
/// each run (`cu_seqlens[0] == 0`); `max_seqlen` bounds every run and sizes the grid (the
/// host knows it: the scheduler built the batch).
#[derive(Clone, Copy, Debug)]
pub struct Varlen<'a> {
    pub cu_seqlens: TensorView<'a>,
    pub max_seqlen: usize,
}

/// The paged K/V of one layer and the batch's view of it.
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a> {
    /// bf16 `[num_blocks, num_kv_heads, block_size, head_dim]`, contiguous.
    pub k_cache: TensorView<'a>,
    /// Same dims and dtype as `k_cache`.
    pub v_cache: TensorView<'a>,
    /// i32 `[num_seqs, max_blocks_per_seq]` (dim 0 may be strided): sequence `s`'s key at
    /// position `p` lives in block `block_tables[s][p / block_size]`, offset `p % block_size`.
    pub block_tables: TensorView<'a>,
    /// i32 `[num_seqs]`: keys of each sequence in the cache, the new tokens included (their
    /// K/V are written before attention runs).
    pub seqused_k: TensorView<'a>,
}

/// Options of [`prefill_paged_with`].
#[derive(Clone, Copy, Debug)]
pub struct PrefillOptions {
    /// Softmax scale, `1 / sqrt(head_dim)` for the model; must be positive.
    pub scale: f32,
    /// `false` lets every query see all `seqused_k` keys (benchmarks; the model is causal).
    pub causal: bool,
    /// The kernels to run (FA2 or FA3, and the FA3 mainloop).
    pub kernels: AttentionKernels,
}

/// q, k and v of the vision tower: each `[total, num_heads * 72]` (or `[total, num_heads, 72]`),
/// any token stride, so they can be column slices of the fused qkv output.
#[derive(Clone, Copy, Debug)]
pub struct VisionQkv<'a> {
    pub q: TensorView<'a>,
    pub k: TensorView<'a>,
    pub v: TensorView<'a>,
    pub num_heads: usize,
}

/// How head_dim 72 is tiled (see `kernels/attention/fwd_d72_qk80.cu`, `fa3_d72.cu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VisionTile {
    /// Q·Kᵀ over 80 (zero-padded), P·V over 72: 5.6% more MMA work than the useful 72. Both paths.
    #[default]
    Qk80,
    /// Everything padded to 96, as FA2's d96 kernel would run it: 33% more. FA2 only; kept to
    /// measure.
    Pad96,
    /// Q·Kᵀ over 80, P·V over 128 (two whole 64-column blocks): FA3 only, the fallback should
    /// the N = 72 P·V misbehave on some driver, and a check of it.
    Pv128,
}

/// Causal text prefill over the paged cache, no LSE, FA2: see [`prefill_paged_with`].
pub fn prefill_paged(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    q: &TensorView<'_>,
    queries: &Varlen<'_>,
    kv: &PagedKv<'_>,
    scale: f32,
) -> Result<()> {
    prefill_paged_version(gpu, out, q, queries, kv, scale, AttentionVersion::Fa2)
}

/// Causal text prefill over the paged cache, no LSE, with the given kernels: see
/// [`prefill_paged_with`].
pub fn prefill_paged_version(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    q: &TensorView<'_>,
    queries: &Varlen<'_>,
    kv: &PagedKv<'_>,
    scale: f32,
    kernels: impl Into<AttentionKernels>,
) -> Result<()> {
    let opts = PrefillOptions {
        scale,
        causal: true,
        kernels: kernels.into(),
    };
    prefill_paged_with(gpu, out, None, q, queries, kv, opts)
}

/// Text prefill over the paged cache:
/// `out[t, h] = softmax_j(scale · q[t, h] · K[s, j, h / group]) · V[s, j, h / group]` over the
/// keys `j` that query `t` sees (causal: `j <= seqused_k[s] - q_len[s] + i` for the `i`-th
/// query of sequence `s`).
///
/// - `q`, `out`: bf16 `[total_q, num_heads * head_dim]` or `[total_q, num_heads, head_dim]`, any
///   token stride (a multiple of 8), `head_dim` from the cache; `num_heads` a multiple of the
///   cache's kv heads.
/// - `lse`: optional f32 `[num_heads, total_q]`, contiguous: `ln Σ_j exp(scale · q·k_j)`.
/// - `queries`: the query runs of the sequences in `q`; `kv`: see [`PagedKv`].
/// - `opts.kernels`: FA2 or FA3 kernels; the same results within bf16 rounding.
pub fn prefill_paged_with(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    lse: Option<&mut TensorViewMut<'_>>,
    q: &TensorView<'_>,
    queries: &Varlen<'_>,
    kv: &PagedKv<'_>,
    opts: PrefillOptions,
) -> Result<()> {
    let op: &'static str = match opts.kernels.version {
        AttentionVersion::Fa2 => "attention_prefill_paged",
        AttentionVersion::Fa3 => "attention_prefill_paged_fa3",
    };
    let cd = kv.k_cache.dims().to_vec();
    let &[num_blocks, num_kv_heads, block_size, head_dim] = cd.as_slice() else {
        return Err(Error::invalid(
            op,
            format!("k_cache must be [num_blocks, num_kv_heads, block_size, head_dim], got {cd:?}"),
        ));
    };
    kv.k_cache.expect(op, "k_cache", DType::BF16, &cd)?;
    kv.v_cache.expect(op, "v_cache", DType::BF16, &cd)?;
    if !kv.k_cache.is_contiguous() || !kv.v_cache.is_contiguous() {
        return Err(Error::invalid(op, "k_cache and v_cache must be contiguous"));
    }
    if cd.contains(&0) {
        return Err(Error::invalid(op, format!("empty cache dims {cd:?}")));
    }
    aligned(op, "k_cache", kv.k_cache.device_ptr())?;
    aligned(op, "v_cache", kv.v_cache.device_ptr())?;
    let heads = q_heads(op, q, head_dim)?;
    let total_q = token_rows(op, "q", q, heads, head_dim)?;
    let out_rows = token_rows(op, "out", &out.as_view(), heads, head_dim)?;
    if out_rows != total_q {
        return Err(Error::invalid(op, format!("out has {out_rows} rows, q {total_q}")));
    }
    if heads % num_kv_heads != 0 {
        return Err(Error::invalid(
            op,
            format!("{heads} query heads are not a multiple of {num_kv_heads} kv heads"),
        ));
    }
    let num_seqs = seq_count(op, queries, total_q)?;
    let bt = kv.block_tables.dims().to_vec();
    let &[bt_seqs, max_blocks_per_seq] = bt.as_slice() else {
        return Err(Error::invalid(
            op,
            format!("block_tables must be [num_seqs, max_blocks_per_seq], got {bt:?}"),
        ));
    };
    kv.block_tables
        .expect(op, "block_tables", DType::I32, &[num_seqs, max_blocks_per_seq])?;
    if bt_seqs != num_seqs || max_blocks_per_seq == 0 {
        return Err(Error::invalid(
            op,
            format!("block_tables {bt:?} needs at least one column"),
        ));
    }
    kv.seqused_k.expect(op, "seqused_k", DType::I32, &[num_seqs])?;
    let lse_ptr = lse_ptr(op, lse, heads, total_q)?;

    let params = sys::OcrvlAttnParams {
        q: q.device_ptr() as *const _,
        k: kv.k_cache.device_ptr() as *const _,
        v: kv.v_cache.device_ptr() as *const _,
        o: out.device_ptr() as *mut _,
        lse: lse_ptr,
        cu_seqlens_q: queries.cu_seqlens.device_ptr() as *const i32,
        cu_seqlens_k: std::ptr::null(),
        seqused_k: kv.seqused_k.device_ptr() as *const i32,
        block_tables: kv.block_tables.device_ptr() as *const i32,
        q_stride: q.stride0() as i64,
        k_stride: 0,
        v_stride: 0,
        o_stride: out.stride0() as i64,
        block_table_stride: kv.block_tables.stride0() as i64,
        num_seqs: as_i32(op, "num_seqs", num_seqs)?,
        total_q: as_i32(op, "total_q", total_q)?,
        max_seqlen_q: as_i32(op, "max_seqlen", queries.max_seqlen)?,
        num_heads: as_i32(op, "num_heads", heads)?,
        num_kv_heads: as_i32(op, "num_kv_heads", num_kv_heads)?,
        head_dim: as_i32(op, "head_dim", head_dim)?,
        block_size: as_i32(op, "block_size", block_size)?,
        num_blocks: as_i32(op, "num_blocks", num_blocks)?,
        max_blocks_per_seq: as_i32(op, "max_blocks_per_seq", max_blocks_per_seq)?,
        scale: opts.scale,
        causal: i32::from(opts.causal),
        padded_head_dim: 0,
        dtype: c_dtype(DType::BF16),
        fa3_mainloop: 0,
        fa3_vision_tile: 0,
    };
    launch(op, gpu, &params, true, opts.kernels)
}

/// Vision attention with the default tile, FA2: see [`vision_varlen_with`].
pub fn vision_varlen(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    qkv: &VisionQkv<'_>,
    images: &Varlen<'_>,
    scale: f32,
) -> Result<()> {
    vision_varlen_with(
        gpu,
        out,
        qkv,
        images,
        scale,
        VisionTile::default(),
        AttentionVersion::Fa2,
    )
}

/// Vision attention with the default tile and the given kernels: see [`vision_varlen_with`].
pub fn vision_varlen_version(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    qkv: &VisionQkv<'_>,
    images: &Varlen<'_>,
    scale: f32,
    kernels: impl Into<AttentionKernels>,
) -> Result<()> {
    vision_varlen_with(gpu, out, qkv, images, scale, VisionTile::default(), kernels)
}

/// Vision attention with a chosen tile, FA2: see [`vision_varlen_with`].
pub fn vision_varlen_tile(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    qkv: &VisionQkv<'_>,
    images: &Varlen<'_>,
    scale: f32,
    tile: VisionTile,
) -> Result<()> {
    vision_varlen_with(gpu, out, qkv, images, scale, tile, AttentionVersion::Fa2)
}

/// Vision attention: `out[t, h] = softmax_j(scale · q[t, h] · k[j, h]) · v[j, h]` over the keys
/// `j` of `t`'s own image (bidirectional; images packed by `images.cu_seqlens`).
///
/// - `qkv`: see [`VisionQkv`]; `out`: bf16 `[total, num_heads * head_dim]` or
///   `[total, num_heads, head_dim]`, any token stride (a multiple of 8).
/// - `tile`: [`VisionTile::Qk80`] for the model; the others for comparison (`Pad96` FA2 only,
///   `Pv128` FA3 only; the other path returns `OCRVL_STATUS_UNSUPPORTED`).
/// - `kernels`: FA2 or FA3 kernels (and the FA3 mainloop and tile); the same results within
///   bf16 rounding.
pub fn vision_varlen_with(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    qkv: &VisionQkv<'_>,
    images: &Varlen<'_>,
    scale: f32,
    tile: VisionTile,
    kernels: impl Into<AttentionKernels>,
) -> Result<()> {
    let kernels = kernels.into();
    let op: &'static str = match kernels.version {
        AttentionVersion::Fa2 => "attention_vision_varlen",
        AttentionVersion::Fa3 => "attention_vision_varlen_fa3",
    };
    let heads = qkv.num_heads;
    let q_inner = qkv.q.shape().inner();
    if heads == 0 || q_inner % heads != 0 {
        return Err(Error::invalid(
            op,
            format!("q {:?} does not split into {heads} heads", qkv.q.dims()),
        ));
    }
    let head_dim = q_inner / heads;
    let total = token_rows(op, "q", &qkv.q, heads, head_dim)?;
    for (what, v) in [("k", &qkv.k), ("v", &qkv.v), ("out", &out.as_view())] {
        let rows = token_rows(op, what, v, heads, head_dim)?;
        if rows != total {
            return Err(Error::invalid(op, format!("{what} has {rows} rows, q {total}")));
        }
    }
    let num_seqs = seq_count(op, images, total)?;
    let params = sys::OcrvlAttnParams {
        q: qkv.q.device_ptr() as *const _,
        k: qkv.k.device_ptr() as *const _,
        v: qkv.v.device_ptr() as *const _,
        o: out.device_ptr() as *mut _,
        lse: std::ptr::null_mut(),
        cu_seqlens_q: images.cu_seqlens.device_ptr() as *const i32,
        cu_seqlens_k: images.cu_seqlens.device_ptr() as *const i32,
        seqused_k: std::ptr::null(),
        block_tables: std::ptr::null(),
        q_stride: qkv.q.stride0() as i64,
        k_stride: qkv.k.stride0() as i64,
        v_stride: qkv.v.stride0() as i64,
        o_stride: out.stride0() as i64,
        block_table_stride: 0,
        num_seqs: as_i32(op, "num_seqs", num_seqs)?,
        total_q: as_i32(op, "total", total)?,
        max_seqlen_q: as_i32(op, "max_seqlen", images.max_seqlen)?,
        num_heads: as_i32(op, "num_heads", heads)?,
        num_kv_heads: as_i32(op, "num_heads", heads)?,
        head_dim: as_i32(op, "head_dim", head_dim)?,
        block_size: 0,
        num_blocks: 0,
        max_blocks_per_seq: 0,
        scale,
        causal: 0,
        padded_head_dim: match tile {
            VisionTile::Qk80 => 80,
            VisionTile::Pad96 => 96,
            VisionTile::Pv128 => 128,
        },
        dtype: c_dtype(DType::BF16),
        fa3_mainloop: 0,
        fa3_vision_tile: 0,
    };
    launch(op, gpu, &params, false, kernels)
}

/// The one place a launcher is called.
fn launch(
    op: &'static str,
    gpu: &Gpu,
    params: &sys::OcrvlAttnParams,
    paged: bool,
    kernels: AttentionKernels,
) -> Result<()> {
    if !params.scale.is_finite() || params.scale <= 0.0 {
        return Err(Error::invalid(
            op,
            format!("scale {} must be finite and positive", params.scale),
        ));
    }
    let params = &sys::OcrvlAttnParams {
        fa3_mainloop: match kernels.version {
            AttentionVersion::Fa2 => 0,
            AttentionVersion::Fa3 => kernels.fa3_mainloop.c_value(),
        },
        fa3_vision_tile: match (kernels.version, paged) {
            (AttentionVersion::Fa3, false) => kernels.fa3_vision_tile.map_or(0, Fa3VisionTile::c_value),
            _ => 0,
        },
        ..*params
    };
    // SAFETY: every pointer in `params` addresses a view whose dims were checked against the
    // sizes in `params` on this GPU (device contents are trusted as documented above), and the
    // stream is the one all other work on these views is queued on.
    let status = unsafe {
        match (kernels.version, paged) {
            (AttentionVersion::Fa2, true) => sys::ocrvl_attention_prefill_paged(params, gpu.raw_stream()),
            (AttentionVersion::Fa2, false) => sys::ocrvl_attention_varlen(params, gpu.raw_stream()),
            (AttentionVersion::Fa3, true) => sys::ocrvl_attention_prefill_paged_fa3(params, gpu.raw_stream()),
            (AttentionVersion::Fa3, false) => sys::ocrvl_attention_varlen_fa3(params, gpu.raw_stream()),
        }
    };
    check(op, status)
}

/// Query heads of `q` given the head dim: `q` is `[tokens, heads * head_dim]` or
/// `[tokens, heads, head_dim]`.
fn q_heads(op: &'static str, q: &TensorView<'_>, head_dim: usize) -> Result<usize> {
    let inner = q.shape().inner();
    if inner == 0 || inner % head_dim != 0 {
        return Err(Error::invalid(
            op,
            format!(
                "q {:?} is not [tokens, heads * {head_dim}] or [tokens, heads, {head_dim}]",
                q.dims()
            ),
        ));
    }
    Ok(inner / head_dim)
}

/// Rows of a bf16 `[tokens, heads * head_dim]` or `[tokens, heads, head_dim]` view whose rows
/// 16-byte copies can read: the token stride a multiple of 8 elements, the base 16-byte
/// aligned.
fn token_rows(op: &'static str, what: &str, v: &TensorView<'_>, heads: usize, head_dim: usize) -> Result<usize> {
    let d = v.dims();
    let shape_ok = match d.len() {
        2 => d[1] == heads * head_dim,
        3 => d[1] == heads && d[2] == head_dim,
        _ => false,
    };
    if v.dtype() != DType::BF16 || !shape_ok {
        return Err(Error::invalid(
            op,
            format!(
                "{what}: expected bf16 [tokens, {}] or [tokens, {heads}, {head_dim}], got {} {d:?}",
                heads * head_dim,
                v.dtype()
            ),
        ));
    }
    if v.stride0() % 8 != 0 {
        return Err(Error::invalid(
            op,
            format!(
                "{what}: token stride {} is not a multiple of 8 elements (16-byte loads)",
                v.stride0()
            ),
        ));
    }
    aligned(op, what, v.device_ptr())?;
    Ok(d[0])
}

fn aligned(op: &'static str, what: &str, ptr: u64) -> Result<()> {
    if ptr % 16 != 0 {
        return Err(Error::invalid(
            op,
            format!("{what} at 0x{ptr:x} is not 16-byte aligned"),
        ));
    }
    Ok(())
}

/// Sequences in a [`Varlen`] over `total` tokens.
fn seq_count(op: &'static str, runs: &Varlen<'_>, total: usize) -> Result<usize> {
    let d = runs.cu_seqlens.dims();
    if runs.cu_seqlens.dtype() != DType::I32 || d.len() != 1 || d[0] == 0 {
        return Err(Error::invalid(
            op,
            format!(
                "cu_seqlens: expected i32 [num_seqs + 1], got {} {d:?}",
                runs.cu_seqlens.dtype()
            ),
        ));
    }
    if runs.max_seqlen > total {
        return Err(Error::invalid(
            op,
            format!("max_seqlen {} exceeds the {total} tokens", runs.max_seqlen),
        ));
    }
    Ok(d[0] - 1)
}

fn lse_ptr(op: &'static str, lse: Option<&mut TensorViewMut<'_>>, heads: usize, total_q: usize) -> Result<*mut f32> {
    let Some(l) = lse else {
        return Ok(std::ptr::null_mut());
    };
    l.as_view().expect(op, "lse", DType::F32, &[heads, total_q])?;
    if !l.is_contiguous() {
        return Err(Error::invalid(op, "lse must be contiguous"));
    }
    Ok(l.device_ptr() as *mut f32)
}

fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} {v} does not fit in i32")))
}
