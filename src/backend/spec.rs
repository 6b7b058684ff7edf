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
