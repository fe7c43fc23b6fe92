//! Image preprocessing (MODEL_SPEC §5): smart_resize, decoding of every supported format, the
//! decode limits, and agreement with Pillow on the fixture written by tools/make_fixture.py
//! (tests/fixtures/preprocess/): resized pixels, alpha compositing, decoded lossy formats and
//! normalised patches.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageEncoder, ImageFormat};
use ocrvl::preprocess::{
    decode_rgb, resize_bicubic, resize_bicubic_with_order, smart_resize, ImageProcessor, PassOrder, PreprocessError,
    ProcessorConfig, Rgb8Image, DEFAULT_MAX_DECODED_PIXELS,
};
use serde_json::Value;

const HUB_MIN: u64 = 112_896;
const HUB_MAX: u64 = 1_003_520;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess")
        .join(name)
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixture("manifest.json")).expect("run tools/make_fixture.py");
    serde_json::from_str(&text).unwrap()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn num(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("manifest: {key}")) as usize
}

fn decode(bytes: &[u8]) -> Rgb8Image {
    decode_rgb(bytes, DEFAULT_MAX_DECODED_PIXELS).unwrap()
}

/// Samples that differ and the largest difference in levels; printed for the report.
fn compare(what: &str, got: &[u8], want: &[u8]) -> (usize, u8) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diffs: Vec<u8> = got
        .iter()
        .zip(want)
        .map(|(a, b)| a.abs_diff(*b))
        .filter(|&d| d > 0)
        .collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    println!(
        "{what}: {} of {} samples differ, max {} levels",
        diffs.len(),
        got.len(),
        max
    );
    (diffs.len(), max)
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

// ---- smart_resize ----------------------------------------------------------------------------

#[test]
fn smart_resize_spec_table() {
    // MODEL_SPEC §5.2: input (H, W) -> resized (H, W), grid, LLM tokens.
    let table = [
        ((1754, 1240), (1176, 840), 1260),
        ((3508, 2480), (1176, 840), 1260),
        ((1000, 1400), (840, 1176), 1260),
        ((300, 300), (336, 336), 144),
        ((64, 512), (140, 952), 170),
        ((48, 1200), (84, 1680), 180),
    ];
    for ((h, w), want, tokens) in table {
        let got = smart_resize(h, w, 28, HUB_MIN, HUB_MAX).unwrap();
        assert_eq!(got, want, "{h}x{w}");
        assert_eq!((got.0 / 14) * (got.1 / 14) / 4, tokens, "{h}x{w} tokens");
    }
}

#[test]
fn smart_resize_rounds_half_to_even() {
    // 70 / 28 = 2.5 rounds to 2 (Python), not 3; 42 / 28 = 1.5 rounds to 2.
    assert_eq!(smart_resize(70, 70, 28, 784, HUB_MAX).unwrap(), (56, 56));
    assert_eq!(smart_resize(42, 98, 28, 784, HUB_MAX).unwrap(), (56, 112));
    // The short-side stretch rounds too: 10 x 25 -> width round(25 * 28 / 10) = round(70.0).
    assert_eq!(smart_resize(10, 25, 28, 784, HUB_MAX).unwrap(), (28, 56));
}

