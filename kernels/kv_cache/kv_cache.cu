// extern "C" launchers for kernels/include/kv_cache.h: argument checks and dispatch.
#include "common/check.cuh"
#include "kv_cache.h"
#include "kv_cache/block_size.cuh"
#include "kv_cache/reshape_and_cache.cuh"

namespace {

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

extern "C" int32_t ocrvl_kv_cache_reshape_and_cache(void* k_cache, void* v_cache, const void* k, int64_t k_stride,
                                                    const void* v, int64_t v_stride, const int32_t* slot_mapping,
                                                    int64_t num_tokens, int32_t num_kv_heads, int32_t head_dim,
                                                    int32_t block_size, int64_t num_blocks, OcrvlDType dtype,
                                                    ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(k_cache != nullptr && v_cache != nullptr && k != nullptr && v != nullptr);
    OCRVL_CHECK_ARG(slot_mapping != nullptr);
    OCRVL_CHECK_ARG(num_tokens >= 0 && num_kv_heads > 0 && head_dim > 0 && block_size > 0 && num_blocks >= 0);
    OCRVL_CHECK_ARG(k_stride >= (int64_t)num_kv_heads * head_dim && v_stride >= (int64_t)num_kv_heads * head_dim);
    // Work items are counted in int, slots are int32.
    OCRVL_CHECK_ARG(num_tokens * 2 * num_kv_heads * (int64_t)head_dim / ocrvl::kv_cache::kElemsPerVec <= INT32_MAX);
    OCRVL_CHECK_ARG(num_blocks * block_size <= (int64_t)INT32_MAX + 1);
    if (dtype != OCRVL_DTYPE_BF16 && dtype != OCRVL_DTYPE_F16) return OCRVL_STATUS_UNSUPPORTED;
    const int bs_log2 = ocrvl::kv_cache::block_size_log2(block_size);
    if (bs_log2 < 0) return OCRVL_STATUS_UNSUPPORTED;
    if (head_dim % ocrvl::kv_cache::kElemsPerVec != 0 || head_dim > 256) return OCRVL_STATUS_UNSUPPORTED;
    if (!aligned16(k_cache) || !aligned16(v_cache) || !aligned16(k) || !aligned16(v) ||
        k_stride % ocrvl::kv_cache::kElemsPerVec != 0 || v_stride % ocrvl::kv_cache::kElemsPerVec != 0) {
        return OCRVL_STATUS_UNSUPPORTED;
    }
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    return ocrvl::kv_cache::launch_reshape_and_cache(k_cache, v_cache, k, k_stride, v, v_stride, slot_mapping,
                                                     (int)num_tokens, num_kv_heads, head_dim, bs_log2, num_blocks,
                                                     reinterpret_cast<cudaStream_t>(stream));
}
