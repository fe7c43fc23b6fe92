//! `bench`: throughput measurements on a PaddleOCR-VL-0.9B model directory, or on a full-size
//! synthetic one (random weights with the real names and shapes) when `--model` is not given.
//!
//! What it measures today (the serving engine that generates tokens arrives with the engine
//! issue; until then this binary says so and measures what exists):
//! - checkpoint open + validation + upload time and bandwidth;
//! - the GEMM part of one decode step of the text decoder at batch `--max-num-seqs`, with the
//!   real weights, against the HBM floor of reading those weights once;
//! - the GEMM part of the vision tower and projector for `--vision-patches` patches, against
//!   the measured bf16 tensor-core rate.
//!
//! Flags: the engine flags (`--model`, `--max-num-seqs`, ...), plus `--synthetic-dir DIR`
//! (where the synthetic model is written once and reused), `--vision-patches N` (default
//! 5040: a 1080p-class page) and `--json PATH`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use ocrvl::config::{EngineConfig, EnvFlags, ModelConfig};
use ocrvl::model::device_weights::DeviceWeights;
use ocrvl::model::names::{text_layer, vision_layer, LM_HEAD};
use ocrvl::model::synthetic::{write_synthetic_model, SyntheticOptions};
use ocrvl::model::weights::Checkpoint;
use ocrvl::runtime::{DType, DeviceTensor, Epilogue, Gemm, Gpu, GpuTimer, TensorView};

/// The ceilings measured on the GPU host's H100 (GPU_WORKFLOW.md, KINDS.md).
const H100_COPY_GBPS: f64 = 2960.0;
const H100_BF16_TFLOPS: f64 = 798.0;

struct BenchArgs {
    engine: EngineConfig,
    synthetic_dir: Option<PathBuf>,
    vision_patches: usize,
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
            "--json" => out.json = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("usage: bench [--model DIR] [--max-num-seqs N] [--max-model-len N] [--max-num-batched-tokens N] [--gpu-memory-utilization F] [--synthetic-dir DIR] [--vision-patches N] [--json PATH]");
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

/// One GEMM of a timed sequence: out = x · wᵀ (+ bias), with `x` and `out` sized for it.
struct Step<'w> {
    w: TensorView<'w>,
    bias: Option<TensorView<'w>>,
    epilogue: Epilogue,
    x: DeviceTensor,
    out: DeviceTensor,
}

impl<'w> Step<'w> {
    fn new(
        gpu: &Gpu,
        m: usize,
        w: TensorView<'w>,
        bias: Option<TensorView<'w>>,
        epilogue: Epilogue,
        out_dtype: DType,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let (n, k) = (w.dims()[0], w.dims()[1]);
        Ok(Step {
            w,
            bias,
            epilogue,
            x: random_bf16(gpu, &[m, k], seed)?,
            out: DeviceTensor::alloc(gpu, out_dtype, &[m, n])?,
        })
    }

    fn flops(&self) -> f64 {
        2.0 * (self.x.dims()[0] * self.w.dims()[0] * self.w.dims()[1]) as f64
    }
}

