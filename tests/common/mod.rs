//! Shared by the test targets: seeded inputs, the GPU opener, f64 references, tolerances.
#![allow(dead_code)]

pub mod npy;
pub mod ref_attention;
pub mod ref_decode;
pub mod ref_elementwise;
pub mod ref_moe;
pub mod ref_norm;
pub mod ref_rope;
pub mod ref_sampling;
pub mod reference;
pub mod tol;

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use ocrvl::runtime::Gpu;

/// Opens GPU 0 or fails the test: a GPU test never passes by returning early.
pub fn gpu() -> Gpu {
    match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => panic!("this test needs a GPU ({e}); run it on the GPU host with --include-ignored"),
    }
}

/// A seeded generator; the seed is printed so that a failure can be replayed.
pub fn rng(seed: u64) -> ChaCha8Rng {
    eprintln!("seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in [-scale, scale), rounded to bf16. Tests keep the bf16 values and feed exactly
/// those to the f64 reference, so input rounding is not mistaken for kernel error.
pub fn rand_bf16(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.random_range(-scale..scale)))
        .collect()
}

pub fn rand_f32(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn to_f64<T: Copy + Into<f64>>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.into()).collect()
}

pub fn bf16_to_f64(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}
pub mod ref_model;

/// The repository root: `OCRVL_REPO_DIR` when set (the GPU host runs executables built
/// elsewhere, from a copy of the tree at another path), else where this crate was built.
pub fn repo_dir() -> std::path::PathBuf {
    std::env::var_os("OCRVL_REPO_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A `width` x `height` PNG with structure in every channel (a test image that decodes and
/// resizes like a real one).
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}
