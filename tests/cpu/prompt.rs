//! Prompt rendering, tokenisation and placeholder expansion (MODEL_SPEC §3.8, §6) against the
//! hand-written fixtures in tests/fixtures/prompt/ (a WordLevel tokenizer whose special ids are
//! those of `ModelConfig::tiny()`, and the spec's chat template).

use std::path::{Path, PathBuf};

use ocrvl::config::ModelConfig;
use ocrvl::preprocess::prompt::DEFAULT_CHAT_TEMPLATE;
use ocrvl::preprocess::{mrope_positions, ImageGrid, PreprocessError, PromptBuilder, Task};
use tokenizers::Tokenizer;

/// The rendered one-image OCR prompt of MODEL_SPEC §6.3, before placeholder expansion.
const SPEC_OCR_PROMPT: &str =
    "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>OCR:\nAssistant:\n";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompt")
}

fn fixture_tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixture_dir().join("tokenizer.json")).expect("fixture tokenizer.json loads")
}

fn builder() -> PromptBuilder {
    PromptBuilder::from_dir(fixture_dir(), &ModelConfig::tiny()).expect("fixture model dir loads")
}

/// Id of an ordinary word of the fixture vocabulary.
fn word(tok: &Tokenizer, w: &str) -> u32 {
    tok.token_to_id(w)
        .unwrap_or_else(|| panic!("fixture vocab lacks {w:?}"))
}

#[test]
fn fixture_template_renders_the_spec_prompt() {
    assert_eq!(builder().render(1, "OCR:").unwrap(), SPEC_OCR_PROMPT);
}

#[test]
fn builtin_template_renders_the_spec_prompt() {
    let b = PromptBuilder::new(fixture_tokenizer(), None, &ModelConfig::tiny()).unwrap();
    assert_eq!(b.render(1, "OCR:").unwrap(), SPEC_OCR_PROMPT);
    // The fixture (spec layout) and the built-in (one tag per line) agree on other inputs too.
    let f = builder();
    for (n, text) in [(0, "OCR:"), (2, "Table Recognition:"), (3, "hello world")] {
        assert_eq!(
            b.render(n, text).unwrap(),
            f.render(n, text).unwrap(),
            "{n} images, {text:?}"
        );
    }
}

/// `--chat-template PATH` (as GPUStack passes it) replaces the directory's template; a missing
/// or broken file is an error naming it.
#[test]
fn chat_template_file_replaces_the_directory_template() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.jinja");
    std::fs::write(
        &path,
        "{%- for m in messages -%}{%- for c in m['content'] -%}{%- if c['type'] == 'text' -%}\
         Q: {{ c['text'] }}{%- endif -%}{%- endfor -%}{%- endfor -%} | A:",
    )
    .unwrap();
    let b = builder().with_chat_template_file(&path).unwrap();
    assert_eq!(b.render(0, "hello world").unwrap(), "Q: hello world| A:");
    let missing = builder()
        .with_chat_template_file(&dir.path().join("none.jinja"))
        .err()
        .unwrap();
    assert!(missing.to_string().contains("none.jinja"), "{missing}");
    std::fs::write(&path, "{% for %}").unwrap();
    let broken = builder().with_chat_template_file(&path).err().unwrap();
    assert!(broken.to_string().contains("custom.jinja"), "{broken}");
}

#[test]
fn model_dir_without_template_uses_the_builtin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir().join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let b = PromptBuilder::from_dir(dir.path(), &ModelConfig::tiny()).unwrap();
    assert_eq!(b.render(1, "OCR:").unwrap(), SPEC_OCR_PROMPT);
}

#[test]
fn several_images_come_before_the_text() {
    let want = "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>\
                <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>Table Recognition:\nAssistant:\n";
    assert_eq!(builder().render(2, Task::Table.prompt()).unwrap(), want);
    let text_only = "<|begin_of_sentence|>User: hello\nAssistant:\n";
    assert_eq!(builder().render(0, "hello").unwrap(), text_only);
}

