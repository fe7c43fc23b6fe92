//! Synthetic checkpoints: a model directory with random bf16 weights of the right names and
//! shapes, for tests and benchmarks without the real weights.
//!
//! Values are seeded and reproducible tensor by tensor: each tensor draws from its own ChaCha8
//! stream (seed, hash of its name), so a tensor's bytes do not depend on which other tensors
//! are written, how many shards there are, or how generation is split across threads.
//! [`synthetic_tensor_data`] regenerates any one tensor for comparison.
//!
//! The full model (~958M values, ~1.9 GB) is streamed: the safetensors header is written by
//! hand (8-byte little-endian length, JSON, space padding to 8 bytes), then each tensor is
//! generated in bounded chunks and appended, so memory stays at one chunk.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::names::{expected_tensors, unused_tensors, TensorKind, TensorSpec, LM_HEAD};
pub use super::synthetic_tokenizer::CheckpointVersion;
use super::weights::{INDEX_FILE, SINGLE_FILE};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// `__metadata__` key that marks a file as synthetic; its value is "ocrvl".
pub const SYNTHETIC_KEY: &str = "synthetic";
/// `__metadata__` key holding the seed, as a decimal string.
pub const SEED_KEY: &str = "seed";

/// Values generated per chunk: 16 Mi values = 32 MiB of bf16. Large enough that thread
/// start-up and write calls are noise, small enough to keep memory flat. Even, so every chunk
/// starts on a whole 32-bit word of the random stream.
const CHUNK_VALUES: usize = 16 << 20;
/// Below this many values one thread is faster than spawning a second.
const PARALLEL_MIN_VALUES: usize = 1 << 18;

#[derive(Clone, Debug)]
pub struct SyntheticOptions {
    pub seed: u64,
    /// 1 writes `model.safetensors`; N > 1 writes N shards plus the index json.
    pub shards: usize,
    /// Also write the tensors the real checkpoint has but the model ignores.
    pub include_unused: bool,
    /// Without it the loader must fall back to the token embedding (tied lm_head).
    pub include_lm_head: bool,
    /// Multiplies the lm_head's values: random models have tiny logit margins, so greedy
    /// paths tie often; engine tests widen them (the "larger lm_head").
    pub lm_head_scale: f32,
    /// The file layout: v1 writes `preprocessor_config.json`; 1.5 writes
    /// `processor_config.json` and a tokenizer with the location and table tokens.
    pub version: CheckpointVersion,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        SyntheticOptions {
            seed: 0,
            shards: 1,
            include_unused: true,
            include_lm_head: true,
            lm_head_scale: 1.0,
            version: CheckpointVersion::V1,
        }
    }
}

/// Vocabulary of the tiny model in the 1.5 layout: the tiny 1024 has no room for the 1001
/// location tokens.
pub const TINY_V1_5_VOCAB: usize = 2048;

/// The configuration `synth-model` writes for `version`, full-size or tiny.
pub fn synthetic_config(version: CheckpointVersion, tiny: bool) -> ModelConfig {
    match (tiny, version) {
        (false, _) => ModelConfig::paddleocr_vl_0_9b(),
        (true, CheckpointVersion::V1) => ModelConfig::tiny(),
        (true, CheckpointVersion::V1_5) => {
            let mut cfg = ModelConfig::tiny();
            cfg.text.vocab_size = TINY_V1_5_VOCAB;
            cfg
        }
    }
}

/// What [`write_synthetic_model`] wrote.
#[derive(Clone, Debug)]
pub struct SyntheticReport {
    /// Every file written, config and preprocessor config included.
    pub files: Vec<PathBuf>,
    pub num_tensors: usize,
    /// Tensor bytes, headers excluded.
    pub tensor_bytes: u64,
}

/// The tensors [`write_synthetic_model`] writes for these options, in file order.
pub fn synthetic_tensor_specs(cfg: &ModelConfig, opts: &SyntheticOptions) -> Vec<TensorSpec> {
    let mut specs: Vec<TensorSpec> = expected_tensors(cfg)
        .into_iter()
        .filter(|s| opts.include_lm_head || s.name != LM_HEAD)
        .collect();
    if opts.include_unused {
        specs.extend(unused_tensors(cfg));
    }
    specs
}

