/* Mixture-of-experts kernels for ERNIE-4.5-VL's MoE layers (docs/ERNIE_4_5_VL_SPEC.md §3.12):
 * a softmax router with a selection-only correction bias and per-modality expert pools, then
 * the routed experts' SwiGLU MLPs as grouped GEMMs over the tokens sorted by expert, then the
 * weighted sum back into token order. The steps of one MoE layer, for T tokens, top-k K:
 *
 *   1. ocrvl_moe_router_logits  logits[T, P*E] = f32(x) · router_weightᵀ  (every pool's router)
 *   2. ocrvl_moe_topk           per token: its pool's E logits → K expert ids and weights
 *   3. ocrvl_moe_align          the T*K (token, k) pairs sorted by expert, each expert's run
 *                               padded to OCRVL_MOE_BLOCK_M rows: slots, and each tile's expert
 *   4. ocrvl_moe_grouped_gemm   per pool: h[slot] = swiglu(x[token(slot)] · W_gate_upᵀ)
 *      ocrvl_moe_grouped_gemm   per pool: y[slot] = h[slot] · W_downᵀ
 *   5. ocrvl_moe_combine        out[t] = Σ_k w[t,k] · y[slot(t,k)] + shared[t]
 *
 * Expert ids are global: pool p's expert e is p*E + e. Every size a step needs is a bound
 * known before the step runs (no device-to-host read), so a whole layer can be captured in a
 * CUDA graph: the grouped GEMM's grid covers ocrvl_moe_max_tiles tiles and a tile beyond the
 * used ones exits at once. Every launcher returns an OcrvlStatus and allocates nothing. */
#pragma once
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows per tile of the grouped GEMM: each expert's run of slots is padded to a multiple. */
#define OCRVL_MOE_BLOCK_M 64
/* Output columns per tile of the grouped GEMM (n must be a multiple) and the k step (k must
 * be a multiple). */
#define OCRVL_MOE_BLOCK_N 128
#define OCRVL_MOE_BLOCK_K 64
/* Experts over all pools (ocrvl_moe_align keeps 32 counters per expert in shared memory). */
#define OCRVL_MOE_MAX_EXPERTS 256
/* Experts in one pool (ocrvl_moe_topk holds a pool's logits in one warp's registers). */
#define OCRVL_MOE_MAX_POOL_EXPERTS 256
#define OCRVL_MOE_MAX_TOP_K 16

/* The most tokens ocrvl_moe_router_logits sends to its split-k kernel (see below). */
#define OCRVL_MOE_ROUTER_SPLIT_K_MAX_TOKENS 1024

/* Which kernel ocrvl_moe_grouped_gemm_with runs (bf16 weights):
 *   AUTO          WGMMA_2STAGE where it runs and the step has at least
 *                 OCRVL_MOE_WGMMA_MIN_TILES_PER_EXPERT tiles per expert of the range (prefill),
 *                 else MMA (decode: one mostly padded tile per expert, weight streaming)
 *   MMA           mma.sync, tiles of 64 slots x 128 columns (kernels/moe/grouped_gemm.cuh)
 *   WGMMA         sm_90a wgmma, 64 slots x 256 columns, a 4-stage ring (grouped_gemm_sm90.cuh)
 *   WGMMA_2STAGE  the same with a 2-stage ring, two blocks per SM (measured the faster one
 *                 at prefill on the H100: docs/notes/moe_kernels.md, version 5)
 *   WGMMA_INFLIGHT   the 4-stage ring keeping one wgmma group in flight across k steps
 *   WGMMA_INFLIGHT5  the same with a 5-stage ring (copies three steps ahead)
 * The WGMMA kernels need an sm_90 device, a build with sm_90a and n % 256 == 0: otherwise
 * OCRVL_STATUS_UNSUPPORTED (AUTO falls back to MMA). */
