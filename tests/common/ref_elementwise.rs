//! f64 references for the elementwise and embedding kernels: activations and the bilinear
//! resize of the vision position embedding.

use std::f64::consts::PI;

/// silu(g) = g / (1 + e^-g).
pub fn silu(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

/// GELU, tanh form (PyTorch's `gelu(approximate="tanh")`).
pub fn gelu_tanh(v: f64) -> f64 {
    super::reference::gelu_tanh(v)
}

/// GELU, exact form (PyTorch's `gelu(approximate="none")`): 0.5 v (1 + erf(v / sqrt(2))).
pub fn gelu_erf(v: f64) -> f64 {
    0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))
}

/// quick_gelu: v · sigmoid(1.702 v).
pub fn quick_gelu(v: f64) -> f64 {
    v / (1.0 + (-1.702 * v).exp())
}

/// erf in f64 (std has none on stable). The all-positive series
/// erf(z) = 2/sqrt(pi) e^(-z^2) sum_n 2^n z^(2n+1) / (1·3·…·(2n+1)) has no cancellation, so it is
/// accurate to a few ulp; past |z| = 6, erfc(z) < 3e-17 and erf is ±1 in f64.
pub fn erf(z: f64) -> f64 {
    if z.is_nan() {
        return z;
    }
    let a = z.abs();
    if a > 6.0 {
        return z.signum();
    }
    let (mut term, mut sum, mut n) = (a, a, 0.0f64);
    while term > sum * 1e-18 {
        n += 1.0;
        term *= 2.0 * a * a / (2.0 * n + 1.0);
        sum += term;
    }
    z.signum() * 2.0 / PI.sqrt() * (-a * a).exp() * sum
}

/// The bilinear source taps of output index i of n over a table side `side`, align_corners=False:
/// (i0, i1, weight of i1).
pub fn bilinear_taps(i: usize, n: usize, side: usize) -> (usize, usize, f64) {
    let s = ((i as f64 + 0.5) * side as f64 / n as f64 - 0.5).max(0.0);
    let i0 = (s.floor() as usize).min(side - 1);
    let i1 = (i0 + 1).min(side - 1);
    (i0, i1, s - i0 as f64)
}

/// `table` [side * side, dim] resized bilinearly (align_corners=False, no antialias) to an
/// (h, w) grid, flattened row-major: [h * w, dim].
pub fn resize_pos_embed(table: &[f64], side: usize, dim: usize, h: usize, w: usize) -> Vec<f64> {
    let mut out = vec![0.0; h * w * dim];
    for y in 0..h {
        let (y0, y1, fy) = bilinear_taps(y, h, side);
        for x in 0..w {
            let (x0, x1, fx) = bilinear_taps(x, w, side);
            let row = |yy: usize, xx: usize| &table[(yy * side + xx) * dim..(yy * side + xx + 1) * dim];
            let (p00, p01, p10, p11) = (row(y0, x0), row(y0, x1), row(y1, x0), row(y1, x1));
            let o = &mut out[(y * w + x) * dim..(y * w + x + 1) * dim];
            for c in 0..dim {
                o[c] = (1.0 - fy) * (1.0 - fx) * p00[c]
                    + (1.0 - fy) * fx * p01[c]
                    + fy * (1.0 - fx) * p10[c]
                    + fy * fx * p11[c];
            }
        }
    }
    out
}
