//! The engine end to end on the tiny-model fixture: a greedy request follows transformers'
//! greedy path, alone and inside a batch of other requests with chunked prefill, and the two
//! runs agree with each other. bf16 and a different batch shape (another GEMM algorithm) move
//! logits by up to 3% of their range (the bound tests/gpu/fidelity.rs holds the forward to),
//! so a log-prob by up to twice that (`LOGPROB_TOL`).
//!
//! The near-tie rule, for both comparisons: while the two token paths are equal, every step's
//! log-probs must agree within `LOGPROB_TOL`; at the first step where the tokens differ, the
//! other side's token must be this side's runner-up and the two must be a near tie (top-2
//! log-probs within `NEAR_TIE` = 2 x `LOGPROB_TOL`, the most two such errors can flip); the
//! paths have then legitimately parted and the comparison stops. A step that is a near tie but
//! whose tokens agree keeps the paths equal, so the comparison goes on past it.

use std::path::Path;

use half::bf16;
use rand::Rng;
use safetensors::SafeTensors;

use ocrvl::config::{EngineConfig, EnvFlags};
use ocrvl::engine::FinishReason;
use ocrvl::engine::{Engine, EngineImage, EngineRequest};
use ocrvl::kernels::sampling::SamplingParams;

use crate::common::{gpu, rng};

/// The forward's logit error bound, as a fraction of the logit range (tests/gpu/fidelity.rs).
const LOGIT_TOLERANCE: f64 = 0.03;

/// One run's output for one request: per step the token, its log-prob, and the top two.
#[derive(Clone, Debug, Default)]
struct Run {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    top: Vec<Vec<(u32, f32)>>,
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

fn read_f64(st: &SafeTensors<'_>, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap();
    match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        _ => t
            .data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
    }
}

struct Fixture {
    request: EngineRequest,
    greedy: Vec<u32>,
    /// transformers' log-probs at the positions that choose each greedy token: [steps][vocab].
    step_logprobs: Vec<Vec<f64>>,
    /// Log-prob agreement bound: twice the logit bound (a logit error e moves a log-softmax
    /// value by at most 2e).
    logprob_tol: f64,
}

impl Fixture {
    /// Checks a run against transformers' greedy path with the near-tie rule (module docs);
    /// returns how many steps were on the path.
    fn check(&self, what: &str, run: &Run) -> usize {
        let near_tie = 2.0 * self.logprob_tol;
        for (k, (&ours, &theirs)) in run.tokens.iter().zip(&self.greedy).enumerate() {
            let want = &self.step_logprobs[k];
            // The same prefix on both sides: ocrvl's top two log-probs must be transformers'.
            for &(t, lp) in &run.top[k] {
                let diff = (lp as f64 - want[t as usize]).abs();
                assert!(
                    diff <= self.logprob_tol,
                    "{what}: step {k}: token {t} log-prob {lp:.4}, transformers {:.4} (tolerance {:.4})",
                    want[t as usize],
                    self.logprob_tol
                );
            }
            if ours != theirs {
                let margin = want[theirs as usize] - want[ours as usize];
                assert_eq!(
                    run.top[k][1].0, theirs,
                    "{what}: step {k}: transformers' token {theirs} is not ocrvl's runner-up"
                );
                assert!(
                    margin <= near_tie,
                    "{what}: step {k}: ocrvl took {ours} over transformers' {theirs}, which leads by {margin:.4} \
                     (near tie: {near_tie:.4})"
                );
                return k;
            }
        }
        run.tokens.len()
    }
}

/// Two runs of the same request agree with the near-tie rule (module docs); returns the number
/// of steps on which their paths were equal.
fn check_runs_agree(what: &str, x: &Run, y: &Run, logprob_tol: f64) -> usize {
    let near_tie = 2.0 * logprob_tol;
    for k in 0..x.tokens.len().min(y.tokens.len()) {
        let diff = (x.logprobs[k] as f64 - y.logprobs[k] as f64).abs();
        if x.tokens[k] == y.tokens[k] {
            assert!(
                diff <= logprob_tol,
                "{what}: step {k}: log-probs {} vs {} (tolerance {logprob_tol:.4})",
                x.logprobs[k],
                y.logprobs[k]
            );
            continue;
        }
        let margin = |r: &Run| r.top[k][0].1 as f64 - r.top[k][1].1 as f64;
        assert!(
            x.top[k][1].0 == y.tokens[k] && y.top[k][1].0 == x.tokens[k],
            "{what}: step {k}: tokens {} and {} are not each other's runner-up",
            x.tokens[k],
            y.tokens[k]
        );
        assert!(
            margin(x).min(margin(y)) <= near_tie,
            "{what}: step {k}: tokens {} and {} differ with margins {:.4} / {:.4} (near tie: {near_tie:.4})",
            x.tokens[k],
            y.tokens[k],
            margin(x),
            margin(y)
        );
        return k;
    }
    // Equal paths to the end: equal lengths too (both ran to max_tokens).
    assert_eq!(x.tokens.len(), y.tokens.len(), "{what}");
    x.tokens.len()
}

