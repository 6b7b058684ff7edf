//! The OpenAI-compatible backend (OpenAI, vLLM, llama.cpp's llama-server,
//! Ollama, LM Studio), on async-openai with our own transport.
//!
//! - Spec `openai:MODEL[@BASE_URL]`; more endpoints for the same model go in
//!   `settings.base_urls`. Requests are spread round-robin over healthy
//!   endpoints; an endpoint that fails at the connection level or with a 5xx
//!   is marked unhealthy for `unhealthy_for` and the call fails over to the
//!   next one. Each endpoint has its own concurrency limit.
//! - Errors are classified once, here, by what the caller should do next
//!   ([`classify`]); retries, timeouts and rate limits are layers
//!   (`crate::layer`), not flags of this backend.
//! - async-openai's own retry layer is replaced by a plain transport, so every
//!   retry passes through redraft's budget check.
//!
//! **Invariants:** wire types stay in this module; the API key is read from
//! the environment, sent only in the `Authorization` header, and scrubbed
//! from every error message; responses larger than `max_response_bytes` are
//! refused without being buffered whole.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use futures_util::future::BoxFuture;

use super::net::{self, HttpError};
use serde::Deserialize;

use super::*;

/// Backend-specific settings (`models.NAME.settings` in a workflow).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSettings {
    /// Endpoints serving the same model, besides the one in the spec.
    pub base_urls: Vec<String>,
    /// Environment variable holding the API key (default `OPENAI_API_KEY`).
    pub api_key_env: Option<String>,
    /// Extra HTTP headers on every request; `${NAME}` in a value is the
    /// environment variable NAME (keep credentials out of the workflow).
    pub headers: BTreeMap<String, String>,
    /// Most requests in flight per endpoint (default 64).
    pub concurrency_per_endpoint: Option<usize>,
    /// How long a failed endpoint is avoided (default `30s`).
    pub unhealthy_for: Option<String>,
    /// HTTP timeout of one request, connection to last byte (default `120s`).
    pub request_timeout: Option<String>,
    /// Largest accepted response body (default 8 MiB).
    pub max_response_bytes: Option<usize>,
    /// Whether the server returns `n` choices for one request (default true;
    /// set false for servers that ignore `n`, and the engine fans out).
    pub native_n: Option<bool>,
    /// Ask the server to enforce the JSON Schema strictly (OpenAI `strict`).
    pub strict_schema: Option<bool>,
}

/// The API key, never printed.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

struct Endpoint {
    url: String,
    client: async_openai::Client<OpenAIConfig>,
    permits: tokio::sync::Semaphore,
    down_until: Mutex<Option<tokio::time::Instant>>,
}

impl Endpoint {
    fn healthy(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        down.is_none_or(|t| tokio::time::Instant::now() >= t)
    }

    fn set_down(&self, for_: Option<Duration>) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            for_.map(|d| tokio::time::Instant::now() + d);
    }
}

/// A model behind one or more OpenAI-compatible endpoints.
pub struct OpenAiModel {
    id: String,
    model: String,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    unhealthy_for: Duration,
    native_n: bool,
    strict_schema: bool,
    secret: Option<Secret>,
}

impl std::fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("id", &self.id)
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|e| crate::redact::url(&e.url))
                    .collect::<Vec<_>>(),
            )
            .field("secret", &self.secret)
            .finish()
    }
}

/// A non-2xx reply (or an unusable 2xx one), kept whole for classification.
#[derive(Debug)]
struct HttpFailure {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

/// A 200 reply redraft cannot use, decided on our side: too large for
/// `max_response_bytes`, or not JSON (a proxy's HTML page).
#[derive(Debug)]
enum BadReply {
    TooLarge(String),
    NotJson(String),
}

impl std::fmt::Display for BadReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadReply::TooLarge(m) | BadReply::NotJson(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for BadReply {}

impl std::fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, excerpt(&self.body, 300))
    }
}

impl std::error::Error for HttpFailure {}

fn excerpt(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

fn parse_duration_setting(
    what: &str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) => crate::units::parse_duration(s)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("`{what}` = {s:?} is not a positive duration (500ms, 30s, 2m)")),
    }
}

/// Parses `Retry-After` in seconds (HTTP dates are ignored), at most 5 minutes.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v.min(300.0)))
}

