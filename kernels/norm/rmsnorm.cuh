// RMSNorm over rows of bf16, optionally fused with the residual add that precedes it.
//
//   (kAdd)  residual = bf16(residual + x); the row is then the rounded residual, else x
//   rstd    = rsqrt(sum(row^2) / hidden + eps)              f32, row held in registers
//   out     = bf16(f32(bf16(row * rstd)) * f32(weight))
//
// The normalised row is rounded to bf16 before the weight multiply, as the model's reference
// does (HF Ernie4_5RMSNorm: `weight * hidden_states.to(input_dtype)`; vLLM's rms_norm kernel
// rounds the same way). One pass: x (and residual) are read once, out (and residual) written
// once. Row layouts and their reasons: norm_common.cuh. Constraints: hidden % 8 == 0,
// hidden <= 8192, 16-byte aligned rows; checked by the launcher in norm.cu.
#pragma once
#include "norm/norm_common.cuh"

namespace ocrvl {
namespace norm {

// Grid: (ceil(num_tokens / 4)), Block: (128) for warp rows (4 rows of one warp per block);
// Grid: (num_tokens), Block: (kBlockRowThreads) for block rows (row_launch).
template <int kThreadsPerRow, int kVecPerThread, bool kAdd>
__global__ void __launch_bounds__(kThreadsPerRow == 32 ? 32 * kWarpRowsPerBlock : kThreadsPerRow)
    rmsnorm_kernel(__nv_bfloat16* __restrict__ out,          // [num_tokens, hidden], row stride out_stride
                   int64_t out_stride,
                   const __nv_bfloat16* __restrict__ x,      // [num_tokens, hidden], row stride x_stride
                   int64_t x_stride,
                   __nv_bfloat16* __restrict__ residual,     // [num_tokens, hidden], row stride
                   int64_t residual_stride,                  //   residual_stride; kAdd only
                   const __nv_bfloat16* __restrict__ weight, // [hidden]
                   int64_t num_tokens, int hidden, float eps) {
    __shared__ float smem[kThreadsPerRow / 32];
    int64_t row;
    int tid;
    row_slot<kThreadsPerRow>(row, tid);
    // Warp rows only (block rows have grid = num_tokens): the whole warp leaves together, so
    // the full-mask shuffles below stay well defined for the warps that remain.
    if (row >= num_tokens) return;
    const int nvec = hidden / kVec;

    uint4 v[kVecPerThread];
    load_row<kThreadsPerRow, kVecPerThread>(v, x + row * x_stride, tid, nvec);
    // The weight loads (L1/L2 hits after the first rows) are issued with the row's loads,
    // before the residual add and the reduction, so that all latencies overlap.
    uint4 w[kVecPerThread];
    load_row<kThreadsPerRow, kVecPerThread>(w, weight, tid, nvec);
    if constexpr (kAdd) add_residual<kThreadsPerRow, kVecPerThread>(v, residual + row * residual_stride, tid, nvec);

    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < kVecPerThread; ++i) {
        if (tid + i * kThreadsPerRow < nvec) {
            float f[kVec];
            bf16x8_to_f32(v[i], f);
#pragma unroll
            for (int j = 0; j < kVec; ++j) ss = fmaf(f[j], f[j], ss);
        }
    }
    ss = row_sum<kThreadsPerRow>(ss, smem);
    const float rstd = rsqrtf(ss / (float)hidden + eps);

#pragma unroll
    for (int i = 0; i < kVecPerThread; ++i) {
        if (tid + i * kThreadsPerRow < nvec) {
            float f[kVec], fw[kVec];
            bf16x8_to_f32(v[i], f);
            bf16x8_to_f32(w[i], fw);
#pragma unroll
            for (int j = 0; j < kVec; ++j) f[j] = __bfloat162float(__float2bfloat16_rn(f[j] * rstd)) * fw[j];
            v[i] = f32_to_bf16x8(f);
        }
    }
    store_row<kThreadsPerRow, kVecPerThread>(out + row * out_stride, v, tid, nvec);
}

// residual is null unless kAdd. Arguments are checked by the caller (norm.cu).
template <bool kAdd>
int32_t launch_rmsnorm(__nv_bfloat16* out, int64_t out_stride, const __nv_bfloat16* x, int64_t x_stride,
                       __nv_bfloat16* residual, int64_t residual_stride, const __nv_bfloat16* weight,
                       int64_t num_tokens, int64_t hidden, float eps, cudaStream_t stream) {
    return dispatch_row_layout(hidden, [&](auto threads, auto vecs) {
        constexpr int kThreadsPerRow = decltype(threads)::value;
        constexpr int kVecPerThread = decltype(vecs)::value;
        const RowLaunch l = row_launch<kThreadsPerRow>(num_tokens);
        rmsnorm_kernel<kThreadsPerRow, kVecPerThread, kAdd><<<l.grid, l.block, 0, stream>>>(
            out, out_stride, x, x_stride, residual, residual_stride, weight, num_tokens, (int)hidden, eps);
        return launch_status();
    });
}

}  // namespace norm
}  // namespace ocrvl