#define OCRVL_MOE_GEMM_AUTO 0
#define OCRVL_MOE_GEMM_MMA 1
#define OCRVL_MOE_GEMM_WGMMA 2
#define OCRVL_MOE_GEMM_WGMMA_2STAGE 3
#define OCRVL_MOE_GEMM_WGMMA_INFLIGHT 4
#define OCRVL_MOE_GEMM_WGMMA_INFLIGHT5 5
#define OCRVL_MOE_WGMMA_MIN_TILES_PER_EXPERT 4

/* ocrvl_moe_grouped_gemm's epilogues. */
#define OCRVL_MOE_EPILOGUE_NONE 0
#define OCRVL_MOE_EPILOGUE_SWIGLU 1

/* 1. Router logits, f32 throughout (as transformers keeps the router in f32):
 *      logits[t, j] = Σ_i f32(x[t, i]) · weight[j, i]
 * logits [num_tokens, num_logits] f32, contiguous
 * x      [num_tokens, hidden] bf16, row stride x_stride
 * weight [num_logits, hidden] f32, contiguous (the pools' router weights stacked)
 * Up to OCRVL_MOE_ROUTER_SPLIT_K_MAX_TOKENS tokens (with hidden and x_stride multiples of 8 and
 * x, weight 16-byte aligned): the split-k kernel, grid (ceil(num_tokens / 4),
 * ceil(num_logits / 32)), block (256). Otherwise the tiled kernel, grid (ceil(num_tokens / 16),
 * ceil(num_logits / 64)), block (128). Both sum in a fixed order: the same inputs give the
 * same logits on every run. */
int32_t ocrvl_moe_router_logits(float* logits, const void* x, int64_t x_stride, const float* weight,
                                int64_t num_tokens, int64_t hidden, int64_t num_logits, ocrvl_stream_t stream);

/* 2. Top-k routing, one warp per token. Token t uses pool p = token_pool[t] (all pool 0 when
 * token_pool is NULL) and that pool's logits l = logits[t, p*E .. p*E+E):
 *      prob  = softmax(l)                                        (f32, expf)
 *      chosen = the top_k experts by prob + bias[p, :]           (bias NULL: none; ties go to
 *                                                                 the lower expert id)
 *      weight_k = bf16(prob[chosen_k] / max(Σ_k prob[chosen_k], norm_min))   stored as f32
 *      topk_ids[t, k] = p*E + chosen_k, in descending order of prob + bias
 * The bias only chooses; the weights are the unbiased probabilities renormalised over the
 * chosen, rounded to bf16 as transformers casts them to the activation dtype.
 * topk_ids     [num_tokens, top_k] int32
 * topk_weights [num_tokens, top_k] f32
 * logits       [num_tokens, logits_stride] f32, logits_stride >= num_pools * num_experts
 * token_pool   [num_tokens] int32 in [0, num_pools), or NULL; a value out of range is taken as
 *              pool 0 (the launcher cannot read device memory to refuse it)
 * bias         [num_pools, num_experts] f32, or NULL
 * Limits: num_experts <= OCRVL_MOE_MAX_POOL_EXPERTS, 1 <= top_k <= min(num_experts,
 * OCRVL_MOE_MAX_TOP_K), norm_min > 0. Grid: (ceil(num_tokens / 4)), Block: (128). */
int32_t ocrvl_moe_topk(int32_t* topk_ids, float* topk_weights, const float* logits, int64_t logits_stride,
                       const int32_t* token_pool, const float* bias, int64_t num_tokens, int64_t num_experts,
                       int64_t num_pools, int64_t top_k, float norm_min, ocrvl_stream_t stream);

/* The number of tiles ocrvl_moe_align may use for num_pairs pairs over num_experts experts:
 * Σ_e ceil(count_e / BLOCK_M) <= ceil(num_pairs / BLOCK_M) + min(num_experts, num_pairs).
 * Buffers sized from it: sorted_pairs [max_tiles * BLOCK_M], tile_expert [max_tiles], and the
 * grouped GEMM's slot-indexed rows [max_tiles * BLOCK_M, ...]. */
