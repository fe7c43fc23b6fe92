//! ERNIE-4.5-VL config.json parsing (docs/ERNIE_4_5_VL_SPEC.md §2) and family detection.

use serde_json::{json, Value};

use ocrvl::config::ernie_vl::ErnieConfigLayout;
use ocrvl::config::model_family::detect_model_family_in;
use ocrvl::config::{detect_model_family, ConfigError, ErnieVlConfig, ModelConfig, ModelFamilyKind};

const HUB_FLAT: &str = r#"{
    "architectures": ["Ernie4_5_VLMoeForConditionalGeneration"],
    "auto_map": {"AutoConfig": "configuration_ernie_45t_vl.Ernie4_5_VLMoEConfig"},
    "model_type": "ernie4_5_moe_vl",
    "hidden_size": 2560,
    "intermediate_size": 12288,
    "num_hidden_layers": 28,
    "num_attention_heads": 20,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-05,
    "vocab_size": 103424,
    "max_position_embeddings": 131072,
    "rope_theta": 500000,
    "freq_allocation": 20,
    "rope_3d": true,
    "tie_word_embeddings": true,
    "use_bias": false,
    "moe_num_experts": [64, 64],
    "moe_intermediate_size": [1536, 512],
    "moe_k": 6,
    "moe_num_shared_experts": 2,
    "moe_layer_start_index": [1, 1],
    "moe_layer_end_index": [29, 28],
    "moe_layer_interval": 1,
    "moe_gate": "topk",
    "moe_use_aux_free": true,
    "im_patch_id": 100295,
    "pixel_hidden_size": 1280,
    "spatial_conv_size": 2,
    "temporal_conv_size": 2,
    "use_temporal_conv": true,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "hidden_size": 1280,
        "num_heads": 16,
        "mlp_ratio": 4,
        "hidden_act": "quick_gelu",
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2
    }
}"#;

/// The flat hub config of baidu/ERNIE-4.5-VL-28B-A3B-PT as the spec's §2.1 table reconstructs
/// it, plus keys that do not change inference (`auto_map`, `moe_gate`, ...), which must be
/// ignored. `moe_layer_end_index` [29, 28] is what a third-party loader's test of the
/// checkpoint quotes; the spec leaves the exact list to verify.
fn hub_flat() -> Value {
    serde_json::from_str(HUB_FLAT).unwrap()
}

const NATIVE: &str = r#"{
    "architectures": ["Ernie4_5_VLMoeForConditionalGeneration"],
    "model_type": "ernie4_5_vl_moe",
    "image_token_id": 100295,
    "image_start_token_id": 101304,
    "image_end_token_id": 101305,
    "video_start_token_id": 101306,
    "video_end_token_id": 101307,
    "video_token_id": 103367,
    "tie_word_embeddings": true,
    "text_config": {
        "model_type": "ernie4_5_vl_moe_text",
        "vocab_size": 103424,
        "hidden_size": 2560,
        "intermediate_size": 12288,
        "num_hidden_layers": 28,
        "num_attention_heads": 20,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "use_bias": false,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [22, 22, 20]},
        "moe_intermediate_size": [1536, 512],
        "moe_k": 6,
        "moe_num_experts": 64,
        "moe_num_shared_experts": 2,
        "moe_norm_min": 1e-12,
        "mlp_layer_types": ["dense"]
    },
    "vision_config": {
        "model_type": "ernie4_5_vl_moe_vision",
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_heads": 16,
        "hidden_act": "quick_gelu",
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_merge_size": 2,
        "rms_norm_eps": 1e-6
    }
}"#;

/// The transformers-native nested form (spec §2.2), as its converter writes it.
fn native() -> Value {
    let mut value: Value = serde_json::from_str(NATIVE).unwrap();
    let kinds: Vec<&str> = std::iter::once("dense")
        .chain(std::iter::repeat_n("sparse", 27))
        .collect();
    value["text_config"]["mlp_layer_types"] = json!(kinds);
    value
}

fn parse(value: &Value) -> Result<ErnieVlConfig, ConfigError> {
    ErnieVlConfig::from_json_str(&value.to_string(), "test/config.json")
}

