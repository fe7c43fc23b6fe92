//! The full-size synthetic model that `bench`, `serve` and the C ABI use when no model
//! directory is given: written once (about 1.9 GB, seconds) and reused.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::synthetic::{write_synthetic_model, SyntheticOptions};
use crate::model::synthetic_tokenizer::write_synthetic_tokenizer;
use crate::model::weights::Checkpoint;

/// Where the synthetic model goes by default: `$OCRVL_SYNTHETIC_DIR`, else
/// `~/.cache/ocrvl/synthetic/paddleocr-vl-0.9b-seed0`.
pub fn default_synthetic_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("OCRVL_SYNTHETIC_DIR") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| {
        Error::invalid(
            "synthetic model",
            "HOME is not set: give a directory for the synthetic model",
        )
    })?;
    Ok(PathBuf::from(home).join(".cache/ocrvl/synthetic/paddleocr-vl-0.9b-seed0"))
}

/// Makes sure `dir` (or the default) holds a complete full-size synthetic PaddleOCR-VL-0.9B
/// and returns it. A complete earlier copy is reused; one without a tokenizer gets one.
pub fn ensure_synthetic_model(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => default_synthetic_dir()?,
    };
    let cfg = ModelConfig::paddleocr_vl_0_9b();
    let reusable = Checkpoint::open(&dir).ok().is_some_and(|c| c.validate(&cfg).is_ok());
    if !reusable {
        eprintln!(
            "ocrvl: writing a full-size synthetic PaddleOCR-VL-0.9B (random weights) to {}",
            dir.display()
        );
        let t = Instant::now();
        let report = write_synthetic_model(&dir, &cfg, &SyntheticOptions::default())?;
        eprintln!(
            "ocrvl:   {} tensors, {:.2} GB in {:.1} s",
            report.num_tensors,
            report.tensor_bytes as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
    } else if !dir.join("tokenizer.json").exists() {
        write_synthetic_tokenizer(&dir, &cfg)?;
    }
    Ok(dir)
}
