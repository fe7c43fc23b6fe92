// extern "C" launchers for kernels/include/moe.h: argument checks, then the kernels of
// router.cuh, align.cuh, grouped_gemm.cuh and combine.cuh.
#include <stdint.h>
#include <stdlib.h>

#include <string>

#include "common/check.cuh"
#include "common/sm90a.cuh"
#include "moe.h"
#include "moe/align.cuh"
#include "moe/combine.cuh"
#include "moe/grouped_gemm.cuh"
#include "moe/grouped_gemm_sm90.cuh"
#include "moe/router.cuh"

namespace {

using bf16 = __nv_bfloat16;

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

cudaStream_t as_cuda(ocrvl_stream_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

extern "C" int32_t ocrvl_moe_router_logits(float* logits, const void* x, int64_t x_stride, const float* weight,
                                           int64_t num_tokens, int64_t hidden, int64_t num_logits,
                                           ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(num_tokens >= 0 && hidden > 0 && num_logits > 0 && x_stride >= hidden);
    OCRVL_CHECK_ARG(num_tokens <= INT32_MAX && hidden <= INT32_MAX && num_logits <= 65535LL * 64);
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(logits != nullptr && x != nullptr && weight != nullptr);
    const cudaStream_t s = as_cuda(stream);
    // OCRVL_MOE_ROUTER_TILED=1 runs the tiled kernel at every size: an A/B switch for
    // benches/moe.rs, read once per process.
    static const bool always_tiled = [] {
        const char* v = getenv("OCRVL_MOE_ROUTER_TILED");
        return v != nullptr && v[0] == '1';
    }();
    const bool split_k_fits = hidden % ocrvl::moe::kSplitChunk == 0 && x_stride % ocrvl::moe::kSplitChunk == 0 &&
                              aligned16(x) && aligned16(weight);
    const bool split_k_grid_fits = num_logits <= 65535LL * ocrvl::moe::kSplitLogits;
    if (!always_tiled && split_k_fits && split_k_grid_fits && num_tokens <= OCRVL_MOE_ROUTER_SPLIT_K_MAX_TOKENS) {
        const dim3 grid((unsigned)((num_tokens + ocrvl::moe::kSplitTokens - 1) / ocrvl::moe::kSplitTokens),
                        (unsigned)((num_logits + ocrvl::moe::kSplitLogits - 1) / ocrvl::moe::kSplitLogits));
        ocrvl::moe::router_logits_split_k_kernel<<<grid, ocrvl::moe::kSplitWarps * 32, 0, s>>>(
            logits, static_cast<const bf16*>(x), x_stride, weight, (int)num_tokens, (int)hidden, (int)num_logits);
        return ocrvl::launch_status();
    }
    const dim3 grid((unsigned)((num_tokens + ocrvl::moe::kLogitTokens - 1) / ocrvl::moe::kLogitTokens),
                    (unsigned)((num_logits + ocrvl::moe::kLogitCols - 1) / ocrvl::moe::kLogitCols));
    ocrvl::moe::router_logits_kernel<<<grid, 128, 0, s>>>(
        logits, static_cast<const bf16*>(x), x_stride, weight, (int)num_tokens, (int)hidden, (int)num_logits);
    return ocrvl::launch_status();
}

extern "C" int32_t ocrvl_moe_topk(int32_t* topk_ids, float* topk_weights, const float* logits, int64_t logits_stride,
                                  const int32_t* token_pool, const float* bias, int64_t num_tokens,
                                  int64_t num_experts, int64_t num_pools, int64_t top_k, float norm_min,
                                  ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(num_tokens >= 0 && num_tokens <= INT32_MAX);
    OCRVL_CHECK_ARG(num_experts > 0 && num_pools > 0 && top_k > 0 && top_k <= num_experts);
    OCRVL_CHECK_ARG(logits_stride >= num_experts * num_pools);
    OCRVL_CHECK_ARG(norm_min > 0.f);  // false for NaN as well
    if (num_experts > OCRVL_MOE_MAX_POOL_EXPERTS || top_k > OCRVL_MOE_MAX_TOP_K) return OCRVL_STATUS_UNSUPPORTED;
    if (num_pools * num_experts > INT32_MAX) return OCRVL_STATUS_UNSUPPORTED;
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(topk_ids != nullptr && topk_weights != nullptr && logits != nullptr);
    ocrvl::moe::topk_kernel<<<(unsigned)((num_tokens + 3) / 4), 128, 0, as_cuda(stream)>>>(
        topk_ids, topk_weights, logits, logits_stride, token_pool, bias, (int)num_tokens, (int)num_experts,
        (int)num_pools, (int)top_k, norm_min);
    return ocrvl::launch_status();
}

extern "C" int64_t ocrvl_moe_max_tiles(int64_t num_pairs, int64_t num_experts) {
    if (num_pairs <= 0 || num_experts <= 0) return 0;
    const int64_t bound = num_pairs < num_experts ? num_pairs : num_experts;
    return (num_pairs + OCRVL_MOE_BLOCK_M - 1) / OCRVL_MOE_BLOCK_M + bound;
}

extern "C" int32_t ocrvl_moe_align(int32_t* sorted_pairs, int32_t* pair_slot, int32_t* tile_expert,
                                   const int32_t* topk_ids, int64_t num_pairs, int64_t num_experts, int64_t max_tiles,
                                   ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(num_pairs >= 0 && num_experts > 0 && max_tiles >= 0);
    if (num_experts > OCRVL_MOE_MAX_EXPERTS) return OCRVL_STATUS_UNSUPPORTED;
    OCRVL_CHECK_ARG(max_tiles >= ocrvl_moe_max_tiles(num_pairs, num_experts));
    OCRVL_CHECK_ARG(max_tiles * OCRVL_MOE_BLOCK_M <= INT32_MAX);  // slots are int32
    if (max_tiles == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(sorted_pairs != nullptr && tile_expert != nullptr);
    OCRVL_CHECK_ARG(num_pairs == 0 || (pair_slot != nullptr && topk_ids != nullptr));
    ocrvl::moe::align_kernel<<<1, ocrvl::moe::kAlignThreads, 0, as_cuda(stream)>>>(
        sorted_pairs, pair_slot, tile_expert, topk_ids, (int)num_pairs, (int)num_experts, (int)max_tiles);
    return ocrvl::launch_status();
}

namespace {

// OCRVL_MOE_GEMM=mma|wgmma|wgmma2|wgmma-inflight|wgmma-inflight5 replaces OCRVL_MOE_GEMM_AUTO's
// choice in every call: an A/B switch for benches/moe.rs and the engine benches, read once per
// process. -1: not set.
int32_t auto_override() {
    static const int32_t choice = [] {
        const char* v = getenv("OCRVL_MOE_GEMM");
        if (v == nullptr) return -1;
        const std::string s(v);
        if (s == "mma") return (int32_t)OCRVL_MOE_GEMM_MMA;
        if (s == "wgmma") return (int32_t)OCRVL_MOE_GEMM_WGMMA;
        if (s == "wgmma2") return (int32_t)OCRVL_MOE_GEMM_WGMMA_2STAGE;
        if (s == "wgmma-inflight") return (int32_t)OCRVL_MOE_GEMM_WGMMA_INFLIGHT;
        if (s == "wgmma-inflight5") return (int32_t)OCRVL_MOE_GEMM_WGMMA_INFLIGHT5;
        return -1;
    }();
    return choice;
}

// OCRVL_MOE_GEMM_AUTO for bf16 weights: the 2-stage wgmma kernel once the step is
// prefill-sized, the mma.sync kernel below that (decode: about one mostly padded tile per
// expert, where the mma.sync kernel skips the padded m16 sub-tiles and the weight stream is the
// bound). Measured on the H100 (round 12, bench-moe, text pool gate/up / down): at 8192 tokens
// mma.sync 2432 / 1266 us, wgmma 4-stage 2038 / 1015, 2-stage 1936 / 1003 (vision pool 820 /
// 509, 665 / 479, 575 / 411); at 2048 tokens (4 tiles per expert) mma.sync 689 / 358 against
// 576 / 320; at 1024 (2.5 tiles per expert) all three within 2%.
int32_t auto_kernel(int64_t max_tiles, int64_t experts, int64_t n) {
    if (!ocrvl::sm90a_device() || n % ocrvl::moe::kWgmmaN != 0) return OCRVL_MOE_GEMM_MMA;
    const int32_t forced = auto_override();
    if (forced >= 0) return forced;
    return max_tiles >= OCRVL_MOE_WGMMA_MIN_TILES_PER_EXPERT * experts ? OCRVL_MOE_GEMM_WGMMA_2STAGE
                                                                       : OCRVL_MOE_GEMM_MMA;
}

// One wgmma kernel choice: the instantiation (ring depth, groups in flight, epilogue) and its
// dynamic shared memory.
struct WgmmaLaunch {
    void (*kernel)(bf16*, int64_t, const bf16*, int64_t, const int32_t*, int, const bf16*, const int32_t*, int, int,
                   int, int);
    int smem;
};

template <int kStages, int kInFlight>
WgmmaLaunch wgmma_instance(bool swiglu) {
    using namespace ocrvl::moe;
    return {swiglu ? grouped_gemm_wgmma_kernel<OCRVL_MOE_EPILOGUE_SWIGLU, kStages, kInFlight>
                   : grouped_gemm_wgmma_kernel<OCRVL_MOE_EPILOGUE_NONE, kStages, kInFlight>,
            wgmma_smem_bytes(kStages)};
}

WgmmaLaunch wgmma_launch(int32_t choice, bool swiglu) {
    switch (choice) {
        case OCRVL_MOE_GEMM_WGMMA_2STAGE: return wgmma_instance<2, 0>(swiglu);
        case OCRVL_MOE_GEMM_WGMMA_INFLIGHT: return wgmma_instance<4, 1>(swiglu);
        case OCRVL_MOE_GEMM_WGMMA_INFLIGHT5: return wgmma_instance<5, 1>(swiglu);
        default: return wgmma_instance<4, 0>(swiglu);  // OCRVL_MOE_GEMM_WGMMA
    }
}

// Checks the arguments both grouped GEMM entry points share, then launches the kernel for
// (epilogue, weight type). scales is NULL for bf16 weights.
template <bool kInt8>
int32_t launch_grouped_gemm(void* out, int64_t out_stride, const void* a, int64_t a_stride,
                            const int32_t* sorted_pairs, int32_t gather_top_k, const void* weight,
                            const float* scales, const int32_t* tile_expert, int64_t max_tiles,
                            int64_t expert_begin, int64_t expert_end, int64_t n, int64_t k, int32_t epilogue,
                            int32_t kernel_choice, ocrvl_stream_t stream) {
    using namespace ocrvl::moe;
    OCRVL_CHECK_ARG(max_tiles >= 0 && max_tiles <= 65535 && n > 0 && k > 0 && gather_top_k >= 0);
    OCRVL_CHECK_ARG(expert_begin >= 0 && expert_end > expert_begin && expert_end <= OCRVL_MOE_MAX_EXPERTS);
    OCRVL_CHECK_ARG(epilogue == OCRVL_MOE_EPILOGUE_NONE || epilogue == OCRVL_MOE_EPILOGUE_SWIGLU);
    OCRVL_CHECK_ARG(kernel_choice >= OCRVL_MOE_GEMM_AUTO && kernel_choice <= OCRVL_MOE_GEMM_WGMMA_INFLIGHT5);
    const int64_t out_cols = epilogue == OCRVL_MOE_EPILOGUE_SWIGLU ? n / 2 : n;
    OCRVL_CHECK_ARG(a_stride >= k && out_stride >= out_cols);
    OCRVL_CHECK_ARG(n <= INT32_MAX && k <= INT32_MAX);
    if (n % kGemmN != 0 || k % kGemmK != 0) return OCRVL_STATUS_UNSUPPORTED;
    if (kInt8 && kernel_choice > OCRVL_MOE_GEMM_MMA) return OCRVL_STATUS_UNSUPPORTED;
    if (kernel_choice == OCRVL_MOE_GEMM_AUTO)
        kernel_choice = kInt8 ? OCRVL_MOE_GEMM_MMA : auto_kernel(max_tiles, expert_end - expert_begin, n);
    const bool wgmma = kernel_choice != OCRVL_MOE_GEMM_MMA;
    if (wgmma && (n % kWgmmaN != 0 || !ocrvl::sm90a_device())) return OCRVL_STATUS_UNSUPPORTED;
    if (max_tiles == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(out != nullptr && a != nullptr && sorted_pairs != nullptr && weight != nullptr &&
                    tile_expert != nullptr);
    OCRVL_CHECK_ARG(!kInt8 || scales != nullptr);
    if (!aligned16(out) || !aligned16(a) || !aligned16(weight) || a_stride % 8 != 0 || out_stride % 2 != 0)
        return OCRVL_STATUS_UNSUPPORTED;
    if (kInt8 && !aligned16(scales)) return OCRVL_STATUS_UNSUPPORTED;
    const bool swiglu = epilogue == OCRVL_MOE_EPILOGUE_SWIGLU;
    if (wgmma) {
        const WgmmaLaunch l = wgmma_launch(kernel_choice, swiglu);
        cudaFuncSetAttribute(l.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, l.smem);
        const dim3 grid((unsigned)(n / kWgmmaN), (unsigned)max_tiles);
        l.kernel<<<grid, kWgmmaThreads, l.smem, as_cuda(stream)>>>(
            static_cast<bf16*>(out), out_stride, static_cast<const bf16*>(a), a_stride, sorted_pairs, gather_top_k,
            static_cast<const bf16*>(weight), tile_expert, (int)expert_begin, (int)expert_end, (int)n, (int)k);
        return ocrvl::launch_status();
    }
    const dim3 grid((unsigned)(n / kGemmN), (unsigned)max_tiles);
    const int smem = kInt8 ? kGemmSmemBytesInt8 : kGemmSmemBytes;
    auto kernel = swiglu ? grouped_gemm_kernel<OCRVL_MOE_EPILOGUE_SWIGLU, kInt8>
                         : grouped_gemm_kernel<OCRVL_MOE_EPILOGUE_NONE, kInt8>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    kernel<<<grid, kGemmThreads, smem, as_cuda(stream)>>>(
        static_cast<bf16*>(out), out_stride, static_cast<const bf16*>(a), a_stride, sorted_pairs, gather_top_k, weight,
        scales, tile_expert, (int)expert_begin, (int)expert_end, (int)n, (int)k);
    return ocrvl::launch_status();
}

}  // namespace

extern "C" int32_t ocrvl_moe_grouped_gemm(void* out, int64_t out_stride, const void* a, int64_t a_stride,
                                          const int32_t* sorted_pairs, int32_t gather_top_k, const void* weight,
                                          const int32_t* tile_expert, int64_t max_tiles, int64_t expert_begin,
                                          int64_t expert_end, int64_t n, int64_t k, int32_t epilogue,
                                          ocrvl_stream_t stream) {
    return launch_grouped_gemm<false>(out, out_stride, a, a_stride, sorted_pairs, gather_top_k, weight, nullptr,
                                      tile_expert, max_tiles, expert_begin, expert_end, n, k, epilogue,
                                      OCRVL_MOE_GEMM_AUTO, stream);
}

extern "C" int32_t ocrvl_moe_grouped_gemm_with(void* out, int64_t out_stride, const void* a, int64_t a_stride,
                                               const int32_t* sorted_pairs, int32_t gather_top_k, const void* weight,
                                               const int32_t* tile_expert, int64_t max_tiles, int64_t expert_begin,
                                               int64_t expert_end, int64_t n, int64_t k, int32_t epilogue,
                                               int32_t kernel, ocrvl_stream_t stream) {
    return launch_grouped_gemm<false>(out, out_stride, a, a_stride, sorted_pairs, gather_top_k, weight, nullptr,
                                      tile_expert, max_tiles, expert_begin, expert_end, n, k, epilogue, kernel,
                                      stream);
}

extern "C" int32_t ocrvl_moe_grouped_gemm_w8(void* out, int64_t out_stride, const void* a, int64_t a_stride,
                                             const int32_t* sorted_pairs, int32_t gather_top_k, const int8_t* weight,
                                             const float* scales, const int32_t* tile_expert, int64_t max_tiles,
                                             int64_t expert_begin, int64_t expert_end, int64_t n, int64_t k,
                                             int32_t epilogue, ocrvl_stream_t stream) {
    return launch_grouped_gemm<true>(out, out_stride, a, a_stride, sorted_pairs, gather_top_k, weight, scales,
                                     tile_expert, max_tiles, expert_begin, expert_end, n, k, epilogue,
                                     OCRVL_MOE_GEMM_MMA, stream);
}

extern "C" int32_t ocrvl_moe_combine(void* out, int64_t out_stride, const void* expert_out,
                                     int64_t expert_out_stride, const int32_t* pair_slot,
                                     const float* topk_weights, const void* shared, int64_t shared_stride,
                                     int64_t num_tokens, int64_t top_k, int64_t hidden, ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(num_tokens >= 0 && num_tokens <= INT32_MAX && top_k > 0 && hidden > 0);
    OCRVL_CHECK_ARG(out_stride >= hidden && expert_out_stride >= hidden);
    OCRVL_CHECK_ARG(shared == nullptr || shared_stride >= hidden);
    if (top_k > OCRVL_MOE_MAX_TOP_K || hidden > INT32_MAX) return OCRVL_STATUS_UNSUPPORTED;
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(out != nullptr && expert_out != nullptr && pair_slot != nullptr && topk_weights != nullptr);
    if (hidden % 8 != 0 || !aligned16(out) || !aligned16(expert_out) || out_stride % 8 != 0 ||
        expert_out_stride % 8 != 0)
        return OCRVL_STATUS_UNSUPPORTED;
    if (shared != nullptr && (!aligned16(shared) || shared_stride % 8 != 0)) return OCRVL_STATUS_UNSUPPORTED;
    ocrvl::moe::combine_kernel<<<(unsigned)num_tokens, 128, 0, as_cuda(stream)>>>(
        static_cast<bf16*>(out), out_stride, static_cast<const bf16*>(expert_out), expert_out_stride, pair_slot,
        topk_weights, static_cast<const bf16*>(shared), shared_stride, (int)top_k, (int)hidden);
    return ocrvl::launch_status();
}

namespace ocrvl::moe {

// One thread per token. Grid: (ceil(num_tokens / 256)), Block: (256).
__global__ void token_pool_kernel(int32_t* __restrict__ pool, const int32_t* __restrict__ ids, int num_tokens,
                                  int num_text_prefix, OcrvlMoeVisionIds vision) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= num_tokens) return;
    int32_t p = 0;
    if (t >= num_text_prefix) {
        const int32_t id = ids[t];
        for (int i = 0; i < vision.count; ++i) p |= (id == vision.ids[i]);
    }
    pool[t] = p;
}

}  // namespace ocrvl::moe

extern "C" int32_t ocrvl_moe_token_pool(int32_t* pool, const int32_t* ids, int64_t num_tokens,
                                        int64_t num_text_prefix, OcrvlMoeVisionIds vision_ids,
                                        ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(num_tokens >= 0 && num_tokens <= INT32_MAX && num_text_prefix >= 0);
    OCRVL_CHECK_ARG(vision_ids.count >= 0 && vision_ids.count <= OCRVL_MOE_MAX_VISION_IDS);
    if (num_tokens == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(pool != nullptr && ids != nullptr);
    const int prefix = (int)(num_text_prefix < num_tokens ? num_text_prefix : num_tokens);
    const unsigned blocks = (unsigned)((num_tokens + 255) / 256);
    ocrvl::moe::token_pool_kernel<<<blocks, 256, 0, as_cuda(stream)>>>(pool, ids, (int)num_tokens, prefix,
                                                                        vision_ids);
    return ocrvl::launch_status();
}
