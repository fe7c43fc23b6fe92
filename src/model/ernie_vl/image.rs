//! ERNIE-4.5-VL's image preprocessing (docs/ERNIE_4_5_VL_SPEC.md §5 and §3.1), on an RGB8
//! image decoded as for PaddleOCR-VL (`preprocess::decode_rgb`):
//!
//! 1. `smart_resize` to multiples of 28 (patch 14 × merge 2) with the area in `[min_pixels,
//!    max_pixels]`, as FastDeploy does it: an aspect ratio over 200 is clamped (the long side
//!    cut to 200 times the short one), not refused as transformers and PaddleOCR-VL do;
//! 2. the PIL-exact bicubic resize (`preprocess::resize_bicubic`);
//! 3. `x / 255`, then `(x - mean_c) / std_c` with CLIP's mean and std, in f32;
//! 4. patches of 14×14 flattened `(c, ky, kx)` (588 values), in **2×2 merge-block order**:
//!    patch `p` is block `p / 4` of the `(h/2, w/2)` block grid (row-major), sub-patch `p % 4`
//!    (top-left, top-right, bottom-left, bottom-right). PaddleOCR-VL's are in raster order.

use crate::error::{Error, Result};
use crate::preprocess::{resize_bicubic, ImageGrid, ProcessedImage, Rgb8Image};

const OP: &str = "ernie image";