/// Writes `config.json` (hub flat form plus `text_config`), the processor config (hub values;
/// its file name per `opts.version`), the tokenizer, `chat_template.jinja` and the weights into
/// `dir`, creating it if needed.
pub fn write_synthetic_model(dir: &Path, cfg: &ModelConfig, opts: &SyntheticOptions) -> Result<SyntheticReport> {
    cfg.validate()?;
    let specs = synthetic_tensor_specs(cfg, opts);
    check_shards(dir, &specs, opts.shards)?;
    std::fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;

    let mut files = Vec::new();
    let config_path = dir.join("config.json");
    write_text(&config_path, &cfg.to_hub_json())?;
    files.push(config_path);
    let (processor_path, processor_json) = match opts.version {
        CheckpointVersion::V1 => (dir.join("preprocessor_config.json"), preprocessor_config_json(cfg)),
        CheckpointVersion::V1_5 => (dir.join("processor_config.json"), processor_config_json(cfg)),
    };
    write_text(&processor_path, &processor_json)?;
    files.push(processor_path);
    super::synthetic_tokenizer::write_synthetic_tokenizer_for(dir, cfg, opts.version)?;
    files.push(dir.join("tokenizer.json"));
    files.push(dir.join("tokenizer_config.json"));
    // The hub template (both versions end the generation prompt with "Assistant:\n"), so that
    // transformers and vLLM find one without `--chat-template`.
    let template_path = dir.join("chat_template.jinja");
    write_text(&template_path, crate::preprocess::prompt::DEFAULT_CHAT_TEMPLATE)?;
    files.push(template_path);

    files.extend(write_weight_files(
        dir,
        &specs,
        opts.seed,
        opts.shards,
        opts.lm_head_scale,
    )?);
    Ok(SyntheticReport {
        files,
        num_tensors: specs.len(),
        tensor_bytes: specs.iter().map(|s| s.size_bytes() as u64).sum(),
    })
}

