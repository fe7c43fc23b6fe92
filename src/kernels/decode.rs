//! Wrappers for `kernels/include/decode.h`: paged decode attention (one new query token per
//! sequence against its keys in the block-paged KV cache of `kv_cache.h`), with split-KV and a
//! combine step when there are few sequences or long contexts.

use crate::error::{Error, Result};
use crate::runtime::{DType, Gpu, TensorView, TensorViewMut};
use crate::sys;

use super::{c_dtype, check};

/// The most splits one launch takes.
pub const MAX_SPLITS: usize = sys::OCRVL_DECODE_MAX_SPLITS as usize;

/// The largest GQA group (query heads per KV head) the kernel takes.
pub const MAX_GROUP: usize = sys::OCRVL_DECODE_MAX_GROUP as usize;

/// Whether [`decode_paged`] takes a model of these heads (bf16 aside): head_dim 128 and a GQA
/// group of 1..=[`MAX_GROUP`] (kernels/include/decode.h).
pub fn decode_kernel_supports(num_q_heads: usize, num_kv_heads: usize, head_dim: usize) -> bool {
    head_dim == 128
        && num_kv_heads > 0
        && num_q_heads % num_kv_heads == 0
        && (1..=MAX_GROUP).contains(&(num_q_heads / num_kv_heads))
}

/// The paged K/V of one layer and the batch's view of it.
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a> {
    /// `[num_blocks, num_kv_heads, block_size, head_dim]`, contiguous.
    pub k_cache: TensorView<'a>,
    /// Same dims and dtype as `k_cache`.
    pub v_cache: TensorView<'a>,
    /// i32 `[num_seqs, max_blocks_per_seq]`, contiguous: sequence `s`'s key at position `p`
    /// lives in block `block_tables[s][p / block_size]`, offset `p % block_size`.
    pub block_tables: TensorView<'a>,
    /// i32 `[num_seqs]`: keys of each sequence, the new token included (its K/V is already
    /// written to the cache).
    pub seq_lens: TensorView<'a>,
    /// An upper bound of `seq_lens`, known to the host (the scheduler knows the lengths). Only
    /// the split heuristic uses it; it must not exceed `max_blocks_per_seq * block_size`.
    pub max_seq_len: usize,
}

/// The split count the kernel's heuristic picks (`ocrvl_decode_num_splits`): 1 when the
/// `num_seqs * num_kv_heads` CTAs number at least half the SMs, else about one CTA per SM,
/// with no split under 256 keys of `max_seq_len` (decode.h and paged_decode.cuh give the
/// measurements behind it).
pub fn decode_num_splits(num_seqs: usize, num_kv_heads: usize, max_seq_len: usize, sm_count: usize) -> usize {
    let c = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    // SAFETY: a pure host function of its integer arguments.
    let n = unsafe { sys::ocrvl_decode_num_splits(c(num_seqs), c(num_kv_heads), c(max_seq_len), c(sm_count)) };
    n.max(1) as usize
}

/// Bytes of workspace [`decode_paged`] needs for `num_splits` (0 for one split).
pub fn decode_workspace_bytes(num_seqs: usize, num_q_heads: usize, head_dim: usize, num_splits: usize) -> usize {
    let c = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    // SAFETY: a pure host function of its integer arguments.
    let b = unsafe { sys::ocrvl_decode_workspace_size(c(num_seqs), c(num_q_heads), c(head_dim), c(num_splits)) };
    b.max(0) as usize
}

fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} {v} does not fit in i32")))
}

