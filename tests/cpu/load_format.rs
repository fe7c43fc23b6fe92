//! `--load-format`: vLLM's spellings parse (`auto`, `safetensors`, `dummy`; the rest refused by
//! name), and the dummy checkpoint holds, for every tensor of the inventory, exactly the bytes
//! `synth-model` writes with seed 0, so a config-only directory loads as the synthetic model.

use ocrvl::config::{parse_engine_flags, ErnieVlConfig, LoadFormat};
use ocrvl::model::ernie_vl::checkpoint::validate;
use ocrvl::model::ernie_vl::names::expected_tensors;
use ocrvl::model::random_weights::open_checkpoint;
use ocrvl::model::synthetic::synthetic_tensor_data;
use ocrvl::model::weights::WeightsError;

#[test]
fn load_format_flag_takes_vllm_spellings() {
    let format = |args: &[&str]| parse_engine_flags(args).map(|s| s.engine.load_format);
    assert_eq!(format(&[]).unwrap(), LoadFormat::Files);
    assert_eq!(format(&["--load-format", "auto"]).unwrap(), LoadFormat::Files);
    assert_eq!(format(&["--load-format", "safetensors"]).unwrap(), LoadFormat::Files);
    assert_eq!(format(&["--load-format", "dummy"]).unwrap(), LoadFormat::Dummy);
    assert_eq!(format(&["--load_format=dummy"]).unwrap(), LoadFormat::Dummy);
    for other in ["pt", "gguf", "bitsandbytes", ""] {
        let err = format(&["--load-format", other]).unwrap_err();
        assert!(
            err.contains("--load-format") && err.contains("dummy"),
            "{other:?}: {err}"
        );
    }
}

#[test]
fn dummy_weights_are_the_synthetic_checkpoints_bytes() {
    let cfg = ErnieVlConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    let specs = expected_tensors(&cfg);
    let ckpt = open_checkpoint(dir.path(), &specs, LoadFormat::Dummy).unwrap();
    assert_eq!(ckpt.len(), specs.len());
    for spec in &specs {
        let t = ckpt.tensor(&spec.name).unwrap();
        assert_eq!(t.shape, &spec.shape[..], "{}", spec.name);
        assert!(
            t.data == &synthetic_tensor_data(0, spec)[..],
            "{}: not the synthetic bytes",
            spec.name
        );
    }
    // The family's own check accepts it as a checkpoint of `cfg`.
    let valid = validate(&ckpt, &cfg).unwrap();
    assert_eq!(valid.len(), specs.len());
}

#[test]
fn dummy_weights_still_need_the_directory() {
    let cfg = ErnieVlConfig::tiny();
    let missing = std::env::temp_dir().join("ocrvl-no-such-model-dir");
    let Err(err) = open_checkpoint(&missing, &expected_tensors(&cfg), LoadFormat::Dummy) else {
        panic!("a missing directory opened");
    };
    assert!(matches!(err, WeightsError::DirMissing { .. }), "{err}");
    // Files (the default) still reads safetensors: an empty directory has none.
    let empty = tempfile::tempdir().unwrap();
    let Err(err) = open_checkpoint(empty.path(), &expected_tensors(&cfg), LoadFormat::Files) else {
        panic!("an empty directory opened");
    };
    assert!(matches!(err, WeightsError::NoWeightFiles { .. }), "{err}");
}
