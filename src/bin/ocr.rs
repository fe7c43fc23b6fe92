//! `ocr IMAGE... [--task ocr|table|formula|chart|spotting|seal | --prompt TEXT] [--model DIR] [--json]
//! [--max-tokens N] [engine flags, as serve takes them]`: runs the engine in-process and prints what it
//! reads in each image (`--prompt`: the model's answer to the text, as ERNIE-4.5-VL takes it).
//!
//! All images go to the engine at once (up to `--max-num-seqs` in flight; one worker thread
//! per in-flight image does its decoding and preprocessing), and results print in the order
//! the images were given, each as soon as it and those before it are done. Tables are printed
//! as HTML converted from the model's OTSL tags, formulas as the LaTeX the model writes,
//! charts as its `|`-separated rows (MODEL_SPEC §6.4). `--json` prints one JSON object per
//! image and line instead; for `--task spotting` it holds `lines`, each text line with its
//! polygon in image pixels (src/postprocess/spotting.rs). A file that cannot be read or
//! decoded is reported by name and the others still run; the exit status is 1 if any image
//! failed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use ocrvl::config::{normalize_flag_spelling, EngineArgs, EngineConfig, EnvFlags};
use ocrvl::engine::FinishReason;
use ocrvl::postprocess::spotting;
use ocrvl::preprocess::prompt::Task;
use ocrvl::server::otsl::otsl_to_html;
use ocrvl::service::{Completion, OcrRequest, PromptInput, Service, ServiceConfig};

