//! CPU tests of checkpoint opening and validation, on synthetic tiny checkpoints written to
//! temporary directories and then damaged on purpose. Every failure case asserts the error
//! variant and the tensor or file it names.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ocrvl::config::ModelConfig;
use ocrvl::model::names::{canonical_name, expected_tensors, unused_tensors, TensorSpec, EMBED_TOKENS, LM_HEAD};
use ocrvl::model::synthetic::{
    synthetic_tensor_data, synthetic_tensor_specs, write_synthetic_model, SyntheticOptions, SEED_KEY, SYNTHETIC_KEY,
};
use ocrvl::model::weights::{Checkpoint, WeightsError, INDEX_FILE, SINGLE_FILE};
use ocrvl::runtime::DType;
use safetensors::{Dtype, SafeTensors};
use tempfile::TempDir;

const SEED: u64 = 1234;

fn opts(shards: usize) -> SyntheticOptions {
    SyntheticOptions {
        seed: SEED,
        shards,
        include_unused: false,
        include_lm_head: true,
        lm_head_scale: 1.0,
        ..SyntheticOptions::default()
    }
}

fn write_tiny_fresh(opts: &SyntheticOptions) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_model(dir.path(), &ModelConfig::tiny(), opts).unwrap();
    dir
}

/// A private copy of a tiny checkpoint. Each distinct option set is generated once per test
/// binary and copied after that: generation is slow in unoptimised test builds, copying is not.
fn write_tiny(opts: &SyntheticOptions) -> TempDir {
    type Key = (u64, usize, bool, bool);
    static TEMPLATES: Mutex<BTreeMap<Key, TempDir>> = Mutex::new(BTreeMap::new());
    let key = (opts.seed, opts.shards, opts.include_unused, opts.include_lm_head);
    let mut templates = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    let template = templates.entry(key).or_insert_with(|| write_tiny_fresh(opts));
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(template.path()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn spec(name: &str) -> TensorSpec {
    expected_tensors(&ModelConfig::tiny())
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no spec {name}"))
}

/// A few tensors of each kind, from the start, middle and end of the file.
const SAMPLE: [&str; 6] = [
    "visual.vision_model.embeddings.patch_embedding.weight",
    "visual.vision_model.encoder.layers.1.layer_norm2.weight",
    "mlp_AR.linear_1.bias",
    EMBED_TOKENS,
    "model.layers.1.self_attn.k_proj.weight",
    LM_HEAD,
];

/// One tensor held in memory, to rewrite a checkpoint with the safetensors crate's writer.
struct Owned {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_file(path: &Path) -> Vec<Owned> {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<Owned> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| Owned {
            name,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn write_file(path: &Path, tensors: &[Owned]) {
    let views = tensors.iter().map(|t| {
        let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap();
        (t.name.clone(), view)
    });
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Writes a tiny single-file checkpoint and lets `edit` change its tensors.
fn edited_tiny(edit: impl FnOnce(&mut Vec<Owned>)) -> TempDir {
    let dir = write_tiny(&opts(1));
    let path = dir.path().join(SINGLE_FILE);
    let mut tensors = read_file(&path);
    edit(&mut tensors);
    write_file(&path, &tensors);
    dir
}

fn find<'a>(tensors: &'a mut [Owned], name: &str) -> &'a mut Owned {
    tensors.iter_mut().find(|t| t.name == name).unwrap()
}

fn validate_err(dir: &Path) -> WeightsError {
    let ckpt = Checkpoint::open(dir).unwrap();
    match ckpt.validate(&ModelConfig::tiny()) {
        Ok(_) => panic!("validation should fail"),
        Err(err) => err,
    }
}

fn open_err(dir: &Path) -> WeightsError {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("open should fail"),
        Err(err) => err,
    }
}

#[test]
fn single_file_round_trip() {
    let dir = write_tiny(&opts(1));
    let cfg = ModelConfig::tiny();
    assert_eq!(ModelConfig::from_dir(dir.path()).unwrap(), cfg);

    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.metadata_value(SYNTHETIC_KEY), Some("ocrvl"));
    assert_eq!(ckpt.metadata_value(SEED_KEY), Some("1234"));
    let weights = ckpt.validate(&cfg).unwrap();
    let expected = expected_tensors(&cfg);
    assert_eq!(weights.len(), expected.len());
    assert!(!weights.lm_head_tied());
    assert_eq!((weights.unused_skipped(), weights.unknown_skipped().len()), (0, 0));
    // Inventory order and total size.
    let order: Vec<&str> = weights.iter().map(|t| t.name).collect();
    let want: Vec<&str> = expected.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, want);
    assert_eq!(
        weights.total_bytes(),
        expected.iter().map(TensorSpec::size_bytes).sum::<usize>()
    );

    // Bytes: against regeneration from the seed and against an independent parse.
    let independent = read_file(&dir.path().join(SINGLE_FILE));
    for name in SAMPLE {
        let got = weights.get(name).unwrap();
        assert_eq!(got.name, name);
        assert_eq!(got.dtype, DType::BF16);
        assert_eq!(got.shape, spec(name).shape.as_slice());
        assert_eq!(got.data, synthetic_tensor_data(SEED, &spec(name)).as_slice(), "{name}");
        let other = independent.iter().find(|t| t.name == name).unwrap();
        assert_eq!(got.data, other.data.as_slice(), "{name}");
    }
    assert!(
        weights.get("model.layers.2.mlp.up_proj.weight").is_none(),
        "tiny has 2 layers"
    );
}

#[test]
fn sharded_round_trip_matches_single_file() {
    let single = write_tiny(&opts(1));
    let sharded = write_tiny(&opts(3));
    assert!(!sharded.path().join(SINGLE_FILE).exists());
    assert!(sharded.path().join(INDEX_FILE).exists());
    let single = Checkpoint::open(single.path()).unwrap();
    let sharded = Checkpoint::open(sharded.path()).unwrap();
    assert_eq!(sharded.files().count(), 3);
    let cfg = ModelConfig::tiny();
    let a = single.validate(&cfg).unwrap();
    let b = sharded.validate(&cfg).unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b.iter()) {
        assert_eq!((x.name, x.shape), (y.name, y.shape));
        assert!(x.data == y.data, "{} differs between single and sharded", x.name);
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = write_tiny_fresh(&opts(1));
    let b = write_tiny_fresh(&opts(1));
    let c = write_tiny_fresh(&SyntheticOptions {
        seed: SEED + 1,
        ..opts(1)
    });
    let read = |d: &TempDir| fs::read(d.path().join(SINGLE_FILE)).unwrap();
    assert!(read(&a) == read(&b));
    let (ca, cc) = (Checkpoint::open(a.path()).unwrap(), Checkpoint::open(c.path()).unwrap());
    for name in SAMPLE {
        assert_ne!(ca.tensor(name).unwrap().data, cc.tensor(name).unwrap().data, "{name}");
    }
}

#[test]
fn header_is_valid_safetensors_and_eight_aligned() {
    let dir = write_tiny(&opts(1));
    let bytes = fs::read(dir.path().join(SINGLE_FILE)).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(header_len % 8, 0);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), expected_tensors(&ModelConfig::tiny()).len());

    let pre: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("preprocessor_config.json")).unwrap()).unwrap();
    assert_eq!(pre["min_pixels"], 112896);
    assert_eq!(pre["max_pixels"], 1003520);
    assert_eq!(pre["image_mean"], serde_json::json!([0.5, 0.5, 0.5]));
    assert_eq!(pre["merge_size"], 2);
}

