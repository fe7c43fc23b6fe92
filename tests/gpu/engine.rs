//! The engine end to end on the tiny-model fixture: a greedy request follows transformers'
//! greedy path, alone and inside a batch of other requests with chunked prefill. bf16 and a
//! different batch shape (another GEMM algorithm) move logits by up to 3% of their range (the
//! bound tests/gpu/fidelity.rs holds the forward to), so at each step the engine's token must
//! be one whose transformers logit is within that of the best; once it takes a different
//! near-tied token the paths part and the comparison stops.

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
    /// transformers' logits at the positions that choose each greedy token: [steps][vocab].
    step_logits: Vec<Vec<f64>>,
    tolerance: f64,
}

impl Fixture {
    /// Checks `tokens` against transformers' greedy path; returns how many steps were on it.
    fn check(&self, what: &str, tokens: &[u32]) -> usize {
        for (k, (&ours, &theirs)) in tokens.iter().zip(&self.greedy).enumerate() {
            let row = &self.step_logits[k];
            let best = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let ours_logit = row[ours as usize];
            assert!(
                ours_logit >= best - 2.0 * self.tolerance,
                "{what}: step {k}: token {ours} (logit {ours_logit:.3}) is not a near-tie of transformers' {theirs} ({best:.3})"
            );
            if ours != theirs {
                return k;
            }
        }
        tokens.len()
    }
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
    let step_logits = (prompt_len - 1..ids.len() - 1)
        .map(|t| logits[t * vocab..(t + 1) * vocab].to_vec())
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
            top_logprobs: 0,
        },
        greedy,
        step_logits,
        tolerance: LOGIT_TOLERANCE * range,
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

/// Runs the engine until every request finishes; returns each request's tokens.
fn run(engine: &mut Engine, ids: &[u64]) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); ids.len()];
    let mut finished = 0;
    let mut steps = 0;
    while engine.has_unfinished() {
        for o in engine.step().unwrap() {
            let i = ids.iter().position(|&id| id == o.request_id).unwrap();
            out[i].push(o.token);
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
    assert_eq!(a.len(), fx.greedy.len());
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
                        top_logprobs: 0,
                    })
                    .unwrap(),
            );
        }
    }
    let outs = run(&mut batched, &ids);
    let on_path_batched = fx.check("batched", &outs[3]);
    eprintln!(
        "engine: on transformers' greedy path for {on_path_alone} (alone) and {on_path_batched} (batched) of {} steps",
        fx.greedy.len()
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
    assert_eq!(out[0].len(), fx.greedy.len());
}
