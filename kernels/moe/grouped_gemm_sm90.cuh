// The experts' grouped GEMM on Hopper's warpgroup MMA (wgmma, sm_90a): the same contract as
// grouped_gemm.cuh (moe.h step 4, bf16 weights), for prefill-sized steps, where every expert
// has many full 64-slot tiles and the mma.sync kernel ran at 37% of the bf16 rate (round 9).
//
// Block: 256 threads = 2 warpgroups; one 64-slot tile (the align kernel's unit) x kWgmmaN = 256
// output columns; warpgroup w owns columns 128w..128w+127: one m64n128k16 wgmma per k16 with
// both operands in shared memory, 64 f32 accumulators per thread. Against the mma.sync kernel's
// 64 x 128 tile, each A stage serves twice the columns, and the tensor cores read the operands
// straight from shared memory (no ldmatrix through registers).
//
// k advances 64 at a time through a kStages-deep cp.async ring (A 64x64, B 256x64 bf16: 40 KiB
// a stage). Every thread copies: A's rows are gathered token rows, which a tensor map cannot
// express, so no TMA. Rows of 64 bf16 are 128 bytes with chunk c of row r stored at
// c ^ (r % 8): grouped_gemm.cuh's layout, which is exactly wgmma's 128-byte swizzle when a
// stage starts on a 1024-byte boundary (8-row atoms of 1024 bytes; descriptors: SBO 1024, a
// k16 step adds 32 bytes).
//
// Per k step, one __syncthreads: wait until the wgmmas that read the stage refilled next are
// done, wait for this thread's copies of the current stage, fence them to the async proxy,
// barrier, issue the refill, then this step's 4 wgmmas (one commit group).
//
// kInFlight wgmma groups stay in flight across that barrier, and copies run
// kLead = kStages - 1 - kInFlight steps ahead of their use:
//   kStages 4, kInFlight 0 (WGMMA, 161 KiB, one block per SM): the refill targets the stage
//     the previous step read, so each step waits for all its wgmmas: the tensor pipe drains
//     once per step (4 wgmmas of m64n128k16).
//   kStages 2, kInFlight 0 (WGMMA_2STAGE, 81 KiB, two blocks per SM): drains as well, but one
//     block's drain, epilogue and prologue hide behind the other's mainloop. AUTO's choice:
//     the faster of these two on the H100 (round 12: 399 against 379 TFLOP/s for the text
//     gate/up at 8192 tokens, 448 against 388 for the vision one; moe.cu), both near half the
//     bf16 rate.
//   kStages 4 or 5, kInFlight 1 (WGMMA_INFLIGHT, WGMMA_INFLIGHT5; 161 / 201 KiB, one block
//     per SM): the refill goes into the stage read two steps back, so step kt - 1's group is
//     still running while step kt's is issued and the pipe need not drain.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include "attention/fa3_ptx.cuh"
#include "attention/ptx.cuh"
#include "moe.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define OCRVL_MOE_WGMMA_DEVICE 1
#endif

