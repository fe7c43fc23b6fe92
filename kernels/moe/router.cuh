// The MoE router (kernels/include/moe.h steps 1 and 2): f32 router logits, then per token the
// softmax over its pool's experts, the top-k by probability plus correction bias, and the
// renormalised weights.
#pragma once
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

namespace ocrvl::moe {

// Router logits, the tiled kernel (prefill): 16 tokens x 64 logits per block of 128 threads, k
// in steps of 32 staged in shared memory as f32. Thread (tt = tid / 16, tl = tid % 16) owns
// tokens 2tt, 2tt+1 and logits tl + 16j (j < 4): the strided logits and the 33-float rows keep
// the weight reads of a warp's 16 lanes in distinct banks. Each block walks all of k in 80
// dependent steps (hidden 2560), so at decode, where the grid is only ceil(T/16) x 2 blocks,
// the kernel is latency-bound: 257 us at 128 tokens (ncu, H100, round 9), a quarter of an
// ERNIE MoE layer. Small token counts take router_logits_split_k_kernel below instead.
constexpr int kLogitTokens = 16;
constexpr int kLogitCols = 64;
constexpr int kLogitK = 32;

__global__ void __launch_bounds__(128) router_logits_kernel(float* __restrict__ logits,
                                                             const __nv_bfloat16* __restrict__ x, int64_t x_stride,
                                                             const float* __restrict__ weight, int num_tokens,
                                                             int hidden, int num_logits) {
    __shared__ float xs[kLogitTokens][kLogitK + 1];
    __shared__ float ws[kLogitCols][kLogitK + 1];
    const int tid = threadIdx.x;
    const int tt = tid / 16, tl = tid % 16;
    const int t0 = blockIdx.x * kLogitTokens;
    const int l0 = blockIdx.y * kLogitCols;
    float acc[2][4] = {};
    for (int k0 = 0; k0 < hidden; k0 += kLogitK) {
        for (int idx = tid; idx < kLogitTokens * kLogitK; idx += 128) {
            const int r = idx / kLogitK, c = idx % kLogitK;
            const int t = t0 + r, k = k0 + c;
            xs[r][c] = (t < num_tokens && k < hidden) ? __bfloat162float(x[(int64_t)t * x_stride + k]) : 0.f;
        }
        for (int idx = tid; idx < kLogitCols * kLogitK; idx += 128) {
            const int r = idx / kLogitK, c = idx % kLogitK;
            const int l = l0 + r, k = k0 + c;
            ws[r][c] = (l < num_logits && k < hidden) ? weight[(int64_t)l * hidden + k] : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < kLogitK; ++kk) {
            const float a0 = xs[2 * tt][kk], a1 = xs[2 * tt + 1][kk];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float w = ws[tl + 16 * j][kk];
                acc[0][j] = fmaf(a0, w, acc[0][j]);
                acc[1][j] = fmaf(a1, w, acc[1][j]);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int t = t0 + 2 * tt + i;
        if (t >= num_tokens) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int l = l0 + tl + 16 * j;
            if (l < num_logits) logits[(int64_t)t * num_logits + l] = acc[i][j];
        }
    }
}

// Router logits, the split-k kernel (decode and short prefill): 4 tokens x 32 logits per block
// of 256 threads. Warp w takes the k chunks c = w, w + 8, w + 16, ... of 8 elements; lane l owns
// logit l and reads its 32 B of weight per chunk (a whole sector), the 16 B of x per token
// are the same for every lane (one broadcast load). Each thread sums its chunk products in k
// order, then the 8 warps' partial sums are added in warp order through shared memory, so the
// result does not depend on timing. At 128 tokens and ERNIE's 128 x 2560 router the grid is
// 32 x 4 blocks, each warp 40 chunks deep. Needs hidden % 8 == 0, x_stride % 8 == 0 and 16-byte
// aligned x and weight (the launcher checks; otherwise the tiled kernel runs). The weight is
// read once per token tile from L2 (1.3 MB per 4 tokens), so for long prefills the tiled
// kernel, which reads it once per 16 tokens, takes over (OCRVL_MOE_ROUTER_SPLIT_K_MAX_TOKENS).
constexpr int kSplitTokens = 4;
constexpr int kSplitLogits = 32;
constexpr int kSplitWarps = 8;
constexpr int kSplitChunk = 8;

__global__ void __launch_bounds__(kSplitWarps * 32) router_logits_split_k_kernel(
    float* __restrict__ logits, const __nv_bfloat16* __restrict__ x, int64_t x_stride,
    const float* __restrict__ weight, int num_tokens, int hidden, int num_logits) {
    __shared__ float partial[kSplitWarps][kSplitTokens][kSplitLogits];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t0 = blockIdx.x * kSplitTokens;
    const int l = blockIdx.y * kSplitLogits + lane;
    // A lane past the last logit reads row 0 (in bounds) and its sums are never stored.
    const float* w_row = weight + (int64_t)(l < num_logits ? l : 0) * hidden;
    float acc[kSplitTokens] = {};
    const int chunks = hidden / kSplitChunk;
#pragma unroll 2
    for (int c = warp; c < chunks; c += kSplitWarps) {
        const int k = c * kSplitChunk;
        const float4 w_lo = *reinterpret_cast<const float4*>(w_row + k);
        const float4 w_hi = *reinterpret_cast<const float4*>(w_row + k + 4);
        const float w[kSplitChunk] = {w_lo.x, w_lo.y, w_lo.z, w_lo.w, w_hi.x, w_hi.y, w_hi.z, w_hi.w};
#pragma unroll
        for (int i = 0; i < kSplitTokens; ++i) {
            if (t0 + i >= num_tokens) break;  // the same for every lane of the warp
            const uint4 raw = *reinterpret_cast<const uint4*>(x + (int64_t)(t0 + i) * x_stride + k);
            const __nv_bfloat16* xv = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
            for (int j = 0; j < kSplitChunk; ++j) acc[i] = fmaf(__bfloat162float(xv[j]), w[j], acc[i]);
        }
    }
#pragma unroll
    for (int i = 0; i < kSplitTokens; ++i) partial[warp][i][lane] = acc[i];
    __syncthreads();
    if (threadIdx.x < kSplitTokens * kSplitLogits) {
        const int i = threadIdx.x / kSplitLogits, j = threadIdx.x % kSplitLogits;
        const int t = t0 + i, lj = blockIdx.y * kSplitLogits + j;
        if (t < num_tokens && lj < num_logits) {
            float sum = 0.f;
#pragma unroll
            for (int v = 0; v < kSplitWarps; ++v) sum += partial[v][i][j];
            logits[(int64_t)t * num_logits + lj] = sum;
        }
    }
}

// Top-k routing: one warp per token, 4 warps per block. Lane l holds experts l + 32i (i < 8),
// so a pool of up to 256 experts sits in registers.
constexpr int kTopkPerLane = 8;

// A candidate expert in the warp's arg-max: score (NaN read as -inf), probability, id.
struct Candidate {
    float score;
    float prob;
    int id;  // -1: no candidate
};

// True when a ranks before b: the higher score, then the lower id; any candidate before none.
__device__ __forceinline__ bool ranks_before(const Candidate& a, const Candidate& b) {
    if (a.id < 0) return false;
    if (b.id < 0) return true;
    return a.score > b.score || (a.score == b.score && a.id < b.id);
}

__global__ void __launch_bounds__(128) topk_kernel(int32_t* __restrict__ topk_ids, float* __restrict__ topk_weights,
                                                    const float* __restrict__ logits, int64_t logits_stride,
                                                    const int32_t* __restrict__ token_pool,
                                                    const float* __restrict__ bias, int num_tokens, int num_experts,
                                                    int num_pools, int top_k, float norm_min) {
    const int lane = threadIdx.x % 32;
    const int t = blockIdx.x * 4 + threadIdx.x / 32;
    if (t >= num_tokens) return;
    int pool = token_pool != nullptr ? token_pool[t] : 0;
    if (pool < 0 || pool >= num_pools) pool = 0;
    const float* row = logits + (int64_t)t * logits_stride + (int64_t)pool * num_experts;
    const float* pool_bias = bias != nullptr ? bias + (int64_t)pool * num_experts : nullptr;

    float l[kTopkPerLane];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < kTopkPerLane; ++i) {
        const int e = lane + 32 * i;
        l[i] = e < num_experts ? row[e] : -INFINITY;
        m = fmaxf(m, l[i]);
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kTopkPerLane; ++i) {
        l[i] = (lane + 32 * i) < num_experts ? expf(l[i] - m) : 0.f;
        sum += l[i];
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    float score[kTopkPerLane];
#pragma unroll
    for (int i = 0; i < kTopkPerLane; ++i) {
        const int e = lane + 32 * i;
        l[i] = l[i] / sum;  // the probability
        float s = e < num_experts ? l[i] + (pool_bias != nullptr ? pool_bias[e] : 0.f) : -INFINITY;
        score[i] = s == s ? s : -INFINITY;
    }

    uint32_t taken = 0;  // bit i: expert lane + 32i already chosen
    float chosen_sum = 0.f;
    int chosen_id[16];
    float chosen_prob[16];
    for (int k = 0; k < top_k; ++k) {
        Candidate best{-INFINITY, 0.f, -1};
#pragma unroll
        for (int i = 0; i < kTopkPerLane; ++i) {
            const int e = lane + 32 * i;
            const Candidate c{score[i], l[i], (e < num_experts && !((taken >> i) & 1u)) ? e : -1};
            if (ranks_before(c, best)) best = c;
        }
        for (int o = 16; o > 0; o >>= 1) {
            Candidate other;
            other.score = __shfl_xor_sync(0xffffffffu, best.score, o);
            other.prob = __shfl_xor_sync(0xffffffffu, best.prob, o);
            other.id = __shfl_xor_sync(0xffffffffu, best.id, o);
            if (ranks_before(other, best)) best = other;
        }
        // top_k <= num_experts, so some expert is always left: best.id >= 0 here.
        if (best.id % 32 == lane) taken |= 1u << (best.id / 32);
        chosen_id[k] = best.id;
        chosen_prob[k] = best.prob;
        chosen_sum += best.prob;
    }
    if (lane == 0) {
        const float denom = fmaxf(chosen_sum, norm_min);
        for (int k = 0; k < top_k; ++k) {
            topk_ids[(int64_t)t * top_k + k] = pool * num_experts + chosen_id[k];
            topk_weights[(int64_t)t * top_k + k] = __bfloat162float(__float2bfloat16(chosen_prob[k] / denom));
        }
    }
}

}  // namespace ocrvl::moe
