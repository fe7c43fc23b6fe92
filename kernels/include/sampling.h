/* Token sampling: one launch draws the next token of every row of a batch of logits.
 *
 * Per row b, in this order:
 *  1. Penalties (vLLM's definitions), applied IN PLACE to the row of `logits`, to the tokens of
 *     the row's history only (history[cu_history[b] .. cu_history[b+1]), count c > 0 times):
 *       x = x > 0 ? x / repetition : x * repetition     (when repetition != 1)
 *       x = x - frequency * c
 *       x = x - presence
 *     computed in f32 and stored back in the logits dtype (rounded to bf16 for bf16 logits).
 *     The logits buffer therefore holds the processed logits afterwards: sampling the same
 *     buffer twice applies the penalties twice. Rows whose three penalties are neutral
 *     (1, 0, 0) or whose history is empty are not touched.
 *  2. Temperature: z = x * (1 / temperature). temperature < 1e-5 (vLLM's epsilon) means greedy.
 *  3. Greedy rows (temperature < 1e-5, or top_k == 1): the token is the argmax of z, ties to the
 *     LOWEST index.
 *  4. Other rows draw from p = softmax(z) restricted to the allowed set
 *       A = { v : #{u : z_u > z_v} < top_k  and  sum_{u : z_u > z_v} p_u < top_p }
 *     i.e. top-k and top-p both applied to the same (untruncated) distribution, as FlashInfer's
 *     joint top-k/top-p sampler does; tokens tied at the boundary are all kept. top_k = 0 (or
 *     >= vocab) turns the first condition off, top_p >= 1 the second; with both off nothing is
 *     truncated. Probabilities are 2^-40 fixed-point weights exp(z - max z) computed in f32, so
 *     every mass comparison is exact integer arithmetic and both classes see the same A.
 *  5. logprob[b] = log_softmax(z)[token], of the processed logits after penalties and
 *     temperature and BEFORE truncation (temperature 1 for rows with temperature < 1e-5).
 *     The optional top-n alternatives are the n largest z (ties to the lowest index) with the
 *     same log-probabilities; slots past the row's finite logits hold id -1, logprob -inf.
 *
 * Row status (status[b]); a row with a non-zero status has token -1, logprob -inf and top-n
 * ids -1 / logprobs -inf, and never affects other rows:
 *   0 ok; 1 logits invalid: a NaN or +inf (after temperature) or no finite logit (-inf alone
 *   is a valid mask: such tokens are never drawn); 2 history malformed: cu_history not
 *   non-decreasing, beyond history_capacity, or a token outside [0, vocab); 3 parameters
 *   invalid: temperature negative or not finite, top_k < 0, top_p not > 0 (NaN included),
 *   repetition not > 0 and finite, frequency or presence not finite.
 *
 * Random numbers: Philox4x32-10 keyed by the row's 64-bit seed, counter (step, purpose): the
 * token depends on (logits row, parameters, seed, step) only, never on the row's position or
 * the batch. The two classes consume random numbers differently, so for a given seed they
 * draw different tokens from the same distribution:
 *   OCRVL_SAMPLING_EXACT: finds the boundary of A exactly, without sorting the vocabulary:
 *     candidates gathered during the first read of the row (or a second, or radix narrowing
 *     on the values when they are many; kernels/sampling/select.cuh), then one
 *     inverse-transform draw among A.
 *   OCRVL_SAMPLING_REJECTION: FlashInfer's dual-pivot rejection sampling: draw from the tokens
 *     above `low`, accept if the draw is in A, else raise `low` to the draw or to the
 *     probability midpoint pivot; after 32 rounds it falls back to the exact class's draw.
 *     Its first proposal is the gathered candidate set rather than the whole vocabulary.
 */
#pragma once
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* FastDeploy's FD_SAMPLING_CLASS: base -> EXACT, rejection -> REJECTION. */
typedef enum OcrvlSamplingClass {
    OCRVL_SAMPLING_EXACT = 0,
    OCRVL_SAMPLING_REJECTION = 1,
} OcrvlSamplingClass;

/* The most top-n alternatives a row can ask for. */
#define OCRVL_SAMPLING_MAX_TOP_N 20
/* The largest vocabulary (fixed-point masses must not overflow 64 bits). */
#define OCRVL_SAMPLING_MAX_VOCAB 8388608

