// Runtime dtype to C++ type. Every switch ends in an UNSUPPORTED return, never a silent no-op.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.h"

namespace ocrvl {

// Calls f(T{}) with T the float type for `dtype`, or returns OCRVL_STATUS_UNSUPPORTED.
template <typename F>
inline int32_t dispatch_float(OcrvlDType dtype, F&& f) {
    switch (dtype) {
        case OCRVL_DTYPE_BF16: return f(__nv_bfloat16{});
        case OCRVL_DTYPE_F16: return f(__half{});
        case OCRVL_DTYPE_F32: return f(float{});
        default: return OCRVL_STATUS_UNSUPPORTED;
    }
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

}  // namespace ocrvl
