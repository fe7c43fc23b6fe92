//! Rescale, normalise and patchify a resized RGB8 image in one pass (MODEL_SPEC §5.3).
//!
//! A channel of an 8-bit image takes only 256 values, so the whole of rescale and normalise
//! is a table of 3 × 256 values computed once with transformers' arithmetic (see
//! [`level_table`]); patchifying is then a gather from that table into the patch layout. The
//! bf16 table holds the f32 table's values rounded as [`f32_to_bf16`] rounds them, so the bf16
//! patches are the f32 patches converted, bit for bit, without the f32 image in between.

use half::bf16;

use super::processor_config::ProcessorConfig;

/// The value of every uint8 level per channel, computed as transformers does:
/// `rescale` multiplies in f64 and stores f32, `normalize` subtracts and divides in f32.
pub(super) fn level_table(c: &ProcessorConfig) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (ch, table) in lut.iter_mut().enumerate() {
        for (level, v) in table.iter_mut().enumerate() {
            let mut x = if c.do_rescale {
                (level as f64 * c.rescale_factor) as f32
            } else {
                level as f32
            };
            if c.do_normalize {
                x = (x - c.image_mean[ch]) / c.image_std[ch];
            }
            *v = x;
        }
    }
    lut
}

/// [`level_table`] in bf16.
pub(super) fn level_table_bf16(c: &ProcessorConfig) -> [[bf16; 256]; 3] {
    level_table(c).map(|table| table.map(f32_to_bf16))
}

/// An image `data` of `[height, width, 3]` RGB8 (both sides multiples of `ps`) to `[patches, 3 * ps * ps]`: patches in raster order, each flattened `(c, ky, kx)`,
/// every sample replaced by its channel's entry in `lut`.
///
/// One source row at a time, so the image is read once, in order; each row writes `ps`
/// contiguous values into each of 3 planes of each patch of its patch row.
pub(super) fn patchify<T: Copy + Default>(
    data: &[u8],
    (height, width): (usize, usize),
    ps: usize,
    lut: &[[T; 256]; 3],
) -> Vec<T> {
    let stride = width * 3;
    let (gh, gw) = (height / ps, width / ps);
    let plane = ps * ps;
    let patch_dim = 3 * plane;
    let mut out = vec![T::default(); gh * gw * patch_dim];
    if out.is_empty() {
        return out;
    }
    // One patch row at a time: the `ps` image rows of `gw` patches.
    for (band, rows) in out.chunks_exact_mut(gw * patch_dim).zip(data.chunks_exact(ps * stride)) {
        for (ky, row) in rows.chunks_exact(stride).enumerate() {
            for (patch, pixels) in band.chunks_exact_mut(patch_dim).zip(row.chunks_exact(ps * 3)) {
                let (r, gb) = patch.split_at_mut(plane);
                let (g, b) = gb.split_at_mut(plane);
                let line = ky * ps..(ky + 1) * ps;
                let planes = r[line.clone()].iter_mut().zip(&mut g[line.clone()]).zip(&mut b[line]);
                for (((r, g), b), px) in planes.zip(pixels.chunks_exact(3)) {
                    *r = lut[0][usize::from(px[0])];
                    *g = lut[1][usize::from(px[1])];
                    *b = lut[2][usize::from(px[2])];
                }
            }
        }
    }
    out
}

/// f32 to bf16, rounding to nearest even, NaN kept a (quiet) NaN: the same bits as
/// `half::bf16::from_f32`, written without branches so a slice of them vectorises.
#[inline(always)]
pub(super) fn f32_to_bf16(value: f32) -> bf16 {
    let x = value.to_bits();
    let nan = (x & 0x7FFF_FFFF) > 0x7F80_0000;
    // Adding 0x7FFF plus the lowest kept bit carries into the kept half exactly when the
    // dropped half is over one half, or one half with the kept half odd.
    let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16;
    let quiet_nan = (x >> 16) | 0x0040;
    bf16::from_bits(if nan { quiet_nan } else { rounded } as u16)
}

/// [`f32_to_bf16`] over a slice.
pub(super) fn f32_slice_to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&v| f32_to_bf16(v)).collect()
}