/// Mean and standard deviation of a bf16 tensor.
fn stats(data: &[u8]) -> (f64, f64) {
    let values: Vec<f64> = data
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
        .collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn synthetic_values_follow_their_distributions() {
    let cfg = ModelConfig::tiny();
    let dir = write_tiny(&opts(1));
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let check = |name: &str, mean: f64, std: f64| {
        let (m, s) = stats(ckpt.tensor(name).unwrap().data);
        assert!((m - mean).abs() < 0.1 * std + 1e-3, "{name}: mean {m}, want {mean}");
        assert!((s / std - 1.0).abs() < 0.1, "{name}: std {s}, want {std}");
    };
    let fan_in = cfg.text.hidden_size as f64;
    check("model.layers.0.mlp.gate_proj.weight", 0.0, 1.0 / fan_in.sqrt());
    check(
        "model.layers.0.self_attn.o_proj.weight",
        0.0,
        1.0 / (cfg.text.q_width() as f64).sqrt(),
    );
    check(EMBED_TOKENS, 0.0, 0.02);
    check("visual.vision_model.post_layernorm.weight", 1.0, 0.05);
}

#[test]
fn missing_tensor_is_named() {
    let dir = edited_tiny(|t| t.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight"));
    match validate_err(dir.path()) {
        WeightsError::MissingTensor { name, dir: d } => {
            assert_eq!(name, "model.layers.1.mlp.up_proj.weight");
            assert_eq!(d, dir.path());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_shape_reports_expected_and_found() {
    let dir = edited_tiny(|t| find(t, "mlp_AR.linear_2.weight").shape = vec![576, 256]);
    let err = validate_err(dir.path());
    let msg = err.to_string();
    match err {
        WeightsError::WrongShape {
            name,
            expected,
            found,
            file,
        } => {
            assert_eq!(name, "mlp_AR.linear_2.weight");
            assert_eq!(expected, vec![256, 576]);
            assert_eq!(found, vec![576, 256]);
            assert_eq!(file, dir.path().join(SINGLE_FILE));
        }
        other => panic!("{other:?}"),
    }
    assert!(msg.contains("[576, 256]") && msg.contains("[256, 576]"), "{msg}");
}

#[test]
fn checkpoint_for_another_config_fails_on_the_first_tensor() {
    let dir = write_tiny(&opts(1));
    let mut cfg = ModelConfig::tiny();
    cfg.vision.hidden_size = 4 * 72;
    cfg.vision.num_attention_heads = 4;
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    match ckpt.validate(&cfg) {
        Err(WeightsError::WrongShape { name, .. }) => {
            assert_eq!(name, "visual.vision_model.embeddings.patch_embedding.weight")
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn wrong_and_unsupported_dtypes() {
    // BF16 → F32 of the same values: a supported dtype the engine still refuses.
    let dir = edited_tiny(|t| {
        let norm = find(t, "model.norm.weight");
        norm.data = norm
            .data
            .chunks_exact(2)
            .flat_map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes())
            .collect();
        norm.dtype = Dtype::F32;
    });
    match validate_err(dir.path()) {
        WeightsError::WrongDtype {
            name, expected, found, ..
        } => {
            assert_eq!(name, "model.norm.weight");
            assert_eq!((expected, found), (DType::BF16, DType::F32));
        }
        other => panic!("{other:?}"),
    }

    let dir = edited_tiny(|t| {
        let bias = find(t, "mlp_AR.linear_1.bias");
        bias.data.extend(vec![0u8; bias.data.len() * 3]);
        bias.dtype = Dtype::F64;
    });
    match validate_err(dir.path()) {
        WeightsError::UnsupportedDtype { tensor, dtype, .. } => {
            assert_eq!(tensor, "mlp_AR.linear_1.bias");
            assert_eq!(dtype, "F64");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn problems_are_reported_first_in_inventory_order() {
    // model.norm.weight comes late in the inventory, the patch embedding first.
    let dir = edited_tiny(|t| {
        t.retain(|t| t.name != "model.norm.weight");
        find(t, "visual.vision_model.embeddings.patch_embedding.weight").shape = vec![144, 588];
    });
    match validate_err(dir.path()) {
        WeightsError::WrongShape { name, .. } => {
            assert_eq!(name, "visual.vision_model.embeddings.patch_embedding.weight")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_file_names_the_first_short_tensor() {
    let dir = write_tiny(&opts(1));
    let path = dir.path().join(SINGLE_FILE);
    let len = fs::metadata(&path).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 100).unwrap();
    match open_err(dir.path()) {
        WeightsError::Truncated {
            file,
            tensor,
            needed,
            file_len,
        } => {
            assert_eq!(file, path);
            // The synthetic writer puts lm_head last.
            assert_eq!(tensor, LM_HEAD);
            assert_eq!((needed, file_len), (len, len - 100));
        }
        other => panic!("{other:?}"),
    }
}

fn corrupt_reason(dir: &Path) -> String {
    match open_err(dir) {
        WeightsError::CorruptHeader { file, reason } => {
            assert_eq!(file, dir.join(SINGLE_FILE));
            reason
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn corrupt_headers_say_what_is_wrong() {
    let dir = write_tiny(&opts(1));
    let path = dir.path().join(SINGLE_FILE);
    let original = fs::read(&path).unwrap();

    let mut bytes = original.clone();
    bytes[8..24].copy_from_slice(b"not json at all!");
    fs::write(&path, &bytes).unwrap();
    assert!(corrupt_reason(dir.path()).contains("not valid safetensors JSON"));

    let mut bytes = original.clone();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    assert!(corrupt_reason(dir.path()).contains("100 MB limit"));

    let mut bytes = original.clone();
    bytes[..8].copy_from_slice(&(original.len() as u64).to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    assert!(corrupt_reason(dir.path()).contains("bytes follow it"));

    fs::write(&path, [1u8, 2, 3]).unwrap();
    assert!(corrupt_reason(dir.path()).contains("too short"));

    let mut bytes = original.clone();
    bytes.extend_from_slice(&[0; 16]);
    fs::write(&path, &bytes).unwrap();
    assert!(corrupt_reason(dir.path()).contains("16 bytes after the last tensor"));
}

#[test]
fn index_pointing_to_a_missing_shard() {
    let dir = write_tiny(&opts(3));
    fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    match open_err(dir.path()) {
        WeightsError::ShardMissing { index, shard, tensor } => {
            assert_eq!(index, dir.path().join(INDEX_FILE));
            assert_eq!(shard, "model-00002-of-00003.safetensors");
            assert!(!tensor.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

fn rewrite_index(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(INDEX_FILE);
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut index);
    fs::write(&path, index.to_string()).unwrap();
}

#[test]
fn index_problems() {
    let dir = write_tiny(&opts(2));
    rewrite_index(dir.path(), |i| {
        i["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors".into()
    });
    match open_err(dir.path()) {
        WeightsError::TensorNotInShard { tensor, shard, .. } => {
            assert_eq!(tensor, "model.extra.weight");
            assert_eq!(shard, dir.path().join("model-00001-of-00002.safetensors"));
        }
        other => panic!("{other:?}"),
    }

    let dir = write_tiny(&opts(2));
    rewrite_index(dir.path(), |i| {
        i["weight_map"][EMBED_TOKENS] = "../elsewhere.safetensors".into()
    });
    assert!(matches!(open_err(dir.path()),
        WeightsError::IndexMalformed { reason, .. } if reason.contains("not a plain file name")));

    let dir = write_tiny(&opts(2));
    rewrite_index(dir.path(), |i| *i = serde_json::json!({"metadata": {}}));
    assert!(matches!(open_err(dir.path()),
        WeightsError::IndexMalformed { reason, .. } if reason.contains("no `weight_map`")));

    fs::write(dir.path().join(INDEX_FILE), "{ not json").unwrap();
    match open_err(dir.path()) {
        WeightsError::IndexMalformed { path, reason } => {
            assert_eq!(path, dir.path().join(INDEX_FILE));
            assert!(reason.contains("not valid JSON"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_directory_and_missing_weights() {
    let dir = tempfile::tempdir().unwrap();
    let gone: PathBuf = dir.path().join("nope");
    assert!(matches!(open_err(&gone), WeightsError::DirMissing { dir } if dir == gone));
    assert!(matches!(open_err(dir.path()),
        WeightsError::NoWeightFiles { dir: d } if d == dir.path()));
}

#[test]
fn unused_and_unknown_tensors_are_skipped_and_counted() {
    let dir = write_tiny(&SyntheticOptions {
        include_unused: true,
        ..opts(2)
    });
    let cfg = ModelConfig::tiny();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let weights = ckpt.validate(&cfg).unwrap();
    assert_eq!(weights.unused_skipped(), unused_tensors(&cfg).len());
    assert!(weights.unknown_skipped().is_empty());
    assert_eq!(weights.len(), expected_tensors(&cfg).len());
    assert!(weights.get("visual.vision_model.head.probe").is_none());

    let dir = edited_tiny(|t| {
        t.push(Owned {
            name: "model.some_adapter.weight".into(),
            dtype: Dtype::I64,
            shape: vec![2],
            data: vec![0; 16],
        })
    });
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let weights = ckpt.validate(&cfg).unwrap();
    assert_eq!(weights.unknown_skipped(), ["model.some_adapter.weight".to_string()]);
}

#[test]
fn absent_lm_head_falls_back_to_the_embedding() {
    let cfg = ModelConfig::tiny();
    assert!(!cfg.tie_word_embeddings, "fallback must not depend on the config flag");
    let dir = write_tiny(&SyntheticOptions {
        include_lm_head: false,
        ..opts(1)
    });
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let weights = ckpt.validate(&cfg).unwrap();
    assert!(weights.lm_head_tied());
    assert_eq!(weights.len(), expected_tensors(&cfg).len() - 1);
    assert!(
        weights.iter().all(|t| t.name != LM_HEAD),
        "tied lm_head is not uploaded twice"
    );
    let head = weights.get(LM_HEAD).unwrap();
    let embed = weights.get(EMBED_TOKENS).unwrap();
    assert_eq!(head.name, EMBED_TOKENS);
    assert_eq!(head.data.as_ptr(), embed.data.as_ptr());
    let untied: usize = expected_tensors(&cfg).iter().map(TensorSpec::size_bytes).sum();
    assert_eq!(weights.total_bytes(), untied - embed.size_bytes());
}

/// Hub name → the name transformers v5 saves (MODEL_SPEC §4.2).
fn v5_name(hub: &str) -> String {
    if let Some(rest) = hub.strip_prefix("visual.") {
        format!("model.visual.{rest}")
    } else if let Some(rest) = hub.strip_prefix("mlp_AR.") {
        format!("model.projector.{rest}")
    } else if let Some(rest) = hub.strip_prefix("model.") {
        format!("model.language_model.{rest}")
    } else {
        hub.to_string()
    }
}

#[test]
fn v5_saved_names_are_accepted() {
    let single = write_tiny(&opts(1));
    let renamed = edited_tiny(|t| {
        for tensor in t.iter_mut() {
            tensor.name = v5_name(&tensor.name);
        }
    });
    let names = read_file(&renamed.path().join(SINGLE_FILE));
    assert!(names
        .iter()
        .any(|t| t.name == "model.language_model.embed_tokens.weight"));
    assert!(names
        .iter()
        .all(|t| canonical_name(&t.name) != t.name || t.name == LM_HEAD));

    let cfg = ModelConfig::tiny();
    let (a, b) = (
        Checkpoint::open(single.path()).unwrap(),
        Checkpoint::open(renamed.path()).unwrap(),
    );
    let (a, b) = (a.validate(&cfg).unwrap(), b.validate(&cfg).unwrap());
    for name in SAMPLE {
        assert_eq!(b.get(name).unwrap().name, name, "views carry hub names");
        assert_eq!(a.get(name).unwrap().data, b.get(name).unwrap().data, "{name}");
    }
}

#[test]
fn a_tensor_stored_under_both_names_is_an_error() {
    let dir = edited_tiny(|t| {
        let norm = find(t, "model.norm.weight");
        let copy = Owned {
            name: v5_name(&norm.name),
            dtype: norm.dtype,
            shape: norm.shape.clone(),
            data: norm.data.clone(),
        };
        t.push(copy);
    });
    match open_err(dir.path()) {
        WeightsError::DuplicateTensor { name, first, second } => {
            assert_eq!(name, "model.norm.weight");
            let mut stored = [first, second];
            stored.sort();
            assert_eq!(stored, ["model.language_model.norm.weight", "model.norm.weight"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn synthetic_writer_rejects_bad_options() {
    let dir = write_tiny(&opts(1));
    // Shards next to an existing model.safetensors would be shadowed by it.
    let err = write_synthetic_model(dir.path(), &ModelConfig::tiny(), &opts(2)).unwrap_err();
    assert!(err.to_string().contains("would shadow the shards"), "{err}");

    let specs = synthetic_tensor_specs(&ModelConfig::tiny(), &opts(1)).len();
    let fresh = tempfile::tempdir().unwrap();
    for shards in [0, specs + 1] {
        let err = write_synthetic_model(fresh.path(), &ModelConfig::tiny(), &opts(shards)).unwrap_err();
        assert!(err.to_string().contains("shards must be in 1..="), "{err}");
    }
    let mut bad = ModelConfig::tiny();
    bad.text.mrope_section = [16, 24, 8];
    let err = write_synthetic_model(fresh.path(), &bad, &opts(1)).unwrap_err();
    assert!(err.to_string().contains("mrope_section"), "{err}");
}
