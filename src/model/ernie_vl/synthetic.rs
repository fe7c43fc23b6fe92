//! Synthetic ERNIE-4.5-VL checkpoints: a hub-layout directory with random bf16 weights of the
//! real names and shapes (sharded, with `model.safetensors.index.json`), the flat
//! `config.json`, `preprocessor_config.json`, `generation_config.json`, a WordLevel tokenizer
//! with the ERNIE special tokens, and a chat template following spec §6.3.
//!
//! The weights go through the PaddleOCR-VL writer ([`write_weight_files`]): streamed in
//! bounded chunks, seeded per tensor. The full 28B-A3B set is ~58.8 GB; [`synthetic_size`]
//! gives its size from the inventory without writing or allocating tensor data.

use std::collections::HashSet;
use std::path::Path;

use serde_json::json;

use super::names::{active_params_per_text_token, expected_tensors};
use crate::config::ErnieVlConfig;
use crate::error::{Error, Result};
use crate::model::names::TensorSpec;
use crate::model::synthetic::{check_shards, io_error, write_text, write_weight_files, SyntheticReport};
use crate::model::synthetic_tokenizer::word_level_tokenizer_json;

/// `--arch` value of `synth-model` for this family.
pub const ARCH: &str = "ernie-4.5-vl-28b-a3b";

/// `<|begin_of_sentence|>` in the ERNIE-4.5 vocabulary (spec §6.2, expected; same as
/// PaddleOCR-VL's).
const BEGIN_OF_SENTENCE_ID: u32 = 100_273;

/// Words of the chat template, so rendered prompts tokenise without `<unk>`.
const PROMPT_WORDS: [&str; 4] = ["User", "Assistant", "Picture", "Video"];

/// The chat template (spec §6.3, written from its description; the real checkpoint's template
/// is to be rendered as shipped). Thinking is off unless `enable_thinking` is true, as in the
/// current transformers converter.
pub const CHAT_TEMPLATE: &str = include_str!("chat_template.jinja");

#[derive(Clone, Debug)]
pub struct ErnieSyntheticOptions {
    pub seed: u64,
    /// Safetensors files (at least 2: the hub checkpoint is sharded, so the index is tested).
    pub shards: usize,
    /// False writes every file but the weights (`synth-model --config-only`): the config,
    /// tokenizer and processor files to put beside weights from elsewhere, such as the
    /// directory transformers saved, or for an engine that makes up its own weights (vLLM's
    /// `load_format="dummy"`).
    pub weights: bool,
}

impl ErnieSyntheticOptions {
    /// 3 shards for the tiny model; 12 of ~5 GB for the full one (the hub has 12 files of
    /// about that size; the count matters only for the test of the index).
    pub fn for_model(tiny: bool) -> Self {
        ErnieSyntheticOptions {
            seed: 0,
            shards: if tiny { 3 } else { 12 },
            weights: true,
        }
    }
}

/// Sizes of a synthetic (or real) checkpoint of `cfg`, from the inventory alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErnieSize {
    pub tensors: usize,
    pub params: usize,
    /// bf16 bytes of the tensor data (headers excluded).
    pub bytes: usize,
    /// [`active_params_per_text_token`].
    pub active_params: usize,
}

/// What `synth-model --dry-run` prints.
pub fn synthetic_size(cfg: &ErnieVlConfig) -> ErnieSize {
    let specs = expected_tensors(cfg);
    ErnieSize {
        tensors: specs.len(),
        params: specs.iter().map(TensorSpec::numel).sum(),
        bytes: specs.iter().map(TensorSpec::size_bytes).sum(),
        active_params: active_params_per_text_token(cfg),
    }
}

/// Writes the whole directory (see the module doc) into `dir`, creating it if needed.
pub fn write_synthetic_model(dir: &Path, cfg: &ErnieVlConfig, opts: &ErnieSyntheticOptions) -> Result<SyntheticReport> {
    cfg.validate_in("ERNIE-4.5-VL model config")?;
    let specs = expected_tensors(cfg);
    if opts.shards < 2 {
        return Err(Error::invalid(
            "write_synthetic_model",
            format!(
                "ERNIE-4.5-VL checkpoints are sharded: shards must be at least 2, got {}",
                opts.shards
            ),
        ));
    }
    check_shards(dir, &specs, opts.shards)?;
    std::fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;

    let specials = special_tokens(cfg)?;
    let id_of = |content: &str| specials.iter().find(|s| s.1 == content).map(|s| s.0);
    let texts = [
        ("config.json", cfg.to_hub_json()?),
        ("preprocessor_config.json", preprocessor_config_json(cfg)),
        (
            "generation_config.json",
            generation_config_json(cfg, id_of("<|end_of_sentence|>")),
        ),
        ("tokenizer.json", tokenizer_json(cfg, &specials)?),
        ("tokenizer_config.json", tokenizer_config_json()),
        ("chat_template.jinja", CHAT_TEMPLATE.to_string()),
    ];
    let mut files = Vec::new();
    for (name, text) in texts {
        let path = dir.join(name);
        write_text(&path, &text)?;
        files.push(path);
    }
    if !opts.weights {
        return Ok(SyntheticReport {
            files,
            num_tensors: 0,
            tensor_bytes: 0,
        });
    }
    files.extend(write_weight_files(dir, &specs, opts.seed, opts.shards, 1.0)?);
    Ok(SyntheticReport {
        files,
        num_tensors: specs.len(),
        tensor_bytes: specs.iter().map(|s| s.size_bytes() as u64).sum(),
    })
}

