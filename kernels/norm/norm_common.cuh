// Pieces shared by the row-norm kernels (rmsnorm.cuh, layernorm.cuh).
//
// Layout: a row of `hidden` bf16 is moved as nvec = hidden / 8 vectors of 16 bytes. A row is
// owned by kThreadsPerRow threads: either one warp (32), or one block (kBlockRowThreads). Thread
// `tid` of the row holds the vectors tid, tid + kThreadsPerRow, ... in registers, at most
// kVecPerThread of them (a compile-time bound; a runtime guard `c < nvec` covers rows that do
// not fill the last round, e.g. hidden 1152: 144 vectors = 4.5 per lane of a warp). The row is
// read from global memory once, kept in registers while the statistics are reduced, and
// normalised from the registers: each element costs one read and one write of HBM.
//
// Why these layouts:
// - One warp per row up to hidden 2048 (kVecPerThread <= 8): the row's sums need only warp
//   shuffles, no shared memory and no __syncthreads; at the model's widths (1024, 1152) each
//   lane has 4-5 independent 16-byte loads in flight, and a 16k-row prefill has 16k warps.
// - One block of 256 threads per row above 2048, up to 8192 (kVecPerThread <= 4): a warp would
//   need up to 32 vectors (128 registers) per lane for the row; a block keeps it at 4.
// - Warp rows go 4 per block (128 threads): 1-warp blocks would cap residency at the SM's
//   32-block limit, half of its 64 warps. One row per block for small batches (256 rows on 256
//   blocks over all 132 SMs rather than 64 blocks) was measured on the H100 and was no faster
//   (3.5 vs 3.4 us under ncu for 256 x 1024): decode rows are latency-bound either way.
// - Measured on the H100 (benches/norm.rs): 16384 x 1024 rmsnorm 87% and rmsnorm_add 94% of
//   the 2960 GB/s copy rate; 5040 x 1152 layernorm 65% and layernorm_add 80%, where a plain
//   torch copy of the same bytes reaches 66% and 84% (short kernels: launch and tail).
//   Moving the weight/bias loads after the reductions cut LayerNorm's registers from 119 to 80
//   (hidden 1152) and changed neither number, so the loads stay early, where their latency
//   overlaps the reductions (it matters most for latency-bound decode batches).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include <type_traits>

#include "common/check.cuh"

namespace ocrvl {
namespace norm {

constexpr int kVec = 8;  // bf16 per 16-byte vector
constexpr int kMaxHidden = 8192;
constexpr int kBlockRowThreads = 256;
constexpr int kWarpRowsPerBlock = 4;

template <int N>
using IntC = std::integral_constant<int, N>;

__device__ __forceinline__ void bf16x8_to_f32(const uint4& v, float (&f)[kVec]) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < kVec / 2; ++i) {
        const float2 p = __bfloat1622float2(h[i]);
        f[2 * i] = p.x;
        f[2 * i + 1] = p.y;
    }
}

// Rounds each value to bf16, nearest-even.
__device__ __forceinline__ uint4 f32_to_bf16x8(const float (&f)[kVec]) {
    uint4 v;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < kVec / 2; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return v;
}

// The row this thread works on, and its index among the row's kThreadsPerRow threads.
template <int kThreadsPerRow>
__device__ __forceinline__ void row_slot(int64_t& row, int& tid) {
    static_assert(kThreadsPerRow == 32 || kThreadsPerRow == kBlockRowThreads, "warp or block rows");
    if constexpr (kThreadsPerRow == 32) {
        row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
        tid = threadIdx.x % 32;
    } else {
        row = blockIdx.x;
        tid = threadIdx.x;
    }
}

// Loads this thread's vectors of one row: v[i] = row[tid + i * kThreadsPerRow] for those below
// nvec. All loads are issued before any use, so they are in flight together.
template <int kThreadsPerRow, int kVecPerThread>
__device__ __forceinline__ void load_row(uint4 (&v)[kVecPerThread],
                                         const __nv_bfloat16* __restrict__ row,  // [hidden]
                                         int tid, int nvec) {
    const uint4* p = reinterpret_cast<const uint4*>(row);
#pragma unroll
    for (int i = 0; i < kVecPerThread; ++i) {
        const int c = tid + i * kThreadsPerRow;
        if (c < nvec) v[i] = p[c];
    }
}

