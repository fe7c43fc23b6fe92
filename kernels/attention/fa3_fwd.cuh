// FlashAttention-3-style forward for prefill on Hopper (sm_90a): TMA copies into a shared-memory
// ring guarded by mbarriers, wgmma for both matrix products, warp specialisation, and (the
// default mainloop) the softmax of one tile overlapped with matrix work.
//
// Algorithm. One CTA owns kBlockM = 128 (192 with three consumer warpgroups, a d 72 tile)
// query rows of one (sequence, head) and walks the key
// tiles of kBlockN = 128 keys those rows can see, last to first (as fwd_sm80.cuh): tiles
// wholly above the causal diagonal of the CTA are never loaded, and only the tiles that cross
// the key end or a warpgroup's diagonal do mask work. Three warpgroups:
//   - warpgroup 0, the producer, gives registers back (setmaxnreg.dec); one thread issues every
//     TMA copy: Q once, then K and V of each key tile into a kStages ring. K and V slots are
//     released separately (their own `empty` mbarriers), so the next K can land while the
//     previous P·V still reads V.
//   - warpgroups 1 and 2 (and 3), the consumers (setmaxnreg.inc), own 64 query rows each. Per key
//     tile: S = Q·Kᵀ with wgmma m64n128k16 (both operands in shared memory, K-major), mask,
//     online softmax in f32 registers (exp2 with log2(e) folded into the scale; O rescaled by
//     exp(m_old - m_new)), P rounded to bf16 in registers, O += P·V with wgmma m64nNk16 taking
//     P from registers (the accumulator layout of two adjacent n8 column groups of S is exactly
//     the A fragment of one k16 step) and V from shared memory as a transposed (MN-major) operand.
//   At the end O / l is written from registers (4-byte stores, a quad of lanes covers 16
//   contiguous bytes), optionally LSE = m·scale + ln(l).
//
// Mainloops (Fa3Traits::kMainloop, OCRVL_FA3_MAINLOOP_* of attention.h):
//   - Serial (the first version): per tile S = Q·Kᵀ, wait, softmax, O += P·V, wait. The tensor
//     cores idle during every softmax unless the other warpgroup happens to fill them.
//   - Overlap (FA3 paper, "intra-warpgroup pipelining"): iteration n issues S(n) = Q·K(n)ᵀ and
//     then O += P(n-1)·V(n-1) as two wgmma groups, waits for the first (wait_group 1), runs the
//     softmax of S(n) while P(n-1)·V(n-1) is still on the tensor cores, then waits for it,
//     rescales O to the new running max and packs P(n). Registers: S 64 + P(n-1) 32 + O 64
//     (d 128) live at once, hence the register split. Exact algebra: O holds the tiles < n at
//     the scale of m(n-1) when P(n-1)·V(n-1) (at that scale) is added, and is moved to m(n)
//     afterwards.
//   - PingPong (the default; FA3 paper, "inter-warpgroup overlapping"): Overlap, and each
//     consumer warpgroup issues its wgmmas only in its turn: named barrier 4 + c (256 threads:
//     c's 128 bar.sync, the previous warpgroup's 128 bar.arrive) gates consumer c, which
//     arrives on the next one's barrier (c + 1, the last on c 0's) once its wgmmas are issued.
//     So the tensor cores run one warpgroup's two GEMMs while the other(s) do their softmax.
//     The last consumer first arrives once on c 0's barrier (c 0 goes first); each warpgroup
//     has n_tiles + 1 turns (S(0) alone; S(n) with P(n-1)·V(n-1); P(last)·V(last) alone) and
//     the last consumer skips its arrival after its last turn, so every barrier ends balanced.
//     With 3 consumers a warpgroup cannot run two turns ahead: its next turn needs the
//     arrivals of the two others' turns, so each barrier has at most one phase pending.
//
// Shared memory, all tiles in the 128-byte swizzle that TMA writes and wgmma reads: a tile of
// R rows x 128 columns is two column blocks of R lines of 128 bytes (64 bf16), each block
// R x 128 B, 8-line atoms of 1024 B. One TMA box fills one column block (box inner 64
// elements = 128 B, the swizzle's width). Q: 128 rows x 2 blocks = 32 KiB; K and V: 128 keys x
// 2 blocks = 32 KiB each per stage; 2 stages: 32 + 2 x (32 + 32) = 160 KiB, plus 1 KiB of
// barriers and 1 KiB of alignment slack (the dynamic base is only 16-byte aligned): 162 KiB of
// the 227 KiB an SM has, one CTA per SM. A third stage would take 226 KiB (fits, barely).
//
// Head dims. d = 128: Q·Kᵀ is 8 k16 steps (4 per column block), P·V is N = 128 over both
// blocks. d = 72 (vision): the tensor maps' innermost extent is 72, so the second column
// block's box (columns 64..127) reads 8 real columns and TMA fills 72..127 with zeros; Q·Kᵀ
// contracts over 80 = 5 k16 steps (the fifth reads columns 64..79, 72..79 zero) and P·V runs
// N = 72 (64 columns in block 0 and 8 in block 1, the descriptor's LBO apart), 152 multiply-
// adds per (query, key) against 144 useful. kHeadDimPV = 128 runs P·V over both whole blocks
// instead (a fallback and a check of the N = 72 operand addressing; 200 multiply-adds).
// d = 80 (ERNIE-4.5-VL's ViT) is the same layout with 16 real columns in the second block:
// Q·Kᵀ over exactly 80 (5 k16 steps), P·V N = 80 (64 + 16 columns), nothing wasted.
//
// Keys past the sequence. K rows past seqlen_k (another image's keys, zeros past the tensor,
// or, paged, cache slots that may hold NaN) only produce S columns that the mask overwrites
// with -inf. V rows past seqlen_k would multiply p = 0, but 0 · NaN is NaN, so on the last,
// partial tile (the first one walked) each consumer warpgroup zeroes those V rows in shared
// memory before its P·V (ordinary stores, then fence.proxy.async so that wgmma's async-proxy
// reads see them; both warpgroups write the same zeros). Query rows past the run are computed
// and not written. TMA zero-fills only outside the whole tensor, which keeps every read inside
// the allocation.
//
// Paged K/V. A cache block of one kv head is block_size x 128 contiguous elements, so one TMA
// box of (64 columns, box_rows = min(block_size, 128) rows) at (column, offset in block,
// block * kv_heads + kv_head) copies one column block of a whole block, or of 128 keys of a
// bigger one, with no per-row address work: a key tile is 128 / box_rows boxes per column
// block (2 at the engine's block_size 64), the block ids read from the table by the producer
// thread. block_size and 128 are powers of two, so a box never straddles blocks. Boxes wholly
// past seqlen_k are not loaded (their table entries may be invalid); the V zeroing above
// covers their stale shared memory.
//
// Constraints (checked by the launcher): bf16; sm_90 with an sm_90a build; head_dim 128
// (paged) or 72 / 80 (varlen, cu_seqlens_k == cu_seqlens_q, so total_k = total_q); 16-byte aligned
// bases and token strides a multiple of 8 elements (TMA: 16-byte global strides).
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "attention.h"
#include "attention/fa3_launch.cuh"
#include "attention/fa3_ptx.cuh"
#include "attention/ptx.cuh"
#include "common/check.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define OCRVL_FA3_DEVICE 1
#endif

