//! The scripted backend: replies read from a YAML file, chosen by node id and
//! round or by a regex on the prompt. For tests and for demos without a model.
//!
//! Token accounting is exact and deterministic: a token is a
//! whitespace-separated word. The prompt estimate used by budgets is the same
//! count, so budget tests can predict every number. Completions are cut at
//! `max_tokens` words (finish reason `length`), as a real model's would be.
//!
//! **Invariant:** a request that no rule matches is an error naming the node,
//! round and prompt; the script never falls back silently.

use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::*;

/// A script file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    /// The model id recorded in events.
    #[serde(default = "default_id")]
    id: String,
    #[serde(default)]
    replies: Vec<Rule>,
    /// Embedding vectors by a regex on the text; the first match wins.
    #[serde(default)]
    embeddings: Vec<EmbedRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRule {
    text: String,
    vector: Vec<f32>,
}

fn default_id() -> String {
    "scripted".into()
}

/// One reply rule. Every selector given must match; the first matching rule wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    node: Option<String>,
    round: Option<u32>,
    /// A regex searched in the concatenated messages.
    prompt: Option<String>,
    /// The reply for every sample.
    text: Option<String>,
    /// One reply per sample (cycled when `n` is larger).
    samples: Option<Vec<String>>,
    /// Fail instead of replying.
    error: Option<ScriptedFailure>,
    #[serde(default)]
    latency_ms: u64,
    usage: Option<Usage>,
    logprobs: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedFailure {
    kind: FailureKind,
    message: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FailureKind {
    Transient,
    Permanent,
    ContextLength,
}

/// Why a script could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read script {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("script {path}: {message}")]
    Invalid { path: String, message: String },
}

struct CompiledRule {
    rule: Rule,
    prompt: Option<regex::Regex>,
}

/// A [`LanguageModel`] that replays a script.
pub struct ScriptedModel {
    id: String,
    rules: Vec<CompiledRule>,
    embeddings: Vec<(regex::Regex, Vec<f32>)>,
}

impl ScriptedModel {
    pub fn from_file(path: &Path) -> Result<ScriptedModel, ScriptError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Io {
            path: name.clone(),
            source,
        })?;
        Self::from_yaml(&text, &name)
    }

    /// Parses a script; `name` is used in messages.
    pub fn from_yaml(text: &str, name: &str) -> Result<ScriptedModel, ScriptError> {
        let invalid = |message: String| ScriptError::Invalid {
            path: name.to_string(),
            message,
        };
        let script: Script = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut rules = Vec::with_capacity(script.replies.len());
        for (i, rule) in script.replies.into_iter().enumerate() {
            let outcomes = [
                rule.text.is_some(),
                rule.samples.is_some(),
                rule.error.is_some(),
            ];
            if outcomes.iter().filter(|x| **x).count() != 1 {
                return Err(invalid(format!(
                    "reply {} needs exactly one of `text`, `samples`, `error`",
                    i + 1
                )));
            }
            if rule.samples.as_ref().is_some_and(Vec::is_empty) {
                return Err(invalid(format!(
                    "reply {} has an empty `samples` list",
                    i + 1
                )));
            }
            let prompt =
                match &rule.prompt {
                    Some(p) => Some(regex::Regex::new(p).map_err(|e| {
                        invalid(format!("reply {}: bad `prompt` regex: {e}", i + 1))
                    })?),
                    None => None,
                };
            rules.push(CompiledRule { rule, prompt });
        }
        let embeddings = script
            .embeddings
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                regex::Regex::new(&e.text)
                    .map(|re| (re, e.vector))
                    .map_err(|err| invalid(format!("embedding {}: bad `text` regex: {err}", i + 1)))
            })
            .collect::<Result<_, _>>()?;
        Ok(ScriptedModel {
            id: script.id,
            rules,
            embeddings,
        })
    }

    fn find(&self, req: &CompletionRequest, prompt: &dyn Fn() -> String) -> Option<&Rule> {
        let text = std::cell::OnceCell::new();
        self.rules
            .iter()
            .find(|r| {
                r.rule
                    .node
                    .as_deref()
                    .is_none_or(|n| n == &*req.context.node)
                    && r.rule.round.is_none_or(|round| round == req.context.round)
                    && r.prompt
                        .as_ref()
                        .is_none_or(|re| re.is_match(text.get_or_init(prompt)))
            })
            .map(|r| &r.rule)
    }

    fn reply(&self, req: &CompletionRequest) -> Result<(Completion, Duration), BackendError> {
        let prompt = || -> String {
            let parts: Vec<&str> = req.messages.iter().map(|m| m.content.as_str()).collect();
            parts.join("\n")
        };
        let Some(rule) = self.find(req, &prompt) else {
            let prompt = prompt();
            let mut excerpt: String = prompt.chars().take(200).collect();
            if excerpt.len() < prompt.len() {
                excerpt.push('…');
            }
            return Err(BackendError::new(
                &self.id,
                ErrorKind::Permanent,
                format!(
                    "no scripted reply matches node `{}` round {} (prompt: {excerpt:?})",
                    req.context.node, req.context.round
                ),
            ));
        };
        let latency = Duration::from_millis(rule.latency_ms);
        if let Some(f) = &rule.error {
            let kind = match f.kind {
                FailureKind::Transient => ErrorKind::Transient,
                FailureKind::Permanent => ErrorKind::Permanent,
                FailureKind::ContextLength => ErrorKind::ContextLength,
            };
            return Err(BackendError::new(&self.id, kind, f.message.clone()));
        }
        let texts: Vec<&str> = match (&rule.text, &rule.samples) {
            (Some(t), _) => vec![t.as_str(); req.n as usize],
            (None, Some(s)) => (0..req.n as usize)
                .map(|i| s[i % s.len()].as_str())
                .collect(),
            (None, None) => unreachable!("checked at load"),
        };
        let mut completion_tokens = 0;
        let choices = texts
            .into_iter()
            .map(|t| {
                let (text, finish) = truncate_words(t, req.sampling.max_tokens as usize);
                completion_tokens += count_words(&text);
                Choice {
                    text,
                    finish,
                    logprobs: req.logprobs.and(rule.logprobs.clone()),
                }
            })
            .collect();
        let usage = rule.usage.unwrap_or(Usage {
            prompt_tokens: self.estimate_prompt_tokens(req),
            completion_tokens,
            ..Default::default()
        });
        Ok((
            Completion {
                choices,
                usage,
                usage_estimated: false,
            },
            latency,
        ))
    }
}

