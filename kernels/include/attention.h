/* Prefill attention, FlashAttention-2 style (sm_80 instructions; they run on sm_90 too).
 *
 * Two entry points share one parameter struct:
 * - ocrvl_attention_prefill_paged: text prefill. Queries of several sequences packed
 *   (cu_seqlens_q); K/V read from the block-paged cache of kv_cache.h through block tables;
 *   GQA (num_heads a multiple of num_kv_heads); causal with the queries being the LAST q_len
 *   of the seqused_k keys of their sequence, so query i of a chunk sits at key position
 *   seqused_k - q_len + i. That one rule serves a fresh prompt (q_len == seqused_k), a chunk
 *   of a long prompt and a prompt whose prefix is cached. causal = 0 lets every query see all
 *   seqused_k keys (benchmarks; not used by the model).
 * - ocrvl_attention_varlen: vision. Packed images (cu_seqlens), bidirectional within each
 *   image only; q/k/v token-strided (column slices of a fused qkv buffer).
 *
 * Softmax in f32 with scale `scale` (1/sqrt(head_dim) for this model), accumulation in f32,
 * bf16 in and out. Instantiated (anything else returns OCRVL_STATUS_UNSUPPORTED):
 *   prefill_paged: head_dim 128, causal or not, block_size a power of two in 16..256;
 *   varlen:        head_dim 72, causal 0, padded_head_dim 0 or 80 (the default 72/80 tile)
 *                  or 96 (72 padded to 96, kept to measure against); head_dim 80 (ERNIE-4.5-VL's
 *                  ViT), causal 0, padded_head_dim 0 or 80. The FA3 varlen builds d = 72 only.
 * Trusted, not checked (device memory): cu_seqlens_* non-decreasing with
 * cu_seqlens_q[num_seqs] <= total_q, every q_len <= max_seqlen_q (longer runs are left
 * partly unwritten), seqused_k[s] >= q_len of s, block_tables entries in [0, num_blocks) for
 * the blocks that hold positions < seqused_k (entries past them are never read). seqused_k
 * is clamped to [0, max_blocks_per_seq * block_size]. A query row that sees no key (only
 * possible when seqused_k < q_len) is written as zeros with LSE -inf, never NaN. */
#pragma once
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct OcrvlAttnParams {
    /* [total_q, num_heads, head_dim], token stride q_stride (elements); heads contiguous. */
    const void* q;
    /* prefill_paged: K cache of one layer, [num_blocks, num_kv_heads, block_size, head_dim],
     *   contiguous (k_stride unused).
     * varlen: [total_k, num_kv_heads, head_dim], token stride k_stride. */
    const void* k;
    /* Same layout as k, with v_stride for varlen. */
    const void* v;
    /* [total_q, num_heads, head_dim], token stride o_stride. */
    void* o;
    /* Optional (null to skip): log-sum-exp of the scaled scores, natural log,
     * [num_heads, total_q] f32, contiguous. */
    float* lse;
    /* [num_seqs + 1] int32: query token offsets of each sequence in q and o. */
    const int32_t* cu_seqlens_q;
    /* varlen only: [num_seqs + 1] int32, key token offsets in k and v (may equal
     * cu_seqlens_q). */
    const int32_t* cu_seqlens_k;
    /* prefill_paged only: [num_seqs] int32, keys in the cache for each sequence, the new
     * tokens included. */
    const int32_t* seqused_k;
    /* prefill_paged only: [num_seqs, max_blocks_per_seq] int32, row stride
     * block_table_stride (elements). */
    const int32_t* block_tables;
    int64_t q_stride;
    int64_t k_stride;
    int64_t v_stride;
    int64_t o_stride;
    int64_t block_table_stride;
    int32_t num_seqs;
    /* Rows of q and o (and columns of lse). */
    int32_t total_q;
    /* Longest query run of any sequence; sizes the grid. */
    int32_t max_seqlen_q;
    int32_t num_heads;
    int32_t num_kv_heads;
    int32_t head_dim;
    /* prefill_paged only: tokens per cache block, the pool's block count, and the columns of
     * block_tables (keys past max_blocks_per_seq * block_size are never read). */
    int32_t block_size;
    int32_t num_blocks;
    int32_t max_blocks_per_seq;
    float scale;
    int32_t causal;
    /* varlen only, head_dim 72: 0 or 80 for the default 72/80 tile (Q·Kᵀ over 80, P·V over
     * 72); 96 pads the head to 96 throughout (FA2's d96 tile), kept for measurement.
     * head_dim 80: 0 or 80 (nothing padded). */
    int32_t padded_head_dim;
    /* Element type of q, k, v, o; only OCRVL_DTYPE_BF16 is built. */
    OcrvlDType dtype;
    /* FA3 entry points only (the FA2 ones ignore it): which mainloop, OCRVL_FA3_MAINLOOP_*;
     * 0 is the default. */
    int32_t fa3_mainloop;
    /* ocrvl_attention_varlen_fa3 only (the others ignore it): the vision tile, OCRVL_FA3_VISION_*;
     * 0 is the default. Tiles other than the default need padded_head_dim 0 or 80. */
    int32_t fa3_vision_tile;
} OcrvlAttnParams;

