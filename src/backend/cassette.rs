//! Record and replay: a cassette is a JSONL file of request/response pairs,
//! keyed by a hash of the normalised request.
//!
//! - [`Recording`] wraps any backend and appends every attempt, failures
//!   included, so retries replay too.
//! - [`Replay`] (spec `replay:PATH`) serves the pairs back. Replies for the
//!   same key are served in recorded order (the last one repeats), so a whole
//!   workflow with loops and retries replays deterministically. A miss is a
//!   permanent error that names the closest recorded request and what differs.
//!
//! **Invariant:** a cassette holds requests and replies only: no headers, no
//! API keys, no base URLs.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::*;

/// The part of a request that decides the reply (not who asked, not when).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestKey {
    pub model: String,
    pub messages: Vec<Message>,
    pub sampling: SamplingParams,
    pub n: u32,
    pub logprobs: Option<u8>,
    pub response_format: ResponseFormat,
}

impl RequestKey {
    pub fn new(model: &str, req: &CompletionRequest) -> RequestKey {
        RequestKey {
            model: model.to_string(),
            messages: req.messages.clone(),
            sampling: req.sampling.clone(),
            n: req.n,
            logprobs: req.logprobs,
            response_format: req.response_format.clone(),
        }
    }

    /// FNV-1a over the canonical JSON: stable across runs and platforms.
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).expect("serialisable");
        format!("{:016x}", crate::hash::fnv1a(json.as_bytes()))
    }
}

/// One line of a cassette.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    /// Where the call came from (for people reading the cassette).
    pub node: String,
    pub round: u32,
    pub request: RequestKey,
    pub reply: Reply,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Completion),
    Err {
        kind: ErrorKind,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

/// An append-only cassette file shared by every recording model of a run.
pub struct CassetteWriter {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl CassetteWriter {
    pub fn create(path: &Path) -> std::io::Result<CassetteWriter> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(CassetteWriter {
            file: Mutex::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        })
    }

    fn append(&self, entry: &Entry) {
        let line = serde_json::to_string(entry).expect("serialisable");
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(f, "{line}").and_then(|_| f.flush()) {
            tracing::warn!(error = %e, "cannot write to the cassette");
        }
    }
}

/// Records every call of the wrapped model into a cassette.
pub struct Recording<M> {
    inner: M,
    name: String,
    cassette: Arc<CassetteWriter>,
}

impl<M: LanguageModel> Recording<M> {
    /// `name` is the workflow's model name, part of every key.
    pub fn new(inner: M, name: &str, cassette: Arc<CassetteWriter>) -> Self {
        Recording {
            inner,
            name: name.to_string(),
            cassette,
        }
    }
}

impl<M: LanguageModel> LanguageModel for Recording<M> {
    crate::backend::forward_to_inner!(id, embed, capabilities, estimate);

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            let result = self.inner.complete(req).await;
            let request = RequestKey::new(&self.name, req);
            let reply = match &result {
                Ok(c) => Reply::Ok(c.clone()),
                Err(e) => Reply::Err {
                    kind: e.kind,
                    message: e.message.clone(),
                    retry_after_ms: e.retry_after.map(|d| d.as_millis() as u64),
                },
            };
            self.cassette.append(&Entry {
                key: request.hash(),
                node: req.context.node.to_string(),
                round: req.context.round,
                request,
                reply,
            });
            result
        })
    }
}

/// Serves a cassette's replies.
pub struct Replay {
    id: String,
    /// The workflow model name the cassette is read for; `None` matches any.
    model: Mutex<Option<String>>,
    replies: Mutex<HashMap<String, VecDeque<Reply>>>,
    entries: Vec<Entry>,
}

/// Why a cassette could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cassette {path}: {message}")]
pub struct CassetteError {
    pub path: String,
    pub message: String,
}

impl Replay {
    pub fn from_file(path: &Path) -> Result<Replay, CassetteError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CassetteError {
            path: name.clone(),
            message: e.to_string(),
        })?;
        let mut entries = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let entry: Entry = serde_json::from_str(line).map_err(|e| CassetteError {
                path: name.clone(),
                message: format!("line {}: {e}", i + 1),
            })?;
            entries.push(entry);
        }
        let mut replies: HashMap<String, VecDeque<Reply>> = HashMap::new();
        for e in &entries {
            replies
                .entry(e.request.hash())
                .or_default()
                .push_back(e.reply.clone());
        }
        Ok(Replay {
            id: format!("replay:{name}"),
            model: Mutex::new(None),
            replies: Mutex::new(replies),
            entries,
        })
    }

    /// Replays the entries recorded for the workflow model `name`.
    pub fn for_model(self, name: &str) -> Replay {
        *self.model.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.to_string());
        self
    }

    fn miss(&self, key: &RequestKey, req: &CompletionRequest) -> BackendError {
        let wanted = serde_json::to_value(key).expect("serialisable");
        let closest = self
            .entries
            .iter()
            .map(|e| {
                let diffs = differences(
                    &wanted,
                    &serde_json::to_value(&e.request).expect("serialisable"),
                    "",
                );
                (diffs, e)
            })
            .min_by_key(|(d, _)| d.len());
        let detail = match closest {
            None => "the cassette is empty".to_string(),
            Some((diffs, e)) => format!(
                "closest recorded request (node `{}` round {}) differs in: {}",
                e.node,
                e.round,
                diffs.into_iter().take(3).collect::<Vec<_>>().join("; ")
            ),
        };
        BackendError::new(
            &self.id,
            ErrorKind::Permanent,
            format!(
                "no recorded reply for node `{}` round {}; {detail}",
                req.context.node, req.context.round
            ),
        )
    }
}

