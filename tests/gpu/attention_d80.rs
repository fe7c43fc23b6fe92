//! The vision attention at head_dim 80 (ERNIE-4.5-VL's ViT: 16 heads of 80, q/k/v column slices
//! of a fused `[patches, 3 · 1280]` buffer) against the f64 reference: FA2 (`fwd_d80.cu`) and,
//! on an sm_90 GPU, FA3 (`fa3_d80.cu`, `fa3_d80_m192.cu`) with each built tile and every
//! mainloop. FA3 refuses the tiles it does not build at d 80 (3 K/V stages, P·V over 128).
//! Tolerance and poisoning as in `attention.rs`: every element of the out view written and
//! finite, the columns beside it untouched.

use half::bf16;
use ocrvl::kernels::attention::{
    vision_varlen_with, AttentionKernels, AttentionVersion, Fa3Mainloop, Fa3VisionTile, Varlen, VisionQkv, VisionTile,
};
use ocrvl::runtime::{DType, DeviceTensor, Gpu};
use rand_chacha::ChaCha8Rng;

use crate::attention::{is_unsupported, versions, OUT_EXTRA, POISON};
use crate::common::ref_attention::{attention_rows, sample_rows, SeqInputs};
use crate::common::tol::{assert_close, rms, BF16_RTOL};
use crate::common::{gpu, rand_bf16, rng};

const HEADS: usize = 16;
const HD: usize = 80;
const COLS: usize = HEADS * HD;

fn scale() -> f32 {
    1.0 / (HD as f32).sqrt()
}

/// `[total, 3, HEADS, HD]`, q scaled to ±4 (a softmax neither flat nor one-hot).
fn random_qkv(r: &mut ChaCha8Rng, total: usize) -> Vec<bf16> {
    let mut qkv = rand_bf16(r, total * 3 * COLS, 1.0);
    for t in 0..total {
        for x in &mut qkv[t * 3 * COLS..t * 3 * COLS + COLS] {
            *x = bf16::from_f32(x.to_f32() * 4.0);
        }
    }
    qkv
}

fn cu_seqlens(lens: &[usize]) -> Vec<i32> {
    let mut cu = vec![0i32];
    for &n in lens {
        cu.push(cu.last().unwrap() + n as i32);
    }
    cu
}

/// Runs `kernels` with `tile`; `Err` carries the library's error (a tile not built at d 80).
fn run_with(
    g: &Gpu,
    lens: &[usize],
    qkv: &[bf16],
    tile: VisionTile,
    kernels: AttentionKernels,
) -> Result<Vec<bf16>, ocrvl::Error> {
    let total: usize = lens.iter().sum();
    let buf = DeviceTensor::from_host(g, &[total, 3 * COLS], qkv).unwrap();
    let cu = DeviceTensor::from_host(g, &[lens.len() + 1], &cu_seqlens(lens)).unwrap();
    let out_cols = COLS + OUT_EXTRA;
    let mut out = DeviceTensor::alloc(g, DType::BF16, &[total, out_cols]).unwrap();
    out.view_mut().fill_bytes(g, 0xFF).unwrap();
    {
        let all = buf.view();
        let parts = VisionQkv {
            q: all.columns(0, COLS).unwrap(),
            k: all.columns(COLS, COLS).unwrap(),
            v: all.columns(2 * COLS, COLS).unwrap(),
            num_heads: HEADS,
        };
        let images = Varlen {
            cu_seqlens: cu.view(),
            max_seqlen: lens.iter().copied().max().unwrap_or(0),
        };
        let mut o = out.view_mut().columns(0, COLS).unwrap();
        vision_varlen_with(g, &mut o, &parts, &images, scale(), tile, kernels)?;
    }
    let all: Vec<bf16> = out.to_host(g).unwrap();
    let mut res = Vec::with_capacity(total * COLS);
    for t in 0..total {
        let row = &all[t * out_cols..(t + 1) * out_cols];
        assert!(
            row[..COLS].iter().all(|x| x.to_f32().is_finite()),
            "token {t}: an output is not finite (unwritten or wrong)"
        );
        assert!(
            row[COLS..].iter().all(|x| x.to_bits() == POISON),
            "token {t}: columns past the out view were written"
        );
        res.extend_from_slice(&row[..COLS]);
    }
    Ok(res)
}

/// Runs `kernels` with the model's tile.
fn run(g: &Gpu, lens: &[usize], qkv: &[bf16], kernels: impl Into<AttentionKernels>) -> Vec<bf16> {
    run_with(g, lens, qkv, VisionTile::Qk80, kernels.into()).unwrap()
}

