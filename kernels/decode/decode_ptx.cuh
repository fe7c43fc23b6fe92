// Thin wrappers over the sm_80 instructions the decode kernel uses (they run on sm_90 too):
// cp.async with zero fill, ldmatrix, and the bf16 m16n8k16 tensor-core MMA. Each is one PTX
// instruction; the fragment layouts are those of the PTX ISA, "Warp-level matrix fragment
// mma.m16n8k16" (groupID = lane / 4, tig = lane % 4):
//   A (16x16, row): reg0 = (row g, cols 2t, 2t+1), reg1 = (row g+8, same cols),
//                   reg2 = (row g, cols 2t+8, 2t+9), reg3 = (row g+8, cols 2t+8, 2t+9)
//   B (16x8, col):  reg0 = (rows 2t, 2t+1, col g),  reg1 = (rows 2t+8, 2t+9, col g)
//   C (16x8, f32):  c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1)
// The lower-indexed element of each pair sits in the low 16 bits of its register.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

namespace ocrvl {
namespace decode {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy, asynchronous. With valid == false nothing is read from src
// and the 16 bytes are zero-filled (PTX ISA, cp.async: src-size 0).
__device__ __forceinline__ void cp_async_16_zfill(uint32_t dst, const void* src, bool valid) {
    const int src_size = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_size));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N committed groups of this thread are still pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices; lanes 8j..8j+7 give the row addresses of matrix j, and register j
// receives this lane's (row lane/4, cols 2*(lane%4), +1) of matrix j.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// As ldmatrix_x4, transposed: register j receives (rows 2*(lane%4), +1; col lane/4) of
// matrix j as stored.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += A * B with A rows 8..15 zero (the decode kernel's 8 query heads fill rows 0..7 only):
// a0 = A reg0 (row g, k 2t..2t+1), a2 = A reg2 (row g, k 2t+8..2t+9). c[2], c[3] stay 0.
__device__ __forceinline__ void mma_bf16_rows8(float (&c)[4], uint32_t a0, uint32_t a2, uint32_t b0,
                                               uint32_t b1) {
    const uint32_t zero = 0;
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(zero), "r"(a2), "r"(zero), "r"(b0), "r"(b1));
}

// Packs two floats into a bf16x2 register, lo in the low half (round to nearest even).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

}  // namespace decode
}  // namespace ocrvl
