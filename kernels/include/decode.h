/* Paged decode attention: one new query token per sequence against that sequence's keys in the
 * block-paged KV cache of kv_cache.h, with split-KV for few sequences or long contexts.
 *
 * o[s, h, :] = softmax_j(scale * q[s, h, :] . K[s, j, h / group, :]) . V[s, j, h / group, :]
 * over the keys j = 0 .. seq_lens[s] - 1 (the new token's K/V is already in the cache), where
 * group = num_q_heads / num_kv_heads and key j of sequence s lives in block
 * block_tables[s][j / block_size] at offset j % block_size. Softmax and accumulation in f32;
 * bf16 in and out.
 *
 * One CTA handles one (sequence, kv head, split) and all `group` query heads of that kv head,
 * so each K/V tile is read from memory once for the whole group.
 *
 * Split-KV: with num_splits > 1 each sequence's keys are cut into num_splits chunks (each a
 * multiple of 64 keys, the last ones possibly empty), handled by different CTAs that write
 * normalized partial outputs and their log-sum-exp (f32) to `workspace`; a second kernel
 * merges them with log-sum-exp weights. num_splits == 1 writes o directly and needs no
 * workspace. ocrvl_decode_num_splits is the heuristic that fills the GPU.
 *
 * Supported (anything else: OCRVL_STATUS_UNSUPPORTED): dtype bf16, head_dim 128,
 * num_q_heads / num_kv_heads in 1..8, block_size a power of two in 16..256, num_splits in
 * 1..OCRVL_DECODE_MAX_SPLITS; q, o, caches and workspace 16-byte aligned and the q and o token
 * strides multiples of 8 elements.
 * Trusted, not checked (device memory): block_tables entries for the blocks holding positions
 * < seq_lens[s] are in [0, num_blocks) (entries past them are never read). seq_lens[s] is
 * clamped to [0, max_blocks_per_seq * block_size]; a sequence with no key gets o = 0.
 * o must not overlap q or the caches. */
#pragma once
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define OCRVL_DECODE_MAX_SPLITS 256
/* The largest GQA group (num_q_heads / num_kv_heads) the kernel takes: the rows of its MMA tile. */
#define OCRVL_DECODE_MAX_GROUP 8

typedef struct OcrvlDecodeParams {
    /* [num_seqs, num_q_heads, head_dim], token stride o_stride (elements); heads contiguous. */
    void* o;
    /* [num_seqs, num_q_heads, head_dim], token stride q_stride (elements); heads contiguous
     * (q may be a column slice of a fused qkv buffer). */
    const void* q;
    /* K cache of one layer, [num_blocks, num_kv_heads, block_size, head_dim], contiguous. */
    const void* k_cache;
    /* V cache of one layer, same layout as k_cache. */
    const void* v_cache;
    /* [num_seqs, max_blocks_per_seq] int32, contiguous. */
    const int32_t* block_tables;
    /* [num_seqs] int32: keys of each sequence, the new token included. */
    const int32_t* seq_lens;
    int64_t q_stride;
    int64_t o_stride;
    int64_t num_blocks;
    int32_t num_seqs;
    int32_t num_q_heads;
    int32_t num_kv_heads;
    int32_t head_dim;
    int32_t block_size;
    int32_t max_blocks_per_seq;
    int32_t num_splits;
    /* Softmax scale applied to q.k (1/sqrt(head_dim) for the model). */
    float scale;
    OcrvlDType dtype;
} OcrvlDecodeParams;

/* Bytes of workspace ocrvl_decode_paged needs: 0 for num_splits <= 1, else the f32 partial
 * outputs [num_splits, num_seqs, num_q_heads, head_dim] (rounded up to 256 bytes) followed by
 * the f32 log-sum-exps [num_splits, num_seqs, num_q_heads]. Negative arguments give 0. */
int64_t ocrvl_decode_workspace_size(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim,
                                    int32_t num_splits);

/* The split count that fills the GPU, from host-known sizes: 1 when the num_seqs *
 * num_kv_heads CTAs number at least half the SMs (splitting further costs more in partials
 * and the combine than it gains; measured, see paged_decode.cuh), else about one CTA per SM,
 * ceil(sm_count / CTAs) splits, but no split shorter than 256 keys of max_seq_len and at most
 * OCRVL_DECODE_MAX_SPLITS. Always >= 1. */
int32_t ocrvl_decode_num_splits(int32_t num_seqs, int32_t num_kv_heads, int32_t max_seq_len,
                                int32_t sm_count);

/* Runs decode attention (see the top of this file). workspace may be null when
 * p->num_splits == 1; else it must hold ocrvl_decode_workspace_size(...) bytes
 * (workspace_bytes says how many it holds). num_seqs 0 launches nothing.
 * Attention kernel: Grid: (num_splits, num_kv_heads, num_seqs), Block: (128), 96 KB of
 *   dynamic shared memory (a 3-stage ring of 64-key K and V tiles).
 * Combine kernel (num_splits > 1 only): Grid: (num_seqs * num_q_heads), Block: (128). */
int32_t ocrvl_decode_paged(const OcrvlDecodeParams* p, void* workspace, int64_t workspace_bytes,
                           ocrvl_stream_t stream);

#ifdef __cplusplus
}
#endif
