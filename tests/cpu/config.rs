//! CPU tests of `config.json` parsing (hub flat form and transformers v5 nested form), engine
//! flags and environment switches. Errors are checked by variant and by the field they name.

use std::collections::HashMap;

use ocrvl::config::{
    parse_engine_flags, ConfigError, EngineConfig, EngineSettings, EnvFlags, FlashAttnVersion, ModelConfig,
    SamplingClass,
};
use ocrvl::runtime::DType;
use serde_json::{json, Value};

/// MODEL_SPEC §2, the hub file as released (comments dropped, ERNIE leftovers kept).
const HUB_FLAT: &str = r#"{
  "architectures": ["PaddleOCRVLForConditionalGeneration"],
  "model_type": "paddleocr_vl",
  "auto_map": {
    "AutoConfig": "configuration_paddleocr_vl.PaddleOCRVLConfig",
    "AutoModel": "modeling_paddleocr_vl.PaddleOCRVLForConditionalGeneration"
  },
  "vocab_size": 103424,
  "hidden_size": 1024,
  "intermediate_size": 3072,
  "num_hidden_layers": 18,
  "num_attention_heads": 16,
  "num_key_value_heads": 2,
  "head_dim": 128,
  "hidden_act": "silu",
  "max_position_embeddings": 131072,
  "rms_norm_eps": 1e-05,
  "rope_theta": 500000,
  "rope_scaling": { "mrope_section": [16, 24, 24], "rope_type": "default", "type": "default" },
  "use_bias": false,
  "tie_word_embeddings": false,
  "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
  "image_token_id": 100295,
  "video_token_id": 101307,
  "vision_start_token_id": 101305,
  "vision_end_token_id": 101306,
  "torch_dtype": "bfloat16",
  "compression_ratio": 1.0, "weight_share_add_bias": true, "use_3d_rope": true,
  "rope_is_neox_style": true, "use_cache": false, "sliding_window": null,
  "vision_config": {
    "architectures": ["PaddleOCRVisionModel"], "model_type": "paddleocr_vl",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-06,
    "attention_dropout": 0.0,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "tokens_per_second": 2
  }
}"#;

/// What `PaddleOCRVLConfig(video_token_id=101307).save_pretrained()` writes with transformers
/// 5.x: keys sorted, sub-configs in full, rope in `rope_parameters` without `mrope_section`,
/// pad/bos/eos inside `text_config`, tied embeddings.
const V5_NESTED: &str = r#"{
  "architectures": [
    "PaddleOCRVLForConditionalGeneration"
  ],
  "dtype": "bfloat16",
  "image_token_id": 100295,
  "model_type": "paddleocr_vl",
  "text_config": {
    "bos_token_id": 1,
    "dtype": "bfloat16",
    "eos_token_id": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 131072,
    "model_type": "paddleocr_vl_text",
    "num_attention_heads": 16,
    "num_hidden_layers": 18,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {
      "rope_theta": 500000.0,
      "rope_type": "default"
    },
    "tie_word_embeddings": true,
    "use_bias": false,
    "use_cache": true,
    "vocab_size": 103424
  },
  "tie_word_embeddings": true,
  "transformers_version": "5.23.0",
  "video_token_id": 101307,
  "vision_config": {
    "attention_dropout": 0.0,
    "dtype": "bfloat16",
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "image_size": 384,
    "intermediate_size": 4304,
    "layer_norm_eps": 1e-06,
    "model_type": "paddleocr_vl_vision",
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 27,
    "patch_size": 14,
    "rope_parameters": {
      "rope_theta": 10000.0,
      "rope_type": "axial"
    },
    "spatial_merge_size": 2
  },
  "vision_end_token_id": 101306,
  "vision_start_token_id": 101305
}"#;

fn hub_flat_json() -> Value {
    serde_json::from_str(HUB_FLAT).unwrap()
}

fn v5_nested_json() -> Value {
    serde_json::from_str(V5_NESTED).unwrap()
}

fn parse(value: &Value) -> Result<ModelConfig, ConfigError> {
    ModelConfig::from_json_str(&value.to_string(), "test/config.json")
}

/// Applies `edit` to a copy of the hub json and parses it; the result must be an error.
fn hub_error(edit: impl FnOnce(&mut Value)) -> ConfigError {
    let mut value = hub_flat_json();
    edit(&mut value);
    parse(&value).expect_err("edited config should be rejected")
}

