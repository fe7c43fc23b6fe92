// Greedy sampling in one pass over each row (semantics in kernels/include/sampling.h): the
// lowest-index argmax of z = x * inv_t and the log-softmax normaliser S = sum exp(z - max z),
// kept as an online (max, sum) pair, so the token's log-prob -log S is exact to f32 rounding.
// For batches whose every row is greedy, with no penalties and no top-n alternatives; the
// general kernel (sample_kernel.cuh) does the same arithmetic for its greedy rows but carries
// 45 KB of shared memory, the parameters of every row class and a one-load-at-a-time tail.
//
// Floor: a greedy step must read every logit once: 256 x 103424 f32 = 106 MB, ~36 us at the
// ~2.9-3.0 TB/s an H100 copy reaches. Nothing else here touches memory (outputs: 12 B a row).
//
// Per element: one multiply (temperature), a max, one ex2 and an add; the max moves (and the
// sum is rescaled) once per 16-byte vector at most, rarely after a row's first few vectors.
// The ex2 goes to the SFU (16 per SM per clock): 2 rows x 103424 per SM is ~13k clocks, ~7 us,
// hidden under the ~36 us of loads when enough loads are in flight.
//
// Grid choice, reasoned from Little's law (to be confirmed on the GPU, docs/notes/
// sampling_greedy.md): HBM stays busy with about bandwidth x loaded latency = 3 TB/s x ~1 us
// = 3 MB of loads in flight, ~23 KB per SM on 132 SMs. A 512-thread block issues kUnroll = 8
// 16-byte loads per thread before using any: 64 KB in flight per block, two blocks per SM
// (__launch_bounds__(512, 2): <= 64 registers; 256 B of shared memory).
//  * batch >= num_sms: one block per row. At batch 256 on 132 SMs, 124 SMs stream two rows and
//    8 stream one, >= 64 KB in flight on every SM, twice what HBM needs. The uneven count costs
//    nothing: HBM, not the SM, is the limit (an SM needs ~23 GB/s of its share and can take
//    several times that from L2), so every row streams at the same rate and the batch ends
//    together; splitting rows would only add a combine launch.
//  * batch < num_sms: one block per row would idle SMs and starve HBM (batch 32: 32 blocks,
//    2 MB in flight). Each row is split into contiguous slices, floor(2 num_sms / batch) of
//    them (2 blocks per SM in one wave), but no slice under kMinSliceElems (one sweep of the
//    block's loads: a smaller slice is all latency) and at most OCRVL_SAMPLING_GREEDY_MAX_SPLITS
//    (the combine has one warp per row). Each block then writes its (max, index, sum, bad) to the
//    workspace and greedy_combine_kernel merges a row's slices in one warp: a second launch of
//    ~2 us, paid only by small batches, whose one-block-per-row time would be worse (a single
//    row's 404 KB through one block: ~8 us of latency-bound loads).
//
// Tail: the last step of a thread's slice issues its loads predicated rather than one at a
// time, so the end of a row does not serialise on load latency.
//
// Determinism: per-thread order is by vector index, the merges run in a fixed shuffle order,
// so a row's outputs depend on (its logits, its parameters, num_splits) only. The token is an
// exact argmax and never depends on num_splits; the log-prob's f32 sum does, in its last bits,
// and num_splits follows the batch size (as it differs from the general kernel's sum order).
// Making the sum independent of the split would need per-tile states merged in one fixed tree,
// which costs a block barrier per tile (or a larger workspace) for a difference near 1e-7.
#pragma once
#include "sampling.h"
#include "sampling/row.cuh"