/// Added tokens (id, content, special): SentencePiece's `<unk>` `<s>` `</s>`, the image and
/// video tokens at the config's ids, `<|begin_of_sentence|>` at its real id when the
/// vocabulary reaches it, then `<|end_of_sentence|>`, `<think>`, `</think>` on the first free
/// ids above the others (their real ids are not confirmed, spec §6.2).
pub fn special_tokens(cfg: &ErnieVlConfig) -> Result<Vec<(u32, String, bool)>> {
    let t = &cfg.tokens;
    let vocab = cfg.text.vocab_size as u32;
    let mut out: Vec<(u32, String)> = vec![
        (0, "<unk>".into()),
        (1, "<s>".into()),
        (2, "</s>".into()),
        (t.image_token_id, "<|IMAGE_PLACEHOLDER|>".into()),
        (t.image_start_token_id, "<|IMAGE_START|>".into()),
        (t.image_end_token_id, "<|IMAGE_END|>".into()),
        (t.video_start_token_id, "<|VIDEO_START|>".into()),
        (t.video_end_token_id, "<|VIDEO_END|>".into()),
    ];
    if let Some(v) = t.video_token_id {
        out.push((v, "<|VIDEO_PLACEHOLDER|>".into()));
    }
    let taken: HashSet<u32> = out.iter().map(|s| s.0).collect();
    if taken.len() != out.len() {
        return Err(Error::invalid("synthetic tokenizer", "two special tokens share an id"));
    }
    if BEGIN_OF_SENTENCE_ID < vocab && !taken.contains(&BEGIN_OF_SENTENCE_ID) {
        out.push((BEGIN_OF_SENTENCE_ID, "<|begin_of_sentence|>".into()));
    }
    let mut rest = vec!["<|end_of_sentence|>", "<think>", "</think>"];
    if !out.iter().any(|s| s.1 == "<|begin_of_sentence|>") {
        rest.insert(0, "<|begin_of_sentence|>");
    }
    for content in rest {
        let taken: HashSet<u32> = out.iter().map(|s| s.0).collect();
        let start = taken.iter().max().copied().unwrap_or(0) + 1;
        let id = (start..vocab)
            .chain(3..start)
            .find(|id| !taken.contains(id))
            .ok_or_else(|| Error::invalid("synthetic tokenizer", format!("no free id for {content}")))?;
        out.push((id, content.into()));
    }
    if let Some((id, content)) = out.iter().find(|s| s.0 >= vocab) {
        return Err(Error::invalid(
            "synthetic tokenizer",
            format!("{content} at id {id} is outside the vocabulary of {vocab}"),
        ));
    }
    Ok(out.into_iter().map(|(id, content)| (id, content, true)).collect())
}

fn tokenizer_json(cfg: &ErnieVlConfig, specials: &[(u32, String, bool)]) -> Result<String> {
    let mut pieces: Vec<String> = PROMPT_WORDS.iter().map(|w| w.to_string()).collect();
    pieces.extend((0x20u8..0x7f).map(|c| (c as char).to_string()));
    pieces.push("\n".to_string());
    word_level_tokenizer_json(cfg.text.vocab_size as u32, specials, pieces)
}

/// transformers' converter settings (spec §6.1), with the template beside it in
/// `chat_template.jinja`.
fn tokenizer_config_json() -> String {
    let value = json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "cls_token": "<|begin_of_sentence|>",
        "sep_token": "<|end_of_sentence|>",
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "extra_special_tokens": {"image_token": "<|IMAGE_PLACEHOLDER|>"},
    });
    serde_json::to_string_pretty(&value).expect("json")
}

/// Spec §5.1 values, flat and in transformers' `size` spelling.
fn preprocessor_config_json(cfg: &ErnieVlConfig) -> String {
    const MIN_PIXELS: u64 = 3136;
    const MAX_PIXELS: u64 = 4_842_768;
    let value = json!({
        "image_processor_type": "Ernie4_5_VLMoeImageProcessor",
        "processor_class": "Ernie4_5_VLMoeProcessor",
        "do_convert_rgb": true,
        "do_resize": true,
        "resample": 3,
        "do_rescale": true,
        "rescale_factor": 0.00392156862745098,
        "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": cfg.vision.patch_size,
        "temporal_patch_size": 1,
        "merge_size": cfg.vision.spatial_merge_size,
    });
    serde_json::to_string_pretty(&value).expect("json")
}

/// Stop ids: the config's EOS ids plus `<|end_of_sentence|>`, which closes assistant turns
/// (spec §6.2; the real file is to be verified).
fn generation_config_json(cfg: &ErnieVlConfig, end_of_sentence: Option<u32>) -> String {
    let mut eos = cfg.tokens.eos_token_ids.clone();
    eos.extend(end_of_sentence);
    let value = json!({
        "bos_token_id": cfg.tokens.bos_token_id,
        "pad_token_id": cfg.tokens.pad_token_id,
        "eos_token_id": eos,
    });
    serde_json::to_string_pretty(&value).expect("json")
}
