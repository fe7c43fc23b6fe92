// extern "C" launchers for kernels/include/attention.h: argument checks, then dispatch to the
// instantiation for (head_dim, padding, causal). The kernels themselves are compiled in the
// fwd_*.cu translation units; this one only sees their declarations (launch.cuh).
#include <math.h>

#include "attention.h"
#include "attention/launch.cuh"
#include "common/check.cuh"
#include "kv_cache.h"

namespace {

using ocrvl::attn::bf16;
using ocrvl::attn::FwdArgs;

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// A token stride that 16-byte copies can use and that holds `row` elements.
bool stride_ok(int64_t stride, int64_t row) { return stride >= row && stride % 8 == 0; }

// Checks shared by both entry points; fills everything in `args` but the K/V specifics.
int32_t check_common(const OcrvlAttnParams* p, FwdArgs* args) {
    OCRVL_CHECK_ARG(p != nullptr);
    if (p->dtype != OCRVL_DTYPE_BF16) return OCRVL_STATUS_UNSUPPORTED;
    OCRVL_CHECK_ARG(p->num_seqs >= 0 && p->total_q >= 0 && p->max_seqlen_q >= 0);
    OCRVL_CHECK_ARG(p->num_heads > 0 && p->num_kv_heads > 0 && p->head_dim > 0);
    OCRVL_CHECK_ARG(p->num_heads % p->num_kv_heads == 0);
    // The scale must be positive: the running max is kept in raw score units.
    OCRVL_CHECK_ARG(isfinite(p->scale) && p->scale > 0.f);
    OCRVL_CHECK_ARG(p->q != nullptr && p->k != nullptr && p->v != nullptr && p->o != nullptr);
    OCRVL_CHECK_ARG(p->cu_seqlens_q != nullptr);
    OCRVL_CHECK_ARG(aligned16(p->q) && aligned16(p->k) && aligned16(p->v) && aligned16(p->o));
    const int64_t q_row = (int64_t)p->num_heads * p->head_dim;
    OCRVL_CHECK_ARG(stride_ok(p->q_stride, q_row) && stride_ok(p->o_stride, q_row));
    OCRVL_CHECK_ARG(p->lse == nullptr || (reinterpret_cast<uintptr_t>(p->lse) & 3) == 0);
    // Sequences go in grid dim y or z (at most 65535); launch_fwd checks the other dims.
    if (p->num_seqs > 65535) return OCRVL_STATUS_UNSUPPORTED;
    *args = FwdArgs{};
    args->q = static_cast<const bf16*>(p->q);
    args->k = static_cast<const bf16*>(p->k);
    args->v = static_cast<const bf16*>(p->v);
    args->o = static_cast<bf16*>(p->o);
    args->lse = p->lse;
    args->cu_seqlens_q = p->cu_seqlens_q;
    args->q_stride = p->q_stride;
    args->o_stride = p->o_stride;
    args->total_q = p->total_q;
    args->num_kv_heads = p->num_kv_heads;
    args->head_ratio = p->num_heads / p->num_kv_heads;
    args->scale = p->scale;
    args->scale_log2 = p->scale * 1.4426950408889634f;
    return OCRVL_STATUS_OK;
}

}  // namespace

extern "C" int32_t ocrvl_attention_prefill_paged(const OcrvlAttnParams* p, ocrvl_stream_t stream) {
    FwdArgs args;
    const int32_t st = check_common(p, &args);
    if (st != OCRVL_STATUS_OK) return st;
    OCRVL_CHECK_ARG(p->seqused_k != nullptr && p->block_tables != nullptr);
    OCRVL_CHECK_ARG(p->num_blocks > 0 && p->max_blocks_per_seq > 0);
    OCRVL_CHECK_ARG(p->block_table_stride >= p->max_blocks_per_seq);
    if (p->head_dim != 128) return OCRVL_STATUS_UNSUPPORTED;
    const int bs = p->block_size;
    // The block sizes of the cache contract (kv_cache.h); any power of two would do here.
    if (bs < OCRVL_KV_CACHE_MIN_BLOCK_SIZE || bs > OCRVL_KV_CACHE_MAX_BLOCK_SIZE || (bs & (bs - 1)) != 0) {
        return OCRVL_STATUS_UNSUPPORTED;
    }
    args.seqused_k = p->seqused_k;
    args.block_tables = p->block_tables;
    args.block_table_stride = p->block_table_stride;
    args.block_size = bs;
    args.log2_block_size = 31 - __builtin_clz((unsigned)bs);
    const int64_t max_keys = (int64_t)p->max_blocks_per_seq * bs;
    args.max_keys = max_keys > INT32_MAX ? INT32_MAX : (int32_t)max_keys;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    switch (p->causal) {
        case 1: return ocrvl::attn::run_fwd<128, 128, true, true>(args, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
        case 0: return ocrvl::attn::run_fwd<128, 128, true, false>(args, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
        default: return OCRVL_STATUS_INVALID_ARGUMENT;
    }
}

extern "C" int32_t ocrvl_attention_varlen(const OcrvlAttnParams* p, ocrvl_stream_t stream) {
    FwdArgs args;
    const int32_t st = check_common(p, &args);
    if (st != OCRVL_STATUS_OK) return st;
    OCRVL_CHECK_ARG(p->cu_seqlens_k != nullptr);
    const int64_t kv_row = (int64_t)p->num_kv_heads * p->head_dim;
    OCRVL_CHECK_ARG(stride_ok(p->k_stride, kv_row) && stride_ok(p->v_stride, kv_row));
    OCRVL_CHECK_ARG(p->causal == 0 || p->causal == 1);
    // Only the vision shapes are built: non-causal d = 72 (PaddleOCR-VL) and d = 80
    // (ERNIE-4.5-VL, unpadded: padded_head_dim 0 or 80).
    if (p->causal != 0 || (p->head_dim != 72 && p->head_dim != 80)) return OCRVL_STATUS_UNSUPPORTED;
    args.cu_seqlens_k = p->cu_seqlens_k;
    args.k_stride = p->k_stride;
    args.v_stride = p->v_stride;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    if (p->head_dim == 80) {
        if (p->padded_head_dim != 0 && p->padded_head_dim != 80) return OCRVL_STATUS_UNSUPPORTED;
        return ocrvl::attn::run_fwd<80, 80, false, false>(args, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
    }
    switch (p->padded_head_dim) {
        case 0:
        case 80: return ocrvl::attn::run_fwd<72, 80, false, false>(args, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
        case 96: return ocrvl::attn::run_fwd<72, 96, false, false>(args, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
        default: return OCRVL_STATUS_UNSUPPORTED;
    }
}
