// extern "C" launchers for kernels/include/rope.h: argument checks, dtype and head_dim dispatch.
#include <math.h>

#include "common/check.cuh"
#include "rope.h"
#include "rope/mrope.cuh"
#include "rope/mrope_interleaved.cuh"
#include "kv_cache/block_size.cuh"
#include "rope/vision_rope.cuh"

namespace {

// The device form of an optional cache sink; OCRVL_STATUS_OK with an empty sink for NULL.
template <typename T>
int32_t cache_sink(const OcrvlRopeCacheSink* c, int32_t num_kv_heads, int32_t head_dim,
                   ocrvl::rope::CacheSink<T>* out) {
    *out = ocrvl::rope::CacheSink<T>{};
    if (c == nullptr) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(c->k_cache != nullptr && c->v_cache != nullptr && c->v != nullptr && c->slot_mapping != nullptr);
    OCRVL_CHECK_ARG(c->num_blocks >= 0 && c->num_blocks * c->block_size <= (int64_t)INT32_MAX + 1);
    OCRVL_CHECK_ARG(c->v_stride >= (int64_t)num_kv_heads * head_dim);
    const int bs_log2 = ocrvl::kv_cache::block_size_log2(c->block_size);
    if (bs_log2 < 0) return OCRVL_STATUS_UNSUPPORTED;
    *out = ocrvl::rope::CacheSink<T>{static_cast<T*>(c->k_cache), static_cast<T*>(c->v_cache),
                                     static_cast<const T*>(c->v),  c->v_stride,
                                     c->slot_mapping,              bs_log2,
                                     c->num_blocks << bs_log2};
    return OCRVL_STATUS_OK;
}

// Checks shared by both launchers. Returns OCRVL_STATUS_OK when the arguments are consistent.
int32_t check_common(const void* q, int64_t q_stride, const void* k, int64_t k_stride, int64_t num_tokens,
                     int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim, float theta) {
    OCRVL_CHECK_ARG(num_tokens >= 0 && num_tokens <= INT32_MAX);
    OCRVL_CHECK_ARG(q != nullptr && k != nullptr);
    OCRVL_CHECK_ARG(num_q_heads > 0 && num_kv_heads > 0 && head_dim > 0 && head_dim % 2 == 0);
    // Work items of a block are counted in int.
    OCRVL_CHECK_ARG(((int64_t)num_q_heads + num_kv_heads) * head_dim * ocrvl::rope::kMaxTokensPerBlock <= INT32_MAX);
    OCRVL_CHECK_ARG(q_stride >= (int64_t)num_q_heads * head_dim && k_stride >= (int64_t)num_kv_heads * head_dim);
    OCRVL_CHECK_ARG(theta > 0.0f && isfinite(theta));
    return OCRVL_STATUS_OK;
}

}  // namespace

extern "C" int32_t ocrvl_rope_mrope(void* q, int64_t q_stride, void* k, int64_t k_stride, const int32_t* positions,
                                    int64_t pos_stride, int64_t num_tokens, int32_t num_q_heads,
                                    int32_t num_kv_heads, int32_t head_dim, int32_t section_t, int32_t section_h,
                                    int32_t section_w, float theta, const OcrvlRopeCacheSink* cache,
                                    OcrvlDType dtype, ocrvl_stream_t stream) {
    const int32_t st = check_common(q, q_stride, k, k_stride, num_tokens, num_q_heads, num_kv_heads, head_dim, theta);
    if (st != OCRVL_STATUS_OK) return st;
    OCRVL_CHECK_ARG(positions != nullptr);
    OCRVL_CHECK_ARG(pos_stride == 0 || pos_stride >= num_tokens);
    OCRVL_CHECK_ARG(section_t >= 0 && section_h >= 0 && section_w >= 0);
    OCRVL_CHECK_ARG((int64_t)section_t + section_h + section_w == head_dim / 2);
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return ocrvl::rope::dispatch_16bit(dtype, [&](auto tag) -> int32_t {
        using T = decltype(tag);
        T* qt = static_cast<T*>(q);
        T* kt = static_cast<T*>(k);
        ocrvl::rope::CacheSink<T> sink;
        const int32_t cs = cache_sink<T>(cache, num_kv_heads, head_dim, &sink);
        if (cs != OCRVL_STATUS_OK) return cs;
        switch (head_dim) {
            case 64:
                return ocrvl::rope::launch_mrope<T, 64>(qt, q_stride, kt, k_stride, positions, pos_stride,
                                                        num_tokens, num_q_heads, num_kv_heads, section_t,
                                                        section_h, theta, s, sink);
            case 128:
                return ocrvl::rope::launch_mrope<T, 128>(qt, q_stride, kt, k_stride, positions, pos_stride,
                                                         num_tokens, num_q_heads, num_kv_heads, section_t,
                                                         section_h, theta, s, sink);
            default: return OCRVL_STATUS_UNSUPPORTED;
        }
    });
}

