// 16-byte vectors of 8 two-byte floats (bf16 or f16) held as 8 f32 in registers, and the launch
// shape shared by the row-wise kernels: one vector per thread over the flattened rows.
// Used by the elementwise and embedding families.
#pragma once
#include <stdint.h>

#include "common/check.cuh"
#include "common/dispatch.cuh"

namespace ocrvl {

// Elements per 16-byte vector.
constexpr int kVec = 8;
// Threads per block of a row-wise kernel (see row_launch).
constexpr int kRowThreads = 256;

template <typename T>
__device__ __forceinline__ void load_vec8(const T* p, float (&f)[kVec]) {
    static_assert(sizeof(T) == 2, "vec8 is for two-byte floats");
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < kVec; ++i) f[i] = to_f32(e[i]);
}

template <typename T>
__device__ __forceinline__ void store_vec8(T* p, const float (&f)[kVec]) {
    static_assert(sizeof(T) == 2, "vec8 is for two-byte floats");
    uint4 u;
    T* e = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int i = 0; i < kVec; ++i) e[i] = from_f32<T>(f[i]);
    *reinterpret_cast<uint4*>(p) = u;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Launch shape of the row-wise kernels: the [rows, vecs] grid of 16-byte vectors is
// flattened in row-major order and cut into blocks of kRowThreads threads, one vector per
// thread; each thread finds its (row, vector) by one 32-bit division. Measured on the H100 at
// 5040 x 4304 (538 vectors a row), benches/elementwise.rs: GELU erf 2474 GB/s and tanh 2668
// GB/s flattened, against 2342 and 2525 with blocks that each covered one chunk of one row
// (3 x 192 threads: 12 idle per block, 10 blocks per SM); two or four rows per thread in that
// layout did not help (erf 2381, 1975). The flattened index is 32-bit, so rows * vecs must
// stay under 2^31.
struct RowLaunch {
    dim3 grid;
    dim3 block;
    uint32_t total;  // rows * vecs
    uint32_t vecs;   // vectors per row
    bool ok;         // false when the shape is empty or exceeds the 32-bit index
};

inline RowLaunch row_launch(int64_t rows, int64_t vecs) {
    RowLaunch l{dim3(1), dim3(1), 0, 0, false};
    if (rows <= 0 || vecs <= 0 || rows > 0x7fffffffLL / vecs) return l;
    const int64_t total = rows * vecs;
    l.grid = dim3((unsigned)((total + kRowThreads - 1) / kRowThreads));
    l.block = dim3(kRowThreads);
    l.total = (uint32_t)total;
    l.vecs = (uint32_t)vecs;
    l.ok = true;
    return l;
}

// This thread's (row, vector in the row) under row_launch's shape; false past the end.
// blockIdx.x * blockDim.x + threadIdx.x stays below 2^31 + kRowThreads, inside uint32.
__device__ __forceinline__ bool row_vec(uint32_t total, uint32_t vecs, int64_t& row, int64_t& v) {
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return false;
    const uint32_t r = i / vecs;
    row = r;
    v = i - r * vecs;
    return true;
}

}  // namespace ocrvl