int64_t ocrvl_moe_max_tiles(int64_t num_pairs, int64_t num_experts);

/* 3. Sorting the pairs by expert. Pair i = t*top_k + k has expert topk_ids[i]. Each expert e
 * gets a run of ceil(count_e / BLOCK_M) tiles, in expert order; within a run the pairs keep
 * their order (a stable sort, so the result does not depend on thread timing). Outputs:
 *   sorted_pairs[slot] = the pair in that slot, or -1 for a padding slot (every slot of
 *                        [0, max_tiles * BLOCK_M) is written)
 *   pair_slot[i]       = the slot of pair i; -1 when topk_ids[i] is outside [0, num_experts)
 *                        (such a pair is left out)
 *   tile_expert[j]     = the expert of tile j, or -1 for a tile past the used ones
 * One block of 1024 threads. max_tiles >= ocrvl_moe_max_tiles(num_pairs, num_experts), else
 * INVALID_ARGUMENT; num_experts <= OCRVL_MOE_MAX_EXPERTS. */
int32_t ocrvl_moe_align(int32_t* sorted_pairs, int32_t* pair_slot, int32_t* tile_expert, const int32_t* topk_ids,
                        int64_t num_pairs, int64_t num_experts, int64_t max_tiles, ocrvl_stream_t stream);

/* 4. Grouped GEMM over the sorted slots, bf16 in and out, f32 accumulation, for the experts
 * [expert_begin, expert_end) (one pool: its experts have one shape):
 *   for each tile j with e = tile_expert[j] in range, for each slot s of the tile with
 *   sorted_pairs[s] >= 0:
 *     row = gather_top_k > 0 ? a[sorted_pairs[s] / gather_top_k] : a[s]
 *     acc[s, c] = Σ_i row[i] · weight[e - expert_begin][c, i]           (c < n, f32)
 *   EPILOGUE_NONE:   out[s, c] = bf16(acc[s, c]) for c < n
 *   EPILOGUE_SWIGLU: the weight rows come gate and up interleaved in groups of 8: rows
 *     16g..16g+7 are gate rows 8g..8g+7 and rows 16g+8..16g+15 are up rows 8g..8g+7. For
 *     c < n/2 with g = c/8, r = c%8:
 *       gate = bf16(acc[s, 16g + r]), up = bf16(acc[s, 16g + 8 + r])
 *       out[s, c] = bf16(bf16(silu(gate)) · up)        (transformers' bf16 roundings)
 * Padding slots and tiles outside the range are not written.
 * out    [max_tiles * BLOCK_M, n or n/2] bf16, row stride out_stride
 * a      bf16, row stride a_stride, k columns: [num_tokens, k] when gathering, else slot rows
 * weight [expert_end - expert_begin, n, k] bf16, contiguous
 * Limits: n % BLOCK_N == 0, k % BLOCK_K == 0, 16-byte aligned pointers and strides.
 * The kernel is OCRVL_MOE_GEMM_AUTO's choice (OCRVL_MOE_GEMM=mma|wgmma|wgmma2|wgmma-inflight|
 * wgmma-inflight5 in the environment replaces it, for A/B runs). MMA: grid (n / BLOCK_N,
 * max_tiles), block (128), 72 KiB dynamic shared memory. WGMMA: grid (n / 256, max_tiles),
 * block (256), 161 KiB (2-stage: 81 KiB; 5-stage: 201 KiB). */
int32_t ocrvl_moe_grouped_gemm(void* out, int64_t out_stride, const void* a, int64_t a_stride,
                               const int32_t* sorted_pairs, int32_t gather_top_k, const void* weight,
                               const int32_t* tile_expert, int64_t max_tiles, int64_t expert_begin,
                               int64_t expert_end, int64_t n, int64_t k, int32_t epilogue, ocrvl_stream_t stream);

/* 4, with the kernel named: `kernel` is one of OCRVL_MOE_GEMM_* (AUTO as above). Every kernel
 * gives the same result up to the order of the f32 sums. */
