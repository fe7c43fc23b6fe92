//! `preprocessor_config.json` (MODEL_SPEC §5.1), or the `image_processor` part of
//! `processor_config.json`, the single file transformers 5 writes for a processor and the
//! one PaddleOCR-VL-1.5 and 1.6 ship.
//!
//! The hub file carries the values that matter (mean/std 0.5, min/max pixels 112896/1003520);
//! the processor *class* defaults differ (CLIP mean/std, other pixel bounds) and are overridden
//! by the file (MODEL_SPEC §12.5). So a missing file, or a missing field, falls back to the hub
//! file's value, never to a class default. The transformers v5 spelling of the pixel bounds,
//! `size: {shortest_edge, longest_edge}`, is read when `min_pixels`/`max_pixels` are absent.

use std::path::Path;

use serde_json::{Map, Value};

use super::ernie_layout::ImageLayout;
use super::{PreprocessError, Result};
use crate::config::ModelConfig;

/// PIL's `Image.BICUBIC`, the only resampling filter implemented (and the one the hub uses).
const PIL_BICUBIC: u64 = 3;

#[derive(Clone, Debug, PartialEq)]
pub struct ProcessorConfig {
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    pub do_rescale: bool,
    /// 1/255 in the hub file. Applied in f64 and rounded to f32, as transformers' `rescale`.
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Lower bound on the resized area, in pixels (`smart_resize`).
    pub min_pixels: u64,
    /// Upper bound on the resized area, in pixels (`smart_resize`).
    pub max_pixels: u64,
    pub patch_size: usize,
    /// Always 1 for this model: no temporal duplication of patches (MODEL_SPEC §5.3).
    pub temporal_patch_size: usize,
    /// Side of the spatial merge done by the projector (2).
    pub merge_size: usize,
    /// The family's resize rule and patch order (set from the model, not read from the file).
    pub layout: ImageLayout,
}

impl Default for ProcessorConfig {
    /// The hub `preprocessor_config.json` of PaddlePaddle/PaddleOCR-VL.
    fn default() -> Self {
        ProcessorConfig {
            do_convert_rgb: true,
            do_resize: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            min_pixels: 112_896,
            max_pixels: 1_003_520,
            patch_size: 14,
            temporal_patch_size: 1,
            merge_size: 2,
            layout: ImageLayout::PaddleOcrVl,
        }
    }
}

impl ProcessorConfig {
    /// ERNIE-4.5-VL's values where its file says nothing (docs/ERNIE_4_5_VL_SPEC.md §5.1:
    /// transformers' class defaults and FastDeploy's request defaults): CLIP's mean and std,
    /// pixels in [56², 28² · 6177], and its layout.
    // CLIP's mean and std as the processors write them (more digits than an f32 keeps).
    #[allow(clippy::excessive_precision)]
    pub fn ernie_vl_defaults() -> Self {
        ProcessorConfig {
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 6177,
            layout: ImageLayout::ErnieVl,
            ..Self::default()
        }
    }

    /// `smart_resize`'s factor: resized sides are multiples of patch × merge (28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Length of one flattened patch (3 × 14 × 14 = 588).
    pub fn patch_dim(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }

