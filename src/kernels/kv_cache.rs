//! Wrappers for `kernels/include/kv_cache.h`: the block-paged KV cache writer. The layout
//! contract (per layer, K and V each `[num_blocks, num_kv_heads, block_size, head_dim]`, slots
//! `block_id * block_size + offset`) is written once, in that header.

use crate::error::{Error, Result};
use crate::runtime::{DType, Gpu, TensorView, TensorViewMut};
use crate::sys;

use super::{c_dtype, check};

/// Tokens per cache block unless configured otherwise (kv_cache.h says why 64).
pub const DEFAULT_BLOCK_SIZE: usize = sys::OCRVL_KV_CACHE_DEFAULT_BLOCK_SIZE as usize;
/// Block sizes the kernels accept: powers of two in this range.
pub const MIN_BLOCK_SIZE: usize = sys::OCRVL_KV_CACHE_MIN_BLOCK_SIZE as usize;
pub const MAX_BLOCK_SIZE: usize = sys::OCRVL_KV_CACHE_MAX_BLOCK_SIZE as usize;

/// Writes the new tokens' `k` and `v` into the caches at `slot_mapping` (vLLM's
/// `reshape_and_cache`), bit-exact, K and V in one launch.
///
/// - `k_cache`, `v_cache`: contiguous `[num_blocks, num_kv_heads, block_size, head_dim]`, the
///   same dtype (bf16 or f16) and dims; block_size a power of two from 16 to 256, head_dim a
///   multiple of 8 up to 256.
/// - `k`, `v`: `[tokens, num_kv_heads * head_dim]` (any token stride: column slices of the fused
///   qkv output) or `[tokens, num_kv_heads, head_dim]`; 16-byte aligned, token strides
///   multiples of 8 elements.
/// - `slot_mapping`: i32 `[tokens]`. Token `t` goes to block `slot / block_size`, offset
///   `slot % block_size`; a negative slot is skipped (padding).
///
/// Slots are trusted: they are device data, too costly to check here. The kernel skips, as a
/// defence, slots at or past `num_blocks * block_size`; two tokens with one slot leave one of
/// the two values, unspecified which.
pub fn write_kv(
    gpu: &Gpu,
    k_cache: &mut TensorViewMut<'_>,
    v_cache: &mut TensorViewMut<'_>,
    k: &TensorView<'_>,
    v: &TensorView<'_>,
    slot_mapping: &TensorView<'_>,
) -> Result<()> {
    const OP: &str = "write_kv";
    let c = check_cache_write(OP, k_cache, v_cache, k, v, slot_mapping)?;
    let dtype = k_cache.dtype();
    // SAFETY: the caches hold num_blocks * heads * block_size * head_dim elements each, k and v
    // `tokens` rows of heads * head_dim at their strides, slot_mapping `tokens` i32 (checked
    // above); all on this GPU, ordered on its stream. Slots past the pool are skipped on the
    // device.
    let status = unsafe {
        sys::ocrvl_kv_cache_reshape_and_cache(
            k_cache.device_ptr() as *mut _,
            v_cache.device_ptr() as *mut _,
            k.device_ptr() as *const _,
            k.stride0() as i64,
            v.device_ptr() as *const _,
            v.stride0() as i64,
            slot_mapping.device_ptr() as *const i32,
            c.tokens as i64,
            c.heads as i32,
            c.head_dim as i32,
            c.block_size as i32,
            c.num_blocks as i64,
            c_dtype(dtype),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// The dims a cache write was checked at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheWrite {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

/// Checks a write of `k` and `v` rows into the caches at `slot_mapping` against the contract
/// of [`write_kv`] (shared with the rope launch that writes the cache itself,
/// `kernels::rope::mrope_and_cache`).
pub(crate) fn check_cache_write(
    op: &'static str,
    k_cache: &TensorViewMut<'_>,
    v_cache: &TensorViewMut<'_>,
    k: &TensorView<'_>,
    v: &TensorView<'_>,
    slot_mapping: &TensorView<'_>,
) -> Result<CacheWrite> {
    let dtype = k_cache.dtype();
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return Err(Error::invalid(op, format!("caches must be bf16 or f16, got {dtype}")));
    }
    let cd = k_cache.dims().to_vec();
    let &[num_blocks, heads, block_size, head_dim] = cd.as_slice() else {
        return Err(Error::invalid(
            op,
            format!("k_cache must be [num_blocks, num_kv_heads, block_size, head_dim], got {cd:?}"),
        ));
    };
    v_cache.expect(op, "v_cache", dtype, &cd)?;
    if !k_cache.is_contiguous() || !v_cache.is_contiguous() {
        return Err(Error::invalid(op, "k_cache and v_cache must be contiguous"));
    }
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Error::invalid(
            op,
            format!("block_size {block_size} is not a power of two in {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"),
        ));
    }
    if head_dim == 0 || head_dim % 8 != 0 || head_dim > 256 || heads == 0 {
        return Err(Error::invalid(
            op,
            format!("head_dim {head_dim} must be a multiple of 8 up to 256, with at least one head ({heads})"),
        ));
    }
    let tokens = slot_mapping.dims().first().copied().unwrap_or(0);
    slot_mapping.expect(op, "slot_mapping", DType::I32, &[tokens])?;
    for (what, x) in [("k", k), ("v", v)] {
        let ok_dims = x.dims() == [tokens, heads * head_dim] || x.dims() == [tokens, heads, head_dim];
        if x.dtype() != dtype || !ok_dims {
            return Err(Error::invalid(
                op,
                format!(
                    "{what}: expected {dtype} [{tokens}, {}] or [{tokens}, {heads}, {head_dim}], got {} {:?}",
                    heads * head_dim,
                    x.dtype(),
                    x.dims()
                ),
            ));
        }
    }
    let es = dtype.size_bytes();
    for (what, ptr, stride) in [
        ("k_cache", k_cache.device_ptr(), 0),
        ("v_cache", v_cache.device_ptr(), 0),
        ("k", k.device_ptr(), k.stride0()),
        ("v", v.device_ptr(), v.stride0()),
    ] {
        if ptr % 16 != 0 || (stride * es) % 16 != 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "{what} must be 16-byte aligned with a token stride of a multiple of 8 elements \
                     (address 0x{ptr:x}, stride {stride})"
                ),
            ));
        }
    }
    Ok(CacheWrite {
        tokens,
        heads,
        head_dim,
        block_size,
        num_blocks,
    })
}
