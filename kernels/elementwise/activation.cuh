// Activations over [rows, width] tensors of two-byte floats: SwiGLU (silu_mul) on the fused
// gate/up GEMM output, GELU in its tanh and exact (erf) forms, and quick_gelu.
//
// Memory-bound: each thread loads one 16-byte vector (two for silu_mul: gate and up) of one
// row, computes in f32 and stores one vector, rounded once. Launch shape from row_launch
// (common/vec8.cuh): the rows' vectors flattened into blocks of 256 threads; rows may be strided.
// Constraints (checked by the launchers): width a multiple of 8, row strides multiples of 8,
// 16-byte aligned pointers.
// Accuracy: expf, tanhf and erff are the full-precision CUDA functions (no --use_fast_math);
// each is within 2 ulp in f32, far below the output's bf16 rounding.
#pragma once
#include "common/vec8.cuh"

namespace ocrvl {

// Grid: (ceil(tokens * inter / 8 / 256)), Block: (256).
template <typename T>
__global__ void silu_mul_kernel(T* __restrict__ out,            // [tokens, inter], row stride out_stride
                                int64_t out_stride,
                                const T* __restrict__ gate_up,  // [tokens, 2 * inter], row stride gu_stride
                                int64_t gu_stride,
                                uint32_t total_vecs,            // tokens * inter / 8
                                uint32_t inter_vecs) {
    int64_t row, v;
    if (!row_vec(total_vecs, inter_vecs, row, v)) return;
    const T* gate = gate_up + row * gu_stride + v * kVec;
    float g[kVec], u[kVec];
    // Both loads are issued before any math, so each thread has 32 bytes in flight.
    load_vec8(gate, g);
    load_vec8(gate + (int64_t)inter_vecs * kVec, u);
#pragma unroll
    for (int i = 0; i < kVec; ++i) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    store_vec8(out + row * out_stride + v * kVec, g);
}

struct GeluTanh {
    __device__ __forceinline__ float operator()(float x) const {
        const float k = 0.7978845608028654f;  // sqrt(2 / pi)
        return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
};

struct GeluErf {
    __device__ __forceinline__ float operator()(float x) const {
        return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));  // x / sqrt(2)
    }
};

// quick_gelu (ERNIE-4.5-VL's ViT MLP): x * sigmoid(1.702 x), with the full-precision expf.
struct QuickGelu {
    __device__ __forceinline__ float operator()(float x) const { return x / (1.0f + expf(-1.702f * x)); }
};

// In place when out == in: each element is read once, then written by the same thread, so
// the pointers are deliberately not __restrict__.
// Grid: (ceil(rows * width / 8 / 256)), Block: (256).
template <typename T, typename Act>
__global__ void gelu_kernel(T* out,        // [rows, width], row stride out_stride
                            int64_t out_stride,
                            const T* in,   // [rows, width], row stride in_stride
                            int64_t in_stride,
                            uint32_t total_vecs,  // rows * width / 8
                            uint32_t width_vecs) {
    int64_t row, v;
    if (!row_vec(total_vecs, width_vecs, row, v)) return;
    float x[kVec];
    load_vec8(in + row * in_stride + v * kVec, x);
    const Act act;
#pragma unroll
    for (int i = 0; i < kVec; ++i) x[i] = act(x[i]);
    store_vec8(out + row * out_stride + v * kVec, x);
}

template <typename T>
int32_t launch_silu_mul(T* out, int64_t out_stride, const T* gate_up, int64_t gu_stride, int64_t tokens,
                        int64_t inter, cudaStream_t stream) {
    const RowLaunch l = row_launch(tokens, inter / kVec);
    if (!l.ok) return OCRVL_STATUS_UNSUPPORTED;
    silu_mul_kernel<T><<<l.grid, l.block, 0, stream>>>(out, out_stride, gate_up, gu_stride, l.total, l.vecs);
    return launch_status();
}

template <typename T, typename Act>
int32_t launch_gelu(T* out, int64_t out_stride, const T* in, int64_t in_stride, int64_t rows, int64_t width,
                    cudaStream_t stream) {
    const RowLaunch l = row_launch(rows, width / kVec);
    if (!l.ok) return OCRVL_STATUS_UNSUPPORTED;
    gelu_kernel<T, Act><<<l.grid, l.block, 0, stream>>>(out, out_stride, in, in_stride, l.total, l.vecs);
    return launch_status();
}

}  // namespace ocrvl
