// Split-KV combine: merges the num_splits partial results of paged_decode_kernel<true>.
//
// Split i of (sequence s, query head h) left o_i = its softmax-normalized output and
// lse_i = log2(sum over its keys of 2^(score * scale * log2 e)) (-inf for an empty split).
// The full result is o = sum_i w_i o_i / sum_i w_i with w_i = 2^(lse_i - max_j lse_j), in
// f32; a sequence with no key at all gets o = 0.
//
// One CTA of 128 threads per (sequence, query head):
//   1. the threads take the splits' lse values (split i -> thread i % 128), reduce their max,
//      write the weights w_i to shared memory and reduce their sum;
//   2. warp w accumulates splits w, w + 4, ... for all 128 dims (a float4 per lane); the loads
//      do not depend on each other, so many are in flight (a loop that read lse_i, then o_i,
//      split after split, was latency-bound: 45 us for 128 splits of one sequence);
//   3. the 4 warps' sums are added through shared memory and written as bf16.
// A zero weight is applied with a select, so the o_i of an empty split is never used.
#pragma once
#include <cuda_bf16.h>
#include <math_constants.h>
#include <stdint.h>

#include "common/check.cuh"
#include "decode.h"
#include "decode/decode_ptx.cuh"

namespace ocrvl {
namespace decode {

constexpr int kCombineThreads = 128;
constexpr int kCombineWarps = kCombineThreads / 32;
constexpr int kCombineSplitsPerThread = (OCRVL_DECODE_MAX_SPLITS + kCombineThreads - 1) / kCombineThreads;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Grid: (num_seqs * num_q_heads), Block: (kCombineThreads).
template <int kDim>
__global__ void __launch_bounds__(kCombineThreads)
    decode_combine_kernel(__nv_bfloat16* __restrict__ o,     // [num_seqs, num_q_heads, kDim], token stride o_stride
                          int64_t o_stride,
                          const float* __restrict__ o_part,    // [num_splits, num_seqs, num_q_heads, kDim]
                          const float* __restrict__ lse_part,  // [num_splits, num_seqs, num_q_heads]
                          int32_t num_seqs, int32_t num_q_heads, int32_t num_splits) {
    static_assert(kDim == kCombineThreads && kDim == 32 * 4, "thread t writes dim t; a lane loads 4 dims");
    __shared__ float s_w[OCRVL_DECODE_MAX_SPLITS];
    __shared__ float s_red[kCombineWarps];
    __shared__ float4 s_acc[kCombineWarps][32];
    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int64_t rows = (int64_t)num_seqs * num_q_heads;
    const int64_t idx = blockIdx.x;  // seq * num_q_heads + head
    const int64_t seq = idx / num_q_heads;
    const int64_t head = idx % num_q_heads;

    // 1. Weights.
    float lse[kCombineSplitsPerThread];
    float mmax = -CUDART_INF_F;
#pragma unroll
    for (int j = 0; j < kCombineSplitsPerThread; ++j) {
        const int i = tid + j * kCombineThreads;
        lse[j] = i < num_splits ? lse_part[i * rows + idx] : -CUDART_INF_F;
        mmax = fmaxf(mmax, lse[j]);
    }
    mmax = warp_max(mmax);
    if (lane == 0) s_red[warp] = mmax;
    __syncthreads();
    mmax = s_red[0];
#pragma unroll
    for (int w = 1; w < kCombineWarps; ++w) mmax = fmaxf(mmax, s_red[w]);
    float wsum = 0.f;
#pragma unroll
    for (int j = 0; j < kCombineSplitsPerThread; ++j) {
        const int i = tid + j * kCombineThreads;
        // Every lse is -inf when the sequence has no key: all weights 0, o = 0.
        const float w = lse[j] == -CUDART_INF_F ? 0.f : exp2f(lse[j] - mmax);
        if (i < num_splits) s_w[i] = w;
        wsum += w;
    }
    wsum = warp_sum(wsum);
    __syncthreads();  // s_red is rewritten below; s_w is complete
    if (lane == 0) s_red[warp] = wsum;

    // 2. Weighted sum of the partial outputs, splits strided over the warps.
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int i = warp; i < num_splits; i += kCombineWarps) {
        const float w = s_w[i];
        const float4 v = *reinterpret_cast<const float4*>(o_part + (i * rows + idx) * kDim + lane * 4);
        acc.x += w > 0.f ? w * v.x : 0.f;
        acc.y += w > 0.f ? w * v.y : 0.f;
        acc.z += w > 0.f ? w * v.z : 0.f;
        acc.w += w > 0.f ? w * v.w : 0.f;
    }
    s_acc[warp][lane] = acc;
    __syncthreads();

    // 3. Thread t: dim t.
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kCombineWarps; ++w) total += s_red[w];
    const float* flat = reinterpret_cast<const float*>(&s_acc[0][0]);
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kCombineWarps; ++w) sum += flat[w * kDim + tid];
    const float inv = total > 0.f ? 1.f / total : 0.f;
    o[seq * o_stride + head * kDim + tid] = __float2bfloat16_rn(sum * inv);
}

template <int kDim>
int32_t launch_decode_combine(__nv_bfloat16* o, int64_t o_stride, const float* o_part, const float* lse_part,
                              int32_t num_seqs, int32_t num_q_heads, int32_t num_splits, cudaStream_t stream) {
    const int64_t rows = (int64_t)num_seqs * num_q_heads;
    decode_combine_kernel<kDim><<<(unsigned)rows, kCombineThreads, 0, stream>>>(o, o_stride, o_part, lse_part,
                                                                               num_seqs, num_q_heads, num_splits);
    return launch_status();
}

}  // namespace decode
}  // namespace ocrvl