#[test]
fn hub_flat_form_gives_the_released_model() {
    let cfg = ModelConfig::from_json_str(HUB_FLAT, "config.json").unwrap();
    assert_eq!(cfg, ModelConfig::paddleocr_vl_0_9b());
    assert_eq!(cfg.text.q_width(), 2048);
    assert_eq!(cfg.text.kv_width(), 256);
    assert_eq!(cfg.text.queries_per_kv(), 8);
    assert_eq!(cfg.vision.head_dim(), 72);
    assert_eq!(cfg.vision.position_table_side(), 27);
    assert_eq!(cfg.vision.num_positions(), 729);
    assert_eq!(cfg.vision.patch_dim(), 588);
    assert_eq!(cfg.vision.merged_width(), 4608);
    assert_eq!(cfg.vision.rope_freqs_per_axis(), 18);
    assert!(cfg.tokens.is_eos(2) && !cfg.tokens.is_eos(1));
}

#[test]
fn v5_nested_form_gives_the_same_dims_with_tied_embeddings() {
    let cfg = ModelConfig::from_json_str(V5_NESTED, "config.json").unwrap();
    let expected = ModelConfig {
        tie_word_embeddings: true,
        ..ModelConfig::paddleocr_vl_0_9b()
    };
    // mrope_section absent: falls back to [16, 24, 24] as transformers 5.23 does.
    assert_eq!(cfg, expected);
}

#[test]
fn v5_explicit_mrope_section_and_defaults() {
    let mut value = v5_nested_json();
    let text = &mut value["text_config"];
    text["head_dim"] = json!(64);
    text["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e4, "mrope_section": [8, 12, 12]});
    // HF rule: a null head_dim is hidden / heads; that is checked below with another copy.
    let cfg = parse(&value).unwrap();
    assert_eq!(cfg.text.head_dim, 64);
    assert_eq!(cfg.text.mrope_section, [8, 12, 12]);
    assert_eq!(cfg.text.rope_theta, 1e4);

    let mut value = v5_nested_json();
    value["text_config"]["head_dim"] = Value::Null;
    value["text_config"]["hidden_size"] = json!(2048);
    value["text_config"].as_object_mut().unwrap().remove("rope_parameters");
    let cfg = parse(&value).unwrap();
    assert_eq!(cfg.text.head_dim, 128, "hidden / heads");
    assert_eq!(cfg.text.rope_theta, 500_000.0, "v5 default theta");
}

#[test]
fn absent_tie_flag_takes_each_forms_default() {
    let mut v5 = v5_nested_json();
    v5.as_object_mut().unwrap().remove("tie_word_embeddings");
    v5["text_config"].as_object_mut().unwrap().remove("tie_word_embeddings");
    assert!(parse(&v5).unwrap().tie_word_embeddings, "v5 class default is true");
    let mut v5 = v5_nested_json();
    v5.as_object_mut().unwrap().remove("tie_word_embeddings");
    v5["text_config"]["tie_word_embeddings"] = json!(false);
    assert!(!parse(&v5).unwrap().tie_word_embeddings, "text_config value is used");
    let mut hub = hub_flat_json();
    hub.as_object_mut().unwrap().remove("tie_word_embeddings");
    assert!(!parse(&hub).unwrap().tie_word_embeddings, "hub default is false");
}

#[test]
fn eos_may_be_a_list_and_vision_theta_is_read() {
    let mut value = hub_flat_json();
    value["eos_token_id"] = json!([2, 100272]);
    value["vision_config"]["rope_theta"] = json!(20000.0);
    let cfg = parse(&value).unwrap();
    assert_eq!(cfg.tokens.eos_token_ids, vec![2, 100272]);
    assert!(cfg.tokens.is_eos(100272));
    assert_eq!(cfg.vision.rope_theta, 20000.0);
}

#[test]
fn hub_json_round_trips() {
    let mut odd = ModelConfig::tiny();
    odd.tokens.eos_token_ids = vec![2, 3];
    odd.tokens.pad_token_id = None;
    odd.vision.rope_theta = 12345.0;
    odd.tie_word_embeddings = true;
    odd.text.mrope_section = [8, 28, 28];
    for cfg in [ModelConfig::paddleocr_vl_0_9b(), ModelConfig::tiny(), odd] {
        let text = cfg.to_hub_json();
        assert_eq!(ModelConfig::from_json_str(&text, "roundtrip").unwrap(), cfg);
    }
}

#[test]
fn tiny_keeps_the_real_head_shapes() {
    let tiny = ModelConfig::tiny();
    tiny.validate().unwrap();
    assert_eq!(tiny.text.head_dim, 128);
    assert_eq!((tiny.text.num_attention_heads, tiny.text.num_key_value_heads), (16, 2));
    assert_eq!(tiny.vision.head_dim(), 72);
    assert_eq!(tiny.text.mrope_section, [16, 24, 24]);
    assert!((tiny.tokens.image_token_id as usize) < tiny.text.vocab_size);
}

#[test]
fn from_dir_reads_config_json_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = ModelConfig::from_dir(dir.path()).unwrap_err();
    match &err {
        ConfigError::Io { path, .. } => assert_eq!(path, &dir.path().join("config.json")),
        other => panic!("expected Io, got {other:?}"),
    }

    let mut value = hub_flat_json();
    value["vision_config"]["hidden_size"] = json!(1150);
    std::fs::write(dir.path().join("config.json"), value.to_string()).unwrap();
    let msg = ModelConfig::from_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("config.json"), "{msg}");
    assert!(msg.contains("vision_config.hidden_size"), "{msg}");

    std::fs::write(dir.path().join("config.json"), hub_flat_json().to_string()).unwrap();
    assert_eq!(
        ModelConfig::from_dir(dir.path()).unwrap(),
        ModelConfig::paddleocr_vl_0_9b()
    );
}

