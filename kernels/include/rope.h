/* Rotary position embedding, neox (rotate-half) style, applied in place to q and k in one
 * launch. Two position schemes, one kernel each:
 *   - M-RoPE (text): each frequency takes its position from one of three axes (T, H, W);
 *   - 2-D vision rope: the first half of the frequencies rotate by the patch row, the second
 *     half by the patch column.
 *
 * Shared conventions:
 *   - q is [num_tokens, num_q_heads, head_dim] and k is [num_tokens, num_kv_heads, head_dim];
 *     heads and head_dim are contiguous, tokens are `q_stride` / `k_stride` elements apart
 *     (so q and k may be column slices of one fused qkv buffer). q and k must not overlap.
 *   - Rotation: with h = head_dim / 2 and angle a_j for pair j in [0, h), elements j and
 *     j + h become (x_j cos a_j - x_{j+h} sin a_j, x_{j+h} cos a_j + x_j sin a_j).
 *   - Arithmetic is f32: inv_freq[i] = 1 / powf(theta, (float)(2 i) / (float)rot), as
 *     transformers computes it; angle = (float)pos * inv_freq in f32; accurate sincosf (the
 *     angles reach ~16k rad, where the fast intrinsics are off by far more than bf16's ulp);
 *     one rounding to the storage dtype at the end.
 *   - Dtypes: bf16 and f16 (q and k the same).
 *   - Alignment: q, k, and their strides in bytes, must be multiples of the vector width the
 *     head_dim selects (16 bytes for M-RoPE; 8 bytes for the 72-d vision head, see below);
 *     otherwise OCRVL_STATUS_UNSUPPORTED.
 *   - num_tokens 0 launches nothing.
 */
#pragma once
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Optional for the two text launchers: the paged KV cache (layout, slots and alignment as in
 * kernels/include/kv_cache.h) that the rotated k rows and the v rows also go to, in the same
 * launch, with the bits and skips of ocrvl_kv_cache_reshape_and_cache after the rope. A
 * decoder layer then launches one kernel for rope and cache write instead of two. v heads
 * are extra work items, copied unrotated. NULL: rope only. */
typedef struct OcrvlRopeCacheSink {
    void* k_cache;                /* [num_blocks, num_kv_heads, block_size, head_dim], contiguous */
    void* v_cache;                /* the same */
    const void* v;                /* [num_tokens, num_kv_heads, head_dim], token stride v_stride */
    int64_t v_stride;             /* elements, a multiple of 8; v 16-byte aligned */
    const int32_t* slot_mapping;  /* [num_tokens] int32; < 0 or >= num_blocks * block_size: skipped */
    int32_t block_size;           /* a power of two in [OCRVL_KV_CACHE_MIN_BLOCK_SIZE, MAX] */
    int64_t num_blocks;
} OcrvlRopeCacheSink;

/* M-RoPE (Qwen2-VL / ERNIE-4.5-VL multimodal rope), neox style, in place on q and k.
 * q         [num_tokens, num_q_heads, head_dim]  token stride q_stride (elements)
 * k         [num_tokens, num_kv_heads, head_dim] token stride k_stride (elements)
 * positions [3, num_tokens] int32 (rows T, H, W)  row stride pos_stride (elements); 0 makes
 *           all three axes read row 0 (plain 1-D rope for text-only batches).
 * Frequency j in [0, head_dim/2) takes the T position for j < section_t, H for
 * j < section_t + section_h, else W; the sections must sum to head_dim/2 (rotary dim =
 * head_dim). inv_freq[j] = theta^(-2j/head_dim).
 * head_dim: 64 or 128 (others OCRVL_STATUS_UNSUPPORTED). q, k: 16-byte aligned, strides
 * multiples of 8 elements.
 * Grid: (ceil(num_tokens / tokens_per_block)), tokens_per_block = 640 / (8-pair work items
 * per token) clamped to [1, 16] (4 for the text model); Block: (256). */
