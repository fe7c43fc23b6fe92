// Paged decode attention, one CTA per (split, kv head, sequence), all `group` (1..8) query
// heads of the kv head in that CTA, so each K/V byte is read from memory once.
//
// Algorithm (FlashDecoding with the GQA group in the MMA's M dimension):
//   The CTA's key range [start, end) (the whole sequence, or one split of it) is streamed in
//   tiles of kTileKeys = 64 keys. 128 threads copy a tile's K and V rows (256 bytes per key
//   and head) with 16-byte cp.async into a kStages-deep shared-memory ring, gathering rows
//   through the block table (entry = block_tables[s][key / block_size]); the entries a tile
//   needs are loaded into registers one tile ahead. Rows past `end` are zero-filled, never
//   read. Each of the 4 warps takes 16 keys of a tile and keeps its own online softmax:
//     S[8 heads x 16 keys]  = q[8 x 128] . K^T   mma.m16n8k16, q in rows 0..7 (8..15 zero;
//                                                rows group..7 zero too when group < 8)
//     P = exp2(S * scale * log2(e) - m), running max m and sum l per head, in f32
//     O[8 heads x 128]     += P (bf16) . V        mma.m16n8k16, P straight from registers
//   At the end the 4 warps' (m, l, O) are merged through shared memory, then either
//   o = O / l is written as bf16 (no split), or the split's normalized O and its log-sum-exp
//   (log2 domain) are written in f32 for decode_combine.cuh.
//
// Why tensor cores rather than f32 FMA: per key and kv head the work is 8 heads x 128 dims x
// 2 (QK and PV) = 2048 multiply-adds against 512 bytes of K+V, 8 FLOP/byte. At 2.96 TB/s
// (12.8 B/clk/SM at 1.75 GHz) an SM gets a key every 40 clocks, i.e. 160 warp-instruction
// issue slots; the FMA form needs ~64 warp FMAs per key plus bf16->f32 conversions, shared
// loads and shuffles (~90-100 warp instructions, >60% of issue), while the MMA form needs
// ~2 MMAs + 1 ldmatrix + ~4 softmax instructions per key (<10%), leaving the warps free to
// keep copies in flight. Half of each MMA's 16 rows is padding; tensor throughput is ~20x
// more than needed, so that costs nothing.
//
// Shared memory: a tile row is 256 bytes; the 16-byte chunk c of row r is stored at chunk
// c ^ (r & 7), so the 8 rows an ldmatrix reads (same logical chunk) hit 8 different bank
// groups, and a cp.async warp writes whole 256-byte rows.
//
// A group under 8 (ERNIE-4.5-VL-28B-A3B: 20 q heads over 4, group 5) leaves MMA rows
// group..7 with q = 0: their scores are 0, their softmax is finite and their output is not
// written. The row count costs nothing (the MMAs are ~20x under the tensor rate, above); what
// matters is that K/V is still read once per kv head, not once per query head.
//
// Constraints: head_dim 128, group (q heads per kv head) 1..8, bf16, block_size a power of two
// (the launcher admits 16..256), K/V 16-byte aligned, q pairs 4-byte aligned, o 16-byte
// aligned with a token stride that is a multiple of 8.
#pragma once
#include <cuda_bf16.h>
#include <math_constants.h>
#include <stdint.h>

#include "common/check.cuh"
#include "decode.h"
#include "decode/decode_ptx.cuh"

