//! The engine's command-line flags, one clap struct ([`EngineArgs`]) flattened into the
//! arguments of `serve`, `ocr` and `bench`, with the spellings vLLM and FastDeploy users type.
//!
//! Besides ocrvl's own flags, three kinds are recognised so that the documented deployment
//! command lines run as written (tests/fixtures/command_lines.txt):
//! - flags that change nothing here (`--trust-remote-code`, `--engine-worker-queue-port`, ...)
//!   are accepted, and [`EngineSettings::notes`] holds one line for each, printed at start-up;
//! - flags asking for something ocrvl does are mapped onto it (`--compilation-config`
//!   `cudagraph_mode` and FastDeploy's `--graph-optimization-config` turn CUDA graphs on or off,
//!   `--mm-processor-cache-gb` sizes the preprocessed-image cache, `--chat-template` replaces the
//!   checkpoint's template);
//! - flags ocrvl cannot honour (`--dtype float16`, `--tensor-parallel-size 2`,
//!   `--quantization` other than `wint8`) are errors naming the flag and why. Nothing that would change
//!   results is accepted silently; a flag not listed here is an error (clap's).
//!
//! vLLM also accepts every flag with underscores (`--max_model_len`); [`normalize_flag_spelling`]
//! rewrites those before clap sees them.

use std::path::PathBuf;

use clap::{Args, Parser};
use serde_json::Value;

use super::engine::{EngineConfig, LoadFormat, Quantization, MAX_NUM_SEQS_LIMIT};
use crate::service::reasoning::ReasoningParser;

/// vLLM's default for `--mm-processor-cache-gb` (GiB).
pub const DEFAULT_MM_PROCESSOR_CACHE_GB: f64 = 4.0;

/// The engine flags. Defaults come from [`EngineConfig::default`].
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// The model: a PaddleOCR-VL directory (or a hub repo id where the build resolves them).
    #[arg(long, value_name = "DIR")]
    pub model: Option<String>,
    /// Hub revision of --model (branch, tag or commit).
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// Longest sequence (prompt + output) accepted.
    #[arg(long, value_name = "N", default_value_t = EngineConfig::default().max_model_len, value_parser = positive)]
    pub max_model_len: usize,
    /// Most sequences running at once (1..=256).
    #[arg(long, value_name = "N", default_value_t = EngineConfig::default().max_num_seqs, value_parser = num_seqs)]
    pub max_num_seqs: usize,
    /// Token budget of one engine step.
    #[arg(long, value_name = "N", default_value_t = EngineConfig::default().max_num_batched_tokens, value_parser = positive)]
    pub max_num_batched_tokens: usize,
    /// Fraction of GPU memory the engine may use, in (0, 1].
    #[arg(long, value_name = "F", default_value_t = EngineConfig::default().gpu_memory_utilization, value_parser = fraction)]
    pub gpu_memory_utilization: f64,
    /// Weights and activations type: bfloat16 (or auto, which is bfloat16).
    #[arg(long, value_name = "DTYPE", default_value = "auto", value_parser = dtype)]
    pub dtype: String,
    /// Reuse the KV cache of shared prompt prefixes (on by default).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    /// Turn prefix caching off.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,
    /// Run every step eagerly (no CUDA graphs).
    #[arg(long)]
    pub enforce_eager: bool,
    /// Plan the next decode step while the current one runs (on by default).
    #[arg(long, overrides_with = "no_async_scheduling")]
    pub async_scheduling: bool,
    /// Wait for each step's tokens before planning the next.
    #[arg(long, overrides_with = "async_scheduling")]
    pub no_async_scheduling: bool,
    /// This many KV blocks instead of what the memory target allows (tests, debugging).
    #[arg(long, value_name = "N", value_parser = positive)]
    pub num_gpu_blocks_override: Option<usize>,
    /// `auto` (or `safetensors`): the checkpoint's files; `dummy`: random weights with its
    /// names and shapes, made in memory (benchmarks of a directory without weights).
    #[arg(long, value_name = "FORMAT", default_value = "auto", value_parser = LoadFormat::parse)]
    pub load_format: LoadFormat,
    /// vLLM's JSON: `cudagraph_mode` FULL_DECODE_ONLY (or FULL, PIECEWISE, FULL_AND_PIECEWISE)
    /// keeps the decode CUDA graphs on, NONE turns them off.
    #[arg(long, value_name = "JSON")]
    pub compilation_config: Option<String>,
    /// FastDeploy's JSON: `use_cudagraph` true/false turns the CUDA graphs on/off.
    #[arg(long, value_name = "JSON")]
    pub graph_optimization_config: Option<String>,
    /// Size of the cache of preprocessed images, in GiB (0 turns it off).
    #[arg(long, value_name = "GIB", default_value_t = DEFAULT_MM_PROCESSOR_CACHE_GB, value_parser = cache_gb)]
    pub mm_processor_cache_gb: f64,
    /// A Jinja chat template (a file, or the template itself) that replaces the checkpoint's.
    #[arg(long, value_name = "PATH")]
    pub chat_template: Option<PathBuf>,
    /// 1 only: ocrvl runs the model on one GPU.
    #[arg(long, value_name = "N", value_parser = one_gpu)]
    pub tensor_parallel_size: Option<usize>,
    /// 1 only: ocrvl runs the model on one GPU.
    #[arg(long, value_name = "N", value_parser = one_gpu)]
    pub pipeline_parallel_size: Option<usize>,
    /// 1 only: run several servers for data parallelism.
    #[arg(long, value_name = "N", value_parser = one_gpu)]
    pub data_parallel_size: Option<usize>,
    /// `wint8`: the MoE experts' weights as int8 with per-row scales (ERNIE-4.5-VL); other
    /// methods are refused (ocrvl runs the bf16 checkpoint otherwise).
    #[arg(long, value_name = "METHOD", value_parser = Quantization::from_flag)]
    pub quantization: Option<Quantization>,
    /// `ernie-45-vl` (alias `ernie45`) or `ernie-45-vl-thinking`: split a thinking model's
    /// output into `reasoning_content` (src/service/reasoning.rs); with a model whose
    /// vocabulary has no `</think>` everything stays `content`.
    #[arg(long, value_name = "NAME", value_parser = reasoning_parser)]
    pub reasoning_parser: Option<String>,
    /// Chunked prefill is always on here; accepted.
    #[arg(long)]
    pub enable_chunked_prefill: bool,
    /// Refused: chunked prefill cannot be turned off.
    #[arg(long)]
    pub no_enable_chunked_prefill: bool,

    // Accepted with no effect (a start-up line says so).
    #[arg(long, hide = true)]
    pub trust_remote_code: bool,
    #[arg(long, hide = true, value_name = "PORT")]
    pub engine_worker_queue_port: Option<String>,
    #[arg(long, hide = true, value_name = "PORT")]
    pub cache_queue_port: Option<String>,
    #[arg(long, hide = true, value_name = "N")]
    pub api_server_count: Option<String>,
    #[arg(long, hide = true, value_name = "N")]
    pub workers: Option<String>,
    #[arg(long, hide = true)]
    pub disable_log_stats: bool,
    #[arg(long, hide = true)]
    pub disable_log_requests: bool,
    #[arg(long, hide = true, value_name = "JSON")]
    pub additional_config: Option<String>,
}