/// Refuses a shard count the specs cannot fill, or shards beside a `model.safetensors` that
/// would shadow them. Called before anything is written.
pub(crate) fn check_shards(dir: &Path, specs: &[TensorSpec], shards: usize) -> Result<()> {
    const OP: &str = "write_synthetic_model";
    if shards == 0 || shards > specs.len() {
        return Err(Error::invalid(
            OP,
            format!(
                "shards must be in 1..={} (one tensor per shard at least), got {}",
                specs.len(),
                shards
            ),
        ));
    }
    // The loader prefers model.safetensors over an index, so a leftover single file would
    // silently shadow the shards written now.
    if shards > 1 && dir.join(SINGLE_FILE).exists() {
        return Err(Error::invalid(
            OP,
            format!(
                "{} already holds {SINGLE_FILE}, which would shadow the shards; remove it",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Writes `specs` (random bf16 values, seeded per tensor) as `model.safetensors` when
/// `shards` is 1, else as `shards` files plus `model.safetensors.index.json`; returns the
/// files written. The family-independent half of [`write_synthetic_model`]; `dir` must exist.
pub(crate) fn write_weight_files(
    dir: &Path,
    specs: &[TensorSpec],
    seed: u64,
    shards: usize,
    lm_head_scale: f32,
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut metadata = BTreeMap::new();
    metadata.insert("format", "pt".to_string());
    metadata.insert(SYNTHETIC_KEY, "ocrvl".to_string());
    metadata.insert(SEED_KEY, seed.to_string());

    let groups = split_into_shards(specs, shards);
    let mut buffer = Vec::new();
    if shards == 1 {
        let path = dir.join(SINGLE_FILE);
        write_safetensors(&path, specs, &metadata, seed, lm_head_scale, &mut buffer)?;
        files.push(path);
    } else {
        let names: Vec<String> = (0..shards)
            .map(|k| format!("model-{:05}-of-{:05}.safetensors", k + 1, shards))
            .collect();
        write_shards_in_parallel(dir, &groups, &names, &metadata, seed, lm_head_scale)?;
        let mut weight_map = BTreeMap::new();
        for (group, file) in groups.iter().zip(&names) {
            files.push(dir.join(file));
            for spec in *group {
                weight_map.insert(spec.name.clone(), file.clone());
            }
        }
        let total: usize = specs.iter().map(TensorSpec::size_bytes).sum();
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let index_path = dir.join(INDEX_FILE);
        write_text(&index_path, &serde_json::to_string_pretty(&index).expect("json"))?;
        files.push(index_path);
    }
    Ok(files)
}

/// Writes into `out` the bytes a synthetic checkpoint with `seed` holds for `spec` (what
/// [`synthetic_tensor_data`] returns, without the allocation).
pub(crate) fn fill_tensor(seed: u64, spec: &TensorSpec, out: &mut [u8]) {
    fill_values(seed, spec, 0, 1.0, out);
}

/// The bytes (bf16, little-endian) that a synthetic checkpoint with `seed` holds for `spec`.
pub fn synthetic_tensor_data(seed: u64, spec: &TensorSpec) -> Vec<u8> {
    let mut out = vec![0u8; spec.size_bytes()];
    fill_values(seed, spec, 0, 1.0, &mut out);
    out
}

/// The hub `preprocessor_config.json` (MODEL_SPEC §5.1); patch and merge sizes follow `cfg`.
fn preprocessor_config_json(cfg: &ModelConfig) -> String {
    serde_json::to_string_pretty(&image_processor_value(cfg)).expect("json")
}

/// `processor_config.json` as transformers 5 writes a processor (PaddleOCR-VL-1.5's form): the
/// image processor's settings under `image_processor`, with the v5 `size` spelling of the
/// pixel bounds beside the flat keys.
fn processor_config_json(cfg: &ModelConfig) -> String {
    let mut image = image_processor_value(cfg);
    image["size"] = json!({"shortest_edge": image["min_pixels"], "longest_edge": image["max_pixels"]});
    let value = json!({"image_processor": image, "processor_class": "PaddleOCRVLProcessor"});
    serde_json::to_string_pretty(&value).expect("json")
}

fn image_processor_value(cfg: &ModelConfig) -> serde_json::Value {
    json!({
        "image_processor_type": "PaddleOCRVLImageProcessor",
        "processor_class": "PaddleOCRVLProcessor",
        "do_convert_rgb": true,
        "do_resize": true,
        "resample": 3,
        "do_rescale": true,
        "rescale_factor": 0.00392156862745098,
        "do_normalize": true,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "min_pixels": 112896,
        "max_pixels": 1003520,
        "patch_size": cfg.vision.patch_size,
        "temporal_patch_size": 1,
        "merge_size": cfg.vision.spatial_merge_size,
    })
}

/// Consecutive groups of roughly equal bytes; every group non-empty (caller checked
/// `shards <= specs.len()`).
fn split_into_shards(specs: &[TensorSpec], shards: usize) -> Vec<&[TensorSpec]> {
    let total: usize = specs.iter().map(TensorSpec::size_bytes).sum();
    let mut groups = Vec::with_capacity(shards);
    let mut start = 0;
    let mut bytes_before = 0;
    for k in 0..shards {
        let remaining_groups = shards - k;
        if remaining_groups == 1 {
            groups.push(&specs[start..]);
            break;
        }
        // Take at least one tensor, stop at this shard's share of the bytes, and leave at
        // least one tensor for each later shard.
        let target = total * (k + 1) / shards;
        let last_allowed = specs.len() - (remaining_groups - 1);
        let mut end = start + 1;
        bytes_before += specs[start].size_bytes();
        while end < last_allowed && bytes_before < target {
            bytes_before += specs[end].size_bytes();
            end += 1;
        }
        groups.push(&specs[start..end]);
        start = end;
    }
    groups
}

/// Writes shard `k` of `groups` to `dir/names[k]`, shards on up to `available_parallelism / 2`
/// threads (each fill already splits a large tensor in two): the full ERNIE-4.5-VL-28B-A3B
/// checkpoint is 58.8 GB, which one thread makes at about the rate of one ChaCha stream. The
/// first error wins; the files are the same bytes whatever the thread count.
fn write_shards_in_parallel(
    dir: &Path,
    groups: &[&[TensorSpec]],
    names: &[String],
    metadata: &BTreeMap<&str, String>,
    seed: u64,
    lm_head_scale: f32,
) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .clamp(1, groups.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> Result<()> {
        let mut buffer = Vec::new();
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(group) = groups.get(k) else { return Ok(()) };
            write_safetensors(&dir.join(&names[k]), group, metadata, seed, lm_head_scale, &mut buffer)?;
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut result = work();
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::invalid("write_synthetic_model", "a writer thread panicked")));
            result = result.and(r);
        }
        result
    })
}

fn write_safetensors(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<&str, String>,
    seed: u64,
    lm_head_scale: f32,
    buffer: &mut Vec<u8>,
) -> Result<()> {
    let file = File::create(path).map_err(|source| io_error(path, source))?;
    // Chunks are far larger than the buffer, so it only batches the small tensors.
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |source| io_error(path, source);
    out.write_all(&safetensors_header(specs, metadata)).map_err(io)?;
    for spec in specs {
        let numel = spec.numel();
        let mut first = 0;
        while first < numel {
            let count = CHUNK_VALUES.min(numel - first);
            buffer.resize(count * 2, 0);
            let scale = if spec.name == LM_HEAD { lm_head_scale } else { 1.0 };
            fill_values(seed, spec, first, scale, buffer);
            out.write_all(buffer).map_err(io)?;
            first += count;
        }
    }
    out.flush().map_err(io)?;
    Ok(())
}

/// `u64` little-endian header length, then the JSON header padded with spaces to a multiple
/// of 8 (the format allows trailing whitespace; padding keeps the data section 8-aligned).
fn safetensors_header(specs: &[TensorSpec], metadata: &BTreeMap<&str, String>) -> Vec<u8> {
    let mut header = String::from("{\"__metadata__\":");
    header.push_str(&serde_json::to_string(metadata).expect("json"));
    let mut offset = 0;
    for spec in specs {
        let end = offset + spec.size_bytes();
        let entry = json!({
            "dtype": spec.dtype.safetensors_name(),
            "shape": spec.shape,
            "data_offsets": [offset, end],
        });
        header.push(',');
        header.push_str(&serde_json::to_string(&spec.name).expect("json"));
        header.push(':');
        header.push_str(&entry.to_string());
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + header.len());
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes
}

/// Fills `out` (bf16 bytes) with values `first..` of the tensor, on two threads when large.
/// `first` must be even: each 32-bit word of the random stream yields two values.
fn fill_values(seed: u64, spec: &TensorSpec, first: usize, scale: f32, out: &mut [u8]) {
    debug_assert!(first % 2 == 0 && out.len() % 2 == 0);
    let count = out.len() / 2;
    if count < PARALLEL_MIN_VALUES {
        fill_values_serial(seed, spec, first, scale, out);
        return;
    }
    // Split at a multiple of 4 bytes (two values) so the second half starts on a word.
    let mid = (out.len() / 2) & !3;
    let (head, tail) = out.split_at_mut(mid);
    std::thread::scope(|scope| {
        scope.spawn(|| fill_values_serial(seed, spec, first, scale, head));
        fill_values_serial(seed, spec, first + mid / 2, scale, tail);
    });
}

/// `scale` multiplies the distribution's half-width (1 everywhere but a scaled lm_head).
fn fill_values_serial(seed: u64, spec: &TensorSpec, first: usize, scale: f32, out: &mut [u8]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(name_hash(&spec.name));
    rng.set_word_pos(first as u128 / 2);
    rng.fill_bytes(out);
    let (center, half_width) = distribution(spec.kind);
    let half_width = half_width * scale;
    // Each little-endian u16 of random bits becomes one value, in place. A final lone u16
    // (odd count) is the low half of its word, as in a full-word split.
    for value in out.chunks_exact_mut(2) {
        let bits = u16::from_le_bytes([value[0], value[1]]);
        // Map to the open interval (-1, 1): 65536 evenly spaced points, symmetric about 0.
        let unit = (bits as f32 + 0.5) * (2.0 / 65536.0) - 1.0;
        let bf16 = f32_to_bf16_bits(center + half_width * unit);
        value.copy_from_slice(&bf16.to_le_bytes());
    }
}

/// (center, half-width) of the uniform distribution for each kind of tensor. Uniform on
/// [c − a, c + a] has std a/√3, so a = √3 · std.
///
/// - Linear weights: std 1/√fan_in. A dot product of fan_in unit-variance inputs then has unit
///   variance, so activations neither blow up (inf/NaN in bf16) nor vanish across the 27 + 18
///   layers, and attention scores stay O(1): the synthetic model runs the same numeric regime
///   as a trained one.
/// - Norm weights 1 ± small (std 0.05), so norms are near identity but per-channel scales still
///   differ and a kernel that ignores the weight fails tests.
/// - Biases and norm shifts: std 0.02, small next to unit activations.
/// - Embeddings: std 0.02, the config's `initializer_range`; RMSNorm / LayerNorm rescale them.
fn distribution(kind: TensorKind) -> (f32, f32) {
    let sqrt3 = 3f32.sqrt();
    match kind {
        TensorKind::Linear { fan_in } => (0.0, sqrt3 / (fan_in as f32).sqrt()),
        TensorKind::NormWeight => (1.0, sqrt3 * 0.05),
        TensorKind::Bias | TensorKind::NormBias | TensorKind::Embedding => (0.0, sqrt3 * 0.02),
    }
}

/// Round-to-nearest-even f32 → bf16. Branch-free (so the loop vectorises); only valid for
/// finite inputs, which the bounded distributions above guarantee.
fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounding = 0x7fff + ((bits >> 16) & 1);
    ((bits + rounding) >> 16) as u16
}

