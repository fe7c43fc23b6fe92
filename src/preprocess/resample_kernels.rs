//! The two passes of the bicubic resize ([`super::resample`]), shaped so that the compiler
//! vectorises them: every output is still `clip8(HALF + Σ pixel · weight)` in exact i32
//! arithmetic, so the order of the additions does not matter and the result is Pillow's to
//! the bit; only the loops are arranged differently.
//!
//! - Vertical pass: an output row is a weighted sum of whole source rows. Each row is done in
//!   blocks of [`VBLOCK`] samples whose accumulators stay in registers across the taps.
//! - Horizontal pass: a pixel's taps are neighbours in its own row, which vectorises badly
//!   (3 samples a pixel, a window per pixel). Instead [`HGROUPS`]·8 lanes hold the same column
//!   of 8 rows: a block of rows is copied column-major (pixel `x` of rows `r0..r0+8` side by
//!   side, `24` bytes for RGB), every output column is then a weighted sum of whole 24-byte
//!   source columns (the vertical pass's shape again), and the block is copied back row-major.
//!
//! Written in plain safe Rust; [`Isa::Avx2`] only recompiles the same code with AVX2 enabled
//! (`vpmulld`, 8 lanes), chosen at run time: the default x86-64 target has no 32-bit vector
//! multiply, and with AVX2 each pass runs 2-5 times faster (docs/notes/preprocess.md).

use std::ops::Range;

use super::resample::{clip8, AxisTaps, WindowTaps, HALF};

/// Samples of an output row accumulated together by the vertical pass: 64 i32 accumulators
/// are 8 AVX2 registers, leaving room for the weight and the loads.
const VBLOCK: usize = 64;

/// Groups of 8 i32 lanes the horizontal pass accumulates per output column: 3 groups hold
/// 8 RGB rows with no lane wasted. More (6 groups, 16 rows) spill registers and ran slower.
const HGROUPS: usize = 3;

/// The instruction set the passes are compiled for, detected once per resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// x86-64 with AVX2.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
        Isa::Baseline
    }

    /// Runs `f` compiled for this instruction set (`f` and what it calls inline must be
    /// `#[inline(always)]` to be recompiled).
    #[inline(always)]
    fn run<R>(self, f: impl FnOnce() -> R) -> R {
        match self {
            Isa::Baseline => f(),
            // SAFETY: `Isa::Avx2` is only made by `detect` after the CPU reported AVX2.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { with_avx2(f) },
        }
    }
}

/// `f` inlined into a function compiled with AVX2 enabled.
///
/// # Safety
/// The CPU must support AVX2. (An `unsafe fn` rather than a safe one with the target feature:
/// the crate's MSRV, 1.85, predates safe `#[target_feature]` functions.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The vertical pass over `src` (rows of `w` pixels of `C` samples), whose row 0 is source
/// row `row_offset`: one output row per entry of `taps`.
pub(super) fn vertical_pass<const C: usize>(
    isa: Isa,
    src: &[u8],
    w: usize,
    taps: &AxisTaps,
    row_offset: usize,
) -> Vec<u8> {
    let stride = w * C;
    let out_h = taps.first.len();
    let mut out = vec![0u8; out_h * stride];
    isa.run(
        #[inline(always)]
        || {
            let mut rows: Vec<&[u8]> = Vec::with_capacity(taps.ksize);
            for (y, out_row) in out.chunks_exact_mut(stride).enumerate() {
                let (lo, weights) = taps.taps(y);
                rows.clear();
                rows.extend(
                    (lo - row_offset..)
                        .take(weights.len())
                        .map(|r| &src[r * stride..(r + 1) * stride]),
                );
                vertical_row(&rows, weights, out_row);
            }
        },
    );
    out
}

