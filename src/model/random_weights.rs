//! `--load-format dummy`, as vLLM spells it: the model's weights made up in memory instead of
//! read from safetensors files, so a directory with only the config, tokenizer and processor
//! files (`synth-model --arch ernie-4.5-vl-28b-a3b --config-only`) loads and runs. For
//! benchmarks: the values are the synthetic checkpoint's (seeded per tensor, the same
//! distributions as `synth-model` writes, [`super::synthetic`]), so the numerics are a trained
//! model's regime and the routers spread tokens over the experts; nothing is written to disk.
//!
//! The full ERNIE-4.5-VL-28B-A3B is 58.8 GB of bf16: generated on every core of the host in
//! anonymous memory, then uploaded as a file-backed checkpoint would be.

use std::path::Path;

use super::names::TensorSpec;
use super::synthetic::fill_tensor;
use super::weights::{Checkpoint, WeightsError};
pub use crate::config::LoadFormat;

/// The seed of the dummy weights (the synthetic checkpoints' default).
pub const DUMMY_SEED: u64 = 0;

/// The checkpoint of `specs` for `format`: the files in `dir`, or random weights in memory.
pub fn open_checkpoint(dir: &Path, specs: &[TensorSpec], format: LoadFormat) -> Result<Checkpoint, WeightsError> {
    match format {
        LoadFormat::Files => Checkpoint::open(dir),
        LoadFormat::Dummy => {
            if !dir.is_dir() {
                return Err(WeightsError::DirMissing { dir: dir.to_path_buf() });
            }
            Checkpoint::in_memory(dir, specs, &|spec, out| fill_tensor(DUMMY_SEED, spec, out))
        }
    }
}
