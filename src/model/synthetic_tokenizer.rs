//! A tokenizer for synthetic checkpoints, so that a synthetic model directory is a complete
//! hub directory: prompts render and tokenise, and any generated id decodes to text.
//!
//! The real PaddleOCR-VL tokenizer (a SentencePiece BPE of 103424 pieces) cannot be shipped;
//! this one is a WordLevel tokenizer that covers every id of the model's vocabulary:
//! - the special tokens at the ids the config names (MODEL_SPEC §6.5), and
//!   `<|begin_of_sentence|>` at 100273 when the vocabulary reaches it;
//! - the words and characters of the chat template and the four task prompts, then printable
//!   ASCII, so every prompt the engine builds encodes without `<unk>`;
//! - every other id a filler word `w<id>` followed by a space, so random output reads as words.
//!
//! Pre-tokenisation splits words (`\w+`) from single other characters; the decoder fuses the
//! pieces back without separators.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{Error, Result};

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

/// Special tokens of `cfg` as (id, content), `<|begin_of_sentence|>` included.
fn special_tokens(cfg: &ModelConfig) -> Result<Vec<(u32, String)>> {
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
    if let Some(&(id, _)) = out.iter().find(|s| s.0 >= vocab) {
        return Err(Error::invalid(
            "synthetic tokenizer",
            format!("special token id {id} outside the vocabulary of {vocab}"),
        ));
    }
    Ok(out)
}

/// The `tokenizer.json` text for `cfg`'s vocabulary.
pub fn synthetic_tokenizer_json(cfg: &ModelConfig) -> Result<String> {
    let vocab_size = cfg.text.vocab_size as u32;
    let specials = special_tokens(cfg)?;
    let special_ids: HashSet<u32> = specials.iter().map(|s| s.0).collect();
    let mut pieces: Vec<String> = PROMPT_WORDS.iter().map(|w| w.to_string()).collect();
    pieces.extend((0x20u8..0x7f).map(|c| (c as char).to_string()));
    pieces.push("\n".to_string());

    let mut vocab: BTreeMap<String, u32> = BTreeMap::new();
    for (id, content) in &specials {
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
        .map(|(id, content)| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
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

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
pub fn write_synthetic_tokenizer(dir: &Path, cfg: &ModelConfig) -> Result<()> {
    let tokenizer = synthetic_tokenizer_json(cfg)?;
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
