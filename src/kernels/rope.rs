//! Wrappers for `kernels/include/rope.h`: rotate-half (neox) rope, in place on q and k in one
//! launch, computed in f32 with one rounding to the storage dtype.
//!
//! q and k are 2-D views `[tokens, heads * head_dim]`: the last dim contiguous, any token stride
//! (`stride0`), so they may be column slices of one fused qkv buffer. The head counts are the
//! widths over `head_dim`. q and k must not share elements. Dtypes: bf16 or f16, the same for
//! both. Which head dims have a kernel is the launcher's choice (M-RoPE 64 and 128, vision 72 and 80);
//! others return `Error::Kernel` with `OCRVL_STATUS_UNSUPPORTED`.

use crate::error::{Error, Result};
use crate::runtime::{DType, Gpu, TensorView, TensorViewMut};
use crate::sys;

use super::kv_cache::check_cache_write;
use super::{c_dtype, check};

/// Text M-RoPE (§3.10 of the model spec): pair `j` of each head (elements `j` and
/// `j + head_dim/2`) turns by `pos_axis(j) * theta^(-2j/head_dim)`, where frequency `j` takes
/// its position from axis T for `j < sections[0]`, H for `j < sections[0] + sections[1]`, else
/// W. `sections` must sum to `head_dim / 2` (the rotary dim is the head dim).
///
/// `positions` is i32 `[3, tokens]` (rows T, H, W; any row stride, e.g. the first `tokens`
/// columns of a larger buffer), or i32 `[tokens]`, which serves all three axes (plain 1-D
/// rope, as for text-only batches). q and k: 16-byte aligned, token strides multiples of 8
/// elements.
pub fn mrope(
    gpu: &Gpu,
    q: &mut TensorViewMut<'_>,
    k: &mut TensorViewMut<'_>,
    positions: &TensorView<'_>,
    head_dim: usize,
    sections: [u32; 3],
    theta: f32,
) -> Result<()> {
    text_rope(gpu, q, k, positions, head_dim, TextRope::Mrope(sections), theta, None)
}

/// [`mrope`], and in the same launch the rotated `k` rows and the `v` rows into the paged
/// cache, with the bits and skips of [`write_kv`](super::kv_cache::write_kv) after the rope
/// (one launch per decoder layer instead of two). `v` and the cache as `write_kv` takes them.
#[allow(clippy::too_many_arguments)]
pub fn mrope_and_cache(
    gpu: &Gpu,
    q: &mut TensorViewMut<'_>,
    k: &mut TensorViewMut<'_>,
    positions: &TensorView<'_>,
    head_dim: usize,
    sections: [u32; 3],
    theta: f32,
    cache: CacheWrite<'_, '_>,
) -> Result<()> {
    text_rope(
        gpu,
        q,
        k,
        positions,
        head_dim,
        TextRope::Mrope(sections),
        theta,
        Some(cache),
    )
}

/// Where a text rope launch also writes k and v: the paged cache of one layer.
pub struct CacheWrite<'a, 't> {
    pub k_cache: &'a mut TensorViewMut<'t>,
    pub v_cache: &'a mut TensorViewMut<'t>,
    pub v: &'a TensorView<'t>,
    pub slot_mapping: &'a TensorView<'t>,
}

/// The C form of an optional cache write, checked against `k` as `write_kv` checks it.
fn cache_sink(
    op: &'static str,
    k: &TensorViewMut<'_>,
    head_dim: usize,
    cache: &Option<CacheWrite<'_, '_>>,
) -> Result<Option<sys::OcrvlRopeCacheSink>> {
    let Some(c) = cache else {
        return Ok(None);
    };
    let dims = check_cache_write(op, c.k_cache, c.v_cache, &k.as_view(), c.v, c.slot_mapping)?;
    if dims.tokens != k.dims()[0] || dims.head_dim != head_dim {
        return Err(Error::invalid(
            op,
            format!(
                "the cache write ({} tokens, head_dim {}) does not match k ({} tokens, head_dim {head_dim})",
                dims.tokens,
                dims.head_dim,
                k.dims()[0]
            ),
        ));
    }
    Ok(Some(sys::OcrvlRopeCacheSink {
        k_cache: c.k_cache.device_ptr() as *mut _,
        v_cache: c.v_cache.device_ptr() as *mut _,
        v: c.v.device_ptr() as *const _,
        v_stride: c.v.stride0() as i64,
        slot_mapping: c.slot_mapping.device_ptr() as *const i32,
        block_size: dims.block_size as i32,
        num_blocks: dims.num_blocks as i64,
    }))
}

/// The two text rope schemes, with their section parameters.
#[derive(Clone, Copy)]
enum TextRope {
    /// Neox pairs, frequencies by sections (T, H, W).
    Mrope([u32; 3]),
    /// Interleaved pairs, the first `section_hw` by H/W.
    Interleaved(usize),
}

