// Rotate-half (neox) rope applied in place to q and k in one launch; the position scheme is a
// policy (mrope.cuh, vision_rope.cuh) that says, per token and pair j in [0, head_dim/2), which
// angle the pair turns by.
//
// Algorithm, per block of `tokens_per_block` consecutive tokens:
//   1. inv_freq[i] for the policy's frequencies, into shared memory;
//   2. cos and sin of every (token, pair) angle of the block, into shared memory: each angle is
//      computed once and shared by all q and k heads of its token (18 heads for the text model,
//      32 for the vision tower), instead of once per head;
//   3. one work item per (token, head, chunk of VEC pairs), q heads before k heads: load the
//      chunk's VEC elements x_j and their partners x_{j+h} (two vectors of VEC * 2 bytes),
//      rotate in f32, round once to the storage type, store both. kUnroll items are loaded
//      before any is rotated, so each thread keeps 2 * kUnroll vector loads in flight.
// Constraints: HD even, (HD / 2) % VEC == 0; q, k and their token strides aligned to
// VEC * 2 bytes (checked by the launchers); q and k do not overlap.
// With a CacheSink (text decoders), the same launch also writes the rotated k rows and the v
// rows into the paged KV cache: v heads are a third class of work items, copied unrotated.
// That replaces the separate reshape_and_cache launch of every decoder layer; the cache gets
// the bits the two launches would have written.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/check.cuh"

