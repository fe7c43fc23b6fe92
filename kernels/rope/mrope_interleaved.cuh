// ERNIE-4.5-VL's 3D rotary (docs/ERNIE_4_5_VL_SPEC.md §3.10): interleaved pairs (elements 2i
// and 2i+1 of a head rotate together, GPT-J style), pair i turning by
//   angle_i = pos_axis(i) * inv_freq_i,   inv_freq_i = 1 / theta^(2i / head_dim)   (f32)
//   axis(i) = H for even i < section_hw, W for odd i < section_hw, T for i >= section_hw,
// applied in place to q and k: x'[2i] = x[2i] cos - x[2i+1] sin, x'[2i+1] = x[2i+1] cos +
// x[2i] sin, in f32 with one rounding (transformers rotates q and k upcast to f32).
//
// One work item per (token, head, 16-byte vector = 4 pairs), q heads before k heads (then v
// heads, copied unrotated, when a CacheSink also takes k and v into the paged cache); a thread
// loads its vector, computes its 4 angles with accurate sincosf (angles reach thousands of
// radians) and stores the rotated vector. Block: 256 threads over consecutive items; the
// neox kernel's shared cos/sin table per token (rope.cuh) is not used yet: this version is
// the reference layout, not tuned.
#pragma once
#include <stdint.h>

#include "rope/rope.cuh"

namespace ocrvl {
namespace rope {

template <typename T>
__global__ void __launch_bounds__(kThreads) mrope_interleaved_kernel(T* __restrict__ q, int64_t q_stride,
                                                                      T* __restrict__ k, int64_t k_stride,
                                                                      const int32_t* __restrict__ positions,
                                                                      int64_t pos_stride, int num_tokens,
                                                                      int num_q_heads, int num_kv_heads,
                                                                      int head_dim, int section_hw, float theta,
                                                                      CacheSink<T> sink) {
    const int vecs_per_head = head_dim / 8;
    const int kv_end = num_q_heads + num_kv_heads;
    const int64_t items_per_token = (int64_t)(kv_end + (sink.on() ? num_kv_heads : 0)) * vecs_per_head;
    const int64_t total = items_per_token * num_tokens;
    for (int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; item < total;
         item += (int64_t)gridDim.x * blockDim.x) {
        const int t = (int)(item / items_per_token);
        const int rest = (int)(item % items_per_token);
        const int head = rest / vecs_per_head;
        const int vec = rest % vecs_per_head;
        if (head >= kv_end) {  // a v vector: into the cache as it is
            T* cached = sink.row(sink.v_cache, t, head - kv_end, num_kv_heads, head_dim);
            if (cached != nullptr) {
                store_words<4>(cached + vec * 8,
                               load_words<4>(sink.v + (int64_t)t * sink.v_stride + (int64_t)(head - kv_end) * head_dim +
                                             vec * 8));
            }
            continue;
        }
        T* base = head < num_q_heads ? q + (int64_t)t * q_stride + (int64_t)head * head_dim
                                     : k + (int64_t)t * k_stride + (int64_t)(head - num_q_heads) * head_dim;
        T* p = base + vec * 8;
        const Words<4> in = load_words<4>(p);
        Words<4> out;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int i = vec * 4 + j;  // the pair
            const int axis = i < section_hw ? 1 + (i & 1) : 0;  // rows T, H, W
            const int32_t pos = positions[(int64_t)axis * pos_stride + t];
            const float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
            float s, c;
            sincosf((float)pos * inv_freq, &s, &c);
            const float2 x = Pack2<T>::unpack(in.w[j]);
            out.w[j] = Pack2<T>::pack(x.x * c - x.y * s, x.y * c + x.x * s);
        }
        store_words<4>(p, out);
        if (head >= num_q_heads && sink.on()) {
            T* cached = sink.row(sink.k_cache, t, head - num_q_heads, num_kv_heads, head_dim);
            if (cached != nullptr) store_words<4>(cached + vec * 8, out);
        }
    }
}

template <typename T>
int32_t launch_mrope_interleaved(T* q, int64_t q_stride, T* k, int64_t k_stride, const int32_t* positions,
                                 int64_t pos_stride, int64_t num_tokens, int num_q_heads, int num_kv_heads,
                                 int head_dim, int section_hw, float theta, cudaStream_t stream, CacheSink<T> sink) {
    if (sink.on() && (!aligned_to(sink.v, 16) || sink.v_stride % 8 != 0 || !aligned_to(sink.k_cache, 16) ||
                      !aligned_to(sink.v_cache, 16))) {
        return OCRVL_STATUS_UNSUPPORTED;
    }
    const int64_t total = num_tokens * (int64_t)(num_q_heads + num_kv_heads * (sink.on() ? 2 : 1)) * (head_dim / 8);
    int64_t blocks = (total + kThreads - 1) / kThreads;
    if (blocks > 65535LL * 16) blocks = 65535LL * 16;  // grid-stride beyond this
    mrope_interleaved_kernel<T><<<(unsigned)blocks, kThreads, 0, stream>>>(
        q, q_stride, k, k_stride, positions, pos_stride, (int)num_tokens, num_q_heads, num_kv_heads, head_dim,
        section_hw, theta, sink);
    return launch_status();
}

}  // namespace rope
}  // namespace ocrvl