#[test]
fn smart_resize_edges() {
    // Tiny images grow to min_pixels.
    assert_eq!(smart_resize(1, 1, 28, HUB_MIN, HUB_MAX).unwrap(), (336, 336));
    assert_eq!(smart_resize(27, 27, 28, HUB_MIN, HUB_MAX).unwrap(), (336, 336));
    // A ratio of exactly 200 passes, just over fails (after the short side is stretched).
    assert_eq!(smart_resize(28, 5600, 28, HUB_MIN, HUB_MAX).unwrap(), (28, 5600));
    assert_eq!(smart_resize(1, 200, 28, HUB_MIN, HUB_MAX).unwrap(), (28, 5600));
    for (h, w) in [(28, 5601), (1, 201), (10_000, 49)] {
        let err = smart_resize(h, w, 28, HUB_MIN, HUB_MAX).unwrap_err();
        assert!(matches!(err, PreprocessError::AspectRatio { .. }), "{h}x{w}: {err}");
        assert!(err.to_string().contains("200"), "{err}");
    }
    let err = smart_resize(0, 10, 28, HUB_MIN, HUB_MAX).unwrap_err();
    assert!(matches!(err, PreprocessError::ZeroSizedImage { .. }), "{err}");
    // With a tiny max_pixels a side floors to zero (the reference would crash): an error.
    let err = smart_resize(500, 30, 28, 3136, 12544).unwrap_err();
    assert!(matches!(err, PreprocessError::ResizeToZero { .. }), "{err}");
    // Every result is a multiple of 28 within the bounds.
    for (h, w) in [(333, 777), (4000, 3000), (29, 29), (1080, 1920), (12, 2000)] {
        let (rh, rw) = smart_resize(h, w, 28, HUB_MIN, HUB_MAX).unwrap();
        assert!(rh % 28 == 0 && rw % 28 == 0, "{h}x{w} -> {rh}x{rw}");
        assert!(
            (HUB_MIN..=HUB_MAX).contains(&((rh * rw) as u64)),
            "{h}x{w} -> {rh}x{rw}"
        );
    }
}

#[test]
fn smart_resize_matches_the_python_in_the_fixture() {
    for case in manifest()["resize_cases"].as_array().unwrap() {
        let got = smart_resize(
            num(case, "height"),
            num(case, "width"),
            28,
            num(case, "min_pixels") as u64,
            num(case, "max_pixels") as u64,
        )
        .unwrap();
        assert_eq!(
            got,
            (num(case, "resized_height"), num(case, "resized_width")),
            "{}",
            case["name"]
        );
    }
}

// ---- decoding ---------------------------------------------------------------------------------

/// A 5x3 test image in every layout: pixel (x, y) has colour (40x, 60y, 200 - 30x) and alpha
/// 255, 128 or 0 by row.
fn rgba_test_image() -> image::RgbaImage {
    ImageBuffer::from_fn(5, 3, |x, y| {
        let alpha = [255, 128, 0][y as usize];
        image::Rgba([(40 * x) as u8, (60 * y) as u8, (200 - 30 * x) as u8, alpha])
    })
}

#[test]
fn decodes_png_layouts_to_rgb_on_white() {
    let rgba = rgba_test_image();
    let opaque_rgb = DynamicImage::ImageRgba8(rgba.clone()).to_rgb8();
    // RGB8 is taken as is.
    let got = decode(&encode(&DynamicImage::ImageRgb8(opaque_rgb.clone()), ImageFormat::Png));
    assert_eq!((got.width, got.height, &got.data), (5, 3, opaque_rgb.as_raw()));
    // RGBA8: opaque row unchanged, transparent row white, half row in between.
    let got = decode(&encode(&DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Png));
    assert_eq!(&got.data[..15], &opaque_rgb.as_raw()[..15]);
    assert!(got.data[30..].iter().all(|&v| v == 255));
    for (i, (&g, &src)) in got.data[15..30].iter().zip(&opaque_rgb.as_raw()[15..30]).enumerate() {
        let want = (f64::from(src) * 128.0 + 255.0 * 127.0) / 255.0;
        assert!(
            (f64::from(g) - want).abs() <= 1.0,
            "half-alpha sample {i}: {g} vs {want}"
        );
    }
    // Grey, grey + alpha.
    let grey = DynamicImage::ImageRgba8(rgba.clone()).to_luma8();
    let got = decode(&encode(&DynamicImage::ImageLuma8(grey.clone()), ImageFormat::Png));
    assert!(got.data.chunks(3).zip(grey.as_raw()).all(|(p, &l)| p == [l, l, l]));
    let grey_alpha = DynamicImage::ImageRgba8(rgba.clone()).to_luma_alpha8();
    let got = decode(&encode(&DynamicImage::ImageLumaA8(grey_alpha), ImageFormat::Png));
    assert!(got.data[..15]
        .chunks(3)
        .zip(grey.as_raw())
        .all(|(p, &l)| p == [l, l, l]));
    assert!(got.data[30..].iter().all(|&v| v == 255));
    // 16-bit: the high byte of each sample, as Pillow's PNG decoder keeps it.
    let rgb16: image::ImageBuffer<image::Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(4, 2, |x, y| {
        image::Rgb([x as u16 * 20_000, y as u16 * 40_000 + 255, 65_535])
    });
    let got = decode(&encode(&DynamicImage::ImageRgb16(rgb16.clone()), ImageFormat::Png));
    let want: Vec<u8> = rgb16.as_raw().iter().map(|&v| (v >> 8) as u8).collect();
    assert_eq!(got.data, want);
    let luma16: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(4, 2, |x, y| image::Luma([(x * 16_000 + y * 300) as u16]));
    let got = decode(&encode(&DynamicImage::ImageLuma16(luma16.clone()), ImageFormat::Png));
    assert!(got
        .data
        .chunks(3)
        .zip(luma16.as_raw())
        .all(|(p, &l)| p == [(l >> 8) as u8; 3]));
    let rgba16 = DynamicImage::ImageRgba8(rgba).to_rgba16();
    let got = decode(&encode(&DynamicImage::ImageRgba16(rgba16), ImageFormat::Png));
    assert_eq!(&got.data[..15], &opaque_rgb.as_raw()[..15]);
    assert!(got.data[30..].iter().all(|&v| v == 255));
}