namespace ocrvl {
namespace decode {

constexpr int kHeadDim = 128;
constexpr int kGroup = OCRVL_DECODE_MAX_GROUP;  // MMA rows for query heads: the largest group
constexpr int kTileKeys = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kWarpKeys = kTileKeys / kWarps;
// Three stages of 32 KB (K + V of 64 keys): two tiles in flight per CTA, 64 KB. With two CTAs
// per SM (96 KB each of the H100's 228 KB) that is 128 KB in flight per SM, several times the
// ~20 KB that Little's law asks for at 2.96 TB/s and ~1 us of latency under load.
constexpr int kStages = 3;
constexpr int kRowBytes = kHeadDim * 2;
constexpr int kChunksPerRow = kRowBytes / 16;
constexpr int kTileBytes = kTileKeys * kRowBytes;
constexpr int kStageBytes = 2 * kTileBytes;
constexpr int kRowStep = kThreads / kChunksPerRow;
constexpr int kLoadRows = kTileKeys / kRowStep;
// Epilogue: per warp, 8 heads x 128 f32 (rows padded by 4 floats) plus m and l per head.
constexpr int kOStride = kHeadDim + 4;
constexpr int kEpilogueBytes = (kWarps * kGroup * kOStride + 2 * kWarps * kGroup) * 4;
constexpr int kSmemBytes = kStages * kStageBytes > kEpilogueBytes ? kStages * kStageBytes : kEpilogueBytes;
// The split heuristic (ocrvl_decode_num_splits) splits only when there are fewer CTAs than
// half the SMs, and then aims at about one CTA per SM. Measured on the H100 (132 SMs), batch x
// 2048 keys, microseconds for 1 / 2 / 3 / 4 / 8 splits:
//   b32 (64 CTAs): 33.2 / 32.9 / 33.8 / 32.7 / 34.7      b64 (128): 51.4 / 54.9 / 56.8 / 56.5 / 59.4
//   b100 (200):    77.9 / 83.8 / 86.9 / 84.5 / 87.7     b128 (256): 94.5 / 102 / 105 / 105 / 109
// and 16 x 4096: 58.2 unsplit, 32.6 with 4 splits; 1 x 16384: 21.2 / 15.4 / 15.3 / 17.0 with
// 16 / 32 / 64 / 128 splits. A lone CTA streams ~32-36 GB/s (two tiles in flight), so
// splitting pays only when most SMs would otherwise be idle; past that the partials' traffic
// and the combine launch cost more than the better fill gains.
//
// A split shorter than this streams too little to pay for its start-up (the ring's first
// tiles) and for its share of the combine traffic.
constexpr int kMinKeysPerSplit = 256;

static_assert(kWarpKeys == 16, "each warp's keys are the k = 16 of one PV mma");
static_assert(kRowStep % 8 == 0, "a thread's rows must share (row & 7) for the swizzle");
static_assert(kHeadDim == 128, "the fragment loops below assume 8 k-steps and 16 n-tiles");

struct DecodeArgs {
    __nv_bfloat16* o;                 // [num_seqs, num_q_heads, 128], token stride o_stride
    const __nv_bfloat16* q;           // [num_seqs, num_q_heads, 128], token stride q_stride
    const __nv_bfloat16* k_cache;     // [num_blocks, num_kv_heads, block_size, 128]
    const __nv_bfloat16* v_cache;     // [num_blocks, num_kv_heads, block_size, 128]
    const int32_t* block_tables;      // [num_seqs, max_blocks_per_seq]
    const int32_t* seq_lens;          // [num_seqs]
    float* o_part;                    // [num_splits, num_seqs, num_q_heads, 128] (split only)
    float* lse_part;                  // [num_splits, num_seqs, num_q_heads] (split only)
    int64_t q_stride;
    int64_t o_stride;
    int32_t num_seqs;
    int32_t num_q_heads;
    int32_t num_kv_heads;
    int32_t group;                    // num_q_heads / num_kv_heads, 1..kGroup
    int32_t block_size_log2;
    int32_t max_blocks_per_seq;
    int32_t num_splits;
    float scale_log2;                 // scale * log2(e)
};

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled tile.
__device__ __forceinline__ uint32_t tile_offset(int row, int chunk) {
    return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
}

// Grid: (num_splits, num_kv_heads, num_seqs), Block: (kThreads), dynamic smem kSmemBytes.
template <bool kSplit>
__global__ void __launch_bounds__(kThreads) paged_decode_kernel(const DecodeArgs a) {
    extern __shared__ __align__(128) uint8_t smem[];
    const int split = blockIdx.x;
    const int kvh = blockIdx.y;
    const int seq = blockIdx.z;
    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;  // MMA groupID: the query head (row) this lane holds
    const int t = lane & 3;   // MMA thread-in-group

    // Key range of this split: chunks of a multiple of kTileKeys, the last ones may be empty.
    const int bs_log2 = a.block_size_log2;
    const int64_t cap = (int64_t)a.max_blocks_per_seq << bs_log2;
    const int seq_len = (int)min((int64_t)max(a.seq_lens[seq], 0), cap);
    const int64_t per_split =
        (((int64_t)seq_len + a.num_splits - 1) / a.num_splits + kTileKeys - 1) / kTileKeys * kTileKeys;
    const int start = (int)min((int64_t)seq_len, split * per_split);
    const int end = (int)min((int64_t)seq_len, start + per_split);
    const int num_tiles = (end - start + kTileKeys - 1) / kTileKeys;

    // q as MMA A fragments (rows 0..group-1 = the group's heads, the rest zero), loaded once:
    // k-step ks holds dims 16ks + 2t, +1 (reg0) and 16ks + 8 + 2t, +1 (reg2).
    uint32_t qa[kHeadDim / 16][2];
    {
        const bool head = g < a.group;
        const __nv_bfloat16* qh =
            a.q + (int64_t)seq * a.q_stride + (int64_t)(kvh * a.group + (head ? g : 0)) * kHeadDim;
#pragma unroll
        for (int ks = 0; ks < kHeadDim / 16; ++ks) {
            qa[ks][0] = head ? __ldg(reinterpret_cast<const unsigned int*>(qh + ks * 16 + 2 * t)) : 0u;
            qa[ks][1] = head ? __ldg(reinterpret_cast<const unsigned int*>(qh + ks * 16 + 8 + 2 * t)) : 0u;
        }
    }

    // Loader mapping: thread copies chunk ld_chunk of rows ld_row0 + kRowStep * i.
    const int ld_chunk = tid % kChunksPerRow;
    const int ld_row0 = tid / kChunksPerRow;
    const int32_t* bt = a.block_tables + (int64_t)seq * a.max_blocks_per_seq;
    const int bs_mask = (1 << bs_log2) - 1;
    int ids[kLoadRows];  // block-table entries of this thread's rows of the next tile to issue

    auto fetch_ids = [&](int tile) {
        const int base = start + tile * kTileKeys + ld_row0;
#pragma unroll
        for (int i = 0; i < kLoadRows; ++i) {
            const int p = base + i * kRowStep;
            ids[i] = p < end ? __ldg(bt + (p >> bs_log2)) : 0;
        }
    };
    auto issue = [&](int tile) {
        uint8_t* sk = smem + (tile % kStages) * kStageBytes;
        uint8_t* sv = sk + kTileBytes;
        const int base = start + tile * kTileKeys + ld_row0;
#pragma unroll
        for (int i = 0; i < kLoadRows; ++i) {
            const int row = ld_row0 + i * kRowStep;
            const int p = base + i * kRowStep;
            const bool valid = p < end;
            const int64_t off =
                valid ? ((((int64_t)ids[i] * a.num_kv_heads + kvh) << bs_log2) + (p & bs_mask)) * kHeadDim +
                            ld_chunk * 8
                      : 0;
            const uint32_t so = tile_offset(row, ld_chunk);
            cp_async_16_zfill(smem_addr(sk + so), a.k_cache + off, valid);
            cp_async_16_zfill(smem_addr(sv + so), a.v_cache + off, valid);
        }
    };

    // Prologue: tiles 0 .. kStages-2 in flight, one commit group each (empty past the end, so
    // that the group count in the main loop stays fixed).
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) {
        if (st < num_tiles) {
            fetch_ids(st);
            issue(st);
        }
        cp_async_commit();
    }
    if (kStages - 1 < num_tiles) fetch_ids(kStages - 1);

