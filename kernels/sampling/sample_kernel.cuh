// The sampling kernel: one 512-thread block per row (semantics in kernels/include/sampling.h).
//
// Per row:
//   0. penalties in place (row.cuh, apply_penalties), only for rows that have them;
//   1. pass 1 over the row (HBM): NaN/+inf check, max and argmax (lowest index), the softmax
//      denominator S (online, per thread), and each thread's 4 largest elements (only for rows
//      that truncate or want top-n);
//   greedy rows stop here (one read of the logits);
//   untruncated rows draw in two stages without another pass: a thread by its share of S
//      (fixed point), then one warp re-walks that thread's ~200 elements (row_draw's machinery);
//   truncated rows (and rows asking for top-n) gather the union of the per-thread top-4 lists
//      (re-reading those ~250 values): it holds every token above r_max's bucket (r_max: the
//      largest per-thread 4th key), and when the allowed-set test already fails for all of it,
//      nothing below can be allowed, so the list is the whole problem and there is NO second
//      pass (top_k <= ~80, or a top-p set of fewer tokens: nearly always). Both classes then
//      work on the list in shared memory, by warp 0 alone when it holds at most 256 entries
//      (no block barriers). Otherwise a second pass gathers the tokens above a bound from the
//      sorted thread maxima, and rows whose candidates still overflow narrow further
//      (select.cuh).
//
// Bytes: a row reads its logits once in the common cases (greedy, untruncated, small top-k or
// top-p sets): at batch 256 x 103424 f32, 106 MB, 36 us at 2.96 TB/s. The design reason: the
// 404 KB row cannot stay in shared memory, and at batch 256 the 106 MB of logits are twice the
// 50 MB L2, so every pass after the first costs most of an HBM read; FlashInfer-style rounds
// from low = 0 would take 5-10 such passes with top_k = 50 on flat distributions. Keeping 4
// keys per thread in registers costs a 7-instruction min/max network per element, which the
// memory-bound pass mostly hides. Rows that need the second pass read the row twice (it runs
// backwards, starting on the tail that pass 1 left in L2); overflowing rows (large top_k, flat
// top-p sets, massive ties) take one more pass per rejection round or per radix digit.
// Measured on the H100 (benches/sampling.rs, top_k 50, top_p 0.9, temperature 0.7): batch 256
// in 70 us (exact) and 72 us (rejection), greedy in 45 us (80% of copy bandwidth). Batches
// whose every row is greedy (no penalties, no top-n) now go to greedy.cuh instead.
//
// Occupancy: 512 threads, ~45 KB static shared memory and at most 64 registers per thread, so
// two blocks per SM: batch 256 runs in one wave on 132 SMs. A single row is streamed by one
// block (~32 KB of loads in flight), so small batches are latency-bound, not bandwidth-bound.
#pragma once
#include "common/check.cuh"
#include "sampling/select.cuh"

