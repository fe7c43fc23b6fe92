//! Wrappers for `kernels/include/embedding.h`: the token-embedding gather, the scatter of
//! image features into placeholder rows, and the vision position embedding.

use crate::error::{Error, Result};
use crate::runtime::{DType, Gpu, TensorView, TensorViewMut};
use crate::sys;

use super::elementwise::{matrix, same_dtype};
use super::{c_dtype, check};

/// Checks that `v` is a contiguous int32 vector of `len` elements.
fn index_vector(op: &'static str, what: &str, v: &TensorView<'_>, len: usize) -> Result<()> {
    if v.dtype() != DType::I32 || v.dims() != [len] {
        return Err(Error::invalid(
            op,
            format!("{what}: expected i32 [{len}], got {} {:?}", v.dtype(), v.dims()),
        ));
    }
    Ok(())
}

fn contiguous(op: &'static str, what: &str, v: &TensorView<'_>) -> Result<()> {
    if !v.is_contiguous() {
        return Err(Error::invalid(op, format!("{what} must be contiguous")));
    }
    Ok(())
}

/// `out[t, :] = table[ids[t], :]`. `table` [vocab, hidden] contiguous, `out` [tokens, hidden]
/// (rows may be strided), both bf16; `ids` i32 [tokens]; `error` i32 [1], zeroed by the caller.
///
/// An id outside `[0, vocab)` writes a row of zeros and stores one of the bad ids in `error`
/// (which stays 0 while all ids are valid). Nothing here waits for the GPU: call
/// [`take_embedding_error`] after the step to turn a report into an error.
pub fn embedding_gather(
    gpu: &Gpu,
    out: &mut TensorViewMut<'_>,
    table: &TensorView<'_>,
    ids: &TensorView<'_>,
    error: &mut TensorViewMut<'_>,
) -> Result<()> {
    const OP: &str = "embedding_gather";
    let (tokens, hidden, out_stride) = matrix(OP, "out", out.dims(), out.stride0())?;
    let (vocab, table_width, _) = matrix(OP, "table", table.dims(), table.stride0())?;
    contiguous(OP, "table", table)?;
    if table_width != hidden {
        return Err(Error::invalid(
            OP,
            format!("table is {:?} but out rows are {hidden} wide", table.dims()),
        ));
    }
    index_vector(OP, "ids", ids, tokens as usize)?;
    index_vector(OP, "error", &error.as_view(), 1)?;
    same_dtype(OP, &[("out", out.dtype()), ("table", table.dtype())])?;
    // SAFETY: out addresses [tokens, hidden] at its stride, table [vocab, hidden] contiguous,
    // ids [tokens] and error [1] int32, all on this GPU; out is borrowed mutably, so it aliases
    // none of the inputs.
    let status = unsafe {
        sys::ocrvl_embedding_gather(
            out.device_ptr() as *mut _,
            out_stride,
            table.device_ptr() as *const _,
            ids.device_ptr() as *const i32,
            error.device_ptr() as *mut i32,
            tokens,
            vocab,
            hidden,
            c_dtype(out.dtype()),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// Reads the error word of [`embedding_gather`] (waits for the stream). When a bad id was
/// reported, zeroes the word for the next step and returns "token id X out of range".
pub fn take_embedding_error(gpu: &Gpu, error: &mut TensorViewMut<'_>, vocab: usize) -> Result<()> {
    const OP: &str = "embedding_gather";
    index_vector(OP, "error", &error.as_view(), 1)?;
    let id = error.to_host::<i32>(gpu)?[0];
    if id == 0 {
        return Ok(());
    }
    error.copy_from_host(gpu, &[0i32])?;
    Err(Error::invalid(OP, format!("token id {id} out of range [0, {vocab})")))
}

/// `dst[dst_rows[i], :] = src[i, :]`: image features into the placeholder rows of the LM
/// input. `dst` [tokens, hidden], `src` [n, hidden] (rows of both may be strided), bf16;
/// `dst_rows` i32 [n], computed on the host in order (placeholder k gets feature k), each in
/// `[0, tokens)` and distinct. Rows of `dst` not named are untouched. The kernel skips an
/// out-of-range entry rather than write out of bounds, so validate `dst_rows` before upload.
pub fn scatter_rows(
    gpu: &Gpu,
    dst: &mut TensorViewMut<'_>,
    src: &TensorView<'_>,
    dst_rows: &TensorView<'_>,
) -> Result<()> {
    const OP: &str = "scatter_rows";
    let (tokens, hidden, dst_stride) = matrix(OP, "dst", dst.dims(), dst.stride0())?;
    let (n_rows, src_width, src_stride) = matrix(OP, "src", src.dims(), src.stride0())?;
    if src_width != hidden {
        return Err(Error::invalid(
            OP,
            format!("src is {:?} but dst rows are {hidden} wide", src.dims()),
        ));
    }
    index_vector(OP, "dst_rows", dst_rows, n_rows as usize)?;
    same_dtype(OP, &[("dst", dst.dtype()), ("src", src.dtype())])?;
    // SAFETY: dst addresses [tokens, hidden] and src [n_rows, hidden] at their strides,
    // dst_rows [n_rows] int32; the kernel writes only dst rows in [0, tokens).
    let status = unsafe {
        sys::ocrvl_scatter_rows(
            dst.device_ptr() as *mut _,
            dst_stride,
            src.device_ptr() as *const _,
            src_stride,
            dst_rows.device_ptr() as *const i32,
            n_rows,
            tokens,
            hidden,
            c_dtype(dst.dtype()),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}

/// Adds the learned position embedding, bilinearly resized to each image's patch grid
/// (align_corners=False, no antialias; MODEL_SPEC §3.3), to the packed patch embeddings in
/// place. `x` [total_patches, dim] bf16 (rows may be strided), image i owning rows
/// `cu_patches[i]..cu_patches[i+1]` in raster order; `table` [side * side, dim] bf16
/// contiguous; `cu_patches` i32 [num_images + 1]; `grid_hw` i32 [num_images, 2] = (h, w) in
/// patches, with h * w patches per image. The device metadata is not read here: the caller
/// keeps it consistent (wrong metadata gives wrong values, never out-of-bounds accesses).
pub fn pos_embed_resample_add(
    gpu: &Gpu,
    x: &mut TensorViewMut<'_>,
    table: &TensorView<'_>,
    side: usize,
    cu_patches: &TensorView<'_>,
    grid_hw: &TensorView<'_>,
) -> Result<()> {
    const OP: &str = "pos_embed_resample_add";
    let (total, dim, x_stride) = matrix(OP, "x", x.dims(), x.stride0())?;
    contiguous(OP, "table", table)?;
    if table.dims() != [side * side, dim as usize] {
        return Err(Error::invalid(
            OP,
            format!("table is {:?}, expected [{side}*{side}, {dim}]", table.dims()),
        ));
    }
    let num_images = match cu_patches.dims() {
        [n] if *n >= 1 => n - 1,
        d => {
            return Err(Error::invalid(
                OP,
                format!("cu_patches must be [num_images + 1], got {d:?}"),
            ))
        }
    };
    index_vector(OP, "cu_patches", cu_patches, num_images + 1)?;
    if grid_hw.dtype() != DType::I32 || grid_hw.dims() != [num_images, 2] || !grid_hw.is_contiguous() {
        return Err(Error::invalid(
            OP,
            format!(
                "grid_hw: expected contiguous i32 [{num_images}, 2], got {} {:?}",
                grid_hw.dtype(),
                grid_hw.dims()
            ),
        ));
    }
    same_dtype(OP, &[("x", x.dtype()), ("table", table.dtype())])?;
    // SAFETY: x addresses [total, dim] at its stride, table [side * side, dim] contiguous,
    // cu_patches [num_images + 1] and grid_hw [num_images, 2] int32; the kernel clamps every
    // table index, so inconsistent metadata cannot make it read out of bounds.
    let status = unsafe {
        sys::ocrvl_pos_embed_resample_add(
            x.device_ptr() as *mut _,
            x_stride,
            table.device_ptr() as *const _,
            side as i64,
            cu_patches.device_ptr() as *const i32,
            grid_hw.device_ptr() as *const i32,
            num_images as i64,
            total,
            dim,
            c_dtype(x.dtype()),
            gpu.raw_stream(),
        )
    };
    check(OP, status)
}