#[test]
fn decodes_palette_png_with_transparency() {
    // 3x2 indexed image, palette of 3 colours, index 2 fully transparent, index 1 half.
    let palette = [10, 20, 30, 200, 100, 0, 7, 7, 7];
    let trns = [255, 128, 0];
    let rows = [[0u8, 1, 2], [2, 1, 0]];
    let png = palette_png(3, 2, &palette, &trns, &rows);
    let got = decode(&png);
    assert_eq!((got.width, got.height), (3, 2));
    assert_eq!(&got.data[0..3], &[10, 20, 30]);
    assert_eq!(&got.data[6..9], &[255, 255, 255]);
    assert_eq!(&got.data[15..18], &[10, 20, 30]);
    // Half-transparent orange over white.
    assert_eq!(&got.data[3..6], &got.data[12..15]);
    assert!(
        got.data[3] > 200 && got.data[5] > 120 && got.data[5] < 135,
        "{:?}",
        &got.data[3..6]
    );
}

#[test]
fn decodes_every_format() {
    let rgb = DynamicImage::ImageRgba8(rgba_test_image()).to_rgb8();
    let exact = DynamicImage::ImageRgb8(rgb.clone());
    for format in [ImageFormat::Bmp, ImageFormat::Tiff, ImageFormat::WebP, ImageFormat::Png] {
        let got = decode(&encode(&exact, format));
        assert_eq!(got.data, rgb.as_raw().clone(), "{format:?}");
    }
    // Lossy JPEG: right size, close colours (a smooth image, so small error).
    let smooth = DynamicImage::ImageRgb8(ImageBuffer::from_fn(32, 16, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 12) as u8, 128])
    }));
    let got = decode(&encode(&smooth, ImageFormat::Jpeg));
    assert_eq!((got.width, got.height), (32, 16));
    let (_, max) = compare("jpeg round trip", &got.data, smooth.as_rgb8().unwrap().as_raw());
    assert!(max <= 12, "jpeg error {max}");
    // GIF keeps the first frame; fully transparent pixels come out white.
    let gif = encode(&DynamicImage::ImageRgba8(rgba_test_image()), ImageFormat::Gif);
    let got = decode(&gif);
    assert_eq!((got.width, got.height), (5, 3));
    assert!(got.data[30..].iter().all(|&v| v == 255));
}

#[test]
fn applies_exif_orientation() {
    // 3 wide, 2 tall, EXIF orientation 6 (rotate 90° clockwise to display): 2 wide, 3 tall.
    let img: image::RgbImage = ImageBuffer::from_fn(3, 2, |x, y| image::Rgb([(x * 50 + y * 5) as u8, 0, 0]));
    let mut buf = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut buf);
    // Big-endian TIFF header, one IFD entry: tag 0x0112 (Orientation), SHORT, 1, value 6.
    let exif = [
        b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0,
    ];
    enc.set_exif_metadata(exif.to_vec()).unwrap();
    enc.write_image(img.as_raw(), 3, 2, image::ExtendedColorType::Rgb8)
        .unwrap();
    let got = decode(&buf);
    assert_eq!((got.width, got.height), (2, 3));
    // Rotating clockwise puts the source's bottom-left pixel (0, 1) at the top-left.
    assert_eq!(got.data[0], 5);
    assert_eq!(got.data[3], 0);
}

