// The experts' grouped GEMM (kernels/include/moe.h step 4): bf16 tensor-core MMA (mma.sync
// m16n8k16, f32 accumulators) over tiles of kBlockM sorted slots x kBlockN output columns, each
// tile multiplying its slots' rows by its expert's weight.
//
// Block: 128 threads = 4 warps as 2 (m) x 2 (n); a warp owns 32 rows x 64 columns: 2 m16
// tiles x 8 n8 tiles, 64 f32 accumulators per thread. k advances 64 at a time through a
// 3-stage cp.async ring in shared memory (A 64x64 and B 128x64 bf16 per stage: 24 KiB, 72 KiB
// in all). Rows of 64 bf16 are 8 chunks of 16 bytes stored at chunk ^ (row % 8), so that the
// 8 row addresses of each ldmatrix hit 8 distinct bank groups.
//
// Decode (256 tokens x top-6 over 64 experts: ~24 slots per expert) gives one mostly padded
// tile per expert: the kernel then streams each expert's weight once, which is what bounds
// it; prefill gives many full tiles per expert.
//
// kInt8 (`--quantization wint8`, weight-only): the weight is int8 with one f32 scale per
// expert row. Its stages hold int8 rows of 64 bytes (8 KiB per stage, unswizzled: the copy and
// the conversion both read a warp's 8 rows as 512 contiguous bytes); after a stage lands, the
// block converts it into one bf16 buffer laid out as a bf16 stage (int8 values are exact in
// bf16), and the MMAs read that. The epilogue multiplies the f32 sums by the row's scale.
// Half the weight bytes of bf16, which is what bounds decode.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include "attention/ptx.cuh"
#include "moe.h"

namespace ocrvl::moe {

constexpr int kGemmM = OCRVL_MOE_BLOCK_M;
constexpr int kGemmN = OCRVL_MOE_BLOCK_N;
constexpr int kGemmK = OCRVL_MOE_BLOCK_K;
constexpr int kGemmStages = 3;
constexpr int kGemmThreads = 128;
constexpr int kStageA = kGemmM * kGemmK;  // bf16 elements
constexpr int kStageB = kGemmN * kGemmK;
constexpr int kGemmSmemBytes = kGemmStages * (kStageA + kStageB) * 2;
// int8 weights go through the same 3-stage ring as bf16. Measured on the H100 (round 11,
// bench-moe, text experts at decode 128 / 256, one call): 6 stages (112 KiB of shared memory, so fewer blocks per SM)
// took 348.5 / 362.3 us for gate/up and 179.0 / 184.9 for down, against 276.9 / 291.2 and
// 154.9 / 162.5 us at 3 stages. So more k steps in flight per block did not pay for the
// blocks lost; the 3-stage ring streams the int8 bytes at 55-62% of the copy rate.
// The A stages (bf16), the int8 B stages, one bf16 B buffer: 64 KiB.
constexpr int kGemmSmemBytesInt8 = kGemmStages * kStageA * 2 + kGemmStages * kStageB + kStageB * 2;

// Element offset of (row, 16-byte chunk) in a stage of 64-column rows, swizzled.
__device__ __forceinline__ int swizzled(int row, int chunk) { return row * kGemmK + ((chunk ^ (row & 7)) << 3); }

// Waits until at most kGemmStages - 2 stages are still in flight: the oldest one has landed.
__device__ __forceinline__ void cp_async_wait_stages() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kGemmStages - 2));
}

// Converts 16 int8 weights (one 16-byte chunk) to bf16, exactly, as two 16-byte chunks.
__device__ __forceinline__ void int8x16_to_bf16(const uint4& in, uint4& lo, uint4& hi) {
    const int8_t* q = reinterpret_cast<const int8_t*>(&in);
    uint32_t* l = reinterpret_cast<uint32_t*>(&lo);
    uint32_t* h = reinterpret_cast<uint32_t*>(&hi);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        l[i] = attn::pack_bf16x2((float)q[2 * i], (float)q[2 * i + 1]);
        h[i] = attn::pack_bf16x2((float)q[8 + 2 * i], (float)q[8 + 2 * i + 1]);
    }
}

