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

    /// A request value out of range or over a limit; `field` is its name in the OpenAI API
    /// (`temperature`, `stop`, `messages`, ...), which the server reports as the error's `param`.
    #[error("{field}: {msg}")]
    Request { field: &'static str, msg: String },

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

    /// A CUDA error after which the context is unusable (every later call fails the same way
    /// until the process exits): the engine can serve nothing more.
    pub fn is_sticky_cuda(&self) -> bool {
        use cudarc::driver::sys::CUresult as R;
        match self {
            Error::Driver { source, .. } => matches!(
                source.0,
                R::CUDA_ERROR_ILLEGAL_ADDRESS
                    | R::CUDA_ERROR_LAUNCH_FAILED
                    | R::CUDA_ERROR_HARDWARE_STACK_ERROR
                    | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
                    | R::CUDA_ERROR_MISALIGNED_ADDRESS
                    | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
                    | R::CUDA_ERROR_INVALID_PC
                    | R::CUDA_ERROR_LAUNCH_TIMEOUT
                    | R::CUDA_ERROR_ECC_UNCORRECTABLE
                    | R::CUDA_ERROR_CONTEXT_IS_DESTROYED
            ),
            // A launcher that saw a CUDA error reports its runtime name (`kernels::check`).
            Error::Invalid { msg, .. } => {
                msg.starts_with("CUDA error at launch: ")
                    && [
                        "cudaErrorIllegalAddress",
                        "cudaErrorLaunchFailure",
                        "cudaErrorHardwareStackError",
                        "cudaErrorIllegalInstruction",
                        "cudaErrorMisalignedAddress",
                        "cudaErrorInvalidAddressSpace",
                        "cudaErrorInvalidPc",
                        "cudaErrorLaunchTimeout",
                        "cudaErrorECCUncorrectable",
                    ]
                    .iter()
                    .any(|name| msg.ends_with(name))
            }
            _ => false,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys::CUresult;

    #[test]
    fn sticky_cuda_errors() {
        let driver = |r| Error::Driver {
            op: "synchronize",
            source: DriverError(r),
        };
        assert!(driver(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS).is_sticky_cuda());
        assert!(driver(CUresult::CUDA_ERROR_LAUNCH_FAILED).is_sticky_cuda());
        assert!(!driver(CUresult::CUDA_ERROR_OUT_OF_MEMORY).is_sticky_cuda());
        assert!(!driver(CUresult::CUDA_ERROR_INVALID_VALUE).is_sticky_cuda());
        assert!(!Error::invalid("submit", "x").is_sticky_cuda());
        assert!(Error::invalid("rms_norm", "CUDA error at launch: cudaErrorIllegalAddress").is_sticky_cuda());
        assert!(!Error::invalid("rms_norm", "CUDA error at launch: cudaErrorInvalidValue").is_sticky_cuda());
    }
}
