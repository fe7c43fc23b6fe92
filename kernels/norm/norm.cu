// extern "C" launchers for kernels/include/norm.h: argument checks, then the bf16 kernels of
// rmsnorm.cuh and layernorm.cuh.
#include <stdint.h>

#include "common/check.cuh"
#include "norm.h"
#include "norm/layernorm.cuh"
#include "norm/rmsnorm.cuh"

namespace {

using bf16 = __nv_bfloat16;

#define NORM_RETURN_IF_ERR(expr)                      \
    do {                                              \
        const int32_t status_ = (expr);               \
        if (status_ != OCRVL_STATUS_OK) return status_; \
    } while (0)

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// What every launcher checks first: sizes no kernel could take are INVALID_ARGUMENT; a dtype
// or width these kernels are not built for is UNSUPPORTED.
int32_t check_sizes(int64_t num_tokens, int64_t hidden, float eps, OcrvlDType dtype) {
    OCRVL_CHECK_ARG(num_tokens >= 0 && hidden > 0);
    OCRVL_CHECK_ARG(num_tokens <= INT32_MAX);  // rows map to grid.x (and warps of it)
    OCRVL_CHECK_ARG(eps >= 0.f);               // false for NaN as well
    switch (dtype) {
        case OCRVL_DTYPE_BF16: break;
        default: return OCRVL_STATUS_UNSUPPORTED;
    }
    if (hidden % ocrvl::norm::kVec != 0 || hidden > ocrvl::norm::kMaxHidden) return OCRVL_STATUS_UNSUPPORTED;
    return OCRVL_STATUS_OK;
}

// A [num_tokens, hidden] operand with its row stride: moved as 16-byte vectors, so the base
// must be 16-byte aligned and the stride a multiple of 8 elements.
int32_t check_rows(const void* p, int64_t stride, int64_t hidden) {
    OCRVL_CHECK_ARG(p != nullptr && stride >= hidden);
    if (!aligned16(p) || stride % ocrvl::norm::kVec != 0) return OCRVL_STATUS_UNSUPPORTED;
    return OCRVL_STATUS_OK;
}

// A [hidden] operand (weight, bias).
int32_t check_vector(const void* p) {
    OCRVL_CHECK_ARG(p != nullptr);
    if (!aligned16(p)) return OCRVL_STATUS_UNSUPPORTED;
    return OCRVL_STATUS_OK;
}

}  // namespace

extern "C" int32_t ocrvl_rmsnorm(void* out, int64_t out_stride, const void* x, int64_t x_stride,
                                 const void* weight, int64_t num_tokens, int64_t hidden, float eps,
                                 OcrvlDType dtype, ocrvl_stream_t stream) {
    NORM_RETURN_IF_ERR(check_sizes(num_tokens, hidden, eps, dtype));
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    NORM_RETURN_IF_ERR(check_rows(out, out_stride, hidden));
    NORM_RETURN_IF_ERR(check_rows(x, x_stride, hidden));
    NORM_RETURN_IF_ERR(check_vector(weight));
    return ocrvl::norm::launch_rmsnorm<false>(static_cast<bf16*>(out), out_stride, static_cast<const bf16*>(x),
                                              x_stride, nullptr, 0, static_cast<const bf16*>(weight), num_tokens,
                                              hidden, eps, reinterpret_cast<cudaStream_t>(stream));
}

extern "C" int32_t ocrvl_rmsnorm_add(void* out, int64_t out_stride, const void* x, int64_t x_stride,
                                     void* residual, int64_t residual_stride, const void* weight,
                                     int64_t num_tokens, int64_t hidden, float eps, OcrvlDType dtype,
                                     ocrvl_stream_t stream) {
    NORM_RETURN_IF_ERR(check_sizes(num_tokens, hidden, eps, dtype));
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    NORM_RETURN_IF_ERR(check_rows(out, out_stride, hidden));
    NORM_RETURN_IF_ERR(check_rows(x, x_stride, hidden));
    NORM_RETURN_IF_ERR(check_rows(residual, residual_stride, hidden));
    NORM_RETURN_IF_ERR(check_vector(weight));
    return ocrvl::norm::launch_rmsnorm<true>(static_cast<bf16*>(out), out_stride, static_cast<const bf16*>(x),
                                             x_stride, static_cast<bf16*>(residual), residual_stride,
                                             static_cast<const bf16*>(weight), num_tokens, hidden, eps,
                                             reinterpret_cast<cudaStream_t>(stream));
}

extern "C" int32_t ocrvl_layernorm(void* out, int64_t out_stride, const void* x, int64_t x_stride,
                                   const void* weight, const void* bias, int64_t num_tokens, int64_t hidden,
                                   float eps, OcrvlDType dtype, ocrvl_stream_t stream) {
    NORM_RETURN_IF_ERR(check_sizes(num_tokens, hidden, eps, dtype));
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    NORM_RETURN_IF_ERR(check_rows(out, out_stride, hidden));
    NORM_RETURN_IF_ERR(check_rows(x, x_stride, hidden));
    NORM_RETURN_IF_ERR(check_vector(weight));
    NORM_RETURN_IF_ERR(check_vector(bias));
    return ocrvl::norm::launch_layernorm<false>(static_cast<bf16*>(out), out_stride, static_cast<const bf16*>(x),
                                                x_stride, nullptr, 0, static_cast<const bf16*>(weight),
                                                static_cast<const bf16*>(bias), num_tokens, hidden, eps,
                                                reinterpret_cast<cudaStream_t>(stream));
}

extern "C" int32_t ocrvl_layernorm_add(void* out, int64_t out_stride, const void* x, int64_t x_stride,
                                       void* residual, int64_t residual_stride, const void* weight,
                                       const void* bias, int64_t num_tokens, int64_t hidden, float eps,
                                       OcrvlDType dtype, ocrvl_stream_t stream) {
    NORM_RETURN_IF_ERR(check_sizes(num_tokens, hidden, eps, dtype));
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    NORM_RETURN_IF_ERR(check_rows(out, out_stride, hidden));
    NORM_RETURN_IF_ERR(check_rows(x, x_stride, hidden));
    NORM_RETURN_IF_ERR(check_rows(residual, residual_stride, hidden));
    NORM_RETURN_IF_ERR(check_vector(weight));
    NORM_RETURN_IF_ERR(check_vector(bias));
    return ocrvl::norm::launch_layernorm<true>(static_cast<bf16*>(out), out_stride, static_cast<const bf16*>(x),
                                               x_stride, static_cast<bf16*>(residual), residual_stride,
                                               static_cast<const bf16*>(weight), static_cast<const bf16*>(bias),
                                               num_tokens, hidden, eps, reinterpret_cast<cudaStream_t>(stream));
}