typedef struct OcrvlSamplingArgs {
    void* logits;                     /* [batch, vocab], row stride logits_stride elements; bf16 or
                                         f32; penalized in place (see above) */
    int64_t logits_stride;            /* elements between rows, >= vocab */
    OcrvlDType logits_dtype;          /* OCRVL_DTYPE_BF16 or OCRVL_DTYPE_F32 */
    int32_t batch;                    /* rows, >= 0 */
    int32_t vocab;                    /* 1 .. OCRVL_SAMPLING_MAX_VOCAB */
    const float* temperature;         /* [batch] */
    const int32_t* top_k;             /* [batch] */
    const float* top_p;               /* [batch] */
    const uint32_t* seed;             /* [batch, 2]: low and high 32-bit words of the u64 seed */
    const uint32_t* step;             /* [batch, 2]: low and high words of the u64 step (position) */
    /* Penalties: all four of repetition/frequency/presence/cu_history NULL (no penalties), or
     * all non-NULL. */
    const float* repetition_penalty;  /* [batch] */
    const float* frequency_penalty;   /* [batch] */
    const float* presence_penalty;    /* [batch] */
    const int32_t* history;           /* [history_capacity] token ids, rows packed */
    const int32_t* cu_history;        /* [batch + 1]: row b owns history[cu[b] .. cu[b+1]) */
    int64_t history_capacity;         /* entries of `history`; cu_history[batch] must not exceed it */
    int32_t* token;                   /* [batch] out */
    float* logprob;                   /* [batch] out */
    int32_t* status;                  /* [batch] out */
    int32_t num_top;                  /* 0 .. OCRVL_SAMPLING_MAX_TOP_N alternatives per row */
    int32_t* top_ids;                 /* [batch, num_top] out; NULL when num_top == 0 */
    float* top_logprobs;              /* [batch, num_top] out; NULL when num_top == 0 */
    OcrvlSamplingClass sampling_class;
} OcrvlSamplingArgs;

/* Bytes of workspace ocrvl_sampling needs for a history capacity (a per-row hash table that
 * counts each token of the history once); -1 if history_capacity < 0. */
int64_t ocrvl_sampling_workspace_size(int64_t history_capacity);

/* Samples one token per row (see above). workspace: workspace_bytes >= the size above (may be
 * NULL when that is 0); its contents need no initialisation.
 * Grid: (batch), Block: (512); one block per row, ~45 KB static shared memory. */
int32_t ocrvl_sampling(const OcrvlSamplingArgs* args, void* workspace, int64_t workspace_bytes,
                       ocrvl_stream_t stream);

/* ---- Greedy fast path -------------------------------------------------------------------
 * For batches whose every row is greedy (temperature < 1e-5 or top_k == 1), no penalties and
 * no top-n alternatives: one pass over each row computes the argmax of z = x * (1 / t) (t = 1
 * for temperature < 1e-5; ties to the LOWEST index) and the log-softmax normaliser, so that
 * token, logprob and status are those ocrvl_sampling gives for the same rows (log-probs up to
 * the f32 summation order). Statuses 0, 1 and 3 as above (parameters checked as above, the
 * penalties excepted, since there are none), plus:
 *   4 the row is not greedy (temperature >= 1e-5 and top_k != 1): this launcher cannot draw
 *     it; use ocrvl_sampling.
 * A row with a non-zero status has token -1 and logprob -inf. The logits are only read.
 *
 * num_splits blocks share each row (contiguous slices); with more than one, each block writes
 * a partial (max, its index, sum of exp) to the workspace and a second small launch combines
 * them. ocrvl_sampling_greedy_num_splits gives the split count that fills the GPU. */

/* The most blocks one row may be split across. */
#define OCRVL_SAMPLING_GREEDY_MAX_SPLITS 32

typedef struct OcrvlSamplingGreedyArgs {
    const void* logits;               /* [batch, vocab], row stride logits_stride elements; bf16 or
                                         f32; read only */
    int64_t logits_stride;            /* elements between rows, >= vocab */
    OcrvlDType logits_dtype;          /* OCRVL_DTYPE_BF16 or OCRVL_DTYPE_F32 */
    int32_t batch;                    /* rows, >= 0 */
    int32_t vocab;                    /* 1 .. OCRVL_SAMPLING_MAX_VOCAB */
    const float* temperature;         /* [batch] */
    const int32_t* top_k;             /* [batch] */
    const float* top_p;               /* [batch] (only checked: > 0) */
    int32_t* token;                   /* [batch] out */
    float* logprob;                   /* [batch] out */
    int32_t* status;                  /* [batch] out */
    int32_t num_splits;               /* 1 .. OCRVL_SAMPLING_GREEDY_MAX_SPLITS blocks per row */
} OcrvlSamplingGreedyArgs;

/* The split count for a batch on a GPU of num_sms multiprocessors (1 once the batch alone
 * fills the GPU); 0 for a batch, vocab or num_sms < 1. */
int32_t ocrvl_sampling_greedy_num_splits(int32_t batch, int32_t vocab, int32_t num_sms);

/* Bytes of workspace ocrvl_sampling_greedy needs: 0 for one split, else 16 per (row, split);
 * -1 for a batch < 0 or a split count outside 1 .. OCRVL_SAMPLING_GREEDY_MAX_SPLITS. */
int64_t ocrvl_sampling_greedy_workspace_size(int32_t batch, int32_t num_splits);

/* Greedy tokens of every row (see above). workspace: workspace_bytes >= the size above (may be
 * NULL when that is 0); its contents need no initialisation.
 * Grid: (batch, num_splits), Block: (512), 256 bytes of static shared memory; with
 * num_splits > 1 then Grid: (ceil(batch / 8)), Block: (256), one warp per row. */
int32_t ocrvl_sampling_greedy(const OcrvlSamplingGreedyArgs* args, void* workspace, int64_t workspace_bytes,
                              ocrvl_stream_t stream);

#ifdef __cplusplus
}
#endif