/// Requests in flight to one endpoint when the settings do not say.
///
/// High enough that one engine shared by a few hundred concurrent runs is
/// not throttled by it (the server's own queue decides), low enough that a
/// runaway fan-out keeps its sockets well under the usual 1024-descriptor
/// limit. Lower it (`concurrency_per_endpoint`) for a server that serves
/// few requests at a time, such as a one-slot llama-server.
pub const DEFAULT_CONCURRENCY_PER_ENDPOINT: usize = 512;

impl OpenAiModel {
    /// Opens a model. `base_url` comes from the spec; the key from the
    /// environment variable named in the settings.
    pub fn new(
        model: &str,
        base_url: Option<&str>,
        settings: &serde_json::Value,
    ) -> Result<OpenAiModel, BackendError> {
        let id = format!("openai:{model}");
        let config_err = |m: String| BackendError::new(&id, ErrorKind::Config, m);
        let s: OpenAiSettings = if settings.is_null() {
            OpenAiSettings::default()
        } else {
            serde_json::from_value(settings.clone())
                .map_err(|e| config_err(format!("settings: {e}")))?
        };
        let mut urls: Vec<String> = base_url
            .map(str::to_string)
            .into_iter()
            .chain(s.base_urls.iter().cloned())
            .collect();
        if urls.is_empty() {
            urls.push(
                std::env::var("OPENAI_BASE_URL")
                    .unwrap_or_else(|_| "https://api.openai.com/v1".to_string()),
            );
        }
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(config_err(format!(
                    "base URL {u:?} must start with http:// or https://"
                )));
            }
        }
        let key_env = s
            .api_key_env
            .clone()
            .unwrap_or_else(|| "OPENAI_API_KEY".to_string());
        let key = std::env::var(&key_env).ok().filter(|k| !k.is_empty());
        if key.is_none() && urls.iter().any(|u| u.contains("api.openai.com")) {
            return Err(config_err(format!(
                "no API key: set the environment variable {key_env}"
            )));
        }
        let timeout = parse_duration_setting(
            "request_timeout",
            &s.request_timeout,
            Duration::from_secs(120),
        )
        .map_err(config_err)?;
        let unhealthy_for =
            parse_duration_setting("unhealthy_for", &s.unhealthy_for, Duration::from_secs(30))
                .map_err(config_err)?;
        let max_bytes = s.max_response_bytes.unwrap_or(8 << 20);
        let per_endpoint = s
            .concurrency_per_endpoint
            .unwrap_or(DEFAULT_CONCURRENCY_PER_ENDPOINT)
            .max(1);
        // Builds requests only (reqwest has no TLS here, so this is cheap);
        // `backend::net` sends them.
        let http = reqwest::Client::new();
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            let mut config = OpenAIConfig::new()
                .with_api_base(url.trim_end_matches('/'))
                .with_api_key(key.clone().unwrap_or_default());
            for (k, v) in &s.headers {
                let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| config_err(format!("header {k}: {e}")))?;
                let value = super::header_value(k, v).map_err(config_err)?;
                config = config
                    .with_header(name, value.as_str())
                    .map_err(|e| config_err(format!("header {k}: {e}")))?;
            }
            // `build` with our client: `with_config` would make a client of
            // its own that is never used.
            let client = async_openai::Client::build(http.clone(), config)
                .with_http_service(transport(timeout, max_bytes));
            endpoints.push(Endpoint {
                url,
                client,
                permits: tokio::sync::Semaphore::new(per_endpoint),
                down_until: Mutex::new(None),
            });
        }
        Ok(OpenAiModel {
            id,
            model: model.to_string(),
            endpoints,
            next: AtomicUsize::new(0),
            unhealthy_for,
            native_n: s.native_n.unwrap_or(true),
            strict_schema: s.strict_schema.unwrap_or(false),
            secret: key.map(Secret),
        })
    }

    /// Endpoint indices to try: healthy ones round-robin, then the rest.
    fn order(&self) -> Vec<usize> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotated = (0..n).map(|i| (start + i) % n);
        let (healthy, down): (Vec<usize>, Vec<usize>) =
            rotated.partition(|&i| self.endpoints[i].healthy());
        healthy.into_iter().chain(down).collect()
    }

    fn redact(&self, text: String) -> String {
        match &self.secret {
            Some(Secret(k)) if k.len() >= 4 => text.replace(k.as_str(), "[redacted]"),
            _ => text,
        }
    }

    /// Classifies an error and says whether another endpoint may do better.
    fn error(&self, e: OpenAIError) -> (BackendError, bool) {
        let c = classify(&e);
        let mut err = BackendError::new(&self.id, c.kind, self.redact(c.message))
            .with_retry_after(c.retry_after);
        err.source = None;
        (err, c.failover)
    }

    async fn send<Req, Resp>(&self, path: Path, body: &Req) -> Result<Resp, BackendError>
    where
        Req: serde::Serialize + Sync,
        Resp: serde::de::DeserializeOwned,
    {
        let mut last = None;
        for i in self.order() {
            let ep = &self.endpoints[i];
            let _permit = ep.permits.acquire().await.map_err(|_| {
                BackendError::new(&self.id, ErrorKind::Permanent, "endpoint closed")
            })?;
            let result = match path {
                Path::Chat => ep.client.chat().create_byot(body).await,
                Path::Embeddings => ep.client.embeddings().create_byot(body).await,
            };
            match result {
                Ok(r) => {
                    ep.set_down(None);
                    return Ok(r);
                }
                Err(e) => {
                    let (err, failover) = self.error(e);
                    if !failover {
                        return Err(err);
                    }
                    tracing::warn!(endpoint = %crate::redact::url(&ep.url), error = %err, "endpoint failed; marking it unhealthy");
                    ep.set_down(Some(self.unhealthy_for));
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            BackendError::new(&self.id, ErrorKind::Config, "no endpoint configured")
        }))
    }
}

