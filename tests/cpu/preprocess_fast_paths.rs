//! The vectorised preprocessing against straightforward references, value for value: the
//! bicubic resize (src/preprocess/resample_kernels.rs) against a per-pixel transcription of
//! Pillow's 8-bit resample (the implementation the PIL fixtures of tests/cpu/preprocess.rs
//! first verified), and normalise + patchify in f32 and bf16 against a per-patch loop and
//! `half`'s conversion. Sizes are random (1-pixel sides, odd sizes, up- and downscaling,
//! strong shrinks where windows cover the image) plus `bench`'s page sizes; pixels are random.

use half::bf16;
use ocrvl::preprocess::{
    resize_bicubic_with_order, ImageGrid, ImageProcessor, PassOrder, ProcessedImage, ProcessorConfig, Rgb8Image,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Pillow's `ImagingResample` for 8-bit images, written the plain way: per output pixel, its
/// taps in order, horizontal pass over the rows the vertical pass reads, uint8 in between.
mod pillow_reference {
    const PRECISION_BITS: u32 = 32 - 8 - 2;

    fn kernel(x: f64) -> f64 {
        let a = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    }

    /// For each output index: (first source index, fixed-point weights).
    fn taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let inv = 1.0 / filterscale;
        (0..out_size)
            .map(|o| {
                let center = (o as f64 + 0.5) * scale;
                let lo = ((center - support + 0.5) as i64).max(0) as usize;
                let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let k: Vec<f64> = (lo..hi).map(|i| kernel((i as f64 - center + 0.5) * inv)).collect();
                let sum: f64 = k.iter().sum();
                let fixed = k
                    .iter()
                    .map(|&t| {
                        let t = if sum != 0.0 { t / sum } else { t };
                        let scaled = t * f64::from(1u32 << PRECISION_BITS);
                        if t < 0.0 {
                            (scaled - 0.5) as i32
                        } else {
                            (scaled + 0.5) as i32
                        }
                    })
                    .collect();
                (lo, fixed)
            })
            .collect()
    }

    fn clip(acc: i32) -> u8 {
        (acc >> PRECISION_BITS).clamp(0, 255) as u8
    }

    fn horizontal(src: &[u8], w: usize, c: usize, rows: std::ops::Range<usize>, out_w: usize) -> Vec<u8> {
        let taps = taps(w, out_w);
        let mut out = Vec::with_capacity(rows.len() * out_w * c);
        for r in rows {
            for (lo, weights) in &taps {
                for ch in 0..c {
                    let mut acc = 1i32 << (PRECISION_BITS - 1);
                    for (i, &wt) in weights.iter().enumerate() {
                        acc += i32::from(src[(r * w + lo + i) * c + ch]) * wt;
                    }
                    out.push(clip(acc));
                }
            }
        }
        out
    }

    /// `src` holds rows `first_row..` of an image `h` rows high.
    fn vertical(src: &[u8], w: usize, c: usize, h: usize, first_row: usize, out_h: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(out_h * w * c);
        for (lo, weights) in taps(h, out_h) {
            for x in 0..w * c {
                let mut acc = 1i32 << (PRECISION_BITS - 1);
                for (i, &wt) in weights.iter().enumerate() {
                    acc += i32::from(src[(lo + i - first_row) * w * c + x]) * wt;
                }
                out.push(clip(acc));
            }
        }
        out
    }

    pub fn resize(src: &[u8], (w, h): (usize, usize), c: usize, (ow, oh): (usize, usize), pillow13: bool) -> Vec<u8> {
        let (shrink_h, shrink_w) = (h as i64 - oh as i64, w as i64 - ow as i64);
        let vertical_first = pillow13 && shrink_h > 0 && shrink_h > 2 * shrink_w;
        match (ow != w, oh != h) {
            (false, false) => src.to_vec(),
            (false, true) => vertical(src, w, c, h, 0, oh),
            (true, false) => horizontal(src, w, c, 0..h, ow),
            (true, true) if vertical_first => horizontal(&vertical(src, w, c, h, 0, oh), w, c, 0..oh, ow),
            (true, true) => {
                let t = taps(h, oh);
                let first = t[0].0;
                let last = t[oh - 1].0 + t[oh - 1].1.len();
                vertical(&horizontal(src, w, c, first..last, ow), ow, c, h, first, oh)
            }
        }
    }
}

