/* Row gathers and scatters that build the LM input, and the vision position embedding.
 *
 * All three move 16-byte vectors of 8 bf16: the row length (hidden) must be a multiple of 8,
 * row strides multiples of 8, and the bf16 pointers 16-byte aligned; otherwise they return
 * OCRVL_STATUS_UNSUPPORTED. Dtype: bf16 only (any other returns OCRVL_STATUS_UNSUPPORTED).
 * A row count of 0 launches nothing; rows * hidden / 8 must stay under 2^31 (else
 * UNSUPPORTED).
 * Grid for all of them: (ceil(rows * hidden / 8 / 256)), Block: (256), with rows = tokens,
 * n_rows or total_patches: one 16-byte vector per thread over the rows' vectors flattened in
 * row-major order. */
#pragma once
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[t, :] = table[ids[t], :].
 * out   [tokens, hidden]  row stride out_stride (>= hidden)
 * table [vocab, hidden]   contiguous
 * ids   [tokens]          int32
 * error [1]               int32, device memory the caller zeroed
 * An id outside [0, vocab) writes a row of zeros and is reported, not trapped: the kernel sets
 * *error with atomicCAS(error, 0, id), so the word stays 0 while every id is valid and else
 * holds one of the bad ids (never 0, since 0 is a valid id). The kernel never clears it: the
 * host reads it when it next syncs with the stream (after the step), raises "token id X out of
 * range" and zeroes it. Valid ids pay one compare against vocab and nothing else. */
int32_t ocrvl_embedding_gather(void* out, int64_t out_stride, const void* table, const int32_t* ids,
                               int32_t* error, int64_t tokens, int64_t vocab, int64_t hidden, OcrvlDType dtype,
                               ocrvl_stream_t stream);

/* dst[dst_rows[i], :] = src[i, :]: image features into the placeholder positions of the LM
 * input. The host computes dst_rows in order (the k-th placeholder receives feature k), so the
 * kernel is a plain row copy. Rows of dst not named in dst_rows are not touched. A dst_rows
 * entry outside [0, dst_tokens) is skipped (the host validates before upload); a row named
 * twice gets one of its sources, unspecified which.
 * dst      [dst_tokens, hidden]  row stride dst_stride
 * src      [n_rows, hidden]      row stride src_stride
 * dst_rows [n_rows]              int32 */
int32_t ocrvl_scatter_rows(void* dst, int64_t dst_stride, const void* src, int64_t src_stride,
                           const int32_t* dst_rows, int64_t n_rows, int64_t dst_tokens, int64_t hidden,
                           OcrvlDType dtype, ocrvl_stream_t stream);

/* Learned absolute position embedding, resized per image and added in place (MODEL_SPEC 3.3):
 * x[p, :] += bilinear(table viewed as [side, side, dim], resized to (h, w))[row(p), col(p), :]
 * for every patch p of every image packed in x. Bilinear with align_corners=False and no
 * antialias: sy = max((y + 0.5) * side / h - 0.5, 0), y0 = floor(sy), y1 = min(y0 + 1, side - 1),
 * fy = sy - y0, likewise for x; the four bf16 table rows are weighted in f32, added to x in
 * f32 and the sum is rounded once to bf16. (The hub interpolates in bf16 and then adds; the
 * two agree to bf16 rounding, MODEL_SPEC 3.3.)
 * x          [total_patches, dim]  row stride x_stride; image i owns rows
 *                                  cu_patches[i] .. cu_patches[i+1], in raster order
 *                                  (p - cu_patches[i] = row * w + col)
 * table      [side * side, dim]    contiguous, row y * side + x
 * cu_patches [num_images + 1]      int32, cu_patches[0] = 0, cu_patches[num_images] = total_patches
 * grid_hw    [num_images, 2]       int32 (h, w) in patches, h * w = cu_patches[i+1] - cu_patches[i]
 * Metadata that breaks these rules gives wrong values but never reads or writes out of bounds
 * (table indices are clamped). */
int32_t ocrvl_pos_embed_resample_add(void* x, int64_t x_stride, const void* table, int64_t side,
                                     const int32_t* cu_patches, const int32_t* grid_hw, int64_t num_images,
                                     int64_t total_patches, int64_t dim, OcrvlDType dtype, ocrvl_stream_t stream);

#ifdef __cplusplus
}
#endif