namespace ocrvl::attn::fa3 {

// kConsumerWGs_: consumer warpgroups of 64 query rows each (kBlockM = 64 x it): 2 (the default
// tile) or 3 (kBlockM 192, vision only: each K/V tile loaded serves 1.5x the rows). kStages_:
// K/V ring depth, 2 or (kBlockM 128 only, shared memory) 3.
template <int kHeadDim_, int kHeadDimPV_, bool kPaged_, bool kCausal_, int kMainloop_, int kConsumerWGs_ = 2,
          int kStages_ = 2>
struct Fa3Traits {
    static constexpr int kHeadDim = kHeadDim_;                  // stored width of q, k, v, o rows
    static constexpr int kHeadDimQK = (kHeadDim + 15) / 16 * 16; // Q·Kᵀ contraction (k16 steps)
    static constexpr int kHeadDimPV = kHeadDimPV_;              // N of the P·V wgmma
    static constexpr bool kPaged = kPaged_;
    static constexpr bool kCausal = kCausal_;
    static constexpr int kMainloop = kMainloop_;  // OCRVL_FA3_MAINLOOP_{SERIAL,OVERLAP,PINGPONG}
    static constexpr bool kOverlap = kMainloop != OCRVL_FA3_MAINLOOP_SERIAL;
    static constexpr bool kPingPong = kMainloop == OCRVL_FA3_MAINLOOP_PINGPONG;
    static constexpr int kConsumerWGs = kConsumerWGs_;
    static constexpr int kBlockM = 64 * kConsumerWGs;  // consumer warpgroups x 64 rows (wgmma M)
    static constexpr int kBlockN = 128;  // keys per tile: the N of Q·Kᵀ; 2 cache blocks of 64
    // 2 stages (the default): with K and V released separately, K(n + 1) is copied while
    // S(n - 1) is still being used, a whole tile ahead. 3 (kBlockM 128: 226 KiB) puts the loads
    // one more tile ahead, for when the copies' latency rather than the tensor cores sets the pace.
    static constexpr int kStages = kStages_;
    static constexpr int kThreads = 128 * (1 + kConsumerWGs);
    static constexpr int kConsumerWarps = 4 * kConsumerWGs;
    // Register split (setmaxnreg; the kernel is compiled whole-program, so ptxas honours it):
    // 2 consumers: 128 x 24 + 256 x 240 = 64512 of the SM's 65536 (FA3's split for 3
    // warpgroups); the overlapped mainloops keep S, P(n - 1) and O live at once (64 + 32 + 64
    // for d 128). 3 consumers: 128 x 24 + 384 x 160 = 64512 (FA3's 4-warpgroup split); at d 72
    // S, P(n - 1) and O are 64 + 32 + 36 registers (d 80: 64 + 32 + 40).
    static constexpr int kProducerRegs = 24;
    static constexpr int kConsumerRegs = kConsumerWGs == 2 ? 240 : 160;
    static constexpr int kColBlocks = 2;  // 64-column blocks of a tile (d 128; d 72 and 80 padded)
    static constexpr int kKStepsQK = kHeadDimQK / 16;
    static constexpr int kKStepsPV = kBlockN / 16;
    static constexpr int kNRegsS = kBlockN / 2;     // S accumulator registers a thread
    static constexpr int kNRegsO = kHeadDimPV / 2;  // O accumulator registers a thread
    static constexpr int kNTilesOut = kHeadDim / 8; // n8 column groups of O written
    static constexpr int kQBlockBytes = kBlockM * 128;
    static constexpr int kKVBlockBytes = kBlockN * 128;
    static constexpr int kQBytes = kQBlockBytes * kColBlocks;
    static constexpr int kKVBytes = kKVBlockBytes * kColBlocks;
    // Byte offsets from the 1024-aligned base.
    static constexpr int kOffQ = 0;
    static constexpr int kOffK = kQBytes;
    static constexpr int kOffV = kOffK + kStages * kKVBytes;
    static constexpr int kOffBar = kOffV + kStages * kKVBytes;
    static constexpr int kSmemBytes = kOffBar + 1024 + 1024;

