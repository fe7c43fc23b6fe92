//! Engine settings, with the names FastDeploy and vLLM use for them, and the environment
//! switches the engine reads. The flags are parsed in [`super::cli_args`], the environment here.

use std::path::PathBuf;

use super::model::ModelConfig;
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
        }
    }
}

impl EngineConfig {
    /// Checks the settings against each other and against the model.
    pub fn validate(&self, model: &ModelConfig) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            origin: "engine config".into(),
            field: field.into(),
            reason,
        };
        if self.max_model_len == 0 {
            return Err(invalid("--max-model-len", "must be at least 1".into()));
        }
        let max_pos = model.text.max_position_embeddings;
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

/// Which FlashAttention generation runs the attention kernels (`FLAGS_flash_attn_version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashAttnVersion {
    /// Unset or empty: the engine picks by GPU (FA3 on sm_90 when compiled, else FA2).
    Auto,
    Fa2,
    Fa3,
}

/// Which sampler runs (`FD_SAMPLING_CLASS`, FastDeploy's name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplingClass {
    /// Unset, empty, or "base": softmax then top-k/top-p sampling.
    Base,
    /// "rejection": sort-free rejection sampling for top-k/top-p.
    Rejection,
}

/// Environment switches, read once at startup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvFlags {
    pub flash_attn_version: FlashAttnVersion,
    pub sampling_class: SamplingClass,
}

impl Default for EnvFlags {
    /// Both unset: automatic attention version, the base sampler.
    fn default() -> Self {
        EnvFlags {
            flash_attn_version: FlashAttnVersion::Auto,
            sampling_class: SamplingClass::Base,
        }
    }
}

impl EnvFlags {
    pub const FLASH_ATTN_VERSION: &'static str = "FLAGS_flash_attn_version";
    pub const SAMPLING_CLASS: &'static str = "FD_SAMPLING_CLASS";

    pub fn from_env() -> Result<EnvFlags, ConfigError> {
        Self::from_lookup(|name| {
            // A value that is not UTF-8 cannot be valid; show it lossily in the error.
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// Same as [`EnvFlags::from_env`] with `lookup` standing in for the process environment,
    /// so tests never touch (racy, process-wide) environment variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<EnvFlags, ConfigError> {
        // Empty counts as unset for both: `FOO= cmd` is how shells clear a variable.
        let read = |name: &str| lookup(name).filter(|v| !v.is_empty());

        let flash_attn_version = match read(Self::FLASH_ATTN_VERSION).as_deref() {
            None => FlashAttnVersion::Auto,
            Some("2") => FlashAttnVersion::Fa2,
            Some("3") => FlashAttnVersion::Fa3,
            Some(other) => {
                return Err(ConfigError::EnvValue {
                    name: Self::FLASH_ATTN_VERSION,
                    value: other.into(),
                    valid: "2, 3 (or unset/empty for automatic)",
                })
            }
        };
        let sampling_class = match read(Self::SAMPLING_CLASS).as_deref() {
            None | Some("base") => SamplingClass::Base,
            Some("rejection") => SamplingClass::Rejection,
            Some(other) => {
                return Err(ConfigError::EnvValue {
                    name: Self::SAMPLING_CLASS,
                    value: other.into(),
                    valid: "base, rejection (or unset for base)",
                })
            }
        };
        Ok(EnvFlags {
            flash_attn_version,
            sampling_class,
        })
    }
}