/// Edits a copy of the hub json; the parse must fail; returns the message.
fn hub_error(edit: impl FnOnce(&mut Value)) -> String {
    let mut value = hub_flat();
    edit(&mut value);
    parse(&value).expect_err("edited config should be rejected").to_string()
}

#[test]
fn hub_flat_config_gives_the_28b_a3b_numbers() {
    let cfg = parse(&hub_flat()).unwrap();
    assert_eq!(cfg, ErnieVlConfig::ernie_4_5_vl_28b_a3b());
    // The spec's headline numbers, spelled out rather than only compared with the preset.
    assert_eq!(
        (
            cfg.text.num_attention_heads,
            cfg.text.num_key_value_heads,
            cfg.text.head_dim
        ),
        (20, 4, 128)
    );
    assert_eq!(cfg.text.mrope_section, [22, 22, 20]);
    assert_eq!(cfg.text.rope_theta, 500_000.0);
    assert!(!cfg.moe.is_moe_layer(0));
    assert!((1..28).all(|l| cfg.moe.is_moe_layer(l)));
    assert_eq!(cfg.moe.num_moe_layers(), 27);
    assert_eq!(cfg.moe.shared_intermediate_size(), 3072);
    assert_eq!(
        (cfg.moe.text_intermediate_size, cfg.moe.vision_intermediate_size),
        (1536, 512)
    );
    assert_eq!(
        (
            cfg.vision.intermediate_size,
            cfg.vision.head_dim(),
            cfg.vision.merged_width()
        ),
        (5120, 80, 5120)
    );
    assert_eq!(cfg.vision.layer_norm_eps, 1e-6);
    assert_eq!(cfg.tokens.image_token_id, 100_295);
    // Absent from the flat file: transformers' defaults, one below PaddleOCR-VL's ids.
    assert_eq!(
        (cfg.tokens.image_start_token_id, cfg.tokens.image_end_token_id),
        (101_304, 101_305)
    );
    assert_eq!(cfg.layout, ErnieConfigLayout::HubFlat);
}

#[test]
fn native_config_gives_the_same_model() {
    let cfg = parse(&native()).unwrap();
    let mut expected = ErnieVlConfig::ernie_4_5_vl_28b_a3b();
    expected.layout = ErnieConfigLayout::Native;
    expected.tokens.video_token_id = Some(103_367);
    // The native class has no pad/bos/eos (they come from the tokenizer / generation config).
    expected.tokens.pad_token_id = None;
    expected.tokens.bos_token_id = None;
    expected.tokens.eos_token_ids = Vec::new();
    assert_eq!(cfg, expected);
}

#[test]
fn written_hub_json_reads_back() {
    let mut with_video_id = ErnieVlConfig::tiny();
    with_video_id.tokens.video_token_id = Some(1005);
    for cfg in [
        ErnieVlConfig::ernie_4_5_vl_28b_a3b(),
        ErnieVlConfig::tiny(),
        with_video_id,
    ] {
        let text = cfg.to_hub_json().unwrap();
        assert_eq!(ErnieVlConfig::from_json_str(&text, "roundtrip").unwrap(), cfg);
    }
    let mut gappy = ErnieVlConfig::tiny();
    gappy.moe.moe_layers = vec![true, false, true];
    assert!(gappy.to_hub_json().unwrap_err().to_string().contains("contiguous"));
}

#[test]
fn moe_layers_follow_start_end_and_interval() {
    let mut value = hub_flat();
    value["moe_layer_interval"] = json!(2);
    let cfg = parse(&value).unwrap();
    // (i + 1) % 2 == 0: the odd layers from 1.
    let moe: Vec<usize> = (0..28).filter(|&l| cfg.moe.is_moe_layer(l)).collect();
    assert_eq!(moe, (1..28).step_by(2).collect::<Vec<_>>());

    let mut value = hub_flat();
    value["moe_layer_start_index"] = json!(3);
    value["moe_layer_end_index"] = json!(-1);
    let cfg = parse(&value).unwrap();
    assert_eq!(cfg.moe.moe_layers.iter().position(|&m| m), Some(3));
    assert_eq!(cfg.moe.num_moe_layers(), 25);
}

