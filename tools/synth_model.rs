//! `synth-model`: writes a synthetic PaddleOCR-VL checkpoint (random bf16 weights with the real
//! names and shapes, plus config.json and preprocessor_config.json) for tests and benchmarks.
//!
//! synth-model --out DIR [--tiny] [--version 1|1.5|1.6] [--seed N] [--shards N] [--no-unused]
//! [--no-lm-head]
//! synth-model --arch ernie-4.5-vl-28b-a3b (--out DIR | --dry-run) [--tiny | --reduced] [--seed N] [--shards N]
//! [--config-only]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ocrvl::config::ErnieVlConfig;
use ocrvl::model::ernie_vl::synthetic as ernie;
use ocrvl::model::synthetic::{synthetic_config, write_synthetic_model, CheckpointVersion, SyntheticOptions};

const USAGE: &str =
    "usage: synth-model --out DIR [--tiny] [--version 1|1.5|1.6] [--seed N] [--shards N] [--no-unused] [--no-lm-head]
       synth-model --arch ernie-4.5-vl-28b-a3b (--out DIR | --dry-run) [--tiny | --reduced] [--seed N] [--shards N]
                   [--config-only]

  --out DIR      directory to write (created if missing)
  --tiny         the small test model instead of the full 0.9B one
  --version V    the checkpoint layout: 1 (default; preprocessor_config.json) or 1.5 / 1.6
                 (processor_config.json, a tokenizer with <|LOC_0|>..<|LOC_1000|> and the
                 table tokens; the tiny 1.5 model has a 2048-token vocabulary to hold them)
  --seed N       random seed (default 0); same seed, same bytes
  --shards N     1 writes model.safetensors (default); N > 1 writes N shards and an index
  --no-unused    leave out the tensors the model never reads
  --no-lm-head   leave out lm_head.weight (the loader then ties it to the embedding)
  --arch A       paddleocr-vl (default) or ernie-4.5-vl-28b-a3b (always sharded: 3 files
                 tiny, 12 full; the full model is ~58.8 GB)
  --reduced      ERNIE only: the real widths at reduced depth (3 decoder layers: dense, MoE,
                 MoE; 2 ViT blocks), the fidelity test's model (5.3 GB)
  --dry-run      print the inventory's tensor count, parameters and bytes; write nothing
  --config-only  ERNIE only: every file but the weights (config, tokenizer, processor, chat
                 template), to put beside weights saved elsewhere";

