//! `--model` as a hub repo id: the caches and the download, against a local hub
//! (tests/cpu/hub_server.rs) serving a tiny synthetic model. Each test has its own cache
//! directory and server, and passes them through `HubOptions`, never the process environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ocrvl::config::ModelConfig;
use ocrvl::hub::{hf_repo_dir, resolve_model_with, HubError, HubOptions, RepoId, MODEL_SUBFOLDER};
use ocrvl::model::synthetic::{write_synthetic_model, SyntheticOptions};

use super::hub_server::{etag_of, HubServer};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "PaddlePaddle/PaddleOCR-VL";

/// The tiny synthetic model's files, by file name.
fn synthetic_files() -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_model(dir.path(), &ModelConfig::tiny(), &SyntheticOptions::default()).unwrap();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        files.insert(name, std::fs::read(entry.path()).unwrap());
    }
    files
}

fn options(cache: &Path, endpoint: &str) -> HubOptions {
    HubOptions {
        hf_cache: cache.to_path_buf(),
        modelscope_cache: None,
        endpoint: endpoint.to_string(),
        token: None,
        offline: false,
        progress: false,
    }
}

/// Every file of `expected` is in `dir` with the same bytes.
fn assert_same_files(dir: &Path, expected: &BTreeMap<String, Vec<u8>>) {
    for (name, bytes) in expected {
        let got = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(&got == bytes, "{name} differs after download");
    }
}