#[test]
fn invalid_json_is_reported_with_its_origin() {
    let err = ModelConfig::from_json_str("{\"vocab_size\": ", "some/config.json").unwrap_err();
    assert!(matches!(&err, ConfigError::Json { origin, .. } if origin == "some/config.json"));
}

fn assert_invalid(err: ConfigError, want_field: &str, want_in_reason: &str) {
    match &err {
        ConfigError::Invalid { field, reason, .. } => {
            assert_eq!(field, want_field, "{err}");
            assert!(reason.contains(want_in_reason), "{err}");
        }
        other => panic!("expected Invalid on {want_field}, got {other:?}"),
    }
}

#[test]
fn rule_violations_name_the_field() {
    assert_invalid(
        hub_error(|v| v["vision_config"]["hidden_size"] = json!(1150)),
        "vision_config.hidden_size",
        "multiple of vision_config.num_attention_heads",
    );
    // 16 heads × 70 = 1120: divisible, but 70 is not a multiple of 4.
    assert_invalid(
        hub_error(|v| v["vision_config"]["hidden_size"] = json!(1120)),
        "vision_config.hidden_size",
        "multiple of 4",
    );
    assert_invalid(
        hub_error(|v| v["rope_scaling"]["mrope_section"] = json!([16, 24, 20])),
        "mrope_section",
        "sums to 60",
    );
    assert_invalid(
        hub_error(|v| v["num_key_value_heads"] = json!(3)),
        "num_attention_heads",
        "multiple of num_key_value_heads (3)",
    );
    assert_invalid(
        hub_error(|v| v["num_hidden_layers"] = json!(0)),
        "num_hidden_layers",
        "must be positive",
    );
    assert_invalid(
        hub_error(|v| v["vision_config"]["num_attention_heads"] = json!(0)),
        "vision_config.num_attention_heads",
        "must be positive",
    );
    assert_invalid(
        hub_error(|v| v["image_token_id"] = json!(103424)),
        "image_token_id",
        "below vocab_size (103424)",
    );
    assert_invalid(
        hub_error(|v| v["rms_norm_eps"] = json!(-1e-5)),
        "rms_norm_eps",
        "positive number",
    );
    assert_invalid(
        hub_error(|v| v["vision_config"]["image_size"] = json!(10)),
        "vision_config.image_size",
        "at least patch_size",
    );
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    match hub_error(|v| {
        v.as_object_mut().unwrap().remove("vision_config");
    }) {
        ConfigError::MissingField { field, origin } => {
            assert_eq!(field, "vision_config");
            assert_eq!(origin, "test/config.json");
        }
        other => panic!("{other:?}"),
    }
    match hub_error(|v| {
        v["vision_config"].as_object_mut().unwrap().remove("patch_size");
    }) {
        ConfigError::MissingField { field, .. } => assert_eq!(field, "vision_config.patch_size"),
        other => panic!("{other:?}"),
    }
    // The hub class default theta is a placeholder, so the flat form must state it.
    match hub_error(|v| {
        v.as_object_mut().unwrap().remove("rope_theta");
    }) {
        ConfigError::MissingField { field, .. } => assert_eq!(field, "rope_theta"),
        other => panic!("{other:?}"),
    }
    match hub_error(|v| {
        v.as_object_mut().unwrap().remove("rope_scaling");
    }) {
        ConfigError::MissingField { field, .. } => assert_eq!(field, "rope_scaling.mrope_section"),
        other => panic!("{other:?}"),
    }
    let err = hub_error(|v| v["hidden_size"] = json!("1024"));
    let msg = err.to_string();
    match err {
        ConfigError::FieldType {
            field, expected, found, ..
        } => {
            assert_eq!(field, "hidden_size");
            assert_eq!(expected, "a non-negative integer");
            assert_eq!(found, "the string \"1024\"");
        }
        other => panic!("{other:?}"),
    }
    assert!(msg.contains("`hidden_size`"), "{msg}");
    match hub_error(|v| v["rope_scaling"]["mrope_section"] = json!([16, 48])) {
        ConfigError::FieldType { field, .. } => assert_eq!(field, "rope_scaling.mrope_section"),
        other => panic!("{other:?}"),
    }
    match hub_error(|v| v["eos_token_id"] = json!(-1)) {
        ConfigError::FieldType { field, .. } => assert_eq!(field, "eos_token_id"),
        other => panic!("{other:?}"),
    }
}

