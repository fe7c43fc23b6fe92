// The paged cache's block size check, shared by the cache writers (kv_cache.cu, rope.cu).
#pragma once
#include <stdint.h>

#include "kv_cache.h"

namespace ocrvl {
namespace kv_cache {

// log2 of a power of two in [OCRVL_KV_CACHE_MIN_BLOCK_SIZE, OCRVL_KV_CACHE_MAX_BLOCK_SIZE], else -1.
inline int block_size_log2(int32_t block_size) {
    for (int l = 0; (1 << l) <= OCRVL_KV_CACHE_MAX_BLOCK_SIZE; ++l) {
        if ((1 << l) == block_size) return block_size >= OCRVL_KV_CACHE_MIN_BLOCK_SIZE ? l : -1;
    }
    return -1;
}

}  // namespace kv_cache
}  // namespace ocrvl
