//! Weight-only int8 quantisation (`--quantization wint8`), done on the host at load time from
//! the bf16 checkpoint: one f32 scale per output row (per channel), symmetric, no zero point.
//!
//! For a row `w[0..k)`: `scale = max_i |w_i| / 127`, `q_i = round_half_even(w_i / scale)`
//! clamped to `[-127, 127]`; the row then stands for `q_i · scale`. An all-zero row gets
//! scale 0 and zeros. The kernels multiply the f32 sum `Σ x_i · q_i` by the row's scale
//! (`ocrvl_moe_grouped_gemm_w8`), so the only error is the rounding of `w_i / scale`: at most
//! `scale / 2 = max|w| / 254` per weight (plus the f32 rounding of the quotient).

use half::bf16;

use crate::error::{Error, Result};

/// The largest magnitude a quantised weight takes (symmetric: -128 is never used).
pub const INT8_MAX_LEVEL: f32 = 127.0;

/// Weights quantised row by row: `q` `[rows, row_len]`, `scales` `[rows]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Rows {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Quantises `w` (`[rows, row_len]`, row-major) row by row; see the module comment. A weight
/// that is not finite is refused, naming the row.
pub fn quantize_rows_int8(what: &str, w: &[bf16], row_len: usize) -> Result<Int8Rows> {
    if row_len == 0 || w.len() % row_len != 0 {
        return Err(Error::invalid(
            "quantize int8",
            format!("{what}: {} values do not split into rows of {row_len}", w.len()),
        ));
    }
    let rows = w.len() / row_len;
    let mut out = Int8Rows {
        q: Vec::with_capacity(w.len()),
        scales: Vec::with_capacity(rows),
    };
    for (r, row) in w.chunks_exact(row_len).enumerate() {
        // The largest magnitude from the bits: with the sign cleared, bf16 magnitudes order as
        // integers, and 0x7F80 and above are inf and NaN. (A u16 max reduction vectorises;
        // per-value checks did not: round 10 took 60 s of the 28B-A3B's start-up quantising.)
        let max_bits = row.iter().fold(0u16, |m, x| m.max(x.to_bits() & 0x7FFF));
        if max_bits >= 0x7F80 {
            let bad = row
                .iter()
                .map(|x| x.to_f32())
                .find(|v| !v.is_finite())
                .unwrap_or(f32::NAN);
            return Err(Error::invalid(
                "quantize int8",
                format!("{what}: row {r} holds {bad}, which has no int8 form"),
            ));
        }
        let max_abs = bf16::from_bits(max_bits).to_f32();
        let scale = max_abs / INT8_MAX_LEVEL;
        out.scales.push(scale);
        if scale == 0.0 {
            out.q.extend(std::iter::repeat_n(0i8, row_len));
            continue;
        }
        // Divide (not multiply by 1/scale) so that the row's largest weight lands on ±127
        // exactly; then round half to even by adding and subtracting 1.5 · 2^23 (exact for
        // |v| <= 127 under the default rounding, and vectorisable, unlike a roundeven call).
        const ROUND: f32 = 12_582_912.0;
        out.q.extend(row.iter().map(|x| {
            let v = (x.to_f32() / scale).clamp(-INT8_MAX_LEVEL, INT8_MAX_LEVEL);
            ((v + ROUND) - ROUND) as i8
        }));
    }
    Ok(out)
}

/// The bf16 values the quantised rows stand for, `bf16(q · scale)`: what a bf16 checkpoint
/// holding the same rounded weights would contain (tests compare the two paths with it).
pub fn dequantize_rows_int8(rows: &Int8Rows, row_len: usize) -> Vec<bf16> {
    rows.q
        .chunks_exact(row_len)
        .zip(&rows.scales)
        .flat_map(|(row, &s)| row.iter().map(move |&q| bf16::from_f32(q as f32 * s)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&x| bf16::from_f32(x)).collect()
    }

    #[test]
    fn each_row_gets_its_own_scale_and_its_largest_weight_lands_on_127() {
        let w = rows(&[0.5, -1.0, 0.25, 0.0, 2.0, 4.0, -4.0, 1.0]);
        let r = quantize_rows_int8("w", &w, 4).unwrap();
        assert_eq!(r.scales, vec![1.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(r.q[..4], [64, -127, 32, 0]); // 63.5 rounds to the even 64
        assert_eq!(r.q[4..], [64, 127, -127, 32]); // 31.75 -> 32
    }

    #[test]
    fn the_error_is_at_most_half_a_step_per_weight() {
        // A fixed pseudo-random row set (an LCG), spread over several magnitudes.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let row_len = 97;
        let w: Vec<bf16> = (0..row_len * 13)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                bf16::from_f32(u * 10f32.powi((i / row_len) as i32 % 4 - 2))
            })
            .collect();
        let r = quantize_rows_int8("w", &w, row_len).unwrap();
        for (row, (qrow, &s)) in w.chunks_exact(row_len).zip(r.q.chunks_exact(row_len).zip(&r.scales)) {
            for (x, &q) in row.iter().zip(qrow) {
                // Half a step, plus the f32 rounding of w / scale (an ulp near 127 is 2^-17
                // steps), which can put a value just under a half onto it.
                let err = (x.to_f32() as f64 - q as f64 * s as f64).abs();
                assert!(err <= s as f64 * (0.5 + 1e-5), "{x} -> {q} * {s}: error {err}");
            }
        }
        let back = dequantize_rows_int8(&r, row_len);
        assert_eq!(back.len(), w.len());
    }

    #[test]
    fn matches_the_definition_at_every_half_step() {
        // Rows whose largest weight is 127 · 2^-4, so w / scale is w · 16 exactly: every
        // multiple of 1/32 in [-127, 127] (each half step among them) against round_ties_even.
        let row_len = 127 * 64 + 2;
        let mut w: Vec<bf16> = (0..row_len - 2)
            .map(|i| bf16::from_f32((i as f32 - (127 * 32) as f32) / 512.0))
            .collect();
        w.extend([bf16::from_f32(127.0 / 16.0), bf16::from_f32(-127.0 / 16.0)]);
        let r = quantize_rows_int8("w", &w, row_len).unwrap();
        assert_eq!(r.scales, vec![1.0 / 16.0]);
        for (x, &q) in w.iter().zip(&r.q) {
            let want = (x.to_f32() * 16.0).round_ties_even().clamp(-127.0, 127.0) as i8;
            assert_eq!(q, want, "{x}");
        }
    }

    #[test]
    fn zero_rows_and_bad_input() {
        let r = quantize_rows_int8("w", &rows(&[0.0, -0.0, 0.0]), 3).unwrap();
        assert_eq!((r.q, r.scales), (vec![0, 0, 0], vec![0.0]));
        let err = quantize_rows_int8("experts.3.up_proj", &rows(&[1.0, f32::NAN]), 2).unwrap_err();
        assert!(err.to_string().contains("experts.3.up_proj: row 0"), "{err}");
        assert!(quantize_rows_int8("w", &rows(&[1.0, 2.0, 3.0]), 2).is_err());
        assert!(quantize_rows_int8("w", &rows(&[1.0]), 0).is_err());
    }
}
