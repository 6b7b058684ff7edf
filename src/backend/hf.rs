//! `hf:OWNER/REPO/FILE[@REVISION]`: a GGUF file from the Hugging Face Hub, resolved
//! to a local path through the Hub's cache (the `hf-hub` crate), then run by the
//! llama backend.
//!
//! The endpoint and cache honour `HF_ENDPOINT` and `HF_HOME` like the Python
//! client, so mirrors and offline caches work; a file already in the cache is
//! used without touching the network.

use std::path::PathBuf;

#[cfg(feature = "llama")]
use super::{BackendError, ErrorKind};

/// Where to look for files: the Hub endpoint and the cache root (`HF_HOME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    pub endpoint: String,
    /// The Hub cache directory (`$HF_HOME/hub`).
    pub cache_dir: PathBuf,
}

impl HubConfig {
    /// From `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_HOME`
    /// (default `~/.cache/huggingface`).
    pub fn from_env() -> HubConfig {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| "https://huggingface.co".to_string());
        let home = std::env::var_os("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default()
                    .join(".cache/huggingface")
            });
        HubConfig {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache_dir: home.join("hub"),
        }
    }
}

/// A parsed `hf:` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `OWNER/REPO`.
    pub repo: String,
    /// Path of the file inside the repository.
    pub file: String,
    pub revision: String,
}

impl HubFile {
    /// Parses what follows `hf:`: `OWNER/REPO/FILE[@REVISION]`.
    pub fn parse(rest: &str) -> Result<HubFile, String> {
        let (path, revision) = match rest.rsplit_once('@') {
            Some((p, r)) if !r.is_empty() && !r.contains('/') => (p, r),
            Some(_) => {
                return Err("nothing usable after `@` (write a branch, tag or commit)".into());
            }
            None => (rest, "main"),
        };
        let mut parts = path.splitn(3, '/');
        let (Some(owner), Some(name), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("write `hf:OWNER/REPO/FILE.gguf[@REVISION]`".into());
        };
        if owner.is_empty() || name.is_empty() || file.is_empty() || file.ends_with('/') {
            return Err("write `hf:OWNER/REPO/FILE.gguf[@REVISION]`".into());
        }
        if file.split('/').any(|seg| seg == ".." || seg.is_empty()) {
            return Err(format!(
                "file path `{file}` must not contain `..` or empty segments"
            ));
        }
        Ok(HubFile {
            repo: format!("{owner}/{name}"),
            file: file.to_string(),
            revision: revision.to_string(),
        })
    }
}

#[cfg(feature = "llama")]
/// Returns the local path of `file`, downloading it into the cache when it is
/// not there yet. Blocks the calling thread (it runs the download on a thread
/// of its own, so it works inside and outside an async runtime).
pub fn resolve(file: &HubFile, config: &HubConfig) -> Result<PathBuf, BackendError> {
    let spec = format!("hf:{}/{}@{}", file.repo, file.file, file.revision);
    let err = |kind, message: String| BackendError::new(&spec, kind, message);
    let repo = hf_hub::Repo::with_revision(
        file.repo.clone(),
        hf_hub::RepoType::Model,
        file.revision.clone(),
    );
    let cache = hf_hub::Cache::new(config.cache_dir.clone());
    if let Some(path) = cache.repo(repo.clone()).get(&file.file) {
        return Ok(path);
    }
    let api = hf_hub::api::tokio::ApiBuilder::from_cache(cache)
        .with_endpoint(config.endpoint.clone())
        .with_progress(false)
        .build()
        .map_err(|e| {
            err(
                ErrorKind::Config,
                format!("cannot set up the Hub client: {e}"),
            )
        })?;
    let name = file.file.clone();
    let download = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime
            .block_on(api.repo(repo).get(&name))
            .map_err(|e| describe(&e))
    });
    let result = download
        .join()
        .map_err(|_| err(ErrorKind::Permanent, "the download thread panicked".into()))?;
    result.map_err(|message| {
        err(
            ErrorKind::Config,
            format!(
                "cannot download `{}` from {} (set HF_ENDPOINT for a mirror, or put the file in {}): {message}",
                file.file,
                config.endpoint,
                config.cache_dir.display()
            ),
        )
    })
}

#[cfg(feature = "llama")]
/// The error with its sources, which is where reqwest keeps the useful part.
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            HubFile::parse("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/q4/model.gguf").unwrap(),
            HubFile {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF".into(),
                file: "q4/model.gguf".into(),
                revision: "main".into(),
            }
        );
        assert_eq!(HubFile::parse("a/b/c.gguf@v1.0").unwrap().revision, "v1.0");
        for bad in [
            "a/b",
            "a//c.gguf",
            "/b/c",
            "a/b/",
            "a/b/../x",
            "a/b/c@",
            "a/b/c@x/y",
        ] {
            assert!(HubFile::parse(bad).is_err(), "{bad}");
        }
    }
}