    static_assert(kHeadDimQK <= 64 * kColBlocks && kHeadDimPV <= 64 * kColBlocks, "tile too narrow");
    static_assert(kHeadDimPV >= kHeadDim && kHeadDimPV % 8 == 0, "P·V covers every stored column");
    static_assert(kSmemBytes <= 227 * 1024, "shared memory");
    static_assert(8 * (1 + 4 * kStages) <= 1024, "barrier area");
    static_assert(kConsumerWGs == 2 || kConsumerWGs == 3, "2 or 3 consumer warpgroups");
    static_assert(kStages >= 2, "the overlapped producer order needs 2 slots");
    static_assert(128 * kProducerRegs + 128 * kConsumerWGs * kConsumerRegs <= 65536, "register file");
};

// Named barrier ids (0 is __syncthreads'; the hardware has 16): 1 + c, warpgroup c's 128
// threads after zeroing V rows (c < 3); 4 + c, warpgroup c's ping-pong turn (256 threads: its
// own sync, the previous warpgroup's arrive).
constexpr int kBarZeroV = 1;
constexpr int kBarTurn = 4;

// Barrier slots (8 bytes each) in the barrier area at `bar0`: Q full, then per stage K full,
// V full, K empty and V empty (empty: both consumer warpgroups are done with the slot).
// Computed, not stored in an array: a run-time index into a register array would put it in
// local memory.
__device__ __forceinline__ uint32_t bar_q_full(uint32_t bar0) { return bar0; }
__device__ __forceinline__ uint32_t bar_k_full(uint32_t bar0, int st) { return bar0 + 8 * (1 + 4 * st); }
__device__ __forceinline__ uint32_t bar_v_full(uint32_t bar0, int st) { return bar0 + 8 * (2 + 4 * st); }
__device__ __forceinline__ uint32_t bar_k_empty(uint32_t bar0, int st) { return bar0 + 8 * (3 + 4 * st); }
__device__ __forceinline__ uint32_t bar_v_empty(uint32_t bar0, int st) { return bar0 + 8 * (4 + 4 * st); }

// O += P·V for one k16 step of keys, for the instantiated N.
template <int kN>
__device__ __forceinline__ void wgmma_pv(float (&o)[kN / 2], const uint32_t (&a)[4], uint64_t desc_v);

#ifdef OCRVL_FA3_DEVICE
template <>
__device__ __forceinline__ void wgmma_pv<128>(float (&o)[64], const uint32_t (&a)[4], uint64_t desc_v) {
    wgmma_m64n128k16_rs_tb(o, a, desc_v, 1);
}
template <>
__device__ __forceinline__ void wgmma_pv<72>(float (&o)[36], const uint32_t (&a)[4], uint64_t desc_v) {
    wgmma_m64n72k16_rs_tb(o, a, desc_v, 1);
}
template <>
__device__ __forceinline__ void wgmma_pv<80>(float (&o)[40], const uint32_t (&a)[4], uint64_t desc_v) {
    wgmma_m64n80k16_rs_tb(o, a, desc_v, 1);
}

// Issues the TMA copies of the K or V tile of keys n0 .. n0 + kBlockN (kv head hkv) into the
// stage at `dst`, completing on `bar`, and announces their bytes first.
template <class Kt>
__device__ __forceinline__ void produce_kv(const Fa3Params& p, const CUtensorMap* tmap, uint32_t dst, uint32_t bar,
                                          const int32_t* table, int k_start, int hkv, int n0, int seqlen_k) {
    if constexpr (Kt::kPaged) {
        const int rows = p.box_rows;
        const int boxes = Kt::kBlockN / rows;
        // Boxes holding at least one key < seqlen_k; the rest are skipped (see the file comment).
        const int live = min(boxes, (seqlen_k - n0 + rows - 1) / rows);
        mbar_arrive_expect_tx(bar, (uint32_t)(live * rows * 128 * Kt::kColBlocks));
        for (int j = 0; j < live; ++j) {
            const int pos = n0 + j * rows;
            const int blk = __ldg(table + (pos >> p.log2_block_size));
            const int off = pos & (p.block_size - 1);
#pragma unroll
            for (int cb = 0; cb < Kt::kColBlocks; ++cb) {
                tma_load_3d(dst + cb * Kt::kKVBlockBytes + j * rows * 128, tmap, bar, cb * 64, off,
                            blk * p.num_kv_heads + hkv);
            }
        }
    } else {
        mbar_arrive_expect_tx(bar, (uint32_t)Kt::kKVBytes);
#pragma unroll
        for (int cb = 0; cb < Kt::kColBlocks; ++cb) {
            tma_load_3d(dst + cb * Kt::kKVBlockBytes, tmap, bar, cb * 64, hkv, k_start + n0);
        }
    }
}

// What one consumer warpgroup needs to walk its tiles. n0 of walk index it (0 = the last tile,
// the first walked) is (n_end - 1 - it) * kBlockN; ring slot it % kStages, parity
// (it / kStages) & 1.
struct ConsumerCtx {
    uint32_t base;    // 1024-aligned shared base (shared-window address)
    uint32_t bar0;    // barrier area
    uint32_t q_rows;  // this warpgroup's 64 Q rows in column block 0
    unsigned char* smem;  // generic pointer to `base`
    int n_end, seqlen_k, causal_offset, m0;
    int c, wtid, row0, t4;
    float scale_log2;
};

template <class Kt>
__device__ __forceinline__ uint32_t k_slot(const ConsumerCtx& x, int st) {
    return x.base + Kt::kOffK + st * Kt::kKVBytes;
}
template <class Kt>
__device__ __forceinline__ uint32_t v_slot(const ConsumerCtx& x, int st) {
    return x.base + Kt::kOffV + st * Kt::kKVBytes;
}

// Issues S = Q·Kᵀ as one wgmma group (k16 step ks reads columns 16ks.. of Q and K, 32 bytes
// into column block ks / 4). Does not wait.
template <class Kt>
__device__ __forceinline__ void issue_qk(float (&sc)[Kt::kNRegsS], uint32_t q_rows, uint32_t sK) {
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < Kt::kKStepsQK; ++ks) {
        const uint32_t koff = (ks % 4) * 32;
        const uint64_t da = make_desc_sw128(q_rows + (ks / 4) * Kt::kQBlockBytes + koff, 16, 1024);
        const uint64_t db = make_desc_sw128(sK + (ks / 4) * Kt::kKVBlockBytes + koff, 16, 1024);
        wgmma_m64n128k16_ss(sc, da, db, ks > 0 ? 1 : 0);
    }
    wgmma_commit();
}

