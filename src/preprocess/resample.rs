//! A bicubic resize that reproduces Pillow's `Image.resize(size, Image.BICUBIC)` on 8-bit images
//! bit for bit (MODEL_SPEC §5.3: the reference resizes with PIL, so to feed the model the same
//! pixels we follow PIL's arithmetic, not just its filter).
//!
//! The algorithm, as Pillow's `libImaging/Resample.c` does it (re-stated here in our words):
//!
//! 1. For each axis and each output index `o`, the source interval is centred at
//!    `center = (o + 0.5) * scale`, with `scale = in / out`. When downscaling the kernel is
//!    stretched by `scale` (antialiasing): `filterscale = max(scale, 1)`, support
//!    `2 * filterscale` source pixels on each side. The taps run over source pixels
//!    `[trunc(center - support + 0.5), trunc(center + support + 0.5))`, clipped to the image,
//!    and tap `i` gets `keys((i - center + 0.5) / filterscale)`, where `keys` is the cubic
//!    convolution kernel with a = -0.5. The taps are normalised to sum to 1 (which also renormalises
//!    at the borders, where taps were clipped).
//! 2. The weights become fixed point with 22 fractional bits (`32 - 8 - 2`: 8 bits of pixel,
//!    2 of headroom for kernels whose partial sums leave [0, 1]), rounded half away from zero.
//! 3. Two separable passes. Each output sample is
//!    `clamp((2^21 + Σ pixel · weight) >> 22, 0, 255)`: round half up, then clip. The first
//!    pass writes **uint8** rows (this intermediate rounding is part of PIL's result), so
//!    the order matters: horizontal first (over only the source rows the vertical pass will
//!    read), except that Pillow 13 runs the vertical pass first when the height shrinks by more
//!    than twice as many pixels as the width ([`PassOrder`]). A pass whose size does not change
//!    is skipped.
//!
//! Only the arithmetic of the 8-bit path is reproduced; the 16-bit and float paths of Pillow are
//! not needed because images are converted to RGB8 first.
//!
//! This file computes the taps and chooses the passes; the passes themselves are in
//! `resample_kernels.rs`, arranged so that the compiler vectorises them (the sums are exact
//! integers, so their order does not change a bit). tests/cpu/preprocess_fast_paths.rs keeps a
//! plain per-pixel transcription of Pillow to compare against.

use std::ops::Range;

use super::resample_kernels::{horizontal_pass, vertical_pass, Isa};

/// Bits of fraction in the fixed-point weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Half of one output level in fixed point: the accumulators start here to round.
pub(super) const HALF: i32 = 1 << (PRECISION_BITS - 1);
/// Support of the bicubic kernel in source pixels at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Cubic convolution kernel (Keys) with a = -0.5, the one PIL calls BICUBIC.
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The taps of one axis: for output index `o`, source pixels `first[o] .. first[o] + count[o]`
/// with fixed-point weights `weights[o * ksize ..][.. count[o]]` (Pillow's windows exactly).
pub(super) struct AxisTaps {
    pub(super) ksize: usize,
    pub(super) first: Vec<usize>,
    pub(super) count: Vec<usize>,
    pub(super) weights: Vec<i32>,
}

impl AxisTaps {
    pub(super) fn new(in_size: usize, out_size: usize) -> Self {
        // PIL computes `(double)(in1 - in0) / outSize` from float box edges; for any size
        // below 2^24 the float is exact, so this is the same double.
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        // PIL multiplies by the reciprocal rather than dividing; keep that for bit equality.
        let inv_filterscale = 1.0 / filterscale;

        let mut first = Vec::with_capacity(out_size);
        let mut count = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut taps = vec![0f64; ksize];
        for o in 0..out_size {
            let center = (o as f64 + 0.5) * scale;
            // `(int)` in C truncates toward zero; a negative start clamps to 0 either way.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = hi.saturating_sub(lo);
            let mut sum = 0.0;
            for (i, tap) in taps[..n].iter_mut().enumerate() {
                *tap = bicubic_kernel(((i + lo) as f64 - center + 0.5) * inv_filterscale);
                sum += *tap;
            }
            let row = &mut weights[o * ksize..o * ksize + n];
            for (w, &tap) in row.iter_mut().zip(&taps[..n]) {
                let tap = if sum != 0.0 { tap / sum } else { tap };
                *w = to_fixed(tap);
            }
            first.push(lo);
            count.push(n);
        }
        AxisTaps {
            ksize,
            first,
            count,
            weights,
        }
    }

    pub(super) fn taps(&self, o: usize) -> (usize, &[i32]) {
        let start = o * self.ksize;
        (self.first[o], &self.weights[start..start + self.count[o]])
    }

    /// The source rows (or columns) that some output reads.
    pub(super) fn source_span(&self) -> Range<usize> {
        let last = self.first.len() - 1;
        self.first[0]..self.first[last] + self.count[last]
    }
}

/// The same taps as [`AxisTaps`] in windows of one length for every output, which lets the
/// horizontal kernel run a fixed-shape loop: output `o` reads source pixels
/// `start[o] .. start[o] + len` with weights `weights[o * len ..][.. len]`. Each window is
/// Pillow's window shifted left where it would run past the image, the extra taps weighted 0,
/// so every sum is the same integer.
pub(super) struct WindowTaps {
    pub(super) len: usize,
    pub(super) start: Vec<usize>,
    pub(super) weights: Vec<i32>,
}

