//! Image bytes → `pixel_values` and grid (MODEL_SPEC §3.1, §5).
//!
//! Per image: decode (PNG, JPEG, WebP, BMP, TIFF, GIF first frame), apply the EXIF orientation,
//! convert to RGB8 compositing alpha on white, `smart_resize` the size to multiples of 28, resize
//! with the PIL-exact bicubic ([`super::resample`]), rescale by 1/255, normalise with mean/std,
//! and cut into 14×14 patches in raster order, each flattened `(c, ky, kx)`.

use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use half::bf16;

use super::ernie_layout::{smart_resize_clamped, to_merge_block_order, ImageLayout};
use super::patchify::{f32_slice_to_bf16, level_table, level_table_bf16, patchify};
use super::processor_config::ProcessorConfig;
use super::resample::{resize_bicubic_with_order, PassOrder};
use super::{PreprocessError, Result};
use crate::config::{ErnieVlConfig, ModelConfig};

/// Default cap on the decoded size of one image: Pillow's `Image.MAX_IMAGE_PIXELS`
/// (about 89.5 Mpx, where PIL starts warning of a decompression bomb). An A4 page at 600 dpi
/// is 35 Mpx, so real documents stay well below it.
pub const DEFAULT_MAX_DECODED_PIXELS: u64 = 89_478_485;

/// The reference rejects images whose long side is over 200 times the short one.
const MAX_ASPECT_RATIO: f64 = 200.0;

/// A decoded image: `height` rows of `width` interleaved RGB pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8Image {
    pub width: usize,
    pub height: usize,
    /// `[height, width, 3]`, row-major.
    pub data: Vec<u8>,
}

impl Rgb8Image {
    /// `None` when `data` is not `width * height * 3` bytes.
    pub fn from_raw(width: usize, height: usize, data: Vec<u8>) -> Option<Self> {
        (data.len() == width * height * 3).then_some(Rgb8Image { width, height, data })
    }
}

/// The patch grid of one image, in patches (`image_grid_thw`): t is always 1 for images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageGrid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl ImageGrid {
    pub fn num_patches(&self) -> usize {
        self.t * self.h * self.w
    }

    /// Rows and columns of merged tokens after the projector's `merge`×`merge` merge.
    pub fn merged_hw(&self, merge: usize) -> (usize, usize) {
        (self.h / merge, self.w / merge)
    }

    /// Errors unless this is one frame of whole `merge`×`merge` blocks (what the projector
    /// and the position ids assume); `image` is the index named in the error.
    pub fn check(&self, image: usize, merge: usize) -> Result<()> {
        if self.t != 1 || merge == 0 || self.h % merge != 0 || self.w % merge != 0 || self.h == 0 || self.w == 0 {
            return Err(PreprocessError::InvalidGrid {
                image,
                t: self.t,
                h: self.h,
                w: self.w,
                merge,
            });
        }
        Ok(())
    }

    /// Number of LLM tokens (placeholders) this image becomes: t·h·w / merge².
    pub fn num_merged_tokens(&self, merge: usize) -> usize {
        self.num_patches() / (merge * merge)
    }
}

/// One image ready for the vision tower, its values in f32 (what transformers computes) or,
/// from the `*_bf16` methods, in bf16 (what the vision tower runs in).
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessedImage<T = f32> {
    /// `[grid.num_patches(), 3 * patch * patch]`, patches in raster order over the grid,
    /// each flattened `(c, ky, kx)`: the K order of the patch-embedding GEMM.
    pub pixel_values: Vec<T>,
    pub grid: ImageGrid,
    /// Size after `smart_resize`, in pixels.
    pub resized_height: usize,
    pub resized_width: usize,
}

impl ProcessedImage {
    /// The same values in bf16 (round to nearest even, as `half::bf16::from_f32`), the dtype
    /// the vision tower runs in. The `*_bf16` methods of [`ImageProcessor`] give the same
    /// values without the f32 image.
    pub fn pixel_values_bf16(&self) -> Vec<bf16> {
        f32_slice_to_bf16(&self.pixel_values)
    }
}