#[derive(Clone, Copy)]
enum Path {
    Chat,
    Embeddings,
}

/// The HTTP transport under async-openai: no retries (the `Retry` layer owns
/// them), bodies read with a size cap, non-2xx replies turned into
/// [`HttpFailure`] with their `Retry-After`.
fn transport(
    timeout: Duration,
    max_bytes: usize,
) -> impl tower::Service<
    HttpRequestFactory,
    Response = reqwest::Response,
    Error = OpenAIError,
    Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |factory: HttpRequestFactory| {
        let fut: BoxFuture<'static, Result<reqwest::Response, OpenAIError>> = Box::pin(
            async move {
                let request = factory.build().await?;
                let reply =
                    net::execute(request, timeout, max_bytes)
                        .await
                        .map_err(|e| match e {
                            HttpError::TooLarge { status, limit } => {
                                OpenAIError::Boxed(Box::new(BadReply::TooLarge(format!(
                                    "the server answered HTTP {status} with a reply larger than \
                                 redraft's {limit}-byte limit (setting `max_response_bytes`)"
                                ))))
                            }
                            other => OpenAIError::Boxed(Box::new(other)),
                        })?;
                let status = reply.status;
                let content_type = reply
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if !status.is_success() {
                    return Err(boxed(HttpFailure {
                        status: status.as_u16(),
                        retry_after: retry_after(&reply.headers),
                        body: String::from_utf8_lossy(&reply.body).into_owned(),
                    }));
                }
                if !content_type.is_empty() && !content_type.contains("json") {
                    return Err(OpenAIError::Boxed(Box::new(BadReply::NotJson(format!(
                        "expected a JSON reply, got HTTP {status} with content type {content_type:?}: {}",
                        excerpt(&String::from_utf8_lossy(&reply.body), 200)
                    )))));
                }
                let rebuilt = ::http::Response::builder()
                    .status(status)
                    .header(::http::header::CONTENT_TYPE, "application/json")
                    .body(reply.body)
                    .map_err(|e| OpenAIError::InvalidArgument(e.to_string()))?;
                Ok(reqwest::Response::from(rebuilt))
            },
        );
        fut
    })
}

fn boxed(f: HttpFailure) -> OpenAIError {
    OpenAIError::Boxed(Box::new(f))
}

/// The outcome of classifying one error.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub kind: ErrorKind,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// The endpoint itself looks broken: try another one, avoid this one.
    pub failover: bool,
}

fn is_context_length(body: &str) -> bool {
    let b = body.to_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "context length",
        "exceeds the available context",
        "too many tokens",
        "context size",
    ]
    .iter()
    .any(|p| b.contains(p))
}

