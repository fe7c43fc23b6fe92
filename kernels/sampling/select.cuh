// Finding the allowed set and drawing from it, for one row (one 512-thread block).
//
// Definitions (kernels/include/sampling.h): token v is allowed iff
//   count{z_u > z_v} < top_k  and  mass{z_u > z_v} < top_p * S,
// masses being 2^-40 fixed-point weights exp(z - max), so both tests are exact integer
// comparisons and the allowed set is {z >= tau} for one value tau. The pieces:
//
// * Candidates from the first pass (kernel): each thread keeps its 4 largest elements (by the
//   top 16 bits of their keys, row.cuh), so the union of those lists holds every token whose
//   key lies above the 16-bit bucket of r_max, the largest per-thread 4th key. If the test
//   already fails for (count, mass) of that whole list, nothing below it is allowed and the
//   list alone decides: no second pass.
// * Otherwise a bound from the sorted 512 per-thread maxima: the k-th largest of them is <= the
//   k-th largest logit, and the first sorted thread maximum at which the maxima's own mass
//   reaches top_p * S bounds tau from below the same way. So every allowed token has
//   z >= t0 = max of the two, and interval_pass (row.cuh) gathers {key >= t0} into the shared
//   list (4096 entries) in the same pass that histograms it.
// * Exact class: sort the list (bitonic; the list, a few hundred entries, never the vocab),
//   find the first tie group whose count and mass above fail the test (list_resolve), and draw
//   once among the entries before it. When the list
//   overflows, narrow: pick the histogram bin holding the boundary (exact, integer counts and
//   masses), and re-pass with that bin as the interval (1024 bins of keys, so at most four
//   passes reach a single key), until the interval's tokens fit. Tokens above the interval are
//   all allowed and are drawn through their per-thread masses (row_draw).
// * Rejection class (FlashInfer's dual pivot): draw from {key >= low} in proportion to the
//   weights; accept if the draw is allowed; else pivot1 = the draw and pivot2 = the key of the
//   probability midpoint of pivot1 and `high`: if pivot2 is allowed the boundary is in
//   (pivot1, pivot2], so [low, high] = [pivot1, pivot2], else low = pivot2. Each round keeps
//   {key >= low} a superset of the allowed set, so an accepted draw has exactly the truncated
//   distribution. On the list (unsorted when its order is deterministic) a round is two
//   scans and a reduction over weights cached in registers; when the list overflowed, a round
//   is one pass over the row (check_pass). After kMaxRounds it falls back to the exact draw.
//   The first `low` is the list's lower key (not 0, as in FlashInfer): any superset of the
//   allowed set is a valid proposal, and this one is small.
// * Top-n alternatives: the n best by (z desc, index asc) are in the sorted list when the list
//   is complete; otherwise the same narrowing with the criterion "count above < n".
#pragma once
#include "sampling/row.cuh"