/// `smart_resize` of MODEL_SPEC §5.2, exactly as the hub code: sizes are multiples of `factor`,
/// the area within `[min_pixels, max_pixels]`, the aspect ratio nearly kept. Python's `round`
/// (half to even) and float divisions are reproduced operation for operation. Returns
/// `(height, width)`.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        return Err(PreprocessError::ZeroSizedImage {
            width: width as u64,
            height: height as u64,
        });
    }
    let f = factor as f64;
    let (mut h, mut w) = (height as f64, width as f64);
    // Sides shorter than one factor are first stretched to it, keeping the ratio.
    if h < f {
        w = (w * f / h).round_ties_even();
        h = f;
    }
    if w < f {
        h = (h * f / w).round_ties_even();
        w = f;
    }
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(PreprocessError::AspectRatio {
            height: h as u64,
            width: w as u64,
            ratio,
        });
    }
    let rounded = ((h / f).round_ties_even() * f, (w / f).round_ties_even() * f);
    let (h_bar, w_bar) = fit_area((h, w), rounded, f, min_pixels, max_pixels);
    if h_bar < 1.0 || w_bar < 1.0 {
        return Err(PreprocessError::ResizeToZero {
            height: height as u64,
            width: width as u64,
            min_pixels,
            max_pixels,
        });
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// `smart_resize`'s area step, shared by both families' variants: `rounded` (the sides
/// rounded to multiples of `f`) when its area lies in `[min_pixels, max_pixels]`, else the
/// original sides `(h, w)` scaled by the square root of the area ratio, floored (too large) or
/// ceiled (too small) to multiples of `f`.
pub(super) fn fit_area(
    (h, w): (f64, f64),
    rounded: (f64, f64),
    f: f64,
    min_pixels: u64,
    max_pixels: u64,
) -> (f64, f64) {
    let (h_bar, w_bar) = rounded;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        ((h / beta / f).floor() * f, (w / beta / f).floor() * f)
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        ((h * beta / f).ceil() * f, (w * beta / f).ceil() * f)
    } else {
        rounded
    }
}

/// Decodes one image file held in memory to RGB8, the way the reference prepares it:
/// EXIF orientation applied (transformers' `load_image` and OpenCV's `imread` both do),
/// alpha composited on white (transformers' `convert_to_rgb`), 16-bit samples reduced to their
/// high byte (what Pillow's PNG decoder does for 16-bit RGB), the first frame of a GIF.
///
/// One deliberate difference from Pillow: a 16-bit *grey* PNG opens in Pillow as mode `I;16`,
/// whose conversion to RGB clips every value above 255 to white; here it keeps its high byte
/// like the 16-bit colour layouts (the clipping would wash out any real 16-bit scan).
///
/// The header's dimensions are checked against `max_pixels` before any pixel is decoded.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<Rgb8Image> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PreprocessError::Decode {
            format: "unknown".into(),
            message: e.to_string(),
        })?;
    let format = reader.format().ok_or(PreprocessError::UnknownImageFormat)?;
    let format_name = format!("{format:?}").to_uppercase();
    let decode_error = |e: image::ImageError| match e {
        image::ImageError::Unsupported(_) if !format_compiled_in(format) => PreprocessError::UnsupportedImageFormat {
            format: format_name.clone(),
        },
        other => PreprocessError::Decode {
            format: format_name.clone(),
            message: other.to_string(),
        },
    };

    // While the header is read, the decoder may allocate for metadata (PNG text and ICC
    // chunks, TIFF tags) but no pixels: bound that by the budget of the largest image allowed,
    // and leave the dimensions to the check below (so an oversized image gets `TooManyPixels`
    // with its size rather than the decoder's generic limit error).
    let budget = alloc_budget(max_pixels);
    let mut header_limits = Limits::no_limits();
    header_limits.max_alloc = Some(budget);
    reader.limits(header_limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    let (width, height) = (u64::from(width), u64::from(height));
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSizedImage { width, height });
    }
    let pixels = width * height;
    if pixels > max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // zune-jpeg fills a cut-off scan with grey and succeeds; PIL refuses such a file
        // ("image file is truncated"), and so does this.
        return Err(PreprocessError::Decode {
            format: format_name.clone(),
            message: "the JPEG data is truncated (no end-of-image marker after the last scan)".into(),
        });
    }
    // Now bound the decoder's own allocations to this image: its widest output (RGBA f32)
    // plus slack for working buffers, never more than the budget of the largest image.
    let mut limits = Limits::no_limits();
    limits.max_image_width = u32::try_from(width).ok();
    limits.max_image_height = u32::try_from(height).ok();
    limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(64 << 20).min(budget));
    decoder.set_limits(limits).map_err(decode_error)?;
    // A broken EXIF block must not reject an otherwise good image: no rotation then.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    img.apply_orientation(orientation);
    Ok(to_rgb8_on_white(img))
}