int32_t ocrvl_moe_grouped_gemm_with(void* out, int64_t out_stride, const void* a, int64_t a_stride,
                                    const int32_t* sorted_pairs, int32_t gather_top_k, const void* weight,
                                    const int32_t* tile_expert, int64_t max_tiles, int64_t expert_begin,
                                    int64_t expert_end, int64_t n, int64_t k, int32_t epilogue, int32_t kernel,
                                    ocrvl_stream_t stream);

/* 4b. The same grouped GEMM with weight-only int8 weights (`--quantization wint8`): one f32
 * scale per expert row, applied to the f32 sum before the epilogue:
 *     acc[s, c] = scales[e - expert_begin][c] · Σ_i row[i] · weight[e - expert_begin][c, i]
 * then EPILOGUE_NONE or EPILOGUE_SWIGLU exactly as in 4 (for SWIGLU the scales follow the
 * weight's interleaved gate/up row order).
 * weight [expert_end - expert_begin, n, k] int8, contiguous
 * scales [expert_end - expert_begin, n] f32, contiguous, 16-byte aligned
 * Limits and grid as in 4; 64 KiB dynamic shared memory (a 3-stage ring: 6 stages were
 * slower, kernels/moe/grouped_gemm.cuh). */
int32_t ocrvl_moe_grouped_gemm_w8(void* out, int64_t out_stride, const void* a, int64_t a_stride,
                                  const int32_t* sorted_pairs, int32_t gather_top_k, const int8_t* weight,
                                  const float* scales, const int32_t* tile_expert, int64_t max_tiles,
                                  int64_t expert_begin, int64_t expert_end, int64_t n, int64_t k, int32_t epilogue,
                                  ocrvl_stream_t stream);

/* 5. The weighted sum back into token order, f32 accumulation, one rounding:
 *   out[t, c] = bf16( Σ_k topk_weights[t, k] · f32(expert_out[pair_slot[t*K + k], c])
 *                     + f32(shared[t, c]) )
 * Pairs with pair_slot -1 add nothing; shared may be NULL (then no shared term).
 * out        [num_tokens, hidden] bf16, row stride out_stride (may not overlap the inputs)
 * expert_out [slots, hidden] bf16, row stride expert_out_stride
 * shared     [num_tokens, hidden] bf16, row stride shared_stride, or NULL
 * Limits: hidden % 8 == 0, 16-byte aligned pointers and strides, top_k <= OCRVL_MOE_MAX_TOP_K.
 * Grid: (num_tokens), Block: (128). */
int32_t ocrvl_moe_combine(void* out, int64_t out_stride, const void* expert_out, int64_t expert_out_stride,
                          const int32_t* pair_slot, const float* topk_weights, const void* shared,
                          int64_t shared_stride, int64_t num_tokens, int64_t top_k, int64_t hidden,
                          ocrvl_stream_t stream);

/* Which pool each token of a step goes to (ERNIE-4.5-VL, docs/ERNIE_4_5_VL_SPEC.md §3.8):
 *   pool[t] = 1 (vision) if t >= num_text_prefix and ids[t] is one of vision_ids[0..num_vision_ids),
 *             0 (text) otherwise.
 * The step's first num_text_prefix tokens are its decode tokens, which are text whatever their
 * id; vision_ids holds the image placeholder id and, as transformers routes them, the image
 * and video start/end markers. ids, pool: i32 [num_tokens]. num_vision_ids <= 8.
 * Grid: (ceil(num_tokens / 256)), Block: (256). */
#define OCRVL_MOE_MAX_VISION_IDS 8
typedef struct {
    int32_t ids[OCRVL_MOE_MAX_VISION_IDS];
    int32_t count;
} OcrvlMoeVisionIds;
int32_t ocrvl_moe_token_pool(int32_t* pool, const int32_t* ids, int64_t num_tokens, int64_t num_text_prefix,
                             OcrvlMoeVisionIds vision_ids, ocrvl_stream_t stream);

#ifdef __cplusplus
}
#endif