struct Args {
    out: Option<PathBuf>,
    tiny: bool,
    reduced: bool,
    opts: SyntheticOptions,
    ernie: bool,
    shards_given: bool,
    dry_run: bool,
    config_only: bool,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut out = None;
    let mut tiny = false;
    let mut reduced = false;
    let mut opts = SyntheticOptions::default();
    let (mut ernie, mut shards_given, mut dry_run, mut config_only) = (false, false, false, false);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--seed" => {
                let v = value()?;
                opts.seed = v.parse().map_err(|_| format!("--seed: {v:?} is not a whole number"))?;
            }
            "--shards" => {
                let v = value()?;
                opts.shards = match v.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(format!("--shards: {v:?} is not a whole number >= 1")),
                };
                shards_given = true;
            }
            "--arch" => {
                let v = value()?;
                ernie = match v.as_str() {
                    "paddleocr-vl" => false,
                    ernie::ARCH => true,
                    _ => return Err(format!("--arch: {v:?} is not paddleocr-vl or {}", ernie::ARCH)),
                };
            }
            "--dry-run" => dry_run = true,
            "--config-only" => config_only = true,
            "--tiny" => tiny = true,
            "--reduced" => reduced = true,
            "--version" => {
                let v = value()?;
                opts.version = match v.as_str() {
                    "1" | "1.0" => CheckpointVersion::V1,
                    // 1.6 keeps 1.5's layout (issue 14).
                    "1.5" | "1.6" => CheckpointVersion::V1_5,
                    _ => return Err(format!("--version: {v:?} is not 1, 1.5 or 1.6")),
                };
            }
            "--no-unused" => opts.include_unused = false,
            "--no-lm-head" => opts.include_lm_head = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if out.is_none() && !dry_run {
        return Err("--out DIR is required".into());
    }
    let paddle_only = opts.version != CheckpointVersion::V1 || !opts.include_unused || !opts.include_lm_head;
    if ernie && paddle_only {
        return Err("--version, --no-unused and --no-lm-head are PaddleOCR-VL options".into());
    }
    if reduced && !ernie {
        return Err("--reduced is an ERNIE-4.5-VL option (--arch ernie-4.5-vl-28b-a3b)".into());
    }
    if reduced && tiny {
        return Err("--reduced and --tiny are two different models: give one".into());
    }
    if config_only && !ernie {
        return Err("--config-only is an ERNIE-4.5-VL option (--arch ernie-4.5-vl-28b-a3b)".into());
    }
    if dry_run && !ernie {
        return Err("--dry-run is only implemented for --arch ernie-4.5-vl-28b-a3b".into());
    }
    Ok(Args {
        out,
        tiny,
        reduced,
        opts,
        ernie,
        shards_given,
        dry_run,
        config_only,
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(args) => args,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("synth-model: {msg}");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    if args.ernie {
        return run_ernie(&args);
    }
    let out = args.out.clone().expect("checked by parse_args");
    let cfg = synthetic_config(args.opts.version, args.tiny);
    let start = Instant::now();
    match write_synthetic_model(&out, &cfg, &args.opts) {
        Ok(report) => {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "wrote {} model ({} tensors, {:.1} MB of bf16, seed {}) to {} in {secs:.1} s:",
                if args.tiny { "tiny" } else { "full-size" },
                report.num_tensors,
                report.tensor_bytes as f64 / 1e6,
                args.opts.seed,
                out.display(),
            );
            for file in &report.files {
                println!("  {}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("synth-model: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `--arch ernie-4.5-vl-28b-a3b`: the dry run prints sizes from the inventory alone; otherwise
/// the sharded directory is written.
fn run_ernie(args: &Args) -> ExitCode {
    let (cfg, model) = if args.tiny {
        (ErnieVlConfig::tiny(), "tiny ERNIE-4.5-VL")
    } else if args.reduced {
        (ErnieVlConfig::reduced(), "reduced-depth ERNIE-4.5-VL-28B-A3B")
    } else {
        (ErnieVlConfig::ernie_4_5_vl_28b_a3b(), "ERNIE-4.5-VL-28B-A3B")
    };
    let size = ernie::synthetic_size(&cfg);
    if args.dry_run {
        println!(
            "{model}: {} tensors, {} parameters ({} active per text token), {} bytes of bf16 ({:.1} GB)",
            size.tensors,
            size.params,
            size.active_params,
            size.bytes,
            size.bytes as f64 / 1e9
        );
        return ExitCode::SUCCESS;
    }
    let out = args.out.clone().expect("checked by parse_args");
    let mut opts = ernie::ErnieSyntheticOptions::for_model(args.tiny);
    opts.seed = args.opts.seed;
    if args.shards_given {
        opts.shards = args.opts.shards;
    }
    opts.weights = !args.config_only;
    let start = Instant::now();
    match ernie::write_synthetic_model(&out, &cfg, &opts) {
        Ok(report) => {
            if args.config_only {
                println!("wrote {model}'s files but the weights to {}", out.display());
                return ExitCode::SUCCESS;
            }
            println!(
                "wrote {model} ({} tensors, {:.1} MB of bf16, seed {}) to {} in {:.1} s",
                report.num_tensors,
                report.tensor_bytes as f64 / 1e6,
                opts.seed,
                out.display(),
                start.elapsed().as_secs_f64(),
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("synth-model: {err}");
            ExitCode::FAILURE
        }
    }
}