#[test]
fn corrupt_and_unknown_bytes_are_errors() {
    let err = decode_rgb(b"definitely not an image", DEFAULT_MAX_DECODED_PIXELS).unwrap_err();
    assert!(matches!(err, PreprocessError::UnknownImageFormat), "{err}");
    let png = encode(
        &DynamicImage::ImageRgb8(ImageBuffer::from_pixel(40, 40, image::Rgb([1, 2, 3]))),
        ImageFormat::Png,
    );
    // Truncated in the pixel data.
    let err = decode_rgb(&png[..png.len() / 2], DEFAULT_MAX_DECODED_PIXELS).unwrap_err();
    assert!(
        matches!(&err, PreprocessError::Decode { format, .. } if format == "PNG"),
        "{err}"
    );
    // A PNG signature followed by garbage.
    let mut garbage = png[..8].to_vec();
    garbage.extend_from_slice(&[0x55; 64]);
    let err = decode_rgb(&garbage, DEFAULT_MAX_DECODED_PIXELS).unwrap_err();
    assert!(matches!(err, PreprocessError::Decode { .. }), "{err}");
    // A JPEG start marker and nothing else.
    let err = decode_rgb(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0], DEFAULT_MAX_DECODED_PIXELS).unwrap_err();
    assert!(matches!(err, PreprocessError::Decode { .. }), "{err}");
    let err = ImageProcessor::new(ProcessorConfig::default())
        .process_bytes(&[])
        .unwrap_err();
    assert!(matches!(err, PreprocessError::UnknownImageFormat), "{err}");
}

#[test]
fn oversized_images_are_rejected_before_decoding() {
    // A header announcing 100000 x 100000 pixels over the pixel data of a 1x1 image: decoding
    // it would fail differently (after allocating 30 GB), so this error proves the check runs
    // on the header alone.
    let png = palette_png(1, 1, &[0, 0, 0], &[], &[[0u8]]);
    let bomb = with_png_size(&png, 100_000, 100_000);
    let err = decode_rgb(&bomb, DEFAULT_MAX_DECODED_PIXELS).unwrap_err();
    match err {
        PreprocessError::TooManyPixels {
            width, height, limit, ..
        } => {
            assert_eq!((width, height, limit), (100_000, 100_000, DEFAULT_MAX_DECODED_PIXELS));
        }
        other => panic!("expected TooManyPixels, got {other}"),
    }
    // A real image over a configured limit.
    let img = encode(&DynamicImage::ImageRgb8(ImageBuffer::new(20, 20)), ImageFormat::Bmp);
    let err = decode_rgb(&img, 399).unwrap_err();
    assert!(err.to_string().contains("20x20 = 400 pixels"), "{err}");
    assert!(decode_rgb(&img, 400).is_ok());
    let processor = ImageProcessor::new(ProcessorConfig::default()).with_max_decoded_pixels(100);
    assert!(matches!(
        processor.process_bytes(&img),
        Err(PreprocessError::TooManyPixels { .. })
    ));
}

// ---- agreement with Pillow (tests/fixtures/preprocess) ----------------------------------------

/// The closed-form pattern of tools/make_fixture.py (`zone_plate`).
fn zone_plate(width: usize, height: usize) -> Rgb8Image {
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height as u64 {
        for x in 0..width as u64 {
            for c in 0..3u64 {
                let v = (3 * x * x + 5 * y * y + x * y) / 16 + (x ^ y) * (c + 1) + 85 * c;
                data.push((v % 256) as u8);
            }
        }
    }
    Rgb8Image::from_raw(width, height, data).unwrap()
}

