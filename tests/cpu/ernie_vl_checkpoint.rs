//! ERNIE-4.5-VL tensor inventory (spec §4.2), the checkpoint check, and the synthetic
//! directory `synth-model --arch ernie-4.5-vl-28b-a3b --tiny` writes.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use ocrvl::config::{ErnieVlConfig, FamilyConfig, ModelConfig};
use ocrvl::model::ernie_vl::checkpoint::check_dir;
use ocrvl::model::ernie_vl::names::{active_params_per_text_token, expected_tensors};
use ocrvl::model::ernie_vl::synthetic::{special_tokens, synthetic_size, write_synthetic_model, ErnieSyntheticOptions};
use ocrvl::model::names::canonical_name;
use ocrvl::model::weights::WeightsError;
use ocrvl::preprocess::processor_config::ProcessorConfig;

fn shapes(cfg: &ErnieVlConfig) -> HashMap<String, Vec<usize>> {
    expected_tensors(cfg).into_iter().map(|s| (s.name, s.shape)).collect()
}

#[test]
fn full_inventory_matches_the_spec() {
    let cfg = ErnieVlConfig::ernie_4_5_vl_28b_a3b();
    let specs = expected_tensors(&cfg);
    let count = |prefix: &str| specs.iter().filter(|s| s.name.starts_with(prefix)).count();
    // Spec §4.2: vision 387, resampler 15, LM 10,703 (lm_head excluded: tied).
    assert_eq!(count("vision_model."), 387);
    assert_eq!(count("model.resampler_model."), 15);
    assert_eq!(specs.len(), 387 + 15 + 10_703);
    let names: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), specs.len(), "names are unique");
    assert!(!names.contains("lm_head.weight"));

    // Spec §0: 29,399,294,336 parameters with the head tied (58.8 GB of bf16); the hub's
    // "28B" rounds down and the "about 56 GB" is this in GiB (54.8).
    let size = synthetic_size(&cfg);
    assert_eq!(size.params, 29_399_294_336);
    assert_eq!(size.bytes, 2 * 29_399_294_336);
    assert_eq!(size.tensors, specs.len());
    // Spec §0 "about 3.35B" active per text token: attention, dense layer 0, 6 of 64 text
    // experts + the shared SwiGLU + the text router and bias rows in each of the 27 MoE layers,
    // the norms, and the (tied) LM head once.
    let active = active_params_per_text_token(&cfg);
    assert_eq!(active, 3_352_151_936);
    assert_eq!(size.active_params, active);
    let vision: usize = specs
        .iter()
        .filter(|s| s.name.starts_with("vision_model."))
        .map(|s| s.numel())
        .sum();
    assert_eq!(vision, 630_433_280);

    let s = shapes(&cfg);
    for (name, shape) in [
        ("vision_model.patch_embed.proj.weight", vec![1280, 588]),
        ("vision_model.blocks.31.attn.qkv.weight", vec![3840, 1280]),
        ("vision_model.blocks.0.mlp.fc1.bias", vec![5120]),
        ("model.resampler_model.temporal_linear.0.weight", vec![5120, 10240]),
        ("model.resampler_model.mlp.weight", vec![2560, 5120]),
        ("model.resampler_model.after_norm.weight", vec![2560]),
        ("model.embed_tokens.weight", vec![103_424, 2560]),
        ("model.layers.0.mlp.gate_proj.weight", vec![12288, 2560]),
        ("model.layers.27.self_attn.k_proj.weight", vec![512, 2560]),
        ("model.layers.1.mlp.gate.weight", vec![2560, 64]),
        ("model.layers.1.mlp.gate.weight_1", vec![2560, 64]),
        ("model.layers.1.mlp.moe_statics.e_score_correction_bias", vec![2, 64]),
        ("model.layers.5.mlp.experts.63.up_proj.weight", vec![1536, 2560]),
        ("model.layers.5.mlp.experts.64.down_proj.weight", vec![2560, 512]),
        ("model.layers.27.mlp.experts.127.gate_proj.weight", vec![512, 2560]),
        ("model.layers.27.mlp.shared_experts.down_proj.weight", vec![2560, 3072]),
        ("model.norm.weight", vec![2560]),
    ] {
        assert_eq!(s.get(name), Some(&shape), "{name}");
    }
    for absent in [
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.mlp.experts.0.gate_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.experts.128.gate_proj.weight",
        "vision_model.patch_embed.proj.bias",
    ] {
        assert!(!s.contains_key(absent), "{absent}");
    }
}

