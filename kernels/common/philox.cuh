// Philox4x32-10: a counter-based random number generator.
//
// J. K. Salmon, M. A. Moraes, R. O. Dror and D. E. Shaw, "Parallel random numbers: as easy as
// 1, 2, 3", Proceedings of SC'11 (2011). A 128-bit counter and a 64-bit key map to 128 random
// bits through 10 rounds; each round multiplies words 0 and 2 by fixed odd constants, feeds the
// high halves (xored with the key and words 1 and 3) and the low halves to the next round's
// four words, and the key is bumped by the Weyl constants between rounds. Being a pure function
// of (counter, key), any thread can draw any number of the stream with no state and no
// ordering between threads. Written from the paper; the constants are the paper's.
//
// Known answers (the paper's reference implementation, Random123's kat_vectors), checked in
// tests/common/ref_sampling.rs against a Rust copy of this function:
//   counter 0, key 0                     -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8
//   counter ffffffff x4, key ffffffff x2 -> 408f276d 41c83b0e a20bc7c6 6d5451fd
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace ocrvl {

__host__ __device__ __forceinline__ uint32_t philox_mulhi(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
    return __umulhi(a, b);
#else
    return (uint32_t)(((uint64_t)a * b) >> 32);
#endif
}

// Returns the 4 x 32 random bits for `counter` under `key`.
__host__ __device__ __forceinline__ uint4 philox4x32_10(uint4 counter, uint2 key) {
    constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
    constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        const uint32_t hi0 = philox_mulhi(kM0, counter.x), lo0 = kM0 * counter.x;
        const uint32_t hi1 = philox_mulhi(kM1, counter.z), lo1 = kM1 * counter.z;
        counter = make_uint4(hi1 ^ counter.y ^ key.x, lo1, hi0 ^ counter.w ^ key.y, lo0);
        key.x += kW0;
        key.y += kW1;
    }
    return counter;
}

}  // namespace ocrvl
