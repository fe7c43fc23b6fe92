// Passes over one row of logits (global memory), run by the row's 512-thread block.
//
// Ownership: the row is split into vectors of VEC elements (16 bytes: 4 f32 or 8 bf16; VEC = 1
// when the row is not 16-byte aligned or vocab is not a multiple of the vector width), and
// thread t owns vectors t, t + 512, t + 1024, ... . Every pass walks a thread's vectors the same
// way, so a per-thread sum from one pass can be re-walked later by one warp (warp_find) to locate
// a token inside that thread's share: this is how the kernel draws from the whole row without a
// prefix sum over 100k elements.
//
// Loads are __ldcg (L2, no L1): the row is streamed, and the penalty prologue may have written
// it earlier in the same kernel, which a non-coherent (__ldg) load could miss. Passes after the
// first alternate direction, so that a pass starts on the part of the row the previous pass left
// in L2 (at batch 256 the 106 MB of f32 logits are twice the 50 MB L2).
#pragma once
#include <cuda_bf16.h>

#include "sampling/block.cuh"

namespace ocrvl {
namespace sampling {

// Raw 16-byte (or scalar) loads, unpacked element by element, so that kUnroll loads in flight
// cost 4 registers each whatever the dtype.
template <typename T, int VEC> struct RowLoad;
template <> struct RowLoad<float, 4> {
    typedef uint4 Raw;
    static __device__ __forceinline__ Raw load(const float* p, int vi) {
        return __ldcg(reinterpret_cast<const uint4*>(p) + vi);
    }
    static __device__ __forceinline__ float elem(const Raw& q, int e) {
        return __uint_as_float(e == 0 ? q.x : e == 1 ? q.y : e == 2 ? q.z : q.w);
    }
};
template <> struct RowLoad<float, 1> {
    typedef uint32_t Raw;
    static __device__ __forceinline__ Raw load(const float* p, int vi) {
        return __ldcg(reinterpret_cast<const unsigned int*>(p) + vi);
    }
    static __device__ __forceinline__ float elem(Raw q, int) { return __uint_as_float(q); }
};
template <> struct RowLoad<__nv_bfloat16, 8> {
    typedef uint4 Raw;
    static __device__ __forceinline__ Raw load(const __nv_bfloat16* p, int vi) {
        return __ldcg(reinterpret_cast<const uint4*>(p) + vi);
    }
    // Little-endian: the lower half of each word is the earlier element.
    static __device__ __forceinline__ float elem(const Raw& q, int e) {
        const uint32_t w = (e >> 1) == 0 ? q.x : (e >> 1) == 1 ? q.y : (e >> 1) == 2 ? q.z : q.w;
        return __uint_as_float((e & 1) ? (w & 0xFFFF0000u) : (w << 16));
    }
};
template <> struct RowLoad<__nv_bfloat16, 1> {
    typedef uint32_t Raw;
    static __device__ __forceinline__ Raw load(const __nv_bfloat16* p, int vi) {
        return (uint32_t)__ldcg(reinterpret_cast<const unsigned short*>(p) + vi) << 16;
    }
    static __device__ __forceinline__ float elem(Raw q, int) { return __uint_as_float(q); }
};

__device__ __forceinline__ void store_elem(float* p, int i, float v) { p[i] = v; }
__device__ __forceinline__ void store_elem(__nv_bfloat16* p, int i, float v) { p[i] = __float2bfloat16_rn(v); }

template <typename T, int VEC>
struct Row {
    T* ptr;       // [vocab], this block's row
    int vocab;
    int nvec;     // vocab / VEC
    float inv_t;  // 1 / temperature (1 for greedy rows)
    float m;      // max of z = x * inv_t over the row, once pass_stats has run

