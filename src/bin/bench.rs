//! `bench`: throughput measurements on a PaddleOCR-VL-0.9B model directory, or on a full-size
//! synthetic one (random weights with the real names and shapes) when `--model` is not given.
//!
//! What it measures today (the serving engine that schedules requests, samples and streams
//! tokens arrives with the engine issue; until then this binary says so and measures the model
//! steps that exist, which bound what the engine can reach):
//! - checkpoint open + validation + upload (with the q/k/v and gate/up fusion) time;
//! - one vision-tower + projector pass over `--vision-patches` patches (one image of that many
//!   patches; 5040 is an A4 page at 150 dpi);
//! - one decoder decode step at batch `--max-num-seqs` with `--context` tokens already cached
//!   per sequence (paged cache, lm_head included), against the HBM floor of reading the text
//!   weights and the KV cache once;
//! - one decoder prefill step of `--max-num-batched-tokens` tokens (sequences of `--context`);
//! - a request workload through the engine (`--workload`, default `decode`: `--num-requests`
//!   text-only prompts of `--prompt-len` tokens, `--output-len` tokens each with ignore_eos;
//!   `page-1080p` / `page-360p`: one synthetic page image of that size each, 128 / 512 tokens
//!   out; `none` skips it): requests/s, input and output tokens/s, TTFT and TPOT p50/p99.
//!
//! Flags: the engine flags (`--model`, `--max-num-seqs`, ...), plus `--synthetic-dir DIR`
//! (where the synthetic model is written once and reused), `--vision-patches N` (default
//! 5040), `--context N` (default 1024) and `--json PATH`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use ocrvl::config::{EngineConfig, EnvFlags, ModelConfig};
use ocrvl::model::gpu_weights::ModelWeights;
use ocrvl::model::step::{HostStep, SeqChunk};
use ocrvl::model::synthetic::{write_synthetic_model, SyntheticOptions};
use ocrvl::model::text::{self, KvCache};
use ocrvl::model::vision::{self, VisionBatch, VisionBatchHost};
use ocrvl::model::weights::Checkpoint;
use ocrvl::runtime::{DType, DeviceTensor, Gemm, Gpu, GpuTimer, Workspace};

/// The ceilings measured on the GPU host's H100 (GPU_WORKFLOW.md, KINDS.md).
const H100_COPY_GBPS: f64 = 2960.0;
const H100_BF16_TFLOPS: f64 = 798.0;

