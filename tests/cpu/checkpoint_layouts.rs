//! The checkpoint layouts `synth-model` writes: PaddleOCR-VL-1.5's (processor_config.json,
//! chat_template.jinja, location and table tokens) read back through the same loaders a real
//! 1.5 directory goes through, and the files other loaders need (issue 14, items 5 and 6).

use std::path::Path;

use serde_json::Value;

use ocrvl::config::ModelConfig;
use ocrvl::model::synthetic::{synthetic_config, write_synthetic_model, CheckpointVersion, SyntheticOptions};
use ocrvl::model::synthetic_tokenizer::{synthetic_tokenizer_json_for, LOC_TOKENS, TABLE_TOKENS};
use ocrvl::postprocess::parse_spotting;
use ocrvl::preprocess::processor_config::ProcessorConfig;
use ocrvl::preprocess::prompt::{PromptBuilder, Task};

fn write(version: CheckpointVersion) -> (tempfile::TempDir, ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = synthetic_config(version, true);
    let opts = SyntheticOptions {
        version,
        include_unused: false,
        ..SyntheticOptions::default()
    };
    write_synthetic_model(dir.path(), &cfg, &opts).unwrap();
    (dir, cfg)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn v1_5_directory_has_the_1_5_files_and_its_processor_config_is_read() {
    let (dir, cfg) = write(CheckpointVersion::V1_5);
    let d = dir.path();
    assert!(d.join("processor_config.json").is_file());
    assert!(
        !d.join("preprocessor_config.json").exists(),
        "1.5 ships processor_config.json"
    );
    assert_eq!(ModelConfig::from_dir(d).unwrap(), cfg);
    let pc = ProcessorConfig::from_dir(d).unwrap();
    assert_eq!(pc, ProcessorConfig::default(), "the hub values");
    pc.check_model(&cfg).unwrap();

    // The values come from the file: change one and it shows.
    let path = d.join("processor_config.json");
    let mut value = read_json(&path);
    value["image_processor"]["max_pixels"] = 1_605_632.into();
    std::fs::write(&path, value.to_string()).unwrap();
    assert_eq!(ProcessorConfig::from_dir(d).unwrap().max_pixels, 1_605_632);
    // With both files, processor_config.json wins.
    let old = serde_json::json!({"max_pixels": 2_000_000, "min_pixels": 3136});
    std::fs::write(d.join("preprocessor_config.json"), old.to_string()).unwrap();
    assert_eq!(ProcessorConfig::from_dir(d).unwrap().max_pixels, 1_605_632);
    // A processor file without image settings falls back to the older file.
    std::fs::write(&path, r#"{"processor_class": "PaddleOCRVLProcessor"}"#).unwrap();
    assert_eq!(ProcessorConfig::from_dir(d).unwrap().max_pixels, 2_000_000);
    // A malformed one is an error naming the file and the field.
    std::fs::write(&path, r#"{"image_processor": [1, 2]}"#).unwrap();
    let err = ProcessorConfig::from_dir(d).unwrap_err().to_string();
    assert!(
        err.contains("processor_config.json") && err.contains("image_processor"),
        "{err}"
    );
    std::fs::write(&path, r#"{"image_processor": {"resample": 2}}"#).unwrap();
    let err = ProcessorConfig::from_dir(d).unwrap_err().to_string();
    assert!(
        err.contains("processor_config.json") && err.contains("resample"),
        "{err}"
    );
}

#[test]
fn v1_5_template_is_the_directorys_and_ends_with_assistant_newline() {
    let (dir, cfg) = write(CheckpointVersion::V1_5);
    let d = dir.path();
    let prompts = PromptBuilder::from_dir(d, &cfg).unwrap();
    for (task, text) in [(Task::Spotting, "Spotting:"), (Task::Seal, "Seal Recognition:")] {
        let rendered = prompts.render(1, task.prompt()).unwrap();
        assert!(
            rendered.ends_with(&format!("<|IMAGE_END|>{text}\nAssistant:\n")),
            "{rendered:?}"
        );
    }
    // It is the file that is rendered: the older "Assistant: " variant shows when written.
    let path = d.join("chat_template.jinja");
    let older = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"Assistant:\\n\"", "\"Assistant: \"");
    std::fs::write(&path, older).unwrap();
    let rendered = PromptBuilder::from_dir(d, &cfg).unwrap().render(1, "OCR:").unwrap();
    assert!(rendered.ends_with("OCR:\nAssistant: "), "{rendered:?}");
}

#[test]
fn v1_5_tokenizer_has_the_location_and_table_tokens() {
    let (dir, cfg) = write(CheckpointVersion::V1_5);
    let prompts = PromptBuilder::from_dir(dir.path(), &cfg).unwrap();
    let tok = prompts.tokenizer();
    assert_eq!(tok.get_vocab_size(true), cfg.text.vocab_size);
    let loc0 = tok.token_to_id("<|LOC_0|>").expect("<|LOC_0|>");
    for n in 0..LOC_TOKENS {
        assert_eq!(tok.token_to_id(&format!("<|LOC_{n}|>")), Some(loc0 + n), "LOC_{n}");
    }
    assert_eq!(tok.token_to_id("<|LOC_1001|>"), None);
    for marker in ["<|LOC_BEGIN|>", "<|LOC_END|>", "<|LOC_SEP|>"] {
        assert!(tok.token_to_id(marker).is_some(), "{marker}");
    }
    // The special ids still where config.json puts them.
    assert_eq!(
        tok.token_to_id("<|IMAGE_PLACEHOLDER|>"),
        Some(cfg.tokens.image_token_id)
    );
    assert_eq!(
        tok.token_to_id("<|IMAGE_START|>"),
        Some(cfg.tokens.vision_start_token_id)
    );

    // Each location token is one id, in text too (the synthetic tokenizer knows single
    // characters and the prompt words only); special, so skipped by the usual decode.
    let enc = tok.encode("a b<|LOC_5|><|LOC_1000|>", false).unwrap();
    let ids = enc.get_ids();
    assert_eq!(&ids[ids.len() - 2..], &[loc0 + 5, loc0 + 1000]);
    assert_eq!(prompts.decode(ids, false).unwrap(), "a b<|LOC_5|><|LOC_1000|>");
    assert_eq!(prompts.decode(ids, true).unwrap(), "a b");
    // Table tags are single ids and survive the usual decode.
    let table: String = TABLE_TOKENS.concat();
    let ids = tok.encode(table.as_str(), false).unwrap().get_ids().to_vec();
    assert_eq!(ids.len(), TABLE_TOKENS.len());
    assert_eq!(prompts.decode(&ids, true).unwrap(), table);

    // Generated ids of a spotting answer parse to a polygon.
    let mut answer = tok.encode("Seal 1", false).unwrap().get_ids().to_vec();
    answer.extend([100, 200, 300, 200, 300, 400, 100, 400].map(|n| loc0 + n));
    answer.push(cfg.tokens.eos_token_ids[0]);
    let lines = parse_spotting(&prompts.decode(&answer, false).unwrap(), 500, 1000).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].text, "Seal 1");
    assert_eq!(
        lines[0].polygon,
        [[50.0, 200.0], [150.0, 200.0], [150.0, 400.0], [50.0, 400.0]]
    );
}

#[test]
fn full_size_1_5_tokenizer_fits_the_real_vocabulary() {
    let cfg = synthetic_config(CheckpointVersion::V1_5, false);
    let json: Value =
        serde_json::from_str(&synthetic_tokenizer_json_for(&cfg, CheckpointVersion::V1_5).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    assert_eq!(vocab.len(), cfg.text.vocab_size);
    // Above the vision tokens, clear of every id the config names.
    let loc0 = vocab["<|LOC_0|>"].as_u64().unwrap();
    assert!(loc0 > cfg.tokens.video_token_id.unwrap() as u64, "{loc0}");
    assert_eq!(vocab["<|begin_of_sentence|>"].as_u64(), Some(100273));
    let mut ids: Vec<u64> = vocab.values().map(|v| v.as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), cfg.text.vocab_size, "every id exactly once");
}

#[test]
fn the_tiny_v1_vocabulary_has_no_room_for_the_1_5_tokens() {
    let err = synthetic_tokenizer_json_for(&ModelConfig::tiny(), CheckpointVersion::V1_5).unwrap_err();
    assert!(err.to_string().contains("1.5 tokens"), "{err}");
}

/// Item 6: what transformers 5 and vLLM need, in both layouts.
#[test]
fn directories_carry_what_other_loaders_need() {
    for version in [CheckpointVersion::V1, CheckpointVersion::V1_5] {
        let (dir, cfg) = write(version);
        let d = dir.path();
        let tc = read_json(&d.join("tokenizer_config.json"));
        assert_eq!(tc["extra_special_tokens"]["image_token"], "<|IMAGE_PLACEHOLDER|>");
        // Every token tokenizer_config.json names is in tokenizer.json: one it lacked,
        // transformers would append past the model's vocabulary.
        let tok = tokenizers::Tokenizer::from_file(d.join("tokenizer.json")).unwrap();
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "cls_token",
            "sep_token",
        ] {
            let content = tc[key].as_str().unwrap();
            let id = tok
                .token_to_id(content)
                .unwrap_or_else(|| panic!("{key} {content} not in tokenizer.json"));
            assert!((id as usize) < cfg.text.vocab_size);
        }
        assert!(d.join("chat_template.jinja").is_file());
        let config = read_json(&d.join("config.json"));
        assert_eq!(config["tie_word_embeddings"], false);
        // transformers builds the text config from `text_config` when present; without it the
        // class default (true) ties lm_head to the embedding.
        assert_eq!(config["text_config"]["tie_word_embeddings"], false, "{version:?}");
        assert_eq!(config["text_config"]["vocab_size"], cfg.text.vocab_size);
        assert_eq!(config["text_config"]["hidden_size"], cfg.text.hidden_size);
        // transformers' fallback section is the model's; the key stays out (it draws a warning).
        assert_eq!(cfg.text.mrope_section, [16, 24, 24]);
        assert!(config["text_config"]["rope_parameters"]["mrope_section"].is_null());
        assert_eq!(
            config["text_config"]["rope_parameters"]["rope_theta"],
            cfg.text.rope_theta
        );
        // The flat keys are still there for the hub's remote code.
        assert_eq!(config["hidden_size"], cfg.text.hidden_size);
        assert_eq!(ModelConfig::from_dir(d).unwrap(), cfg);
    }
    let (v1, _) = write(CheckpointVersion::V1);
    assert!(v1.path().join("preprocessor_config.json").is_file());
    assert!(!v1.path().join("processor_config.json").exists());
}
