//! `bench`: throughput of ocrvl on a PaddleOCR-VL-0.9B model directory, or on a full-size
//! synthetic one (random weights with the real names and shapes, written once by
//! [`ensure_synthetic_model`]) when `--model` is not given.
//!
//! Two parts:
//! - **Model steps**, timed with CUDA events against their floors: one vision-tower + projector
//!   pass over `--vision-patches` patches (5040 is an A4 page at 150 dpi); one decoder decode
//!   step at batch `--max-num-seqs` with `--context` tokens cached per sequence; one decoder
//!   prefill step of `--max-num-batched-tokens` tokens. Plus the weight load time.
//! - **Request workloads** through the engine (`--workload`, default `decode`; `all` runs the
//!   four in turn on one engine). Output lengths are fixed with ignore_eos and greedy sampling.
//!   - `decode`: text-only prompts of `--prompt-len` random ids (default 1024), `--output-len`
//!     tokens out (default 1024): the LM roofline case.
//!   - `page-1080p` / `page-360p`: one synthetic 1920x1080 / 640x360 page each, task `OCR:`,
//!     128 / 512 tokens out.
//!   - `crops`: the regions a layout detector cuts out of pages, see [`CROPS`].
//!
//!   Images are rendered (a white page with dark text-like bars; the content does not change
//!   the speed, the size does), preprocessed once per size through the model directory's
//!   [`ImageProcessor`] (`smart_resize`, PIL-exact bicubic, normalise, patchify) and the prompt
//!   built with its [`PromptBuilder`] (chat template, placeholders expanded), as the service
//!   does. That CPU work is outside the timed window (its time per image is printed); each
//!   request gets its own image content hash, so the prefix cache shares nothing.
//!
//!   Requests are submitted as the engine has room: at most `--max-num-seqs` wait beyond the
//!   running ones, so the engine never starves and TTFT (from submission to the first token)
//!   measures queueing behind at most one batch plus prefill, not the position in a queue of
//!   all requests. Each workload starts with a warm-up of `--warmup` requests of its own shape
//!   (8 tokens out), not timed.
//!
//!   Reported: requests/s, input (prompt, image placeholders included) and output tokens/s,
//!   TTFT and TPOT p50/p99, peak GPU memory (`cuMemGetInfo` total - free, sampled after every
//!   step: the whole device, so it includes the KV pool sized by `--gpu-memory-utilization`),
//!   the peak of KV blocks in use, the step times, preemptions, prefix-cache hits, and the
//!   engine's host-time breakdown per step ([`Engine::step_timings`]: prepare, launch, wait
//!   for tokens, update, as the engine defines them) with the share of steps that replayed a
//!   CUDA graph. A progress bar runs on stderr when it is a terminal, else a line
//!   every 10 s.
//!
//! Flags: the engine flags (`--model`, `--max-num-seqs`, `--max-model-len`,
//! `--max-num-batched-tokens`, `--gpu-memory-utilization`, `--[no-]enable-prefix-caching`,
//! `--enforce-eager`), plus `--synthetic-dir DIR`, `--vision-patches N` (5040), `--context N`
//! (1024), `--workload decode|page-1080p|page-360p|crops|all|none` (or a comma list),
//! `--num-requests N` (1024; or per workload: `decode=1024,crops=2048`), `--prompt-len N` and
//! `--output-len N` (the decode workload's, 1024 each), `--warmup N` (32), `--no-model-steps`,
//! `--dry-run` (print the workloads' request shapes, preprocessing included, and exit: no GPU
//! needed), `--json PATH` (everything printed, per workload under `workloads`).

// The modules live in src/bin/bench/ and are named by path: a sibling file in src/bin/ would
// be taken by cargo for another binary.
#[path = "bench/decode_overlap.rs"]
mod decode_overlap;
#[path = "bench/model_steps.rs"]
mod model_steps;
#[path = "bench/workloads.rs"]
mod workloads;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use serde_json::{json, Value};

use ocrvl::config::{
    normalize_flag_spelling, EngineArgs, EngineConfig, EnvFlags, FamilyConfig, FlashAttnVersion, LoadFormat,
    ModelFamilyKind, SamplingClass,
};
use ocrvl::engine::Engine;
use ocrvl::runtime::Gpu;
use ocrvl::service::ensure_synthetic_model;

use model_steps::model_steps;
use workloads::{engine_workload, workload_shapes};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    Decode,
    Page1080p,
    Page360p,
    Crops,
    /// ERNIE-4.5-VL: a photo and a question, a 512-token answer.
    ImageQa,
    /// ERNIE-4.5-VL: three document pages and a question about them.
    MultiImage,
}

