//! Running one node: render its prompts, call its model under the budget,
//! check structured output, and build its output value.
//!
//! **Invariant:** every model call goes through [`Task::call`], which
//! reserves the worst case in the budget before the call and settles the
//! actual usage after it. No other code talks to a backend.

use crate::workflow::VoteFrom;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
// tokio's clock: run and call times follow paused time in tests.
use tokio::time::Instant;

use minijinja::Value;
use serde_json::json;

use super::state::{NodeOutput, NodeScope, ScopeData, Typed, Verdict};
use super::{NodeError, Shared};
use crate::backend::{
    BackendError, CallContext, Completion, CompletionRequest, EmbeddingRequest, Embeddings,
    ErrorKind, FinishReason, LanguageModel, Message, ResponseFormat, SamplingParams, Usage,
};
use crate::budget::{Exhausted, Spend};
use crate::event::{CallOutcome, Event, ModelCallEvent};

/// How far apart the seeds of two seed offsets (eval epochs) are, so that
/// the `n` consecutive seeds of one call's samples never overlap another
/// epoch's.
pub(crate) const SEED_STRIDE: u64 = 1_000_003;
use crate::layer::{Retry, Timeout};
use crate::workflow::{
    Check, Continue, ModelCall, NodeKind, Order, Schema, SelectSpec, VerifySpec, VoteSpec,
};
use futures_util::future::BoxFuture;
use tracing::Instrument as _;

/// One node execution, owned by its future.
pub(crate) struct Task {
    pub shared: Arc<Shared>,
    pub node: usize,
    pub round: u32,
    pub data: Arc<ScopeData>,
    pub loop_info: Option<Value>,
    /// Budget scopes this node's calls are charged to.
    pub scopes: Vec<usize>,
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
struct Metered<'a> {
    task: &'a Task,
    model: usize,
    inner: &'a dyn LanguageModel,
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
        let content = self.task.shared.log_content.then(|| Content {
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
            redraft.model = %self.task.shared.wf.models[self.model].name,
            redraft.node = %context.node,
            redraft.round = context.round,
            redraft.attempt = context.attempt,
        )
    }