fn assert_field_value(err: ConfigError, want_field: &str, want_valid: &str) {
    let msg = err.to_string();
    match err {
        ConfigError::FieldValue { field, valid, .. } => {
            assert_eq!(field, want_field);
            assert_eq!(valid, want_valid);
            assert!(msg.contains("valid values"), "{msg}");
        }
        other => panic!("expected FieldValue on {want_field}, got {other:?}"),
    }
}

#[test]
fn enumerated_fields_list_the_valid_values() {
    assert_field_value(hub_error(|v| v["hidden_act"] = json!("gelu")), "hidden_act", "\"silu\"");
    assert_field_value(
        hub_error(|v| v["vision_config"]["hidden_act"] = json!("relu")),
        "vision_config.hidden_act",
        "\"gelu_pytorch_tanh\"",
    );
    assert_field_value(
        hub_error(|v| v["rope_scaling"]["rope_type"] = json!("yarn")),
        "rope_scaling.rope_type",
        "\"default\", \"mrope\"",
    );
    assert_field_value(
        hub_error(|v| v["model_type"] = json!("qwen2_vl")),
        "model_type",
        "\"paddleocr_vl\"",
    );
    assert_field_value(
        hub_error(|v| v["vision_config"]["spatial_merge_size"] = json!(3)),
        "vision_config.spatial_merge_size",
        "2",
    );
    assert_field_value(hub_error(|v| v["use_bias"] = json!(true)), "use_bias", "false");

    let mut value = v5_nested_json();
    value["text_config"]["rope_parameters"]["rope_type"] = json!("linear");
    assert_field_value(
        parse(&value).unwrap_err(),
        "text_config.rope_parameters.rope_type",
        "\"default\", \"mrope\"",
    );
}

// The engine flags (clap, shared by serve, ocr and bench): src/config/cli_args.rs.

fn flags(list: &[&str]) -> Result<EngineSettings, String> {
    parse_engine_flags(list)
}

#[test]
fn engine_defaults() {
    let s = flags(&[]).unwrap();
    assert_eq!(s.engine, EngineConfig::default());
    let cfg = s.engine;
    assert_eq!(cfg.max_model_len, 16384);
    assert_eq!(cfg.max_num_seqs, 256);
    assert_eq!(cfg.max_num_batched_tokens, 8192);
    assert_eq!(cfg.gpu_memory_utilization, 0.9);
    assert_eq!(cfg.dtype, DType::BF16);
    assert!(cfg.enable_prefix_caching);
    assert!(!cfg.enforce_eager);
    assert!(cfg.async_scheduling);
    assert_eq!(cfg.model, None);
    assert!(s.notes.is_empty());
    assert_eq!(s.chat_template, None);
    cfg.validate(ModelConfig::paddleocr_vl_0_9b().text.max_position_embeddings)
        .unwrap();
}