/// FNV-1a: a fixed, platform-independent hash choosing each tensor's ChaCha stream.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(crate) fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| io_error(path, source))
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        // Spread over all finite bit patterns, plus exact ties that round to even both ways.
        let ties = [0x3f80_8000u32, 0x3f81_8000, 0xbf80_8000, 0xbf81_8000];
        let spread = (0..200_000u32).map(|i| i.wrapping_mul(21_474));
        for bits in spread.chain(ties) {
            let x = f32::from_bits(bits);
            if x.is_finite() {
                assert_eq!(f32_to_bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{bits:#x}");
            }
        }
    }

    #[test]
    fn chunked_and_threaded_generation_equals_one_pass() {
        let spec = TensorSpec {
            name: "x".into(),
            shape: vec![3 * PARALLEL_MIN_VALUES + 1],
            dtype: crate::runtime::DType::BF16,
            kind: TensorKind::Linear { fan_in: 64 },
        };
        let whole = synthetic_tensor_data(7, &spec);
        let mut parts = vec![0u8; whole.len()];
        let split = 2 * PARALLEL_MIN_VALUES; // even value index, as the writer guarantees
        let (a, b) = parts.split_at_mut(split * 2);
        fill_values_serial(7, &spec, 0, 1.0, a);
        fill_values(7, &spec, split, 1.0, b);
        assert_eq!(whole, parts);
    }

    #[test]
    fn shards_are_balanced_and_non_empty() {
        let specs = synthetic_tensor_specs(&ModelConfig::tiny(), &SyntheticOptions::default());
        for shards in [1, 2, 3, 7, specs.len()] {
            let groups = split_into_shards(&specs, shards);
            assert_eq!(groups.len(), shards);
            assert!(groups.iter().all(|g| !g.is_empty()));
            assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), specs.len());
        }
    }
}
