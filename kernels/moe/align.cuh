// Sorting the (token, k) pairs by expert into tiles of kBlockM slots (kernels/include/moe.h
// step 3). One block of 1024 threads does it all: count per expert, lay the experts' runs out
// in tiles, then a stable rank of every pair within its expert, 1024 pairs at a time.
//
// The rank of pair i within expert e is the number of earlier pairs of e: pairs of earlier
// chunks (a running cursor per expert), of earlier warps in the chunk (each warp's count per
// expert, summed over the warps before), and of earlier lanes in the warp (__match_any_sync).
// So the order is the pairs' order and the same on every run. For a decode batch of 256
// tokens x top-6 that is 2 chunks; for an 8192-token prefill, 48.
#pragma once
#include <stdint.h>

#include "moe.h"

namespace ocrvl::moe {

constexpr int kBlockM = OCRVL_MOE_BLOCK_M;
constexpr int kAlignThreads = 1024;
constexpr int kAlignWarps = kAlignThreads / 32;

__global__ void __launch_bounds__(kAlignThreads) align_kernel(int32_t* __restrict__ sorted_pairs,
                                                               int32_t* __restrict__ pair_slot,
                                                               int32_t* __restrict__ tile_expert,
                                                               const int32_t* __restrict__ topk_ids, int num_pairs,
                                                               int num_experts, int max_tiles) {
    __shared__ int count[OCRVL_MOE_MAX_EXPERTS];
    __shared__ int first_tile[OCRVL_MOE_MAX_EXPERTS];
    __shared__ int cursor[OCRVL_MOE_MAX_EXPERTS];
    __shared__ int warp_count[kAlignWarps][OCRVL_MOE_MAX_EXPERTS];
    __shared__ int used_tiles;
    const int tid = threadIdx.x;
    const int lane = tid % 32, warp = tid / 32;

    for (int e = tid; e < num_experts; e += kAlignThreads) {
        count[e] = 0;
        cursor[e] = 0;
    }
    __syncthreads();
    for (int i = tid; i < num_pairs; i += kAlignThreads) {
        const int e = topk_ids[i];
        if (e >= 0 && e < num_experts) atomicAdd(&count[e], 1);
    }
    __syncthreads();
    if (tid == 0) {  // at most 256 experts: a serial scan is shorter than a parallel one's barriers
        int tiles = 0;
        for (int e = 0; e < num_experts; ++e) {
            first_tile[e] = tiles;
            tiles += (count[e] + kBlockM - 1) / kBlockM;
        }
        used_tiles = tiles;
    }
    __syncthreads();
    for (int e = tid; e < num_experts; e += kAlignThreads) {
        const int end = first_tile[e] + (count[e] + kBlockM - 1) / kBlockM;
        for (int j = first_tile[e]; j < end; ++j) tile_expert[j] = e;
    }
    for (int j = used_tiles + tid; j < max_tiles; j += kAlignThreads) tile_expert[j] = -1;
    const int64_t slots = (int64_t)max_tiles * kBlockM;
    for (int64_t s = tid; s < slots; s += kAlignThreads) sorted_pairs[s] = -1;
    // The -1 fill above and the pair writes below may hit one slot from two threads: the
    // barriers between them order the block's global writes.
    __syncthreads();

    const unsigned lanes_before = (1u << lane) - 1u;
    for (int base = 0; base < num_pairs; base += kAlignThreads) {
        for (int idx = tid; idx < kAlignWarps * num_experts; idx += kAlignThreads)
            warp_count[idx / num_experts][idx % num_experts] = 0;
        const int i = base + tid;
        const int e = i < num_pairs ? topk_ids[i] : -1;
        const bool valid = e >= 0 && e < num_experts;
        const int key = valid ? e : -1;
        const unsigned peers = __match_any_sync(0xffffffffu, key);
        __syncthreads();  // warp_count zeroed
        if (valid && (peers & lanes_before) == 0) warp_count[warp][e] = __popc(peers);
        __syncthreads();
        if (valid) {
            int rank = cursor[e] + __popc(peers & lanes_before);
            for (int w = 0; w < warp; ++w) rank += warp_count[w][e];
            const int slot = first_tile[e] * kBlockM + rank;
            sorted_pairs[slot] = i;
            pair_slot[i] = slot;
        } else if (i < num_pairs) {
            pair_slot[i] = -1;
        }
        __syncthreads();  // every rank read the cursors
        for (int x = tid; x < num_experts; x += kAlignThreads) {
            int add = 0;
            for (int w = 0; w < kAlignWarps; ++w) add += warp_count[w][x];
            cursor[x] += add;
        }
        __syncthreads();
    }
}

}  // namespace ocrvl::moe