namespace ocrvl {
namespace sampling {

struct Scan {
    u64 excl, total;
};

// Entries per member when group G splits list[0, n): member r owns [r * span, (r + 1) * span).
template <typename G>
__device__ __forceinline__ int list_span(int n) {
    return (n + G::kSize - 1) / G::kSize;
}

// This member's mass of list entries with key >= lo.
template <typename G>
__device__ inline u64 list_member_mass(const Shared& sh, int n, uint32_t lo, float m) {
    const int span = list_span<G>(n), first = G::rank() * span;
    u64 s = 0;
    for (int i = 0; i < span; ++i) {
        const int p = first + i;
        if (p < n) {
            const float z = sh.list_z[p];
            if (fkey(z) >= lo) s += weight_fx(z, m);
        }
    }
    return s;
}

template <typename G>
__device__ inline Scan list_scan(Shared& sh, int n, uint32_t lo, float m) {
    Scan s;
    s.excl = G::exclusive_scan(list_member_mass<G>(sh, n, lo, m), s.total, sh);
    return s;
}

// The list entry (key >= lo) where the running mass, in list order, first exceeds r < total.
// Uses the Scan of the same (n, lo); every member gets the token (idx -1 if none).
template <typename G>
__device__ inline void list_pick(Shared& sh, int n, uint32_t lo, float m, u64 excl, u64 r, int& idx, float& z) {
    const int span = list_span<G>(n), first = G::rank() * span;
    u64 acc = excl;
    int cand = INT_MAX;
    for (int i = 0; i < span; ++i) {
        const int p = first + i;
        if (p < n) {
            const float zz = sh.list_z[p];
            if (fkey(zz) >= lo) {
                const u64 w = weight_fx(zz, m);
                if (w > 0 && r >= acc && r - acc < w) cand = p;
                acc += w;
            }
        }
    }
    const int p = G::allreduce(cand, MinOp{}, sh);
    idx = p < n ? sh.list_idx[p] : -1;
    z = p < n ? sh.list_z[p] : 0.0f;
}

// On a sorted list holding every token of its interval, with c0 / m0 the count and mass of the
// tokens above the interval: the number L >= 1 of allowed entries (a prefix, since the test is
// monotone and ties share a test at their group's first entry).
template <typename G>
__device__ inline int list_resolve(Shared& sh, int n, const Crit& crit, u64 c0, u64 m0, float m) {
    const Scan s = list_scan<G>(sh, n, 0u, m);
    const int span = list_span<G>(n), first = G::rank() * span;
    int first_bad = n;
    u64 acc = s.excl;
    for (int i = 0; i < span; ++i) {
        const int p = first + i;
        if (p < n) {
            const float z = sh.list_z[p];
            const bool group_start = p == 0 || fkey(sh.list_z[p - 1]) != fkey(z);
            if (group_start && first_bad == n && !crit.ok(c0 + (u64)p, m0 + acc)) first_bad = p;
            acc += weight_fx(z, m);
        }
    }
    const int L = G::allreduce(first_bad, MinOp{}, sh);
    return L > 0 ? L : 1;
}

// The exact draw on a sorted list that holds every token that can be allowed and every token
// above them: one inverse-transform draw over the allowed prefix.
template <typename G>
__device__ inline void list_exact_draw(Shared& sh, int n, const Crit& crit, float m, u64 bits, int& idx, float& z) {
    const int allowed = list_resolve<G>(sh, n, crit, 0, 0, m);
    const uint32_t lo = fkey(sh.list_z[allowed - 1]);
    const Scan s = list_scan<G>(sh, n, lo, m);
    list_pick<G>(sh, n, lo, m, s.excl, scale_random(bits, s.total), idx, z);
}

// Radix narrowing from `st`, whose histogram is in shared memory, until the interval's tokens
// are all in the list or the interval is a single key. Invariant, exact because counts and
// masses are integers: the interval's top token is allowed and every token below it is not.
// Returns whether it made a pass (the list then holds the new interval).
template <typename T, int VEC>
__device__ bool narrow(const Row<T, VEC>& row, Shared& sh, const Crit& crit, PassState& st, int cap, int& npass) {
    bool ran = false;
    while (!st.complete && st.klo != st.khi) {
        // Thread t owns bins kBins-1-2t and kBins-2-2t: a scan in thread order sums the bins above.
        const int b_hi = kBins - 1 - 2 * (int)threadIdx.x;
        const u64 c_hi = sh.hist_cnt[b_hi], c_lo = sh.hist_cnt[b_hi - 1];
        const u64 m_hi = sh.hist_mass[b_hi], m_lo = sh.hist_mass[b_hi - 1];
        u64 tot;
        const u64 ec = block_exclusive_scan(c_hi + c_lo, tot, sh);
        const u64 em = block_exclusive_scan(m_hi + m_lo, tot, sh);
        u64 c = st.cnt_above + ec, ms = st.mass_above + em;
        int cand = kBins;
        if (c_hi > 0 && crit.ok(c, ms)) cand = b_hi;
        c += c_hi;
        ms += m_hi;
        if (c_lo > 0 && crit.ok(c, ms)) cand = b_hi - 1;
        // The lowest non-empty bin whose top token is allowed holds the boundary.
        const int bstar = block_allreduce(cand, MinOp{}, sh);
        if (bstar >= kBins) break;  // unreachable while the invariant holds
        const u64 first = ((u64)(st.klo >> st.shift) + (u64)bstar) << st.shift;
        const u64 last = first + ((1ull << st.shift) - 1);
        const uint32_t nlo = first > st.klo ? (uint32_t)first : st.klo;
        const uint32_t nhi = last < st.khi ? (uint32_t)last : st.khi;
        st = interval_pass(row, sh, nlo, nhi, 0, cap, true, (npass++ & 1) != 0);
        ran = true;
    }
    return ran;
}

// The exact draw once narrowing is done: one inverse-transform draw over (tokens above the
// interval) + (allowed list entries), or over the single-key interval and everything above it.
template <typename T, int VEC>
__device__ void exact_draw(const Row<T, VEC>& row, Shared& sh, const PassState& st, const Crit& crit, u64 bits,
                           bool& sorted, int& idx, float& z) {
    const float m = row.m;
    if (st.complete) {
        const int n = st.n_list;
        if (!sorted) {
            sort_list<BlockGroup>(sh, n);
            sorted = true;
        }
        const int allowed = list_resolve<BlockGroup>(sh, n, crit, st.cnt_above, st.mass_above, m);
        const uint32_t lo = fkey(sh.list_z[allowed - 1]);
        const Scan s = list_scan<BlockGroup>(sh, n, lo, m);
        const u64 r = scale_random(bits, st.mass_above + s.total);
        if (r < st.mass_above) {
            row_draw(row, sh, st.th_above, false, r, st.khi + 1, idx, z);
        } else {
            list_pick<BlockGroup>(sh, n, lo, m, s.excl, r - st.mass_above, idx, z);
        }
    } else {
        // One key left: all its tokens are allowed (the invariant), like everything above.
        row_draw(row, sh, st.th_above + st.th_in, true, bits, st.klo, idx, z);
    }
}

struct Counts {
    u64 c1, c2, m1, m2;
};

// Rejection rounds on the complete list, by group G, in list order (which must not depend on
// scheduling). Each member keeps the keys and weights of its (at most kPerThread) entries in
// registers, so a round is two scans and a reduction with no exp and no shared-memory reads.
template <typename G>
struct ListSource {
    Shared& sh;
    int n, first;
    uint32_t key[kPerThread];  // 0 past the list: below every finite key
    u64 w[kPerThread];
    __device__ ListSource(Shared& s, int n_, float m) : sh(s), n(n_) {
        const int span = list_span<G>(n);
        first = G::rank() * span;
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
            const int p = first + i;
            const bool ok = i < span && p < n;
            const float z = ok ? sh.list_z[p] : -INFINITY;
            key[i] = ok ? fkey(z) : 0u;
            w[i] = ok ? weight_fx(z, m) : 0;
        }
    }
    __device__ void draw(uint32_t lo, u64 bits, int& idx, float& z) {
        u64 mass = 0;
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) mass += key[i] >= lo ? w[i] : 0;
        u64 total;
        u64 acc = G::exclusive_scan(mass, total, sh);
        const u64 r = scale_random(bits, total);
        int cand = INT_MAX;
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
            if (key[i] >= lo) {
                if (w[i] > 0 && r >= acc && r - acc < w[i] && cand == INT_MAX) cand = first + i;
                acc += w[i];
            }
        }
        const int p = G::allreduce(cand, MinOp{}, sh);
        idx = p < n ? sh.list_idx[p] : -1;
        z = p < n ? sh.list_z[p] : 0.0f;
    }
    __device__ Counts check(uint32_t k1, uint32_t k2) {
        u64 v[4] = {0, 0, 0, 0};  // count > k1, count > k2, mass > k1, mass > k2
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
            v[0] += key[i] > k1 ? 1 : 0;
            v[1] += key[i] > k2 ? 1 : 0;
            v[2] += key[i] > k1 ? w[i] : 0;
            v[3] += key[i] > k2 ? w[i] : 0;
        }
        G::allreduce_sum(v, sh);
        return Counts{v[0], v[1], v[2], v[3]};
    }
    __device__ void keep(bool) {}
};

