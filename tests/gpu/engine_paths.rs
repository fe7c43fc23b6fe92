//! The engine's invariance: a request's greedy tokens are the same alone, in a batch of 256,
//! with chunked prefill, after preemption, with and without CUDA graphs, and with prefix
//! caching on and off.
//!
//! Model: a tiny synthetic checkpoint with its lm_head scaled 16x, so that greedy choices
//! have margins of several logits and near-ties are rare (random models otherwise tie often).
//! Paths that change a GEMM's M (another batch, padding to a graph's batch, other chunks) may
//! change the floating-point order, so two runs are compared step by step: equal tokens with
//! log-probs within `LOGPROB_TOL`, until a step where either run had a near-tie (its top-2
//! log-probs within `NEAR_TIE`), after which the paths may legitimately part. Each comparison
//! prints how many requests were bit-identical (tokens and log-probs equal to the last bit).

use half::bf16;
use rand::Rng;
use tempfile::TempDir;

use ocrvl::config::{EngineConfig, EnvFlags, ModelConfig};
use ocrvl::engine::{Engine, EngineImage, EngineRequest, FinishReason};
use ocrvl::kernels::sampling::SamplingParams;
use ocrvl::model::synthetic::{write_synthetic_model, SyntheticOptions};

use crate::common::{gpu, rng};

/// Log-prob agreement on the shared path: bf16 activations at logits of a few tens.
const LOGPROB_TOL: f32 = 0.25;
/// A step whose best two log-probs are closer than this may pick either token.
const NEAR_TIE: f32 = 0.5;
const MAX_MODEL_LEN: usize = 512;

#[derive(Clone, Debug, Default)]
struct Run {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    /// top-1 minus top-2 log-prob at each step.
    margins: Vec<f32>,
}

fn model_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_model(
        dir.path(),
        &ModelConfig::tiny(),
        &SyntheticOptions {
            seed: 11,
            include_unused: false,
            lm_head_scale: 16.0,
            ..Default::default()
        },
    )
    .unwrap();
    dir
}

fn config(max_num_seqs: usize, max_num_batched_tokens: usize) -> EngineConfig {
    EngineConfig {
        max_model_len: MAX_MODEL_LEN,
        max_num_seqs,
        max_num_batched_tokens,
        gpu_memory_utilization: 0.1,
        ..EngineConfig::default()
    }
}

fn engine(dir: &TempDir, cfg: &EngineConfig) -> Engine {
    Engine::new(gpu(), dir.path(), cfg, EnvFlags::from_lookup(|_| None).unwrap()).unwrap()
}

/// `n` requests: prompts of 1..300 tokens, every fourth with an 8x8-patch image (16 tokens)
/// placed after a few text tokens, 1..40 output tokens. `shared_prefix` > 0 starts every
/// request of a group of 8 with the same `shared_prefix` tokens (an image included).
fn requests(n: usize, seed: u64, shared_prefix: usize) -> Vec<EngineRequest> {
    let cfg = ModelConfig::tiny();
    let image_token = cfg.tokens.image_token_id;
    let patch_dim = cfg.vision.patch_dim();
    let mut r = rng(seed);
    let image = |r: &mut rand_chacha::ChaCha8Rng, hash: u64| EngineImage {
        pixels: (0..64 * patch_dim)
            .map(|_| bf16::from_f32(r.random_range(-1.0..1.0)))
            .collect(),
        grid: (8, 8),
        content_hash: hash,
    };
    let mut groups: Vec<(Vec<u32>, EngineImage)> = Vec::new();
    (0..n)
        .map(|i| {
            let mut prompt = Vec::new();
            let mut images = Vec::new();
            if shared_prefix > 0 {
                if i % 8 == 0 {
                    let mut p: Vec<u32> = (0..5).map(|_| r.random_range(3..900)).collect();
                    p.extend(std::iter::repeat_n(image_token, 16));
                    p.extend((p.len()..shared_prefix).map(|_| r.random_range(3..900)));
                    let im = image(&mut r, 7000 + i as u64);
                    groups.push((p, im));
                }
                let (p, im) = groups.last().unwrap().clone();
                prompt.extend(p);
                images.push(im);
            } else if i % 4 == 0 {
                prompt.extend((0..r.random_range(1..20)).map(|_| r.random_range(3..900)));
                prompt.extend(std::iter::repeat_n(image_token, 16));
                images.push(image(&mut r, 5000 + i as u64));
            }
            let len = r.random_range(1..300 - 40);
            prompt.extend((0..len).map(|_| r.random_range(3u32..900)));
            EngineRequest {
                prompt_ids: prompt,
                images,
                sampling: SamplingParams::greedy(),
                max_tokens: r.random_range(1..40),
                stop_token_ids: Vec::new(),
                ignore_eos: true,
                top_logprobs: 2,
            }
        })
        .collect()
}

/// Runs the requests together until all finish.
fn run_together(engine: &mut Engine, reqs: &[EngineRequest]) -> Vec<Run> {
    let ids: Vec<u64> = reqs.iter().map(|r| engine.add_request(r.clone()).unwrap()).collect();
    let mut out = vec![Run::default(); reqs.len()];
    let mut finished = 0;
    let mut steps = 0;
    while engine.has_unfinished() {
        for o in engine.step().unwrap() {
            let i = ids.iter().position(|&id| id == o.request_id).unwrap();
            let run = &mut out[i];
            run.tokens.push(o.token);
            run.logprobs.push(o.logprob);
            assert_eq!(o.top.len(), 2, "top_logprobs 2 asked");
            assert_eq!(o.top[0].0, o.token, "greedy picks the top token");
            run.margins.push(o.top[0].1 - o.top[1].1);
            if let Some(reason) = o.finished {
                assert_eq!(reason, FinishReason::Length);
                finished += 1;
            }
        }
        steps += 1;
        assert!(steps < 100_000, "the engine did not finish");
    }
    assert_eq!(finished, reqs.len());
    for (run, req) in out.iter().zip(reqs) {
        assert_eq!(run.tokens.len(), req.max_tokens);
    }
    out
}