// Issues O += P·V as one wgmma group (k16 step kk reads V lines, i.e. keys, 16kk..16kk+15; N
// spans the column blocks). Does not wait; P's registers must stay untouched until it is done.
template <class Kt>
__device__ __forceinline__ void issue_pv(float (&o)[Kt::kNRegsO], const uint32_t (&pa)[Kt::kKStepsPV][4],
                                        uint32_t sV) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < Kt::kKStepsPV; ++kk) {
        wgmma_pv<Kt::kHeadDimPV>(o, pa[kk], make_desc_sw128(sV + kk * 16 * 128, Kt::kKVBlockBytes, 1024));
    }
    wgmma_commit();
}

template <int kN>
__device__ __forceinline__ void fence_regs(float (&r)[kN]) {
#pragma unroll
    for (int i = 0; i < kN; ++i) reg_fence(r[i]);
}

// One arrival per consumer warp on an `empty` barrier (its count is kConsumerWarps), after the
// warp's wgmma.wait_group that retired the reads of the slot.
__device__ __forceinline__ void release_slot(uint32_t bar, int lane) {
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
}

// Masks tiles that reach past the keys or, causal, above the diagonal of this warpgroup's
// first row; every other tile skips this. sc[4j + e] is row row0 + 8(e / 2), key
// n0 + 8j + 2t4 + e % 2.
template <class Kt>
__device__ __forceinline__ void mask_tile(float (&sc)[Kt::kNRegsS], const ConsumerCtx& x, int n0) {
    const bool need_mask = n0 + Kt::kBlockN > x.seqlen_k ||
                           (Kt::kCausal && n0 + Kt::kBlockN - 1 > x.causal_offset + x.m0 + 64 * x.c);
    if (need_mask) {
#pragma unroll
        for (int j = 0; j < Kt::kBlockN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int qi = x.m0 + x.row0 + (e >> 1) * 8;
                const int key = n0 + j * 8 + 2 * x.t4 + (e & 1);
                if (key >= x.seqlen_k || (Kt::kCausal && key > qi + x.causal_offset)) sc[4 * j + e] = -INFINITY;
            }
    }
}

// Online softmax of one tile, per row (hr 0: row0, hr 1: row0 + 8): updates the running max
// (raw score units) and this thread's partial sum, turns sc into p = exp2(s·scale_log2 - m),
// and returns in corr the factor exp(m_old - m_new) that O must be multiplied by.
template <class Kt>
__device__ __forceinline__ void softmax_tile(float (&sc)[Kt::kNRegsS], float (&row_max)[2], float (&row_sum)[2],
                                            float (&corr)[2], float scale_log2) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        float mx = row_max[hr];
#pragma unroll
        for (int j = 0; j < Kt::kBlockN / 8; ++j) mx = fmaxf(mx, fmaxf(sc[4 * j + 2 * hr], sc[4 * j + 2 * hr + 1]));
        // The 4 lanes of a quad hold the row's columns between them.
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // A row that has seen no key yet keeps max -inf; subtract 0 then (no -inf - -inf).
        const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
        corr[hr] = fast_exp2(row_max[hr] * scale_log2 - m_scaled);
        row_max[hr] = mx;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < Kt::kBlockN / 8; ++j)
#pragma unroll
            for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                const float pr = fast_exp2(fmaf(sc[4 * j + e], scale_log2, -m_scaled));
                sc[4 * j + e] = pr;
                sum += pr;
            }
        row_sum[hr] = row_sum[hr] * corr[hr] + sum;
    }
}

