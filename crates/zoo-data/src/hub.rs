//! Files from the Hugging Face hub through hf-hub's cache (`HF_HUB_CACHE`, `HF_HOME/hub`,
//! default `~/.cache/huggingface/hub`, the layout Python's `huggingface_hub` uses).
//!
//! The cache is always tried first; the network only when the file is not cached and
//! offline mode is off. Offline mode is `HF_HUB_OFFLINE=1` (as in Python), or
//! [`HubOptions::offline`].

use crate::error::{DataError, Result};
use std::path::{Path, PathBuf};

/// Where and how to reach the hub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubOptions {
    /// Cache directory; `None` uses hf-hub's resolution from the environment.
    pub cache_dir: Option<PathBuf>,
    /// Force offline (`Some(true)`) or online (`Some(false)`); `None` reads `HF_HUB_OFFLINE`.
    pub offline: Option<bool>,
    /// Git revision (branch, tag or commit); `None` is `main`.
    pub revision: Option<String>,
}

impl HubOptions {
    /// True when the network must not be used.
    pub fn is_offline(&self) -> bool {
        self.offline.unwrap_or_else(|| {
            std::env::var("HF_HUB_OFFLINE")
                .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "YES" | "on" | "ON"))
                .unwrap_or(false)
        })
    }
}

/// The two kinds of hub repository the zoo reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model repository (`owner/name`, cached as `models--owner--name`).
    Model,
    /// A dataset repository (cached as `datasets--owner--name`).
    Dataset,
}

impl RepoKind {
    fn cache_prefix(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
        }
    }
}

/// Returns the local path of `file` in the dataset repository `repo_id` (`owner/name`),
/// downloading it into the cache when it is missing there and the network is allowed.
pub fn dataset_file(repo_id: &str, file: &str, opts: &HubOptions) -> Result<PathBuf> {
    repo_file(RepoKind::Dataset, repo_id, file, opts)
}

/// Returns the local path of `file` in the model repository `repo_id` (`owner/name`), from the
/// cache first, downloading only when it is missing and offline mode is off.
pub fn model_file(repo_id: &str, file: &str, opts: &HubOptions) -> Result<PathBuf> {
    repo_file(RepoKind::Model, repo_id, file, opts)
}

/// [`dataset_file`] / [`model_file`] for either kind of repository.
pub fn repo_file(kind: RepoKind, repo_id: &str, file: &str, opts: &HubOptions) -> Result<PathBuf> {
    let hub_err = |message: String| DataError::Hub {
        repo: repo_id.to_string(),
        file: file.to_string(),
        message,
    };
    let mut builder = hf_hub::HFClient::builder();
    if let Some(dir) = &opts.cache_dir {
        builder = builder.cache_dir(dir);
    }
    let client = builder
        .build_sync()
        .map_err(|e| hub_err(format!("cannot create the hub client: {e}")))?;
    let (owner, name) = hf_hub::split_id(repo_id);
    let revision = opts.revision.as_deref().unwrap_or("main");
    // The two repository types are different Rust types with the same download API.
    macro_rules! fetch {
        ($repo:expr) => {{
            let repo = $repo;
            let request = repo.download_file().filename(file).revision(revision);
            match request.clone().local_files_only(true).send() {
                Ok(path) => Ok(path),
                Err(hf_hub::HFError::LocalEntryNotFound { .. }) if opts.is_offline() => {
                    Err(hub_err(format!(
                        "not in the local cache ({}) and offline mode is on (HF_HUB_OFFLINE)",
                        cache_display(opts)
                    )))
                }
                Err(hf_hub::HFError::LocalEntryNotFound { .. }) => request
                    .send()
                    .map_err(|e| hub_err(format!("download failed: {e}"))),
                Err(e) => Err(hub_err(format!("cache lookup failed: {e}"))),
            }
        }};
    }
    match kind {
        RepoKind::Model => fetch!(client.model(owner, name)),
        RepoKind::Dataset => fetch!(client.dataset(owner, name)),
    }
}

fn cache_display(opts: &HubOptions) -> String {
    opts.cache_dir
        .as_deref()
        .map(Path::display)
        .map(|d| d.to_string())
        .unwrap_or_else(|| "HF_HUB_CACHE / HF_HOME/hub / ~/.cache/huggingface/hub".to_string())
}

/// Places `src` into a hub cache at `cache_dir` as `repo_id`@`commit`/`file` (and points
/// `refs/main` at `commit`), the layout hf-hub reads. Lets tests and air-gapped machines feed
/// the real hub code path from a local copy.
pub fn seed_dataset_cache(
    cache_dir: &Path,
    repo_id: &str,
    commit: &str,
    file: &str,
    src: &Path,
) -> Result<PathBuf> {
    seed_cache(RepoKind::Dataset, cache_dir, repo_id, commit, file, src)
}

/// [`seed_dataset_cache`] for a model repository: how a folder of model files (a registry
/// package, a copy made elsewhere) is put where `model_file` finds it offline.
pub fn seed_model_cache(
    cache_dir: &Path,
    repo_id: &str,
    commit: &str,
    file: &str,
    src: &Path,
) -> Result<PathBuf> {
    seed_cache(RepoKind::Model, cache_dir, repo_id, commit, file, src)
}

/// Copies every file of the folder `src_dir` (recursively, keeping relative paths) into the
/// hub cache as model repository `repo_id` at `commit`: how a model shipped by a registry
/// package or copied from another machine becomes loadable by its hub id, offline. Returns the
/// snapshot folder.
pub fn seed_model_dir(cache_dir: &Path, repo_id: &str, commit: &str, src_dir: &Path) -> Result<PathBuf> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
            let path = entry.map_err(|e| DataError::io(dir, e))?.path();
            if path.is_dir() {
                walk(&path, base, out)?;
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.push(rel.to_path_buf());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(src_dir, src_dir, &mut files)?;
    if files.is_empty() {
        return Err(DataError::NotFound(format!(
            "{}: no files to put in the hub cache",
            src_dir.display()
        )));
    }
    for rel in &files {
        let name = rel.to_string_lossy().replace('\\', "/");
        seed_model_cache(cache_dir, repo_id, commit, &name, &src_dir.join(rel))?;
    }
    Ok(cache_dir
        .join(format!("models--{}", repo_id.replace('/', "--")))
        .join("snapshots")
        .join(commit))
}

/// Places `src` into the cache layout of either kind of repository.
pub fn seed_cache(
    kind: RepoKind,
    cache_dir: &Path,
    repo_id: &str,
    commit: &str,
    file: &str,
    src: &Path,
) -> Result<PathBuf> {
    let repo_dir = cache_dir.join(format!("{}--{}", kind.cache_prefix(), repo_id.replace('/', "--")));
    let refs = repo_dir.join("refs");
    let dest = repo_dir.join("snapshots").join(commit).join(file);
    let parent = dest.parent().unwrap_or(&repo_dir).to_path_buf();
    std::fs::create_dir_all(&refs).map_err(|e| DataError::io(&refs, e))?;
    std::fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
    std::fs::write(refs.join("main"), commit).map_err(|e| DataError::io(refs.join("main"), e))?;
    if !dest.exists() {
        std::fs::copy(src, &dest).map_err(|e| DataError::io(src, e))?;
    }
    Ok(dest)
}
