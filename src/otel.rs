//! OpenTelemetry export of redraft's spans (feature `otel`).
//!
//! The engine always opens `tracing` spans for a run (`redraft.run`), each
//! node execution (`redraft.node`) and each model call attempt (named
//! `chat MODEL` / `embeddings MODEL`, with the GenAI semantic conventions'
//! attributes: `gen_ai.operation.name`, `gen_ai.provider.name`,
//! `gen_ai.request.model`, `gen_ai.request.max_tokens`,
//! `gen_ai.request.temperature`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `gen_ai.response.finish_reasons`,
//! `error.type`). They cost nothing without a subscriber. This module turns
//! them into OTLP/HTTP exports, so traces open in Jaeger, Grafana Tempo,
//! Langfuse or Phoenix.
//!
//! Configuration is OpenTelemetry's standard environment:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://127.0.0.1:4318`; traces go to
//! `/v1/traces`) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or
//! `http/json`), `OTEL_EXPORTER_OTLP_HEADERS` (e.g. an authorization
//! header), `OTEL_SERVICE_NAME` (default `redraft`).
//!
//! **Invariants:** exports go through [`crate::backend::net`] (the
//! process's one HTTP client, TLS set up on the first `https://` export),
//! on the tokio runtime; a collector that is down costs dropped spans, never
//! a failed or slower run (batches are sent off the run's path).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;

/// The longest an export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest collector reply read.
const REPLY_LIMIT: usize = 1 << 20;

/// Why export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0:?}: redraft exports `http/protobuf` or `http/json`")]
    Protocol(String),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Keeps the exporter alive; [`shutdown`](OtelGuard::shutdown) (or drop)
/// flushes what is buffered.
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl OtelGuard {
    /// Sends every buffered span and stops the exporter. Blocks until the
    /// collector answered or the export timed out: call it from outside
    /// async code (or in `spawn_blocking`) while the runtime still runs.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("OpenTelemetry export: {e}");
        }
    }
}

/// A `tracing` layer exporting spans over OTLP/HTTP, and its guard, when the
/// environment names a collector (`None` otherwise). Call it inside the
/// tokio runtime the runs use; add the layer to your subscriber.
pub fn layer_from_env<S>()
-> Option<Result<(impl tracing_subscriber::Layer<S>, OtelGuard), OtelError>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let named = |v: &str| std::env::var_os(v).is_some_and(|v| !v.is_empty());
    if !named("OTEL_EXPORTER_OTLP_ENDPOINT") && !named("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    Some(layer())
}

/// Like [`layer_from_env`], whatever the environment says about the
/// endpoint (the exporter's default is `http://localhost:4318/v1/traces`).
pub fn layer<S>() -> Result<(impl tracing_subscriber::Layer<S>, OtelGuard), OtelError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    let protocol = match protocol.trim() {
        "" | "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        other => return Err(OtelError::Protocol(other.to_string())),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(NetClient)
        .with_protocol(protocol)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "redraft".into());
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("redraft");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target().starts_with("redraft")
        }));
    Ok((layer, OtelGuard { provider }))
}

use tracing_subscriber::Layer as _;

/// The exporter's HTTP client: redraft's own.
#[derive(Debug)]
struct NetClient;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for NetClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request.map(reqwest::Body::from))?;
        let reply = crate::backend::net::execute(request, EXPORT_TIMEOUT, REPLY_LIMIT).await?;
        let mut response = http::Response::builder().status(reply.status);
        if let Some(headers) = response.headers_mut() {
            *headers = reply.headers;
        }
        Ok(response.body(bytes::Bytes::from(reply.body))?)
    }
}