    typedef RowLoad<T, VEC> L;
    __device__ __forceinline__ typename L::Raw load(int vi) const { return L::load(ptr, vi); }
    __device__ __forceinline__ float load_one(int i) const { return RowLoad<T, 1>::elem(RowLoad<T, 1>::load(ptr, i), 0); }
    __device__ __forceinline__ int thread_vecs(int t) const {
        return nvec > t ? (nvec - 1 - t) / kThreads + 1 : 0;
    }
};

// Calls f(raw vector, index of its first element, j) for the j-th vector this thread owns
// (vector t + 512 j), for every one, kUnroll vector loads in flight.
template <bool kReverse, typename T, int VEC, typename F>
__device__ __forceinline__ void for_each_vec(const Row<T, VEC>& row, F&& f) {
    const int t = threadIdx.x;
    const int nv = row.thread_vecs(t);
    int j = 0;
    for (; j + kUnroll <= nv; j += kUnroll) {
        typename Row<T, VEC>::L::Raw q[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) q[u] = row.load(t + (kReverse ? nv - 1 - (j + u) : j + u) * kThreads);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int jj = kReverse ? nv - 1 - (j + u) : j + u;
            f(q[u], (t + jj * kThreads) * VEC, jj);
        }
    }
    for (; j < nv; ++j) {
        const int jj = kReverse ? nv - 1 - j : j;
        f(row.load(t + jj * kThreads), (t + jj * kThreads) * VEC, jj);
    }
}

// Calls f(x, index) for every element this thread owns.
template <bool kReverse, typename T, int VEC, typename F>
__device__ __forceinline__ void for_each_element(const Row<T, VEC>& row, F&& f) {
    for_each_vec<kReverse>(row, [&](const typename Row<T, VEC>::L::Raw& q, int base, int) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) f(Row<T, VEC>::L::elem(q, e), base + e);
    });
}

template <typename T, int VEC, typename F>
__device__ __forceinline__ void for_each_element_dir(const Row<T, VEC>& row, bool reverse, F&& f) {
    if (reverse) {
        for_each_element<true>(row, f);
    } else {
        for_each_element<false>(row, f);
    }
}

// Penalty prologue. The row's history gets a hash table of 2 * H slots in the workspace (keys,
// then counts), so each distinct token is counted with atomics and penalized exactly once, by
// the thread that finds its slot. Returns false (status 2) for a malformed history.
template <typename T, int VEC>
__device__ bool apply_penalties(const Row<T, VEC>& row, Shared& sh, const int32_t* history,  // [capacity]
                                const int32_t* cu_history,  // [batch + 1]
                                int64_t capacity, int32_t* ws_keys, int32_t* ws_counts, float rep,
                                float freq, float pres) {
    const int b = blockIdx.x;
    const int h0 = cu_history[b], h1 = cu_history[b + 1];
    if (h0 < 0 || h1 < h0 || (int64_t)h1 > capacity) return false;
    if ((rep == 1.0f && freq == 0.0f && pres == 0.0f) || h1 == h0) return true;
    const int n = h1 - h0;
    const int slots = 2 * n;
    int32_t* keys = ws_keys + 2 * (int64_t)h0;
    int32_t* counts = ws_counts + 2 * (int64_t)h0;
    for (int i = threadIdx.x; i < slots; i += kThreads) {
        keys[i] = -1;
        counts[i] = 0;
    }
    __syncthreads();
    bool bad = false;
    for (int i = threadIdx.x; i < n; i += kThreads) {
        const int tok = history[h0 + i];
        if (tok < 0 || tok >= row.vocab) {
            bad = true;
            continue;
        }
        // Linear probing; 2n slots for at most n distinct tokens, so a free slot always exists.
        uint32_t s = ((uint32_t)tok * 2654435761u) % (uint32_t)slots;
        while (true) {
            const int prev = atomicCAS(&keys[s], -1, tok);
            if (prev == -1 || prev == tok) {
                atomicAdd(&counts[s], 1);
                break;
            }
            s = (s + 1 == (uint32_t)slots) ? 0 : s + 1;
        }
    }
    if (__syncthreads_or(bad)) return false;
    for (int i = threadIdx.x; i < slots; i += kThreads) {
        const int tok = __ldcg(&keys[i]);
        if (tok < 0) continue;
        const float c = (float)__ldcg(&counts[i]);
        float x = row.load_one(tok);
        if (rep != 1.0f) x = x > 0.0f ? x / rep : x * rep;
        x = x - freq * c;
        x = x - pres;
        store_elem(row.ptr, tok, x);
    }
    // Makes the stores visible to every thread's later (L2) loads of the row.
    __syncthreads();
    return true;
}