#[test]
fn tiny_inventory_and_an_untied_head() {
    let cfg = ErnieVlConfig::tiny();
    let specs = expected_tensors(&cfg);
    // 27 vision + 15 resampler + LM: 1 + 3·6 + 3 (dense) + 2·(3 + 16·3 + 3) + 1.
    assert_eq!(specs.len(), 27 + 15 + 1 + 18 + 3 + 2 * 54 + 1);
    assert_eq!(synthetic_size(&cfg).params, 6_544_928);
    let s = shapes(&cfg);
    assert_eq!(s["model.layers.2.mlp.experts.15.down_proj.weight"], vec![256, 32]);
    assert_eq!(s["model.layers.1.mlp.experts.7.gate_proj.weight"], vec![96, 256]);
    assert_eq!(s["model.layers.0.self_attn.q_proj.weight"], vec![640, 256]);

    let mut untied = cfg.clone();
    untied.tie_word_embeddings = false;
    let specs = expected_tensors(&untied);
    let last = specs.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.shape.clone()),
        ("lm_head.weight", vec![1024, 256])
    );
}

#[test]
fn reduced_model_has_the_full_widths_at_three_layers() {
    let cfg = ErnieVlConfig::reduced();
    cfg.validate_in("reduced").unwrap();
    let full = ErnieVlConfig::ernie_4_5_vl_28b_a3b();
    assert_eq!(cfg.text.num_hidden_layers, 3);
    assert_eq!(cfg.moe.moe_layers, vec![false, true, true]);
    assert_eq!(cfg.vision.depth, 2);
    let s = shapes(&cfg);
    let f = shapes(&full);
    // Every tensor of the reduced model has the full model's shape under the same name.
    for (name, shape) in &s {
        assert_eq!(f.get(name), Some(shape), "{name}");
    }
    // Per decoder layer: 1 + 4 + 1 attention and norms; dense 3; MoE 2 routers, the bias,
    // 128 experts x 3 and the shared 3. Vision: patch + 2 x 12 + ln 2; resampler 15; + embed + norm.
    assert_eq!(s.len(), 1 + 24 + 2 + 15 + 1 + (6 + 3) + 2 * (6 + 3 + 384 + 3) + 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synth-model"))
        .args(["--arch", "ernie-4.5-vl-28b-a3b", "--reduced", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("{} tensors", s.len())), "{text}");
    // --reduced is ERNIE's, and not with --tiny.
    for args in [
        &["--reduced", "--dry-run"][..],
        &["--arch", "ernie-4.5-vl-28b-a3b", "--reduced", "--tiny", "--dry-run"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_synth-model"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--reduced"), "{args:?}");
    }
}

#[test]
fn full_size_dry_run_prints_the_inventory_without_writing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synth-model"))
        .args(["--arch", "ernie-4.5-vl-28b-a3b", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("11105 tensors, 29399294336 parameters (3352151936 active"),
        "{text}"
    );
    assert!(text.contains("58798588672 bytes"), "{text}");
}