/* FA3 mainloops (kernels/attention/fa3_fwd.cuh); the same results within bf16 rounding.
 * DEFAULT picks PINGPONG. SERIAL is the first version (S, softmax, P·V in turn), kept to
 * compare and to fall back to; OVERLAP issues the next tile's Q·Kᵀ before the softmax of the
 * current one inside each consumer warpgroup; PINGPONG adds turns between the two consumer
 * warpgroups so that one's softmax runs under the other's matrix products. */
#define OCRVL_FA3_MAINLOOP_DEFAULT 0
#define OCRVL_FA3_MAINLOOP_SERIAL 1
#define OCRVL_FA3_MAINLOOP_OVERLAP 2
#define OCRVL_FA3_MAINLOOP_PINGPONG 3

/* FA3 vision tiles (kernels/attention/fa3_d72*.cu, fa3_d80*.cu); the same results within
 * bf16 rounding. DEFAULT picks, at d 72, M192 when the longest image has at least 1024 tokens
 * (and P·V is not padded to 128), else M128 (measured: fa3_attention.cu); at d 80, M128.
 * M128: 128 query rows (2 consumer warpgroups), 2 K/V stages. M128_S3: the same with 3 K/V
 * stages (226 KiB of shared memory; d 72 only). M192: 192 query rows (3 consumer warpgroups,
 * 512 threads), 2 K/V stages. Every mainloop runs on every tile. */
#define OCRVL_FA3_VISION_DEFAULT 0
#define OCRVL_FA3_VISION_M128 1
#define OCRVL_FA3_VISION_M128_S3 2
#define OCRVL_FA3_VISION_M192 3

/* Text prefill over the paged KV cache; see the file comment.
 * Grid: causal (num_heads, num_seqs, ceil(max_seqlen_q / 128)), the query tiles launched
 * longest first; non-causal (ceil(max_seqlen_q / 128), num_heads, num_seqs). Block: (128). */
int32_t ocrvl_attention_prefill_paged(const OcrvlAttnParams* params, ocrvl_stream_t stream);

/* Varlen attention over contiguous, token-strided q/k/v; see the file comment.
 * Grid: (ceil(max_seqlen_q / 128), num_heads, num_seqs), Block: (128). */
int32_t ocrvl_attention_varlen(const OcrvlAttnParams* params, ocrvl_stream_t stream);

/* FA3 path (Hopper): the same two operations, same parameters and results, built from TMA
 * copies, mbarriers and wgmma with warp specialisation (kernels/attention/fa3_fwd.cuh). Needs an
 * sm_90 device and a build with sm_90a code; otherwise OCRVL_STATUS_UNSUPPORTED. Built:
 *   prefill_paged_fa3: head_dim 128, causal or not, block_size a power of two in 16..256;
 *   varlen_fa3:        head_dim 72 or 80, causal 0, cu_seqlens_k == cu_seqlens_q (the same
 *                      pointer: the key tensor maps are sized by total_q). head_dim 72:
 *                      padded_head_dim 0 or 80 (Q·Kᵀ over 80, P·V over 72) or 128 (P·V over
 *                      128; a fallback). head_dim 80: padded_head_dim 0 or 80, tiles
 *                      M128 (the default at every length) and M192 (M128_S3 is built for 72
 *                      only).
 * q/k/v/o strides must be multiples of 8 elements and bases 16-byte aligned (as for FA2). */

/* 1 when this build contains the sm_90a kernels of the FA3 path, else 0 (says nothing about
 * the device). */
int32_t ocrvl_attention_fa3_supported(void);

/* Grid: causal (num_heads, num_seqs, ceil(max_seqlen_q / 128)), query tiles longest first;
 * non-causal (ceil(max_seqlen_q / 128), num_heads, num_seqs). Block: (384) = one producer and
 * two consumer warpgroups. */
int32_t ocrvl_attention_prefill_paged_fa3(const OcrvlAttnParams* params, ocrvl_stream_t stream);

/* Grid: (ceil(max_seqlen_q / kBlockM), num_heads, num_seqs), Block: (384), or (512) for the
 * M192 tile (kBlockM 192; 128 otherwise). */
int32_t ocrvl_attention_varlen_fa3(const OcrvlAttnParams* params, ocrvl_stream_t stream);

#ifdef __cplusplus
}
#endif
