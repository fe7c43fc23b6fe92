// FlashAttention-2 forward for prefill, built from sm_80 instructions (mma.sync m16n8k16
// bf16, ldmatrix, cp.async); it runs unchanged on sm_90.
//
// Algorithm. One CTA owns kBlockM query rows of one (sequence, head). It walks the key tiles
// of kBlockN keys that those rows can see, from the last to the first, and for each one
//   S = Q·Kᵀ (tensor cores, f32), mask (only on tiles that need it), online softmax in f32
//   (running row max m and row sum l; O rescaled by exp(m_old - m_new)), O += P·V with P
//   rounded to bf16 straight from the S accumulators (the C fragment of two adjacent n8 tiles
//   is exactly the A fragment of one k16 step, so P never touches shared memory).
// At the end O /= l, written as bf16; optionally LSE = m·scale + ln(l).
//
// Variants (template parameters, see FwdTraits):
//   kPaged: K/V rows come from the block-paged cache ([num_blocks, kv_heads, block_size, d],
//     a block table per sequence); else from token-strided varlen buffers (cu_seqlens_k).
//   kCausal: query i of a run of q_len sits at key position seqlen_k - q_len + i and sees
//     keys <= that position. Key tiles entirely above the diagonal are never loaded; only the
//     tiles that cross it (or the key end) apply a mask.
//   kHeadDim / kHeadDimQK / kHeadDimPV: the stored row width of q, k, v, o; the width of the
//     Q·Kᵀ contraction (a multiple of 16); the O columns computed (a multiple of 8). Shared
//     memory columns past kHeadDim are zero. d = 72 runs as 72/80/72 (5 k16 steps for Q·Kᵀ,
//     9 n8 tiles for P·V, no padding there) or, for comparison, 72/96/96 (FA2's d96 tile).
//
// Shared memory and pipeline. Q [kBlockM], K [kBlockN] and V [kBlockN] rows, each row padded
// to an odd number of 16-byte chunks (d128: 17, d80: 11, d96: 13): the 8 row addresses of one
// ldmatrix then fall in 8 distinct 16-byte bank groups, so loads are conflict-free without a
// swizzle. One buffer each for K and V, as in FA2: the copy of V(n) runs under Q·K(n)ᵀ and
// the softmax, the copy of K(n-1) under P·V(n). Rows past the keys (or queries) are
// zero-filled by cp.async, never read: the cache's unused slots may hold anything, NaN
// included, and a zero V row times p = 0 stays 0.
//
// Paged addressing. A key tile spans kBlockN = 64 positions: exactly one cache block when
// block_size == 64, part of one when block_size > 64 (powers of two, so a tile never
// straddles two blocks), several blocks when block_size is 16 or 32. In the first two cases
// the tile is 64 evenly strided rows found with one block-table read per tile; in the last,
// every thread reads the table entry of each row it copies (block_tables[s][p >> log2(bs)],
// offset p & (bs - 1); the reads hit L1). Per-copy address work matters: the first version
// sent every row through the table with a branch per row, about a quarter of the mainloop's
// instructions, and ran the non-causal 8k bench at 263 instead of 346 TFLOP/s.
//
// Constraints (checked by the launcher): bf16; q/k/v/o 16-byte aligned with token strides a
// multiple of 8 elements; head_dim one of the instantiated values; block_size a power of two.
#pragma once
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "attention.h"
#include "attention/launch.cuh"
#include "attention/ptx.cuh"
#include "common/check.cuh"