fn fixture(dir: &Path) -> Fixture {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let prompt_len: usize = header.metadata().as_ref().unwrap()["prompt_len"].parse().unwrap();
    let ids: Vec<u32> = read_f64(&st, "input_ids").iter().map(|&v| v as u32).collect();
    let grid = read_f64(&st, "image_grid_thw");
    let pixels = read_f64(&st, "pixel_values");
    let logits = read_f64(&st, "logits");
    let mut images = Vec::new();
    let mut at = 0;
    for (i, g) in grid.chunks(3).enumerate() {
        let (h, w) = (g[1] as usize, g[2] as usize);
        let n = h * w * 588;
        images.push(EngineImage {
            pixels: pixels[at..at + n]
                .iter()
                .map(|&v| bf16::from_f64(v))
                .collect::<Vec<_>>()
                .into(),
            grid: (h, w),
            content_hash: 1000 + i as u128,
        });
        at += n;
    }
    let greedy = ids[prompt_len..].to_vec();
    let vocab = logits.len() / ids.len();
    let step_logprobs = (prompt_len - 1..ids.len() - 1)
        .map(|t| log_softmax(&logits[t * vocab..(t + 1) * vocab]))
        .collect();
    let range = logits.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    Fixture {
        request: EngineRequest {
            prompt_ids: ids[..prompt_len].to_vec(),
            images,
            sampling: SamplingParams::greedy(),
            max_tokens: greedy.len(),
            stop_token_ids: Vec::new(),
            ignore_eos: true,
            top_logprobs: 2,
        },
        greedy,
        step_logprobs,
        logprob_tol: 2.0 * LOGIT_TOLERANCE * range,
    }
}

fn engine_config(max_num_batched_tokens: usize) -> EngineConfig {
    EngineConfig {
        max_model_len: 1024,
        max_num_seqs: 16,
        max_num_batched_tokens,
        // A small share of the card: the tiny model needs little cache.
        gpu_memory_utilization: 0.05,
        ..EngineConfig::default()
    }
}

/// Runs the engine until every request finishes; returns each request's run.
fn run(engine: &mut Engine, ids: &[u64]) -> Vec<Run> {
    let mut out: Vec<Run> = vec![Run::default(); ids.len()];
    let mut finished = 0;
    let mut steps = 0;
    while engine.has_unfinished() {
        for o in engine.step().unwrap() {
            let i = ids.iter().position(|&id| id == o.request_id).unwrap();
            out[i].tokens.push(o.token);
            out[i].logprobs.push(o.logprob);
            out[i].top.push(o.top);
            if let Some(reason) = o.finished {
                assert_eq!(reason, FinishReason::Length, "request {} finished early", o.request_id);
                finished += 1;
            }
        }
        steps += 1;
        assert!(steps < 10_000, "the engine did not finish");
    }
    assert_eq!(finished, ids.len());
    out
}

#[test]
#[ignore = "needs GPU"]
fn engine_greedy_matches_transformers_alone_and_in_a_chunked_batch() {
    let dir = crate::common::repo_dir().join("tests/fixtures/tiny_model");
    let fx = fixture(&dir);

    let mut alone = Engine::new(
        gpu(),
        &dir,
        &engine_config(8192),
        EnvFlags::from_lookup(|_| None).unwrap(),
    )
    .unwrap();
    let id = alone.add_request(fx.request.clone()).unwrap();
    let a = run(&mut alone, &[id]).remove(0);
    assert_eq!(a.tokens.len(), fx.greedy.len());
    assert!(a.top.iter().all(|t| t.len() == 2), "top_logprobs 2 asked");
    let on_path_alone = fx.check("alone", &a);
    drop(alone);

    // The same request among 7 others, with a 32-token step budget: its 35-token prompt is
    // prefilled in two chunks that split an image, next to other sequences' decodes.
    let mut batched = Engine::new(
        gpu(),
        &dir,
        &engine_config(32),
        EnvFlags::from_lookup(|_| None).unwrap(),
    )
    .unwrap();
    let mut r = rng(5);
    let mut ids = Vec::new();
    for k in 0..8 {
        if k == 3 {
            ids.push(batched.add_request(fx.request.clone()).unwrap());
        } else {
            let len = r.random_range(1..60);
            let prompt: Vec<u32> = (0..len).map(|_| r.random_range(3..400)).collect();
            ids.push(
                batched
                    .add_request(EngineRequest {
                        prompt_ids: prompt,
                        images: Vec::new(),
                        sampling: SamplingParams::greedy(),
                        max_tokens: r.random_range(1..30),
                        stop_token_ids: Vec::new(),
                        ignore_eos: true,
                        top_logprobs: 2,
                    })
                    .unwrap(),
            );
        }
    }
    let outs = run(&mut batched, &ids);
    let on_path_batched = fx.check("batched", &outs[3]);
    let together = check_runs_agree("alone vs batched", &a, &outs[3], fx.logprob_tol);
    eprintln!(
        "engine: on transformers' greedy path for {on_path_alone} (alone) and {on_path_batched} (batched) of {} \
         steps; alone and batched on one path for {together} steps (log-prob tolerance {:.4})",
        fx.greedy.len(),
        fx.logprob_tol
    );
}

#[test]
#[ignore = "needs GPU"]
fn engine_rejects_bad_requests_and_keeps_serving() {
    let dir = crate::common::repo_dir().join("tests/fixtures/tiny_model");
    let fx = fixture(&dir);
    let mut engine = Engine::new(
        gpu(),
        &dir,
        &engine_config(8192),
        EnvFlags::from_lookup(|_| None).unwrap(),
    )
    .unwrap();
    let good = engine.add_request(fx.request.clone()).unwrap();
    let mut too_long = fx.request.clone();
    too_long.max_tokens = 2000;
    let err = engine.add_request(too_long).unwrap_err().to_string();
    assert!(err.contains("max-model-len"), "{err}");
    let mut bad_sampling = fx.request.clone();
    bad_sampling.sampling.top_p = 0.0;
    assert!(engine.add_request(bad_sampling).is_err());
    let out = run(&mut engine, &[good]);
    assert_eq!(out[0].tokens.len(), fx.greedy.len());
}