template <class Kt>
__device__ __forceinline__ void rescale_o(float (&o)[Kt::kNRegsO], const float (&corr)[2]) {
#pragma unroll
    for (int j = 0; j < Kt::kNRegsO / 4; ++j) {
        o[4 * j + 0] *= corr[0];
        o[4 * j + 1] *= corr[0];
        o[4 * j + 2] *= corr[1];
        o[4 * j + 3] *= corr[1];
    }
}

// P as bf16 A fragments: k16 step kk covers keys 16kk.. = column groups 2kk and 2kk + 1.
template <class Kt>
__device__ __forceinline__ void pack_p(uint32_t (&pa)[Kt::kKStepsPV][4], const float (&sc)[Kt::kNRegsS]) {
#pragma unroll
    for (int kk = 0; kk < Kt::kKStepsPV; ++kk) {
        pa[kk][0] = pack_bf16x2(sc[8 * kk + 0], sc[8 * kk + 1]);
        pa[kk][1] = pack_bf16x2(sc[8 * kk + 2], sc[8 * kk + 3]);
        pa[kk][2] = pack_bf16x2(sc[8 * kk + 4], sc[8 * kk + 5]);
        pa[kk][3] = pack_bf16x2(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
}

// The last, partial tile (keys n0 .. seqlen_k - 1 real): zeroes V rows seqlen_k - n0 ..
// kBlockN - 1 of both column blocks of slot st (whole 128-byte lines, so the swizzle does not
// matter), then makes the stores visible to this warpgroup's wgmma. V of the slot must have
// landed. The other consumer warpgroup writes the same zeros.
template <class Kt>
__device__ __forceinline__ void zero_v_tail(const ConsumerCtx& x, int st, int n0) {
    const int valid = x.seqlen_k - n0;
    const int chunks = (Kt::kBlockN - valid) * 8;  // 16-byte chunks per column block
    for (int i = x.wtid; i < chunks * Kt::kColBlocks; i += 128) {
        const int cb = i / chunks, r = i % chunks;
        *reinterpret_cast<uint4*>(x.smem + Kt::kOffV + st * Kt::kKVBytes + cb * Kt::kKVBlockBytes + valid * 128 +
                                  r * 16) = make_uint4(0, 0, 0, 0);
    }
    fence_proxy_async();
    named_bar_sync(kBarZeroV + x.c, 128);
}

// The first mainloop (OCRVL_FA3_MAINLOOP_SERIAL): per tile S, softmax, P·V, each waited for.
template <class Kt>
__device__ __forceinline__ void mainloop_serial(const ConsumerCtx& x, float (&o)[Kt::kNRegsO], float (&row_max)[2],
                                               float (&row_sum)[2], int lane) {
    for (int it = 0; it < x.n_end; ++it) {
        const int n0 = (x.n_end - 1 - it) * Kt::kBlockN;
        const int st = it % Kt::kStages;
        const uint32_t ph = (uint32_t)(it / Kt::kStages) & 1u;
        float sc[Kt::kNRegsS];
        mbar_wait(bar_k_full(x.bar0, st), ph);
        issue_qk<Kt>(sc, x.q_rows, k_slot<Kt>(x, st));
        wgmma_wait<0>();
        fence_regs(sc);
        mask_tile<Kt>(sc, x, n0);
        float corr[2];
        softmax_tile<Kt>(sc, row_max, row_sum, corr, x.scale_log2);
        rescale_o<Kt>(o, corr);
        uint32_t pa[Kt::kKStepsPV][4];
        pack_p<Kt>(pa, sc);
        mbar_wait(bar_v_full(x.bar0, st), ph);
        if (n0 + Kt::kBlockN > x.seqlen_k) zero_v_tail<Kt>(x, st, n0);
        issue_pv<Kt>(o, pa, v_slot<Kt>(x, st));
        wgmma_wait<0>();
        fence_regs(o);
        release_slot(bar_k_empty(x.bar0, st), lane);
        release_slot(bar_v_empty(x.bar0, st), lane);
    }
}

// The overlapped mainloops (OCRVL_FA3_MAINLOOP_OVERLAP, and _PINGPONG with the turn barriers;
// see the file comment). x.n_end > 0. Turn t of a warpgroup issues S(t) (t < n_end) and
// P(t - 1)·V(t - 1) (t > 0); the softmax of S(t) runs while P(t - 1)·V(t - 1) and the other
// warpgroup's turn are on the tensor cores.
template <class Kt>
__device__ __forceinline__ void mainloop_overlap(const ConsumerCtx& x, float (&o)[Kt::kNRegsO], float (&row_max)[2],
                                                float (&row_sum)[2], int lane) {
    const int n_end = x.n_end;
    // Turns go round the consumer warpgroups in order: c waits on its own barrier and hands the
    // turn to c + 1 (the last to c 0).
    constexpr int kLast = Kt::kConsumerWGs - 1;
    const int turn_me = kBarTurn + x.c, turn_other = kBarTurn + (x.c == kLast ? 0 : x.c + 1);
    if constexpr (Kt::kPingPong) {
        if (x.c == kLast) named_bar_arrive(kBarTurn, 256);  // c 0 takes the first turn
    }
    float sc[Kt::kNRegsS];
    uint32_t pa[Kt::kKStepsPV][4];
    float corr[2];
    {
        // Turn 0: S(0) alone (the last key tile, slot 0, parity 0).
        const int n0 = (n_end - 1) * Kt::kBlockN;
        mbar_wait(bar_k_full(x.bar0, 0), 0);
        if constexpr (Kt::kPingPong) named_bar_sync(turn_me, 256);
        issue_qk<Kt>(sc, x.q_rows, k_slot<Kt>(x, 0));
        if constexpr (Kt::kPingPong) named_bar_arrive(turn_other, 256);
        wgmma_wait<0>();
        fence_regs(sc);
        release_slot(bar_k_empty(x.bar0, 0), lane);
        mask_tile<Kt>(sc, x, n0);
        softmax_tile<Kt>(sc, row_max, row_sum, corr, x.scale_log2);  // O is 0: nothing to rescale
        if (n0 + Kt::kBlockN > x.seqlen_k) {
            mbar_wait(bar_v_full(x.bar0, 0), 0);
            zero_v_tail<Kt>(x, 0, n0);
        }
        pack_p<Kt>(pa, sc);
    }
    for (int it = 1; it < n_end; ++it) {
        // Turn it: S(it) into slot st, P(it - 1)·V(it - 1) from slot pst.
        const int n0 = (n_end - 1 - it) * Kt::kBlockN;
        const int st = it % Kt::kStages, pst = (it - 1) % Kt::kStages;
        const uint32_t ph = (uint32_t)(it / Kt::kStages) & 1u;
        const uint32_t pph = (uint32_t)((it - 1) / Kt::kStages) & 1u;
        mbar_wait(bar_k_full(x.bar0, st), ph);
        mbar_wait(bar_v_full(x.bar0, pst), pph);
        if constexpr (Kt::kPingPong) named_bar_sync(turn_me, 256);
        issue_qk<Kt>(sc, x.q_rows, k_slot<Kt>(x, st));
        issue_pv<Kt>(o, pa, v_slot<Kt>(x, pst));
        if constexpr (Kt::kPingPong) named_bar_arrive(turn_other, 256);
        wgmma_wait<1>();  // S(it) done (groups retire in order); P·V may still run
        fence_regs(sc);
        release_slot(bar_k_empty(x.bar0, st), lane);
        mask_tile<Kt>(sc, x, n0);
        softmax_tile<Kt>(sc, row_max, row_sum, corr, x.scale_log2);
        // ptxas (CUDA 13.0) schedules this wait above the exp2s of the softmax (SASS: the
        // WARPGROUP.DEPBAR 0 sits right after the row max); see docs/notes/attention.md.
        wgmma_wait<0>();
        // O is final for tiles < it at the old max; P(it - 1)'s registers are free. The sc
        // fence keeps the packing below this wait (pa is still read by the P·V until here).
        fence_regs(o);
        fence_regs(sc);
        release_slot(bar_v_empty(x.bar0, pst), lane);
        rescale_o<Kt>(o, corr);
        pack_p<Kt>(pa, sc);
    }
    {
        // Last turn: P·V of the last tile walked; the last warpgroup hands no turn on after it,
        // which balances its opening arrival.
        const int st = (n_end - 1) % Kt::kStages;
        const uint32_t ph = (uint32_t)((n_end - 1) / Kt::kStages) & 1u;
        mbar_wait(bar_v_full(x.bar0, st), ph);
        if constexpr (Kt::kPingPong) named_bar_sync(turn_me, 256);
        issue_pv<Kt>(o, pa, v_slot<Kt>(x, st));
        if constexpr (Kt::kPingPong) {
            if (x.c != kLast) named_bar_arrive(turn_other, 256);
        }
        wgmma_wait<0>();
        fence_regs(o);
        release_slot(bar_v_empty(x.bar0, st), lane);
    }
}

// The producer thread's loads of key tile `it` (walk index) into its ring slot, once both
// consumer warpgroups released the slot's previous tile (the first pass over the ring waits
// on parity 1 of fresh barriers, which passes at once).
template <class Kt>
__device__ __forceinline__ void load_k(const Fa3Params& p, uint32_t base, uint32_t bar0, const int32_t* table,
                                      int k_start, int hkv, int n_end, int seqlen_k, int it) {
    const int st = it % Kt::kStages;
    mbar_wait(bar_k_empty(bar0, st), ((uint32_t)(it / Kt::kStages) & 1u) ^ 1u);
    produce_kv<Kt>(p, &p.tma_k, base + Kt::kOffK + st * Kt::kKVBytes, bar_k_full(bar0, st), table, k_start, hkv,
                   (n_end - 1 - it) * Kt::kBlockN, seqlen_k);
}
template <class Kt>
__device__ __forceinline__ void load_v(const Fa3Params& p, uint32_t base, uint32_t bar0, const int32_t* table,
                                      int k_start, int hkv, int n_end, int seqlen_k, int it) {
    const int st = it % Kt::kStages;
    mbar_wait(bar_v_empty(bar0, st), ((uint32_t)(it / Kt::kStages) & 1u) ^ 1u);
    produce_kv<Kt>(p, &p.tma_v, base + Kt::kOffV + st * Kt::kKVBytes, bar_v_full(bar0, st), table, k_start, hkv,
                   (n_end - 1 - it) * Kt::kBlockN, seqlen_k);
}
#endif

// Grid: causal (num_heads, num_seqs, m_tiles), query tiles in reverse; non-causal (m_tiles,
// num_heads, num_seqs); m_tiles = ceil(max_seqlen_q / kBlockM). Block: (Kt::kThreads) = 384
// (producer warpgroup + 2 consumer warpgroups) or 512 (+ 3). Dynamic shared memory
// Kt::kSmemBytes. One CTA per SM.
// The grid order is the FA2 path's, for the same reasons (fwd_sm80.cuh).
template <class Kt>
__global__ void __launch_bounds__(Kt::kThreads, 1) fa3_fwd_kernel(const __grid_constant__ Fa3Params p) {
#ifdef OCRVL_FA3_DEVICE
    constexpr int kBlockM = Kt::kBlockM, kBlockN = Kt::kBlockN;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    unsigned char* smem = smem_raw + (base - raw);  // generic pointer to `base`
    const uint32_t sQ = base + Kt::kOffQ;
    const uint32_t bar0 = base + Kt::kOffBar;

    const int m_block = Kt::kCausal ? (int)(gridDim.z - 1 - blockIdx.z) : (int)blockIdx.x;
    const int h = Kt::kCausal ? blockIdx.x : blockIdx.y;
    const int s = Kt::kCausal ? blockIdx.y : blockIdx.z;
    const int q_start = p.cu_seqlens_q[s];
    const int q_len = p.cu_seqlens_q[s + 1] - q_start;
    const int m0 = m_block * kBlockM;
    if (m0 >= q_len) return;  // the grid is sized for the longest run; uniform per CTA
    int k_start = 0;
    int seqlen_k;
    if constexpr (Kt::kPaged) {
        seqlen_k = max(0, min(p.seqused_k[s], p.max_keys));
    } else {
        k_start = p.cu_seqlens_k[s];
        seqlen_k = p.cu_seqlens_k[s + 1] - k_start;
    }
    const int hkv = h / p.head_ratio;
    const int causal_offset = seqlen_k - q_len;  // query i sees keys j <= i + causal_offset
    // Key tiles [0, n_end) hold every key some row of this CTA sees; the rest (wholly above
    // the diagonal, or past the keys) are never loaded.
    int n_end = (seqlen_k + kBlockN - 1) / kBlockN;
    if constexpr (Kt::kCausal) {
        const int visible = causal_offset + min(m0 + kBlockM, q_len);  // keys < visible
        n_end = visible <= 0 ? 0 : min(n_end, (visible + kBlockN - 1) / kBlockN);
    }

    if (threadIdx.x == 0) {
        mbar_init(bar_q_full(bar0), 1);
#pragma unroll
        for (int st = 0; st < Kt::kStages; ++st) {
            mbar_init(bar_k_full(bar0, st), 1);
            mbar_init(bar_v_full(bar0, st), 1);
            mbar_init(bar_k_empty(bar0, st), Kt::kConsumerWarps);  // lane 0 of every consumer warp
            mbar_init(bar_v_empty(bar0, st), Kt::kConsumerWarps);
        }
        fence_mbar_init();
    }
    __syncthreads();

    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        // Producer warpgroup: one thread issues everything, the rest exit.
        setmaxnreg_dec<Kt::kProducerRegs>();
        if (threadIdx.x != 0) return;
        prefetch_tmap(&p.tma_q);
        prefetch_tmap(&p.tma_k);
        prefetch_tmap(&p.tma_v);
        mbar_arrive_expect_tx(bar_q_full(bar0), (uint32_t)Kt::kQBytes);
#pragma unroll
        for (int cb = 0; cb < Kt::kColBlocks; ++cb) {
            tma_load_3d(sQ + cb * Kt::kQBlockBytes, &p.tma_q, bar_q_full(bar0), cb * 64, h, q_start + m0);
        }
        const int32_t* table = Kt::kPaged ? p.block_tables + (int64_t)s * p.block_table_stride : nullptr;
        if constexpr (Kt::kOverlap) {
            // The order the consumers need them: K(it) goes out a tile ahead of V(it - 1).
            if (n_end > 0) {
                load_k<Kt>(p, base, bar0, table, k_start, hkv, n_end, seqlen_k, 0);
                for (int it = 1; it < n_end; ++it) {
                    load_k<Kt>(p, base, bar0, table, k_start, hkv, n_end, seqlen_k, it);
                    load_v<Kt>(p, base, bar0, table, k_start, hkv, n_end, seqlen_k, it - 1);
                }
                load_v<Kt>(p, base, bar0, table, k_start, hkv, n_end, seqlen_k, n_end - 1);
            }
        } else {
            for (int it = 0; it < n_end; ++it) {
                load_k<Kt>(p, base, bar0, table, k_start, hkv, n_end, seqlen_k, it);
                load_v<Kt>(p, base, bar0, table, k_start, hkv, n_end, seqlen_k, it);
            }
        }
        return;
    }

    // Consumer warpgroup c owns rows 64c .. 64c + 63 of the tile.
    setmaxnreg_inc<Kt::kConsumerRegs>();
    const int c = wg - 1;
    const int wtid = threadIdx.x - 128 * wg;
    const int lane = wtid % 32;
    const int g = lane >> 2, t4 = lane & 3;
    const int row0 = 64 * c + 16 * (wtid / 32) + g;  // this thread's rows: row0 and row0 + 8
    ConsumerCtx x;
    x.base = base;
    x.bar0 = bar0;
    x.q_rows = sQ + 64 * c * 128;
    x.smem = smem;
    x.n_end = n_end;
    x.seqlen_k = seqlen_k;
    x.causal_offset = causal_offset;
    x.m0 = m0;
    x.c = c;
    x.wtid = wtid;
    x.row0 = row0;
    x.t4 = t4;
    x.scale_log2 = p.scale_log2;

    float o[Kt::kNRegsO];
#pragma unroll
    for (int i = 0; i < Kt::kNRegsO; ++i) o[i] = 0.f;
    // Rows row0 (index 0) and row0 + 8 (index 1); row_max in raw score units, row_sum this
    // thread's partial over its own columns (the quad's partials are summed at the end).
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};

    mbar_wait(bar_q_full(bar0), 0);
    if constexpr (Kt::kOverlap) {
        if (n_end > 0) mainloop_overlap<Kt>(x, o, row_max, row_sum, lane);
    } else {
        mainloop_serial<Kt>(x, o, row_max, row_sum, lane);
    }

    // Epilogue: O / l as bf16; a row with no visible key (l = 0) is written as zeros.
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        float sum = row_sum[hr];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        // __fdividef, not `/`: the IEEE division's slow path is a subroutine call, and a call
        // can make ptxas serialise the kernel's wgmma (C7509). sum is in [1, keys] here, far
        // from __fdividef's limits.
        const float inv = sum > 0.f ? __fdividef(1.f, sum) : 0.f;
        const int qi = m0 + row0 + hr * 8;
        if (qi < q_len) {
            bf16* out = p.o + (int64_t)(q_start + qi) * p.o_stride + (int64_t)h * Kt::kHeadDim + 2 * t4;
#pragma unroll
            for (int dn = 0; dn < Kt::kNTilesOut; ++dn) {
                *reinterpret_cast<uint32_t*>(out + dn * 8) =
                    pack_bf16x2(o[4 * dn + 2 * hr] * inv, o[4 * dn + 2 * hr + 1] * inv);
            }
            if (p.lse != nullptr && t4 == 0) {
                p.lse[(int64_t)h * p.total_q + q_start + qi] =
                    sum > 0.f ? row_max[hr] * p.scale + logf(sum) : -INFINITY;
            }
        }
    }
