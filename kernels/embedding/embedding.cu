// extern "C" launchers for kernels/include/embedding.h: argument checks and dtype dispatch.
#include "common/check.cuh"
#include "embedding.h"
#include "embedding/gather_scatter.cuh"
#include "embedding/pos_embed.cuh"

namespace {

// These kernels are built for bf16 only, the model's activation and weight dtype.
template <typename F>
int32_t dispatch_bf16(OcrvlDType dtype, F&& f) {
    switch (dtype) {
        case OCRVL_DTYPE_BF16: return f(__nv_bfloat16{});
        default: return OCRVL_STATUS_UNSUPPORTED;
    }
}

// One strided [rows, len] bf16 operand: null or a stride under the row length is invalid; a
// stride or address that breaks 16-byte vectors is unsupported.
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

extern "C" int32_t ocrvl_embedding_gather(void* out, int64_t out_stride, const void* table, const int32_t* ids,
                                          int32_t* error, int64_t tokens, int64_t vocab, int64_t hidden,
                                          OcrvlDType dtype, ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(tokens >= 0 && vocab >= 0 && hidden >= 0);
    if (tokens == 0 || hidden == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(ids != nullptr && error != nullptr);
    OCRVL_RETURN_IF_ERR(check_rows(out, out_stride, hidden));
    OCRVL_RETURN_IF_ERR(check_rows(table, hidden, hidden));
    if (hidden % ocrvl::kVec != 0) return OCRVL_STATUS_UNSUPPORTED;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return dispatch_bf16(dtype, [&](auto tag) {
        using T = decltype(tag);
        return ocrvl::launch_embedding_gather(static_cast<T*>(out), out_stride, static_cast<const T*>(table), ids,
                                              error, tokens, vocab, hidden, s);
    });
}

extern "C" int32_t ocrvl_scatter_rows(void* dst, int64_t dst_stride, const void* src, int64_t src_stride,
                                      const int32_t* dst_rows, int64_t n_rows, int64_t dst_tokens, int64_t hidden,
                                      OcrvlDType dtype, ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(n_rows >= 0 && dst_tokens >= 0 && hidden >= 0);
    if (n_rows == 0 || hidden == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(dst_rows != nullptr);
    OCRVL_RETURN_IF_ERR(check_rows(dst, dst_stride, hidden));
    OCRVL_RETURN_IF_ERR(check_rows(src, src_stride, hidden));
    if (hidden % ocrvl::kVec != 0) return OCRVL_STATUS_UNSUPPORTED;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return dispatch_bf16(dtype, [&](auto tag) {
        using T = decltype(tag);
        return ocrvl::launch_scatter_rows(static_cast<T*>(dst), dst_stride, static_cast<const T*>(src), src_stride,
                                          dst_rows, n_rows, dst_tokens, hidden, s);
    });
}

extern "C" int32_t ocrvl_pos_embed_resample_add(void* x, int64_t x_stride, const void* table, int64_t side,
                                                const int32_t* cu_patches, const int32_t* grid_hw,
                                                int64_t num_images, int64_t total_patches, int64_t dim,
                                                OcrvlDType dtype, ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(total_patches >= 0 && dim >= 0 && num_images >= 0 && side > 0);
    if (total_patches == 0 || dim == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(num_images > 0 && cu_patches != nullptr && grid_hw != nullptr);
    OCRVL_RETURN_IF_ERR(check_rows(x, x_stride, dim));
    OCRVL_RETURN_IF_ERR(check_rows(table, dim, dim));
    if (dim % ocrvl::kVec != 0) return OCRVL_STATUS_UNSUPPORTED;
    // Table and image indices are int inside the kernel.
    if (side > 46340 || num_images > 0x7fffffffLL) return OCRVL_STATUS_UNSUPPORTED;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return dispatch_bf16(dtype, [&](auto tag) {
        using T = decltype(tag);
        return ocrvl::launch_pos_embed_resample_add(static_cast<T*>(x), x_stride, static_cast<const T*>(table), side,
                                                    cu_patches, grid_hw, num_images, total_patches, dim, s);
    });
}