// Rejection rounds over the whole row: one pass per round; the per-thread masses of the next
// proposal come out of the same pass.
template <typename T, int VEC>
struct RowSource {
    const Row<T, VEC>& row;
    Shared& sh;
    u64 th;  // this thread's mass of the current proposal
    u64 th1, th2;
    bool reverse;
    __device__ void draw(uint32_t lo, u64 bits, int& idx, float& z) { row_draw(row, sh, th, true, bits, lo, idx, z); }
    __device__ Counts check(uint32_t k1, uint32_t k2) {
        const Check c = check_pass(row, sh, k1, k2, reverse);
        reverse = !reverse;
        th1 = c.th1;
        th2 = c.th2;
        return Counts{c.c1, c.c2, c.m1, c.m2};
    }
    __device__ void keep(bool above_pivot2) { th = above_pivot2 ? th2 : th1; }
};

// FlashInfer's second pivot: the key of the probability midpoint of pivot1 and high, kept
// strictly above pivot1 and at most high (k1 < hi).
__device__ inline uint32_t pivot_midpoint(uint32_t k1, uint32_t hi, float m) {
    const float w1 = exp_neg(key_float(k1) - m), wh = exp_neg(key_float(hi) - m);
    uint32_t k2 = fkey(m + __logf(0.5f * (w1 + wh)));
    if (k2 <= k1) k2 = k1 + 1;
    if (k2 > hi) k2 = hi;
    return k2;
}

