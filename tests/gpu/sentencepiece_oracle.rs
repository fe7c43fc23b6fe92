//! ocrvl's reader of `tokenizer.model` (src/preprocess/sentencepiece.rs) against transformers:
//! tools/gpu/sentencepiece_oracle.py trains small SentencePiece models (BPE with byte fallback,
//! the same with `legacy: true`, Unigram), has transformers load each directory from the model
//! file alone, and writes its ids for a list of strings (ASCII, leading, trailing and double
//! spaces, newlines, CJK, emoji, added and control symbols). `OCRVL_SP_ORACLE_DIR` names a
//! finished run; else the test runs the script (python3 with sentencepiece, protobuf and
//! transformers; no GPU needed, it sits here beside the other transformers oracles).
//!
//! Every string must get transformers' ids, and transformers' ids must decode to transformers'
//! text, except where transformers built another kind of model than the file declares:
//! transformers 5's `LlamaTokenizer` turns a UNIGRAM file into BPE (merges derived from a
//! vocabulary that was never merged, so mostly single characters), while ocrvl keeps it
//! Unigram as SentencePiece does. There the reference is SentencePiece's own ids, on the strings
//! where SentencePiece and the transformers-style pipeline agree by construction (the script's
//! `plain`: no leading space, no added symbol).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::models::ModelWrapper;
use tokenizers::Tokenizer;

use ocrvl::preprocess::sentencepiece::tokenizer_from_dir;

use crate::common::repo_dir;
use crate::ernie_oracle::run_oracle_script;

/// The oracle's output directory, and the temporary directory holding it when the test ran
/// the script.
fn oracle_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    if let Some(d) = std::env::var_os("OCRVL_SP_ORACLE_DIR") {
        return (PathBuf::from(d), None);
    }
    // The repository keeps the script in tools/gpu/; the GPU bundle flattens it into tools/.
    let script = ["tools/gpu/sentencepiece_oracle.py", "tools/sentencepiece_oracle.py"]
        .iter()
        .map(|p| repo_dir().join(p))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no sentencepiece_oracle.py under {}/tools", repo_dir().display()));
    let tmp = run_oracle_script(&script, &[], "sentencepiece, protobuf and transformers");
    (tmp.path().to_path_buf(), Some(tmp))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn id_list(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn model_kind(tok: &Tokenizer) -> &'static str {
    match tok.get_model() {
        ModelWrapper::BPE(_) => "BPE",
        ModelWrapper::Unigram(_) => "Unigram",
        _ => "other",
    }
}

#[test]
#[ignore = "needs GPU host (transformers, sentencepiece)"]
fn sentencepiece_models_tokenize_as_transformers_does() {
    let (root, _keep) = oracle_dir();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("cases.json").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 3,
        "expected 3 model directories under {}, found {dirs:?}",
        root.display()
    );

    let (mut compared, mut failures) = (0, Vec::new());
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let report = read_json(&dir.join("cases.json"));
        let config = read_json(&dir.join("tokenizer_config.json"));
        let tok = tokenizer_from_dir(dir, Some(&config)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = report["backend_model"].as_str().unwrap_or("?");
        let against = if model_kind(&tok) == theirs {
            "transformers"
        } else {
            "sentencepiece"
        };
        eprintln!(
            "{name}: ocrvl {}, transformers {} {theirs} (transformers {}, sentencepiece {}): checked against {against}",
            model_kind(&tok),
            report["tokenizer_class"],
            report["transformers_version"],
            report["sentencepiece_version"],
        );
        for case in report["cases"].as_array().unwrap() {
            if against == "sentencepiece" && case["plain"] != Value::Bool(true) {
                continue;
            }
            let text = case["text"].as_str().unwrap();
            let want = id_list(&case[against]);
            let enc = tok.encode(text, false).unwrap();
            compared += 1;
            if enc.get_ids() != want.as_slice() {
                failures.push(format!(
                    "{name} {text:?}: ocrvl {:?} {:?}, {against} {want:?} {}",
                    enc.get_ids(),
                    enc.get_tokens(),
                    if against == "transformers" {
                        case["transformers_tokens"].to_string()
                    } else {
                        String::new()
                    }
                ));
            }
            if against == "transformers" {
                let decoded = tok.decode(&want, false).unwrap();
                let theirs = case["transformers_decoded"].as_str().unwrap();
                if decoded != theirs {
                    failures.push(format!(
                        "{name} {text:?}: ocrvl decodes {want:?} to {decoded:?}, transformers to {theirs:?}"
                    ));
                }
            }
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} strings differ (listed above)",
        failures.len()
    );
    eprintln!("{compared} strings: ocrvl's ids are the reference's");
}