/// The most bytes a decoder may allocate for an image of at most `max_pixels`: RGBA f32
/// (16 bytes a pixel, the widest layout) plus 64 MiB for working buffers and metadata.
fn alloc_budget(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(16).saturating_add(64 << 20)
}

/// Whether a JPEG's structure runs to its end-of-image marker: the segments before each scan
/// are skipped by their lengths (so an EXIF thumbnail's own marker does not count), each
/// scan's entropy-coded data up to the next real marker (`FF 00` is a stuffed byte, `FF D0`
/// to `FF D7` restart markers), and the file is complete once `FF D9` follows a scan.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    loop {
        // A marker: 0xFF, any fill 0xFF bytes, then the code.
        if i >= b.len() || b[i] != 0xFF {
            return false;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&code) = b.get(i) else { return false };
        i += 1;
        match code {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
            return false;
        };
        if len < 2 {
            return false;
        }
        i += len;
        if i > b.len() {
            return false;
        }
        if code == 0xDA {
            // Entropy-coded data until a marker that is neither stuffing nor a restart.
            loop {
                match b.get(i..i + 2) {
                    None => return false,
                    Some([0xFF, 0x00]) | Some([0xFF, 0xD0..=0xD7]) => i += 2,
                    Some([0xFF, _]) => break,
                    Some(_) => i += 1,
                }
            }
        }
    }
}

/// The formats this build decodes (the `image` features in Cargo.toml).
fn format_compiled_in(format: image::ImageFormat) -> bool {
    use image::ImageFormat as F;
    matches!(format, F::Png | F::Jpeg | F::WebP | F::Bmp | F::Tiff | F::Gif)
}

/// Pillow's `alpha_composite` of an RGBA pixel over opaque white, then `convert("RGB")`:
/// the integer formula of `libImaging/AlphaComposite.c` (7 extra bits of precision, rounded
/// divisions by 255), kept literal so the result matches transformers' `convert_to_rgb`.
fn composite_on_white(rgb: [u8; 3], alpha: u8) -> [u8; 3] {
    const BITS: u32 = 7;
    const WHITE: u32 = 255;
    if alpha == 0 {
        return [255; 3];
    }
    let a = u32::from(alpha);
    let blend = WHITE * (255 - a); // the background's alpha (255) times the source's transparency
    let out_alpha_255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << BITS) / out_alpha_255;
    let coef2 = 255 * (1 << BITS) - coef1;
    // x / 255 rounded, for x < 2^16 · 255: ((x >> 8) + x) >> 8 after adding half.
    let div255 = |x: u32| (((x >> 8) + x) >> 8) >> BITS;
    rgb.map(|v| div255(u32::from(v) * coef1 + WHITE * coef2 + (0x80 << BITS)) as u8)
}

/// Any decoded layout to RGB8 on white. Grey replicates to the three channels; 16-bit samples
/// keep their high byte; float samples are clipped to [0, 1] and rounded. RGB8 is taken as it
/// is, without a copy.
fn to_rgb8_on_white(img: DynamicImage) -> Rgb8Image {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let img = match img {
        DynamicImage::ImageRgb8(im) => {
            return Rgb8Image {
                width,
                height,
                data: im.into_raw(),
            }
        }
        other => other,
    };
    let mut data = Vec::with_capacity(width * height * 3);
    let hi = |v: u16| (v >> 8) as u8;
    match &img {
        DynamicImage::ImageRgb8(im) => data.extend_from_slice(im.as_raw()),
        DynamicImage::ImageLuma8(im) => im.as_raw().iter().for_each(|&l| data.extend_from_slice(&[l; 3])),
        DynamicImage::ImageLumaA8(im) => {
            for p in im.as_raw().chunks_exact(2) {
                data.extend_from_slice(&composite_on_white([p[0]; 3], p[1]));
            }
        }
        DynamicImage::ImageRgba8(im) => {
            for p in im.as_raw().chunks_exact(4) {
                data.extend_from_slice(&composite_on_white([p[0], p[1], p[2]], p[3]));
            }
        }
        DynamicImage::ImageLuma16(im) => im.as_raw().iter().for_each(|&l| data.extend_from_slice(&[hi(l); 3])),
        DynamicImage::ImageLumaA16(im) => {
            for p in im.as_raw().chunks_exact(2) {
                data.extend_from_slice(&composite_on_white([hi(p[0]); 3], hi(p[1])));
            }
        }
        DynamicImage::ImageRgb16(im) => data.extend(im.as_raw().iter().map(|&v| hi(v))),
        DynamicImage::ImageRgba16(im) => {
            for p in im.as_raw().chunks_exact(4) {
                data.extend_from_slice(&composite_on_white([hi(p[0]), hi(p[1]), hi(p[2])], hi(p[3])));
            }
        }
        // Float images (TIFF) and any layout a later `image` version adds.
        other => {
            let rgba = other.to_rgba32f();
            let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            for p in rgba.as_raw().chunks_exact(4) {
                data.extend_from_slice(&composite_on_white([q(p[0]), q(p[1]), q(p[2])], q(p[3])));
            }
        }
    }
    Rgb8Image { width, height, data }
}