namespace ocrvl::moe {

constexpr int kWgmmaN = 256;  // output columns per block: n must be a multiple
constexpr int kWgmmaThreads = 256;
constexpr int kWgmmaStageA = OCRVL_MOE_BLOCK_M * OCRVL_MOE_BLOCK_K;  // bf16 elements
constexpr int kWgmmaStageB = kWgmmaN * OCRVL_MOE_BLOCK_K;
// Dynamic shared memory: the stages plus 1 KiB to round the base up to 1024 bytes.
constexpr int wgmma_smem_bytes(int stages) { return stages * (kWgmmaStageA + kWgmmaStageB) * 2 + 1024; }

template <int kEpilogue, int kStages, int kInFlight>
__global__ void __launch_bounds__(kWgmmaThreads) grouped_gemm_wgmma_kernel(
    __nv_bfloat16* __restrict__ out, int64_t out_stride, const __nv_bfloat16* __restrict__ a, int64_t a_stride,
    const int32_t* __restrict__ sorted_pairs, int gather_top_k, const __nv_bfloat16* __restrict__ weight,
    const int32_t* __restrict__ tile_expert, int expert_begin, int expert_end, int n, int k) {
#ifdef OCRVL_MOE_WGMMA_DEVICE
    using namespace ocrvl::attn::fa3;
    using attn::cp_async_16;
    using attn::smem_u32;
    constexpr int kK = OCRVL_MOE_BLOCK_K;
    const int tile = blockIdx.y;
    const int expert = tile_expert[tile];
    if (expert < expert_begin || expert >= expert_end) return;
    extern __shared__ uint8_t smem_raw[];
    __nv_bfloat16* smem =
        reinterpret_cast<__nv_bfloat16*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
    __nv_bfloat16* sa = smem;                             // kStages x [64][64]
    __nv_bfloat16* sb = smem + kStages * kWgmmaStageA;    // kStages x [256][64]

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wg = warp / 4, warp_in_wg = warp % 4;
    const int n0 = blockIdx.x * kWgmmaN;
    const int64_t slot0 = (int64_t)tile * OCRVL_MOE_BLOCK_M;
    const __nv_bfloat16* w = weight + (int64_t)(expert - expert_begin) * n * k + (int64_t)n0 * k;

    // This thread copies A rows tid/8 + 32j (j < 2) and B rows tid/8 + 32j (j < 8), chunk tid%8.
    const int chunk = tid % 8, row_base = tid / 8;
    const __nv_bfloat16* a_row[2];
    bool a_valid[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const int64_t slot = slot0 + row_base + 32 * j;
        const int pair = sorted_pairs[slot];
        a_valid[j] = pair >= 0;
        const int64_t src = gather_top_k > 0 ? pair / gather_top_k : slot;
        a_row[j] = a_valid[j] ? a + src * a_stride : a;
    }
    auto swz = [](int row, int c) { return row * kK + ((c ^ (row & 7)) << 3); };
    auto load_stage = [&](int stage, int kt) {
        const int kc = kt * kK + chunk * 8;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int r = row_base + 32 * j;
            cp_async_16(smem_u32(sa + stage * kWgmmaStageA + swz(r, chunk)), a_row[j] + kc, a_valid[j]);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int r = row_base + 32 * j;
            cp_async_16(smem_u32(sb + stage * kWgmmaStageB + swz(r, chunk)), w + (int64_t)r * k + kc, true);
        }
    };

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    static_assert(kInFlight == 0 || kStages >= 3, "a group in flight needs a stage of its own");
    constexpr int kLead = kStages - 1 - kInFlight;  // k steps between a stage's copy and its use
    const int k_tiles = k / kK;
#pragma unroll
    for (int s = 0; s < kLead; ++s) {
        if (s < k_tiles) load_stage(s, s);
        attn::cp_async_commit();
    }
    const uint32_t sa_addr = smem_u32(sa);
    const uint32_t sb_addr = smem_u32(sb) + wg * 128 * kK * 2;  // this warpgroup's 128 B rows
    for (int kt = 0; kt < k_tiles; ++kt) {
        // The stage refilled below was last read by step kt + kLead - kStages = kt - 1 -
        // kInFlight: its wgmmas must be done in both warpgroups (each waits here, and the
        // barrier orders both waits before any thread's refill).
        wgmma_wait<kInFlight>();
        asm volatile("cp.async.wait_group %0;\n" ::"n"(kLead - 1));  // step kt's copies landed
        fence_proxy_async();  // this thread's landed copies, visible to wgmma's operand reads
        __syncthreads();
        const int next = kt + kLead;
        if (next < k_tiles) load_stage(next % kStages, next);
        attn::cp_async_commit();

        const int stage = kt % kStages;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kK / 16; ++kk) {
            const uint64_t da = make_desc_sw128(sa_addr + stage * kWgmmaStageA * 2 + kk * 32, 16, 1024);
            const uint64_t db = make_desc_sw128(sb_addr + stage * kWgmmaStageB * 2 + kk * 32, 16, 1024);
            wgmma_m64n128k16_ss(acc, da, db, 1);
        }
        wgmma_commit();
    }
    wgmma_wait<0>();
    attn::cp_async_wait_all();
#pragma unroll
    for (int i = 0; i < 64; ++i) reg_fence(acc[i]);

    // Epilogue. Warp w of the warpgroup holds tile rows 16w..16w+15; acc[4j + 0..1] are row
    // g, columns 8j + 2t..+1 of the warpgroup's 128, acc[4j + 2..3] row g + 8.
    const int g = lane / 4, t = lane % 4;
    const int col0 = n0 + wg * 128;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = warp_in_wg * 16 + g + 8 * half;
        const int64_t slot = slot0 + r;
        if (sorted_pairs[slot] < 0) continue;  // padding: never read back
        __nv_bfloat16* orow = out + slot * out_stride;
        if (kEpilogue == OCRVL_MOE_EPILOGUE_NONE) {
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                const int c = col0 + 8 * j + 2 * t;
                *reinterpret_cast<uint32_t*>(orow + c) =
                    attn::pack_bf16x2(acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]);
            }
        } else {
            // n8 tile 2p holds gate rows, 2p + 1 the up rows of the same 8 features.
#pragma unroll
            for (int p = 0; p < 8; ++p) {
                float h[2];
#pragma unroll
                for (int q = 0; q < 2; ++q) {
                    const float gate = __bfloat162float(__float2bfloat16(acc[4 * (2 * p) + 2 * half + q]));
                    const float up = __bfloat162float(__float2bfloat16(acc[4 * (2 * p + 1) + 2 * half + q]));
                    const float act = __bfloat162float(__float2bfloat16(gate / (1.f + expf(-gate))));
                    h[q] = act * up;
                }
                const int c = col0 / 2 + p * 8 + 2 * t;
                *reinterpret_cast<uint32_t*>(orow + c) = attn::pack_bf16x2(h[0], h[1]);
            }
        }
    }
#endif
}

}  // namespace ocrvl::moe
