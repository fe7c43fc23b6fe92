//! The FA3 attention path (`kernels/attention/fa3_*`) against the FA2 path on every shape of
//! `attention.rs` and odd lengths (1, 7, 83, 129, 5040 and mixes, paged through shuffled block
//! tables with NaN in unused slots), the f64 reference on the odd lengths for both paths, and
//! the version choice of `FLAGS_flash_attn_version`. The tests run the default FA3 mainloop
//! (ping-pong); `mainloops_match_fa2` runs every mainloop (`Fa3Mainloop`) against FA2, and
//! `vision_tiles_match_fa2` every vision tile (`Fa3VisionTile`) with every mainloop.
//!
//! On an sm_90 GPU the FA3 runs are required (a build without sm_90a fails these tests); on any
//! other GPU each test instead checks that FA3 is refused with an error.
//!
//! FA3 == FA2 tolerance: both are within `2e-2 · rms + BF16_RTOL · |x|` of the exact result,
//! about 10x their rounding error (see `attention.rs`); they round P to bf16 at different tile
//! boundaries (128 against 64 keys), so they are compared with that same bound, every row.

use half::bf16;
use ocrvl::config::FlashAttnVersion;
use ocrvl::kernels::attention::{
    vision_varlen_with, AttentionKernels, AttentionVersion, Fa3Mainloop, Fa3VisionTile, Varlen, VisionQkv, VisionTile,
};
use ocrvl::runtime::Gpu;
use ocrvl::runtime::{DType, DeviceTensor};
use ocrvl::Error;
use rand_chacha::ChaCha8Rng;

use crate::attention::{
    check_text, check_vision, is_unsupported, paged_try, run_text, run_vision, text_opts, versions, Pool, TextBatch,
    TextRun, VisionBatch, HQ, HV, MIXED, Q_COLS, V_COLS,
};
use crate::common::tol::{assert_close, rms, BF16_RTOL};
use crate::common::{gpu, rng};

/// Odd query/key lengths around the 128-row and 128-key tiles, the vision tower's 5040, and
/// chunks whose keys outnumber their queries.
const ODD: &[(usize, usize)] = &[
    (1, 1),
    (7, 7),
    (83, 83),
    (129, 129),
    (5040, 5040),
    (7, 129),
    (83, 5040),
    (129, 200),
    (1, 83),
];

/// True when FA3 runs on this GPU (sm_90, where `versions` requires it); else checks that it is
/// refused, as an unsupported kernel and as a resolution error.
fn fa3_runs(g: &Gpu) -> bool {
    if versions(g).contains(&AttentionVersion::Fa3) {
        return true;
    }
    let err = paged_try(g, 2, 64, 128, 16 * 128, AttentionVersion::Fa3).unwrap_err();
    assert!(is_unsupported(&err), "FA3 on {:?}: {err}", g.compute_capability());
    eprintln!(
        "FA3 not available on this GPU ({:?}); checked that it is refused",
        g.compute_capability()
    );
    false
}

