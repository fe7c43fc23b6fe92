//! The vision attention at head_dim 80 (ERNIE-4.5-VL's ViT: 16 heads of 80, q/k/v column slices
//! of a fused `[patches, 3 · 1280]` buffer) against the f64 reference, FA2 (`fwd_d80.cu`). FA3
//! builds d = 72 only and must refuse d = 80. Tolerance and poisoning as in `attention.rs`:
//! every element of the out view written and finite, the columns beside it untouched.

use half::bf16;
use ocrvl::kernels::attention::{vision_varlen_version, AttentionVersion, Varlen, VisionQkv};
use ocrvl::runtime::{DType, DeviceTensor, Gpu};
use rand_chacha::ChaCha8Rng;

use crate::attention::{is_unsupported, OUT_EXTRA, POISON};
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

/// Runs `version`; `Err` carries the library's error (FA3 refuses d = 80).
fn run(g: &Gpu, lens: &[usize], qkv: &[bf16], version: AttentionVersion) -> Result<Vec<bf16>, ocrvl::Error> {
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
        vision_varlen_version(g, &mut o, &parts, &images, scale(), version)?;
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
    // Single images around the tile sizes (64 keys, 128 queries) and a real page's patch
    // count, then a packed batch whose images must equal their single runs bit for bit.
    for &n in &[1usize, 2, 63, 64, 129, 1000, 5184] {
        let qkv = random_qkv(&mut r, n);
        let got = run(&g, &[n], &qkv, AttentionVersion::Fa2).unwrap();
        check("FA2 d80", &[n], &qkv, &got);
    }
    let lens = [576usize, 1, 17, 4104, 64, 65];
    let total: usize = lens.iter().sum();
    let qkv = random_qkv(&mut r, total);
    let got = run(&g, &lens, &qkv, AttentionVersion::Fa2).unwrap();
    check("FA2 d80 packed", &lens, &qkv, &got);
    let mut t0 = 0;
    for (i, &n) in lens.iter().enumerate() {
        let one = run(
            &g,
            &[n],
            &qkv[t0 * 3 * COLS..(t0 + n) * 3 * COLS],
            AttentionVersion::Fa2,
        )
        .unwrap();
        let same = one
            .iter()
            .zip(&got[t0 * COLS..(t0 + n) * COLS])
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "image {i} ({n} patches): single run differs from the batch");
        t0 += n;
    }
}

#[test]
#[ignore = "needs GPU"]
fn vision_d80_fa3_refuses() {
    let g = gpu();
    let mut r = rng(0xA77E_0801);
    let qkv = random_qkv(&mut r, 64);
    match run(&g, &[64], &qkv, AttentionVersion::Fa3) {
        Err(e) => assert!(is_unsupported(&e), "FA3 d80: expected UNSUPPORTED, got {e}"),
        Ok(_) => panic!("FA3 ran head_dim 80, which it does not build"),
    }
}
