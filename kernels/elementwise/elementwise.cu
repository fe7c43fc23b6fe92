// extern "C" launchers for kernels/include/elementwise.h: argument checks and dtype dispatch.
#include "common/check.cuh"
#include "elementwise.h"
#include "elementwise/cast_scale.cuh"

extern "C" int32_t ocrvl_cast_scale(void* out, OcrvlDType out_dtype, const void* in,
                                    OcrvlDType in_dtype, int64_t n, float scale,
                                    ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(n >= 0);
    if (n == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(out != nullptr && in != nullptr);
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return ocrvl::dispatch_float(out_dtype, [&](auto out_tag) {
        using TOut = decltype(out_tag);
        return ocrvl::dispatch_float(in_dtype, [&](auto in_tag) {
            using TIn = decltype(in_tag);
            return ocrvl::launch_cast_scale(static_cast<TOut*>(out), static_cast<const TIn*>(in),
                                            n, scale, s);
        });
    });
}