    float m = -CUDART_INF_F;  // running max of the log2-scaled scores of head g
    float l = 0.f;            // this lane's part of the running sum of head g
    float acc[kHeadDim / 8][4];  // O fragments: n-tile nd holds dims 8nd + 2t, +1 of head g
#pragma unroll
    for (int nd = 0; nd < kHeadDim / 8; ++nd) acc[nd][0] = acc[nd][1] = acc[nd][2] = acc[nd][3] = 0.f;

    // ldmatrix row addresses. K (non-transposed): matrix j = lane / 8 covers keys
    // 8 * (j / 2) .. +7 and chunk 2ks + (j % 2), giving B fragments of key n-tiles 0 and 1.
    // V (transposed): matrix j covers keys 8 * (j % 2) .. +7 and chunk 2dp + j / 2, giving
    // B fragments of dim n-tiles 2dp and 2dp + 1.
    const int k_row = warp * kWarpKeys + (lane & 7) + ((lane >> 4) << 3);
    const int k_chunk = (lane >> 3) & 1;
    const int v_row = warp * kWarpKeys + (lane & 7) + (((lane >> 3) & 1) << 3);
    const int v_chunk = lane >> 4;

    for (int tile = 0; tile < num_tiles; ++tile) {
        // Tile `tile` has landed for this thread; the barrier makes it visible to all and
        // tells every thread that the stage of tile - 1 is no longer read.
        cp_async_wait<kStages - 2>();
        __syncthreads();
        const int next = tile + kStages - 1;
        if (next < num_tiles) {
            issue(next);
            if (next + 1 < num_tiles) fetch_ids(next + 1);
        }
        cp_async_commit();

        const int key0 = start + tile * kTileKeys + warp * kWarpKeys;
        if (key0 >= end) continue;  // warp-uniform: this warp's keys are all past the end
        const uint8_t* sk = smem + (tile % kStages) * kStageBytes;
        const uint8_t* sv = sk + kTileBytes;

        float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int ks = 0; ks < kHeadDim / 16; ++ks) {
            uint32_t b[4];
            ldmatrix_x4(b, smem_addr(sk + tile_offset(k_row, 2 * ks + k_chunk)));
            mma_bf16_rows8(s[0], qa[ks][0], qa[ks][1], b[0], b[1]);
            mma_bf16_rows8(s[1], qa[ks][0], qa[ks][1], b[2], b[3]);
        }

