//! Downloading a snapshot through the hub's HTTP layout:
//! - `GET {endpoint}/api/models/{repo}/revision/{revision}`: `{"sha": commit, "siblings":
//!   [{"rfilename": path}, ...]}`;
//! - `HEAD {endpoint}/{repo}/resolve/{commit}/{path}` (redirects not followed): the blob name in
//!   `X-Linked-Etag` (LFS) or `ETag`, the size in `X-Linked-Size` or `Content-Length`, and in
//!   `Location` where the bytes are (a CDN for LFS files);
//! - `GET` of that place, with `Range: bytes=N-` when `blobs/<etag>.incomplete` already holds N
//!   bytes, so an interrupted download continues where it stopped, in this call (a few
//!   retries) or the next.
//!
//! Files are pinned to the commit the revision resolved to, so a branch moving mid-download
//! cannot mix two versions. Only what ocrvl and transformers read is fetched (see
//! [`wanted_file`]): a hub repo may also hold other models (PP-DocLayoutV2/) or images.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::cache::{blob_paths, hf_repo_dir, link_into_snapshot, write_ref};
use super::{io, HubError, HubOptions, RepoId, Result, MODEL_SUBFOLDER};

/// Attempts per file: the first plus resumptions after a dropped connection.
const ATTEMPTS: usize = 4;
/// Same-host redirects followed by a HEAD.
const MAX_RELATIVE_REDIRECTS: usize = 5;
/// Read buffer for the body stream.
const CHUNK: usize = 1 << 20;

/// Downloads `repo` at `revision` into the cache of `opts`; returns the model directory of
/// the new snapshot.
pub(super) fn download_snapshot(repo: &RepoId, revision: &str, opts: &HubOptions) -> Result<PathBuf> {
    let client = Client::new(opts);
    let (commit, files) = client.repo_info(repo, revision)?;
    let folder = if files.iter().any(|f| f == "config.json") {
        ""
    } else if files.iter().any(|f| *f == format!("{MODEL_SUBFOLDER}/config.json")) {
        MODEL_SUBFOLDER
    } else {
        return Err(HubError::NoModelInRepo {
            repo: repo.to_string(),
            endpoint: opts.endpoint.clone(),
        });
    };
    let repo_dir = hf_repo_dir(&opts.hf_cache, repo);
    let wanted: Vec<&String> = files.iter().filter(|f| wanted_file(f, folder)).collect();
    if opts.progress {
        eprintln!(
            "hub: downloading {repo} (revision {revision}, commit {commit}) from {}: {} files into {}",
            opts.endpoint,
            wanted.len(),
            repo_dir.display()
        );
    }
    for file in wanted {
        let etag = client.fetch_blob(repo, &commit, file, &repo_dir)?;
        link_into_snapshot(&repo_dir, &commit, file, &etag)?;
    }
    // Last, so that a ref only ever names a complete snapshot.
    write_ref(&repo_dir, revision, &commit)?;
    let snapshot = repo_dir.join("snapshots").join(&commit);
    Ok(if folder.is_empty() {
        snapshot
    } else {
        snapshot.join(folder)
    })
}