/// What the engine flags resolve to.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineSettings {
    pub engine: EngineConfig,
    /// `--revision`, for resolving a hub repo id.
    pub revision: Option<String>,
    /// Bytes of the preprocessed-image cache (`--mm-processor-cache-gb`); 0 is off.
    pub image_cache_bytes: usize,
    /// `--chat-template`: replaces the checkpoint's template.
    pub chat_template: Option<PathBuf>,
    /// `--reasoning-parser`: `serve` splits thinking text into `reasoning_content`.
    pub reasoning_parser: Option<ReasoningParser>,
    /// One line per accepted flag that has no effect here, or that was adjusted.
    pub notes: Vec<String>,
}

impl EngineArgs {
    /// Applies the flags to [`EngineConfig::default`]. An error names the flag and why.
    pub fn resolve(&self) -> Result<EngineSettings, String> {
        let defaults = EngineConfig::default();
        let reasoning_parser = self
            .reasoning_parser
            .as_deref()
            .map(ReasoningParser::from_name)
            .transpose()
            .map_err(|e| e.to_string())?;
        let mut notes = Vec::new();
        let mut engine = EngineConfig {
            max_model_len: self.max_model_len,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            gpu_memory_utilization: self.gpu_memory_utilization,
            enable_prefix_caching: pick(
                self.enable_prefix_caching,
                self.no_enable_prefix_caching,
                defaults.enable_prefix_caching,
            ),
            enforce_eager: self.enforce_eager,
            async_scheduling: pick(
                self.async_scheduling,
                self.no_async_scheduling,
                defaults.async_scheduling,
            ),
            model: self.model.as_ref().map(PathBuf::from),
            num_gpu_blocks_override: self.num_gpu_blocks_override,
            load_format: self.load_format,
            quantization: self.quantization.unwrap_or_default(),
            ..defaults
        };
        if let Some(json) = &self.compilation_config {
            apply_graph_choice(
                &mut engine,
                "--compilation-config",
                compilation_graphs(json, &mut notes)?,
                &mut notes,
            );
        }
        if let Some(json) = &self.graph_optimization_config {
            apply_graph_choice(
                &mut engine,
                "--graph-optimization-config",
                fastdeploy_graphs(json, &mut notes)?,
                &mut notes,
            );
        }
        if self.no_enable_chunked_prefill {
            return Err(
                "--no-enable-chunked-prefill: ocrvl always splits long prefills into chunks of \
                        --max-num-batched-tokens; that cannot be turned off"
                    .into(),
            );
        }
        if self.enable_chunked_prefill {
            notes.push(no_effect("--enable-chunked-prefill", "chunked prefill is always on"));
        }
        let no_effect_flags: [(bool, &str, &str); 8] = [
            (
                self.trust_remote_code,
                "--trust-remote-code",
                "ocrvl runs no code from the checkpoint",
            ),
            (
                self.engine_worker_queue_port.is_some(),
                "--engine-worker-queue-port",
                "the engine runs in this process",
            ),
            (
                self.cache_queue_port.is_some(),
                "--cache-queue-port",
                "the KV cache lives in this process",
            ),
            (
                self.api_server_count.is_some(),
                "--api-server-count",
                "one multi-threaded HTTP server serves every connection",
            ),
            (
                self.workers.is_some(),
                "--workers",
                "one multi-threaded HTTP server serves every connection",
            ),
            (
                self.disable_log_stats,
                "--disable-log-stats",
                "ocrvl logs no periodic statistics (see /metrics)",
            ),
            (
                self.disable_log_requests,
                "--disable-log-requests",
                "ocrvl does not log requests",
            ),
            (
                self.additional_config.is_some(),
                "--additional-config",
                "it configures vLLM plugins (Ascend)",
            ),
        ];
        for (given, flag, why) in no_effect_flags {
            if given {
                notes.push(no_effect(flag, why));
            }
        }
        for (given, flag) in [
            (self.tensor_parallel_size.is_some(), "--tensor-parallel-size 1"),
            (self.pipeline_parallel_size.is_some(), "--pipeline-parallel-size 1"),
            (self.data_parallel_size.is_some(), "--data-parallel-size 1"),
        ] {
            if given {
                notes.push(no_effect(flag, "ocrvl runs on one GPU"));
            }
        }
        Ok(EngineSettings {
            engine,
            revision: self.revision.clone(),
            image_cache_bytes: (self.mm_processor_cache_gb * (1u64 << 30) as f64) as usize,
            chat_template: self.chat_template.clone(),
            reasoning_parser,
            notes,
        })
    }
}