namespace ocrvl {
namespace rope {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int kMaxTokensPerBlock = 16;

// Tokens per block: about 640 work items (2.5 per thread), i.e. 4 text tokens (144 items each)
// or 2 vision tokens (288 items each). Measured on the H100 (16384 text tokens; 5040 vision
// tokens): 4 text tokens per block run at 84% of the copy rate against 81% for 16 and 74% for
// 32; 2 vision tokens at 72% against 66% for 4 and 59% for 16. A flat split into exactly 1024
// items per block (one full round of kUnroll per thread) was slower for both (77%, 69%).
inline int tokens_per_block(int items_per_token) {
    const int t = 640 / items_per_token;
    return t < 1 ? 1 : (t > kMaxTokensPerBlock ? kMaxTokensPerBlock : t);
}

// Calls f(T{}) for the 16-bit float types, or returns OCRVL_STATUS_UNSUPPORTED.
template <typename F>
inline int32_t dispatch_16bit(OcrvlDType dtype, F&& f) {
    switch (dtype) {
        case OCRVL_DTYPE_BF16: return f(__nv_bfloat16{});
        case OCRVL_DTYPE_F16: return f(__half{});
        default: return OCRVL_STATUS_UNSUPPORTED;
    }
}

inline bool aligned_to(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// W 32-bit words: 2 * W 16-bit elements, element 2w in the low half of word w.
template <int W>
struct Words {
    uint32_t w[W];
};

template <int W> __device__ __forceinline__ Words<W> load_words(const void* p);
template <> __device__ __forceinline__ Words<4> load_words<4>(const void* p) {
    uint4 v = *reinterpret_cast<const uint4*>(p);
    return Words<4>{{v.x, v.y, v.z, v.w}};
}
template <> __device__ __forceinline__ Words<2> load_words<2>(const void* p) {
    uint2 v = *reinterpret_cast<const uint2*>(p);
    return Words<2>{{v.x, v.y}};
}

template <int W> __device__ __forceinline__ void store_words(void* p, const Words<W>& v);
template <> __device__ __forceinline__ void store_words<4>(void* p, const Words<4>& v) {
    *reinterpret_cast<uint4*>(p) = make_uint4(v.w[0], v.w[1], v.w[2], v.w[3]);
}
template <> __device__ __forceinline__ void store_words<2>(void* p, const Words<2>& v) {
    *reinterpret_cast<uint2*>(p) = make_uint2(v.w[0], v.w[1]);
}

// Two 16-bit floats in one word <-> two f32.
template <typename T> struct Pack2;
template <> struct Pack2<__nv_bfloat16> {
    static __device__ __forceinline__ float2 unpack(uint32_t w) {
        return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
};
template <> struct Pack2<__half> {
    static __device__ __forceinline__ float2 unpack(uint32_t w) {
        return __half22float2(*reinterpret_cast<__half2*>(&w));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
};

// Where the rotated k rows and the v rows also go: the paged KV cache (layout in
// kernels/include/kv_cache.h). k_cache == nullptr: none (plain rope).
template <typename T>
struct CacheSink {
    T* k_cache;                   // [num_blocks, num_kv_heads, block_size, head_dim]
    T* v_cache;                   // same
    const T* v;                   // [num_tokens, num_kv_heads, head_dim], token stride v_stride
    int64_t v_stride;
    const int32_t* slot_mapping;  // [num_tokens]; slots < 0 or >= num_slots are not written
    int block_size_log2;
    int64_t num_slots;

    // Host and device: the launchers ask too. (A __device__-only member called from host code
    // compiles without a word and its host stub calls exit(1): round 11's first GPU run.)
    __host__ __device__ __forceinline__ bool on() const { return k_cache != nullptr; }

    // The cache row of (token, kv head), or nullptr when the token's slot is not written.
    __device__ __forceinline__ T* row(T* cache, int64_t tok, int h, int num_kv_heads, int head_dim) const {
        const int64_t slot = slot_mapping[tok];
        if (slot < 0 || slot >= num_slots) return nullptr;
        const int64_t block = slot >> block_size_log2;
        const int64_t offset = slot & ((1 << block_size_log2) - 1);
        return cache + ((((block * num_kv_heads + h) << block_size_log2) + offset) * head_dim);
    }
};

// inv_freq[i] = 1 / theta^(2i / rot_dim) with transformers' f32 steps: the exponent is the f32
// quotient (float)(2i) / (float)rot_dim, theta^e is rounded to f32 (computed in f64 and
// rounded once, standing in for the host's powf, which is within an ulp; CUDA's powf may be
// off by more), and the reciprocal is an f32 division.
__device__ __forceinline__ float inv_freq_f32(int i, int rot_dim, float theta) {
    float e = (float)(2 * i) / (float)rot_dim;
    float p = (float)pow((double)theta, (double)e);
    return 1.0f / p;
}

// Grid: (ceil(num_tokens / tokens_per_block)), Block: (kThreads).
// Dynamic shared memory: (Angles::kFreqs + 2 * tokens_per_block * HD / 2) floats.
template <typename T, int HD, int VEC, typename Angles>
__global__ void __launch_bounds__(kThreads) rotate_half_kernel(T* __restrict__ q,  // [num_tokens, num_q_heads, HD]
                                                               int64_t q_stride,
                                                               T* __restrict__ k,  // [num_tokens, num_kv_heads, HD]
                                                               int64_t k_stride, int num_tokens, int num_q_heads,
                                                               int num_kv_heads, int tokens_per_block, float theta,
                                                               Angles angles, CacheSink<T> sink) {
    constexpr int kHalf = HD / 2;
    constexpr int kChunks = kHalf / VEC;  // work items per head
    constexpr int kWords = VEC / 2;
    static_assert(kHalf % VEC == 0 && VEC % 2 == 0, "a chunk is whole words inside one half");

    extern __shared__ float smem[];
    float* inv_freq = smem;                           // [Angles::kFreqs]
    float* cos_t = smem + Angles::kFreqs;             // [tokens_per_block, kHalf]
    float* sin_t = cos_t + tokens_per_block * kHalf;  // [tokens_per_block, kHalf]

    const int tok0 = blockIdx.x * tokens_per_block;
    const int ntok = min(tokens_per_block, num_tokens - tok0);

    for (int i = threadIdx.x; i < Angles::kFreqs; i += kThreads) inv_freq[i] = angles.inv_freq(i, theta);
    __syncthreads();
    for (int i = threadIdx.x; i < ntok * kHalf; i += kThreads) {
        const int t = i / kHalf;
        const int j = i - t * kHalf;
        float s, c;
        // Accurate sincosf: text angles reach ~16k rad.
        sincosf(angles.angle(tok0 + t, j, inv_freq), &s, &c);
        cos_t[i] = c;
        sin_t[i] = s;
    }
    __syncthreads();

    const int kv_end = num_q_heads + num_kv_heads;
    const int heads = kv_end + (sink.on() ? num_kv_heads : 0);  // q, k, then v (cache only)
    const int items = ntok * heads * kChunks;
    for (int i0 = threadIdx.x; i0 < items; i0 += kThreads * kUnroll) {
        T* ptr[kUnroll];     // where the item is read (and, if rotated, written back)
        T* cached[kUnroll];  // the item's place in the cache, or nullptr
        int tab[kUnroll];    // the item's first pair in the cos/sin tables; -1: a v item
        Words<kWords> lo[kUnroll], hi[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int i = i0 + u * kThreads;
            ptr[u] = nullptr;
            cached[u] = nullptr;
            if (i < items) {
                const int c = i % kChunks;
                const int r = i / kChunks;
                const int h = r % heads;
                const int t = r / heads;
                const int64_t tok = tok0 + t;
                T* head;
                tab[u] = t * kHalf + c * VEC;
                if (h < num_q_heads) {
                    head = q + tok * q_stride + (int64_t)h * HD;
                } else if (h < kv_end) {
                    head = k + tok * k_stride + (int64_t)(h - num_q_heads) * HD;
                    if (sink.on()) cached[u] = sink.row(sink.k_cache, tok, h - num_q_heads, num_kv_heads, HD);
                } else {
                    head = const_cast<T*>(sink.v) + tok * sink.v_stride + (int64_t)(h - kv_end) * HD;
                    cached[u] = sink.row(sink.v_cache, tok, h - kv_end, num_kv_heads, HD);
                    tab[u] = -1;
                }
                if (cached[u] != nullptr) cached[u] += c * VEC;
                ptr[u] = head + c * VEC;
                lo[u] = load_words<kWords>(ptr[u]);
                hi[u] = load_words<kWords>(ptr[u] + kHalf);
            }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            if (ptr[u] == nullptr) continue;
            if (tab[u] >= 0) {
#pragma unroll
                for (int w = 0; w < kWords; ++w) {
                    const float2 a = Pack2<T>::unpack(lo[u].w[w]);  // x_j, x_{j+1}
                    const float2 b = Pack2<T>::unpack(hi[u].w[w]);  // x_{j+h}, x_{j+1+h}
                    const float2 c = *reinterpret_cast<const float2*>(cos_t + tab[u] + 2 * w);
                    const float2 s = *reinterpret_cast<const float2*>(sin_t + tab[u] + 2 * w);
                    lo[u].w[w] = Pack2<T>::pack(a.x * c.x - b.x * s.x, a.y * c.y - b.y * s.y);
                    hi[u].w[w] = Pack2<T>::pack(b.x * c.x + a.x * s.x, b.y * c.y + a.y * s.y);
                }
                store_words<kWords>(ptr[u], lo[u]);
                store_words<kWords>(ptr[u] + kHalf, hi[u]);
            }
            if (cached[u] != nullptr) {
                store_words<kWords>(cached[u], lo[u]);
                store_words<kWords>(cached[u] + kHalf, hi[u]);
            }
        }
    }
}

// Checks alignment for VEC, then launches rotate_half_kernel on `stream`.
template <typename T, int HD, int VEC, typename Angles>
int32_t launch_rotate_half(T* q, int64_t q_stride, T* k, int64_t k_stride, int64_t num_tokens, int num_q_heads,
                           int num_kv_heads, float theta, const Angles& angles, cudaStream_t stream,
                           CacheSink<T> sink = CacheSink<T>{}) {
    constexpr int kVecBytes = VEC * (int)sizeof(T);
    if (!aligned_to(q, kVecBytes) || !aligned_to(k, kVecBytes) || q_stride % VEC != 0 || k_stride % VEC != 0) {
        return OCRVL_STATUS_UNSUPPORTED;
    }
    if (sink.on() && (!aligned_to(sink.v, kVecBytes) || sink.v_stride % VEC != 0 || !aligned_to(sink.k_cache, 16) ||
                      !aligned_to(sink.v_cache, 16))) {
        return OCRVL_STATUS_UNSUPPORTED;
    }
    const int heads = num_q_heads + num_kv_heads * (sink.on() ? 2 : 1);
    const int tpb = tokens_per_block(heads * (HD / 2 / VEC));
    const int64_t blocks = (num_tokens + tpb - 1) / tpb;
    const size_t smem = (size_t)(Angles::kFreqs + 2 * tpb * (HD / 2)) * sizeof(float);
    rotate_half_kernel<T, HD, VEC, Angles><<<(unsigned)blocks, kThreads, smem, stream>>>(
        q, q_stride, k, k_stride, (int)num_tokens, num_q_heads, num_kv_heads, tpb, theta, angles, sink);
    return launch_status();
}

}  // namespace rope
}  // namespace ocrvl