#[test]
fn engine_flags_in_every_spelling() {
    let s = flags(&[
        "--max-model-len",
        "4096",
        "--max_num_seqs=8",
        "--max-num-batched-tokens",
        "2048",
        "--gpu-memory-utilization=0.5",
        "--dtype",
        "auto",
        "--no-enable-prefix-caching",
        "--enforce-eager",
        "--no_async_scheduling",
        "--model",
        "/models/ocr",
        "--revision",
        "v1.5",
        "--mm-processor-cache-gb",
        "0.5",
        "--chat-template=/t/chat.jinja",
    ])
    .unwrap();
    let cfg = &s.engine;
    assert_eq!(cfg.max_model_len, 4096);
    assert_eq!(cfg.max_num_seqs, 8);
    assert_eq!(cfg.max_num_batched_tokens, 2048);
    assert_eq!(cfg.gpu_memory_utilization, 0.5);
    assert_eq!(cfg.dtype, DType::BF16);
    assert!(!cfg.enable_prefix_caching);
    assert!(cfg.enforce_eager);
    assert!(!cfg.async_scheduling);
    assert_eq!(cfg.model.as_deref(), Some(std::path::Path::new("/models/ocr")));
    assert_eq!(s.revision.as_deref(), Some("v1.5"));
    assert_eq!(s.image_cache_bytes, 512 << 20);
    assert_eq!(s.chat_template.as_deref(), Some(std::path::Path::new("/t/chat.jinja")));

    // Last one wins, as with argparse.
    let s = flags(&[
        "--no-enable-prefix-caching",
        "--enable-prefix-caching",
        "--dtype=bfloat16",
    ])
    .unwrap();
    assert!(s.engine.enable_prefix_caching);
    let s = flags(&["--max-model-len", "1000", "--max_model_len=2000"]).unwrap();
    assert_eq!(s.engine.max_model_len, 2000);
    assert_eq!(flags(&["--mm-processor-cache-gb", "0"]).unwrap().image_cache_bytes, 0);
}

#[test]
fn quantization_takes_wint8_and_refuses_the_rest() {
    use ocrvl::config::Quantization;
    assert_eq!(flags(&[]).unwrap().engine.quantization, Quantization::None);
    assert_eq!(
        flags(&["--quantization", "wint8"]).unwrap().engine.quantization,
        Quantization::ExpertsInt8
    );
    assert_eq!(
        flags(&["--quantization=wint8", "--quantization", "none"])
            .unwrap()
            .engine
            .quantization,
        Quantization::None
    );
    for method in ["wint4", "fp8", "awq", "WINT8"] {
        let err = flags(&["--quantization", method]).unwrap_err().to_string();
        assert!(
            err.contains("--quantization") && err.contains("wint8"),
            "{method}: {err}"
        );
    }
}

