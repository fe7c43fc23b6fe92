// Row copies that build the LM input: the token-embedding gather (out[t] = table[ids[t]]) and
// the scatter of image features into placeholder rows (dst[dst_rows[i]] = src[i]).
//
// Pure copies of 16-byte vectors: one vector per thread, the rows' vectors flattened into
// blocks of 256 threads (row_launch, common/vec8.cuh). Each thread reads its row's index
// (the threads of a row read the same word: one broadcast transaction per warp), then copies its
// vector; no values are converted, so any two-byte type works.
//
// Bad ids in the gather write zeros and are reported through a device word (atomicCAS from 0
// to the id) rather than trapping: a trap would kill the context and every request in it,
// while the host can fail just the one request after the step. The check is one compare on a
// value already in a register, so valid ids cost nothing extra.
#pragma once
#include "common/vec8.cuh"

namespace ocrvl {

// Grid: (ceil(tokens * hidden / 8 / 256)), Block: (256).
template <typename T>
__global__ void embedding_gather_kernel(T* __restrict__ out,             // [tokens, hidden], row stride out_stride
                                        int64_t out_stride,
                                        const T* __restrict__ table,     // [vocab, hidden]
                                        const int32_t* __restrict__ ids, // [tokens]
                                        int32_t* error,                  // [1]
                                        int64_t vocab,
                                        uint32_t total_vecs,  // tokens * hidden / 8
                                        uint32_t hidden_vecs) {
    static_assert(sizeof(T) == 2, "rows of two-byte elements");
    int64_t t, v;
    if (!row_vec(total_vecs, hidden_vecs, t, v)) return;
    const int32_t id = ids[t];
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (id >= 0 && id < vocab) {
        val = *reinterpret_cast<const uint4*>(table + ((int64_t)id * hidden_vecs + v) * kVec);
    } else if (v == 0) {
        // One thread per bad token reports; the first report wins and later ones keep it.
        atomicCAS(error, 0, id);
    }
    *reinterpret_cast<uint4*>(out + t * out_stride + v * kVec) = val;
}

// Grid: (ceil(n_rows * hidden / 8 / 256)), Block: (256).
template <typename T>
__global__ void scatter_rows_kernel(T* __restrict__ dst,                  // [dst_tokens, hidden], row stride dst_stride
                                    int64_t dst_stride,
                                    const T* __restrict__ src,            // [n_rows, hidden], row stride src_stride
                                    int64_t src_stride,
                                    const int32_t* __restrict__ dst_rows, // [n_rows]
                                    int64_t dst_tokens,
                                    uint32_t total_vecs,  // n_rows * hidden / 8
                                    uint32_t hidden_vecs) {
    static_assert(sizeof(T) == 2, "rows of two-byte elements");
    int64_t i, v;
    if (!row_vec(total_vecs, hidden_vecs, i, v)) return;
    const int32_t r = dst_rows[i];
    if (r < 0 || r >= dst_tokens) return;  // the host validates; this only keeps writes in bounds
    *reinterpret_cast<uint4*>(dst + (int64_t)r * dst_stride + v * kVec) =
        *reinterpret_cast<const uint4*>(src + i * src_stride + v * kVec);
}

template <typename T>
int32_t launch_embedding_gather(T* out, int64_t out_stride, const T* table, const int32_t* ids, int32_t* error,
                                int64_t tokens, int64_t vocab, int64_t hidden, cudaStream_t stream) {
    const RowLaunch l = row_launch(tokens, hidden / kVec);
    if (!l.ok) return OCRVL_STATUS_UNSUPPORTED;
    embedding_gather_kernel<T><<<l.grid, l.block, 0, stream>>>(out, out_stride, table, ids, error, vocab,
                                                               l.total, l.vecs);
    return launch_status();
}

template <typename T>
int32_t launch_scatter_rows(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, const int32_t* dst_rows,
                            int64_t n_rows, int64_t dst_tokens, int64_t hidden, cudaStream_t stream) {
    const RowLaunch l = row_launch(n_rows, hidden / kVec);
    if (!l.ok) return OCRVL_STATUS_UNSUPPORTED;
    scatter_rows_kernel<T><<<l.grid, l.block, 0, stream>>>(dst, dst_stride, src, src_stride, dst_rows, dst_tokens,
                                                           l.total, l.vecs);
    return launch_status();
}

}  // namespace ocrvl