/// Files of the model folder itself (not of other folders) that a loader reads: configs,
/// tokenizer files, the chat template, weights, and remote code for `trust_remote_code` users.
fn wanted_file(path: &str, folder: &str) -> bool {
    let name = if folder.is_empty() {
        path
    } else {
        match path.strip_prefix(folder).and_then(|p| p.strip_prefix('/')) {
            Some(name) => name,
            None => return false,
        }
    };
    !name.contains('/')
        && [".json", ".safetensors", ".jinja", ".model", ".py"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

struct Client<'a> {
    opts: &'a HubOptions,
    /// Follows redirects (the body fetch).
    follow: ureq::Agent,
    /// Returns 3xx responses as they are (the HEAD, whose headers name the blob).
    no_follow: ureq::Agent,
}

impl<'a> Client<'a> {
    fn new(opts: &'a HubOptions) -> Self {
        let agent = |redirects: u32| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .max_redirects_will_error(false)
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                .timeout_per_read(Some(Duration::from_secs(60)))
                .user_agent(concat!("ocrvl/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        Client {
            opts,
            follow: agent(10),
            no_follow: agent(0),
        }
    }

    fn endpoint(&self) -> &str {
        &self.opts.endpoint
    }

    fn http_error(&self, what: impl Into<String>, detail: impl std::fmt::Display) -> HubError {
        HubError::Http {
            what: what.into(),
            endpoint: self.endpoint().to_string(),
            detail: detail.to_string(),
        }
    }

    /// Adds the token, only for the endpoint itself: a presigned CDN URL rejects it.
    fn authorize<B>(&self, req: ureq::RequestBuilder<B>, url: &str) -> ureq::RequestBuilder<B> {
        match &self.opts.token {
            Some(token) if url.starts_with(self.endpoint()) => req.header("Authorization", format!("Bearer {token}")),
            _ => req,
        }
    }

    /// (commit, every file path of the repo at `revision`).
    fn repo_info(&self, repo: &RepoId, revision: &str) -> Result<(String, Vec<String>)> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}",
            self.endpoint(),
            revision.replace('/', "%2F")
        );
        let what = format!("the file list of {repo}");
        let mut resp = self
            .authorize(self.follow.get(&url), &url)
            .call()
            .map_err(|e| self.http_error(&what, e))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        match status {
            200 => {}
            401 | 403 | 404 => {
                let mut detail = format!("HTTP {status}: {}", body.trim());
                if status != 404 && self.opts.token.is_none() {
                    detail.push_str("; set HF_TOKEN if it is private or gated");
                }
                return Err(HubError::RepoNotFound {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                    endpoint: self.endpoint().to_string(),
                    detail,
                });
            }
            _ => return Err(self.http_error(what, format!("HTTP {status} from {url}"))),
        }
        let info: Value = serde_json::from_str(&body).map_err(|e| self.http_error(&what, format!("not JSON: {e}")))?;
        let commit = info
            .get("sha")
            .and_then(Value::as_str)
            .filter(|c| super::cache::is_commit_hash(c))
            .ok_or_else(|| self.http_error(&what, "the answer has no commit id (\"sha\")"))?;
        let files = info
            .get("siblings")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(|f| f.get("rfilename").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok((commit.to_string(), files))
    }

    /// Makes sure `blobs/<etag>` holds `file` at `commit`; returns the etag.
    fn fetch_blob(&self, repo: &RepoId, commit: &str, file: &str, repo_dir: &Path) -> Result<String> {
        let resolve = format!("{}/{repo}/resolve/{commit}/{file}", self.endpoint());
        let what = format!("{file} of {repo}");
        let head = self.head(&resolve, &what)?;
        if head.status == 404 {
            return Err(HubError::FileNotFound {
                repo: repo.to_string(),
                revision: commit.to_string(),
                endpoint: self.endpoint().to_string(),
                file: file.to_string(),
            });
        }
        if !(200..400).contains(&head.status) {
            return Err(self.http_error(what, format!("HTTP {} from HEAD {}", head.status, head.url)));
        }
        let etag = head
            .linked_etag
            .clone()
            .or_else(|| head.etag.clone())
            .map(|e| clean_etag(&e))
            .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
            .ok_or_else(|| self.http_error(&what, "the server sent no usable ETag to name the file by"))?;
        let size = head.size;
        let source = head.source.clone();

        let (blob, partial) = blob_paths(repo_dir, &etag);
        if let Ok(meta) = std::fs::metadata(&blob) {
            if size.is_none_or(|s| s == meta.len()) {
                return Ok(etag);
            }
        }
        let blobs = blob.parent().expect("blobs/ has a parent");
        std::fs::create_dir_all(blobs).map_err(io(blobs))?;
        let bar = self.progress_bar(file, size);
        let mut last_error = String::new();
        for _ in 0..ATTEMPTS {
            match self.fetch_into(&source, &partial, size, &bar) {
                Ok(()) => {
                    bar.finish();
                    std::fs::rename(&partial, &blob).map_err(io(&blob))?;
                    return Ok(etag);
                }
                Err(Attempt::Fatal(e)) => {
                    bar.abandon();
                    return Err(e);
                }
                Err(Attempt::Retry(e)) => last_error = e,
            }
        }
        bar.abandon();
        Err(self.http_error(
            what,
            format!("{last_error} (gave up after {ATTEMPTS} attempts; the next start resumes it)"),
        ))
    }

    /// HEAD of a resolve URL, following the hub's relative redirects (same host: a renamed
    /// repo, the resolve cache) but not one to another host (a CDN), whose address is where
    /// the bytes are. The blob name is the first `X-Linked-Etag` seen, else the last `ETag`.
    fn head(&self, url: &str, what: &str) -> Result<HeadInfo> {
        let mut info = HeadInfo {
            url: url.to_string(),
            status: 0,
            linked_etag: None,
            etag: None,
            size: None,
            source: url.to_string(),
        };
        for _ in 0..MAX_RELATIVE_REDIRECTS {
            let resp = self
                .authorize(self.no_follow.head(&info.url), &info.url)
                .call()
                .map_err(|e| self.http_error(what, e))?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            info.status = resp.status().as_u16();
            info.linked_etag = info.linked_etag.take().or_else(|| header("x-linked-etag"));
            info.etag = header("etag").or(info.etag.take());
            let redirect = (300..400).contains(&info.status);
            info.size = header("x-linked-size")
                .or_else(|| if redirect { None } else { header("content-length") })
                .and_then(|s| s.parse().ok())
                .or(info.size);
            match header("location") {
                Some(loc) if redirect && !loc.starts_with("http://") && !loc.starts_with("https://") => {
                    info.url = absolute_url(self.endpoint(), &loc);
                    info.source = info.url.clone();
                }
                Some(loc) if redirect => {
                    info.source = loc;
                    return Ok(info);
                }
                _ => return Ok(info),
            }
        }
        Err(self.http_error(what, format!("more than {MAX_RELATIVE_REDIRECTS} redirects from {url}")))
    }

    /// One GET of `source` into `partial`, continuing from its current length.
    fn fetch_into(
        &self,
        source: &str,
        partial: &Path,
        size: Option<u64>,
        bar: &ProgressBar,
    ) -> std::result::Result<(), Attempt> {
        let have = std::fs::metadata(partial).map_or(0, |m| m.len());
        if size == Some(have) {
            return Ok(());
        }
        let mut req = self.authorize(self.follow.get(source), source);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let resp = req.call().map_err(|e| Attempt::Retry(e.to_string()))?;
        let status = resp.status().as_u16();
        let resumed = match status {
            206 => {
                // The server must continue where the file stops, not elsewhere.
                let start = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(have) {
                    truncate(partial)?;
                    return Err(Attempt::Retry(format!(
                        "the server resumed at {start:?}, not at byte {have}"
                    )));
                }
                true
            }
            200 => false,
            416 => {
                // Asked past the end: what is there is not a prefix of this file.
                truncate(partial)?;
                return Err(Attempt::Retry("the server refused the resume range".into()));
            }
            _ => {
                let fatal = HubError::Http {
                    what: source.to_string(),
                    endpoint: self.endpoint().to_string(),
                    detail: format!("HTTP {status}"),
                };
                return Err(if status >= 500 {
                    Attempt::Retry(fatal.to_string())
                } else {
                    Attempt::Fatal(fatal)
                });
            }
        };
        let mut out = if resumed {
            OpenOptions::new().append(true).open(partial)
        } else {
            File::create(partial)
        }
        .map_err(|e| Attempt::Fatal(io(partial)(e)))?;
        let mut written = if resumed { have } else { 0 };
        bar.set_position(written);
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = out.flush();
                    return Err(Attempt::Retry(format!("connection lost after {written} bytes: {e}")));
                }
            };
            out.write_all(&buf[..n]).map_err(|e| Attempt::Fatal(io(partial)(e)))?;
            written += n as u64;
            bar.set_position(written);
        }
        out.sync_all().map_err(|e| Attempt::Fatal(io(partial)(e)))?;
        match size {
            Some(s) if s != written => Err(Attempt::Retry(format!("got {written} bytes of {s}"))),
            _ => Ok(()),
        }
    }

    fn progress_bar(&self, file: &str, size: Option<u64>) -> ProgressBar {
        if !self.opts.progress {
            return ProgressBar::hidden();
        }
        let bar = match size {
            Some(s) => ProgressBar::new(s),
            None => ProgressBar::no_length(),
        };
        let style =
            ProgressStyle::with_template("{msg:30!} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(file.to_string());
        bar
    }
}

