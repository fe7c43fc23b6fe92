// 2-D axial rope angles (SigLIP / NaViT vision tower of PaddleOCR-VL): with h = HD/2 pairs and
// f = HD/4 frequencies inv_freq[i] = theta^(-2i/h), pair j < f turns by rows[t] * inv_freq[j]
// and pair f <= j < h by cols[t] * inv_freq[j - f]; pair j couples elements j and j + h.
// Variants: HD 72, 8-byte vectors. A 72-d head is 144 bytes = 9 16-byte vectors, but its
// halves (elements 0..35 and 36..71, 72 bytes each) are not whole 16-byte vectors, and the
// vector holding elements 32..39 straddles the two halves. So a work item is 4 pairs: an
// 8-byte vector from each half (9 items per head); a warp's loads still cover each head's 144
// contiguous bytes in full, so no sector is fetched for nothing. Measured on the H100 (5040
// tokens, 16 + 16 heads): 72% of the copy rate, against 84% for the 16-byte text kernel (twice
// the work items per byte). One thread per head moving 9 16-byte vectors ran at 45% (each load
// instruction of a warp touches 32 lines 144 bytes apart).
// TODO(rope): stage a block's q/k rows through shared memory with coalesced 16-byte copies and
// rotate from there, if the vision rope shows in the encoder profile (about 22 us per layer, 27
// layers, for a 5040-patch page).
#pragma once
#include "rope/rope.cuh"

namespace ocrvl {
namespace rope {

template <int HD>
struct VisionAngles {
    static_assert(HD % 4 == 0, "HD/4 frequencies per axis");
    static constexpr int kFreqs = HD / 4;
    const int32_t* rows;  // [num_tokens]
    const int32_t* cols;  // [num_tokens]

    __device__ __forceinline__ float inv_freq(int i, float theta) const { return inv_freq_f32(i, HD / 2, theta); }

    __device__ __forceinline__ float angle(int64_t tok, int j, const float* inv) const {
        return j < kFreqs ? __fmul_rn((float)rows[tok], inv[j]) : __fmul_rn((float)cols[tok], inv[j - kFreqs]);
    }
};

template <typename T, int HD>
int32_t launch_vision_rope(T* q, int64_t q_stride, T* k, int64_t k_stride, const int32_t* rows, const int32_t* cols,
                           int64_t num_tokens, int num_q_heads, int num_kv_heads, float theta, cudaStream_t stream) {
    const VisionAngles<HD> angles{rows, cols};
    return launch_rotate_half<T, HD, 4>(q, q_stride, k, k_stride, num_tokens, num_q_heads, num_kv_heads, theta,
                                        angles, stream);
}

}  // namespace rope
}  // namespace ocrvl