fn random_pixels(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Half the images are black/white only: every sum then lands far outside [0, 255] at
    // edges, which exercises the clipping.
    let binary = seed % 2 == 0;
    (0..len)
        .map(|_| {
            if binary {
                if rng.random::<bool>() {
                    255
                } else {
                    0
                }
            } else {
                rng.random()
            }
        })
        .collect()
}

fn check_resize(w: usize, h: usize, c: usize, ow: usize, oh: usize, order: PassOrder, seed: u64) {
    let src = random_pixels(w * h * c, seed);
    let got = resize_bicubic_with_order(&src, w, h, c, ow, oh, order);
    let want = pillow_reference::resize(&src, (w, h), c, (ow, oh), order == PassOrder::Pillow13);
    assert_eq!(got.len(), want.len(), "{w}x{h}x{c} -> {ow}x{oh} {order:?}: length");
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{w}x{h}x{c} -> {ow}x{oh} {order:?} seed {seed}: sample {i} (x {}, y {}, c {}) is {} not {}",
            i / c % ow,
            i / c / ow,
            i % c,
            got[i],
            want[i]
        );
    }
}

fn side() -> impl Strategy<Value = usize> {
    // Mostly small (tiny and odd sides, windows clipped at both ends), sometimes wide
    // enough for several blocks of 64 samples and for strong shrinks.
    prop_oneof![4 => 1usize..12, 4 => 1usize..80, 1 => 80usize..400]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn resize_equals_the_pillow_reference(
        (w, h, ow, oh) in (side(), side(), side(), side()),
        c in 1usize..=4,
        pillow13 in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let order = if pillow13 { PassOrder::Pillow13 } else { PassOrder::Pillow12 };
        check_resize(w, h, c, ow, oh, order, seed);
    }
}

#[test]
fn resize_equals_the_pillow_reference_at_edge_sizes() {
    // 1-pixel sides both ways, a whole row into one pixel, shrinks by large factors (windows
    // longer than a block of rows or columns), and sizes around the block widths.
    let cases = [
        (1, 1, 1, 1),
        (1, 1, 5, 3),
        (1, 9, 1, 4),
        (9, 1, 4, 1),
        (7, 5, 1, 1),
        (300, 2, 3, 2),
        (2, 300, 2, 3),
        (1000, 9, 7, 9),
        (25, 25, 24, 26),
        (63, 65, 64, 64),
        (129, 17, 65, 33),
    ];
    for (i, &(w, h, ow, oh)) in cases.iter().enumerate() {
        for c in 1..=4 {
            for order in [PassOrder::Pillow13, PassOrder::Pillow12] {
                check_resize(w, h, c, ow, oh, order, i as u64 * 8 + c as u64);
            }
        }
    }
}

#[test]
fn resize_equals_the_pillow_reference_at_the_bench_sizes() {
    // `bench`'s images and an A4 page at 150 dpi, to their `smart_resize` sizes.
    let processor = ImageProcessor::new(ProcessorConfig::default());
    for (i, (w, h)) in [
        (1920, 1080),
        (640, 360),
        (1240, 1754),
        (800, 48),
        (800, 400),
        (1000, 700),
    ]
    .into_iter()
    .enumerate()
    {
        let (oh, ow) = processor.target_size(h, w).unwrap();
        check_resize(w, h, 3, ow, oh, PassOrder::Pillow13, 100 + i as u64);
    }
}