template <int kThreadsPerRow, int kVecPerThread>
__device__ __forceinline__ void store_row(__nv_bfloat16* __restrict__ row,  // [hidden]
                                          const uint4 (&v)[kVecPerThread], int tid, int nvec) {
    uint4* p = reinterpret_cast<uint4*>(row);
#pragma unroll
    for (int i = 0; i < kVecPerThread; ++i) {
        const int c = tid + i * kThreadsPerRow;
        if (c < nvec) p[c] = v[i];
    }
}

// The fused residual add: residual = bf16(f32(residual) + f32(x)), written back, and v (which
// held x) becomes the rounded sum, the value the norm's statistics are then taken from. The f32
// sum of two bf16 rounds to bf16 exactly as the exact sum would, so this equals PyTorch's bf16 add.
template <int kThreadsPerRow, int kVecPerThread>
__device__ __forceinline__ void add_residual(uint4 (&v)[kVecPerThread],
                                             __nv_bfloat16* __restrict__ residual,  // [hidden]
                                             int tid, int nvec) {
    uint4 r[kVecPerThread];
    load_row<kThreadsPerRow, kVecPerThread>(r, residual, tid, nvec);
#pragma unroll
    for (int i = 0; i < kVecPerThread; ++i) {
        if (tid + i * kThreadsPerRow < nvec) {
            float fx[kVec], fr[kVec];
            bf16x8_to_f32(v[i], fx);
            bf16x8_to_f32(r[i], fr);
#pragma unroll
            for (int j = 0; j < kVec; ++j) fx[j] += fr[j];
            v[i] = f32_to_bf16x8(fx);
        }
    }
    store_row<kThreadsPerRow, kVecPerThread>(residual, v, tid, nvec);
}

// Sum of v over the row's threads; every thread of the row gets the same value (the xor
// butterfly adds the same pairs on every lane; the block step reads the partials in one order).
// `smem` holds kThreadsPerRow / 32 floats and is used only by block rows; it may be reused by
// consecutive calls (the leading barrier protects the previous call's readers).
template <int kThreadsPerRow>
__device__ __forceinline__ float row_sum(float v, float* smem) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if constexpr (kThreadsPerRow > 32) {
        constexpr int kWarps = kThreadsPerRow / 32;
        __syncthreads();
        if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = v;
        __syncthreads();
        v = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) v += smem[w];
    }
    return v;
}

// Calls f(IntC<kThreadsPerRow>{}, IntC<kVecPerThread>{}) for the smallest instantiated layout
// that holds a row of `hidden` (a multiple of kVec), or returns UNSUPPORTED past kMaxHidden.
// Warp rows: 8, 16, 32, 40, 64 elements per lane (hidden 256, 512, 1024, 1280, 2048); block
// rows: 16, 24, 32 per thread (hidden 4096, 6144, 8192).
template <typename F>
inline int32_t dispatch_row_layout(int64_t hidden, F&& f) {
    const int64_t nvec = hidden / kVec;
    if (nvec <= 32 * 1) return f(IntC<32>{}, IntC<1>{});
    if (nvec <= 32 * 2) return f(IntC<32>{}, IntC<2>{});
    if (nvec <= 32 * 4) return f(IntC<32>{}, IntC<4>{});
    if (nvec <= 32 * 5) return f(IntC<32>{}, IntC<5>{});
    if (nvec <= 32 * 8) return f(IntC<32>{}, IntC<8>{});
    if (nvec <= kBlockRowThreads * 2) return f(IntC<kBlockRowThreads>{}, IntC<2>{});
    if (nvec <= kBlockRowThreads * 3) return f(IntC<kBlockRowThreads>{}, IntC<3>{});
    if (nvec <= kBlockRowThreads * 4) return f(IntC<kBlockRowThreads>{}, IntC<4>{});
    return OCRVL_STATUS_UNSUPPORTED;
}

struct RowLaunch {
    dim3 grid;
    dim3 block;
};

// Grid and block for num_tokens rows (num_tokens >= 1, at most INT32_MAX); see the file comment.
template <int kThreadsPerRow>
inline RowLaunch row_launch(int64_t num_tokens) {
    if constexpr (kThreadsPerRow == 32) {
        return {dim3((unsigned)((num_tokens + kWarpRowsPerBlock - 1) / kWarpRowsPerBlock)),
                dim3(32 * kWarpRowsPerBlock)};
    } else {
        return {dim3((unsigned)num_tokens), dim3(kThreadsPerRow)};
    }
}

}  // namespace norm
}  // namespace ocrvl