// First pass: per-thread max of z (lowest index on ties), online sum of exp(z - max), whether
// the row holds a NaN or +inf, and (kTopK) the thread's 4 largest elements by a 32-bit key:
// the top 16 bits of the element's order-preserving key over its position in the thread
// (j * VEC + e). Every element the thread did not keep has a key <= top[3], so every token
// whose key's top 16 bits exceed those of r_max = max over threads of top[3] is in the union
// of the lists (select.cuh). Whole keys would need 64-bit compares; 16 bits cost nothing but
// a coarser boundary.
constexpr int kTop = 4;

struct Stats {
    float m_t;
    float s_t;
    int am_t;
    bool bad;
    uint32_t top[kTop];  // descending; 0 where the thread has fewer elements
};

// fkey without the -0 fix-up (the caller adds +0.0f, which turns -0 into +0).
__device__ __forceinline__ uint32_t fkey_raw(float f) {
    const uint32_t b = __float_as_uint(f);
    return b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
}

// Branch-free per element: the running max moves once per vector (by the vector's max, rarely
// after the first few), the sum gains one exp per element, a NaN or +inf shows up at the end
// as a NaN sum or an infinite max, and the top-4 list takes a 7-instruction min/max insertion
// network (a branch on "would it insert" diverges in nearly every warp step).
template <bool kTopK, typename T, int VEC>
__device__ Stats pass_stats(const Row<T, VEC>& row) {
    Stats r;
    // -FLT_MAX, not -inf, so that exp(-inf - m) is 0 and never NaN; am == INT_MAX marks a
    // thread that has seen no finite value yet.
    float m = -FLT_MAX, s = 0.0f;
    int am = INT_MAX;
    uint32_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
    for_each_vec<false>(row, [&](const typename Row<T, VEC>::L::Raw& q, int base, int j) {
        float z[VEC];
        float vmax = -INFINITY;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            z[e] = Row<T, VEC>::L::elem(q, e) * row.inv_t;
            vmax = fmaxf(vmax, z[e]);  // fmaxf ignores NaN
        }
        if (vmax > m || (am == INT_MAX && vmax > -INFINITY)) {
            s *= exp_neg(m - vmax);
            m = vmax;
#pragma unroll
            for (int e = VEC - 1; e >= 0; --e) {  // the first element equal to the new max
                if (z[e] == vmax) am = base + e;
            }
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) s += exp_neg(z[e] - m);
        if (kTopK) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const uint32_t a = (fkey_raw(z[e] + 0.0f) & 0xFFFF0000u) | (uint32_t)(j * VEC + e);
                const uint32_t l0 = min(t0, a);
                t0 = max(t0, a);
                const uint32_t l1 = min(t1, l0);
                t1 = max(t1, l0);
                const uint32_t l2 = min(t2, l1);
                t2 = max(t2, l1);
                t3 = max(t3, l2);
            }
        }
    });
    r.bad = !(s == s) || m == INFINITY;
    r.m_t = am == INT_MAX ? -INFINITY : m;
    r.s_t = am == INT_MAX ? 0.0f : s;
    r.am_t = am;
    r.top[0] = t0;
    r.top[1] = t1;
    r.top[2] = t2;
    r.top[3] = t3;
    return r;
}

// One interval pass over finite keys: tokens with key in [klo, khi] ("in") are counted, their
// masses summed, histogrammed into kBins bins of 2^shift keys (when `hist`), and stored in the
// list at [list_base, list_base + cap) until it is full; tokens with key > khi ("above") are
// counted and summed. Block totals are exact; th_* are this thread's sums.
struct PassState {
    uint32_t klo, khi;
    int shift;
    u64 cnt_above, cnt_in, mass_above, mass_in;
    u64 th_above, th_in;
    int n_list;     // entries stored: min(cnt_in, cap)
    bool complete;  // every in-interval token is in the list
};

