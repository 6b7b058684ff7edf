//! The model interface: one dyn-compatible trait, provider-neutral request
//! and response types, and typed errors classified by what the caller should
//! do next.
//!
//! **API boundary:** wire types of a provider (HTTP bodies, llama.cpp
//! structs) never leave its adapter module. The engine sees only the types
//! defined here.

#[cfg(any(feature = "llama", test))]
pub(crate) mod batching;
pub mod cassette;
pub mod hf;
#[cfg(feature = "llama")]
pub mod llama;
pub mod net;
pub mod openai;
mod scripted;
mod spec;

use std::sync::Arc;

/// The boxed future [`LanguageModel`]'s methods return, re-exported so
/// that implementors need no other crate: `Box::pin(async move { ... })`.
pub use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use scripted::{ScriptError, ScriptedModel};
pub use spec::{ModelSpec, NAMED_MODELS, SpecError, cache_dir, model_cache, named_model};

/// A chat-completion (and optionally embedding) backend.
///
/// Required: [`id`](LanguageModel::id) and [`complete`](LanguageModel::complete).
/// Everything else has a default.
pub trait LanguageModel: Send + Sync {
    /// A stable identifier of the concrete model, recorded in events.
    fn id(&self) -> &str;

    /// Runs one completion request, returning `req.n` choices.
    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>>;

    /// Embeds texts. Backends without embeddings keep the default.
    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        let _ = req;
        Box::pin(async move {
            Err(BackendError::new(
                self.id(),
                ErrorKind::Unsupported,
                "this backend does not provide embeddings",
            ))
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Prompt tokens the request will use, for the budget check made before
    /// the call. Backends with a tokenizer should count exactly; the default
    /// over-estimates (one token per 3 bytes plus 4 per message).
    fn estimate_prompt_tokens(&self, req: &CompletionRequest) -> u64 {
        req.messages
            .iter()
            .map(|m| m.content.len() as u64 / 3 + 4)
            .sum()
    }
}

/// Writes the `LanguageModel` methods a wrapper passes through unchanged to
/// its `inner` field: any of `id`, `embed`, `capabilities`, `estimate`.
/// Every layer uses it, so a wrapper's impl shows only what it changes.
macro_rules! forward_to_inner {
    (id) => {
        fn id(&self) -> &str {
            self.inner.id()
        }
    };
    (embed) => {
        fn embed<'a>(
            &'a self,
            req: &'a $crate::backend::EmbeddingRequest,
        ) -> futures_util::future::BoxFuture<'a, Result<$crate::backend::Embeddings, $crate::backend::BackendError>> {
            self.inner.embed(req)
        }
    };
    (capabilities) => {
        fn capabilities(&self) -> $crate::backend::Capabilities {
            self.inner.capabilities()
        }
    };
    (estimate) => {
        fn estimate_prompt_tokens(&self, req: &$crate::backend::CompletionRequest) -> u64 {
            self.inner.estimate_prompt_tokens(req)
        }
    };
    ($($method:ident),+) => {
        $($crate::backend::forward_to_inner!($method);)+
    };
}
pub(crate) use forward_to_inner;

impl<T: LanguageModel + ?Sized> LanguageModel for &T {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        (**self).complete(req)
    }
    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        (**self).embed(req)
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn estimate_prompt_tokens(&self, req: &CompletionRequest) -> u64 {
        (**self).estimate_prompt_tokens(req)
    }
}

impl<T: LanguageModel + ?Sized> LanguageModel for Arc<T> {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        (**self).complete(req)
    }
    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        (**self).embed(req)
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn estimate_prompt_tokens(&self, req: &CompletionRequest) -> u64 {
        (**self).estimate_prompt_tokens(req)
    }
}

/// Compile-time check that the trait stays dyn-compatible.
#[allow(dead_code)]
fn _dyn_compatible(_: Arc<dyn LanguageModel>) {}

/// What a backend can do beyond plain completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub logprobs: bool,
    /// The response format is enforced while decoding (grammar or server-side).
    pub structured_output: bool,
    pub embeddings: bool,
    /// `n` > 1 is served by one call.
    pub native_n: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Sampling settings of one request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// The shape the reply must have.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    #[default]
    Text,
    JsonSchema {
        name: String,
        schema: serde_json::Value,
    },
}

