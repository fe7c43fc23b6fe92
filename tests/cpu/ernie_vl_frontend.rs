//! The service's front half for an ERNIE-4.5-VL directory (a tiny synthetic one, written as
//! `synth-model --arch ernie-4.5-vl-28b-a3b --tiny` writes it): the family detected from the
//! config, the image processor in ERNIE's layout with its processor file's values, and prompts
//! through the directory's chat template with the thinking switch.

use serde_json::{json, Map, Value};

use ocrvl::config::{ErnieVlConfig, FamilyConfig, ModelFamilyKind};
use ocrvl::model::ernie_vl::synthetic::{write_synthetic_model, ErnieSyntheticOptions};
use ocrvl::preprocess::image::{ImageGrid, ImageProcessor};
use ocrvl::preprocess::{ImageLayout, PromptBuilder};

fn tiny_dir() -> (tempfile::TempDir, ErnieVlConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ErnieVlConfig::tiny();
    write_synthetic_model(dir.path(), &cfg, &ErnieSyntheticOptions::for_model(true)).unwrap();
    (dir, cfg)
}

fn thinking(on: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("enable_thinking".into(), json!(on));
    m
}

#[test]
fn an_ernie_directory_gets_its_own_processor_and_template() {
    let (dir, cfg) = tiny_dir();
    let family = FamilyConfig::from_dir(dir.path()).unwrap();
    assert_eq!(family.kind(), ModelFamilyKind::ErnieVl);
    assert_eq!(family.vocab_size(), cfg.text.vocab_size);
    assert!(family.paddleocr_vl().is_none());

    let p = ImageProcessor::from_ernie_dir(dir.path(), &cfg).unwrap();
    assert_eq!(p.config.layout, ImageLayout::ErnieVl);
    assert_eq!(
        (p.config.min_pixels, p.config.max_pixels, p.config.factor()),
        (3136, 4_842_768, 28)
    );
    assert!((p.config.image_mean[0] - 0.481_454_66).abs() < 1e-7);
    // ERNIE clamps an extreme aspect ratio where PaddleOCR-VL refuses it.
    assert_eq!(p.target_size(20, 10000).unwrap(), (28, 5600));

    let prompts = PromptBuilder::from_dir(dir.path(), &cfg).unwrap();
    let on = prompts.render_with(1, "Describe.", &thinking(true)).unwrap();
    let off = prompts.render_with(1, "Describe.", &thinking(false)).unwrap();
    assert_eq!(
        on,
        "<|begin_of_sentence|>User: Picture 1:<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>Describe.\nAssistant: <think>"
    );
    assert!(off.ends_with("\nAssistant: <think>\n\n</think>\n\n"), "{off:?}");

    // One placeholder per merged patch, between the start and end markers.
    let grid = ImageGrid { t: 1, h: 4, w: 6 };
    let prompt = prompts.build_with(&[grid], "Describe.", &thinking(true)).unwrap();
    let span = prompt.image_spans[0].clone();
    assert_eq!(span.len(), 6);
    assert!(prompt.ids[span.clone()]
        .iter()
        .all(|&id| id == cfg.tokens.image_token_id));
    assert_eq!(prompt.ids[span.start - 1], cfg.tokens.image_start_token_id);
    assert_eq!(prompt.ids[span.end], cfg.tokens.image_end_token_id);
}

#[test]
fn a_processor_file_overrides_ernie_defaults_not_paddleocr_ones() {
    let (dir, cfg) = tiny_dir();
    // A processor file naming only the pixel bounds: mean and std stay CLIP's (ERNIE's), not
    // PaddleOCR-VL's 0.5.
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        json!({"min_pixels": 6272, "max_pixels": 100352}).to_string(),
    )
    .unwrap();
    let p = ImageProcessor::from_ernie_dir(dir.path(), &cfg).unwrap();
    assert_eq!((p.config.min_pixels, p.config.max_pixels), (6272, 100352));
    assert!((p.config.image_std[2] - 0.275_777_1).abs() < 1e-6);
    // A file whose patch size disagrees with the vision config is refused, naming the field.
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        json!({"patch_size": 16}).to_string(),
    )
    .unwrap();
    let err = ImageProcessor::from_ernie_dir(dir.path(), &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("patch_size"), "{err}");
}

#[test]
fn a_conversation_renders_every_turn_with_images_where_they_are() {
    let (dir, cfg) = tiny_dir();
    let prompts = PromptBuilder::from_dir(dir.path(), &cfg).unwrap();
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image"}]},
        {"role": "assistant", "content": "A cat.", "reasoning_content": "Fur."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]},
    ]);
    let text = prompts.render_messages(messages.clone(), &thinking(false)).unwrap();
    assert_eq!(
        text,
        "<|begin_of_sentence|>Be brief.\nUser: What is it?Picture 1:<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>\
         \nAssistant: <think>\nFur.\n</think>\n\nA cat.<|end_of_sentence|>\
         User: Picture 2:<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>And this?\nAssistant: <think>\n\n</think>\n\n"
    );
    let grids = [ImageGrid { t: 1, h: 4, w: 4 }, ImageGrid { t: 1, h: 6, w: 4 }];
    let prompt = prompts.build_messages(&grids, messages, &thinking(false)).unwrap();
    let spans: Vec<usize> = prompt.image_spans.iter().map(|s| s.len()).collect();
    assert_eq!(spans, vec![4, 6]);
    assert!(prompt.image_spans[0].end < prompt.image_spans[1].start);
}

/// Without tokenizer.json the directory's tokenizer.model is read (tests/cpu/sentencepiece.rs
/// has the working cases); a file that is not a SentencePiece model is an error naming it.
#[test]
fn a_sentencepiece_only_directory_reads_tokenizer_model() {
    let (dir, cfg) = tiny_dir();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    std::fs::write(dir.path().join("tokenizer.model"), b"not read").unwrap();
    let err = PromptBuilder::from_dir(dir.path(), &cfg).err().unwrap().to_string();
    assert!(
        err.contains("tokenizer.model")
            && err.contains("not a valid SentencePiece model")
            && !err.contains("tokenizer.json"),
        "{err}"
    );
}