namespace ocrvl::attn {

template <int kHeadDim_, int kHeadDimQK_, int kHeadDimPV_, int kBlockM_, int kBlockN_, int kNWarps_, bool kPaged_,
          bool kCausal_, int kMinBlocksPerSm_ = 2, bool kLazyRescale_ = false>
struct FwdTraits {
    static constexpr int kHeadDim = kHeadDim_;      // stored width of q, k, v, o rows
    static constexpr int kHeadDimQK = kHeadDimQK_;  // Q·Kᵀ contraction, zero-padded
    static constexpr int kHeadDimPV = kHeadDimPV_;  // O columns computed; those past kHeadDim dropped
    static constexpr int kBlockM = kBlockM_;
    static constexpr int kBlockN = kBlockN_;
    static constexpr int kNWarps = kNWarps_;
    static constexpr bool kPaged = kPaged_;
    static constexpr bool kCausal = kCausal_;
    static constexpr int kThreads = kNWarps * 32;
    // __launch_bounds__ minimum CTAs per SM: caps registers at 65536 / (kThreads * this).
    static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
    // Skip the rescale of O (kMTiles * kNTilesO * 4 multiplies a thread) on tiles where no
    // row max of the warp moved; a warp vote and a branch instead. Measured per variant.
    static constexpr bool kLazyRescale = kLazyRescale_;
    // Each warp owns kMTiles m16 tiles of consecutive query rows. With 2, every K and V
    // fragment read from shared memory feeds two MMAs, halving shared-memory traffic per FLOP.
    static constexpr int kMTiles = kBlockM / (16 * kNWarps);
    static constexpr int kNTilesS = kBlockN / 8;     // n8 tiles of S per m16 tile
    static constexpr int kKStepsQK = kHeadDimQK / 16; // k16 steps of Q·Kᵀ
    static constexpr int kKStepsPV = kBlockN / 16;    // k16 steps of P·V
    static constexpr int kNTilesO = kHeadDimPV / 8;   // n8 tiles of O computed
    static constexpr int kNTilesOut = kHeadDim / 8;   // n8 tiles of O stored
    static constexpr int kChunks = kHeadDim / 8;      // 16-byte chunks of a global row
    static constexpr int kSmemStride = (kHeadDimQK / 8 + 1) * 8; // elements; odd chunk count
    static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kSmemStride * 2;