#[test]
fn config_only_writes_every_file_but_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synth-model"))
        .args(["--arch", "ernie-4.5-vl-28b-a3b", "--config-only", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "preprocessor_config.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let cfg = ErnieVlConfig::from_dir(dir.path()).unwrap();
    assert_eq!(
        cfg.text.num_hidden_layers,
        ErnieVlConfig::ernie_4_5_vl_28b_a3b().text.num_hidden_layers
    );
    assert_eq!(cfg.vision.depth, 32);
    // An ERNIE-only flag.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synth-model"))
        .args(["--config-only", "--out"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config-only"));
}

fn write_tiny(cfg: &ErnieVlConfig) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_model(dir.path(), cfg, &ErnieSyntheticOptions::for_model(true)).unwrap();
    dir
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn tiny_synthetic_directory_round_trips() {
    let cfg = ErnieVlConfig::tiny();
    let dir = write_tiny(&cfg);
    let d = dir.path();
    assert!(!d.join("model.safetensors").exists());
    let index = read_json(&d.join("model.safetensors.index.json"));
    let files: HashSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 3);

    let report = check_dir(d, &cfg).unwrap();
    assert_eq!(report.used_tensors, expected_tensors(&cfg).len());
    assert_eq!(report.used_bytes, synthetic_size(&cfg).bytes);
    assert_eq!(report.files, 3);
    // config.json as written; from_dir adds generation_config.json's EOS ids after the
    // config's own (<|end_of_sentence|>, which closes assistant turns).
    let config_text = std::fs::read_to_string(d.join("config.json")).unwrap();
    assert_eq!(ErnieVlConfig::from_json_str(&config_text, "config.json").unwrap(), cfg);
    let read = ErnieVlConfig::from_dir(d).unwrap();
    let end_of_sentence = special_tokens(&cfg)
        .unwrap()
        .iter()
        .find(|t| t.1 == "<|end_of_sentence|>")
        .unwrap()
        .0;
    let mut eos = cfg.tokens.eos_token_ids.clone();
    eos.push(end_of_sentence);
    assert_eq!(read.tokens.eos_token_ids, eos);
    assert_eq!(
        ErnieVlConfig {
            tokens: cfg.tokens.clone(),
            ..read
        },
        cfg
    );
    assert!(matches!(FamilyConfig::from_dir(d).unwrap(), FamilyConfig::ErnieVl(_)));
    let msg = ModelConfig::from_dir(d).unwrap_err().to_string();
    assert!(msg.contains("reads PaddleOCR-VL configs only"), "{msg}");

    let pc = ProcessorConfig::from_dir(d).unwrap();
    assert_eq!((pc.min_pixels, pc.max_pixels, pc.factor()), (3136, 4_842_768, 28));
    assert_eq!(pc.image_mean, [0.48145466, 0.4578275, 0.40821073]);
}

#[test]
fn tokenizer_and_template_render_an_image_prompt() {
    let cfg = ErnieVlConfig::tiny();
    let dir = write_tiny(&cfg);
    let template = std::fs::read_to_string(dir.path().join("chat_template.jinja")).unwrap();
    let mut env = minijinja::Environment::new();
    env.add_template("chat", &template).unwrap();
    let messages = serde_json::json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
    ]);
    let render = |thinking: Option<bool>| {
        let ctx = match thinking {
            Some(t) => {
                minijinja::context! { messages => messages, add_generation_prompt => true, enable_thinking => t }
            }
            None => minijinja::context! { messages => messages, add_generation_prompt => true },
        };
        env.get_template("chat").unwrap().render(ctx).unwrap()
    };
    let off = render(None);
    assert_eq!(
        off,
        "<|begin_of_sentence|>Be brief.\nUser: Picture 1:<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>\
         Describe the image.\nAssistant: <think>\n\n</think>\n\n"
    );
    assert_eq!(render(Some(false)), off);
    assert!(render(Some(true)).ends_with("\nAssistant: <think>"));

    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    // The template's own text encodes without <unk> (free text beyond the template words and
    // single characters is out of the synthetic vocabulary, as for PaddleOCR-VL's).
    let scaffold = off.replace("Be brief.", "").replace("Describe the image.", "");
    let ids = tok.encode(scaffold.as_str(), false).unwrap().get_ids().to_vec();
    let t = &cfg.tokens;
    for id in [t.image_token_id, t.image_start_token_id, t.image_end_token_id] {
        assert_eq!(ids.iter().filter(|&&x| x == id).count(), 1, "id {id} in {ids:?}");
    }
    let specials = special_tokens(&cfg).unwrap();
    let id_of = |c: &str| specials.iter().find(|s| s.1 == c).unwrap().0;
    assert_eq!(ids[0], id_of("<|begin_of_sentence|>"));
    assert!(ids.contains(&id_of("<think>")) && ids.contains(&id_of("</think>")));
    assert!(!ids.contains(&0), "no <unk> in {ids:?}");
    // The full vocabulary keeps the real ids (spec §6.2).
    let full = special_tokens(&ErnieVlConfig::ernie_4_5_vl_28b_a3b()).unwrap();
    assert!(full.iter().any(|s| s.0 == 100_273 && s.1 == "<|begin_of_sentence|>"));
    assert!(full.iter().any(|s| s.0 == 101_304 && s.1 == "<|IMAGE_START|>"));
}

