// The sampling kernel: one 512-thread block per row (semantics in kernels/include/sampling.h).
//
// Per row:
//   0. penalties in place (row.cuh, apply_penalties), only for rows that have them;
//   1. pass 1 over the row (HBM): NaN/+inf check, max and argmax (lowest index), the softmax
//      denominator S (online, per thread), and each thread's max;
//   greedy rows stop here (one read of the logits);
//   untruncated rows draw in two stages without another pass: a thread by its share of S
//      (fixed point), then one warp re-walks that thread's ~200 elements (row_draw's machinery);
//   truncated rows (and rows asking for top-n) bound the allowed set from the sorted 512 thread
//      maxima and gather it in pass 2 (select.cuh); the classes then differ as described there.
//
// Bytes: with top_k <= 512 (or a top-p set that the thread maxima bound tightly) a truncated row
// reads its logits twice: at batch 256 x 103424 f32 that is 2 x 106 MB, 72 us at 2.96 TB/s if
// both came from HBM. Pass 2 runs backwards so that it starts on the tail of the row that pass 1
// left in the 50 MB L2, which brings its HBM traffic to roughly (106 - 50) MB: about 55 us in
// all. The design reason: a rejection round over the whole row costs a full pass (the row is 404
// KB, far over shared memory), and FlashInfer-style rounds from low = 0 take 5-10 rounds on flat
// distributions with top_k = 50; gathering the candidates once makes every round a shared-memory
// scan instead. Rows whose candidates overflow the 4096-entry list (large top_k, flat top-p
// sets, massive ties) stay correct and take one pass per rejection round or per radix digit.
//
// Occupancy: 512 threads, ~45 KB static shared memory and at most 64 registers per thread, so
// two blocks per SM: batch 256 runs in one wave on 132 SMs.
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
    const float q = st1.m_t > -INFINITY ? st1.s_t * __expf(st1.m_t - row.m) : 0.0f;
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
    Stats st1{-INFINITY, 0.0f, INT_MAX, false};
    float m = -INFINITY;
    if (status == 0) {
        st1 = pass_stats(row);
        const bool bad = __syncthreads_or(st1.bad) != 0;
        m = block_allreduce(st1.m_t, MaxOp{}, sh);
        if (bad || !(m > -INFINITY)) status = 1;
    }
    if (status != 0) {
        write_invalid(a, b, status);
        return;
    }
    row.m = m;
    const int am = block_allreduce(st1.m_t == m ? st1.am_t : INT_MAX, MinOp{}, sh);
    const float s_sum = block_allreduce(st1.m_t > -INFINITY ? st1.s_t * __expf(st1.m_t - m) : 0.0f, SumOp{}, sh);
    const float log_s = logf(s_sum);
    const RowRng rng{make_uint2(a.seed[2 * b], a.seed[2 * b + 1]), a.step[2 * b], a.step[2 * b + 1]};

    const bool k_on = top_k > 0 && top_k < a.vocab;
    const bool p_on = top_p < 1.0f;
    const bool trunc = !greedy && (k_on || p_on);
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
    const int n_top = a.num_top;

    if (!greedy && !trunc) full_draw(row, sh, st1, rng, tok, tok_z);

    // Lower bounds from the sorted thread maxima (select.cuh).
    float t0 = -INFINITY, tn = -INFINITY;
    if (trunc || n_top > 0) {
        sh.list_z[tid] = st1.m_t;
        sh.list_idx[tid] = tid;
        sort_list(sh, kThreads);
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
    }

    PassState st{};
    bool sorted = false;
    bool fast = false;  // the list holds every token >= the bounds of both sampling and top-n
    if (trunc || n_top > 0) {
        float glo = trunc ? t0 : INFINITY;
        if (n_top > 0) glo = fminf(glo, tn);
        uint32_t klo = fkey(glo);
        if (klo < kMinFiniteKey) klo = kMinFiniteKey;
        st = interval_pass(row, sh, klo, kMaxKey, 0, kCap, true, (npass++ & 1) != 0);
        fast = st.complete;
    }

    if (trunc) {
        bool done = false;
        if (a.rejection) {
            if (st.complete) {
                sort_list(sh, st.n_list);
                sorted = true;
                ListSource src{sh, st.n_list, m};
                done = rejection_rounds(src, crit, st.klo, m, rng, tok, tok_z);
            } else {
                RowSource<T, VEC> src{row, sh, st.th_in + st.th_above, 0, 0, (npass & 1) != 0};
                done = rejection_rounds(src, crit, st.klo, m, rng, tok, tok_z);
            }
        }
        if (!done) {
            // The exact class, or the rejection class after kMaxRounds; row rounds leave the
            // list and histogram of pass 2 untouched, so narrowing resumes from them.
            if (narrow(row, sh, crit, st, kCap, npass)) {
                sorted = false;
                fast = false;
            }
            const uint4 rnd = rng.draw(a.rejection ? kPurposeFallback : kPurposeExact);
            int idx;
            float z;
            exact_draw(row, sh, st, crit, bits64(rnd.x, rnd.y), sorted, idx, z);
            if (idx >= 0) {
                tok = idx;
                tok_z = z;
            }
        }
    }

    if (n_top > 0) {
        int count;
        if (fast) {
            if (!sorted) sort_list(sh, st.n_list);
            count = st.n_list;
        } else {
            count = topn_select(row, sh, n_top, tn, npass);
        }
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
