// Split-KV combine: merges the num_splits partial results of paged_decode_kernel<true>.
//
// Split i of (sequence s, query head h) left o_i = its softmax-normalized output and
// lse_i = log2(sum over its keys of 2^(score * scale * log2 e)) (-inf for an empty split).
// The full result is o = sum_i w_i o_i / sum_i w_i with w_i = 2^(lse_i - max_j lse_j), in
// f32; empty splits are skipped (their weight is 0 and their o_i is never read); a sequence
// with no key at all gets o = 0.
//
// One warp per (sequence, query head), 4 dims per lane (16-byte f32 loads, 8-byte bf16
// stores). The partials are small next to the K/V stream (128 f32 per split and head), so
// this kernel is latency-bound: the split loop is kept simple.
#pragma once
#include <cuda_bf16.h>
#include <math_constants.h>
#include <stdint.h>

#include "common/check.cuh"
#include "decode/decode_ptx.cuh"

namespace ocrvl {
namespace decode {

constexpr int kCombineThreads = 128;
constexpr int kCombineWarps = kCombineThreads / 32;

// Grid: (ceil(num_seqs * num_q_heads / kCombineWarps)), Block: (kCombineThreads).
template <int kDim>
__global__ void __launch_bounds__(kCombineThreads)
    decode_combine_kernel(__nv_bfloat16* __restrict__ o,     // [num_seqs, num_q_heads, kDim], token stride o_stride
                          int64_t o_stride,
                          const float* __restrict__ o_part,  // [num_splits, num_seqs, num_q_heads, kDim]
                          const float* __restrict__ lse_part,  // [num_splits, num_seqs, num_q_heads]
                          int32_t num_seqs, int32_t num_q_heads, int32_t num_splits) {
    static_assert(kDim == 32 * 4, "one warp covers the head with 4 dims per lane");
    const int lane = threadIdx.x & 31;
    const int64_t rows = (int64_t)num_seqs * num_q_heads;
    const int64_t idx = (int64_t)blockIdx.x * kCombineWarps + (threadIdx.x >> 5);  // seq * H + head
    if (idx >= rows) return;
    const int64_t seq = idx / num_q_heads;
    const int64_t head = idx % num_q_heads;

    // Max over splits: lanes take splits lane, lane + 32, ..., then a warp reduction.
    float mmax = -CUDART_INF_F;
    for (int i = lane; i < num_splits; i += 32) mmax = fmaxf(mmax, lse_part[i * rows + idx]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mmax = fmaxf(mmax, __shfl_xor_sync(0xffffffffu, mmax, off));

    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    float wsum = 0.f;
    if (mmax != -CUDART_INF_F) {
        for (int i = 0; i < num_splits; ++i) {
            const float lse = lse_part[i * rows + idx];
            if (lse == -CUDART_INF_F) continue;
            const float w = exp2f(lse - mmax);
            const float4 v = *reinterpret_cast<const float4*>(o_part + (i * rows + idx) * kDim + lane * 4);
            wsum += w;
            acc.x += w * v.x;
            acc.y += w * v.y;
            acc.z += w * v.z;
            acc.w += w * v.w;
        }
    }
    const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
    uint2 pk;
    pk.x = pack_bf16x2(acc.x * inv, acc.y * inv);
    pk.y = pack_bf16x2(acc.z * inv, acc.w * inv);
    *reinterpret_cast<uint2*>(o + seq * o_stride + head * kDim + lane * 4) = pk;
}

template <int kDim>
int32_t launch_decode_combine(__nv_bfloat16* o, int64_t o_stride, const float* o_part, const float* lse_part,
                              int32_t num_seqs, int32_t num_q_heads, int32_t num_splits, cudaStream_t stream) {
    const int64_t rows = (int64_t)num_seqs * num_q_heads;
    const int64_t blocks = (rows + kCombineWarps - 1) / kCombineWarps;
    decode_combine_kernel<kDim><<<(unsigned)blocks, kCombineThreads, 0, stream>>>(o, o_stride, o_part, lse_part,
                                                                                 num_seqs, num_q_heads, num_splits);
    return launch_status();
}

}  // namespace decode
}  // namespace ocrvl
