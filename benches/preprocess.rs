//! CPU preprocessing of one page, stage by stage, on one thread: decode (PNG, JPEG) to RGB8,
//! the two passes of the PIL-exact bicubic resize, normalise + patchify, the bf16 conversion,
//! and the whole (`process_rgb` + bf16 as `bench` times it, `process_bytes` as the service
//! runs it, and the `*_bf16` methods that go to bf16 without the f32 image). No GPU needed.
//!
//! Sizes are those of `bench`'s workloads (src/bin/bench/workloads.rs): page-1080p, page-360p,
//! the three crops, and an A4 page at 150 dpi. Throughput is in bytes of the stage's input
//! image (RGB8, or for decode the RGB8 it decodes to), so MB/s compare across stages.
//!
//! `cargo bench --bench preprocess` (all), or a filter such as
//! `cargo bench --bench preprocess -- page-1080p`.

use std::hint::black_box;
use std::io::Cursor;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::{ImageFormat, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use ocrvl::preprocess::{decode_rgb, resize_bicubic, ImageProcessor, ProcessorConfig, Rgb8Image};

/// (name, width, height): the images of `bench`'s workloads, plus an A4 page at 150 dpi.
const SIZES: [(&str, usize, usize); 6] = [
    ("page-1080p", 1920, 1080),
    ("page-360p", 640, 360),
    ("a4-150dpi", 1240, 1754),
    ("crop-line", 800, 48),
    ("crop-paragraph", 800, 400),
    ("crop-table", 1000, 700),
];

/// A white page with dark text-like bars in lines and a little scanner noise: what a document
/// looks like to the decoders (the resize's cost does not depend on the content).
fn synthetic_page(width: usize, height: usize, rng: &mut ChaCha8Rng) -> Rgb8Image {
    let mut data = vec![255u8; width * height * 3];
    let glyph = (height / 3).clamp(4, 18);
    let margin = (width / 16).max(2);
    let mut y = (height / 12).max(glyph / 2);
    while y + glyph <= height.saturating_sub(glyph / 2).max(glyph) {
        let mut x = margin;
        while x + 4 < width - margin {
            let w = rng.random_range(glyph..glyph * 6);
            let level = rng.random_range(0..90u8);
            for row in y..(y + glyph).min(height) {
                let line = &mut data[row * width * 3..(row + 1) * width * 3];
                line[x * 3..(x + w).min(width - margin) * 3].fill(level);
            }
            x += w + rng.random_range(glyph / 2..glyph + 1);
        }
        y += glyph * 2;
    }
    for v in data.iter_mut() {
        *v = v.saturating_sub(rng.random_range(0..6u8));
    }
    Rgb8Image::from_raw(width, height, data).expect("width * height * 3 bytes")
}

fn encode(img: &Rgb8Image, format: ImageFormat) -> Vec<u8> {
    let buf = RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone()).expect("RGB8 buffer");
    let mut out = Cursor::new(Vec::new());
    buf.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn preprocess_benches(c: &mut Criterion) {
    let processor = ImageProcessor::new(ProcessorConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (name, width, height) in SIZES {
        let page = synthetic_page(width, height, &mut rng);
        let png = encode(&page, ImageFormat::Png);
        let jpeg = encode(&page, ImageFormat::Jpeg);
        let (out_h, out_w) = processor.target_size(height, width).expect("smart_resize");
        let rows = resize_bicubic(&page.data, width, height, 3, out_w, height);
        let resized = processor.resize(&page).expect("resize");
        let processed = processor.normalize_patchify(&resized);
        println!(
            "{name}: {width}x{height} -> {out_w}x{out_h}, {} patches; PNG {} KB, JPEG {} KB",
            processed.grid.num_patches(),
            png.len() / 1024,
            jpeg.len() / 1024
        );
        let page_bytes = (width * height * 3) as u64;
        let rows_bytes = (out_w * height * 3) as u64;
        let resized_bytes = (out_w * out_h * 3) as u64;

        let mut group = c.benchmark_group(format!("preprocess/{name}"));
        group.throughput(Throughput::Bytes(page_bytes));
        group.bench_function("decode_png", |b| {
            b.iter(|| decode_rgb(black_box(&png), u64::MAX).unwrap())
        });
        group.bench_function("decode_jpeg", |b| {
            b.iter(|| decode_rgb(black_box(&jpeg), u64::MAX).unwrap())
        });
        group.bench_function("resize_horizontal", |b| {
            b.iter(|| resize_bicubic(black_box(&page.data), width, height, 3, out_w, height))
        });
        group.bench_function("resize", |b| b.iter(|| processor.resize(black_box(&page)).unwrap()));
        group.bench_function("whole_rgb_to_bf16", |b| {
            b.iter(|| processor.process_rgb(black_box(&page)).unwrap().pixel_values_bf16())
        });
        group.bench_function("whole_png_to_bf16", |b| {
            b.iter(|| processor.process_bytes(black_box(&png)).unwrap().pixel_values_bf16())
        });
        group.bench_function("whole_rgb_bf16_fused", |b| {
            b.iter(|| processor.process_rgb_bf16(black_box(&page)).unwrap())
        });
        group.bench_function("whole_png_bf16_fused", |b| {
            b.iter(|| processor.process_bytes_bf16(black_box(&png)).unwrap())
        });
        group.throughput(Throughput::Bytes(rows_bytes));
        group.bench_function("resize_vertical", |b| {
            b.iter(|| resize_bicubic(black_box(&rows), out_w, height, 3, out_w, out_h))
        });
        group.throughput(Throughput::Bytes(resized_bytes));
        group.bench_function("normalize_patchify_f32", |b| {
            b.iter(|| processor.normalize_patchify(black_box(&resized)))
        });
        group.bench_function("normalize_patchify_bf16", |b| {
            b.iter(|| processor.normalize_patchify_bf16(black_box(&resized)))
        });
        group.bench_function("f32_to_bf16", |b| b.iter(|| black_box(&processed).pixel_values_bf16()));
        group.finish();
    }
}

fn config() -> Criterion {
    // Short runs on a small machine: a page stage takes 1-40 ms and varies little.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = preprocess_benches
}
criterion_main!(benches);