/// Mean milliseconds of one pass over `steps`.
fn time_steps(gpu: &Gpu, gemm: &mut Gemm, steps: &mut [Step<'_>]) -> anyhow::Result<f64> {
    let mut pass = || -> ocrvl::Result<()> {
        for s in steps.iter_mut() {
            gemm.matmul(
                gpu,
                &mut s.out.view_mut(),
                &s.x.view(),
                &s.w,
                s.bias.as_ref(),
                s.epilogue,
                false,
            )?;
        }
        Ok(())
    };
    Ok(GpuTimer::time_mean_ms(gpu, 3, 20, &mut pass)?)
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
    let open_s = t.elapsed().as_secs_f64();
    let weights = DeviceWeights::upload(&gpu, &valid)?;
    gpu.synchronize()?;
    let load_s = t.elapsed().as_secs_f64();
    println!(
        "weights: {} tensors, {:.2} GB on the GPU; open+validate {:.2} s, total load {:.2} s ({:.1} GB/s){}",
        weights.len(),
        weights.total_bytes() as f64 / 1e9,
        open_s,
        load_s,
        weights.total_bytes() as f64 / 1e9 / load_s,
        if weights.lm_head_tied() {
            "; lm_head tied to embed_tokens"
        } else {
            ""
        }
    );

    let mut gemm = Gemm::new(&gpu)?;

    // Decode step: every text GEMM of every layer once, at batch max_num_seqs, plus lm_head.
    let b = args.engine.max_num_seqs;
    let mut decode = Vec::new();
    for l in 0..cfg.text.num_hidden_layers {
        for (i, name) in [
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ]
        .iter()
        .enumerate()
        {
            decode.push(Step::new(
                &gpu,
                b,
                weights.get(&text_layer(l, name))?,
                None,
                Epilogue::None,
                DType::BF16,
                (l * 16 + i) as u64,
            )?);
        }
    }
    decode.push(Step::new(
        &gpu,
        b,
        weights.get(LM_HEAD)?,
        None,
        Epilogue::None,
        DType::F32,
        999,
    )?);
    let decode_ms = time_steps(&gpu, &mut gemm, &mut decode)?;
    let decode_weight_bytes: usize = decode.iter().map(|s| s.w.numel() * 2).sum();
    let decode_floor_ms = decode_weight_bytes as f64 / (H100_COPY_GBPS * 1e9) * 1e3;
    let decode_flops: f64 = decode.iter().map(Step::flops).sum();
    drop(decode);

    // Vision tower and projector GEMMs for one packed batch of patches.
    let p = args.vision_patches;
    let merged = p / 4;
    let mut vision = Vec::new();
    for l in 0..cfg.vision.num_hidden_layers {
        for (i, (name, epi)) in [
            ("self_attn.q_proj", Epilogue::Bias),
            ("self_attn.k_proj", Epilogue::Bias),
            ("self_attn.v_proj", Epilogue::Bias),
            ("self_attn.out_proj", Epilogue::Bias),
            ("mlp.fc1", Epilogue::GeluTanhBias),
            ("mlp.fc2", Epilogue::Bias),
        ]
        .into_iter()
        .enumerate()
        {
            let w = weights.get(&vision_layer(l, &format!("{name}.weight")))?;
            let bias = weights.get(&vision_layer(l, &format!("{name}.bias")))?;
            vision.push(Step::new(
                &gpu,
                p,
                w,
                Some(bias),
                epi,
                DType::BF16,
                (5000 + l * 16 + i) as u64,
            )?);
        }
    }
    for (i, name) in ["mlp_AR.linear_1", "mlp_AR.linear_2"].iter().enumerate() {
        vision.push(Step::new(
            &gpu,
            merged,
            weights.get(&format!("{name}.weight"))?,
            Some(weights.get(&format!("{name}.bias"))?),
            Epilogue::Bias,
            DType::BF16,
            (9000 + i) as u64,
        )?);
    }
    let vision_ms = time_steps(&gpu, &mut gemm, &mut vision)?;
    let vision_flops: f64 = vision.iter().map(Step::flops).sum();
    drop(vision);

    let decode_tflops = decode_flops / (decode_ms * 1e-3) / 1e12;
    let vision_tflops = vision_flops / (vision_ms * 1e-3) / 1e12;
    println!();
    println!("| measurement | time | rate | floor / ceiling |");
    println!("|---|---|---|---|");
    println!("| decode-step GEMMs, batch {b} (18 layers + lm_head) | {:.3} ms | {:.0} GB/s weights, {:.1} TFLOP/s | {:.3} ms at {H100_COPY_GBPS} GB/s ({:.0}%) |", decode_ms, decode_weight_bytes as f64 / (decode_ms * 1e-3) / 1e9, decode_tflops, decode_floor_ms, 100.0 * decode_floor_ms / decode_ms);
    println!("| vision GEMMs, {p} patches (27 layers + projector) | {:.3} ms | {:.1} TFLOP/s | {:.0}% of {H100_BF16_TFLOPS} TFLOP/s |", vision_ms, vision_tflops, 100.0 * vision_tflops / H100_BF16_TFLOPS);
    println!(
        "| weight load | {load_s:.2} s | {:.1} GB/s | |",
        weights.total_bytes() as f64 / 1e9 / load_s
    );
    println!();
    println!("end-to-end generation throughput: not measured yet (the serving engine is not built; see README)");

    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "gpu": gpu.name(),
            "version": env!("CARGO_PKG_VERSION"),
            "model": dir.display().to_string(),
            "synthetic": synthetic,
            "max_num_seqs": b,
            "vision_patches": p,
            "weights_gb": weights.total_bytes() as f64 / 1e9,
            "load_s": load_s,
            "decode_gemm_ms": decode_ms,
            "decode_gemm_floor_ms": decode_floor_ms,
            "vision_gemm_ms": vision_ms,
            "vision_gemm_tflops": vision_tflops,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
