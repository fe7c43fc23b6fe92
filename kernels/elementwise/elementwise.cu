// extern "C" launchers for kernels/include/elementwise.h: argument checks and dtype dispatch.
#include "common/check.cuh"
#include "elementwise.h"
#include "elementwise/activation.cuh"
#include "elementwise/bias_add.cuh"
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

namespace {

// The row-wise kernels are built for bf16 only, the model's activation dtype.
template <typename F>
int32_t dispatch_bf16(OcrvlDType dtype, F&& f) {
    switch (dtype) {
        case OCRVL_DTYPE_BF16: return f(__nv_bfloat16{});
        default: return OCRVL_STATUS_UNSUPPORTED;
    }
}

// One strided [rows, len] operand of a row-wise kernel: null or a stride under the row length
// is invalid; a stride or address that breaks 16-byte vectors is unsupported.
int32_t check_rows(const void* p, int64_t stride, int64_t len) {
    if (p == nullptr || stride < len) return OCRVL_STATUS_INVALID_ARGUMENT;
    if (stride % ocrvl::kVec != 0 || !ocrvl::aligned16(p)) return OCRVL_STATUS_UNSUPPORTED;
    return OCRVL_STATUS_OK;
}

}  // namespace

#define OCRVL_RETURN_IF_ERR(expr)                         \
    do {                                                  \
        int32_t status_ = (expr);                         \
        if (status_ != OCRVL_STATUS_OK) return status_;   \
    } while (0)

extern "C" int32_t ocrvl_silu_mul(void* out, int64_t out_stride, const void* gate_up, int64_t gate_up_stride,
                                  int64_t tokens, int64_t inter, OcrvlDType dtype, ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(tokens >= 0 && inter >= 0);
    if (tokens == 0 || inter == 0) return OCRVL_STATUS_OK;
    OCRVL_RETURN_IF_ERR(check_rows(out, out_stride, inter));
    OCRVL_RETURN_IF_ERR(check_rows(gate_up, gate_up_stride, 2 * inter));
    if (inter % ocrvl::kVec != 0) return OCRVL_STATUS_UNSUPPORTED;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return dispatch_bf16(dtype, [&](auto tag) {
        using T = decltype(tag);
        return ocrvl::launch_silu_mul(static_cast<T*>(out), out_stride, static_cast<const T*>(gate_up),
                                      gate_up_stride, tokens, inter, s);
    });
}

template <typename Act>
static int32_t gelu(void* out, int64_t out_stride, const void* in, int64_t in_stride, int64_t rows, int64_t width,
                    OcrvlDType dtype, ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(rows >= 0 && width >= 0);
    if (rows == 0 || width == 0) return OCRVL_STATUS_OK;
    OCRVL_RETURN_IF_ERR(check_rows(out, out_stride, width));
    OCRVL_RETURN_IF_ERR(check_rows(in, in_stride, width));
    if (width % ocrvl::kVec != 0) return OCRVL_STATUS_UNSUPPORTED;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return dispatch_bf16(dtype, [&](auto tag) {
        using T = decltype(tag);
        return ocrvl::launch_gelu<T, Act>(static_cast<T*>(out), out_stride, static_cast<const T*>(in), in_stride,
                                          rows, width, s);
    });
}

extern "C" int32_t ocrvl_gelu_tanh(void* out, int64_t out_stride, const void* in, int64_t in_stride, int64_t rows,
                                   int64_t width, OcrvlDType dtype, ocrvl_stream_t stream) {
    return gelu<ocrvl::GeluTanh>(out, out_stride, in, in_stride, rows, width, dtype, stream);
}

extern "C" int32_t ocrvl_gelu_erf(void* out, int64_t out_stride, const void* in, int64_t in_stride, int64_t rows,
                                  int64_t width, OcrvlDType dtype, ocrvl_stream_t stream) {
    return gelu<ocrvl::GeluErf>(out, out_stride, in, in_stride, rows, width, dtype, stream);
}

extern "C" int32_t ocrvl_quick_gelu(void* out, int64_t out_stride, const void* in, int64_t in_stride, int64_t rows,
                                    int64_t width, OcrvlDType dtype, ocrvl_stream_t stream) {
    return gelu<ocrvl::QuickGelu>(out, out_stride, in, in_stride, rows, width, dtype, stream);
}

extern "C" int32_t ocrvl_bias_add(void* out, int64_t out_stride, const void* x, int64_t x_stride, const void* bias,
                                  const void* residual, int64_t residual_stride, int64_t rows, int64_t width,
                                  OcrvlDType dtype, ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(rows >= 0 && width >= 0);
    if (rows == 0 || width == 0) return OCRVL_STATUS_OK;
    OCRVL_RETURN_IF_ERR(check_rows(out, out_stride, width));
    OCRVL_RETURN_IF_ERR(check_rows(x, x_stride, width));
    OCRVL_RETURN_IF_ERR(check_rows(bias, width, width));
    if (residual != nullptr) OCRVL_RETURN_IF_ERR(check_rows(residual, residual_stride, width));
    if (width % ocrvl::kVec != 0) return OCRVL_STATUS_UNSUPPORTED;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return dispatch_bf16(dtype, [&](auto tag) {
        using T = decltype(tag);
        return ocrvl::launch_bias_add(static_cast<T*>(out), out_stride, static_cast<const T*>(x), x_stride,
                                      static_cast<const T*>(bias), static_cast<const T*>(residual),
                                      residual_stride, rows, width, s);
    });
}