        // s[n][j] = score of head g with key key0 + 8n + 2t + j.
        float x[2][2];
        float mx = -CUDART_INF_F;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int key = key0 + 8 * n + 2 * t + j;
                x[n][j] = key < end ? s[n][j] * a.scale_log2 : -CUDART_INF_F;
                mx = fmaxf(mx, x[n][j]);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m, mx);
        // All keys so far masked: subtract 0 so that exp2(-inf - m) is 0, not NaN.
        const float m_use = m_new == -CUDART_INF_F ? 0.f : m_new;
        const float alpha = exp2f(m - m_use);
        float p[2][2];
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
            for (int j = 0; j < 2; ++j) p[n][j] = exp2f(x[n][j] - m_use);
        }
        l = l * alpha + (p[0][0] + p[0][1]) + (p[1][0] + p[1][1]);
        m = m_new;
#pragma unroll
        for (int nd = 0; nd < kHeadDim / 8; ++nd) {
            acc[nd][0] *= alpha;
            acc[nd][1] *= alpha;
        }
        // P as the A fragment of the PV mma (k = the warp's 16 keys): reg0 = keys 2t, 2t+1
        // (n-tile 0 of S), reg2 = keys 8 + 2t, +1 (n-tile 1).
        const uint32_t pa0 = pack_bf16x2(p[0][0], p[0][1]);
        const uint32_t pa2 = pack_bf16x2(p[1][0], p[1][1]);
