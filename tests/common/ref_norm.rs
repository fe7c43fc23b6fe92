//! f64 references for the norm kernels (`ocrvl::kernels::norm`), over rows of bf16 inputs
//! taken exactly as uploaded, and the input generators their tests use.

use half::bf16;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Exact RMSNorm of each `hidden`-wide row: `x / sqrt(mean(x²) + eps) * w`.
pub fn rmsnorm(x: &[bf16], w: &[bf16], hidden: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(hidden) {
        let ss: f64 = row.iter().map(|v| v.to_f64() * v.to_f64()).sum();
        let rstd = 1.0 / (ss / hidden as f64 + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, w)| v.to_f64() * rstd * w.to_f64()));
    }
    out
}

/// Exact LayerNorm of each row with the biased variance:
/// `(x - mean) / sqrt(var + eps) * w + b`.
pub fn layernorm(x: &[bf16], w: &[bf16], b: &[bf16], hidden: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(hidden) {
        let mean = row.iter().map(|v| v.to_f64()).sum::<f64>() / hidden as f64;
        let var = row.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / hidden as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        out.extend(
            row.iter()
                .zip(w.iter().zip(b))
                .map(|(v, (w, b))| (v.to_f64() - mean) * rstd * w.to_f64() + b.to_f64()),
        );
    }
    out
}

/// PyTorch's bf16 `residual + x`: the f32 sum rounded once to bf16 (nearest-even), which is the
/// exact sum rounded once (the f32 sum of two bf16 is exact, or off only far below bf16's last
/// bit), so this is exactly what the kernel must write.
pub fn add_bf16(residual: &[bf16], x: &[bf16]) -> Vec<bf16> {
    residual
        .iter()
        .zip(x)
        .map(|(r, x)| bf16::from_f32(r.to_f32() + x.to_f32()))
        .collect()
}

/// Norm weights as vLLM's tests draw them: N(1, 0.1) (Box-Muller), rounded to bf16.
pub fn norm_weights(rng: &mut ChaCha8Rng, n: usize) -> Vec<bf16> {
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
            let u2: f64 = rng.random();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            bf16::from_f64(1.0 + 0.1 * z)
        })
        .collect()
}

/// Rows of uniform values with a per-row scale in [0.25, 4) and a per-row offset in
/// [-offset, offset): row statistics vary, and for LayerNorm (offset of a few units) the mean
/// subtraction matters. Rounded to bf16; these exact values go to both GPU and reference.
pub fn rows(rng: &mut ChaCha8Rng, tokens: usize, hidden: usize, offset: f32) -> Vec<bf16> {
    let mut v = Vec::with_capacity(tokens * hidden);
    for _ in 0..tokens {
        let scale: f32 = 2f32.powf(rng.random_range(-2.0..2.0));
        let shift: f32 = if offset > 0.0 {
            rng.random_range(-offset..offset)
        } else {
            0.0
        };
        v.extend((0..hidden).map(|_| bf16::from_f32(shift + scale * rng.random_range(-1.0f32..1.0))));
    }
    v
}
