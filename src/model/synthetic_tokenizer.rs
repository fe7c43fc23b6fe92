//! A tokenizer for synthetic checkpoints, so that a synthetic model directory is a complete
//! hub directory: prompts render and tokenise, and any generated id decodes to text.
//!
//! The real PaddleOCR-VL tokenizer (a SentencePiece BPE of 103424 pieces) cannot be shipped;
//! this one is a WordLevel tokenizer that covers every id of the model's vocabulary:
//! - the special tokens at the ids the config names (MODEL_SPEC §6.5),
//!   `<|begin_of_sentence|>` at 100273 when the vocabulary reaches it, and
//!   `<|end_of_sentence|>` (the sep_token) on the next free id;
//! - the words and characters of the chat template and the task prompts, then printable
//!   ASCII, so every prompt the engine builds encodes without `<unk>`;
//! - every other id a filler word `w<id>` followed by a space, so random output reads as words.
//!
//! The PaddleOCR-VL-1.5 layout ([`CheckpointVersion::V1_5`]) adds the tokens that version's
//! tasks emit, as added tokens on the first free ids above the vision tokens (the real ids are
//! not published; nothing here depends on them):
//! - `<|LOC_0|>` .. `<|LOC_1000|>` and `<|LOC_BEGIN|>`, `<|LOC_END|>`, `<|LOC_SEP|>`, special
//!   like the rest of ERNIE's location tokens (so a decode that skips special tokens drops
//!   them; spotting reads them with special tokens kept);
//! - the six OTSL table tags `<fcel>` `<ecel>` `<lcel>` `<ucel>` `<xcel>` `<nl>`, not special,
//!   so tables survive the usual decode.
//!
//! `tokenizer_config.json` names the image token in `extra_special_tokens`, which
//! transformers 5's processor requires (it reads `tokenizer.image_token`).
//! Pre-tokenisation splits words (`\w+`) from single other characters; the decoder fuses the
//! pieces back without separators.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Which checkpoint layout a synthetic directory follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointVersion {
    /// PaddlePaddle/PaddleOCR-VL (0.9B, 2025-10).
    #[default]
    V1,
    /// PaddlePaddle/PaddleOCR-VL-1.5 (2026-01); 1.6 has the same layout.
    V1_5,
}

/// The location tokens of PaddleOCR-VL-1.5: `<|LOC_0|>` .. `<|LOC_1000|>`.
pub const LOC_TOKENS: u32 = 1001;
/// Markers around location runs (ERNIE's `loc_begin_end`).
const LOC_MARKERS: [&str; 3] = ["<|LOC_BEGIN|>", "<|LOC_END|>", "<|LOC_SEP|>"];
/// The OTSL tags the table task emits (MODEL_SPEC §6.4).
pub const TABLE_TOKENS: [&str; 6] = ["<fcel>", "<ecel>", "<lcel>", "<ucel>", "<xcel>", "<nl>"];
/// Prompt words of the 1.5 tasks (in both layouts: a v1 model can be asked them too); after
/// the printable ASCII pieces so that the ids of the earlier pieces stay where they were.
const V1_5_WORDS: [&str; 2] = ["Spotting", "Seal"];

/// `<|begin_of_sentence|>` in the real vocabulary.
const BEGIN_OF_SENTENCE_ID: u32 = 100273;

/// Words of the chat template and task prompts ("OCR:", "Table Recognition:", ...).
const PROMPT_WORDS: [&str; 8] = [
    "User",
    "Assistant",
    "OCR",
    "Table",
    "Recognition",
    "Formula",
    "Chart",
    "Conversion",
];