/// Decode attention over the paged cache:
/// `o[s, h] = softmax_j(scale * q[s, h] . K[s, j, h / group]) . V[s, j, h / group]` for
/// `j < seq_lens[s]`, softmax and sums in f32. Returns the number of splits used.
///
/// - `q`, `o`: `[num_seqs, num_q_heads, head_dim]` or `[num_seqs, num_q_heads * head_dim]`, any
///   token stride (dim 0; `q` may be a column slice of the fused qkv output), the same dtype as
///   the caches.
/// - `kv`: see [`PagedKv`].
/// - `num_splits`: `None` for the heuristic ([`decode_num_splits`] from `kv.max_seq_len` and
///   the GPU's SM count), or `Some(1..=MAX_SPLITS)`.
/// - `workspace`: needed when more than one split is used: a contiguous view of at least
///   [`decode_workspace_bytes`] bytes (any dtype); ignored otherwise.
///
/// Checked here: dtypes, ranks, dims that must agree, contiguity, the workspace size.
/// Checked by the launcher (`Error::Kernel` with `OCRVL_STATUS_UNSUPPORTED`): the supported
/// set, which is bf16, head_dim 128, 8 query heads per kv head, block_size a power of two in
/// 16..=256, 16-byte aligned pointers and token strides that are multiples of 8 elements.
/// Trusted (device data, not checked): block-table entries of the blocks that hold positions
/// below `seq_lens[s]` are in `[0, num_blocks)`; the kernel clamps `seq_lens` to
/// `[0, max_blocks_per_seq * block_size]`, and a sequence of length 0 gets `o = 0`. `o` must
/// not overlap `q` or the caches.
pub fn decode_paged(
    gpu: &Gpu,
    o: &mut TensorViewMut<'_>,
    q: &TensorView<'_>,
    kv: &PagedKv<'_>,
    scale: f32,
    num_splits: Option<usize>,
    workspace: Option<&mut TensorViewMut<'_>>,
) -> Result<usize> {
    const OP: &str = "decode_paged";
    let dtype = kv.k_cache.dtype();
    let cd = kv.k_cache.dims().to_vec();
    let &[num_blocks, num_kv_heads, block_size, head_dim] = cd.as_slice() else {
        return Err(Error::invalid(
            OP,
            format!("k_cache must be [num_blocks, num_kv_heads, block_size, head_dim], got {cd:?}"),
        ));
    };
    kv.v_cache.expect(OP, "v_cache", dtype, &cd)?;
    if !kv.k_cache.is_contiguous() || !kv.v_cache.is_contiguous() {
        return Err(Error::invalid(OP, "k_cache and v_cache must be contiguous"));
    }
    if num_blocks == 0 || num_kv_heads == 0 || block_size == 0 || head_dim == 0 {
        return Err(Error::invalid(OP, format!("empty cache dims {cd:?}")));
    }

    let num_seqs = q.dims().first().copied().unwrap_or(0);
    let q_inner = q.shape().inner();
    if q.dims().len() < 2 || q.dims().len() > 3 || q_inner % head_dim != 0 || q_inner == 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "q must be [num_seqs, num_q_heads, {head_dim}] or [num_seqs, num_q_heads * {head_dim}], got {:?}",
                q.dims()
            ),
        ));
    }
    let num_q_heads = q_inner / head_dim;
    if q.dims().len() == 3 && q.dims()[2] != head_dim {
        return Err(Error::invalid(
            OP,
            format!("q {:?}: last dim must be head_dim {head_dim}", q.dims()),
        ));
    }
    if q.dtype() != dtype {
        return Err(Error::invalid(
            OP,
            format!("q is {}, the caches are {dtype}", q.dtype()),
        ));
    }
    let o_ok = o.dims() == [num_seqs, num_q_heads, head_dim] || o.dims() == [num_seqs, num_q_heads * head_dim];
    if o.dtype() != dtype || !o_ok {
        return Err(Error::invalid(
            OP,
            format!(
                "o: expected {dtype} [{num_seqs}, {num_q_heads}, {head_dim}] or [{num_seqs}, {}], got {} {:?}",
                num_q_heads * head_dim,
                o.dtype(),
                o.dims()
            ),
        ));
    }
    if num_q_heads % num_kv_heads != 0 {
        return Err(Error::invalid(
            OP,
            format!("{num_q_heads} query heads are not a multiple of {num_kv_heads} kv heads"),
        ));
    }

    let bt = kv.block_tables.dims().to_vec();
    let &[bt_seqs, max_blocks_per_seq] = bt.as_slice() else {
        return Err(Error::invalid(
            OP,
            format!("block_tables must be [num_seqs, max_blocks_per_seq], got {bt:?}"),
        ));
    };
    kv.block_tables
        .expect(OP, "block_tables", DType::I32, &[num_seqs, max_blocks_per_seq])?;
    if bt_seqs != num_seqs || max_blocks_per_seq == 0 || !kv.block_tables.is_contiguous() {
        return Err(Error::invalid(
            OP,
            format!("block_tables {bt:?} must be contiguous with at least one column"),
        ));
    }
    kv.seq_lens.expect(OP, "seq_lens", DType::I32, &[num_seqs])?;
    if kv.max_seq_len > max_blocks_per_seq * block_size {
        return Err(Error::invalid(
            OP,
            format!(
                "max_seq_len {} exceeds what the block table holds ({max_blocks_per_seq} x {block_size})",
                kv.max_seq_len
            ),
        ));
    }

    let splits = match num_splits {
        Some(n) if (1..=MAX_SPLITS).contains(&n) => n,
        Some(n) => return Err(Error::invalid(OP, format!("num_splits {n} not in 1..={MAX_SPLITS}"))),
        None => decode_num_splits(num_seqs, num_kv_heads, kv.max_seq_len, gpu.sm_count()),
    };
    let need = decode_workspace_bytes(num_seqs, num_q_heads, head_dim, splits);
    let (ws_ptr, ws_bytes) = match workspace {
        Some(ws) if need > 0 => {
            let have = ws.numel() * ws.dtype().size_bytes();
            if !ws.is_contiguous() || have < need {
                return Err(Error::invalid(
                    OP,
                    format!("{splits} splits need a contiguous workspace of {need} bytes, got {have} ({ws:?})"),
                ));
            }
            (ws.device_ptr(), have)
        }
        None if need > 0 => {
            return Err(Error::invalid(
                OP,
                format!("{splits} splits need a workspace of {need} bytes"),
            ));
        }
        _ => (0, 0),
    };

    let params = sys::OcrvlDecodeParams {
        o: o.device_ptr() as *mut _,
        q: q.device_ptr() as *const _,
        k_cache: kv.k_cache.device_ptr() as *const _,
        v_cache: kv.v_cache.device_ptr() as *const _,
        block_tables: kv.block_tables.device_ptr() as *const i32,
        seq_lens: kv.seq_lens.device_ptr() as *const i32,
        q_stride: q.stride0() as i64,
        o_stride: o.stride0() as i64,
        num_blocks: num_blocks as i64,
        num_seqs: as_i32(OP, "num_seqs", num_seqs)?,
        num_q_heads: as_i32(OP, "num_q_heads", num_q_heads)?,
        num_kv_heads: as_i32(OP, "num_kv_heads", num_kv_heads)?,
        head_dim: as_i32(OP, "head_dim", head_dim)?,
        block_size: as_i32(OP, "block_size", block_size)?,
        max_blocks_per_seq: as_i32(OP, "max_blocks_per_seq", max_blocks_per_seq)?,
        num_splits: splits as i32,
        scale,
        dtype: c_dtype(dtype),
    };
    // SAFETY: every pointer addresses a view of the dims checked above on this GPU (the
    // workspace at least `need` bytes), all work is ordered on the GPU's stream, and the
    // launcher reads `params` before returning.
    let status = unsafe {
        sys::ocrvl_decode_paged(
            &params,
            ws_ptr as *mut std::ffi::c_void,
            ws_bytes as i64,
            gpu.raw_stream(),
        )
    };
    check(OP, status)?;
    Ok(splits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_supports_head_dim_128_and_groups_1_to_8() {
        // PaddleOCR-VL's 16 over 2, ERNIE-4.5-VL's 20 over 4, and the ends of the range.
        for (q, kv) in [(16, 2), (20, 4), (4, 4), (8, 1), (21, 3)] {
            assert!(decode_kernel_supports(q, kv, 128), "{q} over {kv}");
        }
        assert!(!decode_kernel_supports(16, 2, 64), "head_dim 64");
        assert!(!decode_kernel_supports(16, 1, 128), "group 16");
        assert!(!decode_kernel_supports(18, 2, 128), "group 9");
        assert!(!decode_kernel_supports(12, 8, 128), "12 over 8 is no group");
        assert!(!decode_kernel_supports(16, 0, 128), "no kv heads");
        assert!(!decode_kernel_supports(0, 4, 128), "no query heads");
    }
}
