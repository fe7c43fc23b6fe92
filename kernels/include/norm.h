/* Row normalisations: RMSNorm and LayerNorm, each plain and fused with the residual add that
 * precedes it in the model (text decoder: RMSNorm, hidden 1024; vision encoder and projector:
 * LayerNorm, hidden 1152).
 *
 * Common contract of the four launchers:
 * - Every tensor is bf16 (dtype must be OCRVL_DTYPE_BF16; anything else is UNSUPPORTED).
 * - Rows are [num_tokens, hidden] with the last dim contiguous and a row stride in elements
 *   (stride >= hidden). weight and bias are contiguous [hidden].
 * - hidden must be a multiple of 8 and at most 8192, every pointer 16-byte aligned and every
 *   stride a multiple of 8 (rows are moved as 16-byte vectors of 8 bf16); otherwise
 *   OCRVL_STATUS_UNSUPPORTED. num_tokens 0 launches nothing.
 * - Statistics are computed in f32. Outputs must not overlap any input (no in-place out).
 * - hidden <= 2048: one warp per row, Grid: (ceil(num_tokens / 4)), Block: (128);
 *   hidden > 2048: one block per row, Grid: (num_tokens), Block: (256). */
#pragma once
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* RMSNorm, rounded as the model's reference (HF Ernie4_5RMSNorm, vLLM rms_norm) rounds it:
 *   rstd = rsqrt(mean(x[t,:]^2) + eps)                       (f32)
 *   out[t,i] = bf16( f32(bf16(x[t,i] * rstd)) * f32(weight[i]) )
 * i.e. the normalised row is cast to bf16 before the weight multiply.
 * out    [num_tokens, hidden]  row stride out_stride
 * x      [num_tokens, hidden]  row stride x_stride
 * weight [hidden] */
int32_t ocrvl_rmsnorm(void* out, int64_t out_stride, const void* x, int64_t x_stride, const void* weight,
                      int64_t num_tokens, int64_t hidden, float eps, OcrvlDType dtype, ocrvl_stream_t stream);

/* Residual add then RMSNorm, in one pass (the decoder's `r = r + x; y = RMSNorm(r)`):
 *   residual[t,i] = bf16(f32(residual[t,i]) + f32(x[t,i]))   (in place; one rounding of the
 *                                                              exact f32 sum of two bf16)
 *   out = rmsnorm(residual) as ocrvl_rmsnorm, with the statistics taken from the ROUNDED bf16
 *   residual. This is what PyTorch computes when it adds two bf16 tensors and then normalises
 *   the bf16 sum, so the residual stream and the output match the reference bit for bit in
 *   the add and up to f32 reduction order in the norm.
 * out      [num_tokens, hidden]  row stride out_stride
 * x        [num_tokens, hidden]  row stride x_stride
 * residual [num_tokens, hidden]  row stride residual_stride, read and written
 * weight   [hidden] */
int32_t ocrvl_rmsnorm_add(void* out, int64_t out_stride, const void* x, int64_t x_stride, void* residual,
                          int64_t residual_stride, const void* weight, int64_t num_tokens, int64_t hidden,
                          float eps, OcrvlDType dtype, ocrvl_stream_t stream);

/* LayerNorm with weight and bias (PyTorch F.layer_norm semantics, biased variance):
 *   mean = mean(x[t,:]), var = mean((x[t,:] - mean)^2)       (f32, two passes over the row
 *                                                              held in registers)
 *   out[t,i] = bf16( (x[t,i] - mean) * rsqrt(var + eps) * weight[i] + bias[i] )   (f32)
 * out    [num_tokens, hidden]  row stride out_stride
 * x      [num_tokens, hidden]  row stride x_stride
 * weight [hidden]
 * bias   [hidden] */
int32_t ocrvl_layernorm(void* out, int64_t out_stride, const void* x, int64_t x_stride, const void* weight,
                        const void* bias, int64_t num_tokens, int64_t hidden, float eps, OcrvlDType dtype,
                        ocrvl_stream_t stream);

/* Residual add then LayerNorm, in one pass (the vision encoder's `x = r + ...; y = LN(x)`):
 *   residual[t,i] = bf16(f32(residual[t,i]) + f32(x[t,i]))   (in place, one rounding)
 *   out = layernorm(residual) as ocrvl_layernorm, statistics from the ROUNDED bf16 residual
 *   (as PyTorch's bf16 add followed by LayerNorm).
 * out      [num_tokens, hidden]  row stride out_stride
 * x        [num_tokens, hidden]  row stride x_stride
 * residual [num_tokens, hidden]  row stride residual_stride, read and written
 * weight   [hidden]
 * bias     [hidden] */
int32_t ocrvl_layernorm_add(void* out, int64_t out_stride, const void* x, int64_t x_stride, void* residual,
                            int64_t residual_stride, const void* weight, const void* bias, int64_t num_tokens,
                            int64_t hidden, float eps, OcrvlDType dtype, ocrvl_stream_t stream);

#ifdef __cplusplus
}
#endif
