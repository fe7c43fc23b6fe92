/* Elementwise kernels: flat casts, and row-wise activations and bias adds over 2-D bf16
 * tensors.
 *
 * Row-wise kernels (silu_mul, gelu_*, bias_add) work on [rows, width] tensors whose rows may
 * be strided (`*_stride`, in elements, >= the row length). They move 16-byte vectors of 8
 * elements, so they need: width a multiple of 8, every row stride a multiple of 8, and every
 * pointer 16-byte aligned; otherwise they return OCRVL_STATUS_UNSUPPORTED. Dtype: bf16 only
 * (the model's activation dtype); any other returns OCRVL_STATUS_UNSUPPORTED. Arithmetic is
 * f32 and the result is rounded once to the output dtype. rows == 0 launches nothing.
 * rows * width / 8 must stay under 2^31 (else UNSUPPORTED).
 * Grid for all of them: (ceil(rows * width / 8 / 256)), Block: (256): one 16-byte vector per
 * thread over the rows' vectors flattened in row-major order. */
#pragma once
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[i] = (out_dtype)(in[i] * scale), computed in f32.
 * out [n] (out_dtype), in [n] (in_dtype); in and out may not overlap unless equal.
 * Dtypes: bf16, f16, f32 in any pair. n may be 0 (nothing is launched).
 * Grid: (ceil(n / (256 * 4))) capped at 65535 * 8 blocks, grid-stride; Block: (256). */
int32_t ocrvl_cast_scale(void* out, OcrvlDType out_dtype, const void* in, OcrvlDType in_dtype,
                         int64_t n, float scale, ocrvl_stream_t stream);

/* SwiGLU: out[t, j] = silu(gate_up[t, j]) * gate_up[t, inter + j], silu(g) = g / (1 + e^-g).
 * Layout: the fused gate/up GEMM writes gate in the first half of each row and up in the
 * second, so one GEMM with N = 2 * inter feeds this kernel directly.
 * out     [tokens, inter]      row stride out_stride (>= inter)
 * gate_up [tokens, 2 * inter]  row stride gate_up_stride (>= 2 * inter)
 * out must not overlap gate_up. inter a multiple of 8. */
int32_t ocrvl_silu_mul(void* out, int64_t out_stride, const void* gate_up, int64_t gate_up_stride,
                       int64_t tokens, int64_t inter, OcrvlDType dtype, ocrvl_stream_t stream);

/* GELU, tanh form (PyTorch gelu(approximate="tanh"), the vision MLP):
 * out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), with tanhf (not a fast approximation).
 * out [rows, width] row stride out_stride; in [rows, width] row stride in_stride.
 * In place when out == in with equal strides; other overlaps are not allowed. */
int32_t ocrvl_gelu_tanh(void* out, int64_t out_stride, const void* in, int64_t in_stride,
                        int64_t rows, int64_t width, OcrvlDType dtype, ocrvl_stream_t stream);

/* GELU, exact form (PyTorch gelu(approximate="none"), the projector):
 * out = 0.5 x (1 + erf(x / sqrt(2))), with erff. Same layout and aliasing rules as gelu_tanh. */
int32_t ocrvl_gelu_erf(void* out, int64_t out_stride, const void* in, int64_t in_stride,
                       int64_t rows, int64_t width, OcrvlDType dtype, ocrvl_stream_t stream);

/* quick_gelu (ERNIE-4.5-VL's ViT MLP): out = x * sigmoid(1.702 x), with expf. Same layout and
 * aliasing rules as gelu_tanh. */
int32_t ocrvl_quick_gelu(void* out, int64_t out_stride, const void* in, int64_t in_stride,
                         int64_t rows, int64_t width, OcrvlDType dtype, ocrvl_stream_t stream);

/* out[r, c] = x[r, c] + bias[c] (+ residual[r, c]), the sum in f32, rounded once. For the
 * bias adds that a cuBLASLt epilogue does not cover.
 * out      [rows, width] row stride out_stride
 * x        [rows, width] row stride x_stride
 * bias     [width]       contiguous
 * residual [rows, width] row stride residual_stride, or null (then residual_stride is unused)
 * out may equal x or residual (same strides): each element is read before it is written. */
int32_t ocrvl_bias_add(void* out, int64_t out_stride, const void* x, int64_t x_stride, const void* bias,
                       const void* residual, int64_t residual_stride, int64_t rows, int64_t width,
                       OcrvlDType dtype, ocrvl_stream_t stream);

#ifdef __cplusplus
}
#endif
