//! Checkpoints from the Hugging Face Hub: a model id instead of a folder.
//!
//! Downloads with the `hf-hub` crate into the Hub's shared cache (`HF_HOME`,
//! default `~/.cache/huggingface`), from `HF_ENDPOINT` (default
//! https://huggingface.co), with `HF_TOKEN` (or the cached token) for private
//! repositories, at `--revision`. Files already in the cache are used without
//! any request; `HF_HUB_OFFLINE=1` makes no request at all. Interrupted
//! downloads resume from their partial file.
//!
//! Fetched: `config.json`, the weights (`model.safetensors`, else
//! `model.safetensors.index.json` and its shards, else `pytorch_model.bin`,
//! which gpt2c reads without running its pickle), and whichever of
//! `generation_config.json` and the tokenizer files exist.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::checkpoint::TOKENIZER_FILES;

/// Errors fetching a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{repo}: not found on {endpoint} (HTTP 404): check the model id and --revision {revision}")]
    NotFound { repo: String, endpoint: String, revision: String },
    #[error(
        "{repo}: access denied by {endpoint} (HTTP {status}): the repository is private or gated; set HF_TOKEN to a token that can read it"
    )]
    Unauthorized { repo: String, endpoint: String, status: u16 },
    #[error("{repo}: the repository has no config.json at revision {revision}: not a transformers checkpoint")]
    NoConfig { repo: String, revision: String },
    #[error(
        "{repo}: the repository has no weights gpt2c reads at revision {revision} (model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
    )]
    NoWeights { repo: String, revision: String },
    #[error("{repo}: HF_HUB_OFFLINE=1 and {file} is not in the cache {cache}; unset HF_HUB_OFFLINE to download it")]
    Offline { repo: String, file: String, cache: PathBuf },
    #[error("{repo}: downloading {file} failed: {message}")]
    Download { repo: String, file: String, message: String },
}

/// Whether `arg` names a Hub repository rather than a local path: `name` or `owner/name` made of
/// letters, digits, `-`, `_`, `.`, when no such path exists.
pub fn looks_like_repo_id(arg: &str) -> bool {
    if Path::new(arg).exists() || arg.starts_with('.') || arg.ends_with('/') {
        return false;
    }
    let parts: Vec<&str> = arg.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

/// Downloads (or finds in the cache) the checkpoint `repo_id` at `revision`; returns the snapshot
/// folder that holds its files.
pub fn fetch(repo_id: &str, revision: Option<&str>, progress: bool) -> Result<PathBuf, HubError> {
    let revision = revision.unwrap_or("main").to_string();
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.clone());
    let cache = Cache::from_env();
    if offline() {
        return fetch_offline(&cache, repo, repo_id);
    }
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()).or_else(|| cache.token());
    let api = ApiBuilder::from_env()
        .with_token(token)
        .with_progress(progress)
        .with_retries(3)
        .build()
        .map_err(|e| HubError::Download { repo: repo_id.into(), file: String::new(), message: e.to_string() })?;
    let api = api.repo(repo.clone());
    let cached = cache.repo(repo.clone());
    // Like the Hub's own clients, remember files a revision does not have (`.no_exist/<commit>/`),
    // so that a cached run makes no request at all.
    let repo_dir = cache.path().join(repo.folder_name());
    let commit = || std::fs::read_to_string(repo_dir.join("refs").join(&revision)).ok().map(|c| c.trim().to_string());
    let get = |file: &str| -> Result<Option<PathBuf>, HubError> {
        if let Some(path) = cached.get(file) {
            return Ok(Some(path));
        }
        if commit().is_some_and(|c| repo_dir.join(".no_exist").join(c).join(file).exists()) {
            return Ok(None);
        }
        let found = download(&api, repo_id, &revision, file)?;
        if let (None, Some(c)) = (&found, commit()) {
            let marker = repo_dir.join(".no_exist").join(c).join(file);
            if let Some(parent) = marker.parent() {
                let _ = std::fs::create_dir_all(parent).and_then(|_| std::fs::write(&marker, b""));
            }
        }
        Ok(found)
    };
    let config =
        get("config.json")?.ok_or_else(|| HubError::NoConfig { repo: repo_id.into(), revision: revision.clone() })?;
    if get("model.safetensors")?.is_none() {
        match get("model.safetensors.index.json")? {
            Some(index) => {
                for shard in shard_names(&index)? {
                    get(&shard)?.ok_or_else(|| HubError::Download {
                        repo: repo_id.into(),
                        file: shard.clone(),
                        message: "listed in model.safetensors.index.json but missing from the repository".into(),
                    })?;
                }
            }
            None => {
                get("pytorch_model.bin")?
                    .ok_or_else(|| HubError::NoWeights { repo: repo_id.into(), revision: revision.clone() })?;
            }
        }
    }
    for file in std::iter::once("generation_config.json").chain(TOKENIZER_FILES) {
        get(file)?;
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// One file, or `None` when the repository does not have it (404).
fn download(api: &ApiRepo, repo_id: &str, revision: &str, file: &str) -> Result<Option<PathBuf>, HubError> {
    match api.download(file) {
        Ok(path) => Ok(Some(path)),
        Err(ApiError::RequestError(e)) => match *e {
            ureq::Error::Status(404, ref response) => {
                // A missing repository (or revision) differs from a missing file in the Hub's error code.
                let code = response.header("x-error-code").unwrap_or_default().to_string();
                if code == "RepoNotFound" || code == "RevisionNotFound" {
                    Err(HubError::NotFound { repo: repo_id.into(), endpoint: endpoint(), revision: revision.into() })
                } else {
                    Ok(None)
                }
            }
            ureq::Error::Status(status @ (401 | 403), _) => {
                Err(HubError::Unauthorized { repo: repo_id.into(), endpoint: endpoint(), status })
            }
            other => Err(HubError::Download { repo: repo_id.into(), file: file.into(), message: other.to_string() }),
        },
        Err(e) => Err(HubError::Download { repo: repo_id.into(), file: file.into(), message: e.to_string() }),
    }
}

fn shard_names(index: &Path) -> Result<Vec<String>, HubError> {
    let bad = |message: String| HubError::Download { repo: String::new(), file: index.display().to_string(), message };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = value["weight_map"].as_object().ok_or_else(|| bad("no weight_map".into()))?;
    let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
    shards.sort();
    shards.dedup();
    if let Some(s) = shards.iter().find(|s| !looks_like_file_name(s)) {
        return Err(bad(format!("shard name {s:?} is not a plain file name")));
    }
    Ok(shards)
}

fn looks_like_file_name(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && !s.contains('\\') && s != "." && s != ".."
}

fn fetch_offline(cache: &Cache, repo: Repo, repo_id: &str) -> Result<PathBuf, HubError> {
    let cached = cache.repo(repo);
    let missing =
        |file: &str| HubError::Offline { repo: repo_id.into(), file: file.into(), cache: cache.path().clone() };
    let config = cached.get("config.json").ok_or_else(|| missing("config.json"))?;
    let has = |f: &str| cached.get(f).is_some();
    if !(has("model.safetensors") || has("model.safetensors.index.json") || has("pytorch_model.bin")) {
        return Err(missing("model.safetensors"));
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths() {
        assert!(looks_like_repo_id("openai-community/gpt2"));
        assert!(looks_like_repo_id("gpt2"));
        assert!(!looks_like_repo_id("./gpt2"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("/tmp"));
        assert!(!looks_like_repo_id("gpt2/"));
    }
}