/// Paths where two JSON values differ, with a short excerpt of each side.
fn differences(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Vec<String> {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    differences(
                        x.get(k).unwrap_or(&J::Null),
                        y.get(k).unwrap_or(&J::Null),
                        &p,
                    )
                })
                .collect()
        }
        (J::Array(x), J::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .flat_map(|(i, (p, q))| differences(p, q, &format!("{path}[{i}]")))
            .collect(),
        _ if a == b => Vec::new(),
        _ => {
            let show = |v: &J| {
                let s = v.to_string();
                if s.chars().count() > 60 {
                    format!("{}…", s.chars().take(60).collect::<String>())
                } else {
                    s
                }
            };
            vec![format!("{path} (now {}, recorded {})", show(a), show(b))]
        }
    }
}

impl LanguageModel for Replay {
    fn id(&self) -> &str {
        &self.id
    }

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            let model = self.model.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let model = model
                .or_else(|| self.entries.first().map(|e| e.request.model.clone()))
                .unwrap_or_default();
            let key = RequestKey::new(&model, req);
            let reply = {
                let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
                replies.get_mut(&key.hash()).and_then(|q| {
                    if q.len() > 1 {
                        q.pop_front()
                    } else {
                        q.front().cloned()
                    }
                })
            };
            match reply {
                None => Err(self.miss(&key, req)),
                Some(Reply::Ok(c)) => Ok(c),
                Some(Reply::Err {
                    kind,
                    message,
                    retry_after_ms,
                }) => Err(BackendError::new(&self.id, kind, message)
                    .with_retry_after(retry_after_ms.map(std::time::Duration::from_millis))),
            }
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            logprobs: true,
            structured_output: true,
            embeddings: false,
            native_n: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str, round: u32) -> CompletionRequest {
        CompletionRequest {
            messages: vec![Message::user(text)],
            sampling: SamplingParams {
                max_tokens: 8,
                ..Default::default()
            },
            n: 1,
            logprobs: None,
            response_format: ResponseFormat::Text,
            context: CallContext {
                node: "draft".into(),
                round,
                attempt: 0,
                retry: 0,
            },
        }
    }

    struct Counter(Mutex<u32>);

    impl LanguageModel for Counter {
        fn id(&self) -> &str {
            "counter"
        }
        fn complete<'a>(
            &'a self,
            _: &'a CompletionRequest,
        ) -> BoxFuture<'a, Result<Completion, BackendError>> {
            Box::pin(async move {
                let mut n = self.0.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    return Err(BackendError::new(
                        "counter",
                        ErrorKind::Transient,
                        "503 busy",
                    ));
                }
                Ok(Completion {
                    choices: vec![Choice {
                        text: format!("reply {n}"),
                        finish: FinishReason::Stop,
                        logprobs: None,
                    }],
                    usage: Usage {
                        prompt_tokens: 2,
                        completion_tokens: 2,
                        ..Default::default()
                    },
                    usage_estimated: false,
                })
            })
        }
    }

    #[tokio::test]
    async fn recorded_calls_replay_in_order_failures_included() {
        let dir = std::env::temp_dir().join(format!("redraft-cassette-{}", std::process::id()));
        let path = dir.join("c.jsonl");
        let writer = Arc::new(CassetteWriter::create(&path).unwrap());
        let rec = Recording::new(Counter(Mutex::new(0)), "writer", writer);
        assert!(rec.complete(&req("hello", 1)).await.is_err());
        assert_eq!(
            rec.complete(&req("hello", 1)).await.unwrap().choices[0].text,
            "reply 2"
        );
        assert_eq!(
            rec.complete(&req("other", 2)).await.unwrap().choices[0].text,
            "reply 3"
        );

        let replay = Replay::from_file(&path).unwrap().for_model("writer");
        let e = replay.complete(&req("hello", 1)).await.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Transient, "503 busy")
        );
        assert_eq!(
            replay.complete(&req("hello", 1)).await.unwrap().choices[0].text,
            "reply 2"
        );
        // The last reply for a key repeats.
        assert_eq!(
            replay.complete(&req("hello", 1)).await.unwrap().choices[0].text,
            "reply 2"
        );
        assert_eq!(
            replay.complete(&req("other", 9)).await.unwrap().choices[0].text,
            "reply 3"
        );

        let miss = replay.complete(&req("helo", 3)).await.unwrap_err();
        assert_eq!(miss.kind, ErrorKind::Permanent);
        assert!(
            miss.message
                .contains("no recorded reply for node `draft` round 3"),
            "{}",
            miss.message
        );
        assert!(
            miss.message
                .contains("messages[0].content (now \"helo\", recorded \"hello\")"),
            "{}",
            miss.message
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn keys_ignore_who_asked() {
        assert_eq!(
            RequestKey::new("m", &req("x", 1)).hash(),
            RequestKey::new("m", &req("x", 7)).hash()
        );
        assert_ne!(
            RequestKey::new("m", &req("x", 1)).hash(),
            RequestKey::new("n", &req("x", 1)).hash()
        );
    }

    #[test]
    fn bad_cassettes_name_the_line() {
        let dir = std::env::temp_dir().join(format!("redraft-cassette-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.jsonl");
        std::fs::write(&path, "{\"key\": 1}\n").unwrap();
        let e = Replay::from_file(&path).err().unwrap();
        assert!(e.to_string().contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
