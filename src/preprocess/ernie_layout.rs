//! ERNIE-4.5-VL's two departures from PaddleOCR-VL's image preprocessing (docs/
//! ERNIE_4_5_VL_SPEC.md §5 and §3.1); decoding, the PIL-exact resize and the rescale/normalise
//! table are shared ([`super::image::ImageProcessor`] with [`ImageLayout::ErnieVl`]):
//!
//! 1. `smart_resize` as FastDeploy does it: an aspect ratio over 200 is clamped (the long side
//!    cut to 200 times the short one), not refused as transformers and PaddleOCR-VL do; Python's
//!    `round` (half to even) and float divisions reproduced;
//! 2. patches in **2×2 merge-block order**: patch `p` is block `p / 4` of the `(h/2, w/2)` block
//!    grid (row-major), sub-patch `p % 4` (top-left, top-right, bottom-left, bottom-right).
//!    PaddleOCR-VL's are in raster order.

use super::image::fit_area;
use super::{PreprocessError, Result};

/// Which family's resize rule and patch order an image processor follows. Not a field of the
/// processor's file: the model's family decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageLayout {
    /// PaddleOCR-VL: aspect ratios over 200 refused, patches in raster order.
    #[default]
    PaddleOcrVl,
    /// ERNIE-4.5-VL: aspect ratios over 200 clamped, patches in merge-block order.
    ErnieVl,
}

/// The largest aspect ratio kept; beyond it the long side is cut (FastDeploy).
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// `(height, width)` after FastDeploy's `smart_resize`. An error when the result leaves
/// `[min_pixels, max_pixels]` (possible only for bounds that do not hold one factor²).
pub fn smart_resize_clamped(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(PreprocessError::ZeroSizedImage {
            width: width as u64,
            height: height as u64,
        });
    }
    let f = factor as f64;
    let round_by = |x: f64| (x / f).round_ties_even() * f;
    let floor_by = |x: f64| (x / f).floor() * f;
    let (mut h, mut w) = (height as f64, width as f64);
    if h.max(w) / h.min(w) > MAX_ASPECT_RATIO {
        if h > w {
            w = f.max(round_by(w));
            h = floor_by(w * MAX_ASPECT_RATIO);
        } else {
            h = f.max(round_by(h));
            w = floor_by(h * MAX_ASPECT_RATIO);
        }
    }
    let rounded = (f.max(round_by(h)), f.max(round_by(w)));
    let (h_bar, w_bar) = fit_area((h, w), rounded, f, min_pixels, max_pixels);
    let area = h_bar * w_bar;
    if h_bar < f || w_bar < f || area < min_pixels as f64 || area > max_pixels as f64 {
        return Err(PreprocessError::ResizeToZero {
            height: height as u64,
            width: width as u64,
            min_pixels,
            max_pixels,
        });
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Reorders `patches` (`[gh · gw, patch_dim]`, raster order) into merge-block order. `gh` and
/// `gw` must be multiples of `merge` (a resized image's grid always is).
pub fn to_merge_block_order<T: Copy>(
    patches: &[T],
    (gh, gw): (usize, usize),
    merge: usize,
    patch_dim: usize,
) -> Vec<T> {
    debug_assert!(gh % merge == 0 && gw % merge == 0 && patches.len() == gh * gw * patch_dim);
    let mut out = Vec::with_capacity(patches.len());
    let per_block = merge * merge;
    for p in 0..gh * gw {
        let (block, sub) = (p / per_block, p % per_block);
        let (by, bx) = (block / (gw / merge), block % (gw / merge));
        let (py, px) = (by * merge + sub / merge, bx * merge + sub % merge);
        let src = (py * gw + px) * patch_dim;
        out.extend_from_slice(&patches[src..src + patch_dim]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 56 * 56;
    const MAX: u64 = 28 * 28 * 6177;

    #[test]
    fn smart_resize_matches_the_spec_examples() {
        // (input H, W) -> (resized H, W), tokens = (H/28)·(W/28).
        for ((h, w), (rh, rw), tokens) in [
            ((768, 1024), (756, 1036), 999),
            ((1080, 1920), (1092, 1932), 2691),
            ((1754, 1240), (1764, 1232), 2772),
            ((3508, 2480), (2604, 1848), 6138),
            ((224, 224), (224, 224), 64),
            ((28, 28), (56, 56), 4),
        ] {
            let got = smart_resize_clamped(h, w, 28, MIN, MAX).unwrap();
            assert_eq!(got, (rh, rw), "{h}x{w}");
            assert_eq!((rh / 28) * (rw / 28), tokens, "{h}x{w}");
        }
    }

    #[test]
    fn extreme_aspect_ratios_are_clamped_not_refused() {
        // 20 x 10000 (ratio 500): the short side rounds to 28, the long one is cut to 200·28.
        assert_eq!(smart_resize_clamped(20, 10000, 28, MIN, MAX).unwrap(), (28, 5600));
        assert_eq!(smart_resize_clamped(10000, 20, 28, MIN, MAX).unwrap(), (5600, 28));
        assert!(smart_resize_clamped(0, 10, 28, MIN, MAX).is_err());
        // Bounds that hold no 28 x 28 square.
        assert!(smart_resize_clamped(100, 100, 28, 10, 100).is_err());
    }

    #[test]
    fn merge_block_order_walks_blocks_then_sub_patches() {
        // A 4 x 6 grid of 1-value patches holding their raster index.
        let raster: Vec<usize> = (0..24).collect();
        let got = to_merge_block_order(&raster, (4, 6), 2, 1);
        // Blocks row-major over 2 x 3; within a block TL, TR, BL, BR.
        let want = [
            0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11, 12, 13, 18, 19, 14, 15, 20, 21, 16, 17, 22, 23,
        ];
        assert_eq!(got, want);
    }
}