// Dual-pivot rejection sampling from {key >= lo}; true with the token once a draw is accepted.
template <typename Src>
__device__ bool rejection_rounds(Src& src, const Crit& crit, uint32_t lo, float m, const RowRng& rng, int& tok,
                                 float& tok_z) {
    uint32_t hi = fkey(m);  // the max token is always allowed
    for (int round = 0; round < kMaxRounds; ++round) {
        const uint4 rnd = rng.draw(kPurposeRound + round);
        int idx;
        float z;
        src.draw(lo, bits64(rnd.x, rnd.y), idx, z);
        if (idx < 0) return false;
        const uint32_t k1 = fkey(z);
        const uint32_t k2 = k1 < hi ? pivot_midpoint(k1, hi, m) : k1;
        const Counts c = src.check(k1, k2);
        if (crit.ok(c.c1, c.m1)) {
            tok = idx;
            tok_z = z;
            return true;
        }
        // The draw is not allowed, so nothing at or below it is.
        if (k2 > k1 && crit.ok(c.c2, c.m2)) {
            hi = k2;
            lo = k1 + 1;
            src.keep(false);
        } else {
            lo = k2 + 1;
            src.keep(k2 > k1);
        }
    }
    return false;
}

// Appends the tokens with exactly `key`, lowest indices first, until `need` are found (the
// list is then a superset of the lowest `need`); scalar loads, 512 indices per step.
template <typename T, int VEC>
__device__ int collect_lowest(const Row<T, VEC>& row, Shared& sh, uint32_t key, u64 need, int base) {
    if (threadIdx.x == 0) sh.n_list = base;
    __syncthreads();
    u64 found = 0;
    for (int e0 = 0; e0 < row.vocab; e0 += kThreads) {
        const int e = e0 + threadIdx.x;
        bool match = false;
        if (e < row.vocab) {
            const float z = row.load_one(e) * row.inv_t;
            if (fkey(z) == key) {
                match = true;
                const int pos = atomicAdd(&sh.n_list, 1);
                sh.list_z[pos] = z;
                sh.list_idx[pos] = e;
            }
        }
        found += (u64)__syncthreads_count(match);
        if (found >= need) break;
    }
    return base + (int)found;
}

// The top-n alternatives when the first pass's list did not hold them: narrows with the
// criterion "count above < n" (list cap reduced by kTopReserve for the tokens above the
// interval), then sorts. Returns the number of sorted entries (the first n are the answer).
template <typename T, int VEC>
__device__ int topn_select(const Row<T, VEC>& row, Shared& sh, int n, float t_n, int& npass) {
    uint32_t klo = fkey(t_n);
    if (klo < kMinFiniteKey) klo = kMinFiniteKey;
    const int cap = kCap - kTopReserve;
    PassState st = interval_pass(row, sh, klo, kMaxKey, 0, cap, true, (npass++ & 1) != 0);
    const Crit crit{(u64)n, ~0ull};
    narrow(row, sh, crit, st, cap, npass);
    int count = st.complete ? st.n_list : 0;
    if (st.cnt_above > 0) {  // fewer than n tokens, all in the top n
        const PassState above =
            interval_pass(row, sh, st.khi + 1, kMaxKey, count, kTopReserve, false, (npass++ & 1) != 0);
        count += above.n_list;
    }
    if (!st.complete) count = collect_lowest(row, sh, st.klo, (u64)n - st.cnt_above, count);
    sort_list<BlockGroup>(sh, count);
    return count;
}

}  // namespace sampling
}  // namespace ocrvl
