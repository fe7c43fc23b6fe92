//! ERNIE-4.5-VL against transformers (issue 18's fidelity check, at the tiny shape): a random
//! `Ernie4_5_VLMoeForConditionalGeneration` built, saved and run by tools/gpu/ernie_oracle.py
//! (transformers on the GPU host; `OCRVL_ERNIE_ORACLE_DIR` names a finished run, else the test
//! runs the script itself), loaded by ocrvl from the directory transformers saved, fed the same
//! ids and pixels. Passes when ocrvl's logits are as close to transformers' f32 logits as
//! transformers' own bf16 run is (within twice its error, max and mean), the top token agrees
//! wherever f32's margin is clear of that error, and the image features match the f32
//! resampler output within bf16 rounding.
//!
//! The prompt (two images, 49 tokens) runs through the paged cache and chunked prefill as the
//! engine runs them, twice: in chunks of 4 tokens (every 4th row compared, chunks starting
//! inside the images) and of 1 token (every row compared: logits at every position).
//!
//! Decode: transformers' bf16 greedy tokens (`--generate`, generated_bf16.npy) are fed back as
//! decode steps; at each step ocrvl's logit of transformers' token must be within twice the
//! bf16 error of ocrvl's best (a near tie may pick either); the comparison stops at the first
//! step where the two pick different tokens, since the contexts differ after it.

use std::path::{Path, PathBuf};
use std::process::Command;

use half::bf16;

use ocrvl::kernels::attention::AttentionKernels;
use ocrvl::model::ernie_vl::family::ErnieVl;
use ocrvl::model::family::ModelFamily;
use ocrvl::preprocess::image::ImageGrid;
use ocrvl::runtime::{DeviceTensor, Gemm, Gpu, Workspace};

use crate::attention::versions;
use crate::common::npy::read_npy;
use crate::common::{gpu, repo_dir};
use crate::ernie_family::{encode, run_steps};

/// The oracle's output directory, and the temporary directory holding it when the test ran
/// the script.
fn oracle_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    if let Some(d) = std::env::var_os("OCRVL_ERNIE_ORACLE_DIR") {
        return (PathBuf::from(d), None);
    }
    let script = repo_dir().join("tools/gpu/ernie_oracle.py");
    let tmp = run_oracle_script(
        &script,
        &["--variant", "tiny", "--generate", "16"],
        "torch and transformers >= 5 with ERNIE-4.5-VL",
    );
    (tmp.path().to_path_buf(), Some(tmp))
}

/// Runs `python3 SCRIPT ARGS --out TMP` and returns TMP; a failure panics with the tail of the
/// script's stderr and what it `needs`.
pub(crate) fn run_oracle_script(script: &Path, args: &[&str], needs: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed (it needs {needs}): {}",
        script.display(),
        &stderr[stderr.len().saturating_sub(2000)..]
    );
    tmp
}

/// The oracle's prompt: ids, image grids and pixel rows (bf16, as ocrvl's processor gives them).
pub(crate) struct OracleInputs {
    pub ids: Vec<u32>,
    pub grids: Vec<ImageGrid>,
    pub pixels: Vec<bf16>,
}

impl OracleInputs {
    pub(crate) fn read(dir: &std::path::Path) -> OracleInputs {
        let ids = read_npy(&dir.join("input_ids.npy"))
            .as_i64()
            .iter()
            .map(|&x| x as u32)
            .collect();
        let grids = read_npy(&dir.join("image_grid_thw.npy"))
            .as_i64()
            .chunks(3)
            .map(|r| ImageGrid {
                t: r[0] as usize,
                h: r[1] as usize,
                w: r[2] as usize,
            })
            .collect();
        let pixels = read_npy(&dir.join("pixel_values.npy"))
            .data
            .iter()
            .map(|&x| bf16::from_f64(x))
            .collect();
        OracleInputs { ids, grids, pixels }
    }
}

pub(crate) fn max_and_mean(a: &[f32], b: &[f32]) -> (f64, f64) {
    let d: Vec<f64> = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).collect();
    (
        d.iter().copied().fold(0.0, f64::max),
        d.iter().sum::<f64>() / d.len() as f64,
    )
}