/// One output row: `out[i] = clip8(HALF + Σ_t rows[t][i] · weights[t])`.
#[inline(always)]
fn vertical_row(rows: &[&[u8]], weights: &[i32], out: &mut [u8]) {
    let done = out.len() / VBLOCK * VBLOCK;
    let mut blocks = out.chunks_exact_mut(VBLOCK);
    for (b, out_block) in blocks.by_ref().enumerate() {
        let mut acc = [HALF; VBLOCK];
        for (row, &wt) in rows.iter().zip(weights) {
            let px: &[u8; VBLOCK] = row[b * VBLOCK..(b + 1) * VBLOCK].try_into().expect("block of a row");
            for (a, &p) in acc.iter_mut().zip(px) {
                *a += i32::from(p) * wt;
            }
        }
        for (o, &a) in out_block.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    for (i, o) in blocks.into_remainder().iter_mut().enumerate() {
        let acc = rows
            .iter()
            .zip(weights)
            .fold(HALF, |a, (row, &wt)| a + i32::from(row[done + i]) * wt);
        *o = clip8(acc);
    }
}

/// The horizontal pass over rows `rows` of `src` (width `in_w`, `C` samples a pixel): one
/// output row per row, `taps.start.len()` pixels wide.
pub(super) fn horizontal_pass<const C: usize>(
    isa: Isa,
    src: &[u8],
    in_w: usize,
    taps: &WindowTaps,
    rows: Range<usize>,
) -> Vec<u8> {
    // Rows per block: 8 for RGB, 6 for RGBA (2 lanes idle), 12 for 2 samples, 24 for grey.
    let block_rows = LANES / C;
    let (in_stride, out_stride) = (in_w * C, taps.start.len() * C);
    let mut out = vec![0u8; rows.len() * out_stride];
    let src = &src[rows.start * in_stride..rows.end * in_stride];
    // Column-major copies of one block: `[in_w, COLUMN]` and `[out_w, COLUMN]`.
    let mut columns_in = vec![0u8; in_w * COLUMN];
    let mut columns_out = vec![0u8; taps.start.len() * COLUMN];
    isa.run(
        #[inline(always)]
        || {
            let blocks = src
                .chunks(block_rows * in_stride)
                .zip(out.chunks_mut(block_rows * out_stride));
            for (block_in, block_out) in blocks {
                to_columns::<C>(block_in, in_w, &mut columns_in);
                horizontal_columns(&columns_in, taps, &mut columns_out);
                from_columns::<C>(&columns_out, block_out);
            }
        },
    );
    out
}

/// Lanes of a column that hold samples: 3 groups of 8 i32 accumulators.
const LANES: usize = 8 * HGROUPS;
/// Bytes of a column: the lanes and spare bytes, so that 3-byte pixels can be moved 4 bytes
/// at a time (the 4th byte lands on the next lane, written after, or on a spare byte).
const COLUMN: usize = 32;

/// Rows `block` (`[n, in_w, C]`, n at most `LANES / C`) to columns: pixel `x` of row `r`
/// goes to `columns[x * COLUMN + r * C ..][.. C]`. Lanes of missing rows keep stale bytes,
/// whose outputs are never copied back.
#[inline(always)]
fn to_columns<const C: usize>(block: &[u8], in_w: usize, columns: &mut [u8]) {
    let columns = &mut columns[..in_w * COLUMN];
    for (r, row) in block.chunks_exact(in_w * C).enumerate() {
        let lane = r * C;
        if C == 3 {
            // All but the last pixel as 4-byte moves (the 4th byte is the next pixel's).
            let (body, last) = columns.split_at_mut((in_w - 1) * COLUMN);
            for (x, column) in body.chunks_exact_mut(COLUMN).enumerate() {
                let px: [u8; 4] = row[x * 3..x * 3 + 4].try_into().expect("4 bytes");
                column[lane..lane + 4].copy_from_slice(&px);
            }
            last[lane..lane + 3].copy_from_slice(&row[(in_w - 1) * 3..]);
        } else {
            for (column, px) in columns.chunks_exact_mut(COLUMN).zip(row.chunks_exact(C)) {
                column[lane..lane + C].copy_from_slice(px);
            }
        }
    }
}

/// Columns back to the rows of `block` (`[n, out_w, C]`).
#[inline(always)]
fn from_columns<const C: usize>(columns: &[u8], block: &mut [u8]) {
    let out_w = columns.len() / COLUMN;
    for (r, row) in block.chunks_exact_mut(out_w * C).enumerate() {
        let lane = r * C;
        if C == 3 {
            // All but the last pixel as 4-byte moves, left to right so that each pixel
            // overwrites the byte its left neighbour spilled.
            let (body, last) = columns.split_at((out_w - 1) * COLUMN);
            for (x, column) in body.chunks_exact(COLUMN).enumerate() {
                let px: [u8; 4] = column[lane..lane + 4].try_into().expect("4 bytes");
                row[x * 3..x * 3 + 4].copy_from_slice(&px);
            }
            row[(out_w - 1) * 3..].copy_from_slice(&last[lane..lane + 3]);
        } else {
            for (px, column) in row.chunks_exact_mut(C).zip(columns.chunks_exact(COLUMN)) {
                px.copy_from_slice(&column[lane..lane + C]);
            }
        }
    }
}

/// Every output column of one block: `out[o] = clip8(HALF + Σ_t columns[start[o] + t] · w[t])`
/// lane by lane.
#[inline(always)]
fn horizontal_columns(columns: &[u8], taps: &WindowTaps, out: &mut [u8]) {
    let len = taps.len;
    let outputs = out
        .chunks_exact_mut(COLUMN)
        .zip(&taps.start)
        .zip(taps.weights.chunks_exact(len));
    for ((out_column, &start), weights) in outputs {
        let mut acc = [[HALF; 8]; HGROUPS];
        let window = columns[start * COLUMN..(start + len) * COLUMN].chunks_exact(COLUMN);
        for (column, &wt) in window.zip(weights) {
            let column: &[u8; COLUMN] = column.try_into().expect("one column");
            for (g, acc) in acc.iter_mut().enumerate() {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a += i32::from(column[g * 8 + i]) * wt;
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            for (i, &a) in acc.iter().enumerate() {
                out_column[g * 8 + i] = clip8(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn both_passes<const C: usize>(
        isa: Isa,
        src: &[u8],
        (w, h): (usize, usize),
        (ow, oh): (usize, usize),
    ) -> [Vec<u8>; 2] {
        let horizontal = WindowTaps::new(&AxisTaps::new(w, ow), w);
        [
            horizontal_pass::<C>(isa, src, w, &horizontal, 0..h),
            vertical_pass::<C>(isa, src, w, &AxisTaps::new(h, oh), 0),
        ]
    }

    /// The baseline build of the passes against the one this CPU runs (AVX2 where it has it):
    /// the integration tests (tests/cpu/preprocess_fast_paths.rs) compare the latter with a
    /// reference, so this carries their check over to the build other CPUs run.
    #[test]
    fn baseline_build_agrees_with_the_detected_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..60 {
            let mut side = || rng.random_range(1..100usize);
            let (size, out) = ((side(), side()), (side(), side()));
            let c = rng.random_range(1..=4usize);
            let src: Vec<u8> = (0..size.0 * size.1 * c).map(|_| rng.random()).collect();
            let run = |isa| match c {
                1 => both_passes::<1>(isa, &src, size, out),
                2 => both_passes::<2>(isa, &src, size, out),
                3 => both_passes::<3>(isa, &src, size, out),
                _ => both_passes::<4>(isa, &src, size, out),
            };
            assert!(run(Isa::Baseline) == run(Isa::detect()), "{size:?}x{c} -> {out:?}");
        }
    }
}
