//! `synth-model`: writes a synthetic PaddleOCR-VL checkpoint (random bf16 weights with the real
//! names and shapes, plus config.json and preprocessor_config.json) for tests and benchmarks.
//!
//! synth-model --out DIR [--tiny] [--version 1|1.5|1.6] [--seed N] [--shards N] [--no-unused]
//! [--no-lm-head]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ocrvl::model::synthetic::{synthetic_config, write_synthetic_model, CheckpointVersion, SyntheticOptions};

const USAGE: &str =
    "usage: synth-model --out DIR [--tiny] [--version 1|1.5|1.6] [--seed N] [--shards N] [--no-unused] [--no-lm-head]

  --out DIR      directory to write (created if missing)
  --tiny         the small test model instead of the full 0.9B one
  --version V    the checkpoint layout: 1 (default; preprocessor_config.json) or 1.5 / 1.6
                 (processor_config.json, a tokenizer with <|LOC_0|>..<|LOC_1000|> and the
                 table tokens; the tiny 1.5 model has a 2048-token vocabulary to hold them)
  --seed N       random seed (default 0); same seed, same bytes
  --shards N     1 writes model.safetensors (default); N > 1 writes N shards and an index
  --no-unused    leave out the tensors the model never reads
  --no-lm-head   leave out lm_head.weight (the loader then ties it to the embedding)";

struct Args {
    out: PathBuf,
    tiny: bool,
    opts: SyntheticOptions,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut out = None;
    let mut tiny = false;
    let mut opts = SyntheticOptions::default();
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
            }
            "--tiny" => tiny = true,
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
    let out = out.ok_or("--out DIR is required")?;
    Ok(Args { out, tiny, opts })
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
    let cfg = synthetic_config(args.opts.version, args.tiny);
    let start = Instant::now();
    match write_synthetic_model(&args.out, &cfg, &args.opts) {
        Ok(report) => {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "wrote {} model ({} tensors, {:.1} MB of bf16, seed {}) to {} in {secs:.1} s:",
                if args.tiny { "tiny" } else { "full-size" },
                report.num_tensors,
                report.tensor_bytes as f64 / 1e6,
                args.opts.seed,
                args.out.display(),
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
