//! The engine's invariance: a request's greedy tokens are the same alone, in a batch of 256,
//! with chunked prefill, after preemption, with and without CUDA graphs, with prefix
//! caching on and off, and with async scheduling on and off.
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
pub(crate) struct Run {
    pub(crate) tokens: Vec<u32>,
    pub(crate) logprobs: Vec<f32>,
    /// top-1 minus top-2 log-prob at each step.
    pub(crate) margins: Vec<f32>,
}

pub(crate) fn model_dir() -> TempDir {
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

pub(crate) fn config(max_num_seqs: usize, max_num_batched_tokens: usize) -> EngineConfig {
    EngineConfig {
        max_model_len: MAX_MODEL_LEN,
        max_num_seqs,
        max_num_batched_tokens,
        gpu_memory_utilization: 0.1,
        ..EngineConfig::default()
    }
}

pub(crate) fn engine(dir: &TempDir, cfg: &EngineConfig) -> Engine {
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
    let image = |r: &mut rand_chacha::ChaCha8Rng, hash: u128| EngineImage {
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
                    let im = image(&mut r, 7000 + i as u128);
                    groups.push((p, im));
                }
                let (p, im) = groups.last().unwrap().clone();
                prompt.extend(p);
                images.push(im);
            } else if i % 4 == 0 {
                prompt.extend((0..r.random_range(1..20)).map(|_| r.random_range(3..900)));
                prompt.extend(std::iter::repeat_n(image_token, 16));
                images.push(image(&mut r, 5000 + i as u128));
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

/// Runs the requests together until all finish. A request without stop tokens runs to
/// `max_tokens`; one with stop tokens ends at its first stop token or at `max_tokens`.
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
                let req = &reqs[i];
                let stopped = req.stop_token_ids.contains(&o.token);
                assert_eq!(
                    reason,
                    if stopped {
                        FinishReason::Stop
                    } else {
                        FinishReason::Length
                    }
                );
                finished += 1;
            }
        }
        steps += 1;
        assert!(steps < 100_000, "the engine did not finish");
    }
    assert_eq!(finished, reqs.len());
    for (run, req) in out.iter().zip(reqs) {
        let (last, before) = run.tokens.split_last().expect("at least one token");
        assert!(
            before.iter().all(|t| !req.stop_token_ids.contains(t)),
            "tokens after a stop token"
        );
        assert!(run.tokens.len() == req.max_tokens || req.stop_token_ids.contains(last));
    }
    out
}

/// Compares two runs of the same requests (see the module comment); returns how many
/// requests were bit-identical.
pub(crate) fn compare(what: &str, a: &[Run], b: &[Run]) -> usize {
    let mut identical = 0;
    let mut parted = 0;
    let mut steps = 0;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.tokens == y.tokens && x.logprobs == y.logprobs {
            identical += 1;
        }
        let mut tie = false;
        for k in 0..x.tokens.len().min(y.tokens.len()) {
            if x.margins[k].min(y.margins[k]) < NEAR_TIE {
                parted += 1;
                tie = true;
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
        // Equal tokens throughout: both stopped at the same place.
        assert!(
            tie || x.tokens.len() == y.tokens.len(),
            "{what}: request {i}: {} vs {} tokens",
            x.tokens.len(),
            y.tokens.len()
        );
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

#[test]
#[ignore = "needs GPU"]
fn engine_async_scheduling_agrees_with_waiting_for_each_step() {
    let dir = model_dir();
    let reqs = requests(256, 21, 0);
    let waiting_cfg = EngineConfig {
        async_scheduling: false,
        ..config(256, 8192)
    };

    // Without stop tokens a step planned ahead has exactly the rows `schedule` would give it
    // (the rows that finish by max_tokens are left out), so every bit must agree.
    let mut e = engine(&dir, &waiting_cfg);
    let waited = run_together(&mut e, &reqs);
    assert_eq!(e.step_timings().ahead_steps, 0);
    drop(e);
    let mut e = engine(&dir, &config(256, 8192));
    let ahead = run_together(&mut e, &reqs);
    let t = e.step_timings();
    eprintln!(
        "async scheduling: {} steps, {} from graphs, {} planned ahead",
        t.steps, t.graph_steps, t.ahead_steps
    );
    assert!(
        t.ahead_steps * 2 > t.graph_steps,
        "most graph steps were planned ahead: {t:?}"
    );
    drop(e);
    let identical = compare("async scheduling vs waiting for each step", &waited, &ahead);
    assert_eq!(identical, reqs.len(), "the same rows in every step give the same bits");

    // Stop tokens: each request stops at a token it generates half-way, so the step planned
    // ahead of that token still carries its row (computed, never streamed). Batch sizes can
    // then differ by those rows, hence the near-tie comparison.
    let stopping: Vec<EngineRequest> = reqs
        .iter()
        .zip(&waited)
        .map(|(r, w)| EngineRequest {
            stop_token_ids: vec![w.tokens[w.tokens.len() / 2]],
            ..r.clone()
        })
        .collect();
    let mut e = engine(&dir, &waiting_cfg);
    let stopped_waiting = run_together(&mut e, &stopping);
    drop(e);
    let mut e = engine(&dir, &config(256, 8192));
    let stopped_ahead = run_together(&mut e, &stopping);
    let stats = e.stats();
    assert_eq!(stats.kv_blocks_free, stats.kv_blocks_total, "every block returned");
    assert!(e.step_timings().ahead_steps > 0);
    drop(e);
    let early = stopped_ahead
        .iter()
        .zip(&stopping)
        .filter(|(run, req)| run.tokens.len() < req.max_tokens)
        .count();
    assert!(early > 100, "only {early} requests stopped on a stop token");
    compare(
        "stop tokens: async scheduling vs waiting",
        &stopped_waiting,
        &stopped_ahead,
    );

    // Aborts between steps, while a step planned ahead is in flight: nothing more arrives for
    // an aborted request and every block comes back.
    let mut e = engine(&dir, &config(256, 8192));
    let mut live: Vec<u64> = reqs.iter().map(|r| e.add_request(r.clone()).unwrap()).collect();
    let mut aborted = std::collections::HashSet::new();
    let mut steps = 0usize;
    while e.has_unfinished() {
        for o in e.step().unwrap() {
            assert!(!aborted.contains(&o.request_id), "a token after the abort");
            if o.finished.is_some() {
                live.retain(|&id| id != o.request_id);
            }
        }
        steps += 1;
        // Two running requests a step, once decoding is under way.
        for _ in 0..2 {
            if steps > 4 && !live.is_empty() {
                let id = live.remove((steps * 37) % live.len());
                assert!(e.abort(id), "request {id} was live");
                aborted.insert(id);
            }
        }
        assert!(steps < 100_000);
    }
    e.step().unwrap(); // collects a step still in flight, if any
    let stats = e.stats();
    assert!(aborted.len() >= 8, "only {} aborts landed", aborted.len());
    assert!(e.step_timings().ahead_steps > 0);
    assert_eq!(stats.kv_blocks_free, stats.kv_blocks_total, "every block returned");
    eprintln!("aborts in flight: {} aborted over {steps} steps", aborted.len());
}