namespace ocrvl {
namespace sampling {

struct KernelArgs {
    void* logits;  // [batch, vocab], row stride `stride`
    int64_t stride;
    int vocab;
    const float* temperature;  // [batch]
    const int32_t* top_k;      // [batch]
    const float* top_p;        // [batch]
    const uint32_t* seed;      // [batch, 2]
    const uint32_t* step;      // [batch, 2]
    const float* rep;          // [batch] or null (no penalties)
    const float* freq;         // [batch] or null
    const float* pres;         // [batch] or null
    const int32_t* history;    // [history_capacity]
    const int32_t* cu_history; // [batch + 1] or null
    int64_t history_capacity;
    int32_t* ws_keys;          // [2 * history_capacity]
    int32_t* ws_counts;        // [2 * history_capacity]
    int32_t* token;            // [batch]
    float* logprob;            // [batch]
    int32_t* status;           // [batch]
    int num_top;
    int32_t* top_ids;          // [batch, num_top]
    float* top_logprobs;       // [batch, num_top]
    bool rejection;
};

__device__ inline void write_invalid(const KernelArgs& a, int b, int status) {
    if (threadIdx.x == 0) {
        a.token[b] = -1;
        a.logprob[b] = -INFINITY;
        a.status[b] = status;
    }
    if ((int)threadIdx.x < a.num_top) {
        a.top_ids[(int64_t)b * a.num_top + threadIdx.x] = -1;
        a.top_logprobs[(int64_t)b * a.num_top + threadIdx.x] = -INFINITY;
    }
}

// Untruncated draw: a thread in proportion to its share s_t * exp(m_t - m) of S, then a token
// inside that thread's elements in proportion to their weights (two random words each).
template <typename T, int VEC>
__device__ void full_draw(const Row<T, VEC>& row, Shared& sh, const Stats& st1, const RowRng& rng, int& tok,
                          float& tok_z) {
    const float q = st1.m_t > -INFINITY ? st1.s_t * exp_neg(st1.m_t - row.m) : 0.0f;
    const u64 qf = __float2ull_rz(q * kFxScale);
    const uint4 rnd = rng.draw(kPurposeFull);
    if (threadIdx.x == 0) sh.bc_i[0] = -1;
    u64 total;
    const u64 ex = block_exclusive_scan(qf, total, sh);  // total >= 2^40: the max's thread has q >= 1
    const u64 r = scale_random(bits64(rnd.x, rnd.y), total);
    if (qf > 0 && r >= ex && r - ex < qf) {
        sh.bc_i[0] = threadIdx.x;
        sh.bc_i[1] = st1.am_t;  // used if all of the thread's weights round to 0
        sh.bc_f[0] = st1.m_t;
    }
    __syncthreads();
    const int t = sh.bc_i[0];
    if (t >= 0 && warp_id() == 0) {
        const u64 tm = warp_thread_mass(row, t, kMinFiniteKey);
        int i = -1;
        float zz = 0.0f;
        if (tm > 0) warp_find(row, t, kMinFiniteKey, scale_random(bits64(rnd.z, rnd.w), tm), i, zz);
        if (lane_id() == 0 && i >= 0) {
            sh.bc_i[1] = i;
            sh.bc_f[0] = zz;
        }
    }
    __syncthreads();
    if (t >= 0) {
        tok = sh.bc_i[1];
        tok_z = sh.bc_f[0];
    }
    __syncthreads();
}

// Draws from the complete list (for a truncated row) and leaves it sorted when top-n needs
// it: rejection rounds in list order (sorted first only if `ordered` is false, i.e. the list
// was gathered with atomics), then the exact draw after kMaxRounds; or the exact draw, which
// sorts. Run by group G (warp 0 for short lists); member 0 leaves the token in sh.bc_i[2] /
// sh.bc_f[1].
template <typename G>
__device__ void list_phase(Shared& sh, int n, bool trunc, bool rejection, bool ordered, bool want_sorted,
                           const Crit& crit, uint32_t lo, float m, const RowRng& rng) {
    bool sorted = false;
    int idx = -1;
    float z = 0.0f;
    if (trunc) {
        bool done = false;
        if (rejection) {
            if (!ordered) {
                sort_list<G>(sh, n);
                sorted = true;
            }
            ListSource<G> src(sh, n, m);
            done = rejection_rounds(src, crit, lo, m, rng, idx, z);
        }
        if (!done) {
            if (!sorted) {
                sort_list<G>(sh, n);
                sorted = true;
            }
            const uint4 rnd = rng.draw(rejection ? kPurposeFallback : kPurposeExact);
            list_exact_draw<G>(sh, n, crit, m, bits64(rnd.x, rnd.y), idx, z);
        }
    }
    if (want_sorted && !sorted) sort_list<G>(sh, n);
    if (G::rank() == 0) {
        sh.bc_i[2] = idx;
        sh.bc_f[1] = z;
    }
}

// Grid: (batch), Block: (kThreads). One block per row.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads, 2) sample_kernel(const KernelArgs a) {
    __shared__ Shared sh;
    const int b = blockIdx.x;
    const int tid = threadIdx.x;
    const float temp = a.temperature[b];
    const int top_k = a.top_k[b];
    const float top_p = a.top_p[b];
    const bool has_pen = a.cu_history != nullptr;
    const float rep = has_pen ? a.rep[b] : 1.0f;
    const float freq = has_pen ? a.freq[b] : 0.0f;
    const float pres = has_pen ? a.pres[b] : 0.0f;
    int status = 0;
    if (!(temp >= 0.0f && temp <= FLT_MAX) || top_k < 0 || !(top_p > 0.0f) || !(rep > 0.0f && rep <= FLT_MAX) ||
        !(fabsf(freq) <= FLT_MAX) || !(fabsf(pres) <= FLT_MAX)) {
        status = 3;
    }
    const bool greedy = temp < kMinTemperature || top_k == 1;
    Row<T, VEC> row;
    row.ptr = static_cast<T*>(a.logits) + (int64_t)b * a.stride;
    row.vocab = a.vocab;
    row.nvec = a.vocab / VEC;
    row.inv_t = temp < kMinTemperature ? 1.0f : 1.0f / temp;
    row.m = 0.0f;
    // `status` depends only on this row's parameters, so every branch below is block-uniform.
    if (status == 0 && has_pen &&
        !apply_penalties(row, sh, a.history, a.cu_history, a.history_capacity, a.ws_keys, a.ws_counts, rep, freq,
                         pres)) {
        status = 2;
    }
    if (status != 0) {
        write_invalid(a, b, status);
        return;
    }
    const bool k_on = top_k > 0 && top_k < a.vocab;
    const bool p_on = top_p < 1.0f;
    const bool trunc = !greedy && (k_on || p_on);
    const int n_top = a.num_top;
    const Stats st1 = (trunc || n_top > 0) ? pass_stats<true>(row) : pass_stats<false>(row);
    // One reduction for the max with its lowest index (packed: key above, inverted index
    // below), the largest 4th-value of the per-thread lists, and the NaN/+inf flag.
    u64 red[3] = {((u64)fkey(st1.m_t) << 32) | (u64)(0xFFFFFFFFu - (uint32_t)st1.am_t), (u64)st1.top[kTop - 1],
                  (u64)st1.bad};
    block_allreduce_array(red, MaxOp{}, sh);
    const float m = key_float((uint32_t)(red[0] >> 32));
    const int am = (int)(0xFFFFFFFFu - (uint32_t)red[0]);
    if (red[2] != 0 || !(m > -INFINITY)) {
        write_invalid(a, b, 1);
        return;
    }
    row.m = m;
    const float s_sum = block_allreduce(st1.m_t > -INFINITY ? st1.s_t * exp_neg(st1.m_t - m) : 0.0f, SumOp{}, sh);
    const float log_s = logf(s_sum);
    const RowRng rng{make_uint2(a.seed[2 * b], a.seed[2 * b + 1]), a.step[2 * b], a.step[2 * b + 1]};