    /// Reads the `image_processor` object of `dir/processor_config.json`, else
    /// `dir/preprocessor_config.json`; the hub defaults when neither exists. When both exist
    /// the first wins: it is the newer file, and the one transformers 5 reads.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_dir_over(dir, Self::default())
    }

    /// [`Self::from_dir`] with `base` giving the values (and the layout) the files leave out:
    /// [`Self::ernie_vl_defaults`] for ERNIE-4.5-VL.
    pub fn from_dir_over(dir: impl AsRef<Path>, base: Self) -> Result<Self> {
        let dir = dir.as_ref();
        let combined = dir.join("processor_config.json");
        if let Some(text) = read_optional(&combined)? {
            let origin = combined.display().to_string();
            let value: Value = serde_json::from_str(&text).map_err(|e| PreprocessError::ProcessorConfig {
                origin: origin.clone(),
                field: "(file)".into(),
                reason: format!("is not valid JSON: {e}"),
            })?;
            match value.get("image_processor") {
                Some(part @ Value::Object(_)) => {
                    return Self::from_json_str_over(&part.to_string(), &format!("{origin}: image_processor"), base);
                }
                Some(other) => {
                    return Err(invalid(
                        &origin,
                        "image_processor",
                        format!("must be an object, found {other}"),
                    ));
                }
                // A processor file without image settings: the older file may have them.
                None => {}
            }
        }
        let path = dir.join("preprocessor_config.json");
        match read_optional(&path)? {
            Some(text) => Self::from_json_str_over(&text, &path.display().to_string(), base),
            None => Ok(base),
        }
    }

    /// Parses the json; `origin` names the source in error messages.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        Self::from_json_str_over(text, origin, Self::default())
    }

    /// [`Self::from_json_str`] over `base` instead of the PaddleOCR-VL hub values.
    pub fn from_json_str_over(text: &str, origin: &str, base: Self) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| PreprocessError::ProcessorConfig {
            origin: origin.to_string(),
            field: "(file)".into(),
            reason: format!("is not valid JSON: {e}"),
        })?;
        let Value::Object(obj) = &value else {
            return Err(invalid(origin, "(top level)", "must be a JSON object".into()));
        };
        let f = Fields { obj, origin };
        let mut cfg = base;

        if let Some(resample) = f.u64("resample")? {
            if resample != PIL_BICUBIC {
                return Err(invalid(
                    origin,
                    "resample",
                    format!("is {resample}; only 3 (PIL BICUBIC) is implemented"),
                ));
            }
        }
        cfg.do_convert_rgb = f.bool("do_convert_rgb")?.unwrap_or(cfg.do_convert_rgb);
        cfg.do_resize = f.bool("do_resize")?.unwrap_or(cfg.do_resize);
        cfg.do_rescale = f.bool("do_rescale")?.unwrap_or(cfg.do_rescale);
        cfg.rescale_factor = f.f64("rescale_factor")?.unwrap_or(cfg.rescale_factor);
        cfg.do_normalize = f.bool("do_normalize")?.unwrap_or(cfg.do_normalize);
        if let Some(mean) = f.triple("image_mean")? {
            cfg.image_mean = mean;
        }
        if let Some(std) = f.triple("image_std")? {
            cfg.image_std = std;
        }
        // v5 nests the bounds in `size`; the flat keys win when both are present, as in the
        // v5 class's backward-compatibility path.
        let size = match obj.get("size") {
            Some(Value::Object(size)) => Some(Fields { obj: size, origin }),
            _ => None,
        };
        let nested = |key: &str| -> Result<Option<u64>> {
            match &size {
                Some(s) => s.u64(key),
                None => Ok(None),
            }
        };
        cfg.min_pixels = match f.u64("min_pixels")? {
            Some(v) => v,
            None => nested("shortest_edge")?.unwrap_or(cfg.min_pixels),
        };
        cfg.max_pixels = match f.u64("max_pixels")? {
            Some(v) => v,
            None => nested("longest_edge")?.unwrap_or(cfg.max_pixels),
        };
        cfg.patch_size = f.u64("patch_size")?.map_or(cfg.patch_size, |v| v as usize);
        cfg.temporal_patch_size = f
            .u64("temporal_patch_size")?
            .map_or(cfg.temporal_patch_size, |v| v as usize);
        cfg.merge_size = f.u64("merge_size")?.map_or(cfg.merge_size, |v| v as usize);
        cfg.validate_in(origin)?;
        Ok(cfg)
    }

    /// Checks the rules the preprocessing relies on.
    pub fn validate(&self) -> Result<()> {
        self.validate_in("processor config")
    }

    fn validate_in(&self, origin: &str) -> Result<()> {
        if self.patch_size == 0 {
            return Err(invalid(origin, "patch_size", "must be positive".into()));
        }
        if self.merge_size == 0 {
            return Err(invalid(origin, "merge_size", "must be positive".into()));
        }
        if self.temporal_patch_size != 1 {
            return Err(invalid(
                origin,
                "temporal_patch_size",
                format!("is {}; only 1 is implemented (images only)", self.temporal_patch_size),
            ));
        }
        if self.min_pixels > self.max_pixels {
            return Err(invalid(
                origin,
                "min_pixels",
                format!("({}) is above max_pixels ({})", self.min_pixels, self.max_pixels),
            ));
        }
        if self.max_pixels < (self.factor() * self.factor()) as u64 {
            return Err(invalid(
                origin,
                "max_pixels",
                format!("({}) is below one {0}x{0} block", self.factor()),
            ));
        }
        if !(self.rescale_factor.is_finite() && self.rescale_factor > 0.0) {
            return Err(invalid(origin, "rescale_factor", "must be a positive number".into()));
        }
        if self.image_std.iter().any(|s| !(s.is_finite() && *s != 0.0)) {
            return Err(invalid(origin, "image_std", "must be finite and non-zero".into()));
        }
        Ok(())
    }

    /// Checks that this processor produces what the model's config expects: the vision
    /// tower's patch size and the projector's merge.
    pub fn check_model(&self, model: &ModelConfig) -> Result<()> {
        let v = &model.vision;
        self.check_vision(v.patch_size, v.spatial_merge_size, v.num_channels)
    }

    /// [`Self::check_model`] from the vision config's three values (either family's).
    pub fn check_vision(&self, patch_size: usize, spatial_merge_size: usize, channels: usize) -> Result<()> {
        let origin = "preprocessor_config.json vs config.json";
        if self.patch_size != patch_size {
            return Err(invalid(
                origin,
                "patch_size",
                format!("is {} but vision_config.patch_size is {patch_size}", self.patch_size),
            ));
        }
        if self.merge_size != spatial_merge_size {
            return Err(invalid(
                origin,
                "merge_size",
                format!(
                    "is {} but vision_config.spatial_merge_size is {spatial_merge_size}",
                    self.merge_size
                ),
            ));
        }
        if channels != 3 {
            return Err(invalid(
                origin,
                "num_channels",
                format!("is {channels} in vision_config; preprocessing produces RGB"),
            ));
        }
        Ok(())
    }
}

/// `Ok(None)` when the file does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PreprocessError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn invalid(origin: &str, field: &str, reason: String) -> PreprocessError {
    PreprocessError::ProcessorConfig {
        origin: origin.to_string(),
        field: field.to_string(),
        reason,
    }
}

/// Typed, optional access to the json's fields; `null` counts as absent.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    origin: &'a str,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> PreprocessError {
        invalid(self.origin, key, format!("must be {expected}, found {found}"))
    }

    fn u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a non-negative integer", v)),
        }
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong(key, "true or false", v)),
        }
    }

    /// A per-channel list of 3 numbers; a single number applies to all channels (HF allows it).
    fn triple(&self, key: &str) -> Result<Option<[f32; 3]>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        if let Some(x) = v.as_f64() {
            return Ok(Some([x as f32; 3]));
        }
        let nums: Option<Vec<f32>> = v
            .as_array()
            .map(|items| items.iter().filter_map(|x| x.as_f64().map(|x| x as f32)).collect());
        match nums {
            Some(n) if n.len() == 3 && v.as_array().is_some_and(|a| a.len() == 3) => Ok(Some([n[0], n[1], n[2]])),
            _ => Err(self.wrong(key, "a list of 3 numbers", v)),
        }
    }
}