#else
    // Built for another architecture: the launcher never starts this kernel there.
    __trap();
#endif
}

// Checks nothing (the extern "C" launcher did); sizes the grid and launches on `stream`.
template <class Kt>
int32_t launch_fa3(const Fa3Params& params, int num_seqs, int num_heads, int max_seqlen_q, cudaStream_t stream) {
    // The Q box must be the tile's rows: the Q barrier expects exactly kQBytes.
    if (params.q_box_rows != Kt::kBlockM) return OCRVL_STATUS_INVALID_ARGUMENT;
    const int m_blocks = (max_seqlen_q + Kt::kBlockM - 1) / Kt::kBlockM;
    if (m_blocks == 0 || num_seqs == 0) return OCRVL_STATUS_OK;
    if (Kt::kCausal ? m_blocks > 65535 : num_heads > 65535) return OCRVL_STATUS_UNSUPPORTED;
    auto kernel = fa3_fwd_kernel<Kt>;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Kt::kSmemBytes);
    if (err != cudaSuccess) {
        record_cuda_error(err);
        return OCRVL_STATUS_CUDA_ERROR;
    }
    const dim3 grid = Kt::kCausal ? dim3(num_heads, num_seqs, m_blocks) : dim3(m_blocks, num_heads, num_seqs);
    kernel<<<grid, Kt::kThreads, Kt::kSmemBytes, stream>>>(params);
    return launch_status();
}