/// FNV-1a 64 of one row of bytes (tools/make_fixture.py `fnv1a64_rows`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

fn processor(min_pixels: u64, max_pixels: u64) -> ImageProcessor {
    ImageProcessor::new(ProcessorConfig {
        min_pixels,
        max_pixels,
        ..ProcessorConfig::default()
    })
}

/// The pass order of the Pillow that wrote the fixture (its manifest records the version).
fn fixture_pass_order() -> PassOrder {
    let version = manifest()["pillow"].as_str().unwrap().to_string();
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    if major >= 13 {
        PassOrder::Pillow13
    } else {
        PassOrder::Pillow12
    }
}

#[test]
fn resize_matches_pillow_bicubic() {
    let mut total_diff = 0;
    for case in manifest()["resize_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let input = match case["input"].as_str() {
            Some(file) => decode(&read(file)),
            None => zone_plate(num(case, "width"), num(case, "height")),
        };
        let mut p = processor(num(case, "min_pixels") as u64, num(case, "max_pixels") as u64);
        p.pass_order = fixture_pass_order();
        let resized = p.resize(&input).unwrap();
        assert_eq!(
            (resized.height, resized.width),
            (num(case, "resized_height"), num(case, "resized_width"))
        );
        if let Some(file) = case["expected"].as_str() {
            let want = image::load_from_memory(&read(file)).unwrap().to_rgb8();
            let (n, _) = compare(&format!("PIL bicubic {name}"), &resized.data, want.as_raw());
            total_diff += n;
        } else {
            let hashes: Vec<u64> = read(case["expected_row_fnv1a64"].as_str().unwrap())
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let rows = resized.data.chunks_exact(resized.width * 3);
            let bad = rows.zip(&hashes).filter(|(row, &h)| fnv1a64(row) != h).count();
            assert_eq!(hashes.len(), resized.height);
            println!(
                "PIL bicubic {name}: {bad} of {} rows differ (row hashes)",
                resized.height
            );
            total_diff += bad;
        }
    }
    assert_eq!(total_diff, 0, "ocrvl's bicubic differs from Pillow's");
}