/// Decides, once, what an error means for the caller: retry (transient),
/// give up (permanent), shrink the prompt (context length) or fix the setup.
pub fn classify(e: &OpenAIError) -> Classified {
    let c = |kind, message: String, retry_after, failover| Classified {
        kind,
        message,
        retry_after,
        failover,
    };
    match e {
        OpenAIError::Boxed(inner) => {
            if let Some(f) = inner.downcast_ref::<HttpFailure>() {
                return classify_status(f.status, &f.body, f.retry_after);
            }
            if let Some(h) = inner.downcast_ref::<HttpError>() {
                return match h {
                    // The request may not have reached (or been answered by)
                    // this endpoint: retry, elsewhere if there is another.
                    HttpError::Timeout | HttpError::Connect(_) | HttpError::Transport(_) => {
                        c(ErrorKind::Transient, h.to_string(), None, true)
                    }
                    HttpError::TooLarge { .. } => {
                        c(ErrorKind::Permanent, h.to_string(), None, false)
                    }
                    HttpError::Tls(_) | HttpError::Request(_) => {
                        c(ErrorKind::Config, h.to_string(), None, false)
                    }
                };
            }
            match inner.downcast_ref::<BadReply>() {
                // Our own limit: the same request gets the same reply.
                Some(BadReply::TooLarge(m)) => c(ErrorKind::Permanent, m.clone(), None, false),
                // A proxy's or an overloaded server's page: try again, elsewhere.
                Some(BadReply::NotJson(m)) => c(ErrorKind::Transient, m.clone(), None, true),
                None => c(ErrorKind::Permanent, inner.to_string(), None, false),
            }
        }
        OpenAIError::ApiError(api) => {
            classify_status(api.status_code.as_u16(), &api.api_error.to_string(), None)
        }
        OpenAIError::Reqwest(r) => {
            if r.is_builder() {
                c(
                    ErrorKind::Config,
                    format!("invalid request: {r}"),
                    None,
                    false,
                )
            } else if r.is_timeout() {
                c(
                    ErrorKind::Transient,
                    "the server did not reply in time".into(),
                    None,
                    true,
                )
            } else if r.is_connect() {
                c(
                    ErrorKind::Transient,
                    format!("cannot connect: {}", net::root_cause(r)),
                    None,
                    true,
                )
            } else {
                // Connection reset, truncated body, protocol errors.
                c(
                    ErrorKind::Transient,
                    format!("transport error: {}", net::root_cause(r)),
                    None,
                    true,
                )
            }
        }
        OpenAIError::JSONDeserialize(err, content) => c(
            ErrorKind::Transient,
            format!("malformed reply ({err}): {}", excerpt(content, 200)),
            None,
            false,
        ),
        OpenAIError::InvalidArgument(m) => c(ErrorKind::Config, m.clone(), None, false),
        other => c(ErrorKind::Permanent, other.to_string(), None, false),
    }
}

fn classify_status(status: u16, body: &str, retry_after: Option<Duration>) -> Classified {
    let msg = |what: &str| format!("{what} (HTTP {status}): {}", excerpt(body, 300));
    let (kind, message, failover) = match status {
        429 if body.contains("insufficient_quota") || body.contains("billing") => {
            (ErrorKind::Permanent, msg("quota exhausted"), false)
        }
        429 => (ErrorKind::Transient, msg("rate limited"), false),
        400 | 413 if is_context_length(body) => (
            ErrorKind::ContextLength,
            msg("context length exceeded"),
            false,
        ),
        401 => (
            ErrorKind::Permanent,
            format!("authentication failed (HTTP 401): {}", excerpt(body, 200)),
            false,
        ),
        403 => (ErrorKind::Permanent, msg("forbidden"), false),
        404 => (
            ErrorKind::Permanent,
            msg("model or endpoint not found"),
            false,
        ),
        408 => (ErrorKind::Transient, msg("request timeout"), true),
        413 => (ErrorKind::Permanent, msg("request too large"), false),
        500..=599 => (ErrorKind::Transient, msg("server error"), true),
        _ => (ErrorKind::Permanent, msg("request rejected"), false),
    };
    Classified {
        kind,
        message,
        retry_after: if kind == ErrorKind::Transient {
            retry_after
        } else {
            None
        },
        failover,
    }
}

mod wire {
    //! The OpenAI chat and embeddings JSON, leniently: servers differ.
    use serde::{Deserialize, Serialize};