    Crit crit;
    crit.k = k_on ? (u64)top_k : 0;
    crit.p_fx = ~0ull;
    if (p_on) {
        const double t = (double)top_p * (double)s_sum * (double)kFxScale;
        crit.p_fx = t < 1.0 ? 1ull : (u64)t;  // the max token (mass above 0) stays allowed
    }
    int tok = am;
    float tok_z = m;
    int npass = 1;  // passes made so far, for the direction of the next

    if (!greedy && !trunc) full_draw(row, sh, st1, rng, tok, tok_z);

    PassState st{};
    bool fast = false;  // the list holds every token that sampling and top-n can need
    bool second_pass = false;
    float tn = -INFINITY;
    if (trunc || n_top > 0) {
        // Every token whose key lies above r_max's 16-bit bucket is in the per-thread lists:
        // gather those, with their exact values. The list is enough when the test fails for
        // the whole of it (so nothing below it is allowed) and it holds n_top tokens; a
        // bucket at or below -inf means the lists hold every finite token.
        const u64 lo64 = ((red[1] >> 16) + 1) << 16;
        const bool all_in = lo64 <= kMinFiniteKey;
        const uint32_t klo = all_in ? kMinFiniteKey : (uint32_t)lo64;
        float zc[kTop];
        int ic[kTop];
        int c = 0;
#pragma unroll
        for (int j = 0; j < kTop; ++j) {  // the list is descending, so the kept ones are a prefix
            ic[j] = -1;
            if (st1.top[j] >= klo) {
                const int pos = (int)(st1.top[j] & 0xFFFFu);
                ic[j] = (tid + (pos / VEC) * kThreads) * VEC + pos % VEC;
                ++c;
            }
        }
        u64 mass = 0;
#pragma unroll
        for (int j = 0; j < kTop; ++j) {
            zc[j] = ic[j] >= 0 ? row.load_one(ic[j]) * row.inv_t : 0.0f;
            if (ic[j] >= 0) mass += weight_fx(zc[j], m);
        }
        // Count and mass in one scan: the mass (< 2048 * 2^40) stays below bit 52.
        u64 total;
        const int pos = (int)(block_exclusive_scan(((u64)c << 52) | mass, total, sh) >> 52);
#pragma unroll
        for (int j = 0; j < kTop; ++j) {
            if (j < c) {
                sh.list_z[pos + j] = zc[j];
                sh.list_idx[pos + j] = ic[j];
            }
        }
        __syncthreads();
        const int n_c = (int)(total >> 52);
        const u64 m_in = total & ((1ull << 52) - 1);
        if ((!trunc || all_in || !crit.ok((u64)n_c, m_in)) && (n_top == 0 || all_in || n_c >= n_top)) {
            fast = true;
            st.klo = klo;
            st.khi = kMaxKey;
            st.cnt_in = (u64)n_c;
            st.mass_in = m_in;
            st.n_list = n_c;
            st.complete = true;
        } else {
            // Bounds from the sorted thread maxima (select.cuh), then a second pass.
            sh.list_z[tid] = st1.m_t;
            sh.list_idx[tid] = tid;
            sort_list<BlockGroup>(sh, kThreads);
            float t0 = -INFINITY;
            if (trunc) {
                float tk = -INFINITY, tp = -INFINITY;
                if (k_on && top_k <= kThreads) tk = sh.list_z[top_k - 1];
                if (p_on) {
                    const u64 w = weight_fx(sh.list_z[tid], m);
                    u64 tot;
                    const u64 ex = block_exclusive_scan(w, tot, sh);
                    const int cand = (ex < crit.p_fx && ex + w >= crit.p_fx) ? tid : kThreads;
                    const int j = block_allreduce(cand, MinOp{}, sh);
                    if (j < kThreads) tp = sh.list_z[j];
                }
                t0 = fmaxf(tk, tp);
            }
            if (n_top > 0) tn = sh.list_z[n_top - 1];
            __syncthreads();  // the list is overwritten next
            float glo = trunc ? t0 : INFINITY;
            if (n_top > 0) glo = fminf(glo, tn);
            uint32_t klo = fkey(glo);
            if (klo < kMinFiniteKey) klo = kMinFiniteKey;
            st = interval_pass(row, sh, klo, kMaxKey, 0, kCap, true, (npass++ & 1) != 0);
            second_pass = true;
            fast = st.complete;
        }
        if (st.complete) {
            // Everything from here works on the list (no tokens above it).
            // The list from the top-4 lists is in thread order; one from interval_pass is in
            // the order of shared-memory atomics.
            const bool ordered = !second_pass;
            if (st.n_list <= kWarpList) {
                if (warp_id() == 0) {
                    list_phase<WarpGroup>(sh, st.n_list, trunc, a.rejection, ordered, n_top > 0, crit, st.klo, m,
                                          rng);
                }
            } else {
                list_phase<BlockGroup>(sh, st.n_list, trunc, a.rejection, ordered, n_top > 0, crit, st.klo, m, rng);
            }
            __syncthreads();
            if (trunc && sh.bc_i[2] >= 0) {
                tok = sh.bc_i[2];
                tok_z = sh.bc_f[1];
            }
        } else if (trunc) {
            // The list overflowed: rejection rounds over the row, then (or for the exact class)
            // radix narrowing; row rounds leave the pass's list and histogram untouched.
            bool done = false;
            if (a.rejection) {
                RowSource<T, VEC> src{row, sh, st.th_in + st.th_above, 0, 0, (npass & 1) != 0};
                done = rejection_rounds(src, crit, st.klo, m, rng, tok, tok_z);
            }
            if (!done) {
                narrow(row, sh, crit, st, kCap, npass);
                const uint4 rnd = rng.draw(a.rejection ? kPurposeFallback : kPurposeExact);
                bool sorted = false;
                int idx;
                float z;
                exact_draw(row, sh, st, crit, bits64(rnd.x, rnd.y), sorted, idx, z);
                if (idx >= 0) {
                    tok = idx;
                    tok_z = z;
                }
            }
        }
    }

    if (n_top > 0) {
        // With `fast`, the list is sorted and holds the top n; otherwise narrow for them.
        const int count = fast ? st.n_list : topn_select(row, sh, n_top, tn, npass);
        if (tid < n_top) {
            const bool ok = tid < count;
            a.top_ids[(int64_t)b * n_top + tid] = ok ? sh.list_idx[tid] : -1;
            a.top_logprobs[(int64_t)b * n_top + tid] = ok ? (sh.list_z[tid] - m) - log_s : -INFINITY;
        }
    }
    if (tid == 0) {
        a.token[b] = tok;
        a.logprob[b] = (tok_z - m) - log_s;
        a.status[b] = 0;
    }
}

template <typename T, int VEC>
int32_t launch_sampling(const KernelArgs& args, int batch, cudaStream_t stream) {
    sample_kernel<T, VEC><<<batch, kThreads, 0, stream>>>(args);
    return launch_status();
}

}  // namespace sampling
}  // namespace ocrvl