struct BenchArgs {
    engine: EngineConfig,
    synthetic_dir: Option<PathBuf>,
    vision_patches: usize,
    context: usize,
    workload: String,
    num_requests: usize,
    prompt_len: usize,
    output_len: usize,
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> anyhow::Result<BenchArgs> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (engine, rest) = EngineConfig::parse_args(&args)?;
    let mut out = BenchArgs {
        engine,
        synthetic_dir: None,
        vision_patches: 5040,
        context: 1024,
        workload: "decode".into(),
        num_requests: 1024,
        prompt_len: 1024,
        output_len: 1024,
        json: None,
    };
    let mut it = rest.into_iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .with_context(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--synthetic-dir" => out.synthetic_dir = Some(PathBuf::from(value()?)),
            "--vision-patches" => {
                let v = value()?;
                out.vision_patches = v
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .with_context(|| format!("--vision-patches: `{v}` is not a positive integer"))?;
            }
            "--context" => {
                let v = value()?;
                out.context = v
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .with_context(|| format!("--context: `{v}` is not a positive integer"))?;
            }
            "--workload" => out.workload = value()?,
            "--num-requests" | "--prompt-len" | "--output-len" => {
                let v = value()?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .with_context(|| format!("{name}: `{v}` is not a positive integer"))?;
                match name.as_str() {
                    "--num-requests" => out.num_requests = n,
                    "--prompt-len" => out.prompt_len = n,
                    _ => out.output_len = n,
                }
            }
            "--json" => out.json = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("usage: bench [--model DIR] [--max-num-seqs N] [--max-model-len N] [--max-num-batched-tokens N] [--gpu-memory-utilization F] [--synthetic-dir DIR] [--vision-patches N] [--context N] [--workload decode|page-1080p|page-360p|none] [--num-requests N] [--prompt-len N] [--output-len N] [--json PATH]");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    Ok(out)
}

fn synthetic_model_dir(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let dir = match &args.synthetic_dir {
        Some(d) => d.clone(),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set: pass --synthetic-dir")?;
            PathBuf::from(home).join(".cache/ocrvl/synthetic/paddleocr-vl-0.9b-seed0")
        }
    };
    let cfg = ModelConfig::paddleocr_vl_0_9b();
    // Reuse a complete earlier copy: it opens and validates against the full-size config.
    let reusable = Checkpoint::open(&dir).ok().is_some_and(|c| c.validate(&cfg).is_ok());
    if !reusable {
        println!(
            "writing a full-size synthetic PaddleOCR-VL-0.9B (random weights) to {}",
            dir.display()
        );
        let t = Instant::now();
        let report = write_synthetic_model(&dir, &cfg, &SyntheticOptions::default())?;
        println!(
            "  {} tensors, {:.2} GB in {:.1} s",
            report.num_tensors,
            report.tensor_bytes as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(dir)
}

fn random_bf16(gpu: &Gpu, dims: &[usize], seed: u64) -> anyhow::Result<DeviceTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<bf16> = (0..n).map(|_| bf16::from_f32(rng.random_range(-1.0..1.0))).collect();
    Ok(DeviceTensor::from_host(gpu, dims, &v)?)
}

/// An even×even patch grid with `patches` patches, as square as possible.
fn grid_for(patches: usize) -> anyhow::Result<(usize, usize)> {
    let mut h = (patches as f64).sqrt() as usize;
    while h >= 2 {
        if h % 2 == 0 && patches % h == 0 && (patches / h) % 2 == 0 {
            return Ok((patches / h, h));
        }
        h -= 1;
    }
    bail!("--vision-patches {patches}: no even x even patch grid has that many patches")
}

/// Random token ids, decode or prefill chunks of `n` sequences of `context` cached tokens each.
fn chunks(
    n: usize,
    context: usize,
    decode: bool,
    block_size: usize,
    vocab: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<SeqChunk> {
    let len = if decode { 1 } else { context };
    let start = if decode { context } else { 0 };
    let blocks = (start + len).div_ceil(block_size);
    (0..n)
        .map(|s| SeqChunk {
            ids: (0..len).map(|_| rng.random_range(0..vocab as u32)).collect(),
            positions: [0, 1, 2].map(|_| (start..start + len).map(|p| p as i32).collect()),
            start,
            block_table: ((s * blocks) as i32..((s + 1) * blocks) as i32).collect(),
            is_decode: decode,
            wants_logits: true,
            image_slots: Vec::new(),
        })
        .collect()
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let env = EnvFlags::from_env()?;
    // The GPU first: a machine without one fails at once, before a 1.9 GB synthetic write.
    let gpu = Gpu::new(0)?;
    let (dir, synthetic) = match &args.engine.model {
        Some(d) => (d.clone(), false),
        None => (synthetic_model_dir(&args)?, true),
    };
    let cfg = ModelConfig::from_dir(&dir)?;
    args.engine.validate(&cfg)?;
    let (cc_major, cc_minor) = gpu.compute_capability();
    println!(
        "device: {} (sm_{cc_major}{cc_minor}, {} SMs); model: {}{}",
        gpu.name(),
        gpu.sm_count(),
        dir.display(),
        if synthetic { " (synthetic)" } else { "" }
    );
    println!(
        "flags: max_num_seqs {} max_model_len {} max_num_batched_tokens {} gpu_memory_utilization {}; {:?}",
        args.engine.max_num_seqs,
        args.engine.max_model_len,
        args.engine.max_num_batched_tokens,
        args.engine.gpu_memory_utilization,
        env
    );

    let t = Instant::now();
    let ckpt = Checkpoint::open(&dir)?;
    let valid = ckpt.validate(&cfg)?;
    let weights = ModelWeights::upload(&gpu, &cfg, &valid)?;
    gpu.synchronize()?;
    let load_s = t.elapsed().as_secs_f64();
    println!(
        "weights: {:.2} GB on the GPU in {load_s:.2} s",
        weights.total_bytes() as f64 / 1e9
    );

    let mut gemm = Gemm::new(&gpu)?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (b, c) = (args.engine.max_num_seqs, args.context);
    let block_size = 64;
    let prefill_seqs = (args.engine.max_num_batched_tokens / c).max(1);
    let prefill_tokens = prefill_seqs * c;
    let p = args.vision_patches;
    let ws_bytes = vision::workspace_bytes(&cfg, p)
        .max(text::workspace_bytes(&cfg, b, b, b))
        .max(text::workspace_bytes(&cfg, prefill_tokens, prefill_seqs, 0));
    let mut ws = Workspace::new(&gpu, ws_bytes)?;

    // Vision: one image of `p` patches (values do not change the speed of dense kernels, but
    // random data keeps the GEMMs honest).
    let (gh, gw) = grid_for(p)?;
    let batch = VisionBatch::upload(&gpu, VisionBatchHost::new(&[(gh, gw)])?)?;
    let pixels = random_bf16(&gpu, &[p, cfg.vision.patch_dim()], 3)?;
    let mut image_tokens = DeviceTensor::alloc(&gpu, DType::BF16, &[p / 4, cfg.text.hidden_size])?;
    let vision_ms = GpuTimer::time_mean_ms(&gpu, 2, 10, || {
        ws.reset();
        vision::encode(
            &gpu,
            &mut gemm,
            &ws,
            &cfg,
            &weights,
            &batch,
            &pixels.view(),
            &mut image_tokens.view_mut(),
        )
    })?;
    let v = &cfg.vision;
    let linear_per_patch = 2.0
        * (v.patch_dim() * v.hidden_size
            + v.num_hidden_layers * (4 * v.hidden_size * v.hidden_size + 2 * v.hidden_size * v.intermediate_size))
            as f64;
    let attn = 4.0 * (p * p * v.hidden_size * v.num_hidden_layers) as f64;
    let proj = 2.0 * (p / 4) as f64 * (v.merged_width() * (v.merged_width() + cfg.text.hidden_size)) as f64;
    let vision_tflops = (linear_per_patch * p as f64 + attn + proj) / (vision_ms * 1e-3) / 1e12;

    // Decoder: a cache for `b` sequences of c + 1 tokens (or the prefill batch, if larger),
    // filled with a constant (attention's speed does not depend on the values).
    let decode_blocks = (c + 1).div_ceil(block_size);
    let num_blocks = (b * decode_blocks).max(prefill_seqs * c.div_ceil(block_size));
    let mut cache = KvCache::new(&gpu, &cfg, num_blocks, block_size)?;
    for t in cache.k.iter_mut().chain(cache.v.iter_mut()) {
        t.view_mut().fill_bytes(&gpu, 0x3C)?;
    }
    let mut err = DeviceTensor::zeros(&gpu, DType::I32, &[1])?;
    let vocab = cfg.text.vocab_size;
    let mut time_step = |chunks: &[SeqChunk]| -> anyhow::Result<f64> {
        let host = HostStep::build(chunks, block_size)?;
        let step = host.upload(&gpu)?;
        let inputs = step.inputs(None)?;
        let mut logits = DeviceTensor::alloc(&gpu, DType::F32, &[host.logits_rows.len(), vocab])?;
        Ok(GpuTimer::time_mean_ms(&gpu, 2, 10, || {
            ws.reset();
            text::forward(
                &gpu,
                &mut gemm,
                &ws,
                &cfg,
                &weights,
                &mut cache,
                &inputs,
                &mut err.view_mut(),
                &mut logits.view_mut(),
            )
        })?)
    };
    let decode_ms = time_step(&chunks(b, c, true, block_size, vocab, &mut rng))?;
    let prefill_ms = time_step(&chunks(prefill_seqs, c, false, block_size, vocab, &mut rng))?;

    let text_weight_bytes = weights
        .text
        .iter()
        .map(|l| l.qkv_w.nbytes() + l.o_w.nbytes() + l.gate_up_w.nbytes() + l.down_w.nbytes())
        .sum::<usize>()
        + weights.lm_head().numel() * 2;
    let kv_bytes = b * (c + 1) * KvCache::bytes_per_block(&cfg, 1);
    let decode_floor_ms = (text_weight_bytes + kv_bytes) as f64 / (H100_COPY_GBPS * 1e9) * 1e3;

    println!();
    println!("| measurement | time | rate | floor / ceiling |");
    println!("|---|---|---|---|");
    println!(
        "| vision tower + projector, one {gh}x{gw}-patch image ({p} patches) | {vision_ms:.3} ms | {:.1} images/s, {vision_tflops:.0} TFLOP/s | {:.0}% of {H100_BF16_TFLOPS} TFLOP/s |",
        1e3 / vision_ms,
        100.0 * vision_tflops / H100_BF16_TFLOPS
    );
    println!(
        "| decoder decode step, batch {b}, {c} cached tokens each | {decode_ms:.3} ms | {:.0} tokens/s | {decode_floor_ms:.3} ms to read weights + KV once at {H100_COPY_GBPS} GB/s ({:.0}%) |",
        b as f64 / (decode_ms * 1e-3),
        100.0 * decode_floor_ms / decode_ms
    );
    println!(
        "| decoder prefill step, {prefill_seqs} x {c} tokens | {prefill_ms:.3} ms | {:.0} tokens/s | |",
        prefill_tokens as f64 / (prefill_ms * 1e-3)
    );
    println!("| weight load (open, validate, fuse, upload) | {load_s:.2} s | | |");
    let weights_gb = weights.total_bytes() as f64 / 1e9;
    // Free the step measurements' model, cache and workspace before the engine sizes its own
    // KV cache from the memory left.
    drop((cache, ws, weights, gemm, image_tokens, pixels, batch));
    let workload = if args.workload == "none" {
        serde_json::Value::Null
    } else {
        engine_workload(&args, &gpu, &dir, env)?
    };
    println!();
    println!(
        "not measured yet: CUDA-graph decode and CPU/GPU overlap (engine issue), and the side-by-side transformers run"
    );

    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "gpu": gpu.name(),
            "version": env!("CARGO_PKG_VERSION"),
            "model": dir.display().to_string(),
            "synthetic": synthetic,
            "max_num_seqs": b,
            "context": c,
            "vision_patches": p,
            "weights_gb": weights_gb,
            "load_s": load_s,
            "vision_ms": vision_ms,
            "vision_tflops": vision_tflops,
            "decode_step_ms": decode_ms,
            "decode_step_floor_ms": decode_floor_ms,
            "decode_tokens_per_s": b as f64 / (decode_ms * 1e-3),
            "prefill_step_ms": prefill_ms,
            "prefill_tokens": prefill_tokens,
            "workload": workload,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A request workload run through the engine: `decode` (text-only prompts, the LM roofline
/// case) or a synthetic page (random pixels at the patch grid of a page of that size).
fn engine_workload(
    args: &BenchArgs,
    gpu: &Gpu,
    dir: &std::path::Path,
    env: EnvFlags,
) -> anyhow::Result<serde_json::Value> {
    use ocrvl::engine::{Engine, EngineImage, EngineRequest};
    use ocrvl::kernels::sampling::SamplingParams;
    use ocrvl::preprocess::image::smart_resize;

    let mut engine = Engine::new(gpu.clone(), dir, &args.engine, env)?;
    let cfg = engine.config().clone();
    let tok = cfg.tokens.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (prompt_text, image_hw, output) = match args.workload.as_str() {
        "decode" => (args.prompt_len, None, args.output_len),
        "page-1080p" => (8, Some((1080, 1920)), 128),
        "page-360p" => (8, Some((360, 640)), 512),
        other => bail!("--workload `{other}`: valid values are decode, page-1080p, page-360p, none"),
    };
    let make = |rng: &mut ChaCha8Rng, max_tokens: usize, text: usize| -> anyhow::Result<EngineRequest> {
        let mut ids: Vec<u32> = (0..text)
            .map(|_| rng.random_range(1000..cfg.text.vocab_size as u32 - 4000))
            .collect();
        let mut images = Vec::new();
        if let Some((h, w)) = image_hw {
            let (rh, rw) = smart_resize(h, w, 28, 112_896, 1_003_520)?;
            let grid = (rh / 14, rw / 14);
            let n = grid.0 * grid.1 * cfg.vision.patch_dim();
            images.push(EngineImage {
                pixels: (0..n).map(|_| bf16::from_f32(rng.random_range(-1.0..1.0))).collect(),
                grid,
                content_hash: rng.random(),
            });
            let mut p = vec![tok.bos_token_id.unwrap_or(1), tok.vision_start_token_id];
            p.extend(std::iter::repeat_n(tok.image_token_id, grid.0 * grid.1 / 4));
            p.push(tok.vision_end_token_id);
            p.append(&mut ids);
            ids = p;
        }
        Ok(EngineRequest {
            prompt_ids: ids,
            images,
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop_token_ids: Vec::new(),
            ignore_eos: true,
            top_logprobs: 0,
        })
    };
    // Warm-up: one short request through every kernel once.
    engine.add_request(make(&mut rng, 4, 16)?)?;
    while engine.has_unfinished() {
        engine.step()?;
    }
    let n = args.num_requests;
    let mut input_tokens = 0;
    let mut arrival = HashMap::new();
    let t0 = Instant::now();
    for _ in 0..n {
        let r = make(&mut rng, output, prompt_text)?;
        input_tokens += r.prompt_ids.len();
        arrival.insert(engine.add_request(r)?, Vec::<f64>::new());
    }
    let mut output_tokens = 0;
    let mut steps = 0;
    let mut last_report = Instant::now();
    while engine.has_unfinished() {
        let outs = engine.step()?;
        let now = t0.elapsed().as_secs_f64();
        for o in &outs {
            if let Some(v) = arrival.get_mut(&o.request_id) {
                v.push(now);
            }
        }
        output_tokens += outs.len();
        steps += 1;
        if last_report.elapsed().as_secs_f64() > 5.0 {
            eprintln!("  {steps} steps, {output_tokens} tokens out, {:.1} s", now);
            last_report = Instant::now();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut ttft: Vec<f64> = arrival.values().filter_map(|v| v.first().copied()).collect();
    let mut tpot: Vec<f64> = arrival
        .values()
        .filter(|v| v.len() > 1)
        .map(|v| (v[v.len() - 1] - v[0]) / (v.len() - 1) as f64)
        .collect();
    let pct = |v: &mut Vec<f64>, q: f64| -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (free, total) = engine.gpu().memory_info()?;
    let line = serde_json::json!({
        "workload": args.workload,
        "requests": n,
        "seconds": secs,
        "requests_per_s": n as f64 / secs,
        "input_tokens_per_s": input_tokens as f64 / secs,
        "output_tokens_per_s": output_tokens as f64 / secs,
        "ttft_p50_ms": pct(&mut ttft, 0.5) * 1e3,
        "ttft_p99_ms": pct(&mut ttft, 0.99) * 1e3,
        "tpot_p50_ms": pct(&mut tpot, 0.5) * 1e3,
        "tpot_p99_ms": pct(&mut tpot, 0.99) * 1e3,
        "gpu_memory_used_gb": (total - free) as f64 / 1e9,
        "kv_blocks": engine.num_kv_blocks(),
        "steps": steps,
    });
    println!(
        "| engine workload `{}`: {n} requests, {} out each | {secs:.1} s | {:.2} req/s, {:.0} input tok/s, {:.0} output tok/s | TTFT p50 {:.0} ms p99 {:.0} ms, TPOT p50 {:.2} ms p99 {:.2} ms, {:.1} GB GPU memory in use |",
        args.workload,
        output,
        line["requests_per_s"].as_f64().unwrap(),
        line["input_tokens_per_s"].as_f64().unwrap(),
        line["output_tokens_per_s"].as_f64().unwrap(),
        line["ttft_p50_ms"].as_f64().unwrap(),
        line["ttft_p99_ms"].as_f64().unwrap(),
        line["tpot_p50_ms"].as_f64().unwrap(),
        line["tpot_p99_ms"].as_f64().unwrap(),
        line["gpu_memory_used_gb"].as_f64().unwrap()
    );
    Ok(line)
}