    #[derive(Serialize)]
    pub struct ChatRequest<'a> {
        pub model: &'a str,
        pub messages: Vec<Message<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub temperature: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub top_p: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub seed: Option<u64>,
        pub max_tokens: u32,
        #[serde(skip_serializing_if = "is_one")]
        pub n: u32,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        pub stop: &'a [String],
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        pub logprobs: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub top_logprobs: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub response_format: Option<ResponseFormat<'a>>,
        pub stream: bool,
    }

    fn is_one(n: &u32) -> bool {
        *n == 1
    }

    #[derive(Serialize)]
    pub struct Message<'a> {
        pub role: &'static str,
        pub content: &'a str,
    }

    #[derive(Serialize)]
    pub struct ResponseFormat<'a> {
        #[serde(rename = "type")]
        pub kind: &'static str,
        pub json_schema: JsonSchema<'a>,
    }

    #[derive(Serialize)]
    pub struct JsonSchema<'a> {
        pub name: &'a str,
        pub schema: &'a serde_json::Value,
        pub strict: bool,
    }

    #[derive(Deserialize)]
    pub struct ChatResponse {
        #[serde(default)]
        pub choices: Vec<Choice>,
        pub usage: Option<Usage>,
    }

    #[derive(Deserialize)]
    pub struct Choice {
        #[serde(default)]
        pub index: usize,
        pub message: Option<AssistantMessage>,
        pub finish_reason: Option<String>,
        pub logprobs: Option<Logprobs>,
    }

    #[derive(Deserialize)]
    pub struct AssistantMessage {
        pub content: Option<String>,
    }

    #[derive(Deserialize)]
    pub struct Logprobs {
        pub content: Option<Vec<TokenLogprob>>,
    }

    #[derive(Deserialize)]
    pub struct TokenLogprob {
        pub token: String,
        pub logprob: f32,
        #[serde(default)]
        pub top_logprobs: Vec<TopLogprob>,
    }

    #[derive(Deserialize)]
    pub struct TopLogprob {
        pub token: String,
        pub logprob: f32,
    }

    #[derive(Deserialize)]
    pub struct Usage {
        pub prompt_tokens: Option<u64>,
        pub completion_tokens: Option<u64>,
        /// Prompt tokens the server served from its prompt cache (OpenAI,
        /// llama-server).
        pub prompt_tokens_details: Option<PromptTokensDetails>,
    }

    #[derive(Deserialize)]
    pub struct PromptTokensDetails {
        pub cached_tokens: Option<u64>,
    }

    #[derive(Serialize)]
    pub struct EmbeddingRequest<'a> {
        pub model: &'a str,
        pub input: &'a [String],
    }

    #[derive(Deserialize)]
    pub struct EmbeddingResponse {
        pub data: Vec<EmbeddingItem>,
        pub usage: Option<Usage>,
    }

    #[derive(Deserialize)]
    pub struct EmbeddingItem {
        #[serde(default)]
        pub index: usize,
        pub embedding: Vec<f32>,
    }
}