// Launches the variant with mainloop `mainloop` (OCRVL_FA3_MAINLOOP_*; DEFAULT is PINGPONG),
// kConsumerWGs consumer warpgroups (kBlockM = 64 x it) and a kStages-deep K/V ring.
template <int kHeadDim, int kHeadDimPV, bool kPaged, bool kCausal, int kConsumerWGs = 2, int kStages = 2>
int32_t launch_fa3_mainloop(const Fa3Params& params, int mainloop, int num_seqs, int num_heads, int max_seqlen_q,
                            cudaStream_t stream) {
    switch (mainloop) {
        case OCRVL_FA3_MAINLOOP_DEFAULT:
        case OCRVL_FA3_MAINLOOP_PINGPONG:
            return launch_fa3<
                Fa3Traits<kHeadDim, kHeadDimPV, kPaged, kCausal, OCRVL_FA3_MAINLOOP_PINGPONG, kConsumerWGs, kStages>>(
                params, num_seqs, num_heads, max_seqlen_q, stream);
        case OCRVL_FA3_MAINLOOP_OVERLAP:
            return launch_fa3<
                Fa3Traits<kHeadDim, kHeadDimPV, kPaged, kCausal, OCRVL_FA3_MAINLOOP_OVERLAP, kConsumerWGs, kStages>>(
                params, num_seqs, num_heads, max_seqlen_q, stream);
        case OCRVL_FA3_MAINLOOP_SERIAL:
            return launch_fa3<
                Fa3Traits<kHeadDim, kHeadDimPV, kPaged, kCausal, OCRVL_FA3_MAINLOOP_SERIAL, kConsumerWGs, kStages>>(
                params, num_seqs, num_heads, max_seqlen_q, stream);
        default:
            return OCRVL_STATUS_UNSUPPORTED;
    }
}

}  // namespace ocrvl::attn::fa3