    static_assert(kBlockM == kMTiles * 16 * kNWarps, "kBlockM must be a multiple of 16 * warps");
    static_assert(kBlockN % 16 == 0, "kBlockN must be a multiple of 16");
    static_assert(kHeadDim % 8 == 0 && kHeadDimQK % 16 == 0 && kHeadDimQK >= kHeadDimPV, "head dims");
    static_assert(kHeadDimPV % 8 == 0 && kHeadDimPV >= kHeadDim, "head dims");
    static_assert((kHeadDimQK - kHeadDim) % 8 == 0, "padding must be whole chunks");
    static_assert(kSmemStride / 8 % 2 == 1, "odd row stride in 16-byte chunks");
};

// Copies kRows rows of kHeadDim elements, row r from src + r * row_stride, into `smem` (row
// stride kSmemStride) with cp.async, 16 bytes per copy. With kCheck, rows >= valid_rows are
// zero-filled instead (nothing is read; `src` stands in as the unused address). Consecutive
// threads take consecutive chunks of a row, so a warp reads whole row segments.
template <class Kt, int kRows, bool kCheck>
__device__ __forceinline__ void load_rows(bf16* smem, const bf16* src, int64_t row_stride, int valid_rows, int tid) {
    constexpr int kChunks = Kt::kChunks;
    if constexpr (Kt::kThreads % kChunks == 0 && kRows % (Kt::kThreads / kChunks) == 0) {
        // Each thread copies one chunk column of rows r0, r0 + kPass, ...: one base address
        // per thread and constant offsets, so no per-row address stays live across the loop.
        constexpr int kPass = Kt::kThreads / kChunks;
        const int r0 = tid / kChunks, c = tid % kChunks;
        const uint32_t dst = smem_u32(smem + r0 * Kt::kSmemStride + c * 8);
        const bf16* from = src + r0 * row_stride + c * 8;
#pragma unroll
        for (int it = 0; it < kRows / kPass; ++it) {
            const bool valid = !kCheck || r0 + it * kPass < valid_rows;
            cp_async_16(dst + it * kPass * Kt::kSmemStride * 2, valid ? from + it * kPass * row_stride : src, valid);
        }
    } else {
        constexpr int kTotal = kRows * kChunks;
        constexpr int kIters = (kTotal + Kt::kThreads - 1) / Kt::kThreads;
#pragma unroll
        for (int it = 0; it < kIters; ++it) {
            const int i = tid + it * Kt::kThreads;
            if (kTotal % Kt::kThreads == 0 || i < kTotal) {
                const int r = i / kChunks;
                const int c = i % kChunks;
                const bool valid = !kCheck || r < valid_rows;
                cp_async_16(smem_u32(smem + r * Kt::kSmemStride + c * 8),
                            valid ? src + r * row_stride + c * 8 : src, valid);
            }
        }
    }
}

// Paged key tile when block_size < kBlockN: the tile spans several blocks, so every row looks
// up its own block (the table reads hit L1). Rows at or past seqlen_k (>= 1) are zero-filled;
// their lookup is clamped to the last key so that no unused table entry is read.
template <class Kt>
__device__ __forceinline__ void load_paged_rows(bf16* smem, const bf16* cache, const int32_t* table,
                                                const FwdArgs& a, int hkv, int n0, int seqlen_k, int tid) {
    constexpr int kChunks = Kt::kChunks;
    static_assert(Kt::kThreads % kChunks == 0 && Kt::kBlockN % (Kt::kThreads / kChunks) == 0,
                  "paged tiles are copied in whole passes of rows");
    constexpr int kPass = Kt::kThreads / kChunks;
    const int r0 = tid / kChunks, c = tid % kChunks;
    const uint32_t dst = smem_u32(smem + r0 * Kt::kSmemStride + c * 8);
#pragma unroll
    for (int it = 0; it < Kt::kBlockN / kPass; ++it) {
        const int p = n0 + r0 + it * kPass;
        const bool valid = p < seqlen_k;
        const int pc = valid ? p : seqlen_k - 1;
        const int blk = __ldg(table + (pc >> a.log2_block_size));
        const int64_t row = ((int64_t)blk * a.num_kv_heads + hkv) * a.block_size + (pc & (a.block_size - 1));
        cp_async_16(dst + it * kPass * Kt::kSmemStride * 2, cache + row * Kt::kHeadDim + c * 8, valid);
    }
}

// Copies the K or V tile of keys n0 .. n0 + kBlockN of kv head hkv (`base` is k or v) into
// `smem`; keys at or past seqlen_k are zero-filled. The common cases are a tile of evenly
// strided rows, addressed once per tile: a varlen tile, or a paged tile inside one block
// (block_size >= kBlockN; both are powers of two, so a tile never straddles two blocks).
template <class Kt>
__device__ __forceinline__ void load_kv(bf16* smem, const bf16* base, int64_t stride, const FwdArgs& a,
                                        const int32_t* table, int k_start, int hkv, int n0, int seqlen_k, int tid) {
    constexpr int kBlockN = Kt::kBlockN;
    const bf16* tile;
    int64_t row_stride;
    if constexpr (Kt::kPaged) {
        if (a.block_size < kBlockN) {
            load_paged_rows<Kt>(smem, base, table, a, hkv, n0, seqlen_k, tid);
            return;
        }
        const int blk = __ldg(table + (n0 >> a.log2_block_size));
        tile = base + (((int64_t)blk * a.num_kv_heads + hkv) * a.block_size + (n0 & (a.block_size - 1))) * Kt::kHeadDim;
        row_stride = Kt::kHeadDim;
    } else {
        tile = base + (int64_t)(k_start + n0) * stride + (int64_t)hkv * Kt::kHeadDim;
        row_stride = stride;
    }
    if (n0 + kBlockN <= seqlen_k) {
        load_rows<Kt, kBlockN, false>(smem, tile, row_stride, kBlockN, tid);
    } else {
        load_rows<Kt, kBlockN, true>(smem, tile, row_stride, seqlen_k - n0, tid);
    }
}

// acc_s[mi][j] = Q rows (warp_row0 + 16 mi ..) · K rows (8 j ..)ᵀ over kHeadDimQK.
template <class Kt>
__device__ __forceinline__ void gemm_qk(float (&acc_s)[Kt::kMTiles][Kt::kNTilesS][4], const bf16* sQ,
                                        const bf16* sK, int warp_row0, int lane) {
#pragma unroll
    for (int ks = 0; ks < Kt::kKStepsQK; ++ks) {
        // A fragments of Q, one ldmatrix.x4 per m16 tile: lanes 0-15 address rows 0-15 at
        // column 16 ks (matrices a[0], a[1]), lanes 16-31 the same rows at 16 ks + 8 (a[2], a[3]).
        uint32_t qa[Kt::kMTiles][4];
#pragma unroll
        for (int mi = 0; mi < Kt::kMTiles; ++mi) {
            const int row = warp_row0 + mi * 16 + (lane & 15);
            ldmatrix_x4(qa[mi], smem_u32(sQ + row * Kt::kSmemStride + ks * 16 + (lane >> 4) * 8));
        }
#pragma unroll
        for (int j = 0; j < Kt::kNTilesS; j += 2) {
            // B fragments of two n8 tiles of keys. K is [key][d] in smem, i.e. B = Kᵀ stored
            // column-major, which is what a non-transposed ldmatrix yields: lanes 0-7 address
            // keys 8j+0..7 at d 16ks (b0 of tile j), 8-15 the same keys at d 16ks+8 (b1 of j),
            // 16-23 keys 8j+8..15 at d 16ks (b0 of j+1), 24-31 those at 16ks+8 (b1 of j+1).
            uint32_t kb[4];
            const int key = j * 8 + (lane & 7) + (lane >> 4) * 8;
            ldmatrix_x4(kb, smem_u32(sK + key * Kt::kSmemStride + ks * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
            for (int mi = 0; mi < Kt::kMTiles; ++mi) {
                mma_bf16_16816(acc_s[mi][j], qa[mi], kb[0], kb[1]);
                mma_bf16_16816(acc_s[mi][j + 1], qa[mi], kb[2], kb[3]);
            }
        }
    }
}

// acc_o[mi][dn] += P[mi] · V rows (0 .. kBlockN) columns (8 dn ..).
template <class Kt>
__device__ __forceinline__ void gemm_pv(float (&acc_o)[Kt::kMTiles][Kt::kNTilesO][4],
                                        const uint32_t (&pa)[Kt::kMTiles][Kt::kKStepsPV][4], const bf16* sV,
                                        int lane) {
#pragma unroll
    for (int kk = 0; kk < Kt::kKStepsPV; ++kk) {
        // B fragments of V ([key][d] in smem, B = V row-major K x N): a transposed ldmatrix
        // gives lane l keys 2(l%4), 2(l%4)+1 of column l/4, i.e. b0/b1. Lanes 0-7 address keys
        // 16kk+0..7 at d 8dn (b0 of dn), 8-15 keys 16kk+8..15 (b1 of dn), 16-23 and 24-31 the
        // same keys at d 8dn+8 (b0, b1 of dn+1).
        const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int dn = 0; dn + 1 < Kt::kNTilesO; dn += 2) {
            uint32_t vb[4];
            ldmatrix_x4_trans(vb, smem_u32(sV + key * Kt::kSmemStride + dn * 8 + (lane >> 4) * 8));
#pragma unroll
            for (int mi = 0; mi < Kt::kMTiles; ++mi) {
                mma_bf16_16816(acc_o[mi][dn], pa[mi][kk], vb[0], vb[1]);
                mma_bf16_16816(acc_o[mi][dn + 1], pa[mi][kk], vb[2], vb[3]);
            }
        }
        if constexpr (Kt::kNTilesO % 2 == 1) {
            // d = 72: the ninth n8 tile alone (lanes 0-15 address keys 16kk+0..15 at d 64).
            constexpr int dn = Kt::kNTilesO - 1;
            uint32_t vb[2];
            ldmatrix_x2_trans(vb, smem_u32(sV + key * Kt::kSmemStride + dn * 8));
#pragma unroll
            for (int mi = 0; mi < Kt::kMTiles; ++mi) mma_bf16_16816(acc_o[mi][dn], pa[mi][kk], vb[0], vb[1]);
        }
    }
}

// Grid, with m_tiles = ceil(max_seqlen_q / kBlockM), Block: (kThreads), dynamic shared
// memory Kt::kSmemBytes:
//   causal:     (num_heads, num_seqs, m_tiles), query tiles in reverse order;
//   non-causal: (m_tiles, num_heads, num_seqs).
// CTAs start in launch order, x fastest. Causal, the query tiles go last and backwards, so
// all heads and sequences of the longest tiles start first and the short ones fill the tail
// (with the tile index fastest, the first wave mixed all lengths: 285 against 350 TFLOP/s on
// the causal 8k bench). Non-causal, every tile has the same work, and the tile index fastest
// keeps the CTAs in flight on few (head, sequence) pairs, whose K/V then stay in L2 (vision
// 4x5040: 16 heads x 4 images x 1.45 MB of K/V do not fit the 50 MB L2; 3.5% faster this way).
// Tiles past a sequence's length exit at once; a flattened tile list would avoid launching
// them (docs/notes/attention.md).
template <class Kt>
__global__ void __launch_bounds__(Kt::kThreads, Kt::kMinBlocksPerSm) attention_fwd_kernel(const FwdArgs a) {
    constexpr int kBlockM = Kt::kBlockM, kBlockN = Kt::kBlockN, kMTiles = Kt::kMTiles;
    constexpr int kNTilesS = Kt::kNTilesS, kNTilesO = Kt::kNTilesO, kKStepsPV = Kt::kKStepsPV;
    constexpr int kNTilesOut = Kt::kNTilesOut;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // [kBlockM][kSmemStride]
    bf16* sK = sQ + kBlockM * Kt::kSmemStride;     // [kBlockN][kSmemStride]
    bf16* sV = sK + kBlockN * Kt::kSmemStride;     // [kBlockN][kSmemStride]

    const int m_block = Kt::kCausal ? (int)(gridDim.z - 1 - blockIdx.z) : (int)blockIdx.x;
    const int h = Kt::kCausal ? blockIdx.x : blockIdx.y;
    const int s = Kt::kCausal ? blockIdx.y : blockIdx.z;
    const int q_start = a.cu_seqlens_q[s];
    const int q_len = a.cu_seqlens_q[s + 1] - q_start;
    const int m0 = m_block * kBlockM;
    if (m0 >= q_len) return;  // the grid is sized for the longest run
    int k_start = 0;
    int seqlen_k;
    if constexpr (Kt::kPaged) {
        seqlen_k = max(0, min(a.seqused_k[s], a.max_keys));
    } else {
        k_start = a.cu_seqlens_k[s];
        seqlen_k = a.cu_seqlens_k[s + 1] - k_start;
    }
    const int hkv = h / a.head_ratio;
    // Query row i sees keys j <= i + causal_offset (causal only).
    const int causal_offset = seqlen_k - q_len;
    const int32_t* table = Kt::kPaged ? a.block_tables + (int64_t)s * a.block_table_stride : nullptr;

    const int tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32;
    const int g = lane >> 2, t4 = lane & 3;  // fragment row group and column pair, see ptx.cuh
    const int warp_row0 = warp * 16 * kMTiles;

    // Zero the pad columns kHeadDim..kHeadDimQK-1 of Q, K and V (their rows are adjacent);
    // cp.async never writes them. The first __syncthreads of the loop orders these stores.
    if constexpr (Kt::kHeadDimQK > Kt::kHeadDim) {
        constexpr int kPad = (Kt::kHeadDimQK - Kt::kHeadDim) / 8;
        for (int i = tid; i < (kBlockM + 2 * kBlockN) * kPad; i += Kt::kThreads) {
            const int r = i / kPad, c = Kt::kChunks + i % kPad;
            *reinterpret_cast<uint4*>(sQ + r * Kt::kSmemStride + c * 8) = make_uint4(0, 0, 0, 0);
        }
    }

    load_rows<Kt, kBlockM, true>(sQ, a.q + (int64_t)(q_start + m0) * a.q_stride + (int64_t)h * Kt::kHeadDim,
                                 a.q_stride, q_len - m0, tid);
    cp_async_commit();

    // Key tiles [0, n_end) hold every key some row of this CTA sees.
    int n_end = (seqlen_k + kBlockN - 1) / kBlockN;
    if constexpr (Kt::kCausal) {
        const int visible = causal_offset + min(m0 + kBlockM, q_len);  // keys < visible
        n_end = visible <= 0 ? 0 : min(n_end, (visible + kBlockN - 1) / kBlockN);
    }
    if (n_end > 0) {
        load_kv<Kt>(sK, a.k, a.k_stride, a, table, k_start, hkv, (n_end - 1) * kBlockN, seqlen_k, tid);
        cp_async_commit();
    }

    float acc_o[kMTiles][kNTilesO][4];
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
        for (int dn = 0; dn < kNTilesO; ++dn)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_o[mi][dn][e] = 0.f;
    // Per thread: rows g and g+8 of each m16 tile ([mi][0] and [mi][1]). row_max is in raw
    // score units; row_sum is this thread's partial sum over its own columns (the 4 lanes of a
    // row share row_max, so the partials are reduced once, at the end).
    float row_max[kMTiles][2], row_sum[kMTiles][2];
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
        row_max[mi][0] = row_max[mi][1] = -INFINITY;
        row_sum[mi][0] = row_sum[mi][1] = 0.f;
    }

    for (int nb = n_end - 1; nb >= 0; --nb) {
        const int n0 = nb * kBlockN;
        cp_async_wait_all();
        __syncthreads();  // K(nb) (and Q) landed; every warp is done with V(nb+1)
        load_kv<Kt>(sV, a.v, a.v_stride, a, table, k_start, hkv, n0, seqlen_k, tid);
        cp_async_commit();

        float acc_s[kMTiles][kNTilesS][4];
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
            for (int j = 0; j < kNTilesS; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc_s[mi][j][e] = 0.f;
        gemm_qk<Kt>(acc_s, sQ, sK, warp_row0, lane);

        // Mask only tiles that reach past the keys or, causal, above the diagonal of the
        // CTA's first row. Element e of acc_s[mi][j] is row g + 8(e/2), key 8j + 2t + e%2.
        const bool need_mask =
            n0 + kBlockN > seqlen_k || (Kt::kCausal && n0 + kBlockN - 1 > causal_offset + m0);
        if (need_mask) {
#pragma unroll
            for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
                for (int j = 0; j < kNTilesS; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int qi = m0 + warp_row0 + mi * 16 + g + (e >> 1) * 8;
                        const int key = n0 + j * 8 + 2 * t4 + (e & 1);
                        if (key >= seqlen_k || (Kt::kCausal && key > qi + causal_offset)) acc_s[mi][j][e] = -INFINITY;
                    }
        }

        // Online softmax, row by row (hr 0: row g, hr 1: row g+8 of tile mi).
        float corr[kMTiles][2];
        bool moved = false;
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                float mx = row_max[mi][hr];
#pragma unroll
                for (int j = 0; j < kNTilesS; ++j) {
                    mx = fmaxf(mx, fmaxf(acc_s[mi][j][2 * hr], acc_s[mi][j][2 * hr + 1]));
                }
                // The 4 lanes of a row group hold its 64 columns between them.
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                // A row that has seen no key yet keeps max -inf; subtract 0 then, so that
                // exp2(-inf - -inf) never makes a NaN.
                const float m_scaled = mx == -INFINITY ? 0.f : mx * a.scale_log2;
                corr[mi][hr] = fast_exp2(row_max[mi][hr] * a.scale_log2 - m_scaled);
                moved |= mx != row_max[mi][hr];
                row_max[mi][hr] = mx;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < kNTilesS; ++j)
#pragma unroll
                    for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                        const float p = fast_exp2(fmaf(acc_s[mi][j][e], a.scale_log2, -m_scaled));
                        acc_s[mi][j][e] = p;
                        sum += p;
                    }
                row_sum[mi][hr] = row_sum[mi][hr] * corr[mi][hr] + sum;
            }
        // O *= exp(m_old - m_new) per row. When no row max of the warp moved, every factor is
        // 1 (up to the rounding of the exponent), and the lazy variant skips the multiplies.
        if (!Kt::kLazyRescale || __any_sync(0xffffffffu, moved)) {
#pragma unroll
            for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
                for (int dn = 0; dn < kNTilesO; ++dn) {
                    acc_o[mi][dn][0] *= corr[mi][0];
                    acc_o[mi][dn][1] *= corr[mi][0];
                    acc_o[mi][dn][2] *= corr[mi][1];
                    acc_o[mi][dn][3] *= corr[mi][1];
                }
        }