/// The index of `row`'s largest entry and how far it stands above the runner-up.
pub(crate) fn top_and_margin(row: &[f32]) -> (usize, f32) {
    let (best, top) = argmax(row);
    let second = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &x)| x)
        .fold(f32::NEG_INFINITY, f32::max);
    (best, top - second)
}

pub(crate) fn argmax(v: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best
}

/// Every attention path this GPU runs (FA2, and FA3 on sm_90: the ViT's d80 attention and the
/// text prefill), each checked against the oracle from load to greedy decode.
#[test]
#[ignore = "needs GPU"]
fn ernie_logits_match_transformers_f32_within_its_bf16_error() {
    let g = gpu();
    let (dir, _keep) = oracle_dir();
    for version in versions(&g) {
        eprintln!("attention {version:?}");
        check_against_oracle(&g, &dir, AttentionKernels::from(version));
    }
}

fn check_against_oracle(g: &Gpu, dir: &Path, kernels: AttentionKernels) {
    let m = ErnieVl::load(g, &dir.join("model"), kernels).unwrap();
    let OracleInputs { ids, grids, pixels } = OracleInputs::read(dir);
    let seq = ids.len();
    let f32_logits = read_npy(&dir.join("logits_f32.npy"));
    let bf16_logits = read_npy(&dir.join("logits_bf16.npy"));
    let vocab = m.vocab_size();
    assert_eq!(f32_logits.shape, vec![seq, vocab]);
    let (f32_logits, bf16_logits) = (f32_logits.as_f32(), bf16_logits.as_f32());

    // Image features against the f32 resampler output.
    let mut gemm = Gemm::new(g).unwrap();
    let mut ws = Workspace::new(g, 256 << 20).unwrap();
    let feats = encode(g, &m, &mut gemm, &ws, &grids, &pixels);
    let want = read_npy(&dir.join("image_embeds_f32.npy"));
    assert_eq!(want.shape, vec![feats.len() / m.feature_width(), m.feature_width()]);
    let got: Vec<f32> = feats.iter().map(|x| x.to_f32()).collect();
    let want_f32 = want.as_f32();
    let rms = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    let diff: Vec<f64> = got.iter().zip(&want_f32).map(|(&a, &b)| (a - b) as f64).collect();
    let scale: Vec<f64> = want_f32.iter().map(|&x| x as f64).collect();
    let feat_err = rms(&diff) / rms(&scale);
    eprintln!(
        "image features: relative rms error {feat_err:.2e} over {} values",
        got.len()
    );
    assert!(feat_err < 2e-2, "image features: relative rms error {feat_err:.2e}");

    let feats = DeviceTensor::from_host(g, &[got.len() / m.feature_width(), m.feature_width()], &feats).unwrap();
    let logits = OracleLogits {
        f32: &f32_logits,
        bf16: &bf16_logits,
        vocab,
    };
    // Prefilled 4 tokens at a time (multi-token chunks, some starting inside an image: every
    // 4th row compared) and 1 token at a time (every row compared).
    let mut bf16_max = 0.0f64;
    for chunk in [4, 1] {
        let ends: Vec<usize> = (chunk..seq).step_by(chunk).chain(std::iter::once(seq)).collect();
        let spans: Vec<(usize, usize)> = std::iter::once(0)
            .chain(ends.iter().copied())
            .zip(ends.iter().copied())
            .collect();
        let rows = run_steps(g, &m, &mut gemm, &mut ws, &ids, seq, &grids, &feats, &spans);
        bf16_max = bf16_max.max(logits.compare(chunk, &rows, &ends));
    }
    decode_follows_transformers_greedy(g, &m, &mut gemm, &mut ws, dir, &ids, &grids, &feats, 2.0 * bf16_max);
}

/// transformers' logits of the prompt, `[seq, vocab]` each.
struct OracleLogits<'a> {
    f32: &'a [f32],
    bf16: &'a [f32],
    vocab: usize,
}

