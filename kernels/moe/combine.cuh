// The weighted sum of each token's expert outputs, plus the shared experts' output, back in
// token order (kernels/include/moe.h step 5). One block of 128 threads per token; a thread
// moves 8 columns (16 bytes) at a time and sums the top_k rows in f32 in k order, then rounds
// once. transformers instead rounds each weighted expert output to bf16 and adds them into a
// bf16 buffer one expert at a time; the f32 sum is the closer one to its f32 run.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include "moe.h"

namespace ocrvl::moe {

__global__ void __launch_bounds__(128) combine_kernel(__nv_bfloat16* __restrict__ out, int64_t out_stride,
                                                      const __nv_bfloat16* __restrict__ expert_out,
                                                      int64_t expert_out_stride, const int32_t* __restrict__ pair_slot,
                                                      const float* __restrict__ topk_weights,
                                                      const __nv_bfloat16* __restrict__ shared, int64_t shared_stride,
                                                      int top_k, int hidden) {
    const int t = blockIdx.x;
    __shared__ int slot[OCRVL_MOE_MAX_TOP_K];
    __shared__ float weight[OCRVL_MOE_MAX_TOP_K];
    if (threadIdx.x < top_k) {
        slot[threadIdx.x] = pair_slot[(int64_t)t * top_k + threadIdx.x];
        weight[threadIdx.x] = topk_weights[(int64_t)t * top_k + threadIdx.x];
    }
    __syncthreads();
    for (int c = threadIdx.x * 8; c < hidden; c += blockDim.x * 8) {
        float acc[8] = {};
        if (shared != nullptr) {
            const uint4 v = *reinterpret_cast<const uint4*>(shared + (int64_t)t * shared_stride + c);
            const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&v);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] = __bfloat162float(b[i]);
        }
        float routed[8] = {};
        for (int k = 0; k < top_k; ++k) {
            if (slot[k] < 0) continue;
            const uint4 v = *reinterpret_cast<const uint4*>(expert_out + (int64_t)slot[k] * expert_out_stride + c);
            const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&v);
#pragma unroll
            for (int i = 0; i < 8; ++i) routed[i] = fmaf(weight[k], __bfloat162float(b[i]), routed[i]);
        }
        uint4 o;
        __nv_bfloat16* ob = reinterpret_cast<__nv_bfloat16*>(&o);
#pragma unroll
        for (int i = 0; i < 8; ++i) ob[i] = __float2bfloat16(routed[i] + acc[i]);
        *reinterpret_cast<uint4*>(out + (int64_t)t * out_stride + c) = o;
    }
}

}  // namespace ocrvl::moe