#[test]
fn alpha_composite_matches_pillow() {
    // Pixel (x, y) = RGBA (x, x, x, y), through a PNG like a user's file.
    let table: image::RgbaImage =
        ImageBuffer::from_fn(256, 256, |x, y| image::Rgba([x as u8, x as u8, x as u8, y as u8]));
    let got = decode(&encode(&DynamicImage::ImageRgba8(table), ImageFormat::Png));
    let want = image::load_from_memory(&read("composite_white.png"))
        .unwrap()
        .to_luma8();
    let got_grey: Vec<u8> = got.data.chunks(3).map(|p| p[0]).collect();
    assert!(got.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    let (n, _) = compare("alpha composite on white", &got_grey, want.as_raw());
    assert_eq!(n, 0);
}

#[test]
fn decoded_pixels_match_pillow() {
    for case in manifest()["decode_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let got = decode(&read(case["input"].as_str().unwrap()));
        assert_eq!(
            (got.width, got.height),
            (num(case, "width"), num(case, "height")),
            "{name}"
        );
        let want = read(case["expected_rgb"].as_str().unwrap());
        let (n, max) = compare(&format!("decode {name}"), &got.data, &want);
        // Lossless formats must agree exactly; lossy decoders differ from libjpeg-turbo and
        // libwebp in their IDCT and chroma upsampling, by a few levels.
        if name.contains("lossy") || name == "jpeg" {
            assert!(max <= 8, "{name}: {max} levels");
        } else {
            assert_eq!(n, 0, "{name}");
        }
    }
}

#[test]
fn normalized_patches_match_the_reference_bitwise() {
    let m = manifest();
    let spec = &m["patches"];
    let case = m["resize_cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == spec["case"])
        .unwrap();
    let p = processor(num(case, "min_pixels") as u64, num(case, "max_pixels") as u64);
    let out = p.process_bytes(&read(case["input"].as_str().unwrap())).unwrap();
    let grid: Vec<usize> = spec["grid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!([out.grid.t, out.grid.h, out.grid.w], [grid[0], grid[1], grid[2]]);
    let want: Vec<f32> = read(spec["file"].as_str().unwrap())
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(want.len(), num(spec, "num_patches") * num(spec, "patch_dim"));
    assert_eq!(out.pixel_values.len(), want.len());
    let differing = out
        .pixel_values
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differing, 0, "normalised patch values differ from numpy's");
    assert!(out.pixel_values.iter().all(|v| (-1.0..=1.0).contains(v)));
}

// ---- layout, threads, config ------------------------------------------------------------------

#[test]
fn patchify_order_is_raster_then_c_ky_kx() {
    // Raw levels (no rescale/normalise) of a 28x42 image whose value encodes its coordinates.
    let (w, h) = (42, 28);
    let data: Vec<u8> = (0..h * w * 3)
        .map(|i| ((i / 3 % w) * 5 + (i / 3 / w) * 3 + (i % 3) * 100) as u8)
        .collect();
    let img = Rgb8Image::from_raw(w, h, data.clone()).unwrap();
    let raw = ImageProcessor::new(ProcessorConfig {
        do_rescale: false,
        do_normalize: false,
        ..ProcessorConfig::default()
    });
    let out = raw.normalize_patchify(&img);
    assert_eq!((out.grid.t, out.grid.h, out.grid.w), (1, 2, 3));
    assert_eq!(out.pixel_values.len(), 6 * 588);
    for p in 0..6 {
        let (py, px) = (p / 3, p % 3);
        for c in 0..3 {
            for ky in 0..14 {
                for kx in 0..14 {
                    let (y, x) = (py * 14 + ky, px * 14 + kx);
                    let want = f32::from(data[(y * w + x) * 3 + c]);
                    assert_eq!(out.pixel_values[p * 588 + c * 196 + ky * 14 + kx], want);
                }
            }
        }
    }
    // Hub normalisation: white is 1.0, 254 is 0.99215686, black is -1.0.
    let hub = ImageProcessor::new(ProcessorConfig::default());
    let flat = |v: u8| {
        hub.normalize_patchify(&Rgb8Image::from_raw(14, 14, vec![v; 588]).unwrap())
            .pixel_values[0]
    };
    assert_eq!((flat(255), flat(0)), (1.0, -1.0));
    assert!((flat(254) - 0.992_156_9).abs() < 1e-6);
    assert_eq!(out.pixel_values_bf16().len(), out.pixel_values.len());
}

#[test]
fn many_images_on_threads_match_one_by_one() {
    let p = processor(3136, 12544);
    let mut images: Vec<Vec<u8>> = (0..9)
        .map(|i| {
            let img = ImageBuffer::from_fn(30 + 17 * i, 90 - 7 * i, |x, y| {
                image::Rgb([(x * 3 + i) as u8, (y * 2) as u8, 77])
            });
            encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png)
        })
        .collect();
    images[4] = b"broken".to_vec();
    let parallel = p.process_many(&images, 4);
    let serial = p.process_many(&images, 1);
    assert_eq!(parallel.len(), 9);
    for (i, (a, b)) in parallel.iter().zip(&serial).enumerate() {
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "image {i}"),
            (Err(_), Err(_)) => assert_eq!(i, 4),
            _ => panic!("image {i}: threads and serial disagree"),
        }
    }
    assert!(parallel[4].is_err());
    assert!(ImageProcessor::default_threads() >= 1);
}

