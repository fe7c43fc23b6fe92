// Building blocks of the sampling kernel (one 512-thread block per row): constants, the
// order-preserving float keys and fixed-point weights every pass shares, the row's random
// stream, shared memory, block reductions and scans, and the bitonic sort of the candidate list.
//
// Determinism: every reduction here runs in a fixed order (warp butterflies, then warps in
// index order), and probability masses are 64-bit fixed-point integers, so a row's result does
// not depend on scheduling, on the other rows, or on the order of shared-memory atomics.
#pragma once
#include <cuda_runtime.h>
#include <float.h>
#include <limits.h>
#include <stdint.h>

#include "common/philox.cuh"

namespace ocrvl {
namespace sampling {

typedef unsigned long long u64;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
// Candidate list: z (f32) and index (i32) per entry, 32 KB. Thread t owns entries
// [kPerThread * t, kPerThread * (t + 1)) in list scans.
constexpr int kCap = 4096;
constexpr int kPerThread = kCap / kThreads;
// Radix narrowing histogram: 1024 bins of (count u32, mass u64), 12 KB; 2 bins per thread.
constexpr int kBins = 1024;
constexpr int kMaxRounds = 32;
// Top-n slots kept for the (fewer than 20) tokens above a narrowed interval.
constexpr int kTopReserve = 32;
// Vector loads in flight per thread per loop step: 512 threads x 4 x 16 B = 32 KB per block.
constexpr int kUnroll = 4;
// vLLM's _SAMPLING_EPS: smaller temperatures mean greedy.
constexpr float kMinTemperature = 1e-5f;
// Fixed-point weight scale: w = exp(z - max) in [0, 1] becomes floor(w * 2^40); a row of up to
// 2^23 tokens sums below 2^63.
constexpr float kFxScale = 1099511627776.0f;
constexpr uint32_t kMaxKey = 0xFFFFFFFFu;

// Philox counter words 2 (purpose) of the row's draws.
constexpr uint32_t kPurposeFull = 1;      // untruncated draw
constexpr uint32_t kPurposeExact = 2;     // exact class
constexpr uint32_t kPurposeFallback = 3;  // rejection class after kMaxRounds
constexpr uint32_t kPurposeRound = 16;    // rejection round r uses kPurposeRound + r

// Order-preserving key: a < b (floats, no NaN) iff fkey(a) < fkey(b); -0 is mapped to +0.
__device__ __forceinline__ uint32_t fkey(float f) {
    uint32_t b = __float_as_uint(f);
    if (b == 0x80000000u) b = 0;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_float(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// The smallest key of a finite float (-FLT_MAX): -inf and NaN keys lie outside [this, max].
constexpr uint32_t kMinFiniteKey = 0x00800000u;

// exp(x) for x <= 0 as one ex2.approx.ftz: results below 2^-126 flush to 0, which no
// fixed-point weight or f32 sum here can see (a weight is floor(w * 2^40)). __expf without
// -ftz would add a denormal guard of three instructions per element to every pass.
__device__ __forceinline__ float exp_neg(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
    return y;
}

// Fixed-point weight of a token relative to the row max m (z <= m). The same instructions in
// every pass, so a token's weight is bit-identical wherever it is recomputed.
__device__ __forceinline__ u64 weight_fx(float z, float m) {
    return __float2ull_rz(exp_neg(z - m) * kFxScale);
}

// A uniform integer in [0, total) from 64 random bits (total > 0).
__device__ __forceinline__ u64 scale_random(u64 bits, u64 total) { return __umul64hi(bits, total); }

__device__ __forceinline__ u64 bits64(uint32_t lo, uint32_t hi) { return ((u64)hi << 32) | lo; }

// The row's random stream: key = seed, counter = (step, purpose, 0).
struct RowRng {
    uint2 key;
    uint32_t step_lo, step_hi;
    __device__ uint4 draw(uint32_t purpose) const {
        return philox4x32_10(make_uint4(step_lo, step_hi, purpose, 0u), key);
    }
};

// Which tokens a row may draw: allowed(count above, mass above). k = 0 or p_fx = ~0 is off.
struct Crit {
    u64 k;
    u64 p_fx;
    __device__ bool ok(u64 count_above, u64 mass_above) const {
        return (k == 0 || count_above < k) && mass_above < p_fx;
    }
};

struct Shared {
    u64 hist_mass[kBins];
    float list_z[kCap];
    int list_idx[kCap];
    uint32_t hist_cnt[kBins];
    u64 red[kWarps * 4];
    u64 bc_u[2];
    float bc_f[2];
    int bc_i[4];
    int n_list;
};

__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }
__device__ __forceinline__ int warp_id() { return threadIdx.x >> 5; }

struct SumOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a + b; }
};
struct MaxOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a > b ? a : b; }
};
struct MinOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a < b ? a : b; }
};

template <typename V, typename Op>
__device__ __forceinline__ V warp_allreduce(V v, Op op) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Every thread gets op over the block. V is 4 or 8 bytes. Two barriers.
template <typename V, typename Op>
__device__ V block_allreduce(V v, Op op, Shared& sh) {
    static_assert(sizeof(V) <= sizeof(u64), "reduction scratch holds 8 bytes per warp");
    v = warp_allreduce(v, op);
    V* s = reinterpret_cast<V*>(sh.red);
    if (lane_id() == 0) s[warp_id()] = v;
    __syncthreads();
    V r = s[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) r = op(r, s[w]);
    __syncthreads();
    return r;
}

