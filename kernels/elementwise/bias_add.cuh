// out[r, c] = x[r, c] + bias[c] (+ residual[r, c]) over [rows, width] tensors of two-byte
// floats: the bias adds (optionally fused with a residual add) that a cuBLASLt epilogue does
// not cover. The sum is taken in f32 and rounded once.
//
// Memory-bound: one 16-byte vector of x (and of residual) per thread; the bias vector is read
// by every row and stays in L1/L2, so it costs width elements once. Launch shape from
// row_launch (common/vec8.cuh). Constraints as in activation.cuh (width and strides multiples of 8,
// 16-byte aligned pointers). out may equal x or residual: each element is read, then written
// by the same thread, so the pointers are not __restrict__.
#pragma once
#include "common/vec8.cuh"

namespace ocrvl {

// Grid: (ceil(rows * width / 8 / 256)), Block: (256).
template <typename T, bool kResidual>
__global__ void bias_add_kernel(T* out,              // [rows, width], row stride out_stride
                                int64_t out_stride,
                                const T* x,          // [rows, width], row stride x_stride
                                int64_t x_stride,
                                const T* bias,       // [width]
                                const T* residual,   // [rows, width], row stride res_stride; unused unless kResidual
                                int64_t res_stride,
                                uint32_t total_vecs,  // rows * width / 8
                                uint32_t width_vecs) {
    int64_t row, v;
    if (!row_vec(total_vecs, width_vecs, row, v)) return;
    float a[kVec], b[kVec], r[kVec];
    load_vec8(x + row * x_stride + v * kVec, a);
    load_vec8(bias + v * kVec, b);
    if (kResidual) load_vec8(residual + row * res_stride + v * kVec, r);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
        a[i] += b[i];
        if (kResidual) a[i] += r[i];
    }
    store_vec8(out + row * out_stride + v * kVec, a);
}

template <typename T>
int32_t launch_bias_add(T* out, int64_t out_stride, const T* x, int64_t x_stride, const T* bias, const T* residual,
                        int64_t res_stride, int64_t rows, int64_t width, cudaStream_t stream) {
    const RowLaunch l = row_launch(rows, width / kVec);
    if (!l.ok) return OCRVL_STATUS_UNSUPPORTED;
    if (residual != nullptr) {
        bias_add_kernel<T, true><<<l.grid, l.block, 0, stream>>>(out, out_stride, x, x_stride, bias, residual,
                                                                 res_stride, l.total, l.vecs);
    } else {
        bias_add_kernel<T, false><<<l.grid, l.block, 0, stream>>>(out, out_stride, x, x_stride, bias, nullptr, 0,
                                                                  l.total, l.vecs);
    }
    return launch_status();
}

}  // namespace ocrvl
