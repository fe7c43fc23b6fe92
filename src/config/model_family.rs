//! Which model family a checkpoint's `config.json` describes, decided once from its
//! `architectures` and `model_type` before any family's parser runs, so that a directory of
//! another family gets a message about that family instead of a field error of this one.

use std::path::Path;

use serde_json::Value;

use super::ernie_vl::ErnieVlConfig;
use super::{ConfigError, ModelConfig};

/// The families ocrvl knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFamilyKind {
    /// PaddleOCR-VL (and any config that names no other family: the historical default).
    PaddleOcrVl,
    /// ERNIE-4.5-VL (28B-A3B and its Thinking variant; 424B-A47B needs eight GPUs).
    ErnieVl,
}

/// `model_type` values of ERNIE-4.5-VL: Baidu's flat hub file, transformers' native config and
/// the name of transformers' development port (spec §1, §2).
const ERNIE_MODEL_TYPES: [&str; 3] = ["ernie4_5_moe_vl", "ernie4_5_vl_moe", "ernie4_5_vl"];
/// `architectures` entries of ERNIE-4.5-VL (with and without transformers' deprecated alias).
const ERNIE_ARCHITECTURES: [&str; 2] = [
    "Ernie4_5_VLMoeForConditionalGeneration",
    "Ernie4_5_VL_MoeForConditionalGeneration",
];

/// Why a PaddleOCR-VL-only path refuses an ERNIE-4.5-VL directory: the message's tail.
pub const ERNIE_MISSING: &str = "this path reads PaddleOCR-VL configs only (the engine, `serve` and \
     `synth-model --arch ernie-4.5-vl-28b-a3b` take ERNIE-4.5-VL; the PaddleOCR-VL task prompts, \
     workloads and C ABI tasks do not); see docs/ERNIE_4_5_VL_SPEC.md";

/// The family of a parsed `config.json`. Anything that is not recognisably ERNIE-4.5-VL is
/// PaddleOCR-VL, whose parser then reports what is wrong with it (unchanged behaviour).
pub fn detect_model_family(config: &Value) -> ModelFamilyKind {
    let model_type = config.get("model_type").and_then(Value::as_str);
    let archs = config.get("architectures").and_then(Value::as_array);
    let named_arch = archs.is_some_and(|list| {
        list.iter()
            .filter_map(Value::as_str)
            .any(|a| ERNIE_ARCHITECTURES.contains(&a))
    });
    if model_type.is_some_and(|t| ERNIE_MODEL_TYPES.contains(&t)) || named_arch {
        ModelFamilyKind::ErnieVl
    } else {
        ModelFamilyKind::PaddleOcrVl
    }
}

/// Reads `dir/config.json` and detects its family.
pub fn detect_model_family_in(dir: &Path) -> Result<ModelFamilyKind, ConfigError> {
    let (value, _) = read_config_json(dir)?;
    Ok(detect_model_family(&value))
}

/// `dir/config.json` as JSON, and its path for messages.
pub fn read_config_json(dir: &Path) -> Result<(Value, String), ConfigError> {
    let path = dir.join("config.json");
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io { path, source })?;
    let value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
        origin: origin.clone(),
        source,
    })?;
    Ok((value, origin))
}

/// The error of a PaddleOCR-VL-only path given an ERNIE-4.5-VL config. A broken ERNIE config
/// gets its own field error first (the parser runs), so the user fixes the file before learning
/// the rest.
pub fn not_servable(config: &Value, origin: &str) -> ConfigError {
    if let Err(err) = ErnieVlConfig::from_json_value(config, origin) {
        return err;
    }
    ConfigError::NotServable {
        origin: origin.to_string(),
        family: "ERNIE-4.5-VL",
        missing: ERNIE_MISSING,
    }
}

/// A parsed `config.json` of either family: what the engine and the service read before they
/// know which model they load.
#[derive(Clone, Debug, PartialEq)]
pub enum FamilyConfig {
    PaddleOcrVl(ModelConfig),
    ErnieVl(ErnieVlConfig),
}

impl FamilyConfig {
    /// Detects the family of `dir/config.json` and parses it with that family's parser.
    pub fn from_dir(dir: &Path) -> Result<FamilyConfig, ConfigError> {
        let (value, origin) = read_config_json(dir)?;
        Ok(match detect_model_family(&value) {
            ModelFamilyKind::PaddleOcrVl => FamilyConfig::PaddleOcrVl(ModelConfig::from_json_value(&value, &origin)?),
            ModelFamilyKind::ErnieVl => FamilyConfig::ErnieVl(ErnieVlConfig::from_json_value(&value, &origin)?),
        })
    }

    pub fn kind(&self) -> ModelFamilyKind {
        match self {
            FamilyConfig::PaddleOcrVl(_) => ModelFamilyKind::PaddleOcrVl,
            FamilyConfig::ErnieVl(_) => ModelFamilyKind::ErnieVl,
        }
    }

    /// The longest sequence the model's rotary positions were trained for.
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            FamilyConfig::PaddleOcrVl(c) => c.text.max_position_embeddings,
            FamilyConfig::ErnieVl(c) => c.text.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            FamilyConfig::PaddleOcrVl(c) => c.text.vocab_size,
            FamilyConfig::ErnieVl(c) => c.text.vocab_size,
        }
    }

    /// PaddleOCR-VL's config, for the paths only that family has (task prompts, workloads).
    pub fn paddleocr_vl(&self) -> Option<&ModelConfig> {
        match self {
            FamilyConfig::PaddleOcrVl(c) => Some(c),
            FamilyConfig::ErnieVl(_) => None,
        }
    }
}
