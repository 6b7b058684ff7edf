//! Metering and in-flight accounting of model calls: the engine's layer
//! under [`crate::layer::Retry`] reserves the worst case in the budget
//! before each attempt, settles what it used after, and emits the
//! model-call event, also for calls a cancelled run dropped mid-way.
//!
//! **Invariant:** it needs only a [`CallScope`] (the run's shared state,
//! the calling node and round, the budget scopes), never a whole task.

use std::sync::atomic::{AtomicBool, Ordering};
// tokio's clock: run and call times follow paused time in tests.
use tokio::time::Instant;

use futures_util::future::BoxFuture;
use tracing::Instrument as _;

use super::{NodeError, Shared};
use crate::backend::{
    BackendError, CallContext, Completion, CompletionRequest, EmbeddingRequest, Embeddings,
    ErrorKind, LanguageModel, Usage,
};
use crate::budget::{Exhausted, Spend};
use crate::event::{CallOutcome, Event, ModelCallEvent};

/// Who makes a call: what metering charges and reports it to.
#[derive(Clone, Copy)]
pub(super) struct CallScope<'a> {
    pub shared: &'a Shared,
    pub node: usize,
    pub round: u32,
    /// Budget scopes the call is charged to.
    pub scopes: &'a [usize],
}

impl CallScope<'_> {
    fn id(&self) -> &str {
        &self.shared.wf.nodes[self.node].id
    }
}

/// Records a finished attempt's usage, or its error kind, on its span.
fn record_result<T>(
    span: &tracing::Span,
    result: &Result<T, BackendError>,
    usage: impl Fn(&T) -> Usage,
) {
    match result {
        Ok(v) => {
            let u = usage(v);
            span.record("gen_ai.usage.input_tokens", u.prompt_tokens);
            span.record("gen_ai.usage.output_tokens", u.completion_tokens);
        }
        Err(e) => {
            span.record("error.type", e.kind.as_str());
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The engine's layer: the budget check before each attempt, metering and
/// the model-call event after it. Sits under [`Retry`], so a retry is a new
/// attempt that must fit the budget again.
pub(super) struct Metered<'a> {
    pub scope: CallScope<'a>,
    /// Index of the model in the workflow.
    pub model: usize,
    pub inner: &'a dyn LanguageModel,
    /// Set by the cache layer below when it served the attempt: nothing
    /// was spent but the call itself.
    pub hit: &'a AtomicBool,
}

impl LanguageModel for Metered<'_> {
    crate::backend::forward_to_inner!(id, capabilities, estimate);

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(self.metered(req))
    }

    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        Box::pin(self.metered_embed(req))
    }
}