#pragma unroll
        for (int dp = 0; dp < kHeadDim / 16; ++dp) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, smem_addr(sv + tile_offset(v_row, 2 * dp + v_chunk)));
            mma_bf16_rows8(acc[2 * dp], pa0, pa2, b[0], b[1]);
            mma_bf16_rows8(acc[2 * dp + 1], pa0, pa2, b[2], b[3]);
        }
    }

    // Merge the 4 warps. The ring is reused: wait for every copy and every reader first.
    cp_async_wait<0>();
    __syncthreads();
    float* s_o = reinterpret_cast<float*>(smem);       // [kWarps][kGroup][kOStride]
    float* s_m = s_o + kWarps * kGroup * kOStride;    // [kWarps][kGroup]
    float* s_l = s_m + kWarps * kGroup;               // [kWarps][kGroup]
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (t == 0) {
        s_m[warp * kGroup + g] = m;
        s_l[warp * kGroup + g] = l;
    }
#pragma unroll
    for (int nd = 0; nd < kHeadDim / 8; ++nd) {
        *reinterpret_cast<float2*>(s_o + (warp * kGroup + g) * kOStride + nd * 8 + 2 * t) =
            make_float2(acc[nd][0], acc[nd][1]);
    }
    __syncthreads();

    // Thread -> (head h, dims d0 .. d0+7): 8 heads x 16 threads x 8 dims.
    const int h = tid >> 4;
    const int d0 = (tid & 15) * 8;
    float mmax = -CUDART_INF_F;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mmax = fmaxf(mmax, s_m[w * kGroup + h]);
    float out[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    float lsum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
        const float mw = s_m[w * kGroup + h];
        const float f = mw == -CUDART_INF_F ? 0.f : exp2f(mw - mmax);
        lsum += f * s_l[w * kGroup + h];
        const float4* src = reinterpret_cast<const float4*>(s_o + (w * kGroup + h) * kOStride + d0);
        const float4 v0 = src[0];
        const float4 v1 = src[1];
        out[0] += f * v0.x;
        out[1] += f * v0.y;
        out[2] += f * v0.z;
        out[3] += f * v0.w;
        out[4] += f * v1.x;
        out[5] += f * v1.y;
        out[6] += f * v1.z;
        out[7] += f * v1.w;
    }
    const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
    if (h >= a.group) return;  // an MMA row past the group: no query head
    const int qh = kvh * a.group + h;
    if constexpr (!kSplit) {
        uint4 pk;
        pk.x = pack_bf16x2(out[0] * inv, out[1] * inv);
        pk.y = pack_bf16x2(out[2] * inv, out[3] * inv);
        pk.z = pack_bf16x2(out[4] * inv, out[5] * inv);
        pk.w = pack_bf16x2(out[6] * inv, out[7] * inv);
        *reinterpret_cast<uint4*>(a.o + (int64_t)seq * a.o_stride + (int64_t)qh * kHeadDim + d0) = pk;
    } else {
        const int64_t row = ((int64_t)split * a.num_seqs + seq) * a.num_q_heads + qh;
        float4* dst = reinterpret_cast<float4*>(a.o_part + row * kHeadDim + d0);
        dst[0] = make_float4(out[0] * inv, out[1] * inv, out[2] * inv, out[3] * inv);
        dst[1] = make_float4(out[4] * inv, out[5] * inv, out[6] * inv, out[7] * inv);
        if ((tid & 15) == 0) a.lse_part[row] = lsum > 0.f ? mmax + log2f(lsum) : -CUDART_INF_F;
    }
}

template <bool kSplit>
int32_t launch_paged_decode_kernel(const DecodeArgs& a, cudaStream_t stream) {
    auto kernel = paged_decode_kernel<kSplit>;
    // Above the 48 KB default, so the launch must opt in (a function attribute, not an
    // allocation; cheap enough to set on every call, and correct on any current device).
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    if (err != cudaSuccess) {
        record_cuda_error(err);
        return OCRVL_STATUS_CUDA_ERROR;
    }
    const dim3 grid((unsigned)a.num_splits, (unsigned)a.num_kv_heads, (unsigned)a.num_seqs);
    kernel<<<grid, kThreads, kSmemBytes, stream>>>(a);
    return launch_status();
}

}  // namespace decode
}  // namespace ocrvl