#[test]
fn graphs_follow_the_compilation_configs() {
    let eager = |list: &[&str]| flags(list).unwrap().engine.enforce_eager;
    assert!(!eager(&[
        "--compilation-config",
        r#"{"cudagraph_mode":"FULL_DECODE_ONLY"}"#
    ]));
    assert!(eager(&["--compilation-config", r#"{"cudagraph_mode": "NONE"}"#]));
    assert!(!eager(&[
        "--compilation-config",
        r#"{"cudagraph_mode":"FULL_AND_PIECEWISE"}"#
    ]));
    assert!(eager(&[
        "--graph-optimization-config",
        r#"{"graph_opt_level":0, "use_cudagraph":false}"#
    ]));
    assert!(!eager(&[
        "--graph-optimization-config",
        r#"{"graph_opt_level":0, "use_cudagraph":true}"#
    ]));
    assert!(eager(&["--enforce-eager"]));
    // --enforce-eager wins over a config asking for graphs, and says so.
    let s = flags(&[
        "--enforce-eager",
        "--compilation-config",
        r#"{"cudagraph_mode":"FULL_DECODE_ONLY"}"#,
    ])
    .unwrap();
    assert!(s.engine.enforce_eager);
    assert!(
        s.notes.iter().any(|n| n.contains("--enforce-eager wins")),
        "{:?}",
        s.notes
    );
    // Capture sizes: speed only, a note.
    let s = flags(&["--compilation-config", r#"{"cudagraph_capture_sizes":[1,2,4]}"#]).unwrap();
    assert!(
        s.notes.iter().any(|n| n.contains("cudagraph_capture_sizes")),
        "{:?}",
        s.notes
    );
}

#[test]
fn flags_without_effect_are_accepted_with_a_note() {
    let s = flags(&[
        "--trust-remote-code",
        "--engine-worker-queue-port",
        "8187",
        "--api-server-count=4",
        "--enable-chunked-prefill",
        "--disable-log-stats",
        "--additional_config",
        r#"{"enable_cpu_binding":true}"#,
        "--tensor-parallel-size",
        "1",
    ])
    .unwrap();
    assert_eq!(s.engine, EngineConfig::default(), "nothing changed");
    for flag in [
        "--trust-remote-code",
        "--engine-worker-queue-port",
        "--api-server-count",
        "--enable-chunked-prefill",
        "--disable-log-stats",
        "--additional-config",
        "--tensor-parallel-size 1",
    ] {
        assert!(
            s.notes.iter().any(|n| n.starts_with(flag) && n.contains("no effect")),
            "{flag}: {:?}",
            s.notes
        );
    }
}

#[test]
fn bad_engine_flags_are_named() {
    for (list, flag, why) in [
        (&["--max-model-len"][..], "--max-model-len", "value is required"),
        (&["--max-num-seqs", "0"], "--max-num-seqs", "1..=256"),
        (&["--max-num-seqs=257"], "--max-num-seqs", "1..=256"),
        (&["--max-model-len", "x"], "--max-model-len", "whole number"),
        (&["--max-model-len=0"], "--max-model-len", "at least 1"),
        (
            &["--max-num-batched-tokens", "0"],
            "--max-num-batched-tokens",
            "at least 1",
        ),
        (&["--gpu-memory-utilization", "0"], "--gpu-memory-utilization", "(0, 1]"),
        (&["--gpu-memory-utilization=1.5"], "--gpu-memory-utilization", "(0, 1]"),
        (&["--gpu-memory-utilization=NaN"], "--gpu-memory-utilization", "(0, 1]"),
        (
            &["--gpu-memory-utilization", "most"],
            "--gpu-memory-utilization",
            "expected a number",
        ),
        (&["--dtype", "float16"], "--dtype", "bfloat16 only"),
        (&["--dtype", "int3"], "--dtype", "valid values: bfloat16, auto"),
        (&["--enforce-eager=true"], "--enforce-eager", "unexpected value"),
        (&["--tensor-parallel-size", "2"], "--tensor-parallel-size", "one GPU"),
        (
            &["--pipeline-parallel-size", "2"],
            "--pipeline-parallel-size",
            "one GPU",
        ),
        (&["--quantization", "awq"], "--quantization", "unquantized"),
        (
            &["--no-enable-chunked-prefill"],
            "--no-enable-chunked-prefill",
            "cannot be turned off",
        ),
        (&["--compilation-config", "{"], "--compilation-config", "not valid JSON"),
        (
            &["--compilation-config", r#"{"cudagraph_mode":"SOME"}"#],
            "--compilation-config",
            "SOME",
        ),
        (
            &["--compilation-config", r#"{"pass_config":{}}"#],
            "--compilation-config",
            "pass_config",
        ),
        (&["--mm-processor-cache-gb", "-1"], "--mm-processor-cache-gb", ">= 0"),
        (&["--bogus-flag"], "--bogus-flag", "unexpected argument"),
    ] {
        let e = flags(list).expect_err(&format!("{list:?} should be rejected"));
        assert!(e.contains(flag) && e.contains(why), "{list:?}: {e}");
    }
}

#[test]
fn engine_validate_checks_against_the_model() {
    let model = ModelConfig::paddleocr_vl_0_9b();
    let cfg = EngineConfig {
        max_model_len: 131_073,
        ..EngineConfig::default()
    };
    assert_invalid(
        cfg.validate(model.text.max_position_embeddings).unwrap_err(),
        "--max-model-len",
        "max_position_embeddings (131072)",
    );
    let cfg = EngineConfig {
        max_model_len: 131_072,
        ..EngineConfig::default()
    };
    cfg.validate(model.text.max_position_embeddings).unwrap();

    let cfg = EngineConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: 32,
        ..EngineConfig::default()
    };
    assert_invalid(
        cfg.validate(model.text.max_position_embeddings).unwrap_err(),
        "--max-num-batched-tokens",
        "--max-num-seqs (64)",
    );
    let cfg = EngineConfig {
        max_num_seqs: 300,
        ..EngineConfig::default()
    };
    assert_invalid(
        cfg.validate(model.text.max_position_embeddings).unwrap_err(),
        "--max-num-seqs",
        "1..=256",
    );
    let cfg = EngineConfig {
        gpu_memory_utilization: 0.0,
        ..EngineConfig::default()
    };
    assert_invalid(
        cfg.validate(model.text.max_position_embeddings).unwrap_err(),
        "--gpu-memory-utilization",
        "(0, 1]",
    );
    let cfg = EngineConfig {
        dtype: DType::F16,
        ..EngineConfig::default()
    };
    assert_invalid(
        cfg.validate(model.text.max_position_embeddings).unwrap_err(),
        "--dtype",
        "bfloat16, auto",
    );
}

fn env(pairs: &[(&str, &str)]) -> Result<EnvFlags, ConfigError> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    EnvFlags::from_lookup(|name| map.get(name).cloned())
}

#[test]
fn env_flags_valid_values() {
    let flags = env(&[]).unwrap();
    assert_eq!(flags.flash_attn_version, FlashAttnVersion::Auto);
    assert_eq!(flags.sampling_class, SamplingClass::Base);

    let fa = |v: &str| env(&[("FLAGS_flash_attn_version", v)]).unwrap().flash_attn_version;
    assert_eq!(fa(""), FlashAttnVersion::Auto);
    assert_eq!(fa("2"), FlashAttnVersion::Fa2);
    assert_eq!(fa("3"), FlashAttnVersion::Fa3);

    let sc = |v: &str| env(&[("FD_SAMPLING_CLASS", v)]).unwrap().sampling_class;
    assert_eq!(sc("base"), SamplingClass::Base);
    assert_eq!(sc(""), SamplingClass::Base);
    assert_eq!(sc("rejection"), SamplingClass::Rejection);

    // Unrelated variables are ignored.
    let flags = env(&[("FLAGS_other", "9"), ("FD_SAMPLING_CLASS", "rejection")]).unwrap();
    assert_eq!(flags.sampling_class, SamplingClass::Rejection);
}

#[test]
fn env_flags_invalid_values_list_the_valid_ones() {
    for bad in ["1", "4", "fa3", " 3"] {
        let err = env(&[("FLAGS_flash_attn_version", bad)]).unwrap_err();
        let msg = err.to_string();
        match err {
            ConfigError::EnvValue { name, value, .. } => {
                assert_eq!(name, "FLAGS_flash_attn_version");
                assert_eq!(value, bad);
            }
            other => panic!("{other:?}"),
        }
        assert!(msg.contains("valid values: 2, 3"), "{msg}");
    }
    for bad in ["Rejection", "greedy", "air"] {
        let err = env(&[("FD_SAMPLING_CLASS", bad)]).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                ConfigError::EnvValue {
                    name: "FD_SAMPLING_CLASS",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("valid values: base, rejection"), "{msg}");
    }
}

#[test]
fn env_flags_quiet_and_gemm_autotune() {
    let flags = env(&[]).unwrap();
    assert!(!flags.quiet);
    assert!(flags.gemm_autotune);
    // OCRVL_QUIET counts when set at all, even empty.
    assert!(env(&[("OCRVL_QUIET", "")]).unwrap().quiet);
    assert!(env(&[("OCRVL_QUIET", "1")]).unwrap().quiet);
    // Only 0 turns the autotuning off.
    assert!(!env(&[("OCRVL_GEMM_AUTOTUNE", "0")]).unwrap().gemm_autotune);
    for on in ["1", "", "yes"] {
        assert!(env(&[("OCRVL_GEMM_AUTOTUNE", on)]).unwrap().gemm_autotune, "{on:?}");
    }
    // The greedy kernel is on unless 0 (measured faster, engine tests passing with it).
    assert!(env(&[]).unwrap().greedy_kernel);
    assert!(!env(&[("OCRVL_GREEDY_KERNEL", "0")]).unwrap().greedy_kernel);
    for on in ["1", ""] {
        assert!(env(&[("OCRVL_GREEDY_KERNEL", on)]).unwrap().greedy_kernel, "{on:?}");
    }
    assert_eq!(env(&[]).unwrap(), EnvFlags::default());
}
