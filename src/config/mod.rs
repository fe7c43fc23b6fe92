//! Configuration: the model's `config.json` ([`model`]), the engine's flags ([`engine`]) and
//! the environment switches ([`env_flags`]).
//!
//! Every error names where the bad value came from (a file and a field, a command-line flag, or
//! an environment variable) and, for values from a fixed set, lists the valid ones, so that a
//! user can fix the input from the message alone.

pub mod cli_args;
pub mod engine;
pub mod env_flags;
pub mod ernie_vl;
pub(crate) mod fields;
pub mod model;
pub mod model_family;

pub use cli_args::{normalize_flag_spelling, parse_engine_flags, EngineArgs, EngineSettings};
pub use engine::{EngineConfig, LoadFormat, Quantization};
pub use env_flags::{EnvFlags, FlashAttnVersion, SamplingClass};
pub use ernie_vl::ErnieVlConfig;
pub use model::{ModelConfig, SpecialTokens, TextConfig, VisionConfig};
pub use model_family::{detect_model_family, FamilyConfig, ModelFamilyKind};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `origin` is the file (or "model config" for a config built in code).
    #[error("{origin}: not valid JSON: {source}")]
    Json {
        origin: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{origin}: missing field `{field}`")]
    MissingField { origin: String, field: String },

    /// The field exists but holds the wrong kind of JSON value.
    #[error("{origin}: field `{field}` must be {expected}, found {found}")]
    FieldType {
        origin: String,
        field: String,
        expected: &'static str,
        found: String,
    },

    /// A field outside a fixed set of accepted values.
    #[error("{origin}: field `{field}` has unsupported value {value}; valid values: {valid}")]
    FieldValue {
        origin: String,
        field: String,
        value: String,
        valid: String,
    },

    /// A value of the right type that breaks a rule (positive, divisible, sums to, ...).
    /// `field` is a config field or an engine flag.
    #[error("{origin}: `{field}` {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },

    /// A model family ocrvl recognises from config.json, given to a path that reads another.
    #[error("{origin}: {family} is recognised, but {missing}")]
    NotServable {
        origin: String,
        family: &'static str,
        missing: &'static str,
    },

    #[error("flag `{flag}` needs a value")]
    FlagMissingValue { flag: String },

    #[error("flag `{flag}`: invalid value {value:?}: {reason}")]
    FlagValue {
        flag: String,
        value: String,
        reason: String,
    },

    #[error("environment variable {name}={value:?} is not valid; valid values: {valid}")]
    EnvValue {
        name: &'static str,
        value: String,
        valid: &'static str,
    },
}