#[test]
fn first_resolve_downloads_then_the_cache_serves_without_the_server() {
    let files = synthetic_files();
    let mut server = HubServer::start();
    let mut served = files.clone();
    served.insert("README.md".into(), b"not wanted".to_vec());
    served.insert("PP-DocLayoutV2/config.json".into(), b"{}".to_vec());
    server.add_repo(REPO, COMMIT, served);
    let cache = tempfile::tempdir().unwrap();
    let mut opts = options(cache.path(), &server.endpoint);
    opts.token = Some("hf_test_token".into());

    let dir = resolve_model_with(REPO, None, &opts).unwrap();
    let repo_dir = hf_repo_dir(cache.path(), &RepoId::parse(REPO).unwrap());
    assert_eq!(dir, repo_dir.join("snapshots").join(COMMIT));
    assert_same_files(&dir, &files);
    assert!(!dir.join("README.md").exists(), "only the model's files are fetched");
    assert!(!dir.join("PP-DocLayoutV2").exists());
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    // Blobs are named by ETag, as huggingface_hub names them.
    let weights = &files["model.safetensors"];
    assert!(repo_dir.join("blobs").join(etag_of(weights)).is_file());
    // The weights came from the redirect target, the small files from resolve/.
    let seen = server.seen();
    assert!(seen.iter().any(|s| s.method == "GET" && s.path.starts_with("/cdn/")));
    // The template came through the same-host redirect, named by the ETag seen on the way.
    assert!(seen.iter().any(|s| s.method == "HEAD" && s.path.starts_with("/cache/")));
    let template = &files["chat_template.jinja"];
    assert!(repo_dir.join("blobs").join(etag_of(template)).is_file());
    // HF_TOKEN goes to the endpoint as a bearer token.
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer hf_test_token")));
    assert!(ModelConfig::from_dir(&dir).is_ok());

    server.stop();
    let again = resolve_model_with(REPO, None, &opts).unwrap();
    assert_eq!(again, dir);
    // By commit too, with no ref needed.
    assert_eq!(resolve_model_with(REPO, Some(COMMIT), &opts).unwrap(), dir);
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let files = synthetic_files();
    let weights_len = files["model.safetensors"].len();
    let server = HubServer::start();
    server.add_repo(REPO, COMMIT, files.clone());
    let cut = weights_len / 3;
    server.cut_once("model.safetensors", cut);
    let cache = tempfile::tempdir().unwrap();
    let dir = resolve_model_with(REPO, None, &options(cache.path(), &server.endpoint)).unwrap();
    assert_same_files(&dir, &files);
    let weight_gets: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(weight_gets.len(), 2, "{weight_gets:?}");
    assert_eq!(weight_gets[0].range, None);
    assert_eq!(weight_gets[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
}

#[test]
fn a_partial_blob_left_by_an_earlier_run_is_continued() {
    let files = synthetic_files();
    let weights = &files["model.safetensors"];
    let server = HubServer::start();
    server.add_repo(REPO, COMMIT, files.clone());
    let cache = tempfile::tempdir().unwrap();
    let repo_dir = hf_repo_dir(cache.path(), &RepoId::parse(REPO).unwrap());
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    let have = weights.len() / 2;
    let partial = repo_dir.join("blobs").join(format!("{}.incomplete", etag_of(weights)));
    std::fs::write(&partial, &weights[..have]).unwrap();
    let dir = resolve_model_with(REPO, None, &options(cache.path(), &server.endpoint)).unwrap();
    assert_same_files(&dir, &files);
    let ranges: Vec<_> = server.seen().into_iter().filter_map(|s| s.range).collect();
    assert_eq!(ranges, vec![format!("bytes={have}-")]);
    assert!(!partial.exists());
}

#[test]
fn a_missing_repo_or_file_is_an_error_naming_it() {
    let server = HubServer::start();
    let mut files = synthetic_files();
    server.add_repo(REPO, COMMIT, files.clone());
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &server.endpoint);

    let err = resolve_model_with("Nobody/NoSuchModel", None, &opts).unwrap_err();
    assert!(matches!(err, HubError::RepoNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("Nobody/NoSuchModel"), "{err}");

    let err = resolve_model_with(REPO, Some("no-such-branch"), &opts).unwrap_err();
    assert!(err.to_string().contains("no-such-branch"), "{err}");

    // The file list names a file the server then cannot serve.
    let other = "Org/Broken";
    files.remove("tokenizer.json");
    server.add_repo(other, COMMIT, files);
    server.list_only(other, "tokenizer.json");
    let err = resolve_model_with(other, None, &opts).unwrap_err();
    assert!(matches!(err, HubError::FileNotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("Org/Broken") && err.to_string().contains("tokenizer.json"),
        "{err}"
    );
}

#[test]
fn offline_mode_uses_the_cache_and_refuses_to_download() {
    let files = synthetic_files();
    let server = HubServer::start();
    server.add_repo(REPO, COMMIT, files);
    let cache = tempfile::tempdir().unwrap();
    let mut opts = options(cache.path(), &server.endpoint);
    opts.offline = true;
    let err = resolve_model_with(REPO, None, &opts).unwrap_err();
    assert!(matches!(err, HubError::Offline { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(REPO) && text.contains("models--PaddlePaddle--PaddleOCR-VL"),
        "{text}"
    );
    assert!(server.seen().is_empty(), "offline mode made a request");

    opts.offline = false;
    let dir = resolve_model_with(REPO, None, &opts).unwrap();
    opts.offline = true;
    assert_eq!(resolve_model_with(REPO, None, &opts).unwrap(), dir);
}

#[test]
fn the_subfolder_layout_resolves_from_the_hub_and_from_a_path() {
    let files = synthetic_files();
    let nested: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(k, v)| (format!("{MODEL_SUBFOLDER}/{k}"), v.clone()))
        .collect();
    let server = HubServer::start();
    server.add_repo(REPO, COMMIT, nested);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &server.endpoint);
    let dir = resolve_model_with(REPO, None, &opts).unwrap();
    assert!(dir.ends_with(MODEL_SUBFOLDER), "{}", dir.display());
    assert_same_files(&dir, &files);

    // A directory given by path, holding the model in the subfolder.
    let parent = dir.parent().unwrap().to_string_lossy().to_string();
    assert_eq!(resolve_model_with(&parent, None, &opts).unwrap(), dir);
    // And one with no config.json anywhere.
    let empty = tempfile::tempdir().unwrap();
    let err = resolve_model_with(&empty.path().to_string_lossy(), None, &opts).unwrap_err();
    assert!(matches!(err, HubError::NoConfig { .. }), "{err:?}");
}

#[test]
fn the_modelscope_cache_resolves_in_both_layouts() {
    let files = synthetic_files();
    for (layout, name) in [
        ("models/PaddlePaddle", "PaddleOCR-VL-1___5"),
        ("PaddlePaddle", "PaddleOCR-VL-1.5"),
    ] {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join(layout).join(name).join(MODEL_SUBFOLDER);
        std::fs::create_dir_all(&model).unwrap();
        for (k, v) in &files {
            std::fs::write(model.join(k), v).unwrap();
        }
        let hf = tempfile::tempdir().unwrap();
        let mut opts = options(hf.path(), "http://127.0.0.1:9"); // nothing listens there
        opts.offline = true;
        let err = resolve_model_with("PaddlePaddle/PaddleOCR-VL-1.5", None, &opts).unwrap_err();
        assert!(
            matches!(err, HubError::Offline { .. }),
            "without VLLM_USE_MODELSCOPE: {err:?}"
        );
        opts.modelscope_cache = Some(root.path().to_path_buf());
        let dir = resolve_model_with("PaddlePaddle/PaddleOCR-VL-1.5", None, &opts).unwrap();
        assert_eq!(dir, model, "{layout}");
    }
}

#[test]
fn a_spec_that_is_neither_a_directory_nor_a_repo_id_is_refused() {
    let opts = options(&PathBuf::from("/nonexistent-cache"), "http://127.0.0.1:9");
    let err = resolve_model_with("no-such-dir", None, &opts).unwrap_err();
    assert!(matches!(err, HubError::NotAModel { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"));
}