// weight: bf16 [E, n, k], or int8 [E, n, k] with scales f32 [E, n] when kInt8.
template <int kEpilogue, bool kInt8>
__global__ void __launch_bounds__(kGemmThreads) grouped_gemm_kernel(
    __nv_bfloat16* __restrict__ out, int64_t out_stride, const __nv_bfloat16* __restrict__ a, int64_t a_stride,
    const int32_t* __restrict__ sorted_pairs, int gather_top_k, const void* __restrict__ weight,
    const float* __restrict__ scales, const int32_t* __restrict__ tile_expert, int expert_begin, int expert_end,
    int n, int k) {
    using attn::cp_async_16;
    using attn::ldmatrix_x4;
    using attn::mma_bf16_16816;
    using attn::smem_u32;
    const int tile = blockIdx.y;
    const int expert = tile_expert[tile];
    if (expert < expert_begin || expert >= expert_end) return;
    extern __shared__ __align__(128) __nv_bfloat16 smem[];
    __nv_bfloat16* sa = smem;
    // bf16: the B stages. int8: the one converted B buffer, after the int8 stages (sq).
    __nv_bfloat16* sb = smem + kGemmStages * kStageA;
    int8_t* sq = reinterpret_cast<int8_t*>(smem + kGemmStages * kStageA);
    if (kInt8) sb = reinterpret_cast<__nv_bfloat16*>(sq + kGemmStages * kStageB);

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int warp_m = warp % 2, warp_n = warp / 2;
    const int n0 = blockIdx.x * kGemmN;
    const int64_t slot0 = (int64_t)tile * kGemmM;
    const int64_t w_offset = (int64_t)(expert - expert_begin) * n * k + (int64_t)n0 * k;  // elements
    const __nv_bfloat16* w = static_cast<const __nv_bfloat16*>(weight) + w_offset;
    const int8_t* wq = static_cast<const int8_t*>(weight) + w_offset;

    // This thread copies A rows tid/8 + 16j (j < 4) and B rows tid/8 + 16j (j < 8), chunk tid%8.
    const int chunk = tid % 8, row_base = tid / 8;
    const __nv_bfloat16* a_row[4];
    bool a_valid[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int64_t slot = slot0 + row_base + 16 * j;
        const int pair = sorted_pairs[slot];
        a_valid[j] = pair >= 0;
        const int64_t src = gather_top_k > 0 ? pair / gather_top_k : slot;
        a_row[j] = a_valid[j] ? a + src * a_stride : a;
    }
    auto load_stage = [&](int stage, int kt) {
        const int kc = kt * kGemmK + chunk * 8;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int r = row_base + 16 * j;
            cp_async_16(smem_u32(sa + stage * kStageA + swizzled(r, chunk)), a_row[j] + kc, a_valid[j]);
        }
        if (kInt8) {
            // 128 rows x 4 chunks of 16 int8: this thread's rows tid/4 + 32j (j < 4), chunk tid%4.
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int r = tid / 4 + 32 * j, c = tid % 4;
                cp_async_16(smem_u32(sq + stage * kStageB + r * kGemmK + c * 16),
                            wq + (int64_t)r * k + kt * kGemmK + c * 16, true);
            }
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int r = row_base + 16 * j;
                cp_async_16(smem_u32(sb + stage * kStageB + swizzled(r, chunk)), w + (int64_t)r * k + kc, true);
            }
        }
    };
    // int8: the landed stage's rows into the bf16 buffer, each 16-byte chunk to two swizzled
    // bf16 chunks (the same rows and chunks this thread copied).
    auto convert_stage = [&](int stage) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int r = tid / 4 + 32 * j, c = tid % 4;
            const uint4 q = *reinterpret_cast<const uint4*>(sq + stage * kStageB + r * kGemmK + c * 16);
            uint4 lo, hi;
            int8x16_to_bf16(q, lo, hi);
            *reinterpret_cast<uint4*>(sb + swizzled(r, 2 * c)) = lo;
            *reinterpret_cast<uint4*>(sb + swizzled(r, 2 * c + 1)) = hi;
        }
    };

    // Padding slots end an expert's run of slots, so an m16 sub-tile whose first slot is
    // padding is padding throughout: its warp skips that sub-tile's ldmatrix and MMAs. A decode
    // tile holds ~12 live slots of 64 (128 tokens x top-6 over 64 experts), so 3 of its 4
    // sub-tiles are skipped and the tensor work stops competing with the weight stream.
    // Warp-uniform (it depends on warp_m and mi alone). Measured within 1% of computing every
    // sub-tile (round 9, docs/notes/moe_kernels.md version 2); kept as it costs nothing.
    bool live[2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) live[mi] = sorted_pairs[slot0 + warp_m * 32 + mi * 16] >= 0;
    const bool warp_live = live[0] || live[1];

    float acc[2][8][4] = {};
    const int k_tiles = k / kGemmK;