/// `normalize_patchify` as first written: per patch, channel, row and column.
fn patchify_reference(processor: &ImageProcessor, img: &Rgb8Image) -> Vec<f32> {
    let c = &processor.config;
    let ps = c.patch_size;
    let (gh, gw) = (img.height / ps, img.width / ps);
    let mut out = Vec::with_capacity(gh * gw * 3 * ps * ps);
    for py in 0..gh {
        for px in 0..gw {
            for ch in 0..3 {
                for ky in 0..ps {
                    for kx in 0..ps {
                        let level = img.data[((py * ps + ky) * img.width + px * ps + kx) * 3 + ch];
                        let mut x = if c.do_rescale {
                            (f64::from(level) * c.rescale_factor) as f32
                        } else {
                            f32::from(level)
                        };
                        if c.do_normalize {
                            x = (x - c.image_mean[ch]) / c.image_std[ch];
                        }
                        out.push(x);
                    }
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn patchify_f32_and_bf16_equal_the_reference(
        (gh, gw) in (1usize..6, 1usize..6),
        ps in prop_oneof![Just(14usize), 1usize..5],
        mean in (0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0),
        std in (0.05f32..2.0, 0.05f32..2.0, 0.05f32..2.0),
        flags in (any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        let processor = ImageProcessor::new(ProcessorConfig {
            patch_size: ps,
            image_mean: [mean.0, mean.1, mean.2],
            image_std: [std.0, std.1, std.2],
            do_rescale: flags.0,
            do_normalize: flags.1,
            ..ProcessorConfig::default()
        });
        let (w, h) = (gw * ps, gh * ps);
        let img = Rgb8Image::from_raw(w, h, random_pixels(w * h * 3, seed | 1)).unwrap();
        let want = patchify_reference(&processor, &img);
        let f32_out = processor.normalize_patchify(&img);
        let bf16_out = processor.normalize_patchify_bf16(&img);
        prop_assert_eq!(f32_out.grid, ImageGrid { t: 1, h: gh, w: gw });
        prop_assert_eq!(bf16_out.grid, f32_out.grid);
        let got_bits: Vec<u32> = f32_out.pixel_values.iter().map(|v| v.to_bits()).collect();
        let want_bits: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
        prop_assert_eq!(got_bits, want_bits);
        let want_bf16: Vec<u16> = want.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        let fused: Vec<u16> = bf16_out.pixel_values.iter().map(|v| v.to_bits()).collect();
        let converted: Vec<u16> = f32_out.pixel_values_bf16().iter().map(|v| v.to_bits()).collect();
        prop_assert_eq!(&fused, &want_bf16);
        prop_assert_eq!(&converted, &want_bf16);
    }
}

#[test]
fn whole_page_in_bf16_equals_the_f32_path_converted() {
    // The service's path (`process_bytes_bf16`) against the f32 path converted by `half`.
    let processor = ImageProcessor::new(ProcessorConfig::default());
    let (w, h) = (1000, 700);
    let img = image::RgbImage::from_raw(w, h, random_pixels((w * h * 3) as usize, 7)).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    let f32_out: ProcessedImage = processor.process_bytes(&png).unwrap();
    let bf16_out: ProcessedImage<bf16> = processor.process_bytes_bf16(&png).unwrap();
    assert_eq!(bf16_out.grid, f32_out.grid);
    assert_eq!((bf16_out.resized_height, bf16_out.resized_width), (700, 1008));
    let want: Vec<u16> = f32_out
        .pixel_values
        .iter()
        .map(|&v| bf16::from_f32(v).to_bits())
        .collect();
    let got: Vec<u16> = bf16_out.pixel_values.iter().map(|v| v.to_bits()).collect();
    assert!(got == want, "bf16 pixels differ from the f32 pixels converted");
}

#[test]
fn bf16_conversion_equals_half_on_every_rounding_case() {
    // Every sign/exponent/top-mantissa pattern (so zeros, subnormals, infinities and NaNs),
    // each with the dropped half at the rounding edges and at random.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut values = Vec::with_capacity(65536 * 8);
    for high in 0..=u16::MAX {
        for low in [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, rng.random::<u32>() & 0xFFFF] {
            values.push(f32::from_bits(u32::from(high) << 16 | low));
        }
    }
    let image = ProcessedImage {
        pixel_values: values,
        grid: ImageGrid { t: 1, h: 1, w: 1 },
        resized_height: 14,
        resized_width: 14,
    };
    for (v, got) in image.pixel_values.iter().zip(image.pixel_values_bf16()) {
        assert_eq!(got.to_bits(), bf16::from_f32(*v).to_bits(), "{:#010x}", v.to_bits());
    }
}
