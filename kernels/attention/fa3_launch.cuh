// What fa3_attention.cu needs to dispatch to the FA3 (sm_90a) instantiations without compiling
// any kernel body: the kernel parameter struct, with the TMA tensor maps the launcher encodes,
// and one declaration per instantiated variant (each defined in its own fa3_*.cu).
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "attention/launch.cuh"

namespace ocrvl::attn::fa3 {

// Kernel parameters, passed as one __grid_constant__ struct (the tensor maps must live in
// parameter, constant or global memory for the TMA unit; 3 x 128 bytes here).
struct Fa3Params {
    // Q: 3-D map (head_dim, num_heads, total_q), box (64, 1, q_box_rows), 128-byte swizzle.
    CUtensorMap tma_q;
    // K and V. Varlen: (head_dim, num_kv_heads, total_q), box (64, 1, 128). Paged: (head_dim,
    // block_size, num_blocks * num_kv_heads), box (64, box_rows, 1). 128-byte swizzle.
    CUtensorMap tma_k;
    CUtensorMap tma_v;
    bf16* o;                      // [total_q, num_heads, head_dim], token stride o_stride
    float* lse;                   // [num_heads, total_q] or null
    const int32_t* cu_seqlens_q;  // [num_seqs + 1]
    const int32_t* cu_seqlens_k;  // [num_seqs + 1], varlen only
    const int32_t* seqused_k;     // [num_seqs], paged only
    const int32_t* block_tables;  // [num_seqs, block_table_stride], paged only
    int64_t o_stride;
    int64_t block_table_stride;
    int32_t total_q;
    int32_t num_kv_heads;
    int32_t head_ratio;  // num_heads / num_kv_heads
    int32_t block_size;
    int32_t log2_block_size;
    int32_t box_rows;  // paged: rows of one K/V box, min(block_size, kBlockN)
    int32_t q_box_rows;  // rows of the Q box = the instantiation's kBlockM (checked at launch)
    int32_t max_keys;  // paged: max_blocks_per_seq * block_size, the clamp of seqused_k
    float scale;       // softmax scale
    float scale_log2;  // scale * log2(e)
};

// Launches the variant with mainloop `mainloop` (OCRVL_FA3_MAINLOOP_* of attention.h, checked
// by the caller) on `stream`; arguments and tensor maps already checked and encoded.
// Grid as the FA2 path (launch.cuh): causal (num_heads, num_seqs, m_tiles) with the query
// tiles in reverse, else (m_tiles, num_heads, num_seqs); m_tiles = ceil(max_seqlen_q / kBlockM).
template <int kHeadDim, int kHeadDimPV, bool kPaged, bool kCausal>
int32_t run_fa3(const Fa3Params& params, int mainloop, int num_seqs, int num_heads, int max_seqlen_q,
                cudaStream_t stream);

// Text prefill over the paged cache, d = 128 (fa3_d128_paged_causal.cu, fa3_d128_paged.cu).
template <>
int32_t run_fa3<128, 128, true, true>(const Fa3Params&, int, int, int, int, cudaStream_t);
template <>
int32_t run_fa3<128, 128, true, false>(const Fa3Params&, int, int, int, int, cudaStream_t);
// Vision varlen, d = 72: P·V over 72 (the default) and over 128 (fa3_d72.cu).
template <>
int32_t run_fa3<72, 72, false, false>(const Fa3Params&, int, int, int, int, cudaStream_t);
template <>
int32_t run_fa3<72, 128, false, false>(const Fa3Params&, int, int, int, int, cudaStream_t);

// Vision varlen, d = 80 (ERNIE-4.5-VL's ViT): kBlockM 128 (fa3_d80.cu) and kBlockM 192 with
// three consumer warpgroups (fa3_d80_m192.cu); the Q box of `params` must have kBlockM rows.
template <>
int32_t run_fa3<80, 80, false, false>(const Fa3Params&, int, int, int, int, cudaStream_t);
int32_t run_fa3_d80_m192(const Fa3Params& params, int mainloop, int num_seqs, int num_heads, int max_seqlen_q,
                         cudaStream_t stream);

// Vision varlen, d = 72 (Q·Kᵀ over 80, P·V over 72), the other tiles (OCRVL_FA3_VISION_* of
// attention.h): kBlockM 128 with a 3-stage K/V ring (fa3_d72_s3.cu), kBlockM 192 with three
// consumer warpgroups (fa3_d72_m192.cu). The Q box of `params` must have kBlockM rows.
int32_t run_fa3_d72_s3(const Fa3Params& params, int mainloop, int num_seqs, int num_heads, int max_seqlen_q,
                       cudaStream_t stream);
int32_t run_fa3_d72_m192(const Fa3Params& params, int mainloop, int num_seqs, int num_heads, int max_seqlen_q,
                         cudaStream_t stream);

}  // namespace ocrvl::attn::fa3