/// The engine flags alone, parsed from `args` (without a program name): for tests and tools.
pub fn parse_engine_flags<S: AsRef<str>>(args: &[S]) -> Result<EngineSettings, String> {
    #[derive(Parser)]
    #[command(name = "engine", args_override_self = true, allow_negative_numbers = true)]
    struct Only {
        #[command(flatten)]
        engine: EngineArgs,
    }
    let argv = std::iter::once("engine".to_string()).chain(normalize_flag_spelling(args.iter().map(|a| a.as_ref())));
    let only = Only::try_parse_from(argv).map_err(|e| e.to_string())?;
    only.engine.resolve()
}

/// vLLM's spelling rule: in `--flag_name` (and `--flag_name=value`) underscores mean dashes.
/// Values and positional arguments are left alone, and so is everything after `--`.
pub fn normalize_flag_spelling<I, S>(args: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut rest_literal = false;
    args.into_iter()
        .map(|a| {
            let a = a.as_ref();
            if rest_literal || !a.starts_with("--") || a == "--" {
                rest_literal |= a == "--";
                return a.to_string();
            }
            match a.split_once('=') {
                Some((name, value)) => format!("{}={value}", name.replace('_', "-")),
                None => a.replace('_', "-"),
            }
        })
        .collect()
}

fn no_effect(flag: &str, why: &str) -> String {
    format!("{flag} has no effect here: {why}")
}

/// The value of a `--x` / `--no-x` pair; clap keeps only the last one given.
fn pick(on: bool, off: bool, default: bool) -> bool {
    if off {
        false
    } else {
        on || default
    }
}

/// Graphs on (`Some(true)`), off (`Some(false)`), or not said (`None`).
fn apply_graph_choice(engine: &mut EngineConfig, flag: &str, graphs: Option<bool>, notes: &mut Vec<String>) {
    match graphs {
        Some(false) => engine.enforce_eager = true,
        Some(true) if engine.enforce_eager => {
            notes.push(format!("{flag} asks for CUDA graphs; --enforce-eager wins, as in vLLM"))
        }
        _ => {}
    }
}

