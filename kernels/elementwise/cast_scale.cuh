// Cast with a scale: out = (TOut)(in * scale), the arithmetic in f32.
// Memory-bound: one read and one write per element. Each thread handles kPerThread
// consecutive elements per grid-stride step so that a warp touches contiguous bytes.
#pragma once
#include "common/dispatch.cuh"

namespace ocrvl {

constexpr int kCastThreads = 256;
constexpr int kCastPerThread = 4;

// Grid: (blocks), grid-stride over n; Block: (kCastThreads).
template <typename TOut, typename TIn>
__global__ void cast_scale_kernel(TOut* __restrict__ out,     // [n]
                                  const TIn* __restrict__ in, // [n]
                                  int64_t n, float scale) {
    const int64_t step = (int64_t)gridDim.x * blockDim.x * kCastPerThread;
    for (int64_t base = ((int64_t)blockIdx.x * blockDim.x) * kCastPerThread + threadIdx.x; base < n;
         base += step) {
#pragma unroll
        for (int j = 0; j < kCastPerThread; ++j) {
            int64_t i = base + (int64_t)j * blockDim.x;
            if (i < n) out[i] = from_f32<TOut>(to_f32(in[i]) * scale);
        }
    }
}

template <typename TOut, typename TIn>
int32_t launch_cast_scale(TOut* out, const TIn* in, int64_t n, float scale, cudaStream_t stream) {
    const int64_t per_block = (int64_t)kCastThreads * kCastPerThread;
    int64_t blocks = (n + per_block - 1) / per_block;
    // Enough blocks to fill any current GPU several times over; the loop covers the rest.
    if (blocks > 65535 * 8) blocks = 65535 * 8;
    cast_scale_kernel<TOut, TIn><<<(unsigned)blocks, kCastThreads, 0, stream>>>(out, in, n, scale);
    return launch_status();
}

}  // namespace ocrvl
