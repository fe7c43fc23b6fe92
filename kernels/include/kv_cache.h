/* The block-paged KV cache: the layout contract shared by the cache writer below and by the
 * attention kernels that read the cache, and the writer itself.
 *
 * LAYOUT (per decoder layer)
 *   Two caches, K and V, each a contiguous array
 *       cache[num_blocks][num_kv_heads][block_size][head_dim]       ("HND" within a block)
 *   of the activation dtype (bf16 for the model). Element (block b, head h, offset o, dim d)
 *   is at ((b * num_kv_heads + h) * block_size + o) * head_dim + d; offsets are int64 in
 *   every kernel (a pool can pass 2^31 elements).
 *   One (block, head) tile is block_size x head_dim contiguous elements (64 x 128 x 2 B =
 *   16 KB for the text model), so an attention kernel loads a whole key or value tile of one
 *   head with one contiguous copy (one TMA box or one cp.async sweep), and a decode kernel
 *   streams 16 KB per head per block.
 *
 * BLOCK SIZE
 *   A runtime parameter, a power of two from OCRVL_KV_CACHE_MIN_BLOCK_SIZE to
 *   OCRVL_KV_CACHE_MAX_BLOCK_SIZE; OCRVL_KV_CACHE_DEFAULT_BLOCK_SIZE (64) by default because
 *     - per-sequence waste stays small: half a block (32 tokens, 576 KB over the model's 18
 *       layers) on average, the partly filled last block;
 *     - it is a multiple of the FA-style key tile (kBlockN = 64), so a key tile never
 *       straddles two blocks and the paged attention mainloop needs no split tiles;
 *     - prefix caching hashes full blocks: 64-token blocks are long enough for the hash table
 *       to stay small and short enough that a shared prompt prefix (chat template, image
 *       tokens) is mostly covered by full blocks.
 *
 * SLOTS
 *   A slot names one token position in the pool: slot = block_id * block_size + offset, with
 *   0 <= offset < block_size. slot_mapping is int32 [num_tokens]: the slot each new token's
 *   k and v go to. A negative slot means "do not write" (padding tokens). A sequence's token
 *   at position p lives in slot block_table[p / block_size] * block_size + p % block_size,
 *   where block_table (int32, one row per sequence) lists the sequence's blocks in order.
 *   Slots are trusted: the host cannot check them cheaply (they are device data). The writer
 *   skips, defensively, any slot >= num_blocks * block_size; two tokens mapped to one slot in
 *   one call leave one of the two values there, unspecified which.
 *
 * ALIGNMENT
 *   head_dim is a multiple of 8 (a row of one head is whole 16-byte vectors) and at most 256;
 *   caches, k and v are 16-byte aligned and the k and v token strides are multiples of 8
 *   elements; otherwise OCRVL_STATUS_UNSUPPORTED. */
#pragma once
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define OCRVL_KV_CACHE_DEFAULT_BLOCK_SIZE 64
#define OCRVL_KV_CACHE_MIN_BLOCK_SIZE 16
#define OCRVL_KV_CACHE_MAX_BLOCK_SIZE 256

/* Writes the new tokens' keys and values into the paged caches (vLLM's reshape_and_cache):
 *   k_cache[slot / bs][h][slot % bs][:] = k[t][h][:], and the same for v, for every token t
 *   with slot = slot_mapping[t] in [0, num_blocks * bs). Bit-exact copies; K and V in one
 *   launch.
 * k_cache      [num_blocks, num_kv_heads, block_size, head_dim]  contiguous
 * v_cache      [num_blocks, num_kv_heads, block_size, head_dim]  contiguous
 * k            [num_tokens, num_kv_heads, head_dim]  token stride k_stride (elements)
 * v            [num_tokens, num_kv_heads, head_dim]  token stride v_stride (elements)
 * slot_mapping [num_tokens] int32
 * Dtypes: bf16, f16 (caches, k and v the same). num_tokens 0 launches nothing.
 * Grid: (ceil(num_tokens * 2 * num_kv_heads * head_dim / 8 / 256)), capped at 65535 * 8
 *   blocks, grid-stride; Block: (256); one thread per 16-byte vector. */
int32_t ocrvl_kv_cache_reshape_and_cache(void* k_cache, void* v_cache, const void* k, int64_t k_stride,
                                         const void* v, int64_t v_stride, const int32_t* slot_mapping,
                                         int64_t num_tokens, int32_t num_kv_heads, int32_t head_dim,
                                         int32_t block_size, int64_t num_blocks, OcrvlDType dtype,
                                         ocrvl_stream_t stream);

#ifdef __cplusplus
}
#endif