#[test]
fn a_missing_or_mis_shaped_tensor_is_named() {
    let cfg = ErnieVlConfig::tiny();
    let dir = write_tiny(&cfg);
    let d = dir.path();

    // Drop one tensor from the index: the loader sees only what the index lists.
    let gone = "model.layers.2.mlp.shared_experts.down_proj.weight";
    let index_path = d.join("model.safetensors.index.json");
    let mut index = read_json(&index_path);
    index["weight_map"].as_object_mut().unwrap().remove(gone).unwrap();
    std::fs::write(&index_path, index.to_string()).unwrap();
    match check_dir(d, &cfg).unwrap_err() {
        WeightsError::MissingTensor { name, .. } => assert_eq!(name, gone),
        other => panic!("expected a missing tensor, got {other}"),
    }

    // Files of a model whose vision experts are wider, checked against the tiny config.
    let mut wider = cfg.clone();
    wider.moe.vision_intermediate_size = 48;
    let dir = write_tiny(&wider);
    let err = check_dir(dir.path(), &cfg).unwrap_err();
    let msg = err.to_string();
    match err {
        WeightsError::WrongShape {
            name, expected, found, ..
        } => {
            assert_eq!(name, "model.layers.1.mlp.experts.8.gate_proj.weight");
            assert_eq!((expected, found), (vec![32, 256], vec![48, 256]));
        }
        other => panic!("expected a wrong shape, got {other}"),
    }
    assert!(msg.contains(".safetensors"), "the message names the file: {msg}");

    // A stored tensor the inventory does not list is an error (strict inventory) ...
    let mut no_temporal = cfg.clone();
    no_temporal.use_temporal_conv = false;
    let dir = write_tiny(&cfg);
    match check_dir(dir.path(), &no_temporal).unwrap_err() {
        WeightsError::UnexpectedTensor { name, .. } => {
            assert_eq!(name, "model.resampler_model.temporal_linear.0.bias");
        }
        other => panic!("expected an unexpected tensor, got {other}"),
    }
    // ... and an untied config needs lm_head.weight, which the tied files lack.
    let mut untied = cfg.clone();
    untied.tie_word_embeddings = false;
    match check_dir(dir.path(), &untied).unwrap_err() {
        WeightsError::MissingTensor { name, .. } => assert_eq!(name, "lm_head.weight"),
        other => panic!("expected lm_head missing, got {other}"),
    }
}

/// What transformers 5.17 writes for a random `Ernie4_5_VLMoeForConditionalGeneration`
/// (`tools/gpu/ernie_oracle.py --variant tiny`, GPU host 2026-12-07): its `config.json` (the
/// native nested layout) and every saved tensor's name, shape and dtype. ocrvl's inventory for
/// that config, with the saved names made canonical as the loader does, must be exactly that
/// set: no tensor missing, none extra, every shape and dtype the same.
#[test]
fn transformers_saved_layout_is_the_inventory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ernie_transformers_save");
    let cfg = ErnieVlConfig::from_dir(&dir).unwrap();
    assert!(cfg.tie_word_embeddings);
    let table = std::fs::read_to_string(dir.join("params_saved.tsv")).unwrap();
    let mut saved: HashMap<String, (Vec<usize>, String)> = HashMap::new();
    for line in table.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 4, "{line}");
        let shape: Vec<usize> = serde_json::from_str(cols[1]).unwrap();
        let name = canonical_name(cols[0]).into_owned();
        assert!(saved.insert(name, (shape, cols[2].to_string())).is_none(), "{line}");
    }
    let expected = expected_tensors(&cfg);
    assert_eq!(expected.len(), saved.len(), "tensor count");
    for spec in &expected {
        let (shape, dtype) = saved
            .get(&spec.name)
            .unwrap_or_else(|| panic!("{} is not in the saved files", spec.name));
        assert_eq!(shape, &spec.shape, "{}", spec.name);
        assert_eq!(dtype, "BF16", "{}", spec.name);
    }
    // The vision tower really was saved under the other prefix (so the mapping is exercised).
    assert!(table.contains("model.vision_model.blocks.0.attn.qkv.weight"));
}

#[test]
fn wint8_is_for_models_with_experts() {
    use ocrvl::config::Quantization;
    use ocrvl::model::family::check_quantization;
    let paddle = FamilyConfig::PaddleOcrVl(ModelConfig::paddleocr_vl_0_9b());
    let ernie = FamilyConfig::ErnieVl(ErnieVlConfig::tiny());
    for cfg in [&paddle, &ernie] {
        check_quantization(cfg, Quantization::None).unwrap();
    }
    check_quantization(&ernie, Quantization::ExpertsInt8).unwrap();
    let err = check_quantization(&paddle, Quantization::ExpertsInt8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--quantization") && err.contains("PaddleOCR-VL"), "{err}");
}
