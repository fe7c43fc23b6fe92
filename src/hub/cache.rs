//! The on-disk caches: the Hugging Face hub layout (read and written) and ModelScope's (read).
//!
//! Hugging Face, per repo `models--Org--Name/`:
//! - `blobs/<etag>`: file contents, named by the hub's ETag (sha256 for LFS files, the git blob
//!   id otherwise); `blobs/<etag>.incomplete` while downloading;
//! - `snapshots/<commit>/<path>`: the repository tree at that commit, each file a relative
//!   symlink to its blob (a copy where links are unavailable);
//! - `refs/<revision>`: the commit a branch or tag pointed at when last resolved.
//!
//! This is the layout huggingface_hub writes, so a cache filled by Python is found here and
//! one filled here is found by Python.

use std::path::{Path, PathBuf};

use super::{complete_model_dir, io, RepoId, Result};

/// `<cache>/models--Org--Name`.
pub fn hf_repo_dir(cache: &Path, repo: &RepoId) -> PathBuf {
    cache.join(format!("models--{}--{}", repo.org, repo.name))
}

/// A 40-hex-digit git commit id (a revision given as a commit needs no ref).
pub(super) fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The model directory of `revision`'s snapshot, when the cache holds a complete one.
pub(super) fn find_hf_snapshot(repo_dir: &Path, revision: &str) -> Result<Option<PathBuf>> {
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        let ref_path = repo_dir.join("refs").join(revision);
        match std::fs::read_to_string(&ref_path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&ref_path)(e)),
        }
    };
    if !is_commit_hash(&commit) {
        return Ok(None);
    }
    Ok(complete_model_dir(&repo_dir.join("snapshots").join(commit)))
}

/// Where ModelScope may hold `repo` under `root`: `models/Org/Name` (ModelScope 1.x) and
/// `Org/Name` (older releases), each also with the dots of the name written `___`, as
/// ModelScope stores `PaddleOCR-VL-1.5` as `PaddleOCR-VL-1___5`.
pub fn modelscope_candidates(root: &Path, repo: &RepoId) -> Vec<PathBuf> {
    let mut names = vec![repo.name.clone()];
    if repo.name.contains('.') {
        names.push(repo.name.replace('.', "___"));
    }
    let mut out = Vec::new();
    for base in [root.join("models"), root.to_path_buf()] {
        for name in &names {
            out.push(base.join(&repo.org).join(name));
        }
    }
    out
}

/// `blobs/<etag>` and its `.incomplete` partner.
pub(super) fn blob_paths(repo_dir: &Path, etag: &str) -> (PathBuf, PathBuf) {
    let blobs = repo_dir.join("blobs");
    (blobs.join(etag), blobs.join(format!("{etag}.incomplete")))
}

/// Makes `snapshots/<commit>/<file>` point at `blobs/<etag>`: a relative symlink on Unix
/// (what huggingface_hub writes), a copy elsewhere. Replaces what was there.
pub(super) fn link_into_snapshot(repo_dir: &Path, commit: &str, file: &str, etag: &str) -> Result<()> {
    let target = repo_dir.join("snapshots").join(commit).join(file);
    let parent = target.parent().expect("a snapshot file has a parent");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    match std::fs::remove_file(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&target)(e)),
    }
    let blob = repo_dir.join("blobs").join(etag);
    #[cfg(unix)]
    {
        // snapshots/<commit>/ plus one level per folder in `file`, back up to the repo dir.
        let depth = 2 + file.matches('/').count();
        let mut relative = PathBuf::new();
        for _ in 0..depth {
            relative.push("..");
        }
        relative.push("blobs");
        relative.push(etag);
        if std::os::unix::fs::symlink(&relative, &target).is_ok() {
            return Ok(());
        }
    }
    std::fs::copy(&blob, &target).map_err(io(&target))?;
    Ok(())
}

/// Writes `refs/<revision>` = `commit` (not for a revision that is itself the commit).
pub(super) fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<()> {
    if is_commit_hash(revision) {
        return Ok(());
    }
    let path = repo_dir.join("refs").join(revision);
    let parent = path.parent().expect("a ref has a parent");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    std::fs::write(&path, commit).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_hashes() {
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
        assert!(!is_commit_hash("0123456789abcdef0123456789abcdef0123456"));
    }

    #[test]
    fn modelscope_spellings() {
        let repo = RepoId::parse("PaddlePaddle/PaddleOCR-VL-1.5").unwrap();
        let c = modelscope_candidates(Path::new("/ms"), &repo);
        assert!(c.contains(&PathBuf::from("/ms/models/PaddlePaddle/PaddleOCR-VL-1___5")));
        assert!(c.contains(&PathBuf::from("/ms/PaddlePaddle/PaddleOCR-VL-1.5")));
    }
}