/// Who is calling: recorded in events, used by the scripted backend and by
/// cassettes to key replies. Not sent to providers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CallContext {
    pub node: Arc<str>,
    pub round: u32,
    /// 0 for the first attempt; repair attempts count up.
    pub attempt: u32,
    /// 0 for the first try; transport retries (see `layer::Retry`) count up.
    #[serde(default)]
    pub retry: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub messages: Vec<Message>,
    pub sampling: SamplingParams,
    /// Number of choices wanted (>= 1).
    pub n: u32,
    /// Top-k logprobs per generated token.
    pub logprobs: Option<u8>,
    pub response_format: ResponseFormat,
    pub context: CallContext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from a cache (a reused KV prefix), included in
    /// `prompt_tokens`.
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cached_tokens += o.cached_tokens;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    #[default]
    Stop,
    Length,
}

impl FinishReason {
    /// The name used in JSON (and OpenTelemetry's `finish_reasons`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Log-probability of one generated token and its top alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub text: String,
    pub finish: FinishReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub choices: Vec<Choice>,
    pub usage: Usage,
    /// True when the backend could not report usage and it was counted
    /// another way.
    pub usage_estimated: bool,
}

impl Completion {
    /// One choice per text, ended normally, with the usage the backend
    /// reported (`usage_estimated` false).
    pub fn from_texts(
        texts: impl IntoIterator<Item = impl Into<String>>,
        usage: Usage,
    ) -> Completion {
        Completion {
            choices: texts
                .into_iter()
                .map(|t| Choice {
                    text: t.into(),
                    finish: FinishReason::Stop,
                    logprobs: None,
                })
                .collect(),
            usage,
            usage_estimated: false,
        }
    }
}

/// A model from an async function of the request: the least an embedder
/// writes to plug in its own inference.
///
/// ```
/// use redraft::backend::{Completion, Usage, model_fn};
/// let echo = model_fn("echo", |req| async move {
///     let prompt = req.messages.last().map(|m| m.content.clone()).unwrap_or_default();
///     Ok(Completion::from_texts(vec![prompt; req.n as usize], Usage::default()))
/// });
/// assert_eq!(echo.id(), "echo");
/// ```
pub fn model_fn<F, Fut>(id: impl Into<String>, complete: F) -> Arc<dyn LanguageModel>
where
    F: Fn(CompletionRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Completion, BackendError>> + Send + 'static,
{
    Arc::new(FnModel {
        id: id.into(),
        complete,
    })
}

struct FnModel<F> {
    id: String,
    complete: F,
}

impl<F, Fut> LanguageModel for FnModel<F>
where
    F: Fn(CompletionRequest) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<Completion, BackendError>> + Send + 'static,
{
    fn id(&self) -> &str {
        &self.id
    }

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin((self.complete)(req.clone()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    pub texts: Vec<String>,
    pub context: CallContext,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub usage: Usage,
}

/// What the caller should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// Worth retrying later: rate limits, 5xx, timeouts, dropped connections.
    Transient,
    /// Retrying the same request will fail again.
    Permanent,
    /// The prompt (plus max tokens) does not fit the model's context.
    ContextLength,
    /// The backend lacks the feature (embeddings, logprobs, ...).
    Unsupported,
    /// The model file or endpoint is not usable as configured.
    Config,
    /// The call was not made: it would cross a budget (see `budget::Exhausted`
    /// in `source`).
    Budget,
}

impl ErrorKind {
    /// The name used in JSON (and as OpenTelemetry's `error.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::ContextLength => "context_length",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Config => "config",
            ErrorKind::Budget => "budget",
        }
    }
}

/// A failed backend call.
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {message}")]
pub struct BackendError {
    pub backend: String,
    pub kind: ErrorKind,
    pub message: String,
    /// How long the server asked us to wait (`Retry-After`), if it did.
    pub retry_after: Option<std::time::Duration>,
    /// What a call that failed midway had used (prompt processed, tokens
    /// generated): charged to the budget and reported, never lost.
    pub usage: Option<Usage>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// A backend's error. A URL in the backend's name or the message (a
    /// spec's endpoint) has its password and keys masked.
    pub fn new(backend: &str, kind: ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        BackendError {
            backend: crate::redact::text(backend).into_owned(),
            kind,
            message: match crate::redact::text(&message) {
                std::borrow::Cow::Borrowed(_) => message,
                std::borrow::Cow::Owned(masked) => masked,
            },
            retry_after: None,
            usage: None,
            source: None,
        }
    }