// Exclusive prefix sum over threads in index order; `total` gets the block sum. Two barriers.
__device__ inline u64 block_exclusive_scan(u64 v, u64& total, Shared& sh) {
    const int lane = lane_id(), warp = warp_id();
    u64 incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    if (lane == 31) sh.red[warp] = incl;
    __syncthreads();
    u64 before = 0, tot = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
        const u64 s = sh.red[w];
        before += (w < warp) ? s : 0;
        tot += s;
    }
    __syncthreads();
    total = tot;
    return before + incl - v;
}

// K values reduced at once with the same op: one pair of barriers instead of K.
template <int K, typename Op>
__device__ inline void block_allreduce_array(u64 (&v)[K], Op op, Shared& sh) {
    static_assert(K <= 4, "reduction scratch holds 4 values per warp");
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = warp_allreduce(v[k], op);
    if (lane_id() == 0) {
#pragma unroll
        for (int k = 0; k < K; ++k) sh.red[warp_id() * K + k] = v[k];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
        u64 r = sh.red[k];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) r = op(r, sh.red[w * K + k]);
        v[k] = r;
    }
    __syncthreads();
}

template <int K>
__device__ inline void block_allreduce_sum(u64 (&v)[K], Shared& sh) {
    block_allreduce_array(v, SumOp{}, sh);
}

// The threads that work on the candidate list: the whole block, or warp 0 alone when the list
// is short (then barriers are __syncwarp and scans are shuffles, which is what makes the
// common case cheap: a block barrier costs about as much as a warp's whole scan).
struct BlockGroup {
    static constexpr int kSize = kThreads;
    static __device__ __forceinline__ int rank() { return threadIdx.x; }
    static __device__ __forceinline__ void sync() { __syncthreads(); }
    template <typename V, typename Op>
    static __device__ __forceinline__ V allreduce(V v, Op op, Shared& sh) {
        return block_allreduce(v, op, sh);
    }
    template <int K>
    static __device__ __forceinline__ void allreduce_sum(u64 (&v)[K], Shared& sh) {
        block_allreduce_sum(v, sh);
    }
    static __device__ __forceinline__ u64 exclusive_scan(u64 v, u64& total, Shared& sh) {
        return block_exclusive_scan(v, total, sh);
    }
};

struct WarpGroup {
    static constexpr int kSize = 32;
    static __device__ __forceinline__ int rank() { return lane_id(); }
    static __device__ __forceinline__ void sync() { __syncwarp(); }
    template <typename V, typename Op>
    static __device__ __forceinline__ V allreduce(V v, Op op, Shared&) {
        return warp_allreduce(v, op);
    }
    template <int K>
    static __device__ __forceinline__ void allreduce_sum(u64 (&v)[K], Shared&) {
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = warp_allreduce(v[k], SumOp{});
    }
    static __device__ __forceinline__ u64 exclusive_scan(u64 v, u64& total, Shared&) {
        u64 incl = v;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u64 n = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane_id() >= o) incl += n;
        }
        total = __shfl_sync(0xffffffffu, incl, 31);
        return incl - v;
    }
};

// Lists up to this long are handled by warp 0 alone: 8 entries per lane, whose keys and
// weights the rejection rounds keep in registers (ListSource).
constexpr int kWarpList = 256;

// The list order: z descending, then index ascending (a total order on distinct indices).
__device__ __forceinline__ bool goes_before(float za, int ia, float zb, int ib) {
    const uint32_t ka = fkey(za), kb = fkey(zb);
    return ka > kb || (ka == kb && ia < ib);
}

// Sorts list[0, n) into the list order, n <= kCap. Pads to a power of two with (-inf, INT_MAX)
// sentinels, which sort after every real entry. Bitonic network; ends with G's barrier.
template <typename G>
__device__ inline void sort_list(Shared& sh, int n) {
    int p = 1;
    while (p < n) p <<= 1;
    for (int i = n + G::rank(); i < p; i += G::kSize) {
        sh.list_z[i] = -INFINITY;
        sh.list_idx[i] = INT_MAX;
    }
    G::sync();
    for (int size = 2; size <= p; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = G::rank(); i < (p >> 1); i += G::kSize) {
                // stride is a power of two: shifts and masks, not a division (which would
                // cost more than the compare-exchange itself).
                const int lo = ((i & ~(stride - 1)) << 1) | (i & (stride - 1));
                const int hi = lo + stride;
                const float za = sh.list_z[lo], zb = sh.list_z[hi];
                const int ia = sh.list_idx[lo], ib = sh.list_idx[hi];
                const bool forward = (lo & size) == 0;
                if (forward ? goes_before(zb, ib, za, ia) : goes_before(za, ia, zb, ib)) {
                    sh.list_z[lo] = zb;
                    sh.list_idx[lo] = ib;
                    sh.list_z[hi] = za;
                    sh.list_idx[hi] = ia;
                }
            }
            G::sync();
        }
    }
}

}  // namespace sampling
}  // namespace ocrvl