namespace ocrvl {
namespace sampling {
namespace greedy {

constexpr int kGreedyThreads = 512;
constexpr int kGreedyWarps = kGreedyThreads / 32;
// 16-byte loads in flight per thread: 8 x 16 B x 512 threads = 64 KB per block.
constexpr int kGreedyUnroll = 8;
// One sweep of a block over f32 logits (512 threads x 8 vectors x 4): the smallest slice.
constexpr int kMinSliceElems = kGreedyThreads * kGreedyUnroll * 4;
constexpr int kMaxSplits = OCRVL_SAMPLING_GREEDY_MAX_SPLITS;
// Rows per combine block: one warp each.
constexpr int kCombineRows = 8;

// Host-side split heuristic (reasons above). batch, vocab, num_sms >= 1.
inline int num_splits(int batch, int vocab, int num_sms) {
    if (batch >= num_sms) return 1;
    int s = (2 * num_sms) / batch;
    const int by_size = vocab / kMinSliceElems;
    if (s > by_size) s = by_size;
    if (s > kMaxSplits) s = kMaxSplits;
    return s < 1 ? 1 : s;
}

// A (row or slice) reduction state: key = fkey(max) above, 0xFFFFFFFF - argmax below (so the
// u64 max prefers the larger value, then the LOWER index); s = sum of exp(z - max); bad = a
// NaN or +inf was seen. 16 bytes: one per (row, split) in the workspace.
struct alignas(16) Acc {
    u64 key;
    float s;
    uint32_t bad;
};

// Max -inf, index INT_MAX (never reported: a row whose max is -inf is invalid), sum 0.
__device__ __forceinline__ Acc acc_identity() {
    Acc r;
    r.key = ((u64)fkey(-INFINITY) << 32) | (u64)(0xFFFFFFFFu - (uint32_t)INT_MAX);
    r.s = 0.0f;
    r.bad = 0;
    return r;
}

__device__ __forceinline__ float acc_max(const Acc& a) { return key_float((uint32_t)(a.key >> 32)); }

// Merges two states: the larger max (lower index on ties), the sums rescaled to it. A side
// whose max is -inf holds no finite value and adds nothing.
__device__ __forceinline__ Acc acc_merge(const Acc& a, const Acc& b) {
    Acc r;
    r.key = a.key > b.key ? a.key : b.key;
    r.bad = a.bad | b.bad;
    const float m = acc_max(r), ma = acc_max(a), mb = acc_max(b);
    r.s = (ma > -INFINITY ? a.s * exp_neg(ma - m) : 0.0f) + (mb > -INFINITY ? b.s * exp_neg(mb - m) : 0.0f);
    return r;
}

__device__ __forceinline__ Acc warp_merge(Acc v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Acc w;
        w.key = __shfl_xor_sync(0xffffffffu, v.key, o);
        w.s = __shfl_xor_sync(0xffffffffu, v.s, o);
        w.bad = __shfl_xor_sync(0xffffffffu, v.bad, o);
        v = acc_merge(v, w);
    }
    return v;
}

struct GreedyKernelArgs {
    const void* logits;  // [batch, vocab], row stride `stride`
    int64_t stride;
    int vocab;
    int batch;
    int splits;
    int chunk;                 // vectors per slice (a multiple of 32)
    const float* temperature;  // [batch]
    const int32_t* top_k;      // [batch]
    const float* top_p;        // [batch]
    int32_t* token;            // [batch]
    float* logprob;            // [batch]
    int32_t* status;           // [batch]
    Acc* partials;             // [batch, splits]; null when splits == 1
};

// The row's parameter status, checked as sample_kernel checks it (penalties aside): 3 for a
// bad parameter, 4 for a row that is not greedy, else 0 with the row's 1 / temperature.
__device__ __forceinline__ int row_check(const GreedyKernelArgs& a, int b, float& inv_t) {
    const float temp = a.temperature[b];
    const int top_k = a.top_k[b];
    const float top_p = a.top_p[b];
    inv_t = 1.0f;
    if (!(temp >= 0.0f && temp <= FLT_MAX) || top_k < 0 || !(top_p > 0.0f)) return 3;
    if (!(temp < kMinTemperature || top_k == 1)) return 4;
    inv_t = temp < kMinTemperature ? 1.0f : 1.0f / temp;
    return 0;
}

// Writes row b's outputs from its merged state (or `status` when the parameters failed).
__device__ __forceinline__ void write_row(const GreedyKernelArgs& a, int b, int status, const Acc& v) {
    const float m = acc_max(v);
    if (status == 0 && (v.bad != 0 || !(m > -INFINITY))) status = 1;
    if (status != 0) {
        a.token[b] = -1;
        a.logprob[b] = -INFINITY;
        a.status[b] = status;
        return;
    }
    a.token[b] = (int)(0xFFFFFFFFu - (uint32_t)v.key);
    // (z_token - max) - log S with z_token = max: written as the general kernel writes it, so
    // that a one-hot row gives +0, not -0.
    a.logprob[b] = 0.0f - logf(v.s);
    a.status[b] = 0;
}

// One step of a thread's pass: kGreedyUnroll vector loads issued before any is used (vectors
// v, v + 512, ...), then the per-vector update of pass_stats (row.cuh): the max and its first
// index move when a vector's max exceeds the running one (or is the first finite value), the
// sum is rescaled then, and every element adds exp(z - max). kGuard: the step's last vectors
// may lie past v1 (the slice's final step; its loads are predicated, not serialised). NaN
// escapes fmaxf but turns the sum NaN; +inf becomes the max; both are caught in the state.
template <bool kGuard, typename T, int VEC>
__device__ __forceinline__ void pass_step(const T* row, int v, int v1, float inv_t, float& m, float& s, int& am) {
    typedef RowLoad<T, VEC> L;
    typename L::Raw q[kGreedyUnroll];
#pragma unroll
    for (int u = 0; u < kGreedyUnroll; ++u) {
        const int vi = v + u * kGreedyThreads;
        q[u] = (!kGuard || vi < v1) ? L::load(row, vi) : typename L::Raw{};
    }
#pragma unroll
    for (int u = 0; u < kGreedyUnroll; ++u) {
        const int vi = v + u * kGreedyThreads;
        const bool valid = !kGuard || vi < v1;
        float z[VEC];
        float vmax = -INFINITY;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            z[e] = valid ? L::elem(q[u], e) * inv_t : -INFINITY;
            vmax = fmaxf(vmax, z[e]);
        }
        if (vmax > m || (am == INT_MAX && vmax > -INFINITY)) {
            s *= exp_neg(m - vmax);
            m = vmax;
#pragma unroll
            for (int e = VEC - 1; e >= 0; --e) {
                if (z[e] == vmax) am = vi * VEC + e;
            }
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) s += exp_neg(z[e] - m);
    }
}

// This thread's state over its vectors v0 + t, v0 + t + 512, ... below v1, in index order.
template <typename T, int VEC>
__device__ __forceinline__ Acc thread_pass(const T* row, int v0, int v1, float inv_t) {
    float m = -FLT_MAX, s = 0.0f;  // -FLT_MAX, not -inf: exp(-inf - m) must be 0, never NaN
    int am = INT_MAX;              // INT_MAX: no finite value seen yet
    constexpr int kStep = kGreedyThreads * kGreedyUnroll;
    int v = v0 + (int)threadIdx.x;
    // Whole steps: every load in range, none predicated.
    for (; v + (kGreedyUnroll - 1) * kGreedyThreads < v1; v += kStep) {
        pass_step<false, T, VEC>(row, v, v1, inv_t, m, s, am);
    }
    if (v < v1) pass_step<true, T, VEC>(row, v, v1, inv_t, m, s, am);
    Acc r;
    const bool bad = !(s == s) || m == INFINITY;
    const float mt = am == INT_MAX ? -INFINITY : m;
    r.key = ((u64)fkey(mt) << 32) | (u64)(0xFFFFFFFFu - (uint32_t)am);
    r.s = am == INT_MAX ? 0.0f : s;
    r.bad = bad ? 1u : 0u;
    return r;
}

// Grid: (batch, splits), Block: (kGreedyThreads). Block (b, k) reads slice k of row b: vectors
// [k * chunk, (k + 1) * chunk) clipped to the row. With one split it writes the row's outputs;
// otherwise its state goes to partials[b, k] (nothing for a row whose parameters failed: the
// combine reports those).
template <typename T, int VEC>
__global__ void __launch_bounds__(kGreedyThreads, 2) greedy_kernel(const GreedyKernelArgs a) {
    __shared__ Acc warp_acc[kGreedyWarps];
    const int b = blockIdx.x;
    const int k = blockIdx.y;
    float inv_t;
    const int status = row_check(a, b, inv_t);  // block-uniform
    if (status != 0) {
        if (a.splits == 1 && threadIdx.x == 0) write_row(a, b, status, acc_identity());
        return;
    }
    const int nvec = a.vocab / VEC;
    const int v0 = min(nvec, k * a.chunk);
    const int v1 = min(nvec, v0 + a.chunk);
    const T* row = static_cast<const T*>(a.logits) + (int64_t)b * a.stride;
    Acc v = warp_merge(thread_pass<T, VEC>(row, v0, v1, inv_t));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_acc[warp] = v;
    __syncthreads();
    if (warp != 0) return;
    v = warp_merge(lane < kGreedyWarps ? warp_acc[lane] : acc_identity());
    if (lane != 0) return;
    if (a.splits == 1) {
        write_row(a, b, 0, v);
    } else {
        a.partials[(int64_t)b * a.splits + k] = v;
    }
}

// Grid: (ceil(batch / kCombineRows)), Block: (32 * kCombineRows). Warp w merges the slices of
// row blockIdx.x * kCombineRows + w (lane i reads slice i) and writes the row's outputs.
__global__ void __launch_bounds__(32 * kCombineRows) greedy_combine_kernel(const GreedyKernelArgs a) {
    const int lane = threadIdx.x & 31;
    const int b = blockIdx.x * kCombineRows + (threadIdx.x >> 5);
    if (b >= a.batch) return;  // warp-uniform
    float inv_t;
    const int status = row_check(a, b, inv_t);
    if (status != 0) {
        if (lane == 0) write_row(a, b, status, acc_identity());
        return;
    }
    const Acc v = warp_merge(lane < a.splits ? a.partials[(int64_t)b * a.splits + lane] : acc_identity());
    if (lane == 0) write_row(a, b, 0, v);
}

template <typename T, int VEC>
int32_t launch_greedy(GreedyKernelArgs a, cudaStream_t stream) {
    const int nvec = a.vocab / VEC;
    // Slices of whole warps' worth of vectors (512 B), so every warp's loads stay aligned.
    a.chunk = ((nvec + a.splits - 1) / a.splits + 31) / 32 * 32;
    greedy_kernel<T, VEC><<<dim3(a.batch, a.splits), kGreedyThreads, 0, stream>>>(a);
    if (a.splits > 1) {
        const int32_t st = launch_status();
        if (st != OCRVL_STATUS_OK) return st;
        greedy_combine_kernel<<<(a.batch - 1) / kCombineRows + 1, 32 * kCombineRows, 0, stream>>>(a);
    }
    return launch_status();
}

}  // namespace greedy
}  // namespace sampling
}  // namespace ocrvl
