// M-RoPE angles (Qwen2-VL style multimodal rope, as PaddleOCR-VL's ERNIE decoder uses it):
// pair j in [0, HD/2) turns by pos_axis(j)[t] * inv_freq[j], inv_freq[j] = theta^(-2j/HD),
// where axis(j) is T (row 0 of positions) for j < section_t, H (row 1) for
// j < section_t + section_h, else W (row 2). With all three rows equal this is plain 1-D neox
// rope; a row stride of 0 gives exactly that from one row.
// Variants: HD 64 and 128, 16-byte vectors (8 pairs per work item; a 128-d head is 8 items).
#pragma once
#include "rope/rope.cuh"

namespace ocrvl {
namespace rope {

template <int HD>
struct MropeAngles {
    static constexpr int kFreqs = HD / 2;
    const int32_t* positions;  // [3, num_tokens], row stride pos_stride
    int64_t pos_stride;
    int t_end;   // section_t
    int h_end;   // section_t + section_h

    __device__ __forceinline__ float inv_freq(int i, float theta) const { return inv_freq_f32(i, HD, theta); }

    __device__ __forceinline__ float angle(int64_t tok, int j, const float* inv) const {
        const int axis = j < t_end ? 0 : (j < h_end ? 1 : 2);
        return __fmul_rn((float)positions[axis * pos_stride + tok], inv[j]);
    }
};

template <typename T, int HD>
int32_t launch_mrope(T* q, int64_t q_stride, T* k, int64_t k_stride, const int32_t* positions, int64_t pos_stride,
                     int64_t num_tokens, int num_q_heads, int num_kv_heads, int section_t, int section_h, float theta,
                     cudaStream_t stream, CacheSink<T> sink) {
    const MropeAngles<HD> angles{positions, pos_stride, section_t, section_t + section_h};
    return launch_rotate_half<T, HD, 8>(q, q_stride, k, k_stride, num_tokens, num_q_heads, num_kv_heads, theta,
                                        angles, stream, sink);
}

}  // namespace rope
}  // namespace ocrvl