impl Metered<'_> {
    fn budget_error(&self, ex: Exhausted) -> BackendError {
        BackendError {
            source: Some(Box::new(ex.clone())),
            ..BackendError::new(self.inner.id(), ErrorKind::Budget, ex.to_string())
        }
    }

    async fn metered(&self, req: &CompletionRequest) -> Result<Completion, BackendError> {
        let prompt_est = self.inner.estimate_prompt_tokens(req);
        let completion_max = req.n as u64 * req.sampling.max_tokens as u64;
        let fut = async {
            let c = self.inner.complete(req).await?;
            if c.choices.is_empty() {
                return Err(BackendError::new(
                    self.inner.id(),
                    ErrorKind::Permanent,
                    "the backend returned no choices",
                ));
            }
            Ok(c)
        };
        let content = self.scope.shared.log_content.then(|| Content {
            prompt: serde_json::to_value(&req.messages).unwrap_or_default(),
            reply: |c: &Completion| c.choices.iter().map(|ch| ch.text.clone()).collect(),
        });
        let shape = Shape {
            context: &req.context,
            n: req.n,
            prompt_est,
            completion_max,
        };
        let span = self.span("chat", &req.context, req.sampling.max_tokens);
        if let (Some(t), false) = (req.sampling.temperature, span.is_disabled()) {
            span.record("gen_ai.request.temperature", t as f64);
        }
        let result = self
            .account(shape, fut, content, |c| (c.usage, c.usage_estimated))
            .instrument(span.clone())
            .await;
        if let (Ok(c), false) = (&result, span.is_disabled()) {
            let finish: Vec<&str> = c.choices.iter().map(|ch| ch.finish.as_str()).collect();
            span.record("gen_ai.response.finish_reasons", finish.join(",").as_str());
        }
        record_result(&span, &result, |c| c.usage);
        result
    }

    /// The span of one attempt, named and attributed after OpenTelemetry's
    /// GenAI semantic conventions (`chat MODEL`, `gen_ai.*`); usage and
    /// errors are recorded when it ends.
    fn span(&self, operation: &str, context: &CallContext, max_tokens: u32) -> tracing::Span {
        let id = self.inner.id();
        let (provider, model) = id.split_once(':').unwrap_or(("redraft", id));
        tracing::info_span!(
            "redraft.model_call",
            otel.name = %format_args!("{operation} {model}"),
            otel.kind = "client",
            gen_ai.operation.name = operation,
            gen_ai.provider.name = provider,
            gen_ai.request.model = model,
            gen_ai.request.max_tokens = max_tokens,
            gen_ai.request.temperature = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            redraft.model = %self.scope.shared.wf.models[self.model].name,
            redraft.node = %context.node,
            redraft.round = context.round,
            redraft.attempt = context.attempt,
        )
    }

    /// Embeddings cost their input tokens; the worst case is one token per byte.
    async fn metered_embed(&self, req: &EmbeddingRequest) -> Result<Embeddings, BackendError> {
        let worst: u64 = req.texts.iter().map(|t| t.len() as u64 + 1).sum();
        let fut = self.inner.embed(req);
        let content = self.scope.shared.log_content.then(|| Content {
            prompt: serde_json::json!(req.texts),
            reply: |_: &Embeddings| Vec::new(),
        });
        let shape = Shape {
            context: &req.context,
            n: req.texts.len() as u32,
            prompt_est: worst,
            completion_max: 0,
        };
        let span = self.span("embeddings", &req.context, 0);
        let result = self
            .account(shape, fut, content, |e| (e.usage, false))
            .instrument(span.clone())
            .await;
        record_result(&span, &result, |e| e.usage);
        result
    }

    /// Reserves the worst case in every budget scope, runs the call within
    /// the time left, settles what it used and reports a model-call event.
    ///
    /// Once the request may have left the process (the inner future was
    /// polled), it is a call whatever happens next: answered, failed, cut by
    /// a wall-time limit, or dropped because the run was cancelled. Then it
    /// is counted against `calls`, its prompt tokens are estimated where the
    /// server never answered, and a `model_call` event says how it ended.
    async fn account<T>(
        &self,
        Shape {
            context,
            n,
            prompt_est,
            completion_max,
        }: Shape<'_>,
        fut: impl std::future::Future<Output = Result<T, BackendError>>,
        content: Option<Content<impl Fn(&T) -> Vec<String>>>,
        usage_of: impl Fn(&T) -> (Usage, bool),
    ) -> Result<T, BackendError> {
        let scope = self.scope;
        let sh = scope.shared;
        // Back-pressure from an event stream's consumer: wait before making
        // more work to report (never inside the scheduler).
        if let Some(stream) = &sh.stream {
            stream.room().await;
        }
        let decl = &sh.wf.models[self.model];
        let worst = Spend {
            tokens: prompt_est + completion_max,
            calls: 1,
            cost_usd: decl.price.cost(prompt_est, completion_max),
        };
        let _permit =
            sh.permits.acquire().await.map_err(|_| {
                BackendError::new(self.inner.id(), ErrorKind::Permanent, "cancelled")
            })?;
        let reservation = sh
            .meter
            .reserve(scope.scopes, worst)
            .map_err(|e| self.budget_error(e))?;
        let mut call = InFlight {
            scope,
            model: self.model,
            reservation: Some(reservation),
            sent: AtomicBool::new(false),
            prompt_est,
            started: Instant::now(),
            event: Some(ModelCallEvent {
                node: scope.id().to_string(),
                round: scope.round,
                model: decl.name.clone(),
                model_id: self.inner.id().to_string(),
                attempt: context.attempt,
                retry: context.retry,
                n,
                prompt_tokens: 0,
                completion_tokens: 0,
                reused_tokens: 0,
                cached: false,
                cached_tokens: 0,
                usage_estimated: false,
                latency_ms: 0.0,
                cost_usd: 0.0,
                outcome: CallOutcome::Ok,
                error: None,
                prompt: None,
                reply: None,
            }),
        };
        let (prompt, reply_of) = match content {
            Some(c) => (Some(c.prompt), Some(c.reply)),
            None => (None, None),
        };
        if let Some(event) = call.event.as_mut() {
            event.prompt = prompt;
        }
        let mut fut = std::pin::pin!(fut);
        let sent = &call.sent;
        let tracked = std::future::poll_fn(|cx| {
            sent.store(true, Ordering::Relaxed);
            fut.as_mut().poll(cx)
        });
        let result = match sh.meter.time_left(scope.scopes) {
            Some((left, scope)) => match tokio::time::timeout(left, tracked).await {
                Ok(r) => r,
                Err(_) => {
                    let ex = sh.meter.out_of_time(scope);
                    call.finish_unanswered(CallOutcome::Cut, Some(ex.to_string()));
                    return Err(self.budget_error(ex));
                }
            },
            None => tracked.await,
        };
        match result {
            Ok(value) => {
                let (usage, estimated) = usage_of(&value);
                if let (Some(event), Some(reply_of)) = (call.event.as_mut(), &reply_of) {
                    event.reply = Some(reply_of(&value));
                }
                if self.hit.swap(false, Ordering::Relaxed) {
                    call.finish_cached(usage);
                } else {
                    call.finish(CallOutcome::Ok, usage, estimated, None);
                }
                Ok(value)
            }
            Err(e) => {
                // The call was made: it counts, with what the backend says
                // it used before failing (a local model midway), else nothing.
                call.finish(
                    CallOutcome::Error,
                    e.usage.unwrap_or_default(),
                    false,
                    Some(e.to_string()),
                );
                Err(e)
            }
        }
    }
}

