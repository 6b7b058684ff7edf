//! Model spec strings: `scripted:PATH`, `openai:MODEL[@BASE_URL]`, `llama:PATH.gguf`,
//! `hf:OWNER/REPO/FILE.gguf[@REVISION]`, `replay:PATH.jsonl`.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// Replies from a YAML script (tests, demos).
    Scripted { path: PathBuf },
    /// An OpenAI-compatible server.
    OpenAi {
        model: String,
        base_url: Option<String>,
    },
    /// A local GGUF file run in-process by llama.cpp.
    Llama { path: PathBuf },
    /// A GGUF file from the Hugging Face Hub, run by the llama backend.
    Hub { file: super::hf::HubFile },
    /// Replies replayed from a cassette recorded with `--record`.
    Replay { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "model spec `{}`: {}",
    crate::redact::text(spec),
    crate::redact::text(reason)
)]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
}

impl ModelSpec {
    pub const HELP: &'static str = "write `scripted:PATH.yaml`, `openai:MODEL[@BASE_URL]`, `llama:PATH.gguf` or `hf:OWNER/REPO/FILE.gguf`";

    pub fn parse(spec: &str) -> Result<ModelSpec, SpecError> {
        let err = |reason: &str| SpecError {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = spec.split_once(':').ok_or_else(|| {
            err("no backend prefix (`scripted:`, `openai:`, `llama:`, `hf:`, `replay:`)")
        })?;
        if rest.trim().is_empty() {
            return Err(err("nothing after the backend prefix"));
        }
        match scheme {
            "scripted" => Ok(ModelSpec::Scripted {
                path: PathBuf::from(rest),
            }),
            "llama" => Ok(ModelSpec::Llama {
                path: PathBuf::from(rest),
            }),
            "hf" => Ok(ModelSpec::Hub {
                file: super::hf::HubFile::parse(rest).map_err(|r| err(&r))?,
            }),
            "replay" => Ok(ModelSpec::Replay {
                path: PathBuf::from(rest),
            }),
            "openai" => {
                let (model, base_url) = match rest.split_once('@') {
                    Some((m, url)) => {
                        if !(url.starts_with("http://") || url.starts_with("https://")) {
                            return Err(err(
                                "the base URL after `@` must start with http:// or https://",
                            ));
                        }
                        (m, Some(url.to_string()))
                    }
                    None => (rest, None),
                };
                if model.is_empty() {
                    return Err(err("no model name before `@`"));
                }
                Ok(ModelSpec::OpenAi {
                    model: model.to_string(),
                    base_url,
                })
            }
            other => Err(err(&format!("unknown backend `{other}`"))),
        }
    }
}

/// Local models known by name (`llama:NAME`): the file in the model cache
/// and the script that installs it there (from PyPI, sha256-checked).
///
/// `default` is the embedded default, the smallest model that verifies the
/// flagship on most everyday tasks (docs/results.md: Qwen2.5-Coder 1.5B);
/// `smollm2` is the small model the test suite runs on (98 MB, seconds
/// per call), the default before that measurement.
pub const NAMED_MODELS: &[(&str, &str, &str)] = &[
    (
        "default",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "scripts/fetch-qwen.sh 1.5b",
    ),
    (
        "smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "scripts/fetch-model.sh",
    ),
    (
        "qwen-coder-1.5b",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "scripts/fetch-qwen.sh 1.5b",
    ),
    (
        "qwen-coder-0.5b",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "scripts/fetch-qwen.sh 0.5b",
    ),
];

/// redraft's cache directory: `$REDRAFT_CACHE`, default `~/.cache/redraft`
/// (models, peers, the response cache).
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("REDRAFT_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/redraft")
        })
}

/// The model cache: `$REDRAFT_CACHE/models`, default `~/.cache/redraft/models`.
pub fn model_cache() -> std::path::PathBuf {
    cache_dir().join("models")
}

/// A named model's path and the command that installs it.
pub fn named_model(name: &std::path::Path) -> Option<(std::path::PathBuf, &'static str)> {
    let name = name.to_str()?;
    NAMED_MODELS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, file, fetch)| (model_cache().join(file), *fetch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_backend() {
        assert_eq!(
            ModelSpec::parse("scripted:r.yaml").unwrap(),
            ModelSpec::Scripted {
                path: "r.yaml".into()
            }
        );
        assert_eq!(
            ModelSpec::parse("openai:gpt-4o@http://127.0.0.1:8080/v1").unwrap(),
            ModelSpec::OpenAi {
                model: "gpt-4o".into(),
                base_url: Some("http://127.0.0.1:8080/v1".into())
            }
        );
        assert_eq!(
            ModelSpec::parse("openai:gpt-4o").unwrap(),
            ModelSpec::OpenAi {
                model: "gpt-4o".into(),
                base_url: None
            }
        );
        assert_eq!(
            ModelSpec::parse("llama:m.gguf").unwrap(),
            ModelSpec::Llama {
                path: "m.gguf".into()
            }
        );
    }

    #[test]
    fn names_resolve_to_the_model_cache_with_their_install_script() {
        let (path, fetch) = named_model(std::path::Path::new("qwen-coder-1.5b")).unwrap();
        assert!(path.starts_with(model_cache()));
        assert!(path.ends_with("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"));
        assert_eq!(fetch, "scripts/fetch-qwen.sh 1.5b");
        let (path, fetch) = named_model(std::path::Path::new("default")).unwrap();
        assert!(path.ends_with("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"));
        assert_eq!(fetch, "scripts/fetch-qwen.sh 1.5b");
        let (path, fetch) = named_model(std::path::Path::new("smollm2")).unwrap();
        assert!(path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_eq!(fetch, "scripts/fetch-model.sh");
        for path in ["model.gguf", "./default", "qwen-coder"] {
            assert!(named_model(std::path::Path::new(path)).is_none(), "{path}");
        }
        // Every script a name points to exists.
        for (_, _, fetch) in NAMED_MODELS {
            let script = fetch.split(' ').next().unwrap();
            assert!(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(script)
                    .is_file(),
                "{script}"
            );
        }
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "gpt-4o",
            "scripted:",
            "foo:bar",
            "openai:@http://x",
            "openai:m@ftp://x",
            "hf:owner/repo",
        ] {
            assert!(ModelSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