impl Workload {
    const ALL: [Workload; 6] = [
        Workload::Decode,
        Workload::Page1080p,
        Workload::Page360p,
        Workload::Crops,
        Workload::ImageQa,
        Workload::MultiImage,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Decode => "decode",
            Workload::Page1080p => "page-1080p",
            Workload::Page360p => "page-360p",
            Workload::Crops => "crops",
            Workload::ImageQa => "image-qa",
            Workload::MultiImage => "multi-image",
        }
    }

    /// Whether the workload fits a model of `family` (text decode fits every family).
    fn fits(self, family: ModelFamilyKind) -> bool {
        match self {
            Workload::Decode => true,
            Workload::Page1080p | Workload::Page360p | Workload::Crops => family == ModelFamilyKind::PaddleOcrVl,
            Workload::ImageQa | Workload::MultiImage => family == ModelFamilyKind::ErnieVl,
        }
    }

    fn from_name(name: &str) -> anyhow::Result<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name).with_context(|| {
            format!(
                "workload `{name}`: valid values are decode, page-1080p, page-360p, crops (PaddleOCR-VL), \
                 image-qa, multi-image (ERNIE-4.5-VL), all, none"
            )
        })
    }
}

/// Keeps the workloads that fit the model's family when `--workload all` asked for every one;
/// a workload named explicitly that does not fit is an error naming it.
fn workloads_for(args: &mut BenchArgs, family: ModelFamilyKind) -> anyhow::Result<()> {
    if args.all_workloads {
        args.workloads.retain(|w| w.fits(family));
    } else if let Some(w) = args.workloads.iter().find(|w| !w.fits(family)) {
        anyhow::bail!(
            "--workload {}: not a workload of this model's family ({family:?})",
            w.name()
        );
    }
    Ok(())
}

pub(crate) struct BenchArgs {
    engine: EngineConfig,
    /// `--revision` of a hub repo id given as --model.
    revision: Option<String>,
    synthetic_dir: Option<PathBuf>,
    vision_patches: usize,
    context: usize,
    model_steps: bool,
    workloads: Vec<Workload>,
    /// `--workload all`: every workload of the model's family.
    all_workloads: bool,
    /// Requests per workload (default 1024 each).
    num_requests: HashMap<&'static str, usize>,
    prompt_len: usize,
    output_len: usize,
    warmup: usize,
    dry_run: bool,
    json: Option<PathBuf>,
}

impl BenchArgs {
    fn requests(&self, w: Workload) -> usize {
        self.num_requests.get(w.name()).copied().unwrap_or(1024)
    }
}

/// `bench [flags]`.
#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Throughput of ocrvl: model steps and request workloads",
    args_override_self = true,
    allow_negative_numbers = true,
    after_help = "Environment: FLAGS_flash_attn_version (2, 3, unset), FD_SAMPLING_CLASS (base, rejection)."
)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    /// Where the synthetic model is written when --model is not given.
    #[arg(long, value_name = "DIR")]
    synthetic_dir: Option<PathBuf>,
    /// Patches of the timed vision-tower pass (5040: an A4 page at 150 dpi).
    #[arg(long, value_name = "N", default_value_t = 5040, value_parser = positive)]
    vision_patches: usize,
    /// Tokens cached per sequence in the timed decode step.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = positive)]
    context: usize,
    /// Skip the model-step timings.
    #[arg(long)]
    no_model_steps: bool,
    /// decode, page-1080p, page-360p, crops, all, none, or a comma list.
    #[arg(long, value_name = "LIST", default_value = "decode")]
    workload: String,
    /// Requests per workload: N, or WORKLOAD=N,... (1024 each by default).
    #[arg(long, value_name = "N|W=N,...")]
    num_requests: Option<String>,
    /// The decode workload's prompt length.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = positive)]
    prompt_len: usize,
    /// The decode workload's output length.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = positive)]
    output_len: usize,
    /// Warm-up requests per workload (8 tokens out each, not timed).
    #[arg(long, value_name = "N", default_value_t = 32)]
    warmup: usize,
    /// Print the workloads' request shapes (preprocessing included) and exit: no GPU needed.
    #[arg(long)]
    dry_run: bool,
    /// Write everything printed, as JSON, to this file.
    #[arg(long, value_name = "PATH")]
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

fn positive(v: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|&n: &usize| n > 0)
        .ok_or_else(|| format!("`{v}` is not a positive integer"))
}