#[test]
fn task_prompts_are_the_exact_strings() {
    let texts: Vec<&str> = Task::ALL.iter().map(|t| t.prompt()).collect();
    assert_eq!(
        texts,
        [
            "OCR:",
            "Table Recognition:",
            "Formula Recognition:",
            "Chart Recognition:",
            "Spotting:",
            "Seal Recognition:"
        ]
    );
    assert_eq!(Task::from_name("OCR"), Some(Task::Ocr));
    assert_eq!(Task::from_name("chart"), Some(Task::Chart));
    assert_eq!(Task::from_name("Spotting"), Some(Task::Spotting));
    assert_eq!(Task::from_name("seal"), Some(Task::Seal));
    assert_eq!(Task::from_name("stamp"), None);
    for task in Task::ALL {
        assert_eq!(Task::from_name(task.name()), Some(task));
    }
}

#[test]
fn ids_expand_one_placeholder_per_merged_token() {
    let cfg = ModelConfig::tiny();
    let t = &cfg.tokens;
    let tok = fixture_tokenizer();
    let b = builder();
    // A 4x6 patch grid is 2x3 merged tokens.
    let grid = ImageGrid { t: 1, h: 4, w: 6 };
    let prompt = b.build_task(&[grid], Task::Ocr).unwrap();

    let bos = tok.token_to_id("<|begin_of_sentence|>").unwrap();
    let mut want = vec![bos, word(&tok, "User"), word(&tok, ":"), word(&tok, " ")];
    want.push(t.vision_start_token_id);
    want.extend(std::iter::repeat_n(t.image_token_id, 6));
    want.push(t.vision_end_token_id);
    for w in ["OCR", ":", "\n", "Assistant", ":", "\n"] {
        want.push(word(&tok, w));
    }
    assert_eq!(prompt.ids, want);
    assert_eq!(prompt.image_spans, vec![5..11]);
}

#[test]
fn several_images_get_their_own_spans() {
    let t = ModelConfig::tiny().tokens;
    let grids = [ImageGrid { t: 1, h: 4, w: 4 }, ImageGrid { t: 1, h: 2, w: 10 }];
    let prompt = builder().build_task(&grids, Task::Formula).unwrap();
    // bos User : " " | START 4 END | START 5 END | Formula " " Recognition : \n Assistant : \n
    assert_eq!(prompt.image_spans, vec![5..9, 11..16]);
    assert_eq!(prompt.ids.len(), 4 + (1 + 4 + 1) + (1 + 5 + 1) + 8);
    for (span, grid) in prompt.image_spans.iter().zip(&grids) {
        assert_eq!(span.len(), grid.num_merged_tokens(2));
        assert!(prompt.ids[span.clone()].iter().all(|&id| id == t.image_token_id));
        assert_eq!(prompt.ids[span.start - 1], t.vision_start_token_id);
        assert_eq!(prompt.ids[span.end], t.vision_end_token_id);
    }
    let placeholders = prompt.ids.iter().filter(|&&id| id == t.image_token_id).count();
    assert_eq!(placeholders, 4 + 5);

    // The prompt feeds the position ids directly.
    let pos = mrope_positions(&prompt.ids, t.image_token_id, &grids, 2).unwrap();
    assert_eq!(pos.at(5), [5, 5, 5]);
    assert_eq!(pos.at(8), [5, 6, 6]); // second row, second column of the 2x2 image
    assert_eq!(pos.at(9), [7, 7, 7]); // IMAGE_END: 5 + max(2, 2)
}