#[test]
fn processor_config_json() {
    let hub = r#"{ "image_processor_type": "PaddleOCRVLImageProcessor", "do_convert_rgb": true,
        "do_resize": true, "resample": 3, "do_rescale": true, "rescale_factor": 0.00392156862745098,
        "do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "min_pixels": 112896, "max_pixels": 1003520, "patch_size": 14, "temporal_patch_size": 1,
        "merge_size": 2 }"#;
    let cfg = ProcessorConfig::from_json_str(hub, "hub").unwrap();
    assert_eq!(cfg, ProcessorConfig::default());
    assert_eq!(cfg.factor(), 28);
    cfg.check_model(&ocrvl::config::ModelConfig::paddleocr_vl_0_9b())
        .unwrap();

    // transformers v5 spells the bounds as `size`.
    let v5 = r#"{"size": {"shortest_edge": 3136, "longest_edge": 12544}, "image_mean": 0.5}"#;
    let cfg = ProcessorConfig::from_json_str(v5, "v5").unwrap();
    assert_eq!(
        (cfg.min_pixels, cfg.max_pixels, cfg.image_mean),
        (3136, 12544, [0.5; 3])
    );

    for (json, field) in [
        (r#"{"resample": 2}"#, "resample"),
        (r#"{"temporal_patch_size": 2}"#, "temporal_patch_size"),
        (r#"{"min_pixels": 10, "max_pixels": 5}"#, "min_pixels"),
        (r#"{"image_std": [0.5, 0.5]}"#, "image_std"),
        (r#"{"patch_size": "14"}"#, "patch_size"),
    ] {
        let err = ProcessorConfig::from_json_str(json, "test.json").unwrap_err();
        assert!(
            matches!(&err, PreprocessError::ProcessorConfig { field: f, .. } if f == field),
            "{json}: {err}"
        );
    }
    let mut model = ocrvl::config::ModelConfig::tiny();
    model.vision.spatial_merge_size = 3;
    assert!(ProcessorConfig::default().check_model(&model).is_err());
    // A model directory without the file gets the hub values.
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        ProcessorConfig::from_dir(dir.path()).unwrap(),
        ProcessorConfig::default()
    );
    std::fs::write(dir.path().join("preprocessor_config.json"), r#"{"patch_size": 16}"#).unwrap();
    let err = ImageProcessor::from_model_dir(dir.path(), &ocrvl::config::ModelConfig::tiny()).unwrap_err();
    assert!(err.to_string().contains("vision_config.patch_size is 14"), "{err}");
}

#[test]
fn pass_order_follows_the_pillow_release() {
    // Pillow 13 runs the vertical pass first only when the height loses more than twice as
    // many pixels as the width; Pillow 12 always goes horizontal first. The intermediate uint8
    // rounding makes the two differ slightly, and only in that case.
    let (w, h) = (37, 90);
    let src: Vec<u8> = (0..w * h)
        .map(|i| ((i % w) * 37 + (i / w) * 91 + (i * i) % 13) as u8)
        .collect();
    for (ow, oh, vertical_first) in [(30, 40, true), (20, 70, false), (30, 76, false), (50, 60, true)] {
        let new = resize_bicubic_with_order(&src, w, h, 1, ow, oh, PassOrder::Pillow13);
        let old = resize_bicubic_with_order(&src, w, h, 1, ow, oh, PassOrder::Pillow12);
        assert_eq!(
            new,
            resize_bicubic(&src, w, h, 1, ow, oh),
            "the default is the current Pillow"
        );
        let (n, max) = compare(&format!("Pillow 13 vs 12 order, {w}x{h} -> {ow}x{oh}"), &new, &old);
        if vertical_first {
            assert!(n > 0 && max <= 16, "{ow}x{oh}: {n} samples, max {max}");
        } else {
            assert_eq!(n, 0, "{ow}x{oh}");
        }
    }
}

// ---- tiny PNG writer (palette images and forged headers) ---------------------------------------

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// An 8-bit indexed PNG, pixel data in one stored (uncompressed) deflate block.
fn palette_png<const W: usize>(width: u32, height: u32, palette: &[u8], trns: &[u8], rows: &[[u8; W]]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]); // depth 8, indexed colour
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"PLTE", palette);
    if !trns.is_empty() {
        png_chunk(&mut out, b"tRNS", trns);
    }
    let raw: Vec<u8> = rows
        .iter()
        .flat_map(|r| std::iter::once(0u8).chain(r.iter().copied()))
        .collect();
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    let mut z = vec![0x78, 0x01, 1];
    z.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    z.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    z.extend_from_slice(&raw);
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    png_chunk(&mut out, b"IDAT", &z);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// The same PNG with the IHDR's width and height replaced (and its CRC fixed).
fn with_png_size(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    out[16..20].copy_from_slice(&width.to_be_bytes());
    out[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&out[12..29]);
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
}
