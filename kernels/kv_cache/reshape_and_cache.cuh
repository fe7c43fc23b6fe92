// reshape_and_cache: scatter the new tokens' k and v rows into the block-paged caches
// (layout in kernels/include/kv_cache.h).
//
// A pure copy, so the kernel moves raw 16-byte vectors and knows no dtype: one thread per
// vector, ordered (token, K|V, head, vector) so that consecutive threads read consecutive
// bytes of a token's k (then v) row, and write whole head rows (head_dim * 2 bytes, 256 B for
// the text model) of the destination tile. K and V share one launch and one read of the slot.
// Slots < 0 (padding) and >= num_blocks * block_size are skipped.
// Constraints (checked by the launcher): head_dim * 2 bytes is a multiple of 16; every pointer
// 16-byte aligned; strides multiples of 8 elements; block_size a power of two.
#pragma once
#include <stdint.h>

#include "common/check.cuh"

namespace ocrvl {
namespace kv_cache {

constexpr int kThreads = 256;
constexpr int kElemsPerVec = 8;  // 16 bytes of a 2-byte dtype

// Grid: (blocks), grid-stride over num_tokens * 2 * num_kv_heads * vecs_per_head vectors (the
// launcher keeps that count under 2^31, so indices are 32-bit); Block: (kThreads).
__global__ void __launch_bounds__(kThreads) reshape_and_cache_kernel(
    uint4* __restrict__ k_cache,               // [num_blocks, num_kv_heads, block_size, head_dim] as 16-byte vectors
    uint4* __restrict__ v_cache,               // [num_blocks, num_kv_heads, block_size, head_dim]
    const uint4* __restrict__ k,               // [num_tokens, num_kv_heads, head_dim], token stride k_stride_vecs
    int64_t k_stride_vecs,
    const uint4* __restrict__ v,               // [num_tokens, num_kv_heads, head_dim], token stride v_stride_vecs
    int64_t v_stride_vecs,
    const int32_t* __restrict__ slot_mapping,  // [num_tokens]
    int num_tokens, int num_kv_heads, int vecs_per_head, int block_size_log2, int64_t num_slots) {
    const int per_token = 2 * num_kv_heads * vecs_per_head;
    const int total = num_tokens * per_token;
    const int64_t step = (int64_t)gridDim.x * kThreads;
    // The loop index is 64-bit only so that the last `+= step` cannot overflow.
    for (int64_t i64 = (int64_t)blockIdx.x * kThreads + threadIdx.x; i64 < total; i64 += step) {
        const int i = (int)i64;
        const int t = i / per_token;
        const int64_t slot = slot_mapping[t];
        if (slot < 0 || slot >= num_slots) continue;
        int rem = i - t * per_token;  // (K|V, head, vector) within the token
        const int c = rem % vecs_per_head;
        rem /= vecs_per_head;
        const bool is_v = rem >= num_kv_heads;
        const int h = is_v ? rem - num_kv_heads : rem;
        const int64_t block = slot >> block_size_log2;
        const int64_t offset = slot & ((1 << block_size_log2) - 1);
        const int64_t dst = ((((block * num_kv_heads + h) << block_size_log2) + offset) * vecs_per_head) + c;
        const int64_t src_in_row = (int64_t)h * vecs_per_head + c;
        if (is_v) {
            v_cache[dst] = v[t * v_stride_vecs + src_in_row];
        } else {
            k_cache[dst] = k[t * k_stride_vecs + src_in_row];
        }
    }
}

inline int32_t launch_reshape_and_cache(void* k_cache, void* v_cache, const void* k, int64_t k_stride,
                                        const void* v, int64_t v_stride, const int32_t* slot_mapping,
                                        int num_tokens, int num_kv_heads, int head_dim, int block_size_log2,
                                        int64_t num_blocks, cudaStream_t stream) {
    const int vecs_per_head = head_dim / kElemsPerVec;
    const int64_t total = (int64_t)num_tokens * 2 * num_kv_heads * vecs_per_head;
    int64_t blocks = (total + kThreads - 1) / kThreads;
    // Enough blocks to fill any current GPU several times over; the loop covers the rest.
    if (blocks > 65535 * 8) blocks = 65535 * 8;
    reshape_and_cache_kernel<<<(unsigned)blocks, kThreads, 0, stream>>>(
        static_cast<uint4*>(k_cache), static_cast<uint4*>(v_cache), static_cast<const uint4*>(k),
        k_stride / kElemsPerVec, static_cast<const uint4*>(v), v_stride / kElemsPerVec, slot_mapping, num_tokens,
        num_kv_heads, vecs_per_head, block_size_log2, num_blocks << block_size_log2);
    return launch_status();
}

}  // namespace kv_cache
}  // namespace ocrvl