impl WindowTaps {
    pub(super) fn new(taps: &AxisTaps, in_size: usize) -> Self {
        // Pillow's windows lie inside the image, so the longest fits.
        let len = taps.count.iter().copied().max().unwrap_or(1);
        let out_size = taps.first.len();
        let mut start = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * len];
        for (o, row) in weights.chunks_exact_mut(len).enumerate() {
            let (lo, w) = taps.taps(o);
            let s = lo.min(in_size - len);
            row[lo - s..lo - s + w.len()].copy_from_slice(w);
            start.push(s);
        }
        WindowTaps { len, start, weights }
    }
}

/// A normalised weight to fixed point, rounding half away from zero (then truncating, as C's
/// `(int)` cast does).
fn to_fixed(weight: f64) -> i32 {
    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
    if weight < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Fixed-point accumulator to a pixel: drop the fraction (floor), clip to [0, 255].
#[inline(always)]
pub(super) fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Which Pillow release's choice of pass order to reproduce. The two orders round the
/// intermediate image differently, so they differ by a level here and there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PassOrder {
    /// Pillow 13 and later: the vertical pass runs first when the height loses more than twice
    /// as many pixels as the width does (`in_h - out_h > 2 * (in_w - out_w)`, height shrinking);
    /// otherwise horizontal first.
    #[default]
    Pillow13,
    /// Pillow 12 and earlier: always horizontal first.
    Pillow12,
}

impl PassOrder {
    fn vertical_first(self, in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
        let shrink_h = in_h as i64 - out_h as i64;
        let shrink_w = in_w as i64 - out_w as i64;
        self == PassOrder::Pillow13 && shrink_h > 0 && shrink_h > 2 * shrink_w
    }
}

/// Resizes an interleaved 8-bit image with `channels` samples per pixel (1 to 4) from
/// `in_w`×`in_h` to `out_w`×`out_h` exactly as the current Pillow's BICUBIC resize.
///
/// Panics when the buffer length does not match the sizes or a size is zero: callers own
/// the validation (decoding checks for empty images).
pub fn resize_bicubic(src: &[u8], in_w: usize, in_h: usize, channels: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    resize_bicubic_with_order(src, in_w, in_h, channels, out_w, out_h, PassOrder::default())
}

/// [`resize_bicubic`] reproducing a chosen Pillow release's pass order.
pub fn resize_bicubic_with_order(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    order: PassOrder,
) -> Vec<u8> {
    assert!(
        (1..=4).contains(&channels),
        "resize_bicubic: {channels} channels (1 to 4 supported)"
    );
    assert!(
        in_w > 0 && in_h > 0 && out_w > 0 && out_h > 0,
        "resize_bicubic: empty image"
    );
    assert_eq!(src.len(), in_w * in_h * channels, "resize_bicubic: buffer size");
    let vertical_first = order.vertical_first(in_w, in_h, out_w, out_h);
    match channels {
        1 => resize_channels::<1>(src, in_w, in_h, out_w, out_h, vertical_first),
        2 => resize_channels::<2>(src, in_w, in_h, out_w, out_h, vertical_first),
        3 => resize_channels::<3>(src, in_w, in_h, out_w, out_h, vertical_first),
        _ => resize_channels::<4>(src, in_w, in_h, out_w, out_h, vertical_first),
    }
}

fn resize_channels<const C: usize>(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    out_w: usize,
    out_h: usize,
    vertical_first: bool,
) -> Vec<u8> {
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    let isa = Isa::detect();
    let horizontal = |src: &[u8], rows: Range<usize>| {
        let taps = WindowTaps::new(&AxisTaps::new(in_w, out_w), in_w);
        horizontal_pass::<C>(isa, src, in_w, &taps, rows)
    };
    match (need_horizontal, need_vertical) {
        (false, false) => src.to_vec(),
        (false, true) => vertical_pass::<C>(isa, src, in_w, &AxisTaps::new(in_h, out_h), 0),
        (true, false) => horizontal(src, 0..in_h),
        (true, true) if vertical_first => {
            let rows = vertical_pass::<C>(isa, src, in_w, &AxisTaps::new(in_h, out_h), 0);
            horizontal(&rows, 0..out_h)
        }
        (true, true) => {
            // Only the source rows some output row reads go through the horizontal pass.
            let vertical = AxisTaps::new(in_h, out_h);
            let span = vertical.source_span();
            let rows = horizontal(src, span.clone());
            vertical_pass::<C>(isa, &rows, out_w, &vertical, span.start)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7) as u8).collect();
        assert_eq!(resize_bicubic(&src, 5, 4, 3, 5, 4), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        // Weights are normalised, so a flat image resizes to the same flat value (up to the
        // fixed-point rounding of the weights, which cannot move a level here).
        for &(w, h, ow, oh) in &[(7, 5, 3, 11), (100, 3, 9, 3), (3, 100, 3, 9), (1, 1, 4, 4)] {
            let src = vec![200u8; w * h];
            let out = resize_bicubic(&src, w, h, 1, ow, oh);
            assert!(out.iter().all(|&v| v == 200), "{w}x{h} -> {ow}x{oh}: {out:?}");
        }
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for &(i, o) in &[(61, 56), (13, 28), (1400, 308), (5, 1), (1, 7)] {
            let taps = AxisTaps::new(i, o);
            for x in 0..o {
                let (_, w) = taps.taps(x);
                let sum: i32 = w.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i32,
                    "{i}->{o} at {x}: {sum}"
                );
            }
        }
    }
}