/// What a call asks for, for its budget reservation and its event: `n`
/// replies (or texts embedded), the prompt's estimated tokens and the most
/// tokens it may generate.
struct Shape<'a> {
    context: &'a CallContext,
    n: u32,
    prompt_est: u64,
    completion_max: u64,
}

/// What `log_content` adds to a call's event: the request as sent, and how
/// to read the reply texts from its result.
struct Content<R> {
    prompt: serde_json::Value,
    reply: R,
}

/// A call between its budget reservation and its settlement. Dropped
/// unfinished (the run was cancelled), it settles itself: as a call if the
/// request may have been sent, as nothing otherwise.
struct InFlight<'a> {
    scope: CallScope<'a>,
    model: usize,
    reservation: Option<crate::budget::Reservation>,
    /// The backend's future was polled: the request may have left.
    sent: AtomicBool,
    prompt_est: u64,
    started: Instant,
    /// Filled in and emitted by `finish` (once).
    event: Option<ModelCallEvent>,
}

impl InFlight<'_> {
    /// Settles the reservation with `usage` and emits the model-call event.
    fn finish(
        &mut self,
        outcome: CallOutcome,
        usage: Usage,
        estimated: bool,
        error: Option<String>,
    ) {
        let (Some(reservation), Some(mut event)) = (self.reservation.take(), self.event.take())
        else {
            return;
        };
        let sh = self.scope.shared;
        let price = &sh.wf.models[self.model].price;
        let cost = price.cost(usage.prompt_tokens, usage.completion_tokens);
        let warnings = sh.meter.settle(
            reservation,
            Spend {
                tokens: usage.total(),
                calls: 1,
                cost_usd: cost,
            },
        );
        event.prompt_tokens = usage.prompt_tokens;
        event.completion_tokens = usage.completion_tokens;
        event.reused_tokens = usage.cached_tokens;
        event.usage_estimated = estimated;
        event.cost_usd = cost;
        event.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        event.outcome = outcome;
        event.error = error;
        sh.emit(Event::ModelCall(event));
        for w in warnings {
            sh.emit(Event::BudgetWarning(w));
        }
    }

    /// A call the response cache served: it counts as a call, spends no
    /// tokens and costs nothing; the event says what the reply had cost.
    fn finish_cached(&mut self, original: Usage) {
        let (Some(reservation), Some(mut event)) = (self.reservation.take(), self.event.take())
        else {
            return;
        };
        let sh = self.scope.shared;
        let warnings = sh.meter.settle(
            reservation,
            Spend {
                tokens: 0,
                calls: 1,
                cost_usd: 0.0,
            },
        );
        event.cached = true;
        event.cached_tokens = original.total();
        event.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        sh.emit(Event::ModelCall(event));
        for w in warnings {
            sh.emit(Event::BudgetWarning(w));
        }
    }

    /// A request the server may have received but never answered: its
    /// prompt is charged at the estimate; what it generated is unknown.
    fn finish_unanswered(&mut self, outcome: CallOutcome, error: Option<String>) {
        if !self.sent.load(Ordering::Relaxed) {
            if let Some(r) = self.reservation.take() {
                self.scope.shared.meter.release(r);
            }
            return;
        }
        let usage = Usage {
            prompt_tokens: self.prompt_est,
            ..Usage::default()
        };
        self.finish(outcome, usage, true, error);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.reservation.is_some() {
            self.finish_unanswered(CallOutcome::Cancelled, Some("cancelled".into()));
        }
    }
}

/// A failed call as a node error; budget refusals keep their details.
pub(super) fn node_error(e: BackendError) -> NodeError {
    if e.kind != ErrorKind::Budget {
        return NodeError::Backend(e);
    }
    match e.source.and_then(|s| s.downcast::<Exhausted>().ok()) {
        Some(ex) => NodeError::Budget(*ex),
        None => NodeError::Backend(BackendError::new(
            &e.backend,
            ErrorKind::Permanent,
            e.message,
        )),
    }
}
