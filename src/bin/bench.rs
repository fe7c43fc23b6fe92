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
//! - one decoder prefill step of `--max-num-batched-tokens` tokens (sequences of `--context`).
//!
//! Flags: the engine flags (`--model`, `--max-num-seqs`, ...), plus `--synthetic-dir DIR`
//! (where the synthetic model is written once and reused), `--vision-patches N` (default
//! 5040), `--context N` (default 1024) and `--json PATH`.

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
            "--json" => out.json = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("usage: bench [--model DIR] [--max-num-seqs N] [--max-model-len N] [--max-num-batched-tokens N] [--gpu-memory-utilization F] [--synthetic-dir DIR] [--vision-patches N] [--context N] [--json PATH]");
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
    println!();
    println!(
        "not measured yet: end-to-end requests/s and TTFT/TPOT (scheduling, sampling and streaming \
         come with the serving engine); these rows are the model steps it will run"
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
            "weights_gb": weights.total_bytes() as f64 / 1e9,
            "load_s": load_s,
            "vision_ms": vision_ms,
            "vision_tflops": vision_tflops,
            "decode_step_ms": decode_ms,
            "decode_step_floor_ms": decode_floor_ms,
            "decode_tokens_per_s": b as f64 / (decode_ms * 1e-3),
            "prefill_step_ms": prefill_ms,
            "prefill_tokens": prefill_tokens,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