impl LanguageModel for OpenAiModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            let role = |r: Role| match r {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let body = wire::ChatRequest {
                model: &self.model,
                messages: req
                    .messages
                    .iter()
                    .map(|m| wire::Message {
                        role: role(m.role),
                        content: &m.content,
                    })
                    .collect(),
                temperature: req.sampling.temperature,
                top_p: req.sampling.top_p,
                seed: req.sampling.seed,
                max_tokens: req.sampling.max_tokens,
                n: req.n.max(1),
                stop: &req.sampling.stop,
                logprobs: req.logprobs.is_some(),
                top_logprobs: req.logprobs,
                response_format: match &req.response_format {
                    ResponseFormat::Text => None,
                    ResponseFormat::JsonSchema { name, schema } => Some(wire::ResponseFormat {
                        kind: "json_schema",
                        json_schema: wire::JsonSchema {
                            name,
                            schema,
                            strict: self.strict_schema,
                        },
                    }),
                },
                stream: false,
            };
            let mut resp: wire::ChatResponse = self.send(Path::Chat, &body).await?;
            resp.choices.sort_by_key(|c| c.index);
            let choices: Vec<Choice> = resp
                .choices
                .into_iter()
                .map(|c| Choice {
                    text: c.message.and_then(|m| m.content).unwrap_or_default(),
                    finish: match c.finish_reason.as_deref() {
                        Some("length") => FinishReason::Length,
                        _ => FinishReason::Stop,
                    },
                    logprobs: c.logprobs.and_then(|l| l.content).map(|tokens| {
                        tokens
                            .into_iter()
                            .map(|t| TokenLogprob {
                                token: t.token,
                                logprob: t.logprob,
                                top: t
                                    .top_logprobs
                                    .into_iter()
                                    .map(|x| (x.token, x.logprob))
                                    .collect(),
                            })
                            .collect()
                    }),
                })
                .collect();
            if choices.is_empty() {
                return Err(BackendError::new(
                    &self.id,
                    ErrorKind::Transient,
                    "the reply holds no choices",
                ));
            }
            let reported = resp.usage.as_ref().and_then(|u| {
                let cached = u
                    .prompt_tokens_details
                    .as_ref()
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0);
                Some((u.prompt_tokens?, u.completion_tokens?, cached))
            });
            let (usage, usage_estimated) = match reported {
                Some((p, c, cached)) => (
                    Usage {
                        prompt_tokens: p,
                        completion_tokens: c,
                        cached_tokens: cached.min(p),
                    },
                    false,
                ),
                None => {
                    // No usage block: estimate from text (one token ≈ 4 bytes).
                    let completion = choices.iter().map(|c| c.text.len() as u64 / 4 + 1).sum();
                    (
                        Usage {
                            prompt_tokens: self.estimate_prompt_tokens(req),
                            completion_tokens: completion,
                            ..Default::default()
                        },
                        true,
                    )
                }
            };
            Ok(Completion {
                choices,
                usage,
                usage_estimated,
            })
        })
    }

    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        Box::pin(async move {
            let body = wire::EmbeddingRequest {
                model: &self.model,
                input: &req.texts,
            };
            let mut resp: wire::EmbeddingResponse = self.send(Path::Embeddings, &body).await?;
            if resp.data.len() != req.texts.len() {
                return Err(BackendError::new(
                    &self.id,
                    ErrorKind::Transient,
                    format!(
                        "asked for {} embeddings, got {}",
                        req.texts.len(),
                        resp.data.len()
                    ),
                ));
            }
            resp.data.sort_by_key(|d| d.index);
            let prompt_tokens = resp
                .usage
                .and_then(|u| u.prompt_tokens)
                .unwrap_or_else(|| req.texts.iter().map(|t| t.len() as u64 / 4 + 1).sum());
            Ok(Embeddings {
                vectors: resp.data.into_iter().map(|d| d.embedding).collect(),
                usage: Usage {
                    prompt_tokens,
                    completion_tokens: 0,
                    ..Default::default()
                },
            })
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            logprobs: true,
            structured_output: true,
            embeddings: true,
            native_n: self.native_n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, body: &str) -> Classified {
        classify_status(code, body, Some(Duration::from_secs(2)))
    }

    #[test]
    fn rate_limits_are_transient_and_keep_retry_after() {
        let c = status(
            429,
            r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#,
        );
        assert_eq!(
            (c.kind, c.retry_after, c.failover),
            (ErrorKind::Transient, Some(Duration::from_secs(2)), false)
        );
    }

    #[test]
    fn insufficient_quota_is_permanent_even_as_429() {
        let c = status(429, r#"{"error":{"code":"insufficient_quota"}}"#);
        assert_eq!((c.kind, c.retry_after), (ErrorKind::Permanent, None));
    }

    #[test]
    fn server_errors_are_transient_and_fail_over() {
        for code in [500, 502, 503, 504] {
            let c = status(code, "upstream down");
            assert_eq!((c.kind, c.failover), (ErrorKind::Transient, true), "{code}");
        }
    }

    #[test]
    fn client_errors_are_permanent() {
        for code in [400, 401, 403, 404, 422] {
            assert_eq!(status(code, "{}").kind, ErrorKind::Permanent, "{code}");
        }
    }

    #[test]
    fn context_length_is_its_own_kind() {
        let openai = r#"{"error":{"code":"context_length_exceeded","message":"This model's maximum context length is 4096 tokens"}}"#;
        assert_eq!(status(400, openai).kind, ErrorKind::ContextLength);
        let llama = r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#;
        assert_eq!(status(400, llama).kind, ErrorKind::ContextLength);
    }

    #[test]
    fn malformed_json_is_transient_without_failover() {
        let err = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let c = classify(&OpenAIError::JSONDeserialize(err, "{".into()));
        assert_eq!((c.kind, c.failover), (ErrorKind::Transient, false));
    }

    #[test]
    fn retry_after_accepts_seconds_only() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "1.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(300)));
    }

    #[test]
    fn settings_are_checked() {
        let bad = serde_json::json!({ "base_url": "http://x" });
        let e = OpenAiModel::new("m", Some("http://127.0.0.1:1/v1"), &bad).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(
            e.message.contains("unknown field `base_url`"),
            "{}",
            e.message
        );
        let e = OpenAiModel::new("m", Some("ftp://x"), &serde_json::Value::Null).unwrap_err();
        assert!(e.message.contains("http://"), "{}", e.message);
    }
}