/// What the HEAD of a file said.
struct HeadInfo {
    /// The last URL asked.
    url: String,
    status: u16,
    linked_etag: Option<String>,
    etag: Option<String>,
    size: Option<u64>,
    /// Where to GET the bytes.
    source: String,
}

/// How one attempt failed: worth another try (network), or not (disk, 4xx).
enum Attempt {
    Retry(String),
    Fatal(HubError),
}

fn truncate(path: &Path) -> std::result::Result<(), Attempt> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Attempt::Fatal(io(path)(e))),
    }
}

/// `W/"abc"` and `"abc"` to `abc`.
fn clean_etag(raw: &str) -> String {
    raw.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// The first byte of `bytes START-END/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

/// A `Location` made absolute: as is when it has a scheme, else against the endpoint's origin.
fn absolute_url(endpoint: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let origin_end = endpoint
        .find("://")
        .map(|i| endpoint[i + 3..].find('/').map_or(endpoint.len(), |j| i + 3 + j))
        .unwrap_or(endpoint.len());
    let origin = &endpoint[..origin_end];
    if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        format!("{origin}/{location}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_files_are_the_model_folders_own() {
        assert!(wanted_file("config.json", ""));
        assert!(wanted_file("model-00001-of-00002.safetensors", ""));
        assert!(wanted_file("chat_template.jinja", ""));
        assert!(!wanted_file("PP-DocLayoutV2/config.json", ""));
        assert!(!wanted_file("README.md", ""));
        assert!(wanted_file("PaddleOCR-VL-0.9B/config.json", "PaddleOCR-VL-0.9B"));
        assert!(!wanted_file("config.json", "PaddleOCR-VL-0.9B"));
    }

    #[test]
    fn header_parsing() {
        assert_eq!(clean_etag("W/\"abc\""), "abc");
        assert_eq!(clean_etag("\"0123\""), "0123");
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("items 1-2/3"), None);
        assert_eq!(absolute_url("http://h:1/mirror", "/api/x"), "http://h:1/api/x");
        assert_eq!(absolute_url("http://h:1", "https://cdn/x"), "https://cdn/x");
    }
}
