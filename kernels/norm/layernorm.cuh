// LayerNorm with weight and bias over rows of bf16, optionally fused with the residual add
// that precedes it (the vision encoder's `x = r + ...; y = LN(x)`).
//
//   (kAdd)  residual = bf16(residual + x); the row is then the rounded residual, else x
//   mean    = sum(row) / hidden                             f32
//   var     = sum((row - mean)^2) / hidden                  f32, biased (PyTorch LayerNorm)
//   out     = bf16((row - mean) * rsqrt(var + eps) * weight + bias)   f32, one rounding
//
// The variance is taken in a second pass over the row held in registers, not as
// E[x^2] - E[x]^2: with a row mean of a few units and a spread near 1 (vision activations)
// the difference of the two f32 sums loses most of its digits. Each element is still read from
// HBM once. Row layouts and their reasons: norm_common.cuh. Constraints: hidden % 8 == 0,
// hidden <= 8192, 16-byte aligned rows; checked by the launcher in norm.cu.
#pragma once
#include "norm/norm_common.cuh"

namespace ocrvl {
namespace norm {

// Grid: (ceil(num_tokens / 4)), Block: (128) for warp rows (4 rows of one warp per block);
// Grid: (num_tokens), Block: (kBlockRowThreads) for block rows (row_launch).
template <int kThreadsPerRow, int kVecPerThread, bool kAdd>
__global__ void __launch_bounds__(kThreadsPerRow == 32 ? 32 * kWarpRowsPerBlock : kThreadsPerRow)
    layernorm_kernel(__nv_bfloat16* __restrict__ out,          // [num_tokens, hidden], row stride out_stride
                     int64_t out_stride,
                     const __nv_bfloat16* __restrict__ x,      // [num_tokens, hidden], row stride x_stride
                     int64_t x_stride,
                     __nv_bfloat16* __restrict__ residual,     // [num_tokens, hidden], row stride
                     int64_t residual_stride,                  //   residual_stride; kAdd only
                     const __nv_bfloat16* __restrict__ weight, // [hidden]
                     const __nv_bfloat16* __restrict__ bias,   // [hidden]
                     int64_t num_tokens, int hidden, float eps) {
    __shared__ float smem[kThreadsPerRow / 32];
    int64_t row;
    int tid;
    row_slot<kThreadsPerRow>(row, tid);
    // Warp rows only (block rows have grid = num_tokens): the whole warp leaves together.
    if (row >= num_tokens) return;
    const int nvec = hidden / kVec;

    uint4 v[kVecPerThread];
    load_row<kThreadsPerRow, kVecPerThread>(v, x + row * x_stride, tid, nvec);
    // Weight and bias (L1/L2 hits after the first rows) are loaded with the row, before
    // the residual add and the reductions, so that all latencies overlap.
    uint4 w[kVecPerThread], b[kVecPerThread];
    load_row<kThreadsPerRow, kVecPerThread>(w, weight, tid, nvec);
    load_row<kThreadsPerRow, kVecPerThread>(b, bias, tid, nvec);
    if constexpr (kAdd) add_residual<kThreadsPerRow, kVecPerThread>(v, residual + row * residual_stride, tid, nvec);

    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kVecPerThread; ++i) {
        if (tid + i * kThreadsPerRow < nvec) {
            float f[kVec];
            bf16x8_to_f32(v[i], f);
#pragma unroll
            for (int j = 0; j < kVec; ++j) s += f[j];
        }
    }
    const float mean = row_sum<kThreadsPerRow>(s, smem) / (float)hidden;

    float q = 0.f;
#pragma unroll
    for (int i = 0; i < kVecPerThread; ++i) {
        if (tid + i * kThreadsPerRow < nvec) {
            float f[kVec];
            bf16x8_to_f32(v[i], f);
#pragma unroll
            for (int j = 0; j < kVec; ++j) {
                const float d = f[j] - mean;
                q = fmaf(d, d, q);
            }
        }
    }
    const float var = row_sum<kThreadsPerRow>(q, smem) / (float)hidden;
    const float rstd = rsqrtf(var + eps);

#pragma unroll
    for (int i = 0; i < kVecPerThread; ++i) {
        if (tid + i * kThreadsPerRow < nvec) {
            float f[kVec], fw[kVec], fb[kVec];
            bf16x8_to_f32(v[i], f);
            bf16x8_to_f32(w[i], fw);
            bf16x8_to_f32(b[i], fb);
#pragma unroll
            for (int j = 0; j < kVec; ++j) f[j] = fmaf((f[j] - mean) * rstd, fw[j], fb[j]);
            v[i] = f32_to_bf16x8(f);
        }
    }
    store_row<kThreadsPerRow, kVecPerThread>(out + row * out_stride, v, tid, nvec);
}

// residual is null unless kAdd. Arguments are checked by the caller (norm.cu).
template <bool kAdd>
int32_t launch_layernorm(__nv_bfloat16* out, int64_t out_stride, const __nv_bfloat16* x, int64_t x_stride,
                         __nv_bfloat16* residual, int64_t residual_stride, const __nv_bfloat16* weight,
                         const __nv_bfloat16* bias, int64_t num_tokens, int64_t hidden, float eps,
                         cudaStream_t stream) {
    return dispatch_row_layout(hidden, [&](auto threads, auto vecs) {
        constexpr int kThreadsPerRow = decltype(threads)::value;
        constexpr int kVecPerThread = decltype(vecs)::value;
        const RowLaunch l = row_launch<kThreadsPerRow>(num_tokens);
        layernorm_kernel<kThreadsPerRow, kVecPerThread, kAdd><<<l.grid, l.block, 0, stream>>>(
            out, out_stride, x, x_stride, residual, residual_stride, weight, bias, num_tokens, (int)hidden, eps);
        return launch_status();
    });
}

}  // namespace norm
}  // namespace ocrvl