/// `ocr IMAGE... [flags]`.
#[derive(Parser, Debug)]
#[command(
    name = "ocr",
    about = "Read images with PaddleOCR-VL (or ask ERNIE-4.5-VL about them) in-process",
    args_override_self = true,
    allow_negative_numbers = true,
    after_help = "Without --model it runs a full-size synthetic model (random weights): the output is meaningless."
)]
struct Cli {
    /// Images to read (PNG, JPEG, WebP, BMP, TIFF, GIF).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// The task prompt: ocr, table, formula, chart, spotting or seal (PaddleOCR-VL).
    #[arg(long, default_value = "ocr", value_parser = task)]
    task: Task,
    /// A free-text prompt instead of the task (what ERNIE-4.5-VL takes, e.g. "Describe the
    /// image."); sent after the image in one user turn.
    #[arg(long, value_name = "TEXT", conflicts_with = "task")]
    prompt: Option<String>,
    /// One JSON object per image and line.
    #[arg(long)]
    json: bool,
    /// Most tokens generated per image (default: up to --max-model-len).
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Where the synthetic model is written when --model is not given.
    #[arg(long, value_name = "DIR")]
    synthetic_dir: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

struct Args {
    engine: EngineConfig,
    images: Vec<PathBuf>,
    task: Task,
    prompt: Option<String>,
    json: bool,
    max_tokens: Option<usize>,
    synthetic_dir: Option<PathBuf>,
    image_cache_bytes: usize,
    chat_template: Option<PathBuf>,
    /// `--revision` of a hub repo id given as --model.
    revision: Option<String>,
}

fn task(v: &str) -> Result<Task, String> {
    Task::from_name(v).ok_or_else(|| format!("valid values: {}", Task::names()))
}

/// Parses the command line; `--help` and errors print and exit.
fn parse_args() -> Args {
    let argv = std::iter::once("ocr".to_string()).chain(normalize_flag_spelling(std::env::args().skip(1)));
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    let settings = cli
        .engine
        .resolve()
        .unwrap_or_else(|e| Cli::command().error(ErrorKind::ValueValidation, e).exit());
    for note in &settings.notes {
        eprintln!("ocr: {note}");
    }
    if settings.reasoning_parser.is_some() {
        eprintln!("ocr: --reasoning-parser has no effect here (ocr prints the whole output text; `serve` splits reasoning_content)");
    }
    Args {
        engine: settings.engine,
        images: cli.images,
        task: cli.task,
        prompt: cli.prompt,
        json: cli.json,
        max_tokens: cli.max_tokens,
        synthetic_dir: cli.synthetic_dir,
        image_cache_bytes: settings.image_cache_bytes,
        chat_template: settings.chat_template,
        revision: settings.revision,
    }
}

fn main() -> ExitCode {
    let mut args = parse_args();
    if let Err(e) = ocrvl::hub::resolve_model_option(&mut args.engine.model, args.revision.as_deref()) {
        eprintln!("ocr: {e}");
        return ExitCode::FAILURE;
    }
    let env = match EnvFlags::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ocr: {e}");
            return ExitCode::from(2);
        }
    };
    if args.engine.model.is_none() {
        eprintln!("ocr: no --model given: using a full-size SYNTHETIC model (random weights); the text is meaningless");
    }
    let t0 = Instant::now();
    let service = Service::spawn(ServiceConfig {
        engine: args.engine.clone(),
        env,
        synthetic_dir: args.synthetic_dir.clone(),
        max_images_per_request: 1,
        image_cache_bytes: args.image_cache_bytes,
        chat_template: args.chat_template.clone(),
        ..ServiceConfig::default()
    });
    if let Err(e) = service.wait_ready(None) {
        eprintln!("ocr: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("ocr: engine ready in {:.2} s", t0.elapsed().as_secs_f64());

    let failed = run(&args, &service);
    service.shutdown(std::time::Duration::ZERO);
    if failed > 0 {
        eprintln!("ocr: {failed} of {} images failed", args.images.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs every image; prints results in order; returns how many failed.
fn run(args: &Args, service: &Service) -> usize {
    let n = args.images.len();
    let workers = n.min(args.engine.max_num_seqs).max(1);
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<(usize, Result<(Completion, f64), String>)>();
    for _ in 0..workers {
        let (next, tx, service) = (next.clone(), tx.clone(), service.clone());
        let images = args.images.clone();
        let prompt = match &args.prompt {
            Some(text) => PromptInput::Text(text.clone()),
            None => PromptInput::Task(args.task),
        };
        let max_tokens = args.max_tokens;
        std::thread::spawn(move || loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(path) = images.get(i) else { break };
            let t = Instant::now();
            let result = std::fs::read(path).map_err(|e| e.to_string()).and_then(|bytes| {
                let mut req = OcrRequest::new(vec![bytes], prompt.clone());
                req.max_tokens = max_tokens;
                let handle = service.submit(req).map_err(|e| e.to_string())?;
                handle.wait().map_err(|e| e.to_string())
            });
            if tx.send((i, result.map(|c| (c, t.elapsed().as_secs_f64())))).is_err() {
                break;
            }
        });
    }
    drop(tx);

    let bar = if n > 1 {
        let b = ProgressBar::new(n as u64);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} images, {elapsed} (eta {eta})") {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let mut done: BTreeMap<usize, Result<(Completion, f64), String>> = BTreeMap::new();
    let mut printed = 0;
    let mut failed = 0;
    for (i, result) in rx {
        bar.inc(1);
        done.insert(i, result);
        while let Some(result) = done.remove(&printed) {
            let path = args.images[printed].display().to_string();
            if result.is_err() {
                failed += 1;
            }
            bar.suspend(|| print_result(args, service, &path, result));
            printed += 1;
        }
    }
    bar.finish_and_clear();
    failed
}

fn print_result(args: &Args, service: &Service, path: &str, result: Result<(Completion, f64), String>) {
    // With --prompt the task is not in play: "task" is null and no task post-processing runs.
    let task = args.prompt.is_none().then(|| args.task.name());
    let task_is = |t: Task| args.prompt.is_none() && args.task == t;
    match result {
        Err(e) => {
            eprintln!("ocr: {path}: {e}");
            if args.json {
                println!("{}", json!({"image": path, "task": task, "error": e}));
            }
        }
        Ok((c, secs)) => {
            let html = if task_is(Task::Table) {
                otsl_to_html(&c.text)
            } else {
                None
            };
            if args.json {
                let reason = match c.finish_reason {
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                    FinishReason::Aborted => "abort",
                };
                let mut obj = json!({
                    "image": path,
                    "task": task,
                    "prompt": args.prompt,
                    "text": c.text,
                    "finish_reason": reason,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.token_ids.len(),
                    "seconds": secs,
                });
                if let Some(h) = html {
                    obj["html"] = h.into();
                }
                if task_is(Task::Spotting) {
                    add_spotting(&mut obj, service, path, &c);
                }
                println!("{obj}");
            } else {
                if args.images.len() > 1 {
                    println!("==> {path} <==");
                }
                println!("{}", html.as_deref().unwrap_or(&c.text));
                if args.images.len() > 1 {
                    println!();
                }
            }
        }
    }
}

/// `lines: [{text, polygon: [[x, y] x 4]}]` in image pixels, parsed from `raw`, the output
/// decoded with its location tokens (special tokens, which `text` has skipped);
/// `spotting_error` instead of `lines` when the output is not well formed.
fn add_spotting(obj: &mut serde_json::Value, service: &Service, path: &str, c: &Completion) {
    let parsed = service
        .decode(&c.token_ids, false)
        .map_err(|e| e.to_string())
        .and_then(|raw| {
            let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
            let (w, h) = spotting::oriented_size(&bytes)?;
            obj["raw"] = raw.clone().into();
            spotting::parse_spotting(&raw, w, h).map_err(|e| e.to_string())
        });
    match parsed {
        Ok(lines) => {
            let lines: Vec<_> = lines
                .into_iter()
                .map(|l| json!({"text": l.text, "polygon": l.polygon}))
                .collect();
            obj["lines"] = lines.into();
        }
        Err(e) => obj["spotting_error"] = e.into(),
    }
}