fn to_f64(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Compares two outputs `[total, cols]` run by run (`lens` the run lengths), every element.
fn assert_same_within_rounding(label: &str, got: &[bf16], want: &[bf16], lens: &[usize], cols: usize) {
    let mut t0 = 0;
    for (i, &n) in lens.iter().enumerate() {
        let w = to_f64(&want[t0 * cols..(t0 + n) * cols]);
        let g = to_f64(&got[t0 * cols..(t0 + n) * cols]);
        assert_close(
            &format!("{label}: run {i} ({n} tokens)"),
            &g,
            &w,
            2e-2 * rms(&w),
            BF16_RTOL,
        );
        t0 += n;
    }
}

/// The FA2 run of a text batch with LSE: the reference each FA3 variant is compared with.
fn text_fa2(g: &Gpu, b: &TextBatch, pool: &Pool, causal: bool) -> TextRun {
    run_text(g, b, pool, &pool.tables, text_opts(causal, AttentionVersion::Fa2), true)
}

/// Runs `kernels` on the text batch and compares it with FA2's run `fa2`: outputs within
/// rounding, every row (`label`), and the LSE within 1e-3 (`lse_label`): scores are exact bf16
/// products summed in f32 by both.
#[allow(clippy::too_many_arguments)]
fn assert_text_matches_fa2(
    g: &Gpu,
    b: &TextBatch,
    pool: &Pool,
    causal: bool,
    kernels: AttentionKernels,
    fa2: &TextRun,
    label: &str,
    lse_label: &str,
) {
    let fa3 = run_text(g, b, pool, &pool.tables, text_opts(causal, kernels), true);
    let lens: Vec<usize> = b.seqs.iter().map(|s| s.0).collect();
    assert_same_within_rounding(label, &fa3.out, &fa2.out, &lens, Q_COLS);
    // LSE [HQ, total_q].
    let l2: Vec<f64> = fa2.lse.as_ref().unwrap().iter().map(|&x| x as f64).collect();
    let l3: Vec<f64> = fa3.lse.unwrap().iter().map(|&x| x as f64).collect();
    assert_eq!(l2.len(), HQ * b.total_q());
    assert_close(lse_label, &l3, &l2, 1e-3, 1e-4);
}

/// Every variant `(label, vision tile, kernels)` against FA2 (tile Qk80) on each image set of
/// `lens_sets`, outputs compared within rounding, every row.
fn assert_vision_matches_fa2(
    g: &Gpu,
    r: &mut ChaCha8Rng,
    lens_sets: &[Vec<usize>],
    variants: &[(String, VisionTile, AttentionKernels)],
) {
    for lens in lens_sets {
        let b = VisionBatch::new(r, lens);
        let fa2 = run_vision(g, &b, VisionTile::Qk80, AttentionVersion::Fa2);
        for (label, tile, kernels) in variants {
            let fa3 = run_vision(g, &b, *tile, *kernels);
            assert_same_within_rounding(&format!("{label} vs FA2, images {lens:?}"), &fa3, &fa2, lens, V_COLS);
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn fa3_version_resolution() {
    let g = gpu();
    assert_eq!(FlashAttnVersion::Fa2.resolve(&g).unwrap(), AttentionVersion::Fa2);
    if fa3_runs(&g) {
        assert_eq!(FlashAttnVersion::Auto.resolve(&g).unwrap(), AttentionVersion::Fa3);
        assert_eq!(FlashAttnVersion::Fa3.resolve(&g).unwrap(), AttentionVersion::Fa3);
    } else {
        assert_eq!(FlashAttnVersion::Auto.resolve(&g).unwrap(), AttentionVersion::Fa2);
        let err = FlashAttnVersion::Fa3.resolve(&g).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("FLAGS_flash_attn_version") && msg.contains("sm_90"),
            "{msg}"
        );
    }
}

#[test]
#[ignore = "needs GPU"]
fn fa3_matches_fa2_text() {
    let g = gpu();
    if fa3_runs(&g) {
        let mut r = rng(0xFA3_0001);
        let seqs: Vec<(usize, usize)> = MIXED.iter().chain(ODD).copied().collect();
        for &bs in &[16usize, 32, 64, 256] {
            let b = TextBatch::new(&mut r, &seqs, 4.0);
            let pool = Pool::new(&mut r, &b, bs);
            for causal in [true, false] {
                let label = format!("block_size {bs}, causal {causal}");
                let fa2 = text_fa2(&g, &b, &pool, causal);
                assert_text_matches_fa2(
                    &g,
                    &b,
                    &pool,
                    causal,
                    AttentionVersion::Fa3.into(),
                    &fa2,
                    &format!("FA3 vs FA2, {label}"),
                    &format!("FA3 vs FA2 lse, {label}"),
                );
            }
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn fa3_matches_fa2_vision() {
    let g = gpu();
    if fa3_runs(&g) {
        let mut r = rng(0xFA3_0002);
        let lens_sets = [
            vec![1usize],
            vec![7],
            vec![83],
            vec![129],
            vec![5040],
            vec![5040, 5040],
            vec![576, 1, 5120, 17, 1000, 2, 128, 4103, 64, 65],
            vec![7, 83, 129, 1, 5040, 128, 127],
        ];
        let variants: Vec<_> = [VisionTile::Qk80, VisionTile::Pv128]
            .into_iter()
            .map(|tile| (format!("FA3 {tile:?}"), tile, AttentionVersion::Fa3.into()))
            .collect();
        assert_vision_matches_fa2(&g, &mut r, &lens_sets, &variants);
    }
}

#[test]
#[ignore = "needs GPU"]
fn odd_lengths_match_reference() {
    let g = gpu();
    let mut r = rng(0xFA3_0003);
    for &bs in &[16usize, 64] {
        let b = TextBatch::new(&mut r, ODD, 4.0);
        let pool = Pool::new(&mut r, &b, bs);
        for v in versions(&g) {
            for causal in [true, false] {
                let run = run_text(&g, &b, &pool, &pool.tables, text_opts(causal, v), true);
                check_text(
                    &format!("{v:?} odd lengths, block_size {bs}, causal {causal}"),
                    &b,
                    &run,
                    causal,
                );
            }
        }
    }
    for lens in [
        vec![1usize],
        vec![7],
        vec![83],
        vec![129],
        vec![5040],
        vec![7, 83, 129, 1, 5040],
    ] {
        let b = VisionBatch::new(&mut r, &lens);
        for v in versions(&g) {
            let got = run_vision(&g, &b, VisionTile::Qk80, v);
            check_vision(&format!("{v:?} vision odd lengths {lens:?}"), &b, &got);
        }
    }
}

/// Every FA3 mainloop (the default ping-pong, overlap alone, the first serial one) against FA2:
/// text paged at block sizes 16 and 64, causal and not (LSE too), and vision, on the odd lengths
/// (single-tile runs, where the overlapped loops only run their first and last turns, and
/// multi-tile ones, 5040 keys = 40 tiles, an even and an odd number of ring passes).
#[test]
#[ignore = "needs GPU"]
fn mainloops_match_fa2() {
    let g = gpu();
    if fa3_runs(&g) {
        let mut r = rng(0xFA3_0004);
        for &bs in &[16usize, 64] {
            let b = TextBatch::new(&mut r, ODD, 4.0);
            let pool = Pool::new(&mut r, &b, bs);
            for causal in [true, false] {
                let fa2 = text_fa2(&g, &b, &pool, causal);
                for m in Fa3Mainloop::ALL {
                    let label = format!("FA3 {m:?} vs FA2, block_size {bs}, causal {causal}");
                    let kernels = AttentionKernels::fa3(m, None);
                    assert_text_matches_fa2(&g, &b, &pool, causal, kernels, &fa2, &label, &format!("{label}, lse"));
                }
            }
        }
        let lens_sets = [vec![7usize, 83, 129, 1, 5040, 128, 127], vec![5040, 256]];
        let variants: Vec<_> = Fa3Mainloop::ALL
            .into_iter()
            .flat_map(|m| {
                [VisionTile::Qk80, VisionTile::Pv128]
                    .map(|tile| (format!("FA3 {m:?} {tile:?}"), tile, AttentionKernels::fa3(m, None)))
            })
            .collect();
        assert_vision_matches_fa2(&g, &mut r, &lens_sets, &variants);
    }
}

/// Every FA3 vision tile (kBlockM 128 with 2 and 3 K/V stages, kBlockM 192 with three consumer
/// warpgroups) with every mainloop against FA2, outputs NaN-poisoned first (`run_vision`), on
/// odd lengths: single images of 1, 7, 83, 129 (one key tile; 129 two query tiles at kBlockM
/// 128, one at 192), 191, 192 and 193 (the kBlockM 192 edges), 5040 (40 key tiles: 20 passes
/// over the 2-stage ring, 13 1/3 over the 3-stage one), and mixes of short and long images.
#[test]
#[ignore = "needs GPU"]
fn vision_tiles_match_fa2() {
    let g = gpu();
    if fa3_runs(&g) {
        let mut r = rng(0xFA3_0005);
        let lens_sets = [
            vec![1usize],
            vec![7],
            vec![83],
            vec![129],
            vec![191, 192, 193],
            vec![5040],
            vec![7, 83, 129, 1, 5040, 128, 127],
            vec![576, 1, 5120, 17, 1000, 2, 384, 4103, 64, 65],
        ];
        let variants: Vec<_> = Fa3VisionTile::ALL
            .into_iter()
            .flat_map(|t| {
                Fa3Mainloop::ALL.map(|m| {
                    (
                        format!("FA3 {t:?} {m:?}"),
                        VisionTile::Qk80,
                        AttentionKernels::fa3(m, Some(t)),
                    )
                })
            })
            .collect();
        assert_vision_matches_fa2(&g, &mut r, &lens_sets, &variants);
    }
}

/// P·V over 128 (`VisionTile::Pv128`) is built for the M128 tile only: the others refuse it as
/// unsupported.
#[test]
#[ignore = "needs GPU"]
fn vision_tiles_refuse_pv128() {
    let g = gpu();
    if fa3_runs(&g) {
        let total = 129;
        let cols = V_COLS;
        let qkv =
            DeviceTensor::from_host(&g, &[total, 3 * cols], &vec![bf16::from_f32(0.5); total * 3 * cols]).unwrap();
        let cu = DeviceTensor::from_host(&g, &[2], &[0i32, total as i32]).unwrap();
        let mut out = DeviceTensor::alloc(&g, DType::BF16, &[total, cols]).unwrap();
        let all = qkv.view();
        let views = VisionQkv {
            q: all.columns(0, cols).unwrap(),
            k: all.columns(cols, cols).unwrap(),
            v: all.columns(2 * cols, cols).unwrap(),
            num_heads: HV,
        };
        let images = Varlen {
            cu_seqlens: cu.view(),
            max_seqlen: total,
        };
        for t in [Fa3VisionTile::M128Stages3, Fa3VisionTile::M192] {
            let kernels = AttentionKernels::fa3(Fa3Mainloop::default(), Some(t));
            let err = vision_varlen_with(
                &g,
                &mut out.view_mut(),
                &views,
                &images,
                0.125,
                VisionTile::Pv128,
                kernels,
            )
            .unwrap_err();
            assert!(is_unsupported(&err), "{t:?} with Pv128: {err}");
        }
    }
}
