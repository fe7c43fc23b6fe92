// The vision tower's learned absolute position embedding (MODEL_SPEC 3.3): the side x side
// table is resized bilinearly (align_corners=False, no antialias) to each image's (h, w) patch
// grid and added in place to that image's patch embeddings, several images packed in one call.
//
// One 16-byte vector per thread, the patches' vectors flattened into blocks of 256 threads
// (row_launch, common/vec8.cuh): load x's vector and the four table vectors around the
// source point, weight them in f32, add, round once to bf16, store. The resized table is never
// materialised; the 729-row table (1.7 MB in bf16) stays in L2, so HBM sees x read once and
// written once.
// Measured on the H100 at one 72 x 70 image (5040 x 1152): 11.8 us with x cold (71% of the
// copy rate, counting x read + written and the table once); about 10 us with x in L2, as it is
// after the patch-embedding GEMM (measured with a block per patch, 12.0 us cold). Tried and
// slower: 4 consecutive patches per thread keeping
// the four table vectors in registers along an image row (16.5 us: 95 registers, a quarter of
// the threads, and a dependent chain per patch).
//
// Finding the patch's image: every thread binary-searches cu_patches (the last i with
// cu_patches[i] <= p). Chosen over a per-patch image index because cu_patches is metadata the
// vision attention already needs (it is the vision cu_seqlens), so the host builds and uploads
// nothing more; the search is log2(num_images) loads of a few-word array that the threads of a
// patch read at the same addresses (broadcasts, L1 hits), negligible next to the 2.3 KB row
// each patch moves.
//
// Source coordinates follow PyTorch's upsample_bilinear2d: scale = side / n in f32,
// s = max(scale * (i + 0.5) - 0.5, 0), i0 = floor(s), i1 = min(i0 + 1, side - 1),
// lambda = s - i0. s is also clamped to side - 1, which only matters for metadata that breaks
// the header's rules, so table reads stay in bounds whatever the metadata says.
#pragma once
#include "common/vec8.cuh"

namespace ocrvl {

struct Tap {
    int i0, i1;
    float l1;  // weight of i1; i0 gets 1 - l1
};

__device__ __forceinline__ Tap source_tap(int i, int n, int side) {
    const float scale = (float)side / (float)n;
    float s = scale * ((float)i + 0.5f) - 0.5f;
    s = fminf(fmaxf(s, 0.0f), (float)(side - 1));
    Tap t;
    t.i0 = (int)s;
    t.i1 = min(t.i0 + 1, side - 1);
    t.l1 = s - (float)t.i0;
    return t;
}

// Grid: (ceil(total_patches * dim / 8 / 256)), Block: (256).
template <typename T>
__global__ void pos_embed_resample_add_kernel(T* x,                                  // [total_patches, dim], row stride x_stride
                                              int64_t x_stride,
                                              const T* __restrict__ table,           // [side * side, dim]
                                              int side,
                                              const int32_t* __restrict__ cu_patches, // [num_images + 1]
                                              const int32_t* __restrict__ grid_hw,    // [num_images, 2]
                                              int num_images,
                                              uint32_t total_vecs,  // total_patches * dim / 8
                                              uint32_t dim_vecs) {
    int64_t patch, v;
    if (!row_vec(total_vecs, dim_vecs, patch, v)) return;
    const int p = (int)patch;
    int lo = 0, hi = num_images - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (cu_patches[mid] <= p) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    const int h = grid_hw[2 * lo];
    const int w = grid_hw[2 * lo + 1];
    const int local = p - cu_patches[lo];
    const int row = w > 0 ? local / w : 0;
    const int col = w > 0 ? local - row * w : 0;
    const Tap ty = source_tap(row, h, side);
    const Tap tx = source_tap(col, w, side);

    const int64_t dim = (int64_t)dim_vecs * kVec;
    const int64_t c = v * kVec;
    float p00[kVec], p01[kVec], p10[kVec], p11[kVec], a[kVec];
    load_vec8(table + (int64_t)(ty.i0 * side + tx.i0) * dim + c, p00);
    load_vec8(table + (int64_t)(ty.i0 * side + tx.i1) * dim + c, p01);
    load_vec8(table + (int64_t)(ty.i1 * side + tx.i0) * dim + c, p10);
    load_vec8(table + (int64_t)(ty.i1 * side + tx.i1) * dim + c, p11);
    T* xp = x + (int64_t)p * x_stride + c;
    load_vec8(xp, a);
    const float wy0 = 1.0f - ty.l1, wx0 = 1.0f - tx.l1;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
        a[i] += wy0 * (wx0 * p00[i] + tx.l1 * p01[i]) + ty.l1 * (wx0 * p10[i] + tx.l1 * p11[i]);
    }
    store_vec8(xp, a);
}

template <typename T>
int32_t launch_pos_embed_resample_add(T* x, int64_t x_stride, const T* table, int64_t side,
                                      const int32_t* cu_patches, const int32_t* grid_hw, int64_t num_images,
                                      int64_t total_patches, int64_t dim, cudaStream_t stream) {
    const RowLaunch l = row_launch(total_patches, dim / kVec);
    if (!l.ok) return OCRVL_STATUS_UNSUPPORTED;
    pos_embed_resample_add_kernel<T><<<l.grid, l.block, 0, stream>>>(x, x_stride, table, (int)side, cu_patches,
                                                                     grid_hw, (int)num_images, l.total, l.vecs);
    return launch_status();
}

}  // namespace ocrvl