#[test]
fn errors_name_the_file_and_the_field() {
    let msg = hub_error(|v| {
        v.as_object_mut().unwrap().remove("moe_k");
    });
    assert_eq!(msg, "test/config.json: missing field `moe_k`");

    let msg = hub_error(|v| v["vision_config"]["num_heads"] = json!("16"));
    assert!(
        msg.contains("test/config.json") && msg.contains("`vision_config.num_heads`"),
        "{msg}"
    );

    let msg = hub_error(|v| v["moe_num_experts"] = json!([64, 32]));
    assert!(
        msg.contains("`moe_num_experts`") && msg.contains("same expert count"),
        "{msg}"
    );

    let msg = hub_error(|v| v["hidden_act"] = json!("gelu"));
    assert!(msg.contains("`hidden_act`") && msg.contains("silu"), "{msg}");

    let msg = hub_error(|v| v["vision_config"]["hidden_act"] = json!("gelu"));
    assert!(
        msg.contains("`vision_config.hidden_act`") && msg.contains("quick_gelu"),
        "{msg}"
    );

    let msg = hub_error(|v| v["freq_allocation"] = json!(21));
    assert!(msg.contains("`freq_allocation`"), "{msg}");

    let msg = hub_error(|v| v["moe_layer_end_index"] = json!([27, 20]));
    assert!(
        msg.contains("`moe_layer_start_index`") && msg.contains("layer 21"),
        "{msg}"
    );

    let msg = hub_error(|v| v["moe_k"] = json!(65));
    assert!(msg.contains("`moe_k`") && msg.contains("exceeds"), "{msg}");

    let msg = hub_error(|v| v["pixel_hidden_size"] = json!(1152));
    assert!(msg.contains("`pixel_hidden_size`"), "{msg}");

    let msg = hub_error(|v| v["im_patch_id"] = json!(200_000));
    assert!(
        msg.contains("`im_patch_id`") && msg.contains("outside the vocabulary"),
        "{msg}"
    );

    let mut value = native();
    value["text_config"]["mlp_layer_types"][3] = json!("moe");
    let msg = parse(&value).unwrap_err().to_string();
    assert!(msg.contains("`text_config.mlp_layer_types`"), "{msg}");

    let mut value = native();
    value["text_config"]["rope_parameters"]["rope_type"] = json!("yarn");
    let msg = parse(&value).unwrap_err().to_string();
    assert!(msg.contains("`text_config.rope_parameters.rope_type`"), "{msg}");
}

#[test]
fn family_is_detected_from_model_type_or_architectures() {
    assert_eq!(detect_model_family(&hub_flat()), ModelFamilyKind::ErnieVl);
    assert_eq!(detect_model_family(&native()), ModelFamilyKind::ErnieVl);
    let mut by_arch_only = hub_flat();
    by_arch_only.as_object_mut().unwrap().remove("model_type");
    assert_eq!(detect_model_family(&by_arch_only), ModelFamilyKind::ErnieVl);

    let paddle: Value = serde_json::from_str(&ModelConfig::tiny().to_hub_json()).unwrap();
    assert_eq!(detect_model_family(&paddle), ModelFamilyKind::PaddleOcrVl);
    assert_eq!(detect_model_family(&json!({})), ModelFamilyKind::PaddleOcrVl);
}

#[test]
fn an_ernie_directory_is_refused_by_paddleocr_only_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), hub_flat().to_string()).unwrap();
    assert_eq!(detect_model_family_in(dir.path()).unwrap(), ModelFamilyKind::ErnieVl);
    let msg = ModelConfig::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("ERNIE-4.5-VL is recognised, but this path reads PaddleOCR-VL configs only"),
        "{msg}"
    );
    assert!(msg.contains("config.json") && msg.contains("serve"), "{msg}");

    // A broken ERNIE file gets its own field error, not a PaddleOCR-VL one.
    let mut broken = hub_flat();
    broken.as_object_mut().unwrap().remove("moe_intermediate_size");
    let msg = ModelConfig::from_json_str(&broken.to_string(), "x/config.json")
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "x/config.json: missing field `moe_intermediate_size`");

    // PaddleOCR-VL's own errors are unchanged.
    let msg = ModelConfig::from_json_str(r#"{"model_type": "llama"}"#, "p/config.json")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`model_type`") && msg.contains("paddleocr_vl"), "{msg}");
}