/// Words, the scripted backend's tokens: runs of bytes that are not ASCII
/// whitespace.
pub(crate) fn count_words(text: &str) -> u64 {
    let mut words = 0;
    let mut in_word = false;
    for b in text.bytes() {
        let space = b.is_ascii_whitespace();
        words += (!space && !in_word) as u64;
        in_word = !space;
    }
    words
}

/// Cuts `text` after `max` words, keeping the original spacing.
fn truncate_words(text: &str, max: usize) -> (String, FinishReason) {
    let mut seen = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_ascii_whitespace() {
            in_word = false;
        } else if !in_word {
            in_word = true;
            seen += 1;
            if seen > max {
                return (text[..i].trim_end().to_string(), FinishReason::Length);
            }
        }
    }
    (text.to_string(), FinishReason::Stop)
}

impl LanguageModel for ScriptedModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            let (result, latency) = match self.reply(req) {
                Ok((c, latency)) => (Ok(c), latency),
                Err(e) => (Err(e), Duration::ZERO),
            };
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            result
        })
    }

    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        Box::pin(async move {
            let mut vectors = Vec::with_capacity(req.texts.len());
            for text in &req.texts {
                let found = self.embeddings.iter().find(|(re, _)| re.is_match(text));
                match found {
                    Some((_, v)) => vectors.push(v.clone()),
                    None => {
                        return Err(BackendError::new(
                            &self.id,
                            ErrorKind::Permanent,
                            format!("no scripted embedding matches {text:?}"),
                        ));
                    }
                }
            }
            let words: u64 = req.texts.iter().map(|t| count_words(t)).sum();
            Ok(Embeddings {
                vectors,
                usage: Usage {
                    prompt_tokens: words,
                    ..Usage::default()
                },
            })
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            logprobs: true,
            structured_output: false,
            embeddings: !self.embeddings.is_empty(),
            native_n: true,
        }
    }

    fn estimate_prompt_tokens(&self, req: &CompletionRequest) -> u64 {
        req.messages.iter().map(|m| count_words(&m.content)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(node: &str, round: u32, prompt: &str, n: u32, max_tokens: u32) -> CompletionRequest {
        CompletionRequest {
            messages: vec![Message::user(prompt)],
            sampling: SamplingParams {
                max_tokens,
                ..Default::default()
            },
            n,
            logprobs: None,
            response_format: ResponseFormat::Text,
            context: CallContext {
                node: node.into(),
                round,
                attempt: 0,
                retry: 0,
            },
        }
    }

    const SCRIPT: &str = r#"
replies:
  - node: draft
    round: 2
    text: second round
  - node: draft
    samples: [a b, c d e]
  - prompt: "(?i)grade"
    text: "{\"score\": 3}"
"#;

    #[tokio::test]
    async fn rules_match_by_node_round_and_prompt() {
        let m = ScriptedModel::from_yaml(SCRIPT, "s.yaml").unwrap();
        let c = m.complete(&req("draft", 2, "x", 1, 100)).await.unwrap();
        assert_eq!(c.choices[0].text, "second round");
        let c = m
            .complete(&req("draft", 1, "one two three", 3, 100))
            .await
            .unwrap();
        let texts: Vec<_> = c.choices.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["a b", "c d e", "a b"]);
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 7,
                ..Default::default()
            }
        );
        let c = m
            .complete(&req("critique", 1, "Please GRADE this", 1, 100))
            .await
            .unwrap();
        assert_eq!(c.choices[0].text, "{\"score\": 3}");
    }

    #[tokio::test]
    async fn no_match_fails_loudly() {
        let m = ScriptedModel::from_yaml(SCRIPT, "s.yaml").unwrap();
        let e = m
            .complete(&req("revise", 1, "hello", 1, 100))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.message.contains("node `revise` round 1"), "{e}");
    }

    #[tokio::test]
    async fn completions_stop_at_max_tokens() {
        let m = ScriptedModel::from_yaml("replies:\n  - text: one two three four\n", "s").unwrap();
        let c = m.complete(&req("x", 1, "p", 1, 2)).await.unwrap();
        assert_eq!(c.choices[0].text, "one two");
        assert_eq!(c.choices[0].finish, FinishReason::Length);
        assert_eq!(c.usage.completion_tokens, 2);
    }

    #[test]
    fn bad_scripts_are_rejected_with_the_file_name() {
        for bad in [
            "replies: 3",
            "replies:\n  - node: a\n",
            "replies:\n  - text: a\n    txt: b\n",
            "replies:\n  - text: a\n    prompt: '('\n",
        ] {
            let e = ScriptedModel::from_yaml(bad, "bad.yaml").err().expect(bad);
            assert!(e.to_string().contains("bad.yaml"), "{e}");
        }
    }
}