/// Checks and launches a text rope (with its cache write when `cache` is given).
#[allow(clippy::too_many_arguments)]
fn text_rope(
    gpu: &Gpu,
    q: &mut TensorViewMut<'_>,
    k: &mut TensorViewMut<'_>,
    positions: &TensorView<'_>,
    head_dim: usize,
    scheme: TextRope,
    theta: f32,
    cache: Option<CacheWrite<'_, '_>>,
) -> Result<()> {
    let op = match scheme {
        TextRope::Mrope(_) => "mrope",
        TextRope::Interleaved(_) => "mrope_interleaved",
    };
    let qk = check_qk(op, q, k, head_dim, 16, theta)?;
    match scheme {
        TextRope::Mrope(sections) => {
            let sum: u64 = sections.iter().map(|&s| s as u64).sum();
            if sum * 2 != head_dim as u64 {
                return Err(Error::invalid(
                    op,
                    format!(
                        "sections {sections:?} sum to {sum}, not head_dim / 2 = {}",
                        head_dim / 2
                    ),
                ));
            }
        }
        TextRope::Interleaved(section_hw) => {
            if section_hw > head_dim / 2 || section_hw % 2 != 0 {
                return Err(Error::invalid(
                    op,
                    format!(
                        "section_hw {section_hw} must be even and at most head_dim / 2 = {}",
                        head_dim / 2
                    ),
                ));
            }
        }
    }
    let pos_stride = position_rows(op, positions, qk.tokens)?;
    let sink = cache_sink(op, k, head_dim, &cache)?;
    let sink_ptr = sink.as_ref().map_or(std::ptr::null(), |s| s as *const _);
    let (qp, kp, pp) = (
        q.device_ptr() as *mut _,
        k.device_ptr() as *mut _,
        positions.device_ptr() as *const i32,
    );
    let (qs, ks, ps, tokens) = (
        q.stride0() as i64,
        k.stride0() as i64,
        pos_stride as i64,
        qk.tokens as i64,
    );
    let (dtype, stream) = (c_dtype(q.dtype()), gpu.raw_stream());
    // SAFETY: the views were checked above: q and k address `tokens` rows of their widths at
    // their strides, positions 3 rows (or one) of `tokens` i32; the cache write as `write_kv`
    // checks it; all on this GPU, ordered on its stream. `sink` outlives the call.
    let status = unsafe {
        match scheme {
            TextRope::Mrope(sec) => sys::ocrvl_rope_mrope(
                qp,
                qs,
                kp,
                ks,
                pp,
                ps,
                tokens,
                qk.q_heads,
                qk.kv_heads,
                head_dim as i32,
                sec[0] as i32,
                sec[1] as i32,
                sec[2] as i32,
                theta,
                sink_ptr,
                dtype,
                stream,
            ),
            TextRope::Interleaved(hw) => sys::ocrvl_rope_mrope_interleaved(
                qp,
                qs,
                kp,
                ks,
                pp,
                ps,
                tokens,
                qk.q_heads,
                qk.kv_heads,
                head_dim as i32,
                hw as i32,
                theta,
                sink_ptr,
                dtype,
                stream,
            ),
        }
    };
    check(op, status)
}

/// ERNIE-4.5-VL's 3D rope with INTERLEAVED pairs (elements `2i`, `2i+1` rotate together), in
/// place on q and k: pair `i` turns by the H position for even `i < section_hw`, the W position
/// for odd `i < section_hw`, the T position beyond (the model: `section_hw` 44 of 64 pairs,
/// theta 500000; docs/ERNIE_4_5_VL_SPEC.md §3.10). f32 math, one rounding.
///
/// `q`: `[tokens, q_heads · head_dim]`, `k`: `[tokens, kv_heads · head_dim]` (column slices of
/// a fused qkv buffer allowed); `positions`: i32 `[3, tokens]` (rows T, H, W) or `[tokens]`
/// (one position for all three axes: text-only batches).
pub fn mrope_interleaved(
    gpu: &Gpu,
    q: &mut TensorViewMut<'_>,
    k: &mut TensorViewMut<'_>,
    positions: &TensorView<'_>,
    head_dim: usize,
    section_hw: usize,
    theta: f32,
) -> Result<()> {
    text_rope(
        gpu,
        q,
        k,
        positions,
        head_dim,
        TextRope::Interleaved(section_hw),
        theta,
        None,
    )
}

/// [`mrope_interleaved`], and in the same launch the rotated `k` rows and the `v` rows into
/// the paged cache, as [`mrope_and_cache`] does.
#[allow(clippy::too_many_arguments)]
pub fn mrope_interleaved_and_cache(
    gpu: &Gpu,
    q: &mut TensorViewMut<'_>,
    k: &mut TensorViewMut<'_>,
    positions: &TensorView<'_>,
    head_dim: usize,
    section_hw: usize,
    theta: f32,
    cache: CacheWrite<'_, '_>,
) -> Result<()> {
    text_rope(
        gpu,
        q,
        k,
        positions,
        head_dim,
        TextRope::Interleaved(section_hw),
        theta,
        Some(cache),
    )
}

