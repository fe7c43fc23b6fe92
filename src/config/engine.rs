//! Engine settings, with the names FastDeploy and vLLM use for them. The flags are parsed in
//! [`super::cli_args`], the environment switches in [`super::env_flags`].

use std::path::PathBuf;

use super::ConfigError;
use crate::runtime::DType;

/// Upper bound of `--max-num-seqs`; the decode batch (and CUDA graph buckets) are sized for it.
pub const MAX_NUM_SEQS_LIMIT: usize = 256;

const DTYPE_VALID: &str = "bfloat16, auto";

#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Longest sequence (prompt + output) the engine accepts; sizes the KV cache block tables.
    pub max_model_len: usize,
    /// Most sequences running at once (1..=256).
    pub max_num_seqs: usize,
    /// Token budget of one engine step, prefill chunks and decodes together. The default 8192
    /// fits a full-page image prompt (at most 1280 image tokens plus text) several times over
    /// while keeping one step's activations a few hundred MB; it must be at least
    /// `max_num_seqs` so that every running sequence can decode one token per step.
    pub max_num_batched_tokens: usize,
    /// Fraction of GPU memory the engine may use (weights, activations, KV cache), in (0, 1].
    pub gpu_memory_utilization: f64,
    /// Always BF16: the checkpoint is bf16 and the kernels are bf16 only, so "auto" resolves
    /// to it and nothing else is accepted.
    pub dtype: DType,
    pub enable_prefix_caching: bool,
    /// Run every step eagerly instead of replaying CUDA graphs.
    pub enforce_eager: bool,
    /// Plan and launch the next decode step while the current one runs, its input tokens
    /// taken on the GPU (`--async-scheduling`, the default; `--no-async-scheduling` waits for
    /// each step's tokens before planning the next).
    pub async_scheduling: bool,
    pub model: Option<PathBuf>,
    /// `--num-gpu-blocks-override`: this many KV blocks instead of what the memory target
    /// allows (tests of preemption; debugging).
    pub num_gpu_blocks_override: Option<usize>,
    /// `--load-format`: the checkpoint's files, or random weights (`dummy`, for benchmarks).
    pub load_format: LoadFormat,
    /// `--quantization`: how the weights are stored on the GPU.
    pub quantization: Quantization,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_model_len: 16384,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            gpu_memory_utilization: 0.9,
            dtype: DType::BF16,
            enable_prefix_caching: true,
            enforce_eager: false,
            async_scheduling: true,
            model: None,
            num_gpu_blocks_override: None,
            load_format: LoadFormat::Files,
            quantization: Quantization::None,
        }
    }
}

impl EngineConfig {
    /// Checks the settings against each other and against the model's `max_position_embeddings`.
    pub fn validate(&self, max_position_embeddings: usize) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            origin: "engine config".into(),
            field: field.into(),
            reason,
        };
        if self.max_model_len == 0 {
            return Err(invalid("--max-model-len", "must be at least 1".into()));
        }
        let max_pos = max_position_embeddings;
        if self.max_model_len > max_pos {
            return Err(invalid(
                "--max-model-len",
                format!(
                    "({}) exceeds the model's max_position_embeddings ({max_pos})",
                    self.max_model_len
                ),
            ));
        }
        if !(1..=MAX_NUM_SEQS_LIMIT).contains(&self.max_num_seqs) {
            return Err(invalid(
                "--max-num-seqs",
                format!("({}) must be in 1..={MAX_NUM_SEQS_LIMIT}", self.max_num_seqs),
            ));
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return Err(invalid(
                "--max-num-batched-tokens",
                format!(
                    "({}) must be at least --max-num-seqs ({}) so every running sequence can \
                     decode a token each step",
                    self.max_num_batched_tokens, self.max_num_seqs
                ),
            ));
        }
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            return Err(invalid(
                "--gpu-memory-utilization",
                format!("({}) must be in (0, 1]", self.gpu_memory_utilization),
            ));
        }
        if self.dtype != DType::BF16 {
            return Err(invalid(
                "--dtype",
                format!("({}) is not supported; valid values: {DTYPE_VALID}", self.dtype),
            ));
        }
        Ok(())
    }
}

/// Where the weights come from (`--load-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadFormat {
    /// The directory's safetensors files (`auto`, vLLM's default; `safetensors` is accepted).
    #[default]
    Files,
    /// Random weights with the checkpoint's names and shapes (`dummy`).
    Dummy,
}

impl LoadFormat {
    /// vLLM's spellings: `auto` and `safetensors` read the files, `dummy` makes them up; the
    /// rest of vLLM's formats (`pt`, `gguf`, `bitsandbytes`, ...) are refused by name.
    pub fn parse(text: &str) -> Result<LoadFormat, String> {
        match text {
            "auto" | "safetensors" => Ok(LoadFormat::Files),
            "dummy" => Ok(LoadFormat::Dummy),
            other => Err(format!(
                "--load-format {other:?}: ocrvl reads safetensors checkpoints (auto, safetensors) or makes \
                 random weights for benchmarks (dummy)"
            )),
        }
    }
}

/// `--quantization`: how the weights are stored on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quantization {
    /// The checkpoint's bf16 weights as they are.
    #[default]
    None,
    /// `wint8` (FastDeploy's name): the MoE experts' weights (ERNIE-4.5-VL) as int8 with one
    /// f32 scale per output row, quantised from the bf16 checkpoint at load time; every other
    /// weight stays bf16. Halves the bytes a decode step streams.
    ExpertsInt8,
}

impl Quantization {
    /// The flag's value for this setting (`none`, `wint8`).
    pub fn flag_value(self) -> &'static str {
        match self {
            Quantization::None => "none",
            Quantization::ExpertsInt8 => "wint8",
        }
    }

    /// The flag's value: `wint8`; `none` for the default. Anything else is refused, saying
    /// what exists.
    pub fn from_flag(value: &str) -> Result<Quantization, String> {
        match value {
            "wint8" => Ok(Quantization::ExpertsInt8),
            "none" => Ok(Quantization::None),
            other => Err(format!(
                "{other} is not implemented: ocrvl has wint8 (int8 weight-only MoE experts, ERNIE-4.5-VL); \
                 otherwise it runs the bfloat16 checkpoint unquantized"
            )),
        }
    }
}