#pragma unroll
    for (int s = 0; s < kGemmStages - 1; ++s) {
        if (s < k_tiles) load_stage(s, s);
        attn::cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait_stages();
        __syncthreads();  // stage kt landed for every thread; stage kt-1 is free
        const int next = kt + kGemmStages - 1;
        if (next < k_tiles) load_stage(next % kGemmStages, next);
        attn::cp_async_commit();
        if (kInt8) {
            // Every warp converts (the live warps need all 128 rows); the sync above also
            // ordered the previous tile's MMAs before this overwrite of the buffer.
            convert_stage(kt % kGemmStages);
            __syncthreads();
        }

        if (!warp_live) continue;
        const __nv_bfloat16* ta = sa + (kt % kGemmStages) * kStageA;
        const __nv_bfloat16* tb = kInt8 ? sb : sb + (kt % kGemmStages) * kStageB;
#pragma unroll
        for (int kk = 0; kk < kGemmK / 16; ++kk) {
            uint32_t af[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r = warp_m * 32 + mi * 16 + lane % 16;
                if (live[mi]) ldmatrix_x4(af[mi], smem_u32(ta + swizzled(r, kk * 2 + lane / 16)));
            }
#pragma unroll
            for (int np = 0; np < 4; ++np) {  // n8 tiles 2np and 2np+1
                uint32_t bf[4];
                const int r = warp_n * 64 + np * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(bf, smem_u32(tb + swizzled(r, kk * 2 + ((lane >> 3) & 1))));
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    if (!live[mi]) continue;
                    mma_bf16_16816(acc[mi][2 * np], af[mi], bf[0], bf[1]);
                    mma_bf16_16816(acc[mi][2 * np + 1], af[mi], bf[2], bf[3]);
                }
            }
        }
    }
    attn::cp_async_wait_all();

    if (kInt8) {
        // acc[., c] *= scale[c]: columns 2t, 2t+1 of each n8 tile, the same for both rows.
        const float* srow = scales + (int64_t)(expert - expert_begin) * n + n0 + warp_n * 64;
        const int t4 = lane % 4;
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
            const float2 sc = *reinterpret_cast<const float2*>(srow + ni * 8 + 2 * t4);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                acc[mi][ni][0] *= sc.x;
                acc[mi][ni][1] *= sc.y;
                acc[mi][ni][2] *= sc.x;
                acc[mi][ni][3] *= sc.y;
            }
        }
    }

    // Epilogue: d[0], d[1] are row g, columns 2t, 2t+1 of an n8 tile; d[2], d[3] row g + 8.
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = warp_m * 32 + mi * 16 + g + 8 * half;
            const int64_t slot = slot0 + r;
            if (sorted_pairs[slot] < 0) continue;  // padding: never read back
            __nv_bfloat16* orow = out + slot * out_stride;
            if (kEpilogue == OCRVL_MOE_EPILOGUE_NONE) {
#pragma unroll
                for (int ni = 0; ni < 8; ++ni) {
                    const int c = n0 + warp_n * 64 + ni * 8 + 2 * t;
                    *reinterpret_cast<uint32_t*>(orow + c) =
                        attn::pack_bf16x2(acc[mi][ni][2 * half], acc[mi][ni][2 * half + 1]);
                }
            } else {
                // n8 tile 2p holds gate rows, 2p+1 the up rows of the same 8 features.
#pragma unroll
                for (int p = 0; p < 4; ++p) {
                    float h[2];
#pragma unroll
                    for (int q = 0; q < 2; ++q) {
                        const float gate = __bfloat162float(__float2bfloat16(acc[mi][2 * p][2 * half + q]));
                        const float up = __bfloat162float(__float2bfloat16(acc[mi][2 * p + 1][2 * half + q]));
                        const float act = __bfloat162float(__float2bfloat16(gate / (1.f + expf(-gate))));
                        h[q] = act * up;
                    }
                    const int c = (n0 + warp_n * 64) / 2 + p * 8 + 2 * t;
                    *reinterpret_cast<uint32_t*>(orow + c) = attn::pack_bf16x2(h[0], h[1]);
                }
            }
        }
    }
}

}  // namespace ocrvl::moe