/// The image half of the model's processor: its config file ([`ProcessorConfig::from_dir`])
/// plus the decode limit.
#[derive(Clone, Debug)]
pub struct ImageProcessor {
    pub config: ProcessorConfig,
    /// Images whose header announces more pixels than this are rejected before decoding.
    pub max_decoded_pixels: u64,
    /// Which Pillow release's resize to reproduce (they differ by a level here and there).
    pub pass_order: PassOrder,
}

impl ImageProcessor {
    pub fn new(config: ProcessorConfig) -> Self {
        ImageProcessor {
            config,
            max_decoded_pixels: DEFAULT_MAX_DECODED_PIXELS,
            pass_order: PassOrder::default(),
        }
    }

    /// The processor of a model directory: its `processor_config.json` or
    /// `preprocessor_config.json` (hub values when absent), checked against the model's patch size and merge.
    pub fn from_model_dir(dir: impl AsRef<std::path::Path>, model: &ModelConfig) -> Result<Self> {
        let config = ProcessorConfig::from_dir(dir)?;
        config.check_model(model)?;
        Ok(Self::new(config))
    }

    /// The processor of an ERNIE-4.5-VL directory: its processor file over ERNIE's defaults
    /// ([`ProcessorConfig::ernie_vl_defaults`]), in ERNIE's layout, checked against its vision
    /// config.
    pub fn from_ernie_dir(dir: impl AsRef<std::path::Path>, model: &ErnieVlConfig) -> Result<Self> {
        // The base's layout (ERNIE's) stays: the files never set it.
        let config = ProcessorConfig::from_dir_over(dir, ProcessorConfig::ernie_vl_defaults())?;
        let v = &model.vision;
        config.check_vision(v.patch_size, v.spatial_merge_size, v.in_channels)?;
        Ok(Self::new(config))
    }

    pub fn with_max_decoded_pixels(mut self, limit: u64) -> Self {
        self.max_decoded_pixels = limit;
        self
    }