/// 2-D vision rope (§3.4 of the model spec): with `f = head_dim / 4` frequencies
/// `theta^(-2i / (head_dim/2))`, pair `j < f` of each head turns by `rows[t] * inv_freq[j]` and
/// pair `f <= j < head_dim/2` by `cols[t] * inv_freq[j - f]`; pair `j` couples elements `j` and
/// `j + head_dim/2`. `rows` and `cols` are i32 `[tokens]` (each token's patch row and column in
/// its image). q and k: 8-byte aligned, token strides multiples of 4 elements.
pub fn vision_rope(
    gpu: &Gpu,
    q: &mut TensorViewMut<'_>,
    k: &mut TensorViewMut<'_>,
    rows: &TensorView<'_>,
    cols: &TensorView<'_>,
    head_dim: usize,
    theta: f32,
) -> Result<()> {
    const OP: &str = "vision_rope";
    let qk = check_qk(OP, q, k, head_dim, 8, theta)?;
    for (what, p) in [("rows", rows), ("cols", cols)] {
        p.expect(OP, what, DType::I32, &[qk.tokens])?;
    }
    // SAFETY: as in `mrope`; rows and cols hold `tokens` i32 each.
    let status = unsafe {
        sys::ocrvl_rope_vision(
            q.device_ptr() as *mut _,
            q.stride0() as i64,
            k.device_ptr() as *mut _,
            k.stride0() as i64,
            rows.device_ptr() as *const i32,
            cols.device_ptr() as *const i32,
            qk.tokens as i64,
            qk.q_heads,
            qk.kv_heads,
            head_dim as i32,
            theta,
            c_dtype(q.dtype()),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

struct QkShape {
    tokens: usize,
    q_heads: i32,
    kv_heads: i32,
}

/// The row stride of `positions`: i32 `[3, tokens]` (rows T, H, W; its row stride) or
/// `[tokens]` (one row for all three axes: 0).
fn position_rows(op: &'static str, positions: &TensorView<'_>, tokens: usize) -> Result<usize> {
    if positions.dtype() != DType::I32 {
        return Err(Error::invalid(
            op,
            format!("positions must be i32, got {}", positions.dtype()),
        ));
    }
    match positions.dims() {
        [n] if *n == tokens => Ok(0),
        [3, n] if *n == tokens => Ok(positions.stride0()),
        d => Err(Error::invalid(
            op,
            format!("positions must be [3, {tokens}] or [{tokens}], got {d:?}"),
        )),
    }
}

/// Checks q and k against the module's contract; `align` is the vector width in bytes the
/// kernel moves (pointers and token strides must be multiples of it).
fn check_qk(
    op: &'static str,
    q: &TensorViewMut<'_>,
    k: &TensorViewMut<'_>,
    head_dim: usize,
    align: usize,
    theta: f32,
) -> Result<QkShape> {
    if !matches!(q.dtype(), DType::BF16 | DType::F16) || k.dtype() != q.dtype() {
        return Err(Error::invalid(
            op,
            format!(
                "q and k must both be bf16 or both f16, got {} and {}",
                q.dtype(),
                k.dtype()
            ),
        ));
    }
    let (qd, kd) = (q.dims(), k.dims());
    if qd.len() != 2 || kd.len() != 2 || qd[0] != kd[0] {
        return Err(Error::invalid(
            op,
            format!("q and k must be [tokens, heads * head_dim] with equal tokens, got {qd:?} and {kd:?}"),
        ));
    }
    if head_dim == 0 || qd[1] == 0 || kd[1] == 0 || qd[1] % head_dim != 0 || kd[1] % head_dim != 0 {
        return Err(Error::invalid(
            op,
            format!("widths of q {qd:?} and k {kd:?} must be non-zero multiples of head_dim {head_dim}"),
        ));
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::invalid(
            op,
            format!("theta must be positive and finite, got {theta}"),
        ));
    }
    let es = q.dtype().size_bytes();
    for (what, ptr, stride) in [("q", q.device_ptr(), q.stride0()), ("k", k.device_ptr(), k.stride0())] {
        if ptr % align as u64 != 0 || (stride * es) % align != 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "{what} must be {align}-byte aligned with a token stride of a multiple of {} elements \
                     (address 0x{ptr:x}, stride {stride})",
                    align / es
                ),
            ));
        }
    }
    let heads = |w: usize| {
        i32::try_from(w / head_dim).map_err(|_| Error::invalid(op, format!("{} heads is too many", w / head_dim)))
    };
    Ok(QkShape {
        tokens: qd[0],
        q_heads: heads(qd[1])?,
        kv_heads: heads(kd[1])?,
    })
}
