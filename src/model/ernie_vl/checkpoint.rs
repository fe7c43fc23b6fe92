//! Checks an ERNIE-4.5-VL checkpoint directory (a sharded `model.safetensors.index.json` set,
//! or one `model.safetensors`) against the inventory of its config, with the loader's own
//! checking code ([`Checkpoint::validate_specs`]): the first missing, mis-shaped,
//! wrongly typed or unexpected tensor is named with its file. Only headers are read.
//!
//! Stricter than PaddleOCR-VL's check in one way: a stored tensor the inventory does not list
//! (and that is not known-unused, [`is_known_unused`]) is an error, since with 10,703 tensors
//! in a layout the spec reconstructed, an unknown name more likely means a wrong inventory or a
//! different layout (transformers-native names) than a harmless extra.

use std::path::Path;

use super::names::{expected_tensors, is_known_unused, may_be_f32};
use crate::config::ErnieVlConfig;
use crate::model::names::LM_HEAD;
use crate::model::weights::{Checkpoint, ValidatedWeights, WeightsError};
use crate::runtime::DType;

/// The model name in error messages.
const MODEL: &str = "ERNIE-4.5-VL";

/// What a passing check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErnieCheckReport {
    /// Tensors the model reads.
    pub used_tensors: usize,
    /// Their bytes as stored.
    pub used_bytes: usize,
    /// Stored tensors skipped as known-unused (a tied `lm_head.weight`, `mtp` weights).
    pub unused_skipped: usize,
    /// Safetensors files opened.
    pub files: usize,
}

/// Validates an opened checkpoint against `cfg`'s inventory.
pub fn validate<'a>(ckpt: &'a Checkpoint, cfg: &ErnieVlConfig) -> Result<ValidatedWeights<'a>, WeightsError> {
    let expected = expected_tensors(cfg);
    let dtype_ok = |spec: &crate::model::names::TensorSpec, found: DType| {
        found == spec.dtype || (found == DType::F32 && may_be_f32(&spec.name))
    };
    let known_unused = |name: &str| is_known_unused(cfg, name);
    let validated = ckpt.validate_specs(&expected, &known_unused, &dtype_ok)?;
    // The shared check treats a missing lm_head as tied; an untied ERNIE config (424B) needs it.
    if validated.lm_head_tied() && !cfg.tie_word_embeddings {
        return Err(WeightsError::MissingTensor {
            dir: ckpt.dir().to_path_buf(),
            name: LM_HEAD.to_string(),
        });
    }
    if let Some(name) = validated.unknown_skipped().first() {
        return Err(WeightsError::UnexpectedTensor {
            dir: ckpt.dir().to_path_buf(),
            model: MODEL,
            name: name.clone(),
        });
    }
    Ok(validated)
}

/// Opens `dir` and validates it against `cfg`.
pub fn check_dir(dir: &Path, cfg: &ErnieVlConfig) -> Result<ErnieCheckReport, WeightsError> {
    let ckpt = Checkpoint::open(dir)?;
    let validated = validate(&ckpt, cfg)?;
    Ok(ErnieCheckReport {
        used_tensors: validated.len(),
        used_bytes: validated.total_bytes(),
        unused_skipped: validated.unused_skipped(),
        files: ckpt.files().count(),
    })
}