/// vLLM's `--compilation-config`: a JSON object, or a bare optimisation level (`3`).
fn compilation_graphs(json: &str, notes: &mut Vec<String>) -> Result<Option<bool>, String> {
    const FLAG: &str = "--compilation-config";
    if json.trim().parse::<u32>().is_ok() {
        notes.push(no_effect(
            &format!("{FLAG} {json}"),
            "ocrvl has no torch.compile levels",
        ));
        return Ok(None);
    }
    let map = json_object(FLAG, json)?;
    let mut graphs = None;
    for (key, value) in &map {
        match key.as_str() {
            "cudagraph_mode" => {
                let mode = value
                    .as_str()
                    .ok_or_else(|| format!("{FLAG}: cudagraph_mode must be a string"))?;
                graphs = Some(match mode.to_ascii_uppercase().as_str() {
                    "FULL_DECODE_ONLY" => true,
                    "FULL" | "PIECEWISE" | "FULL_AND_PIECEWISE" => {
                        notes.push(format!(
                            "{FLAG}: cudagraph_mode {mode}: ocrvl captures CUDA graphs for decode steps only \
                             (as FULL_DECODE_ONLY); prefill steps run eagerly"
                        ));
                        true
                    }
                    "NONE" => false,
                    other => {
                        return Err(format!(
                            "{FLAG}: cudagraph_mode `{other}` is not one of NONE, FULL_DECODE_ONLY, FULL, \
                             PIECEWISE, FULL_AND_PIECEWISE"
                        ))
                    }
                });
            }
            // Which batch sizes get graphs and how torch compiles: speed only, never results.
            "level"
            | "mode"
            | "cudagraph_capture_sizes"
            | "max_capture_size"
            | "max_cudagraph_capture_size"
            | "use_inductor"
            | "backend"
            | "compile_sizes"
            | "cudagraph_num_of_warmups" => {
                notes.push(no_effect(
                    &format!("{FLAG} key `{key}`"),
                    "ocrvl sizes its decode graphs from --max-num-seqs and compiles nothing",
                ));
            }
            other => {
                return Err(format!(
                    "{FLAG}: key `{other}` is not understood by ocrvl (it reads cudagraph_mode; \
                     level, mode and capture sizes are accepted with no effect)"
                ))
            }
        }
    }
    Ok(graphs)
}

/// FastDeploy's `--graph-optimization-config`, e.g. `{"graph_opt_level":0, "use_cudagraph":true}`.
fn fastdeploy_graphs(json: &str, notes: &mut Vec<String>) -> Result<Option<bool>, String> {
    const FLAG: &str = "--graph-optimization-config";
    let map = json_object(FLAG, json)?;
    let mut graphs = None;
    for (key, value) in &map {
        match key.as_str() {
            "use_cudagraph" => {
                graphs = Some(
                    value
                        .as_bool()
                        .ok_or_else(|| format!("{FLAG}: use_cudagraph must be true or false"))?,
                )
            }
            "graph_opt_level" | "cudagraph_capture_sizes" | "max_capture_batch_size" | "full_cuda_graph" => {
                notes.push(no_effect(
                    &format!("{FLAG} key `{key}`"),
                    "ocrvl sizes its decode graphs from --max-num-seqs",
                ))
            }
            other => return Err(format!("{FLAG}: key `{other}` is not understood by ocrvl")),
        }
    }
    Ok(graphs)
}

fn json_object(flag: &str, json: &str) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{flag}: expected a JSON object, got `{json}`")),
        Err(e) => Err(format!("{flag}: not valid JSON ({e}): `{json}`")),
    }
}

// Value parsers: clap puts the flag's name before each message.

fn positive(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err("expected a whole number".into()),
    }
}

fn num_seqs(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (1..=MAX_NUM_SEQS_LIMIT).contains(&n) => Ok(n),
        Ok(_) => Err(format!("must be in 1..={MAX_NUM_SEQS_LIMIT}")),
        Err(_) => Err("expected a whole number".into()),
    }
}

fn fraction(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        Ok(_) => Err("must be in (0, 1]".into()),
        Err(_) => Err("expected a number".into()),
    }
}

fn cache_gb(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 && f < (1u64 << 30) as f64 => Ok(f),
        _ => Err("expected a number of GiB >= 0 (0 turns the cache off)".into()),
    }
}

fn dtype(v: &str) -> Result<String, String> {
    match v {
        "auto" | "bfloat16" | "bf16" => Ok(v.to_string()),
        "float16" | "half" | "fp16" | "float32" | "float" | "fp32" => Err(format!(
            "ocrvl's kernels run bfloat16 only (the checkpoint's type); {v} cannot be served here"
        )),
        _ => Err("valid values: bfloat16, auto".into()),
    }
}

fn one_gpu(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(1) => Ok(1),
        Ok(_) => Err("ocrvl runs the model on one GPU (the 0.9B model fits one); only 1 is accepted".into()),
        Err(_) => Err("expected a whole number".into()),
    }
}

fn reasoning_parser(name: &str) -> Result<String, String> {
    crate::service::reasoning::ReasoningParser::from_name(name)
        .map(|_| name.to_string())
        .map_err(|e| e.to_string())
}