        // P as bf16 A fragments: k16 step kk covers keys 16kk..16kk+15 = n8 tiles 2kk, 2kk+1.
        // a[0] = row g keys 2t.. (tile 2kk, e 0-1), a[1] = row g+8 (tile 2kk, e 2-3),
        // a[2] = row g keys 8+2t.. (tile 2kk+1, e 0-1), a[3] = row g+8 (tile 2kk+1, e 2-3).
        uint32_t pa[kMTiles][kKStepsPV][4];
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
            for (int kk = 0; kk < kKStepsPV; ++kk) {
                pa[mi][kk][0] = pack_bf16x2(acc_s[mi][2 * kk][0], acc_s[mi][2 * kk][1]);
                pa[mi][kk][1] = pack_bf16x2(acc_s[mi][2 * kk][2], acc_s[mi][2 * kk][3]);
                pa[mi][kk][2] = pack_bf16x2(acc_s[mi][2 * kk + 1][0], acc_s[mi][2 * kk + 1][1]);
                pa[mi][kk][3] = pack_bf16x2(acc_s[mi][2 * kk + 1][2], acc_s[mi][2 * kk + 1][3]);
            }

        cp_async_wait_all();
        __syncthreads();  // V(nb) landed; every warp is done with K(nb)
        if (nb > 0) {
            load_kv<Kt>(sK, a.k, a.k_stride, a, table, k_start, hkv, n0 - kBlockN, seqlen_k, tid);
            cp_async_commit();
        }
        gemm_pv<Kt>(acc_o, pa, sV, lane);
    }
    cp_async_wait_all();  // only the Q copy can be pending here (when n_end == 0)

    // Epilogue: O / l as bf16, 4-byte stores (each quad of lanes writes 16 contiguous bytes of
    // a row). A row with no visible key (l = 0) is written as zeros.
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            float sum = row_sum[mi][hr];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            const int qi = m0 + warp_row0 + mi * 16 + g + hr * 8;
            if (qi < q_len) {
                bf16* out = a.o + (int64_t)(q_start + qi) * a.o_stride + (int64_t)h * Kt::kHeadDim + 2 * t4;
#pragma unroll
                for (int dn = 0; dn < kNTilesOut; ++dn) {
                    *reinterpret_cast<uint32_t*>(out + dn * 8) =
                        pack_bf16x2(acc_o[mi][dn][2 * hr] * inv, acc_o[mi][dn][2 * hr + 1] * inv);
                }
                if (a.lse != nullptr && t4 == 0) {
                    a.lse[(int64_t)h * a.total_q + q_start + qi] =
                        sum > 0.f ? row_max[mi][hr] * a.scale + logf(sum) : -INFINITY;
                }
            }
        }
}

// Checks nothing (the extern "C" launcher did); sizes the grid and launches on `stream`.
template <class Kt>
int32_t launch_fwd(const FwdArgs& args, int num_seqs, int num_heads, int max_seqlen_q, cudaStream_t stream) {
    const int m_blocks = (max_seqlen_q + Kt::kBlockM - 1) / Kt::kBlockM;
    if (m_blocks == 0 || num_seqs == 0) return OCRVL_STATUS_OK;
    // Grid dims y and z are at most 65535.
    if (Kt::kCausal ? m_blocks > 65535 : num_heads > 65535) return OCRVL_STATUS_UNSUPPORTED;
    auto kernel = attention_fwd_kernel<Kt>;
    // Over 48 KiB of dynamic shared memory must be opted into, per kernel.
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Kt::kSmemBytes);
    if (err != cudaSuccess) {
        record_cuda_error(err);
        return OCRVL_STATUS_CUDA_ERROR;
    }
    const dim3 grid = Kt::kCausal ? dim3(num_heads, num_seqs, m_blocks) : dim3(m_blocks, num_heads, num_seqs);
    kernel<<<grid, Kt::kThreads, Kt::kSmemBytes, stream>>>(args);
    return launch_status();
}

}  // namespace ocrvl::attn
