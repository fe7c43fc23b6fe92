// extern "C" launchers of the FA3 path (attention.h): argument checks, the device check (sm_90
// with sm_90a code in this build), the TMA tensor maps, then dispatch to the instantiation
// (fa3_*.cu). The tensor maps are encoded here on the host with the driver's
// cuTensorMapEncodeTiled, found through the runtime's cudaGetDriverEntryPointByVersion: the
// crate loads libcuda at run time and links no -lcuda. Encoding is host-only work (no driver
// round trip), a few hundred nanoseconds per map.
#include <cuda.h>
#include <math.h>

#include "attention.h"
#include "attention/fa3_launch.cuh"
#include "common/check.cuh"
#include "common/sm90a.cuh"
#include "kv_cache.h"

namespace {

using ocrvl::attn::fa3::Fa3Params;

typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                  const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled (its CUDA 12.0 ABI), looked up once; null if missing.
EncodeTiledFn encode_fn() {
    static const EncodeTiledFn fn = [] {
        void* f = nullptr;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                                 cudaEnableDefault, &q);
        return err == cudaSuccess && q == cudaDriverEntryPointSuccess ? reinterpret_cast<EncodeTiledFn>(f) : nullptr;
    }();
    return fn;
}

// A 3-D bf16 tensor map over `base`: dims (d0, d1, d2) innermost first, byte strides (s1, s2)
// of dims 1 and 2, box (64, b1, b2), 128-byte swizzle, zeros outside the tensor.
int32_t encode_3d(CUtensorMap* map, const void* base, uint64_t d0, uint64_t d1, uint64_t d2, uint64_t s1, uint64_t s2,
                  uint32_t b1, uint32_t b2) {
    const EncodeTiledFn encode = encode_fn();
    if (encode == nullptr) {
        ocrvl::record_cuda_error(cudaErrorSymbolNotFound);
        return OCRVL_STATUS_CUDA_ERROR;
    }
    const cuuint64_t dims[3] = {d0, d1, d2};
    const cuuint64_t strides[2] = {s1, s2};
    const cuuint32_t box[3] = {64, b1, b2};
    const cuuint32_t elem_strides[3] = {1, 1, 1};
    const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides, box,
                              elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    // The checks before this one leave only limits TMA has and the FA2 path does not.
    return r == CUDA_SUCCESS ? OCRVL_STATUS_OK : OCRVL_STATUS_UNSUPPORTED;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// A token stride TMA can use (a multiple of 16 bytes) that holds `row` elements.
bool stride_ok(int64_t stride, int64_t row) { return stride >= row && stride % 8 == 0; }


// Checks shared by both entry points (those of attention.cu, plus the device); fills every
// field of `out` but the tensor maps and the K/V specifics.
int32_t check_common(const OcrvlAttnParams* p, Fa3Params* out) {
    OCRVL_CHECK_ARG(p != nullptr);
    if (p->dtype != OCRVL_DTYPE_BF16) return OCRVL_STATUS_UNSUPPORTED;
    OCRVL_CHECK_ARG(p->num_seqs >= 0 && p->total_q >= 0 && p->max_seqlen_q >= 0);
    OCRVL_CHECK_ARG(p->num_heads > 0 && p->num_kv_heads > 0 && p->head_dim > 0);
    OCRVL_CHECK_ARG(p->num_heads % p->num_kv_heads == 0);
    OCRVL_CHECK_ARG(isfinite(p->scale) && p->scale > 0.f);
    OCRVL_CHECK_ARG(p->q != nullptr && p->k != nullptr && p->v != nullptr && p->o != nullptr);
    OCRVL_CHECK_ARG(p->cu_seqlens_q != nullptr);
    OCRVL_CHECK_ARG(aligned16(p->q) && aligned16(p->k) && aligned16(p->v) && aligned16(p->o));
    const int64_t q_row = (int64_t)p->num_heads * p->head_dim;
    OCRVL_CHECK_ARG(stride_ok(p->q_stride, q_row) && stride_ok(p->o_stride, q_row));
    OCRVL_CHECK_ARG(p->lse == nullptr || (reinterpret_cast<uintptr_t>(p->lse) & 3) == 0);
    OCRVL_CHECK_ARG(p->fa3_mainloop >= OCRVL_FA3_MAINLOOP_DEFAULT && p->fa3_mainloop <= OCRVL_FA3_MAINLOOP_PINGPONG);
    if (p->num_seqs > 65535) return OCRVL_STATUS_UNSUPPORTED;
    if (!ocrvl::sm90a_device()) return OCRVL_STATUS_UNSUPPORTED;
    *out = Fa3Params{};
    out->o = static_cast<ocrvl::attn::bf16*>(p->o);
    out->lse = p->lse;
    out->cu_seqlens_q = p->cu_seqlens_q;
    out->o_stride = p->o_stride;
    out->total_q = p->total_q;
    out->num_kv_heads = p->num_kv_heads;
    out->head_ratio = p->num_heads / p->num_kv_heads;
    out->scale = p->scale;
    out->scale_log2 = p->scale * 1.4426950408889634f;
    return OCRVL_STATUS_OK;
}

// Q of either entry point: (head_dim, num_heads, total_q), boxes of `rows` rows (the kBlockM
// of the instantiation that will run; its launcher checks q_box_rows).
int32_t encode_q(const OcrvlAttnParams* p, Fa3Params* out, int rows) {
    out->q_box_rows = rows;
    return encode_3d(&out->tma_q, p->q, p->head_dim, p->num_heads, p->total_q, (uint64_t)p->head_dim * 2,
                     (uint64_t)p->q_stride * 2, 1, (uint32_t)rows);
}

}  // namespace