    /// The usage of a call that failed after it had started working.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    pub fn with_retry_after(mut self, after: Option<std::time::Duration>) -> Self {
        self.retry_after = after;
        self
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// Opens a backend from a spec string and its backend-specific settings.
/// `base_dir` resolves relative paths (the workflow's directory for specs
/// written in a workflow).
pub fn open(
    spec: &str,
    settings: &serde_json::Value,
    base_dir: &std::path::Path,
) -> Result<Arc<dyn LanguageModel>, BackendError> {
    let parsed = ModelSpec::parse(spec)
        .map_err(|e| BackendError::new(spec, ErrorKind::Config, e.to_string()))?;
    match parsed {
        ModelSpec::Scripted { path } => {
            let path = base_dir.join(path);
            let model = ScriptedModel::from_file(&path)
                .map_err(|e| BackendError::new(spec, ErrorKind::Config, e.to_string()))?;
            Ok(Arc::new(model))
        }
        ModelSpec::OpenAi { model, base_url } => Ok(Arc::new(openai::OpenAiModel::new(
            &model,
            base_url.as_deref(),
            settings,
        )?)),
        ModelSpec::Replay { path } => {
            let replay = cassette::Replay::from_file(&base_dir.join(path))
                .map_err(|e| BackendError::new(spec, ErrorKind::Config, e.to_string()))?;
            Ok(Arc::new(replay))
        }
        #[cfg(feature = "llama")]
        ModelSpec::Llama { path } => {
            let path = if named_model(&path).is_some() {
                path
            } else {
                base_dir.join(path)
            };
            let settings = llama::resolve_settings(settings, base_dir);
            Ok(Arc::new(llama::LlamaModel::open(&path, &settings)?))
        }
        #[cfg(feature = "llama")]
        ModelSpec::Hub { file } => {
            let path = hf::resolve(&file, &hf::HubConfig::from_env())?;
            let settings = llama::resolve_settings(settings, base_dir);
            Ok(Arc::new(llama::LlamaModel::open(&path, &settings)?))
        }
        #[cfg(not(feature = "llama"))]
        ModelSpec::Llama { .. } | ModelSpec::Hub { .. } => Err(BackendError::new(
            spec,
            ErrorKind::Unsupported,
            "this build has no llama.cpp backend: build with `--features llama`",
        )),
    }
}

/// An HTTP header's value as sent (models' `headers:`, HTTP tools'):
/// [`from_environment`], or an error naming the header and the variable.
pub(crate) fn header_value(header: &str, value: &str) -> Result<String, String> {
    from_environment(value).map_err(|var| {
        format!("header `{header}` names the environment variable {var}, which is not set")
    })
}

/// A header value with each `${NAME}` replaced by that environment
/// variable, so a workflow names where a credential is and never holds it;
/// `Err(NAME)` for one that is unset or empty.
fn from_environment(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        let Some(end) = rest[at + 2..].find('}') else {
            break;
        };
        let name = &rest[at + 2..at + 2 + end];
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        if valid {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => out.push_str(&v),
                _ => return Err(name.to_string()),
            }
        } else {
            out.push_str(&rest[at..at + 3 + end]);
        }
        rest = &rest[at + 3 + end..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod environment_tests {
    use super::from_environment;

    #[test]
    fn variables_in_a_value_are_read_from_the_environment() {
        let home = std::env::var("HOME").expect("HOME is set");
        assert_eq!(
            from_environment("Bearer ${HOME}").unwrap(),
            format!("Bearer {home}")
        );
        assert_eq!(
            from_environment("${HOME}/${HOME}").unwrap(),
            format!("{home}/{home}")
        );
        assert_eq!(
            from_environment("Bearer ${REDRAFT_SURELY_UNSET_VAR_71}"),
            Err("REDRAFT_SURELY_UNSET_VAR_71".into())
        );
        // Not a variable's name, or not closed: kept as written.
        assert_eq!(from_environment("a ${1x} b").unwrap(), "a ${1x} b");
        assert_eq!(from_environment("plain ${open").unwrap(), "plain ${open");
        assert_eq!(from_environment("no vars").unwrap(), "no vars");
    }
}
