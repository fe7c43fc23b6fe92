// What attention.cu needs to dispatch to the instantiations without compiling any kernel
// body: the kernel argument struct and one declaration per instantiated variant. Each
// variant is defined, with its tile choice and the reason for it, in its own translation
// unit (fwd_*.cu), so that editing one does not recompile the others.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace ocrvl::attn {

using bf16 = __nv_bfloat16;

// Kernel arguments: the launcher's checked copy of OcrvlAttnParams plus derived values.
struct FwdArgs {
    const bf16* q;                // [total_q, num_heads, d], token stride q_stride
    const bf16* k;                // paged [num_blocks, kv_heads, bs, d]; else [total_k, kv_heads, d]
    const bf16* v;                // as k
    bf16* o;                      // [total_q, num_heads, d], token stride o_stride
    float* lse;                   // [num_heads, total_q] or null
    const int32_t* cu_seqlens_q;  // [num_seqs + 1]
    const int32_t* cu_seqlens_k;  // [num_seqs + 1], varlen only
    const int32_t* seqused_k;     // [num_seqs], paged only
    const int32_t* block_tables;  // [num_seqs, block_table_stride], paged only
    int64_t q_stride, k_stride, v_stride, o_stride, block_table_stride;
    int32_t total_q;
    int32_t num_kv_heads;
    int32_t head_ratio;  // num_heads / num_kv_heads
    int32_t block_size;
    int32_t log2_block_size;
    int32_t max_keys;  // paged: max_blocks_per_seq * block_size, the clamp of seqused_k
    float scale;       // softmax scale
    float scale_log2;  // scale * log2(e): scores go through exp2
};

// Launches the variant on `stream`; arguments already checked. Grid (fwd_sm80.cuh):
// causal (num_heads, num_seqs, m_tiles), else (m_tiles, num_heads, num_seqs), with
// m_tiles = ceil(max_seqlen_q / 128). Only the specialisations below exist.
template <int kHeadDim, int kHeadDimQK, bool kPaged, bool kCausal>
int32_t run_fwd(const FwdArgs& args, int num_seqs, int num_heads, int max_seqlen_q, cudaStream_t stream);

// Text prefill over the paged cache, d = 128 (fwd_d128_paged_causal.cu, fwd_d128_paged.cu).
template <>
int32_t run_fwd<128, 128, true, true>(const FwdArgs&, int, int, int, cudaStream_t);
template <>
int32_t run_fwd<128, 128, true, false>(const FwdArgs&, int, int, int, cudaStream_t);
// Vision varlen, d = 72: the 72/80 tile and 72 padded to 96 (fwd_d72_qk80.cu, fwd_d72_qk96.cu).
template <>
int32_t run_fwd<72, 80, false, false>(const FwdArgs&, int, int, int, cudaStream_t);
template <>
int32_t run_fwd<72, 96, false, false>(const FwdArgs&, int, int, int, cudaStream_t);
// Vision varlen, d = 80, unpadded (fwd_d80.cu): ERNIE-4.5-VL's ViT.
template <>
int32_t run_fwd<80, 80, false, false>(const FwdArgs&, int, int, int, cudaStream_t);

}  // namespace ocrvl::attn