/// Compares two runs of the same requests (see the module comment); returns how many
/// requests were bit-identical.
fn compare(what: &str, a: &[Run], b: &[Run]) -> usize {
    let mut identical = 0;
    let mut parted = 0;
    let mut steps = 0;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.tokens == y.tokens && x.logprobs == y.logprobs {
            identical += 1;
        }
        for k in 0..x.tokens.len().min(y.tokens.len()) {
            if x.margins[k].min(y.margins[k]) < NEAR_TIE {
                parted += 1;
                break;
            }
            steps += 1;
            assert_eq!(
                x.tokens[k], y.tokens[k],
                "{what}: request {i} step {k}: tokens differ with margins {} / {}",
                x.margins[k], y.margins[k]
            );
            assert!(
                (x.logprobs[k] - y.logprobs[k]).abs() <= LOGPROB_TOL,
                "{what}: request {i} step {k}: log-probs {} vs {}",
                x.logprobs[k],
                y.logprobs[k]
            );
        }
    }
    eprintln!(
        "{what}: {identical}/{} requests bit-identical; {steps} steps compared, {parted} requests stopped at a near-tie",
        a.len()
    );
    // The comparison must have had something to compare.
    assert!(steps > a.len(), "{what}: only {steps} steps compared");
    identical
}

#[test]
#[ignore = "needs GPU"]
fn engine_greedy_paths_agree_alone_batched_chunked_preempted_graphs_prefix() {
    let dir = model_dir();
    let reqs = requests(256, 21, 0);

    // Alone: one request at a time, no graphs.
    let subset = 12;
    let mut e = engine(
        &dir,
        &EngineConfig {
            enforce_eager: true,
            ..config(256, 8192)
        },
    );
    let alone: Vec<Run> = reqs[..subset]
        .iter()
        .map(|r| run_together(&mut e, std::slice::from_ref(r)).remove(0))
        .collect();
    drop(e);

    // All 256 at once, decode steps replayed from graphs.
    let mut e = engine(&dir, &config(256, 8192));
    assert!(!e.graph_batch_sizes().is_empty(), "graphs were captured");
    let batched = run_together(&mut e, &reqs);
    let t = e.step_timings();
    assert!(t.graph_steps > 0, "decode steps ran from graphs");
    eprintln!("batched: {} steps, {} from graphs", t.steps, t.graph_steps);
    drop(e);
    compare("alone vs batch of 256 (graphs)", &alone, &batched[..subset]);

    // The same batch without graphs.
    let mut e = engine(
        &dir,
        &EngineConfig {
            enforce_eager: true,
            ..config(256, 8192)
        },
    );
    let eager = run_together(&mut e, &reqs);
    assert_eq!(e.step_timings().graph_steps, 0);
    drop(e);
    compare("batch of 256: graphs vs eager", &batched, &eager);

    // Chunked prefill: a 64-token step budget cuts most prompts into several chunks.
    let mut e = engine(&dir, &config(64, 64));
    let chunked = run_together(&mut e, &reqs);
    drop(e);
    compare("batch of 256 vs chunked (64-token steps)", &batched, &chunked);

    // Preemption: 40 KV blocks (2560 tokens) for 256 requests of up to 340 tokens.
    let mut e = engine(
        &dir,
        &EngineConfig {
            num_gpu_blocks_override: Some(40),
            ..config(256, 8192)
        },
    );
    let preempted = run_together(&mut e, &reqs);
    let stats = e.stats();
    assert!(stats.num_preemptions > 0, "the small cache forced preemptions");
    assert_eq!(stats.kv_blocks_free, stats.kv_blocks_total, "every block returned");
    eprintln!("preemption run: {} preemptions", stats.num_preemptions);
    drop(e);
    compare("batch of 256 vs preempted", &batched, &preempted);
}

#[test]
#[ignore = "needs GPU"]
fn engine_prefix_caching_on_and_off_agree_and_hits() {
    let dir = model_dir();
    let reqs = requests(64, 33, 150);
    let mut on = engine(&dir, &config(256, 8192));
    // Warm the cache with the first request of each group, then run them all.
    let first: Vec<EngineRequest> = reqs.iter().step_by(8).cloned().collect();
    run_together(&mut on, &first);
    let with_cache = run_together(&mut on, &reqs);
    let stats = on.stats();
    assert!(
        stats.prefix_cache_hit_tokens >= 56 * 128,
        "each later request reuses at least two 64-token blocks of its group prefix: {stats:?}"
    );
    eprintln!(
        "prefix cache: {} of {} looked-up tokens hit",
        stats.prefix_cache_hit_tokens, stats.prefix_cache_queried_tokens
    );
    drop(on);
    let mut off = engine(
        &dir,
        &EngineConfig {
            enable_prefix_caching: false,
            ..config(256, 8192)
        },
    );
    let without = run_together(&mut off, &reqs);
    assert_eq!(off.stats().prefix_cache_hit_tokens, 0);
    drop(off);
    compare("prefix caching on vs off", &with_cache, &without);
}