/// The kernels to check on this GPU: FA2, and on sm_90 FA3 with the default tile choice and
/// each tile built at d 80 with every mainloop.
fn variants(g: &Gpu) -> Vec<(String, AttentionKernels)> {
    let mut all = vec![("FA2".to_string(), AttentionVersion::Fa2.into())];
    if versions(g).contains(&AttentionVersion::Fa3) {
        all.push(("FA3 default".to_string(), AttentionVersion::Fa3.into()));
        for tile in [Fa3VisionTile::M128, Fa3VisionTile::M192] {
            for m in Fa3Mainloop::ALL {
                all.push((format!("FA3 {tile:?} {m:?}"), AttentionKernels::fa3(m, Some(tile))));
            }
        }
    }
    all
}

fn check(label: &str, lens: &[usize], qkv: &[bf16], got: &[bf16]) {
    let part = |which: usize, t0: usize, n: usize| -> Vec<f64> {
        (t0..t0 + n)
            .flat_map(|t| {
                let at = (t * 3 + which) * COLS;
                qkv[at..at + COLS].iter().map(|x| x.to_f64())
            })
            .collect()
    };
    let mut t0 = 0;
    for (i, &n) in lens.iter().enumerate() {
        let (q, k, v) = (part(0, t0, n), part(1, t0, n), part(2, t0, n));
        let inputs = SeqInputs {
            q: &q,
            k: &k,
            v: &v,
            q_len: n,
            k_len: n,
            hq: HEADS,
            hkv: HEADS,
            d: HD,
            scale: scale() as f64,
            causal: false,
        };
        let rows = sample_rows(n);
        let (want, _) = attention_rows(&inputs, &rows);
        let g: Vec<f64> = rows
            .iter()
            .flat_map(|&r| got[(t0 + r) * COLS..(t0 + r + 1) * COLS].iter().map(|x| x.to_f64()))
            .collect();
        assert_close(
            &format!("{label}: image {i} ({n} patches)"),
            &g,
            &want,
            2e-2 * rms(&want),
            BF16_RTOL,
        );
        t0 += n;
    }
}

#[test]
#[ignore = "needs GPU"]
fn vision_d80_matches_reference_alone_and_packed() {
    let g = gpu();
    let mut r = rng(0xA77E_0800);
    for (label, kernels) in variants(&g) {
        // Single images around the tile sizes (64 keys for FA2; 128 keys and 128 or 192 query
        // rows for FA3) and a real page's patch count, then a packed batch whose images must
        // equal their single runs bit for bit.
        for &n in &[1usize, 2, 63, 64, 129, 191, 193, 1000, 5184] {
            let qkv = random_qkv(&mut r, n);
            let got = run(&g, &[n], &qkv, kernels);
            check(&format!("{label} d80"), &[n], &qkv, &got);
        }
        let lens = [576usize, 1, 17, 4104, 64, 65, 192];
        let total: usize = lens.iter().sum();
        let qkv = random_qkv(&mut r, total);
        let got = run(&g, &lens, &qkv, kernels);
        check(&format!("{label} d80 packed"), &lens, &qkv, &got);
        let mut t0 = 0;
        for (i, &n) in lens.iter().enumerate() {
            let one = run(&g, &[n], &qkv[t0 * 3 * COLS..(t0 + n) * 3 * COLS], kernels);
            let same = one
                .iter()
                .zip(&got[t0 * COLS..(t0 + n) * COLS])
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{label}: image {i} ({n} patches): single run differs from the batch"
            );
            t0 += n;
        }
    }
}

/// FA3 at d 80 refuses what it does not build there (3 K/V stages; P·V over 128), and on a GPU
/// other than sm_90 refuses d 80 altogether.
#[test]
#[ignore = "needs GPU"]
fn vision_d80_fa3_refuses_unbuilt_tiles() {
    let g = gpu();
    let mut r = rng(0xA77E_0801);
    let qkv = random_qkv(&mut r, 64);
    let fa3_runs = versions(&g).contains(&AttentionVersion::Fa3);
    let mut refused = vec![(
        "P·V over 128",
        VisionTile::Pv128,
        AttentionKernels::from(AttentionVersion::Fa3),
    )];
    refused.push((
        "3 K/V stages",
        VisionTile::Qk80,
        AttentionKernels::fa3(Fa3Mainloop::default(), Some(Fa3VisionTile::M128Stages3)),
    ));
    if !fa3_runs {
        refused.push(("FA3", VisionTile::Qk80, AttentionVersion::Fa3.into()));
    }
    for (what, tile, kernels) in refused {
        match run_with(&g, &[64], &qkv, tile, kernels) {
            Err(e) => assert!(is_unsupported(&e), "FA3 d80 {what}: expected UNSUPPORTED, got {e}"),
            Ok(_) => panic!("FA3 ran d80 with {what}, which it does not build"),
        }
    }
}