int32_t ocrvl_rope_mrope(void* q, int64_t q_stride, void* k, int64_t k_stride,
                         const int32_t* positions, int64_t pos_stride, int64_t num_tokens,
                         int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim,
                         int32_t section_t, int32_t section_h, int32_t section_w, float theta,
                         const OcrvlRopeCacheSink* cache, OcrvlDType dtype, ocrvl_stream_t stream);

/* ERNIE-4.5-VL's 3D rope, INTERLEAVED pairs (elements 2i and 2i+1 of a head rotate
 * together, GPT-J style; not the neox convention of the other two launchers), in place on q
 * and k. Pair i in [0, head_dim/2) turns by positions[axis(i), t] * inv_freq[i] with
 * inv_freq[i] = 1 / theta^(2i/head_dim) and axis(i) = H (row 1) for even i < section_hw,
 * W (row 2) for odd i < section_hw, T (row 0) for i >= section_hw (ERNIE-4.5-VL: section_hw
 * 44 = 22 H + 22 W pairs, then 20 T pairs; docs/ERNIE_4_5_VL_SPEC.md §3.10):
 *   x'[2i] = x[2i] cos - x[2i+1] sin,  x'[2i+1] = x[2i+1] cos + x[2i] sin   (f32, one rounding)
 * q         [num_tokens, num_q_heads, head_dim]  token stride q_stride (elements)
 * k         [num_tokens, num_kv_heads, head_dim] token stride k_stride (elements)
 * positions [3, num_tokens] int32 (rows T, H, W), row stride pos_stride (elements); 0 makes
 *           all three axes read row 0 (text-only batches).
 * head_dim a multiple of 8 (128 for the model), 0 <= section_hw <= head_dim / 2, section_hw
 * even. q, k 16-byte aligned, strides multiples of 8 elements.
 * Grid: (min(ceil(items / 256), 1048560)), items = num_tokens * (heads) * head_dim / 8;
 * Block: (256); grid-stride beyond. */
int32_t ocrvl_rope_mrope_interleaved(void* q, int64_t q_stride, void* k, int64_t k_stride,
                                     const int32_t* positions, int64_t pos_stride, int64_t num_tokens,
                                     int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim,
                                     int32_t section_hw, float theta, const OcrvlRopeCacheSink* cache,
                                     OcrvlDType dtype, ocrvl_stream_t stream);

/* 2-D vision rope (SigLIP/NaViT axial rope), neox style, in place on q and k. The kernel
 * knows nothing of images: each token brings its own (row, col).
 * q    [num_tokens, num_q_heads, head_dim]  token stride q_stride (elements)
 * k    [num_tokens, num_kv_heads, head_dim] token stride k_stride (elements)
 * rows [num_tokens] int32
 * cols [num_tokens] int32
 * With h = head_dim / 2 and f = head_dim / 4 frequencies inv_freq[i] = theta^(-2i/h):
 * pair j < f rotates by rows[t] * inv_freq[j], pair f <= j < h by cols[t] * inv_freq[j - f].
 * head_dim: 72 (PaddleOCR-VL's tower) or 80 (ERNIE-4.5-VL's ViT, the same frequencies:
 * theta^(-k/20) for k < 20); others OCRVL_STATUS_UNSUPPORTED. A 72-d head is 144 bytes, whose
 * halves (72 bytes) are not whole 16-byte vectors, so each thread moves 4 pairs as two 8-byte
 * vectors (80 uses the same variant): q, k 8-byte aligned, strides multiples of 4 elements.
 * Grid: (ceil(num_tokens / tokens_per_block)), tokens_per_block = 640 / (4-pair work items
 * per token) clamped to [1, 16] (2 for the vision tower); Block: (256). */
int32_t ocrvl_rope_vision(void* q, int64_t q_stride, void* k, int64_t k_stride,
                          const int32_t* rows, const int32_t* cols, int64_t num_tokens,
                          int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim,
                          float theta, OcrvlDType dtype, ocrvl_stream_t stream);

#ifdef __cplusplus
}
#endif
