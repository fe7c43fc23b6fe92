//! Where a model lives: `--model` takes a directory or a hub repo id ("Org/Name"), as vLLM and
//! FastDeploy do.
//!
//! A repo id resolves, in order:
//! 1. the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//!    `~/.cache/huggingface/hub`): `models--Org--Name/snapshots/<commit>`, the commit read from
//!    `refs/<revision>` (default `main`) unless the revision is itself a commit hash;
//! 2. the ModelScope cache when `VLLM_USE_MODELSCOPE` is true (`MODELSCOPE_CACHE`, else
//!    `~/.cache/modelscope/hub`), as `models/Org/Name` or `Org/Name`;
//! 3. a download from `HF_ENDPOINT` (default `https://huggingface.co`) with `HF_TOKEN` (or the
//!    token `huggingface-cli login` saved), into the Hugging Face cache layout, so the next start
//!    (and Python tools) find it. `HF_HUB_OFFLINE=1` forbids this step.
//!
//! Not handled: two processes downloading the same file at the same moment (huggingface_hub
//! takes a file lock; the std lock API is newer than this crate's minimum Rust).
//!
//! The model files may sit at the repository root or in its `PaddleOCR-VL-0.9B/` subfolder
//! (ModelScope's layout of PaddlePaddle/PaddleOCR-VL); [`model_dir_in`] picks whichever holds
//! `config.json`, for a path given directly too.
//!
//! The download is written against the hub's documented URL layout with ureq (already the
//! crate's HTTP client, with rustls) rather than the `hf-hub` crate: hf-hub 1.0 is built on
//! reqwest and tokio, a second HTTP and TLS stack for one feature, and the resumable Range
//! download and offline rules wanted here are a few hundred lines either way.

mod cache;
mod download;

use std::path::{Path, PathBuf};

pub use cache::{hf_repo_dir, modelscope_candidates};

/// The subfolder some copies of PaddlePaddle/PaddleOCR-VL keep the model in.
pub const MODEL_SUBFOLDER: &str = "PaddleOCR-VL-0.9B";
/// The hub's public endpoint, when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Everything a failed resolution can say; each message names the repo, file or path.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{spec:?} is neither a directory nor a hub repo id (Org/Name)")]
    NotAModel { spec: String },
    #[error("{dir} holds no config.json (looked in it and in its {MODEL_SUBFOLDER}/ subfolder)")]
    NoConfig { dir: PathBuf },
    #[error(
        "{repo} (revision {revision}) is not in the local caches and HF_HUB_OFFLINE forbids \
         downloading it; searched: {}",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Offline {
        repo: String,
        revision: String,
        searched: Vec<PathBuf>,
    },
    #[error(
        "repository {repo} (revision {revision}) not found at {endpoint} ({detail}); nor is there a \
         directory of that name"
    )]
    RepoNotFound {
        repo: String,
        revision: String,
        endpoint: String,
        detail: String,
    },
    #[error("repository {repo} at {endpoint} has no file {file} (revision {revision})")]
    FileNotFound {
        repo: String,
        revision: String,
        endpoint: String,
        file: String,
    },
    #[error("repository {repo} at {endpoint} holds no model: no config.json at its root or in {MODEL_SUBFOLDER}/")]
    NoModelInRepo { repo: String, endpoint: String },
    #[error("downloading {what} from {endpoint}: {detail}")]
    Http {
        what: String,
        endpoint: String,
        detail: String,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, HubError>;

/// Where to look and whether to download; [`HubOptions::from_env`] reads the usual variables.
/// Tests build one by hand (parallel tests must not share process environment).
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// The Hugging Face hub cache root (holds `models--Org--Name/`).
    pub hf_cache: PathBuf,
    /// The ModelScope cache root, when `VLLM_USE_MODELSCOPE` asks for it.
    pub modelscope_cache: Option<PathBuf>,
    /// Base URL of the hub, without a trailing slash.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer` to the endpoint.
    pub token: Option<String>,
    /// Never download (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Draw progress bars on stderr (indicatif hides them when stderr is not a terminal).
    pub progress: bool,
}

impl HubOptions {
    /// [`HubOptions::from_lookup`] over the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The options the usual variables ask for, as huggingface_hub and vLLM read them:
    /// - cache: `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`,
    ///   else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`;
    /// - `VLLM_USE_MODELSCOPE` true: the ModelScope cache `MODELSCOPE_CACHE`, else
    ///   `~/.cache/modelscope/hub`;
    /// - `HF_ENDPOINT`; `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`), else the file `huggingface-cli
    ///   login` writes (`HF_TOKEN_PATH`, else `HF_HOME/token`);
    /// - `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) true: no download.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let home = var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let xdg_cache = var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".cache"));
        let hf_home = var("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| xdg_cache.join("huggingface"));
        let hf_cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let modelscope_cache = var("VLLM_USE_MODELSCOPE").filter(|v| truthy(v)).map(|_| {
            var("MODELSCOPE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache/modelscope/hub"))
        });
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            std::fs::read_to_string(token_file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        HubOptions {
            hf_cache,
            modelscope_cache,
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            token,
            offline: ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
                .iter()
                .any(|name| var(name).is_some_and(|v| truthy(&v))),
            progress: true,
        }
    }
}

/// "1", "true", "yes", "on" in any case, as huggingface_hub and vLLM read their flags.
fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// A hub repository id, "Org/Name".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoId {
    pub org: String,
    pub name: String,
}