/// Parses the command line; `--help` and flag errors print and exit.
fn parse_args() -> anyhow::Result<BenchArgs> {
    let argv = std::iter::once("bench".to_string()).chain(normalize_flag_spelling(std::env::args().skip(1)));
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    let fail = |msg: String| Cli::command().error(ErrorKind::ValueValidation, msg).exit();
    let settings = cli.engine.resolve().unwrap_or_else(fail);
    if settings.chat_template.is_some() {
        fail("--chat-template: bench builds its prompts with the model directory's template".into());
    }
    for note in &settings.notes {
        eprintln!("bench: {note}");
    }
    if settings.reasoning_parser.is_some() {
        eprintln!(
            "bench: --reasoning-parser has no effect here (bench counts tokens; `serve` splits reasoning_content)"
        );
    }
    let workloads = match cli.workload.as_str() {
        "all" => Workload::ALL.to_vec(),
        "none" => Vec::new(),
        list => list
            .split(',')
            .map(Workload::from_name)
            .collect::<anyhow::Result<_>>()
            .context("--workload")?,
    };
    let mut num_requests = HashMap::new();
    if let Some(v) = &cli.num_requests {
        if v.contains('=') {
            for pair in v.split(',') {
                let (w, n) = pair
                    .split_once('=')
                    .with_context(|| format!("--num-requests: `{pair}` is not WORKLOAD=N"))?;
                let n = positive(n).map_err(|e| anyhow::anyhow!("--num-requests: {e}"))?;
                num_requests.insert(Workload::from_name(w)?.name(), n);
            }
        } else {
            let n = positive(v).map_err(|e| anyhow::anyhow!("--num-requests: {e}"))?;
            num_requests = Workload::ALL.iter().map(|w| (w.name(), n)).collect();
        }
    }
    Ok(BenchArgs {
        engine: settings.engine,
        revision: settings.revision,
        synthetic_dir: cli.synthetic_dir,
        vision_patches: cli.vision_patches,
        context: cli.context,
        model_steps: !cli.no_model_steps,
        all_workloads: cli.workload == "all",
        workloads,
        num_requests,
        prompt_len: cli.prompt_len,
        output_len: cli.output_len,
        warmup: cli.warmup,
        dry_run: cli.dry_run,
        json: cli.json,
    })
}

/// The flags in force, as the engine and the environment parser read them.
fn flags_json(e: &EngineConfig, env: EnvFlags) -> Value {
    json!({
        "max_num_seqs": e.max_num_seqs,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "max_model_len": e.max_model_len,
        "gpu_memory_utilization": e.gpu_memory_utilization,
        "enable_prefix_caching": e.enable_prefix_caching,
        "enforce_eager": e.enforce_eager,
        "load_format": load_format_name(e.load_format),
        "quantization": e.quantization.flag_value(),
        "async_scheduling": e.async_scheduling,
        "FLAGS_flash_attn_version": match env.flash_attn_version {
            FlashAttnVersion::Auto => "auto",
            FlashAttnVersion::Fa2 => "2",
            FlashAttnVersion::Fa3 => "3",
        },
        "FD_SAMPLING_CLASS": match env.sampling_class {
            SamplingClass::Base => "base",
            SamplingClass::Rejection => "rejection",
        },
    })
}