/// Added tokens of `cfg` as (id, content, special), `<|begin_of_sentence|>` included, and for
/// 1.5 the location and table tokens.
fn special_tokens(cfg: &ModelConfig, version: CheckpointVersion) -> Result<Vec<(u32, String, bool)>> {
    let t = &cfg.tokens;
    let vocab = cfg.text.vocab_size as u32;
    let mut out = vec![
        (0, "<unk>".to_string()),
        (1, "<s>".to_string()),
        (2, "</s>".to_string()),
        (t.image_token_id, "<|IMAGE_PLACEHOLDER|>".to_string()),
        (t.vision_start_token_id, "<|IMAGE_START|>".to_string()),
        (t.vision_end_token_id, "<|IMAGE_END|>".to_string()),
    ];
    if let Some(v) = t.video_token_id {
        out.push((v, "<|video_pad|>".to_string()));
    }
    let taken: HashSet<u32> = out.iter().map(|s| s.0).collect();
    // The real id when the vocabulary has it, else the first free id after the others.
    let bos = if BEGIN_OF_SENTENCE_ID < vocab && !taken.contains(&BEGIN_OF_SENTENCE_ID) {
        BEGIN_OF_SENTENCE_ID
    } else {
        let start = taken.iter().max().copied().unwrap_or(0) + 1;
        (start..vocab)
            .chain(3..start)
            .find(|id| !taken.contains(id))
            .ok_or_else(|| Error::invalid("synthetic tokenizer", "no free id for <|begin_of_sentence|>"))?
    };
    out.push((bos, "<|begin_of_sentence|>".to_string()));
    // The sep_token tokenizer_config.json names: transformers would append it past the
    // vocabulary if tokenizer.json lacked it. Its real id is not known (MODEL_SPEC §6.1), so
    // the first free id after the others.
    let taken: HashSet<u32> = out.iter().map(|s| s.0).collect();
    let start = taken.iter().max().copied().unwrap_or(0) + 1;
    let eos_sentence = (start..vocab)
        .chain(3..start)
        .find(|id| !taken.contains(id))
        .ok_or_else(|| Error::invalid("synthetic tokenizer", "no free id for <|end_of_sentence|>"))?;
    out.push((eos_sentence, "<|end_of_sentence|>".to_string()));
    let mut out: Vec<(u32, String, bool)> = out.into_iter().map(|(id, c)| (id, c, true)).collect();
    if version == CheckpointVersion::V1_5 {
        let extra = (0..LOC_TOKENS)
            .map(|n| (format!("<|LOC_{n}|>"), true))
            .chain(LOC_MARKERS.iter().map(|m| (m.to_string(), true)))
            .chain(TABLE_TOKENS.iter().map(|t| (t.to_string(), false)));
        let taken: HashSet<u32> = out.iter().map(|s| s.0).collect();
        let start = t.vision_end_token_id.max(t.image_token_id) + 1;
        let mut free = (start..vocab).filter(|id| !taken.contains(id));
        for (content, special) in extra {
            let id = free.next().ok_or_else(|| {
                Error::invalid(
                    "synthetic tokenizer",
                    format!("the vocabulary of {vocab} has no room above id {start} for the 1.5 tokens ({content})"),
                )
            })?;
            out.push((id, content, special));
        }
    }
    if let Some(&(id, _, _)) = out.iter().find(|s| s.0 >= vocab) {
        return Err(Error::invalid(
            "synthetic tokenizer",
            format!("special token id {id} outside the vocabulary of {vocab}"),
        ));
    }
    Ok(out)
}

/// The `tokenizer.json` text for `cfg`'s vocabulary, in the v1 layout.
pub fn synthetic_tokenizer_json(cfg: &ModelConfig) -> Result<String> {
    synthetic_tokenizer_json_for(cfg, CheckpointVersion::V1)
}

/// The `tokenizer.json` text for `cfg`'s vocabulary in `version`'s layout.
pub fn synthetic_tokenizer_json_for(cfg: &ModelConfig, version: CheckpointVersion) -> Result<String> {
    let specials = special_tokens(cfg, version)?;
    let mut pieces: Vec<String> = PROMPT_WORDS.iter().map(|w| w.to_string()).collect();
    pieces.extend((0x20u8..0x7f).map(|c| (c as char).to_string()));
    pieces.push("\n".to_string());
    pieces.extend(V1_5_WORDS.iter().map(|w| w.to_string()));
    word_level_tokenizer_json(cfg.text.vocab_size as u32, &specials, pieces)
}

/// A WordLevel `tokenizer.json` of `vocab_size` ids: `specials` (id, content, special) as
/// added tokens at their ids, then `pieces` on the free ids in order, then a filler word
/// `w<id> ` on every id left (see the module doc). Shared by every family's synthetic
/// checkpoint.
pub(crate) fn word_level_tokenizer_json(
    vocab_size: u32,
    specials: &[(u32, String, bool)],
    pieces: Vec<String>,
) -> Result<String> {
    let special_ids: HashSet<u32> = specials.iter().map(|s| s.0).collect();
    let mut vocab: BTreeMap<String, u32> = BTreeMap::new();
    for (id, content, _) in specials {
        vocab.insert(content.clone(), *id);
    }
    let mut next_piece = pieces.into_iter();
    for id in 0..vocab_size {
        if special_ids.contains(&id) {
            continue;
        }
        let piece = next_piece.next().unwrap_or_else(|| format!("w{id} "));
        vocab.insert(piece, id);
    }
    if vocab.len() != vocab_size as usize {
        return Err(Error::invalid(
            "synthetic tokenizer",
            format!("{} pieces for a vocabulary of {vocab_size}", vocab.len()),
        ));
    }
    let added: Vec<Value> = specials
        .iter()
        .map(|(id, content, special)| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special
            })
        })
        .collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\w+|[^\\w]"}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    Ok(serde_json::to_string(&doc).expect("json"))
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`, in the v1 layout.
pub fn write_synthetic_tokenizer(dir: &Path, cfg: &ModelConfig) -> Result<()> {
    write_synthetic_tokenizer_for(dir, cfg, CheckpointVersion::V1)
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` in `version`'s layout.
pub fn write_synthetic_tokenizer_for(dir: &Path, cfg: &ModelConfig, version: CheckpointVersion) -> Result<()> {
    let tokenizer = synthetic_tokenizer_json_for(cfg, version)?;
    let config = json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "cls_token": "<|begin_of_sentence|>",
        "sep_token": "<|end_of_sentence|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        // transformers 5's PaddleOCRVLProcessor reads `tokenizer.image_token`; without this
        // it fails with "has no attribute image_token". The string is an added token of
        // tokenizer.json at config.json's image_token_id.
        "extra_special_tokens": {"image_token": "<|IMAGE_PLACEHOLDER|>"},
    });
    for (name, text) in [
        ("tokenizer.json", tokenizer),
        (
            "tokenizer_config.json",
            serde_json::to_string_pretty(&config).expect("json"),
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}