impl OracleLogits<'_> {
    /// Checks ocrvl's `rows` (the logits of the tokens before `ends`) against f32 within twice
    /// transformers bf16's error, max and mean, and the top token wherever f32's margin is
    /// clear of that error; returns transformers bf16's largest error over these rows.
    fn compare(&self, chunk: usize, rows: &[Vec<f32>], ends: &[usize]) -> f64 {
        let v = self.vocab;
        let (mut ours, mut theirs) = ((0.0f64, 0.0f64), (0.0f64, 0.0f64));
        for (row, &end) in rows.iter().zip(ends) {
            let reference = &self.f32[(end - 1) * v..end * v];
            let (a_max, a_mean) = max_and_mean(row, reference);
            let (b_max, b_mean) = max_and_mean(&self.bf16[(end - 1) * v..end * v], reference);
            if chunk > 1 {
                eprintln!(
                    "token {:>3}: ocrvl max {a_max:.4} mean {a_mean:.5}; transformers bf16 max {b_max:.4} mean {b_mean:.5}",
                    end - 1
                );
            }
            ours = (ours.0.max(a_max), ours.1 + a_mean / rows.len() as f64);
            theirs = (theirs.0.max(b_max), theirs.1 + b_mean / rows.len() as f64);
        }
        eprintln!(
            "chunks of {chunk}, {} rows: ocrvl max {:.4} mean {:.5}; transformers bf16 max {:.4} mean {:.5}",
            rows.len(),
            ours.0,
            ours.1,
            theirs.0,
            theirs.1
        );
        assert!(
            ours.0 <= 2.0 * theirs.0 + 1e-3 && ours.1 <= 2.0 * theirs.1 + 1e-4,
            "chunks of {chunk}: ocrvl's logits are further from transformers f32 (max {:.4}, mean {:.5}) than twice \
             transformers bf16's (max {:.4}, mean {:.5})",
            ours.0,
            ours.1,
            theirs.0,
            theirs.1
        );
        for (row, &end) in rows.iter().zip(ends) {
            let reference = &self.f32[(end - 1) * v..end * v];
            let (best, margin) = top_and_margin(reference);
            if margin as f64 > 2.0 * theirs.0 {
                assert_eq!(argmax(row).0, best, "token {}: the top token differs", end - 1);
            }
        }
        theirs.0
    }
}

/// See the module comment: prefill the prompt, then feed transformers' greedy tokens back one
/// decode step at a time.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_follows_transformers_greedy(
    g: &ocrvl::runtime::Gpu,
    m: &ErnieVl,
    gemm: &mut Gemm,
    ws: &mut Workspace,
    dir: &std::path::Path,
    prompt: &[u32],
    grids: &[ImageGrid],
    feats: &DeviceTensor,
    tolerance: f64,
) -> usize {
    let path = dir.join("generated_bf16.npy");
    assert!(path.exists(), "{}: run the oracle with --generate N", path.display());
    let generated: Vec<u32> = read_npy(&path).as_i64().iter().map(|&x| x as u32).collect();
    assert!(!generated.is_empty());
    let seq = prompt.len();
    let ids: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
    // The prefill's last row predicts generated[0]; decode step k (input generated[k - 1])
    // predicts generated[k].
    let spans: Vec<(usize, usize)> = std::iter::once((0, seq))
        .chain((seq..ids.len() - 1).map(|t| (t, t + 1)))
        .collect();
    let rows = run_steps(g, m, gemm, ws, &ids, seq, grids, feats, &spans);
    let mut same = 0;
    for (k, row) in rows.iter().enumerate() {
        let (best, top) = argmax(row);
        let theirs = generated[k] as usize;
        let gap = (top - row[theirs]) as f64;
        assert!(
            gap <= tolerance,
            "decode step {k}: ocrvl's logit of transformers' token {theirs} is {gap:.4} below its best ({best}), \
             beyond {tolerance:.4}"
        );
        if best != theirs {
            eprintln!("decode step {k}: a near tie (gap {gap:.4}) picked {best} over {theirs}; stopping here");
            break;
        }
        same += 1;
    }
    eprintln!(
        "decode: {same} of {} greedy tokens the same as transformers'",
        generated.len()
    );
    same
}