impl RepoId {
    /// `Some` for "Org/Name" made of the characters the hub allows (letters, digits, `-_.`),
    /// neither part `.` or `..`.
    pub fn parse(spec: &str) -> Option<RepoId> {
        let (org, name) = spec.split_once('/')?;
        let ok = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (ok(org) && ok(name)).then(|| RepoId {
            org: org.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.org, self.name)
    }
}

/// [`resolve_model_with`] with [`HubOptions::from_env`].
pub fn resolve_model(spec: &str, revision: Option<&str>) -> Result<PathBuf> {
    resolve_model_with(spec, revision, &HubOptions::from_env())
}

/// For the binaries: replaces `--model`'s value by the resolved model directory, leaving
/// `None` (the synthetic model) as it is. The served names were taken from the value as typed.
pub fn resolve_model_option(model: &mut Option<PathBuf>, revision: Option<&str>) -> Result<()> {
    if let Some(spec) = model.as_ref() {
        *model = Some(resolve_model(&spec.to_string_lossy(), revision)?);
    }
    Ok(())
}

/// The directory holding the model's `config.json` for `spec`: a directory path, else a repo
/// id found in the caches or downloaded (see the module doc for the order).
pub fn resolve_model_with(spec: &str, revision: Option<&str>, opts: &HubOptions) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return model_dir_in(path);
    }
    let Some(repo) = RepoId::parse(spec) else {
        return Err(HubError::NotAModel { spec: spec.to_string() });
    };
    let revision = revision.unwrap_or("main");
    let mut searched = Vec::new();

    let repo_dir = hf_repo_dir(&opts.hf_cache, &repo);
    searched.push(repo_dir.clone());
    if let Some(dir) = cache::find_hf_snapshot(&repo_dir, revision)? {
        return Ok(dir);
    }
    if let Some(root) = &opts.modelscope_cache {
        // ModelScope's cache holds one copy per repo, whatever the revision.
        for dir in modelscope_candidates(root, &repo) {
            if let Some(model) = complete_model_dir(&dir) {
                return Ok(model);
            }
            searched.push(dir);
        }
    }
    if opts.offline {
        return Err(HubError::Offline {
            repo: repo.to_string(),
            revision: revision.to_string(),
            searched,
        });
    }
    download::download_snapshot(&repo, revision, opts)
}

/// The model directory inside `dir`: `dir` itself when it holds `config.json`, else its
/// [`MODEL_SUBFOLDER`].
pub fn model_dir_in(dir: &Path) -> Result<PathBuf> {
    if dir.join("config.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let sub = dir.join(MODEL_SUBFOLDER);
    if sub.join("config.json").is_file() {
        return Ok(sub);
    }
    Err(HubError::NoConfig { dir: dir.to_path_buf() })
}

/// Like [`model_dir_in`], but only for a directory that also holds weights (a single file or
/// an index): a cache entry with only `config.json` (a partial `hf_hub_download`) is not used.
fn complete_model_dir(dir: &Path) -> Option<PathBuf> {
    let model = model_dir_in(dir).ok()?;
    let has_weights = ["model.safetensors", "model.safetensors.index.json"]
        .iter()
        .any(|f| model.join(f).is_file());
    has_weights.then_some(model)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_non_ids() {
        let r = RepoId::parse("PaddlePaddle/PaddleOCR-VL-1.5").unwrap();
        assert_eq!((r.org.as_str(), r.name.as_str()), ("PaddlePaddle", "PaddleOCR-VL-1.5"));
        for bad in ["PaddleOCR-VL", "a/b/c", "/abs", "../x", "a/..", "a b/c", "a/"] {
            assert!(RepoId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn options_from_the_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let o = HubOptions::from_lookup(env(&[("HOME", "/h")]));
        assert_eq!(o.hf_cache, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert!(o.modelscope_cache.is_none() && !o.offline && o.token.is_none());

        let o = HubOptions::from_lookup(env(&[
            ("HOME", "/h"),
            ("HF_HOME", "/hf"),
            ("HF_ENDPOINT", "https://mirror.example/"),
            ("HF_TOKEN", "t"),
            ("HF_HUB_OFFLINE", "1"),
            ("VLLM_USE_MODELSCOPE", "True"),
        ]));
        assert_eq!(o.hf_cache, PathBuf::from("/hf/hub"));
        assert_eq!(o.endpoint, "https://mirror.example");
        assert_eq!(o.token.as_deref(), Some("t"));
        assert!(o.offline);
        assert_eq!(o.modelscope_cache, Some(PathBuf::from("/h/.cache/modelscope/hub")));

        let o = HubOptions::from_lookup(env(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/c"),
            ("MODELSCOPE_CACHE", "/ms"),
            ("VLLM_USE_MODELSCOPE", "false"),
            ("TRANSFORMERS_OFFLINE", "yes"),
        ]));
        assert_eq!(o.hf_cache, PathBuf::from("/c"));
        assert!(o.modelscope_cache.is_none() && o.offline);
    }

    #[test]
    fn the_login_token_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_abc\n").unwrap();
        let home = dir.path().to_string_lossy().to_string();
        let o = HubOptions::from_lookup(|name| (name == "HF_HOME").then(|| home.clone()));
        assert_eq!(o.token.as_deref(), Some("hf_abc"));
    }

    #[test]
    fn flags_read_like_huggingface_hub() {
        assert!(truthy("1") && truthy("True") && truthy("YES"));
        assert!(!truthy("0") && !truthy("false") && !truthy(""));
    }
}