#[test]
fn literal_placeholder_in_user_text_is_rejected() {
    let err = builder()
        .build(&[ImageGrid { t: 1, h: 2, w: 2 }], "OCR: <|IMAGE_PLACEHOLDER|>")
        .unwrap_err();
    assert!(
        matches!(
            err,
            PreprocessError::PlaceholderCount {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn odd_grid_is_rejected() {
    let err = builder().build(&[ImageGrid { t: 1, h: 3, w: 4 }], "OCR:").unwrap_err();
    assert!(matches!(err, PreprocessError::InvalidGrid { image: 0, .. }), "{err}");
}

#[test]
fn special_ids_come_from_the_config() {
    // Ids that are not added tokens of the tokenizer are caught at load time.
    let mut cfg = ModelConfig::tiny();
    cfg.tokens.image_token_id = word(&fixture_tokenizer(), "hello");
    let err = PromptBuilder::from_dir(fixture_dir(), &cfg)
        .err()
        .expect("ordinary token as image id");
    assert!(
        matches!(
            err,
            PreprocessError::SpecialTokenMismatch {
                role: "image_token_id",
                ..
            }
        ),
        "{err}"
    );
    let mut cfg = ModelConfig::tiny();
    cfg.tokens.vision_end_token_id = 77_777;
    let err = PromptBuilder::from_dir(fixture_dir(), &cfg).err().expect("unknown id");
    assert!(err.to_string().contains("no token with that id"), "{err}");

    // Swapping START and END in the config swaps them in the output: the builder reads the
    // placeholder id from the config, and the template strings decide the rest.
    let mut cfg = ModelConfig::tiny();
    cfg.tokens.image_token_id = 1003; // <|video_pad|> as the "image" token
    let b = PromptBuilder::from_dir(fixture_dir(), &cfg).unwrap();
    let err = b.build(&[ImageGrid { t: 1, h: 2, w: 2 }], "OCR:").unwrap_err();
    assert!(
        matches!(
            err,
            PreprocessError::PlaceholderCount {
                found: 0,
                token_id: 1003,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn older_template_variant_and_tokenizer_config_tokens() {
    // The earlier hub template ended in "Assistant: " (MODEL_SPEC §6.3, §12.2); whatever the
    // model directory ships is what is rendered. (A literal newline after a block tag would be
    // eaten by trim_blocks, as in transformers, hence the "\n" expression.)
    let older = r#"{{ bos_token }}{{ cls_token }}User: {% for m in messages %}{% for c in m["content"] %}{% if c["type"] == "image" %}<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>{% endif %}{% endfor %}{% for c in m["content"] %}{% if c["type"] == "text" %}{{ c["text"] }}{% endif %}{% endfor %}{% endfor %}{{ "\n" }}Assistant: "#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir().join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    std::fs::write(dir.path().join("chat_template.jinja"), older).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "cls_token": {"content": "<|begin_of_sentence|>", "special": true}}"#,
    )
    .unwrap();
    let b = PromptBuilder::from_dir(dir.path(), &ModelConfig::tiny()).unwrap();
    assert_eq!(
        b.render(1, "OCR:").unwrap(),
        "<s><|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>OCR:\nAssistant: "
    );
}

#[test]
fn template_errors_name_the_template() {
    let err = PromptBuilder::new(fixture_tokenizer(), Some("{% if %}".into()), &ModelConfig::tiny())
        .err()
        .expect("syntax error");
    assert!(matches!(err, PreprocessError::ChatTemplate { .. }), "{err}");
    let raising = r#"{{ raise_exception("only user messages") }}"#.to_string();
    let b = PromptBuilder::new(fixture_tokenizer(), Some(raising), &ModelConfig::tiny()).unwrap();
    let err = b.render(1, "OCR:").unwrap_err();
    assert!(err.to_string().contains("only user messages"), "{err}");
}

#[test]
fn missing_tokenizer_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = PromptBuilder::from_dir(dir.path(), &ModelConfig::tiny()).err().unwrap();
    assert!(matches!(err, PreprocessError::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn decode_skips_special_tokens() {
    let b = builder();
    let prompt = b.build_task(&[ImageGrid { t: 1, h: 2, w: 2 }], Task::Ocr).unwrap();
    assert_eq!(b.decode(&prompt.ids, true).unwrap(), "User: OCR:\nAssistant:\n");
}

#[test]
fn builtin_template_is_the_spec_template() {
    // Guard against edits of the constant that would change the generation suffix.
    assert!(DEFAULT_CHAT_TEMPLATE.contains(r#"{{- "Assistant:\n" -}}"#));
    assert!(DEFAULT_CHAT_TEMPLATE.contains(r#"{%- set cls_token = "<|begin_of_sentence|>" -%}"#));
}