extern "C" int32_t ocrvl_attention_fa3_supported(void) {
#ifdef OCRVL_HAS_SM90A
    return 1;
#else
    return 0;
#endif
}

extern "C" int32_t ocrvl_attention_prefill_paged_fa3(const OcrvlAttnParams* p, ocrvl_stream_t stream) {
    Fa3Params params;
    int32_t st = check_common(p, &params);
    if (st != OCRVL_STATUS_OK) return st;
    OCRVL_CHECK_ARG(p->seqused_k != nullptr && p->block_tables != nullptr);
    OCRVL_CHECK_ARG(p->num_blocks > 0 && p->max_blocks_per_seq > 0);
    OCRVL_CHECK_ARG(p->block_table_stride >= p->max_blocks_per_seq);
    OCRVL_CHECK_ARG(p->causal == 0 || p->causal == 1);
    if (p->head_dim != 128) return OCRVL_STATUS_UNSUPPORTED;
    const int bs = p->block_size;
    if (bs < OCRVL_KV_CACHE_MIN_BLOCK_SIZE || bs > OCRVL_KV_CACHE_MAX_BLOCK_SIZE || (bs & (bs - 1)) != 0) {
        return OCRVL_STATUS_UNSUPPORTED;
    }
    // TMA coordinates are int32: the (block, kv head) index must fit.
    if ((int64_t)p->num_blocks * p->num_kv_heads > INT32_MAX) return OCRVL_STATUS_UNSUPPORTED;
    if (p->num_seqs == 0 || p->total_q == 0 || p->max_seqlen_q == 0) return OCRVL_STATUS_OK;
    params.seqused_k = p->seqused_k;
    params.block_tables = p->block_tables;
    params.block_table_stride = p->block_table_stride;
    params.block_size = bs;
    params.log2_block_size = 31 - __builtin_clz((unsigned)bs);
    // kBlockN = 128 keys per tile (fa3_fwd.cuh): one box per column block when the block holds
    // a whole tile, else 128 / block_size boxes.
    params.box_rows = bs < 128 ? bs : 128;
    const int64_t max_keys = (int64_t)p->max_blocks_per_seq * bs;
    params.max_keys = max_keys > INT32_MAX ? INT32_MAX : (int32_t)max_keys;
    if ((st = encode_q(p, &params, 128)) != OCRVL_STATUS_OK) return st;
    const uint64_t rows = (uint64_t)p->num_blocks * p->num_kv_heads;
    const uint64_t block_bytes = (uint64_t)bs * 128 * 2;
    if ((st = encode_3d(&params.tma_k, p->k, 128, bs, rows, 256, block_bytes, params.box_rows, 1)) != OCRVL_STATUS_OK) {
        return st;
    }
    if ((st = encode_3d(&params.tma_v, p->v, 128, bs, rows, 256, block_bytes, params.box_rows, 1)) != OCRVL_STATUS_OK) {
        return st;
    }
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    using ocrvl::attn::fa3::run_fa3;
    const int ml = p->fa3_mainloop;
    if (p->causal) return run_fa3<128, 128, true, true>(params, ml, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
    return run_fa3<128, 128, true, false>(params, ml, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
}

extern "C" int32_t ocrvl_attention_varlen_fa3(const OcrvlAttnParams* p, ocrvl_stream_t stream) {
    Fa3Params params;
    int32_t st = check_common(p, &params);
    if (st != OCRVL_STATUS_OK) return st;
    OCRVL_CHECK_ARG(p->cu_seqlens_k != nullptr);
    const int64_t kv_row = (int64_t)p->num_kv_heads * p->head_dim;
    OCRVL_CHECK_ARG(stride_ok(p->k_stride, kv_row) && stride_ok(p->v_stride, kv_row));
    OCRVL_CHECK_ARG(p->causal == 0 || p->causal == 1);
    if (p->causal != 0 || (p->head_dim != 72 && p->head_dim != 80)) return OCRVL_STATUS_UNSUPPORTED;
    // The key tensor maps need total_k on the host; self-attention (one cu_seqlens) gives it.
    if (p->cu_seqlens_k != p->cu_seqlens_q) return OCRVL_STATUS_UNSUPPORTED;
    if (p->padded_head_dim != 0 && p->padded_head_dim != 80 && p->padded_head_dim != 128) {
        return OCRVL_STATUS_UNSUPPORTED;
    }
    OCRVL_CHECK_ARG(p->fa3_vision_tile >= OCRVL_FA3_VISION_DEFAULT && p->fa3_vision_tile <= OCRVL_FA3_VISION_M192);
    // The default tile by image length, as measured on the H100 (docs/notes/attention.md):
    // 192 query rows reuse each K/V tile 1.5x as often, 471 against 331 TFLOP/s at 4 x 5040
    // patches; a short image gets too few CTAs of 192 rows to fill the GPU (1 x 576: 105
    // against 116), so below kM192MinLen it keeps 128 rows. P·V over 128 exists only for M128.
    constexpr int32_t kM192MinLen = 1024;
    // At d 80 the default stays M128: with three consumer warpgroups (160 registers each) the
    // overlapped mainloops' S, P and O (64 + 32 + 40) do not fit and ptxas serialises their
    // wgmma (C7512). Timed at 1 x 7200 patches (H100, round 10): M128 543 us, M192 700 us with
    // the default mainloop, 664 overlapped, 516 with v1 (5% ahead, but v1 is a global choice),
    // so M192 at d 80 stays for measurement.
    const bool long_d72 = p->max_seqlen_q >= kM192MinLen && p->padded_head_dim != 128 && p->head_dim == 72;
    const int tile = p->fa3_vision_tile != OCRVL_FA3_VISION_DEFAULT ? p->fa3_vision_tile
                     : long_d72                                     ? OCRVL_FA3_VISION_M192
                                                                    : OCRVL_FA3_VISION_M128;
    // P·V over 128 is built for the M128 tile only.
    if (p->padded_head_dim == 128 && tile != OCRVL_FA3_VISION_M128) return OCRVL_STATUS_UNSUPPORTED;
    // d 80 is built as P·V over 80 with the M128 and M192 tiles.
    const bool d80 = p->head_dim == 80;
    if (d80 && (p->padded_head_dim == 128 || tile == OCRVL_FA3_VISION_M128_S3)) return OCRVL_STATUS_UNSUPPORTED;
    if (p->num_seqs == 0 || p->total_q == 0 || p->max_seqlen_q == 0) return OCRVL_STATUS_OK;
    params.cu_seqlens_k = p->cu_seqlens_k;
    if ((st = encode_q(p, &params, tile == OCRVL_FA3_VISION_M192 ? 192 : 128)) != OCRVL_STATUS_OK) return st;
    const uint64_t d = (uint64_t)p->head_dim;
    if ((st = encode_3d(&params.tma_k, p->k, d, p->num_kv_heads, p->total_q, d * 2, (uint64_t)p->k_stride * 2, 1,
                        128)) != OCRVL_STATUS_OK) {
        return st;
    }
    if ((st = encode_3d(&params.tma_v, p->v, d, p->num_kv_heads, p->total_q, d * 2, (uint64_t)p->v_stride * 2, 1,
                        128)) != OCRVL_STATUS_OK) {
        return st;
    }
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    using ocrvl::attn::fa3::run_fa3;
    const int ml = p->fa3_mainloop;
    if (d80) {
        return tile == OCRVL_FA3_VISION_M192
                   ? ocrvl::attn::fa3::run_fa3_d80_m192(params, ml, p->num_seqs, p->num_heads, p->max_seqlen_q, s)
                   : run_fa3<80, 80, false, false>(params, ml, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
    }
    if (p->padded_head_dim == 128) {
        return run_fa3<72, 128, false, false>(params, ml, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
    }
    switch (tile) {
        case OCRVL_FA3_VISION_M128:
            return run_fa3<72, 72, false, false>(params, ml, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
        case OCRVL_FA3_VISION_M128_S3:
            return ocrvl::attn::fa3::run_fa3_d72_s3(params, ml, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
        case OCRVL_FA3_VISION_M192:
            return ocrvl::attn::fa3::run_fa3_d72_m192(params, ml, p->num_seqs, p->num_heads, p->max_seqlen_q, s);
        default:
            return OCRVL_STATUS_UNSUPPORTED;
    }
}
