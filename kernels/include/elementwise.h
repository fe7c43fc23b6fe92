/* Elementwise kernels over flat buffers. */
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

#ifdef __cplusplus
}
#endif