extern "C" int32_t ocrvl_rope_mrope_interleaved(void* q, int64_t q_stride, void* k, int64_t k_stride,
                                                const int32_t* positions, int64_t pos_stride, int64_t num_tokens,
                                                int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim,
                                                int32_t section_hw, float theta, const OcrvlRopeCacheSink* cache,
                                                OcrvlDType dtype, ocrvl_stream_t stream) {
    const int32_t st = check_common(q, q_stride, k, k_stride, num_tokens, num_q_heads, num_kv_heads, head_dim, theta);
    if (st != OCRVL_STATUS_OK) return st;
    OCRVL_CHECK_ARG(positions != nullptr);
    OCRVL_CHECK_ARG(pos_stride == 0 || pos_stride >= num_tokens);
    OCRVL_CHECK_ARG(section_hw >= 0 && section_hw <= head_dim / 2 && section_hw % 2 == 0);
    if (head_dim % 8 != 0) return OCRVL_STATUS_UNSUPPORTED;
    if (!ocrvl::rope::aligned_to(q, 16) || !ocrvl::rope::aligned_to(k, 16) || q_stride % 8 != 0 || k_stride % 8 != 0)
        return OCRVL_STATUS_UNSUPPORTED;
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return ocrvl::rope::dispatch_16bit(dtype, [&](auto tag) -> int32_t {
        using T = decltype(tag);
        ocrvl::rope::CacheSink<T> sink;
        const int32_t cs = cache_sink<T>(cache, num_kv_heads, head_dim, &sink);
        if (cs != OCRVL_STATUS_OK) return cs;
        return ocrvl::rope::launch_mrope_interleaved<T>(static_cast<T*>(q), q_stride, static_cast<T*>(k), k_stride,
                                                        positions, pos_stride, num_tokens, num_q_heads,
                                                        num_kv_heads, head_dim, section_hw, theta, s, sink);
    });
}

extern "C" int32_t ocrvl_rope_vision(void* q, int64_t q_stride, void* k, int64_t k_stride, const int32_t* rows,
                                     const int32_t* cols, int64_t num_tokens, int32_t num_q_heads,
                                     int32_t num_kv_heads, int32_t head_dim, float theta, OcrvlDType dtype,
                                     ocrvl_stream_t stream) {
    const int32_t st = check_common(q, q_stride, k, k_stride, num_tokens, num_q_heads, num_kv_heads, head_dim, theta);
    if (st != OCRVL_STATUS_OK) return st;
    OCRVL_CHECK_ARG(rows != nullptr && cols != nullptr);
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return ocrvl::rope::dispatch_16bit(dtype, [&](auto tag) -> int32_t {
        using T = decltype(tag);
        T* qt = static_cast<T*>(q);
        T* kt = static_cast<T*>(k);
        switch (head_dim) {
            case 72:
                return ocrvl::rope::launch_vision_rope<T, 72>(qt, q_stride, kt, k_stride, rows, cols, num_tokens,
                                                              num_q_heads, num_kv_heads, theta, s);
            case 80:  // ERNIE-4.5-VL's ViT (16 heads of 80); same 8-byte variant, not tuned
                return ocrvl::rope::launch_vision_rope<T, 80>(qt, q_stride, kt, k_stride, rows, cols, num_tokens,
                                                              num_q_heads, num_kv_heads, theta, s);
            default: return OCRVL_STATUS_UNSUPPORTED;
        }
    });
}
