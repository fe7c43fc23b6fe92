// extern "C" launchers for kernels/include/decode.h: argument checks, the split heuristic, the
// workspace layout, and dispatch to the one instantiated shape (bf16, head_dim 128, group 1..8).
#include <stdint.h>

#include "common/check.cuh"
#include "decode.h"
#include "decode/decode_combine.cuh"
#include "decode/paged_decode.cuh"

namespace {

constexpr int64_t kWorkspaceAlign = 256;

int64_t o_part_bytes(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim, int32_t num_splits) {
    const int64_t b = (int64_t)num_splits * num_seqs * num_q_heads * head_dim * (int64_t)sizeof(float);
    return (b + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

bool is_pow2(int32_t v) { return v > 0 && (v & (v - 1)) == 0; }

int32_t log2_exact(int32_t v) {
    int32_t r = 0;
    while ((1 << r) < v) ++r;
    return r;
}

}  // namespace

extern "C" int64_t ocrvl_decode_workspace_size(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim,
                                               int32_t num_splits) {
    if (num_splits <= 1 || num_seqs <= 0 || num_q_heads <= 0 || head_dim <= 0) return 0;
    return o_part_bytes(num_seqs, num_q_heads, head_dim, num_splits) +
           (int64_t)num_splits * num_seqs * num_q_heads * (int64_t)sizeof(float);
}

extern "C" int32_t ocrvl_decode_num_splits(int32_t num_seqs, int32_t num_kv_heads, int32_t max_seq_len,
                                           int32_t sm_count) {
    using namespace ocrvl::decode;
    if (num_seqs <= 0 || num_kv_heads <= 0 || sm_count <= 0) return 1;
    const int64_t ctas = (int64_t)num_seqs * num_kv_heads;
    // Measurements behind these rules: paged_decode.cuh, above kMinKeysPerSplit.
    if (2 * ctas >= sm_count) return 1;
    int64_t splits = (sm_count + ctas - 1) / ctas;
    const int64_t by_len = max_seq_len / kMinKeysPerSplit;
    if (splits > by_len) splits = by_len;
    if (splits > OCRVL_DECODE_MAX_SPLITS) splits = OCRVL_DECODE_MAX_SPLITS;
    return splits < 1 ? 1 : (int32_t)splits;
}

extern "C" int32_t ocrvl_decode_paged(const OcrvlDecodeParams* p, void* workspace, int64_t workspace_bytes,
                                      ocrvl_stream_t stream) {
    using namespace ocrvl::decode;
    OCRVL_CHECK_ARG(p != nullptr);
    OCRVL_CHECK_ARG(p->num_seqs >= 0 && p->num_q_heads > 0 && p->num_kv_heads > 0 && p->head_dim > 0);
    OCRVL_CHECK_ARG(p->num_q_heads % p->num_kv_heads == 0);
    OCRVL_CHECK_ARG(p->block_size > 0 && p->max_blocks_per_seq > 0 && p->num_blocks > 0);
    OCRVL_CHECK_ARG(p->num_splits >= 1);
    OCRVL_CHECK_ARG(p->q_stride >= (int64_t)p->num_q_heads * p->head_dim);
    OCRVL_CHECK_ARG(p->o_stride >= (int64_t)p->num_q_heads * p->head_dim);
    // Grid y and z are 16-bit.
    OCRVL_CHECK_ARG(p->num_seqs <= 65535 && p->num_kv_heads <= 65535);

    if (p->dtype != OCRVL_DTYPE_BF16) return OCRVL_STATUS_UNSUPPORTED;
    if (p->head_dim != kHeadDim) return OCRVL_STATUS_UNSUPPORTED;
    if (p->num_q_heads / p->num_kv_heads > kGroup) return OCRVL_STATUS_UNSUPPORTED;
    if (!is_pow2(p->block_size) || p->block_size < 16 || p->block_size > 256) return OCRVL_STATUS_UNSUPPORTED;
    if (p->num_splits > OCRVL_DECODE_MAX_SPLITS) return OCRVL_STATUS_UNSUPPORTED;
    if (p->num_seqs == 0) return OCRVL_STATUS_OK;

    OCRVL_CHECK_ARG(p->o && p->q && p->k_cache && p->v_cache && p->block_tables && p->seq_lens);
    if (!aligned16(p->o) || !aligned16(p->q) || !aligned16(p->k_cache) || !aligned16(p->v_cache) ||
        p->q_stride % 8 != 0 || p->o_stride % 8 != 0) {
        return OCRVL_STATUS_UNSUPPORTED;
    }

    DecodeArgs a;
    a.o = static_cast<__nv_bfloat16*>(p->o);
    a.q = static_cast<const __nv_bfloat16*>(p->q);
    a.k_cache = static_cast<const __nv_bfloat16*>(p->k_cache);
    a.v_cache = static_cast<const __nv_bfloat16*>(p->v_cache);
    a.block_tables = p->block_tables;
    a.seq_lens = p->seq_lens;
    a.o_part = nullptr;
    a.lse_part = nullptr;
    a.q_stride = p->q_stride;
    a.o_stride = p->o_stride;
    a.num_seqs = p->num_seqs;
    a.num_q_heads = p->num_q_heads;
    a.num_kv_heads = p->num_kv_heads;
    a.group = p->num_q_heads / p->num_kv_heads;
    a.block_size_log2 = log2_exact(p->block_size);
    a.max_blocks_per_seq = p->max_blocks_per_seq;
    a.num_splits = p->num_splits;
    a.scale_log2 = p->scale * 1.4426950408889634f;

    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    if (p->num_splits == 1) return launch_paged_decode_kernel<false>(a, s);

    const int64_t need = ocrvl_decode_workspace_size(p->num_seqs, p->num_q_heads, p->head_dim, p->num_splits);
    OCRVL_CHECK_ARG(workspace != nullptr && workspace_bytes >= need);
    if (!aligned16(workspace)) return OCRVL_STATUS_UNSUPPORTED;
    uint8_t* ws = static_cast<uint8_t*>(workspace);
    a.o_part = reinterpret_cast<float*>(ws);
    a.lse_part = reinterpret_cast<float*>(ws + o_part_bytes(p->num_seqs, p->num_q_heads, p->head_dim, p->num_splits));
    int32_t status = launch_paged_decode_kernel<true>(a, s);
    if (status != OCRVL_STATUS_OK) return status;
    return launch_decode_combine<kHeadDim>(a.o, a.o_stride, a.o_part, a.lse_part, a.num_seqs, a.num_q_heads,
                                           a.num_splits, s);
}
