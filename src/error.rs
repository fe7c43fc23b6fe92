//! One error type for the crate. Every variant names the operation that failed, so a message
//! read in a log says what to look at without a backtrace.

use std::path::PathBuf;

use cudarc::cublaslt::result::CublasError;
use cudarc::driver::DriverError;

use crate::sys::OcrvlStatus;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libcuda could not be loaded or reports no device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),

    #[error("CUDA driver call `{op}` failed: {source}")]
    Driver {
        op: &'static str,
        #[source]
        source: DriverError,
    },

    #[error("cuBLASLt call `{op}` failed: {source}")]
    Cublas {
        op: &'static str,
        #[source]
        source: CublasError,
    },

    /// A launcher in `kernels/` returned a status other than OK.
    #[error("kernel `{op}` failed: {status:?}")]
    Kernel { op: &'static str, status: OcrvlStatus },

    /// Arguments that do not fit an operation (shape, dtype, length, alignment).
    #[error("`{op}`: {msg}")]
    Invalid { op: &'static str, msg: String },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    #[error(transparent)]
    Weights(#[from] crate::model::weights::WeightsError),

    /// The service is starting, failed to start, or is shut down (HTTP 503).
    #[error("engine not available: {0}")]
    NotReady(String),

    /// Images, prompts and tokenizer files (decode, resize, template, tokenise).
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),

    /// `--model` as a directory or hub repo id: not found, offline, download failed.
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid { op, msg: msg.into() }
    }
}

/// Attaches an operation name to a driver error: `stream.synchronize().op("synchronize")?`.
pub trait DriverResultExt<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> DriverResultExt<T> for std::result::Result<T, DriverError> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Driver { op, source })
    }
}

impl<T> DriverResultExt<T> for std::result::Result<T, CublasError> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Cublas { op, source })
    }
}