/// The processor's values (spec §5.1: transformers' class defaults and FastDeploy's request
/// defaults; FastDeploy's Thinking deployment raises `max_pixels` to 16384·28²).
#[derive(Clone, Debug, PartialEq)]
pub struct ErnieImageConfig {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for ErnieImageConfig {
    // CLIP's mean and std as the processors write them (more digits than an f32 keeps).
    #[allow(clippy::excessive_precision)]
    fn default() -> Self {
        ErnieImageConfig {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 6177,
            patch_size: 14,
            merge_size: 2,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
        }
    }
}

/// The largest aspect ratio kept; beyond it the long side is cut (FastDeploy).
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// `(height, width)` after FastDeploy's `smart_resize`; Python's `round` (half to even) and
/// float divisions reproduced. An error when the result leaves `[min_pixels, max_pixels]`
/// (possible only for bounds that do not hold one factor²).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(Error::invalid(OP, format!("cannot resize a {width}x{height} image")));
    }
    let f = factor as f64;
    let round_by = |x: f64| (x / f).round_ties_even() * f;
    let floor_by = |x: f64| (x / f).floor() * f;
    let ceil_by = |x: f64| (x / f).ceil() * f;
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
    let mut h_bar = f.max(round_by(h));
    let mut w_bar = f.max(round_by(w));
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = floor_by(h / beta);
        w_bar = floor_by(w / beta);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = ceil_by(h * beta);
        w_bar = ceil_by(w * beta);
    }
    let area = h_bar * w_bar;
    if h_bar < f || w_bar < f || area < min_pixels as f64 || area > max_pixels as f64 {
        return Err(Error::invalid(
            OP,
            format!("a {width}x{height} image resizes to {w_bar}x{h_bar}, outside [{min_pixels}, {max_pixels}] pixels"),
        ));
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Resize, normalise and cut one image into patches in merge-block order (module comment).
pub fn process_rgb(cfg: &ErnieImageConfig, img: &Rgb8Image) -> Result<ProcessedImage> {
    let factor = cfg.patch_size * cfg.merge_size;
    let (h, w) = smart_resize(img.height, img.width, factor, cfg.min_pixels, cfg.max_pixels)?;
    let data = if (h, w) == (img.height, img.width) {
        img.data.clone()
    } else {
        resize_bicubic(&img.data, img.width, img.height, 3, w, h)
    };
    let (ps, m) = (cfg.patch_size, cfg.merge_size);
    let (gh, gw) = (h / ps, w / ps);
    let per_patch = 3 * ps * ps;
    // Per channel, the normalised value of each of the 256 levels.
    let lut: Vec<[f32; 256]> = (0..3)
        .map(|c| {
            let mut t = [0f32; 256];
            for (v, slot) in t.iter_mut().enumerate() {
                *slot = (v as f32 * (1.0 / 255.0) - cfg.image_mean[c]) / cfg.image_std[c];
            }
            t
        })
        .collect();
    let mut out = Vec::with_capacity(gh * gw * per_patch);
    for p in 0..gh * gw {
        let (block, sub) = (p / (m * m), p % (m * m));
        let (by, bx) = (block / (gw / m), block % (gw / m));
        let (py, px) = (by * m + sub / m, bx * m + sub % m);
        for (c, table) in lut.iter().enumerate() {
            for ky in 0..ps {
                let row = (py * ps + ky) * w;
                for kx in 0..ps {
                    out.push(table[data[(row + px * ps + kx) * 3 + c] as usize]);
                }
            }
        }
    }
    Ok(ProcessedImage {
        pixel_values: out,
        grid: ImageGrid { t: 1, h: gh, w: gw },
        resized_height: h,
        resized_width: w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_the_spec_examples() {
        let c = ErnieImageConfig::default();
        // (input H, W) -> (resized H, W), tokens = (H/28)·(W/28).
        for ((h, w), (rh, rw), tokens) in [
            ((768, 1024), (756, 1036), 999),
            ((1080, 1920), (1092, 1932), 2691),
            ((1754, 1240), (1764, 1232), 2772),
            ((3508, 2480), (2604, 1848), 6138),
            ((224, 224), (224, 224), 64),
            ((28, 28), (56, 56), 4),
        ] {
            let got = smart_resize(h, w, 28, c.min_pixels, c.max_pixels).unwrap();
            assert_eq!(got, (rh, rw), "{h}x{w}");
            assert_eq!((rh / 28) * (rw / 28), tokens, "{h}x{w}");
        }
    }

    #[test]
    fn extreme_aspect_ratios_are_clamped_not_refused() {
        let c = ErnieImageConfig::default();
        // 20 x 10000 (ratio 500): the short side rounds to 28, the long one is cut to 200·28.
        let (h, w) = smart_resize(20, 10000, 28, c.min_pixels, c.max_pixels).unwrap();
        assert_eq!((h, w), (28, 5600));
        let (h, w) = smart_resize(10000, 20, 28, c.min_pixels, c.max_pixels).unwrap();
        assert_eq!((h, w), (5600, 28));
        assert!(smart_resize(0, 10, 28, c.min_pixels, c.max_pixels).is_err());
    }

    #[test]
    fn patches_come_in_merge_block_order_with_channel_major_values() {
        // 56 x 84 (already multiples of 28: no resize): a 4 x 6 patch grid, 2 x 3 blocks. Each
        // pixel's red value is its patch row · 16 + patch column, green its row within the
        // patch, blue its column within the patch.
        let (h, w) = (56usize, 84usize);
        let mut data = vec![0u8; h * w * 3];
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) * 3;
                data[i] = ((y / 14) * 16 + x / 14) as u8;
                data[i + 1] = (y % 14) as u8;
                data[i + 2] = (x % 14) as u8;
            }
        }
        let img = Rgb8Image::from_raw(w, h, data).unwrap();
        // Identity normalisation (mean 0, std 1/255) so values read back as levels.
        let cfg = ErnieImageConfig {
            image_mean: [0.0; 3],
            image_std: [1.0 / 255.0; 3],
            min_pixels: 28 * 28,
            ..ErnieImageConfig::default()
        };
        let out = process_rgb(&cfg, &img).unwrap();
        assert_eq!(out.grid, ImageGrid { t: 1, h: 4, w: 6 });
        assert_eq!(out.pixel_values.len(), 24 * 588);
        let level = |v: f32| v.round() as usize;
        // Patch p = 4·block + sub, blocks row-major over 2 x 3, subs TL, TR, BL, BR.
        let expect_rc = |p: usize| {
            let (b, s) = (p / 4, p % 4);
            (2 * (b / 3) + s / 2, 2 * (b % 3) + s % 2)
        };
        for p in 0..24 {
            let v = &out.pixel_values[p * 588..(p + 1) * 588];
            let (r, c) = expect_rc(p);
            for ky in 0..14 {
                for kx in 0..14 {
                    let k = ky * 14 + kx;
                    assert_eq!(level(v[k]), r * 16 + c, "patch {p} red");
                    assert_eq!(level(v[196 + k]), ky, "patch {p} green");
                    assert_eq!(level(v[392 + k]), kx, "patch {p} blue");
                }
            }
        }
    }

    #[test]
    fn values_are_clip_normalised() {
        let img = Rgb8Image::from_raw(28, 56, vec![200u8; 28 * 56 * 3]).unwrap();
        let cfg = ErnieImageConfig {
            min_pixels: 28 * 28,
            ..ErnieImageConfig::default()
        };
        let out = process_rgb(&cfg, &img).unwrap();
        for c in 0..3 {
            let want = (200.0f32 / 255.0 - cfg.image_mean[c]) / cfg.image_std[c];
            assert!((out.pixel_values[c * 196] - want).abs() < 1e-6, "channel {c}");
        }
    }
}