__device__ __forceinline__ int choose_shift(uint32_t klo, uint32_t khi) {
    int s = 0;
    while (((khi >> s) - (klo >> s)) >= (uint32_t)kBins) ++s;
    return s;
}

template <typename T, int VEC>
__device__ PassState interval_pass(const Row<T, VEC>& row, Shared& sh, uint32_t klo, uint32_t khi, int list_base,
                                   int cap, bool hist, bool reverse) {
    PassState st;
    st.klo = klo;
    st.khi = khi;
    st.shift = choose_shift(klo, khi);
    if (hist) {
        for (int i = threadIdx.x; i < kBins; i += kThreads) {
            sh.hist_cnt[i] = 0;
            sh.hist_mass[i] = 0;
        }
    }
    if (threadIdx.x == 0) sh.n_list = list_base;
    __syncthreads();
    const int shift = st.shift;
    const uint32_t base_bin = klo >> shift;
    const int limit = list_base + cap;
    u64 c_above = 0, c_in = 0, t_above = 0, t_in = 0;
    const float m = row.m;
    for_each_element_dir(row, reverse, [&](float x, int idx) {
        const float z = x * row.inv_t;
        const uint32_t k = fkey(z);
        if (k > khi) {
            t_above += weight_fx(z, m);
            ++c_above;
        } else if (k >= klo) {
            const u64 w = weight_fx(z, m);
            t_in += w;
            ++c_in;
            if (hist) {
                const int bin = (int)((k >> shift) - base_bin);
                atomicAdd(&sh.hist_cnt[bin], 1u);
                atomicAdd(&sh.hist_mass[bin], w);
            }
            if (*(volatile int*)&sh.n_list < limit) {
                const int pos = atomicAdd(&sh.n_list, 1);
                if (pos < limit) {
                    sh.list_z[pos] = z;
                    sh.list_idx[pos] = idx;
                }
            }
        }
    });
    st.th_above = t_above;
    st.th_in = t_in;
    // The reduction's barriers also order the list and histogram writes before later reads.
    u64 v[4] = {c_above, c_in, t_above, t_in};
    block_allreduce_sum(v, sh);
    st.cnt_above = v[0];
    st.cnt_in = v[1];
    st.mass_above = v[2];
    st.mass_in = v[3];
    st.complete = st.cnt_in <= (u64)cap;
    st.n_list = st.complete ? (int)st.cnt_in : cap;
    return st;
}

// A rejection round over the whole row: count and mass of tokens with key > k1 and key > k2
// (k2 >= k1), and this thread's masses of both sets for the next round's draw.
struct Check {
    u64 c1, c2, m1, m2;
    u64 th1, th2;
};

template <typename T, int VEC>
__device__ Check check_pass(const Row<T, VEC>& row, Shared& sh, uint32_t k1, uint32_t k2, bool reverse) {
    u64 c1 = 0, c2 = 0, s1 = 0, s2 = 0;
    const float m = row.m;
    for_each_element_dir(row, reverse, [&](float x, int) {
        const float z = x * row.inv_t;
        const uint32_t k = fkey(z);
        if (k > k1) {
            const u64 w = weight_fx(z, m);
            ++c1;
            s1 += w;
            if (k > k2) {
                ++c2;
                s2 += w;
            }
        }
    });
    Check r;
    r.th1 = s1;
    r.th2 = s2;
    u64 v[4] = {c1, c2, s1, s2};
    block_allreduce_sum(v, sh);
    r.c1 = v[0];
    r.c2 = v[1];
    r.m1 = v[2];
    r.m2 = v[3];
    return r;
}

// Weights of thread t's j-th vector, restricted to finite keys >= lo (0 where j is past the end).
template <typename T, int VEC>
__device__ __forceinline__ u64 vec_weights(const Row<T, VEC>& row, int t, int j, int nv, uint32_t lo, u64 (&w)[VEC],
                                           float (&z)[VEC]) {
    typename Row<T, VEC>::L::Raw q{};
    if (j < nv) q = row.load(t + j * kThreads);
    u64 sum = 0;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        z[e] = j < nv ? Row<T, VEC>::L::elem(q, e) * row.inv_t : -INFINITY;
        const uint32_t k = fkey(z[e]);
        w[e] = (k >= lo && k >= kMinFiniteKey && z[e] <= FLT_MAX) ? weight_fx(z[e], row.m) : 0;
        sum += w[e];
    }
    return sum;
}

