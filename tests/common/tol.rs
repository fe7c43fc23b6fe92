//! The tolerance policy, written once (STYLE.md §9): every comparison reports max-abs,
//! mean-abs and NMSE, and passes when each element satisfies `|got - want| <= atol + rtol·|want|`.
//! NaN never passes, and neither does an output the kernel left unwritten (tests poison
//! outputs with NaN first).

/// bf16 keeps 8 significant bits: one rounding of the output is up to 2^-9 relative; 2^-7
/// leaves room for an f32 accumulation order that differs from the reference's.
pub const BF16_RTOL: f64 = 1.0 / 128.0;
/// f16 keeps 11 significant bits.
pub const F16_RTOL: f64 = 1.0 / 1024.0;
/// f32 results of long f32 sums.
pub const F32_RTOL: f64 = 1e-5;

#[derive(Debug)]
pub struct Report {
    pub max_abs: f64,
    pub mean_abs: f64,
    pub nmse: f64,
    pub worst_index: usize,
}

pub fn compare(got: &[f64], want: &[f64]) -> Report {
    assert_eq!(got.len(), want.len(), "length differs");
    let (mut max_abs, mut sum_abs, mut err2, mut ref2, mut worst_index) = (0.0f64, 0.0, 0.0, 0.0, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = if g.is_nan() { f64::INFINITY } else { (g - w).abs() };
        if d > max_abs || (i == 0 && d.is_infinite()) {
            max_abs = d;
            worst_index = i;
        }
        sum_abs += d;
        err2 += d * d;
        ref2 += w * w;
    }
    let n = got.len().max(1) as f64;
    Report {
        max_abs,
        mean_abs: sum_abs / n,
        nmse: err2 / ref2.max(f64::MIN_POSITIVE),
        worst_index,
    }
}

/// Asserts `|got - want| <= atol + rtol·|want|` everywhere, and that nothing is NaN.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    let report = compare(got, want);
    eprintln!("{what}: {report:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            !g.is_nan(),
            "{what}: element {i} is NaN (unwritten or invalid); want {w}"
        );
        let bound = atol + rtol * w.abs();
        assert!(
            (g - w).abs() <= bound,
            "{what}: element {i}: got {g}, want {w}, |diff| {} > {bound}; {report:?}",
            (g - w).abs()
        );
    }
}

/// Like [`assert_close`] with the relative part taken against `scale[i]` instead of
/// `|want[i]|`: for results that are sums of rounded terms (a GEMM that rounds its product to
/// the output type before adding the old output), the rounding error follows the terms'
/// magnitude, not the sum's.
pub fn assert_close_scaled(what: &str, got: &[f64], want: &[f64], scale: &[f64], atol: f64, rtol: f64) {
    let report = compare(got, want);
    eprintln!("{what}: {report:?}");
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        assert!(
            !g.is_nan(),
            "{what}: element {i} is NaN (unwritten or invalid); want {w}"
        );
        let bound = atol + rtol * s.abs();
        assert!(
            (g - w).abs() <= bound,
            "{what}: element {i}: got {g}, want {w}, |diff| {} > {bound}; {report:?}",
            (g - w).abs()
        );
    }
}

/// Root mean square, used to scale absolute tolerances to the data.
pub fn rms(v: &[f64]) -> f64 {
    (v.iter().map(|x| x * x).sum::<f64>() / v.len().max(1) as f64).sqrt()
}