fn run() -> anyhow::Result<()> {
    let mut args = parse_args()?;
    ocrvl::hub::resolve_model_option(&mut args.engine.model, args.revision.as_deref())?;
    let env = EnvFlags::from_env()?;
    if args.dry_run {
        return dry_run(&mut args, env);
    }
    // The GPU first: a machine without one fails at once, before a 1.9 GB synthetic write.
    let gpu = Gpu::new(0)?;
    let (dir, synthetic) = match &args.engine.model {
        Some(d) => (d.clone(), false),
        None => (ensure_synthetic_model(args.synthetic_dir.as_deref())?, true),
    };
    let cfg = FamilyConfig::from_dir(&dir)?;
    args.engine.validate(cfg.max_position_embeddings())?;
    workloads_for(&mut args, cfg.kind())?;
    let (cc_major, cc_minor) = gpu.compute_capability();
    println!(
        "device: {} (sm_{cc_major}{cc_minor}, {} SMs); model: {}{}",
        gpu.name(),
        gpu.sm_count(),
        dir.display(),
        if synthetic { " (synthetic)" } else { "" }
    );
    let flags = print_flags(&args.engine, env);

    let mut json = json!({
        "gpu": gpu.name(),
        "compute_capability": format!("{cc_major}.{cc_minor}"),
        "version": env!("CARGO_PKG_VERSION"),
        "model": dir.display().to_string(),
        "synthetic": synthetic,
        "flags": flags,
    });
    if let (true, Some(paddle)) = (args.model_steps, cfg.paddleocr_vl()) {
        let steps = model_steps(&args, &gpu, paddle, &dir)?;
        if let (Value::Object(top), Value::Object(s)) = (&mut json, steps) {
            top.extend(s);
        }
    }

    let mut results = Vec::new();
    if !args.workloads.is_empty() {
        let t = Instant::now();
        let mut engine = Engine::new(gpu.clone(), &dir, &args.engine, env)?;
        println!(
            "\nengine: {} KV blocks ({:.1} GB of device memory in use) in {:.1} s",
            engine.num_kv_blocks(),
            used_gb(&gpu)?,
            t.elapsed().as_secs_f64()
        );
        for &w in &args.workloads {
            results.push(engine_workload(&args, &mut engine, &cfg, &dir, w)?);
        }
        print_summary(&results);
    }
    json["workloads"] = Value::Array(results);
    println!();
    println!(
        "not measured here: CPU preprocessing under load (done once per image size before the timed window) and \
         the server. transformers on the same workloads: tools/gpu/baseline_engine.py."
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Prints the flags in force and returns them as JSON.
fn load_format_name(f: LoadFormat) -> &'static str {
    match f {
        LoadFormat::Files => "auto",
        LoadFormat::Dummy => "dummy (random weights)",
    }
}

fn print_flags(e: &EngineConfig, env: EnvFlags) -> Value {
    let flags = flags_json(e, env);
    println!(
        "flags: --max-num-seqs {} --max-num-batched-tokens {} --max-model-len {} --gpu-memory-utilization {} \
         prefix-caching {} enforce-eager {} async-scheduling {} load-format {} quantization {}; FLAGS_flash_attn_version={} \
         FD_SAMPLING_CLASS={}",
        e.max_num_seqs,
        e.max_num_batched_tokens,
        e.max_model_len,
        e.gpu_memory_utilization,
        if e.enable_prefix_caching { "on" } else { "off" },
        if e.enforce_eager { "on" } else { "off" },
        if e.async_scheduling { "on" } else { "off" },
        load_format_name(e.load_format),
        e.quantization.flag_value(),
        flags["FLAGS_flash_attn_version"].as_str().unwrap_or("?"),
        flags["FD_SAMPLING_CLASS"].as_str().unwrap_or("?"),
    );
    flags
}

/// `--dry-run`: the flags and every workload's request shapes (images rendered and
/// preprocessed, prompts built), without a GPU.
fn dry_run(args: &mut BenchArgs, env: EnvFlags) -> anyhow::Result<()> {
    let dir = match &args.engine.model {
        Some(d) => d.clone(),
        None => ensure_synthetic_model(args.synthetic_dir.as_deref())?,
    };
    let cfg = FamilyConfig::from_dir(&dir)?;
    args.engine.validate(cfg.max_position_embeddings())?;
    workloads_for(args, cfg.kind())?;
    println!("model: {}", dir.display());
    print_flags(&args.engine, env);
    for &w in &args.workloads {
        println!("workload {}: {} requests", w.name(), args.requests(w));
        for (shape, _) in workload_shapes(args, &cfg, &dir, w)? {
            println!("  {}", shape.info);
        }
    }
    Ok(())
}

fn used_gb(gpu: &Gpu) -> anyhow::Result<f64> {
    let (free, total) = gpu.memory_info()?;
    Ok((total - free) as f64 / 1e9)
}

fn print_summary(results: &[Value]) {
    println!();
    println!(
        "| engine workload | requests | time | req/s | input tok/s | output tok/s | TTFT p50 / p99 | TPOT p50 / p99 | peak GPU memory |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let shapes: Vec<String> = r["shapes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        format!(
                            "{}{} {} in/{} out",
                            s["kind"].as_str().unwrap_or("?"),
                            s["image"].as_str().map(|i| format!(" {i}")).unwrap_or_default(),
                            s["prompt_tokens"],
                            s["output_tokens"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "| {} ({}) | {} | {:.1} s | {:.2} | {:.0} | {:.0} | {:.0} / {:.0} ms | {:.2} / {:.2} ms | {:.1} GB |",
            r["workload"].as_str().unwrap_or("?"),
            shapes.join(", "),
            r["requests"],
            f("seconds"),
            f("requests_per_s"),
            f("input_tokens_per_s"),
            f("output_tokens_per_s"),
            f("ttft_p50_ms"),
            f("ttft_p99_ms"),
            f("tpot_p50_ms"),
            f("tpot_p99_ms"),
            f("peak_gpu_memory_gb")
        );
    }
}