// Warp-wide: the sum of thread t's weights over finite keys >= lo (every lane gets it).
template <typename T, int VEC>
__device__ u64 warp_thread_mass(const Row<T, VEC>& row, int t, uint32_t lo) {
    const int nv = row.thread_vecs(t);
    u64 s = 0;
    for (int j0 = 0; j0 < nv; j0 += 32) {
        u64 w[VEC];
        float z[VEC];
        s += vec_weights(row, t, j0 + lane_id(), nv, lo, w, z);
    }
    return warp_allreduce(s, SumOp{});
}

// Warp-wide: walks thread t's elements (vector j = 0, 1, ..., element e = 0 .. VEC-1) over finite
// keys >= lo and returns, in every lane, the element at which the running weight first exceeds
// r (r < that thread's total); idx = -1 if r is past the total.
template <typename T, int VEC>
__device__ void warp_find(const Row<T, VEC>& row, int t, uint32_t lo, u64 r, int& out_idx, float& out_z) {
    const int lane = lane_id();
    const int nv = row.thread_vecs(t);
    u64 base = 0;
    out_idx = -1;
    out_z = 0.0f;
    for (int j0 = 0; j0 < nv; j0 += 32) {
        const int j = j0 + lane;
        u64 w[VEC];
        float z[VEC];
        const u64 mine = vec_weights(row, t, j, nv, lo, w, z);
        u64 incl = mine;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u64 n = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += n;
        }
        const u64 start = base + incl - mine;
        const bool here = mine > 0 && r >= start && r - start < mine;
        int idx = -1;
        float zz = 0.0f;
        if (here) {
            u64 acc = start;
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                if (idx < 0 && w[e] > 0 && r - acc < w[e]) {
                    idx = (t + j * kThreads) * VEC + e;
                    zz = z[e];
                }
                acc += w[e];
            }
        }
        const unsigned hit = __ballot_sync(0xffffffffu, here);
        if (hit) {
            const int src = __ffs(hit) - 1;
            out_idx = __shfl_sync(0xffffffffu, idx, src);
            out_z = __shfl_sync(0xffffffffu, zz, src);
            return;
        }
        base += __shfl_sync(0xffffffffu, incl, 31);
    }
}

// Draws a token from {finite keys >= lo} in proportion to the fixed-point weights, given this
// thread's mass `th` of that set: the thread is chosen by a block scan of the masses, then warp
// 0 walks that thread's elements. r is either given (`bits` unused) or scale_random(bits, total).
// Every thread gets the token (idx -1 only if the masses were inconsistent, which they are not).
template <typename T, int VEC>
__device__ void row_draw(const Row<T, VEC>& row, Shared& sh, u64 th, bool random, u64 bits_or_r, uint32_t lo,
                         int& idx, float& z) {
    if (threadIdx.x == 0) sh.bc_i[0] = -1;
    u64 total;
    const u64 ex = block_exclusive_scan(th, total, sh);
    const u64 r = random ? scale_random(bits_or_r, total) : bits_or_r;
    if (th > 0 && r >= ex && r - ex < th) {
        sh.bc_i[0] = threadIdx.x;
        sh.bc_u[0] = r - ex;
    }
    __syncthreads();
    const int t = sh.bc_i[0];
    if (t >= 0 && warp_id() == 0) {
        int i;
        float zz;
        warp_find(row, t, lo, sh.bc_u[0], i, zz);
        if (lane_id() == 0) {
            sh.bc_i[1] = i;
            sh.bc_f[0] = zz;
        }
    }
    __syncthreads();
    idx = t >= 0 ? sh.bc_i[1] : -1;
    z = sh.bc_f[0];
    __syncthreads();
}

}  // namespace sampling
}  // namespace ocrvl
