//! The environment switches the engine reads, parsed once at startup into [`EnvFlags`] and
//! passed down from there: nothing else in the crate reads the process environment for them.
//!
//! | variable | values | what |
//! | --- | --- | --- |
//! | `FLAGS_flash_attn_version` | 2, 3, unset | the attention kernels (FastDeploy's name) |
//! | `FD_SAMPLING_CLASS` | base, rejection, unset | the sampler (FastDeploy's name) |
//! | `OCRVL_QUIET` | set or unset | silences the engine's and the server's log lines |
//! | `OCRVL_GEMM_AUTOTUNE` | 0, anything else, unset | 0 keeps cuBLASLt's heuristic GEMM algorithms for the decode graphs instead of timing the candidates |
//! | `OCRVL_GREEDY_KERNEL` | 0, unset | all-greedy steps sample with the one-pass greedy kernel unless 0 (docs/notes/sampling_greedy.md) |

use super::ConfigError;
use crate::error::{Error, Result};
use crate::kernels::attention::{fa3_unavailable_reason, AttentionVersion};
use crate::runtime::Gpu;

pub use crate::kernels::sampling::SamplingClass;

/// Which FlashAttention generation runs the attention kernels (`FLAGS_flash_attn_version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashAttnVersion {
    /// Unset or empty: the engine picks by GPU (FA3 on sm_90 when compiled, else FA2).
    Auto,
    Fa2,
    Fa3,
}

impl FlashAttnVersion {
    /// The attention kernels this setting gives on `gpu`:
    /// - `Auto` (unset): the fastest path built and supported here: FA3 on sm_90 when the
    ///   build has sm_90a code, else FA2. (FA3 is at least as fast on every benchmarked shape,
    ///   see `docs/notes/attention.md`; a shape where it lost would be routed to FA2 here.)
    /// - `Fa2`: FA2, always available.
    /// - `Fa3`: FA3, or an error naming the reason (no sm_90a in this build, or not an sm_90
    ///   GPU).
    pub fn resolve(self, gpu: &Gpu) -> Result<AttentionVersion> {
        match self {
            FlashAttnVersion::Fa2 => Ok(AttentionVersion::Fa2),
            FlashAttnVersion::Auto => Ok(match fa3_unavailable_reason(gpu) {
                None => AttentionVersion::Fa3,
                Some(_) => AttentionVersion::Fa2,
            }),
            FlashAttnVersion::Fa3 => match fa3_unavailable_reason(gpu) {
                None => Ok(AttentionVersion::Fa3),
                Some(why) => Err(Error::invalid(
                    EnvFlags::FLASH_ATTN_VERSION,
                    format!("3 asks for the FA3 attention kernels, but {why}; unset it or set 2"),
                )),
            },
        }
    }

    /// Why `chosen` runs, for the log line: the setting and, when automatic, the reason.
    pub fn explain(self, gpu: &Gpu) -> String {
        match (self, fa3_unavailable_reason(gpu)) {
            (FlashAttnVersion::Auto, Some(reason)) => {
                format!("{} unset; FA3 unavailable: {reason}", EnvFlags::FLASH_ATTN_VERSION)
            }
            (FlashAttnVersion::Auto, None) => {
                format!(
                    "{} unset; FA3 is built and the GPU is sm_90",
                    EnvFlags::FLASH_ATTN_VERSION
                )
            }
            (v, _) => format!(
                "{}={}",
                EnvFlags::FLASH_ATTN_VERSION,
                if v == FlashAttnVersion::Fa2 { 2 } else { 3 }
            ),
        }
    }
}

/// Environment switches, read once at startup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvFlags {
    pub flash_attn_version: FlashAttnVersion,
    pub sampling_class: SamplingClass,
    /// `OCRVL_QUIET` is set (to anything): no log lines on stderr.
    pub quiet: bool,
    /// `OCRVL_GEMM_AUTOTUNE` is not `0`: the decode graphs' warm-up times the GEMM candidates.
    pub gemm_autotune: bool,
    /// `OCRVL_GREEDY_KERNEL` is not `0`: all-greedy steps sample with the one-pass greedy kernel.
    pub greedy_kernel: bool,
}

impl Default for EnvFlags {
    /// Everything unset: automatic attention version, the base sampler, logging on, autotuning
    /// and the greedy kernel on.
    fn default() -> Self {
        EnvFlags {
            flash_attn_version: FlashAttnVersion::Auto,
            sampling_class: SamplingClass::Base,
            quiet: false,
            gemm_autotune: true,
            greedy_kernel: true,
        }
    }
}

impl EnvFlags {
    pub const FLASH_ATTN_VERSION: &'static str = "FLAGS_flash_attn_version";
    pub const SAMPLING_CLASS: &'static str = "FD_SAMPLING_CLASS";
    pub const QUIET: &'static str = "OCRVL_QUIET";
    pub const GEMM_AUTOTUNE: &'static str = "OCRVL_GEMM_AUTOTUNE";
    pub const GREEDY_KERNEL: &'static str = "OCRVL_GREEDY_KERNEL";

    pub fn from_env() -> Result<EnvFlags, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// `OCRVL_QUIET` alone, which cannot be invalid: for the log helper (`crate::log`),
    /// which must work before (and whether or not) the other switches parse.
    pub fn quiet_from_env() -> bool {
        Self::quiet_in(process_env)
    }

    /// `OCRVL_QUIET` counts when set at all (even empty), as it always has.
    fn quiet_in(lookup: impl Fn(&str) -> Option<String>) -> bool {
        lookup(Self::QUIET).is_some()
    }

    /// Same as [`EnvFlags::from_env`] with `lookup` standing in for the process environment,
    /// so tests never touch (racy, process-wide) environment variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<EnvFlags, ConfigError> {
        let quiet = Self::quiet_in(&lookup);
        let gemm_autotune = lookup(Self::GEMM_AUTOTUNE).is_none_or(|v| v != "0");
        let greedy_kernel = lookup(Self::GREEDY_KERNEL).is_none_or(|v| v != "0");
        // Empty counts as unset for the others: `FOO= cmd` is how shells clear a variable.
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
            quiet,
            gemm_autotune,
            greedy_kernel,
        })
    }
}

/// A variable of the process environment; a value that is not UTF-8 cannot be valid and is
/// shown lossily in the error.
fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}
