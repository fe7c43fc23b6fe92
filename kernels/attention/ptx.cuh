// The sm_80 instructions the attention mainloop is built from, one thin wrapper each: async
// global-to-shared copies (cp.async), shared-to-register matrix loads (ldmatrix), the bf16
// tensor-core MMA (mma.sync m16n8k16) and the fast base-2 exponential. All of them run on
// sm_90 too. Each wrapper names the PTX ISA instruction it wraps.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

namespace ocrvl::attn {

// Shared-memory address as the 32-bit value the .shared state space takes.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// PTX ISA, cp.async: 16 bytes global -> shared, bypassing L1 (.cg). When `valid`
// is false the source size is 0: nothing is read and the 16 bytes are zero-filled, so `src`
// only has to be some valid pointer.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}

// PTX ISA, cp.async.commit_group / cp.async.wait_group: close the current group of copies;
// wait until no copy of this thread is pending.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// PTX ISA, ldmatrix: four 8x8 b16 matrices. Lanes 8j..8j+7 give the row addresses
// of matrix j (16 bytes each); afterwards lane l holds in r[j] row l/4, columns 2(l%4) and
// 2(l%4)+1 of matrix j (the lower column in the low half).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// As ldmatrix_x4 but transposed: lane l holds in r[j] rows 2(l%4) and 2(l%4)+1 (low half
// first) of column l/4 of matrix j, where rows are the addressed rows.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Two matrices, transposed; lanes 0..15 give the addresses (the others are ignored).
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}

// PTX ISA, mma.sync.aligned.m16n8k16 ("Matrix Fragments for mma.m16n8k16"): bf16 inputs,
// f32 accumulators, d += a·b. With g = lane / 4 and t = lane % 4, each .b32 register holds
// two bf16 (the lower column or k in the low half):
//   A (16x16, row-major) a[0]: row g,   k 2t..2t+1     a[1]: row g+8, k 2t..2t+1
//                        a[2]: row g,   k 2t+8..2t+9   a[3]: row g+8, k 2t+8..2t+9
//   B (16x8, "col")      b0:   k 2t..2t+1, column g    b1:   k 2t+8..2t+9, column g
//   C/D (16x8, f32)      d[0], d[1]: row g, columns 2t, 2t+1; d[2], d[3]: row g+8, same.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// PTX ISA, ex2.approx.ftz.f32: 2^x, max relative error 2^-22, ex2(-inf) = +0. The
// accurate exp2f costs several more instructions per score and buys nothing after the
// probabilities are rounded to bf16.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Two f32 as one .b32 of bf16, round to nearest even; `lo` goes to the low half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

}  // namespace ocrvl::attn
