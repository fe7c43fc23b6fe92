//! The tokenizer written with synthetic checkpoints: it covers the whole vocabulary, keeps the
//! special tokens at the config's ids, and renders and encodes every task prompt.

use ocrvl::config::ModelConfig;
use ocrvl::model::synthetic_tokenizer::{synthetic_tokenizer_json, write_synthetic_tokenizer};
use ocrvl::preprocess::image::ImageGrid;
use ocrvl::preprocess::prompt::{PromptBuilder, Task};

#[test]
fn full_size_tokenizer_covers_the_vocabulary_and_encodes_every_task() {
    let cfg = ModelConfig::paddleocr_vl_0_9b();
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_tokenizer(dir.path(), &cfg).unwrap();
    let prompts = PromptBuilder::from_dir(dir.path(), &cfg).unwrap();
    let tok = prompts.tokenizer();
    assert_eq!(tok.get_vocab_size(true), cfg.text.vocab_size);
    assert_eq!(tok.token_to_id("<|begin_of_sentence|>"), Some(100273));
    assert_eq!(
        tok.token_to_id("<|IMAGE_PLACEHOLDER|>"),
        Some(cfg.tokens.image_token_id)
    );
    assert_eq!(tok.token_to_id("</s>"), Some(2));
    let grid = ImageGrid { t: 1, h: 28, w: 40 };
    for task in Task::ALL {
        let p = prompts.build_task(&[grid], task).unwrap();
        assert_eq!(
            p.ids[0], 100273,
            "{task:?}: the prompt starts with <|begin_of_sentence|>"
        );
        assert!(!p.ids.contains(&0), "{task:?}: no <unk> in {:?}", p.ids);
        assert_eq!(p.image_spans[0].len(), 28 * 40 / 4);
    }
    // Every id decodes; ordinary ids read as words.
    let text = prompts.decode(&[500, 70000, 103423], true).unwrap();
    assert_eq!(text, "w500 w70000 w103423 ");
    assert_eq!(prompts.decode(&[2, 100295], true).unwrap(), "");
}

#[test]
fn tiny_tokenizer_puts_begin_of_sentence_on_a_free_id() {
    let cfg = ModelConfig::tiny();
    let json: serde_json::Value = serde_json::from_str(&synthetic_tokenizer_json(&cfg).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    assert_eq!(vocab.len(), cfg.text.vocab_size);
    let bos = vocab["<|begin_of_sentence|>"].as_u64().unwrap();
    assert!(bos < cfg.text.vocab_size as u64);
    let mut ids: Vec<u64> = vocab.values().map(|v| v.as_u64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), cfg.text.vocab_size, "every id exactly once");
}