    /// Embeddings cost their input tokens; the worst case is one token per byte.
    async fn metered_embed(&self, req: &EmbeddingRequest) -> Result<Embeddings, BackendError> {
        let worst: u64 = req.texts.iter().map(|t| t.len() as u64 + 1).sum();
        let fut = self.inner.embed(req);
        let content = self.task.shared.log_content.then(|| Content {
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
        let task = self.task;
        let sh = &task.shared;
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
            .reserve(&task.scopes, worst)
            .map_err(|e| self.budget_error(e))?;
        let mut call = InFlight {
            task,
            model: self.model,
            reservation: Some(reservation),
            sent: AtomicBool::new(false),
            prompt_est,
            started: Instant::now(),
            event: Some(ModelCallEvent {
                node: task.id().to_string(),
                round: task.round,
                model: decl.name.clone(),
                model_id: self.inner.id().to_string(),
                attempt: context.attempt,
                retry: context.retry,
                n,
                prompt_tokens: 0,
                completion_tokens: 0,
                reused_tokens: 0,
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
        let result = match sh.meter.time_left(&task.scopes) {
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
                call.finish(CallOutcome::Ok, usage, estimated, None);
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
    task: &'a Task,
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
        let sh = &self.task.shared;
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

    /// A request the server may have received but never answered: its
    /// prompt is charged at the estimate; what it generated is unknown.
    fn finish_unanswered(&mut self, outcome: CallOutcome, error: Option<String>) {
        if !self.sent.load(Ordering::Relaxed) {
            if let Some(r) = self.reservation.take() {
                self.task.shared.meter.release(r);
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
fn node_error(e: BackendError) -> NodeError {
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

/// What a model node produced.
struct Reply {
    texts: Vec<String>,
    data: Option<serde_json::Value>,
    finish: FinishReason,
    /// The messages sent and the (first) reply.
    conversation: Vec<Message>,
}

impl Task {
    pub(super) fn scope(&self, extra: Option<(&'static str, Value)>) -> Value {
        NodeScope {
            data: self.data.clone(),
            round: self.round,
            loop_info: self.loop_info.clone(),
            extra,
        }
        .into_value()
    }

    /// The current artifact's text, if there is one.
    pub(super) fn artifact_text(&self) -> Option<&str> {
        self.data.artifact.as_ref()?.text.as_deref()
    }

    /// Every sample of the current artifact (one unless its node drew `n`;
    /// an empty text before there is one).
    pub(super) fn artifact_samples(&self) -> Vec<serde_json::Value> {
        self.data
            .artifact
            .as_deref()
            .map_or_else(|| vec!["".into()], samples)
    }

    pub(super) fn id(&self) -> &str {
        &self.shared.wf.nodes[self.node].id
    }

    pub async fn run(self) -> Result<NodeOutput, NodeError> {
        let wf = self.shared.wf.clone();
        let spec = &wf.nodes[self.node];
        match &spec.kind {
            NodeKind::Generate(call) | NodeKind::Critique(call) => {
                let (reply, tokens) = self.model_node(call).await?;
                Ok(self.model_output(reply, None, tokens))
            }
            NodeKind::Revise(call) => {
                let (reply, tokens) = self.model_node(call).await?;
                let changed = self.artifact_text() != Some(reply.texts[0].as_str());
                Ok(self.model_output(reply, Some(changed), tokens))
            }
            // The library kinds' futures are large and rare: boxed, so that
            // every node's future is not as large as the largest (the
            // scheduler moves each into a box when it starts it).
            NodeKind::Verify(v) => self.verify(v).await,
            NodeKind::Select(s) => self.select(s),
            NodeKind::Vote(v) => self.vote(v),
            NodeKind::Execute(e) => Box::pin(self.execute(e)).await,
            NodeKind::Extract(e) => self.extract(e),
            NodeKind::Tool(t) => Box::pin(self.tool(t)).await,
            NodeKind::Embed(e) => Box::pin(self.embed(e)).await,
            NodeKind::Cluster(c) => self.cluster(c),
            NodeKind::HumanReview(r) => Box::pin(self.human_review(r)).await,
        }
    }

    /// A model node's output: JSON (`text`, `samples` when n > 1, a
    /// structured reply's `data` and its fields, `changed` for revise,
    /// `round`, `finish`), the samples typed when there are several (one
    /// sample is `NodeOutput::text`), and the conversation for calls that
    /// continue it.
    fn model_output(&self, reply: Reply, changed: Option<bool>, tokens: u64) -> NodeOutput {
        let mut out = serde_json::Map::new();
        if let Some(data) = reply.data {
            if let serde_json::Value::Object(fields) = &data {
                out.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            out.insert("data".into(), data);
        }
        let mut texts = reply.texts;
        let typed = if texts.len() > 1 {
            out.insert("text".into(), texts[0].clone().into());
            out.insert("samples".into(), texts.clone().into());
            Typed::Samples(texts.into())
        } else {
            out.insert("text".into(), texts.swap_remove(0).into());
            Typed::Plain
        };
        if let Some(c) = changed {
            out.insert("changed".into(), c.into());
        }
        out.insert("round".into(), self.round.into());
        out.insert("finish".into(), reply.finish.as_str().into());
        NodeOutput::new(serde_json::Value::Object(out), tokens)
            .with_typed(typed)
            .with_conversation(reply.conversation)
    }

    /// Renders the messages of a model call: its system and prompt, or, for
    /// a call that `continue`s another node's conversation, that
    /// conversation (messages and reply) and the prompt as the next turn.
    fn messages(&self, call: &ModelCall, scope: &Value) -> Result<Vec<Message>, NodeError> {
        let t = &self.shared.wf.templates;
        let earlier = match call.continues {
            Some(Continue::Node(from)) => Some((
                self.data.outputs[from]
                    .as_ref()
                    .and_then(|o| o.conversation.as_ref()),
                self.shared.wf.nodes[from].id.as_str(),
            )),
            Some(Continue::Artifact) => Some((
                self.data
                    .artifact
                    .as_ref()
                    .and_then(|a| a.conversation.as_ref()),
                "artifact",
            )),
            None => None,
        };
        let mut messages = match earlier {
            Some((Some(conversation), _)) => conversation.as_ref().clone(),
            Some((None, whose)) => {
                return Err(self.data_error(format!(
                    "continues the conversation of `{whose}`, but no model node has produced it yet"
                )));
            }
            None => Vec::with_capacity(2),
        };
        if let (Some(system), None) = (&call.system, call.continues) {
            messages.push(Message::system(t.render(system, scope)?));
        }
        messages.push(Message::user(t.render(&call.prompt, scope)?));
        Ok(messages)
    }

    /// Calls the node's model, repairing invalid structured output by feeding
    /// the error back, up to `repair_attempts` times.
    async fn model_node(&self, call: &ModelCall) -> Result<(Reply, u64), NodeError> {
        let scope = self.scope(None);
        let mut messages = self.messages(call, &scope)?;
        let mut tokens = 0;
        let mut attempt = 0;
        loop {
            let completion = self.call(call, messages.clone(), attempt).await?;
            tokens += completion.usage.total();
            let finish = completion.choices[0].finish;
            let texts: Vec<String> = completion.choices.into_iter().map(|c| c.text).collect();
            let conversation = || {
                let mut all = messages.clone();
                all.push(Message::assistant(texts[0].clone()));
                all
            };
            let Some(schema) = &call.schema else {
                return Ok((
                    Reply {
                        conversation: conversation(),
                        texts,
                        data: None,
                        finish,
                    },
                    tokens,
                ));
            };
            match parse_structured(&texts[0], schema) {
                Ok(data) => {
                    return Ok((
                        Reply {
                            conversation: conversation(),
                            texts,
                            data: Some(data),
                            finish,
                        },
                        tokens,
                    ));
                }
                Err(error) => {
                    // A reply cut at max_tokens says so: the fix is the
                    // setting, not the model.
                    let cut = finish == FinishReason::Length;
                    let reported = if cut {
                        let decl = &self.shared.wf.models()[call.model];
                        let max = call.sampling.max_tokens.unwrap_or(decl.max_tokens);
                        format!(
                            "{error} (the reply was cut off at max_tokens = {max} before it was complete: raise `max_tokens` or ask for a shorter reply)"
                        )
                    } else {
                        error.clone()
                    };
                    self.shared.emit(Event::InvalidOutput {
                        node: self.id().to_string(),
                        round: self.round,
                        attempt,
                        error: reported.clone(),
                        raw: texts[0].clone(),
                    });
                    if attempt >= call.repair_attempts {
                        return Err(NodeError::InvalidOutput {
                            node: self.id().to_string(),
                            error: reported,
                            raw: texts[0].clone(),
                        });
                    }
                    attempt += 1;
                    messages.push(Message::assistant(texts[0].clone()));
                    let shorter = if cut {
                        " It was too long and was cut off: keep every string short."
                    } else {
                        ""
                    };
                    messages.push(Message::user(format!(
                        "That reply is not valid: {error}.{shorter} Reply again with only a JSON value that satisfies this JSON Schema:\n{}",
                        schema.source
                    )));
                }
            }
        }
    }

    /// The one place that calls a backend: budget check, call, metering, event.
    async fn call(
        &self,
        call: &ModelCall,
        messages: Vec<Message>,
        attempt: u32,
    ) -> Result<Completion, NodeError> {
        let model = &self.shared.models[call.model];
        let seed = call
            .sampling
            .seed
            .map(|s| s.wrapping_add(self.shared.seed_offset.wrapping_mul(SEED_STRIDE)));
        if call.n <= 1 || model.capabilities().native_n {
            return self.call_once(call, messages, attempt, call.n, seed).await;
        }
        // The backend serves one sample per request: make `n` requests at
        // once (bounded by the concurrency setting), each with its own seed.
        let requests = (0..call.n).map(|i| {
            let seed = seed.map(|s| s.wrapping_add(i as u64));
            self.call_once(call, messages.clone(), attempt, 1, seed)
        });
        let mut merged = Completion {
            choices: Vec::with_capacity(call.n as usize),
            usage: Default::default(),
            usage_estimated: false,
        };
        for part in futures_util::future::join_all(requests).await {
            let part = part?;
            merged.choices.extend(part.choices);
            merged.usage += part.usage;
            merged.usage_estimated |= part.usage_estimated;
        }
        Ok(merged)
    }

    /// One request through the per-call stack
    /// `Retry → Metered → Timeout → (the model's persistent layers)`.
    async fn call_once(
        &self,
        call: &ModelCall,
        messages: Vec<Message>,
        attempt: u32,
        n: u32,
        seed: Option<u64>,
    ) -> Result<Completion, NodeError> {
        let sh = &self.shared;
        let decl = &sh.wf.models[call.model];
        let model: &dyn LanguageModel = &*sh.models[call.model];
        let req = CompletionRequest {
            messages,
            sampling: SamplingParams {
                temperature: call.sampling.temperature,
                top_p: call.sampling.top_p,
                seed,
                max_tokens: call.sampling.max_tokens.unwrap_or(decl.max_tokens),
                stop: call.sampling.stop.clone(),
            },
            n,
            logprobs: call.logprobs,
            response_format: match &call.schema {
                Some(s) => ResponseFormat::JsonSchema {
                    name: self.id().to_string(),
                    schema: s.source.clone(),
                },
                None => ResponseFormat::Text,
            },
            context: CallContext {
                node: sh.names.ids[self.node].clone(),
                round: self.round,
                attempt,
                retry: 0,
            },
        };
        let timed = Timeout::optional(model, decl.timeout);
        let metered = Metered {
            task: self,
            model: call.model,
            inner: &timed,
        };
        Retry::new(&metered, decl.retry)
            .complete(&req)
            .await
            .map_err(node_error)
    }

    /// Embeddings through the same stack as completions (budget, retries,
    /// timeout, model-call events).
    pub(super) async fn embed_texts(
        &self,
        model: usize,
        texts: Vec<String>,
    ) -> Result<Embeddings, NodeError> {
        let sh = &self.shared;
        let decl = &sh.wf.models[model];
        let inner: &dyn LanguageModel = &*sh.models[model];
        let req = EmbeddingRequest {
            texts,
            context: CallContext {
                node: sh.names.ids[self.node].clone(),
                round: self.round,
                attempt: 1,
                retry: 0,
            },
        };
        let timed = Timeout::optional(inner, decl.timeout);
        let metered = Metered {
            task: self,
            model,
            inner: &timed,
        };
        Retry::new(&metered, decl.retry)
            .embed(&req)
            .await
            .map_err(node_error)
    }

    async fn verify(&self, v: &VerifySpec) -> Result<NodeOutput, NodeError> {
        let t = &self.shared.wf.templates;
        let scope = self.scope(None);
        let target = t.render(&v.target, &scope)?;
        let mut results = Vec::with_capacity(v.checks.len());
        let mut tokens = 0;
        let mut confidence_source = None;
        for check in &v.checks {
            let (score, detail) = match check {
                Check::Exact {
                    expected,
                    ignore_case,
                } => {
                    let expected = t.render(expected, &scope)?;
                    let (a, b) = (target.trim(), expected.trim());
                    let ok = if *ignore_case {
                        a.to_lowercase() == b.to_lowercase()
                    } else {
                        a == b
                    };
                    (
                        ok as u8 as f64,
                        if ok {
                            "matches".to_string()
                        } else {
                            format!("expected {b:?}, got {a:?}")
                        },
                    )
                }
                Check::Contains {
                    expected,
                    ignore_case,
                } => {
                    let needle = t.render(expected, &scope)?;
                    let needle = needle.trim();
                    let ok = crate::answer::mentions(&target, needle, *ignore_case);
                    (
                        ok as u8 as f64,
                        if ok {
                            format!("mentions {needle:?}")
                        } else {
                            format!("does not mention {needle:?}")
                        },
                    )
                }
                Check::Lines { expected } => {
                    let want_text = t.render(expected, &scope)?;
                    let Ok(want) = want_text.trim().parse::<usize>() else {
                        return Err(NodeError::Data(format!(
                            "lines check of `{}`: {want_text:?} is not a number of lines",
                            self.id()
                        )));
                    };
                    let got = target.lines().filter(|l| !l.trim().is_empty()).count();
                    (
                        (got == want) as u8 as f64,
                        if got == want {
                            format!("{got} lines")
                        } else {
                            format!("expected {want} lines, got {got}")
                        },
                    )
                }
                Check::Regex(re) => {
                    let ok = re.is_match(&target);
                    (
                        ok as u8 as f64,
                        if ok {
                            "matches".into()
                        } else {
                            format!("does not match /{}/", re.as_str())
                        },
                    )
                }
                Check::Numeric {
                    expected,
                    tolerance,
                } => {
                    let expected_text = t.render(expected, &scope)?;
                    match (
                        crate::answer::number(&target),
                        crate::answer::number(&expected_text),
                    ) {
                        (Some(got), Some(want)) => {
                            let ok = crate::answer::numbers_match(got, want, *tolerance);
                            (
                                ok as u8 as f64,
                                if ok {
                                    format!("{got} is within {tolerance} of {want}")
                                } else {
                                    format!("expected {want}, got {got}")
                                },
                            )
                        }
                        (None, _) => (0.0, "no number in the answer".to_string()),
                        (_, None) => {
                            return Err(NodeError::Data(format!(
                                "numeric check of `{}`: the expected value {expected_text:?} holds no number",
                                self.id()
                            )));
                        }
                    }
                }
                Check::JsonSchema(schema) => match parse_structured(&target, schema) {
                    Ok(_) => (1.0, "valid JSON for the schema".to_string()),
                    Err(e) => (0.0, e),
                },
                Check::Judge(call) => {
                    let scope = self.scope(Some(("target", Value::from(target.clone()))));
                    let messages = self.messages(call, &scope)?;
                    let completion = self.call(call, messages, 0).await?;
                    tokens += completion.usage.total();
                    let (confidence, source) = judge_confidence(&completion);
                    confidence_source = Some(source);
                    let text = completion.choices[0]
                        .text
                        .trim()
                        .chars()
                        .take(200)
                        .collect::<String>();
                    (
                        confidence,
                        format!("judge confidence {confidence:.3} ({source}): {text}"),
                    )
                }
            };
            results.push((check.name(), score, detail));
        }
        let passed = results.iter().all(|(_, score, _)| *score >= 0.5);
        let raw_score = if results.is_empty() {
            0.0
        } else {
            results.iter().map(|(_, s, _)| s).sum::<f64>() / results.len() as f64
        };
        // A calibration rescales the confidence; the checks still decide
        // whether it passed.
        let score = v
            .calibration
            .as_ref()
            .map_or(raw_score, |c| c.apply(raw_score));
        let feedback: Vec<String> = results
            .iter()
            .filter(|(_, score, _)| *score < 0.5)
            .map(|(name, _, detail)| format!("{name}: {detail}"))
            .collect();
        self.shared.emit(Event::Verdict {
            node: self.id().to_string(),
            round: self.round,
            passed,
            score,
            raw_score: v.calibration.is_some().then_some(raw_score),
            confidence_source,
        });
        let checks = results
            .into_iter()
            .map(|(name, score, detail)| {
                object([
                    ("check", name.into()),
                    ("passed", (score >= 0.5).into()),
                    ("score", score.into()),
                    ("detail", detail.into()),
                ])
            })
            .collect::<Vec<_>>();
        let mut out = object([
            ("passed", passed.into()),
            ("score", score.into()),
            ("checks", checks.into()),
            ("feedback", feedback.join("\n").into()),
            ("target", target.into()),
            ("round", self.round.into()),
        ]);
        if v.calibration.is_some() {
            out["raw_score"] = raw_score.into();
        }
        Ok(NodeOutput::new(out, tokens).with_typed(Typed::Verdict(Verdict { passed, score })))
    }

    /// The latest output of node `node`, which this node reads.
    pub(super) fn output_of(&self, node: usize) -> Result<&NodeOutput, NodeError> {
        self.data.outputs[node].as_deref().ok_or_else(|| {
            NodeError::Data(format!(
                "`{}` reads `{}`, which has no output yet",
                self.id(),
                self.shared.wf.nodes[node].id
            ))
        })
    }

    /// The sample texts of a model node (its one text with one sample, and
    /// for other nodes).
    pub(super) fn samples_of(&self, from: usize) -> Result<Vec<serde_json::Value>, NodeError> {
        self.output_of(from).map(samples)
    }

    /// Evaluates an expression that must give a list (`tests`, `each`,
    /// `items`), naming the key when it does not.
    pub(super) fn eval_list(
        &self,
        expr: &str,
        key: &str,
    ) -> Result<Vec<serde_json::Value>, NodeError> {
        let value = self.shared.wf.templates.eval(expr, &self.scope(None))?;
        match serde_json::to_value(&value) {
            Ok(serde_json::Value::Array(items)) => Ok(items),
            Ok(other) => Err(self.data_error(format!("`{key}` must give a list, it gave {other}"))),
            Err(err) => Err(self.data_error(format!("`{key}` is not data: {err}"))),
        }
    }

    fn select(&self, s: &SelectSpec) -> Result<NodeOutput, NodeError> {
        let samples = self.samples_of(s.from)?;
        let mut best: Option<(usize, f64)> = None;
        let mut scores = Vec::with_capacity(samples.len());
        for (i, sample) in samples.iter().enumerate() {
            let bound = Value::from_serialize(json!({ "text": sample, "index": i }));
            let score = self
                .shared
                .wf
                .templates
                .number(&s.by, &self.scope(Some(("sample", bound))))?;
            scores.push(score);
            let better = match best {
                None => true,
                Some((_, b)) => match s.order {
                    Order::Max => score > b,
                    Order::Min => score < b,
                },
            };
            if better {
                best = Some((i, score));
            }
        }
        let (index, score) = best.ok_or_else(|| {
            NodeError::Data(format!("`{}` has no samples to select from", self.id()))
        })?;
        Ok(NodeOutput::new(
            json!({ "text": samples[index], "index": index, "score": score, "scores": scores, "round": self.round }),
            0,
        ))
    }

    fn vote(&self, v: &VoteSpec) -> Result<NodeOutput, NodeError> {
        let samples = match &v.from {
            VoteFrom::Node(from) => self.samples_of(*from)?,
            VoteFrom::Items(expr) => self
                .eval_list(expr, "items")?
                .into_iter()
                .map(|i| match i {
                    serde_json::Value::String(_) | serde_json::Value::Null => i,
                    other => other.to_string().into(),
                })
                .collect(),
        };
        // (answer, total weight, votes), in order of first appearance.
        let mut counts: Vec<(String, f64, u32)> = Vec::new();
        let mut weights = Vec::with_capacity(samples.len());
        for (i, s) in samples.iter().enumerate() {
            let text = s.as_str().unwrap_or_default();
            let answer = match &v.extract {
                // The first group that took part in the match (patterns
                // with alternatives), else the whole match.
                Some(re) => crate::answer::extract(re, text).map(str::to_string),
                None => Some(text.trim().to_string()),
            };
            let weight = match &v.weight {
                Some(expr) => {
                    let bound = Value::from_serialize(json!({ "text": s, "index": i }));
                    let w = self
                        .shared
                        .wf
                        .templates
                        .number(expr, &self.scope(Some(("sample", bound))))?;
                    if !w.is_finite() || w < 0.0 {
                        return Err(NodeError::Data(format!(
                            "`{}`: the weight of sample {i} is {w}; weights must be finite and not negative",
                            self.id()
                        )));
                    }
                    w
                }
                None => 1.0,
            };
            weights.push(weight);
            if let Some(a) = answer {
                match counts.iter_mut().find(|(k, _, _)| *k == a) {
                    Some((_, w, n)) => {
                        *w += weight;
                        *n += 1;
                    }
                    None => counts.push((a, weight, 1)),
                }
            }
        }
        // Ties go to the answer seen first.
        let winner = counts
            .iter()
            .fold(None::<&(String, f64, u32)>, |best, c| match best {
                Some(b) if b.1 >= c.1 => Some(b),
                _ => Some(c),
            });
        // No sample held an answer (a model that never wrote one): the vote
        // is empty rather than a failed run, so a scorer counts it wrong and
        // the rest of the run is kept.
        let (answer, weight, _) = winner.cloned().unwrap_or_default();
        let total: f64 = weights.iter().sum();
        let tally: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(k, w, n)| {
                (
                    k.clone(),
                    if v.weight.is_some() {
                        json!(w)
                    } else {
                        json!(n)
                    },
                )
            })
            .collect();
        let agreement = if total > 0.0 { weight / total } else { 0.0 };
        Ok(NodeOutput::new(
            json!({
                "text": answer,
                "votes": tally,
                "agreement": agreement,
                "weights": weights,
                "method": if v.weight.is_some() { "weighted" } else { "majority" },
                "round": self.round,
            }),
            0,
        ))
    }
}

/// A node output's samples: all `n` of them, else its text alone (null
/// when it has none).
fn samples(out: &NodeOutput) -> Vec<serde_json::Value> {
    match &out.typed {
        Typed::Samples(samples) => samples.iter().map(|t| t.as_str().into()).collect(),
        _ => vec![
            out.text
                .as_deref()
                .map_or(serde_json::Value::Null, Into::into),
        ],
    }
}

/// A JSON object from key/value pairs, without `json!`'s serde round trip.
fn object<const N: usize>(pairs: [(&str, serde_json::Value); N]) -> serde_json::Value {
    serde_json::Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Parses a reply as JSON (whole, fenced, or the outermost `{...}`/`[...]`)
/// and validates it against the schema.
pub(crate) fn parse_structured(text: &str, schema: &Schema) -> Result<serde_json::Value, String> {
    let value =
        crate::answer::json(text).ok_or_else(|| "the reply holds no JSON value".to_string())?;
    let violations = schema.violations(&value);
    if violations.is_empty() {
        Ok(value)
    } else {
        Err(format!(
            "the JSON does not satisfy the schema: {}",
            violations.join("; ")
        ))
    }
}

/// A judge's confidence in "yes": p(Yes)/(p(Yes)+p(No)) from the first
/// token's top logprobs when present, else parsed from the text.
pub(crate) fn judge_confidence(c: &Completion) -> (f64, &'static str) {
    let choice = &c.choices[0];
    if let Some(first) = choice.logprobs.as_ref().and_then(|l| l.first()) {
        let mut candidates = first.top.clone();
        candidates.push((first.token.clone(), first.logprob));
        let p = |word: &str| -> f64 {
            let mut seen = std::collections::HashSet::new();
            candidates
                .iter()
                .filter(|(t, _)| t.trim().eq_ignore_ascii_case(word) && seen.insert(t.clone()))
                .map(|(_, lp)| (*lp as f64).exp())
                .sum()
        };
        let (yes, no) = (p("yes"), p("no"));
        if yes + no > 0.0 {
            return (yes / (yes + no), "logprobs");
        }
    }
    let text = choice.text.trim();
    if let Some(v) = crate::answer::json(text) {
        let verdict = v
            .get("verdict")
            .or_else(|| v.get("answer"))
            .and_then(|x| x.as_str())
            .and_then(crate::answer::yes_no);
        let confidence = v
            .get("confidence")
            .and_then(|x| x.as_f64())
            .map(|c| c.clamp(0.0, 1.0));
        match (verdict, confidence) {
            (Some(true), Some(c)) => return (c, "verbalized"),
            (Some(false), Some(c)) => return (1.0 - c, "verbalized"),
            (Some(yes), None) => return (f64::from(u8::from(yes)), "verbalized"),
            (None, _) => {}
        }
    }
    let yes = crate::answer::yes_no(text) == Some(true);
    (f64::from(u8::from(yes)), "verbalized")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Choice, FinishReason, TokenLogprob, Usage};

    fn completion(text: &str, logprobs: Option<Vec<TokenLogprob>>) -> Completion {
        Completion {
            choices: vec![Choice {
                text: text.into(),
                finish: FinishReason::Stop,
                logprobs,
            }],
            usage: Usage::default(),
            usage_estimated: false,
        }
    }

    #[test]
    fn confidence_from_logprobs() {
        let lp = TokenLogprob {
            token: "Yes".into(),
            logprob: (0.6f32).ln(),
            top: vec![("Yes".into(), (0.6f32).ln()), (" No".into(), (0.2f32).ln())],
        };
        let (c, src) = judge_confidence(&completion("Yes", Some(vec![lp])));
        assert_eq!(src, "logprobs");
        assert!((c - 0.75).abs() < 1e-6, "{c}");
    }

    #[test]
    fn confidence_verbalized() {
        assert_eq!(
            judge_confidence(&completion(
                "{\"verdict\": \"no\", \"confidence\": 0.9}",
                None
            ))
            .0,
            1.0 - 0.9
        );
        assert_eq!(
            judge_confidence(&completion("Yes, it is right.", None)),
            (1.0, "verbalized")
        );
        assert_eq!(
            judge_confidence(&completion("Nope", None)),
            (0.0, "verbalized")
        );
    }
}