    /// The size `smart_resize` gives an image of this size, `(height, width)`.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let c = &self.config;
        match c.layout {
            ImageLayout::PaddleOcrVl => smart_resize(height, width, c.factor(), c.min_pixels, c.max_pixels),
            ImageLayout::ErnieVl => smart_resize_clamped(height, width, c.factor(), c.min_pixels, c.max_pixels),
        }
    }

    /// Decodes, resizes, normalises and patchifies one encoded image.
    pub fn process_bytes(&self, bytes: &[u8]) -> Result<ProcessedImage> {
        let rgb = decode_rgb(bytes, self.max_decoded_pixels)?;
        self.process_rgb(&rgb)
    }

    /// Resizes, normalises and patchifies an already decoded image.
    pub fn process_rgb(&self, img: &Rgb8Image) -> Result<ProcessedImage> {
        let resized = self.resize(img)?;
        Ok(self.normalize_patchify(&resized))
    }

    /// [`Self::process_bytes`] straight to bf16: the same values as
    /// [`ProcessedImage::pixel_values_bf16`] of its result, without the f32 image.
    pub fn process_bytes_bf16(&self, bytes: &[u8]) -> Result<ProcessedImage<bf16>> {
        let rgb = decode_rgb(bytes, self.max_decoded_pixels)?;
        self.process_rgb_bf16(&rgb)
    }

    /// [`Self::process_rgb`] straight to bf16 (see [`Self::process_bytes_bf16`]).
    pub fn process_rgb_bf16(&self, img: &Rgb8Image) -> Result<ProcessedImage<bf16>> {
        let resized = self.resize(img)?;
        Ok(self.normalize_patchify_bf16(&resized))
    }

    /// `smart_resize` then the PIL bicubic resize (or, with `do_resize` off, a check that the
    /// image already fits the patch grid).
    pub fn resize(&self, img: &Rgb8Image) -> Result<Rgb8Image> {
        let (h, w) = self.target_size(img.height, img.width)?;
        if !self.config.do_resize {
            let factor = self.config.factor();
            if img.height % factor != 0 || img.width % factor != 0 {
                return Err(PreprocessError::NotResizedToGrid {
                    height: img.height as u64,
                    width: img.width as u64,
                    factor: factor as u64,
                });
            }
            return Ok(img.clone());
        }
        let data = resize_bicubic_with_order(&img.data, img.width, img.height, 3, w, h, self.pass_order);
        Ok(Rgb8Image {
            width: w,
            height: h,
            data,
        })
    }

    /// Rescale, normalise and cut a resized image into patches. The sides must be multiples of
    /// the patch size (`resize` guarantees it).
    pub fn normalize_patchify(&self, img: &Rgb8Image) -> ProcessedImage {
        self.patches(img, &level_table(&self.config))
    }

    /// [`Self::normalize_patchify`] in bf16: the same values rounded to bf16, from a table
    /// of the 3 × 256 levels rather than an f32 image.
    pub fn normalize_patchify_bf16(&self, img: &Rgb8Image) -> ProcessedImage<bf16> {
        self.patches(img, &level_table_bf16(&self.config))
    }

    fn patches<T: Copy + Default>(&self, img: &Rgb8Image, lut: &[[T; 256]; 3]) -> ProcessedImage<T> {
        let ps = self.config.patch_size;
        assert!(
            ps > 0 && img.height % ps == 0 && img.width % ps == 0,
            "normalize_patchify: {}x{} is not a multiple of the patch size {ps}",
            img.height,
            img.width
        );
        let (gh, gw) = (img.height / ps, img.width / ps);
        let mut pixel_values = patchify(&img.data, (img.height, img.width), ps, lut);
        if self.config.layout == ImageLayout::ErnieVl {
            // A second pass over the patches (a copy) rather than a second patchify: the
            // resize before it costs far more.
            pixel_values =
                to_merge_block_order(&pixel_values, (gh, gw), self.config.merge_size, self.config.patch_dim());
        }
        ProcessedImage {
            pixel_values,
            grid: ImageGrid { t: 1, h: gh, w: gw },
            resized_height: img.height,
            resized_width: img.width,
        }
    }

    /// Processes many encoded images on up to `max_threads` CPU threads (each takes the next
    /// unclaimed image, so one large page does not hold up the rest). Results are in input
    /// order; one bad image fails only its own entry.
    pub fn process_many<B: AsRef<[u8]> + Sync>(&self, images: &[B], max_threads: usize) -> Vec<Result<ProcessedImage>> {
        let threads = max_threads.clamp(1, images.len().max(1));
        if threads == 1 {
            return images.iter().map(|b| self.process_bytes(b.as_ref())).collect();
        }
        let next = AtomicUsize::new(0);
        let mut slots: Vec<Option<Result<ProcessedImage>>> = (0..images.len()).map(|_| None).collect();
        let done: Vec<Vec<(usize, Result<ProcessedImage>)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= images.len() {
                                break mine;
                            }
                            mine.push((i, self.process_bytes(images[i].as_ref())));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("preprocessing worker panicked"))
                .collect()
        });
        for (i, result) in done.into_iter().flatten() {
            slots[i] = Some(result);
        }
        slots
            .into_iter()
            .map(|r| r.expect("every index is claimed by exactly one worker"))
            .collect()
    }

    /// The default thread count for [`Self::process_many`]: the machine's parallelism.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_matches_the_closed_form() {
        // Opaque pixels are unchanged; transparent ones become white; in between the result
        // is within one level of v·a/255 + 255·(1 − a/255).
        for v in 0..=255u8 {
            assert_eq!(composite_on_white([v; 3], 255), [v; 3]);
            assert_eq!(composite_on_white([v; 3], 0), [255; 3]);
            for a in 1..255u8 {
                let exact = f64::from(v) * f64::from(a) / 255.0 + 255.0 * (1.0 - f64::from(a) / 255.0);
                let got = f64::from(composite_on_white([v; 3], a)[0]);
                assert!((got - exact).abs() <= 1.0, "v {v} a {a}: {got} vs {exact}");
            }
        }
    }
}
