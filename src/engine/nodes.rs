//! Running one node: [`Task::run`] dispatches on its kind (one arm per
//! kind: the compiler names this match when a kind is added); model nodes
//! render their prompts, call the model and build their output here, the
//! verify/select/vote bodies are in `checks.rs`, the node-library kinds in
//! `library.rs`, and the metering of every call in `metered.rs`.
//!
//! **Invariant:** every model call goes through [`Task::call`], which
//! reserves the worst case in the budget before the call and settles the
//! actual usage after it. No other code talks to a backend.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use minijinja::Value;

use super::NodeError;
use super::Shared;
use super::metered::{CallScope, Metered, node_error};
use super::state::{NodeOutput, NodeScope, ScopeData, Typed};
use crate::backend::{
    CallContext, Completion, CompletionRequest, EmbeddingRequest, Embeddings, FinishReason,
    LanguageModel, Message, ResponseFormat, SamplingParams,
};
use crate::cache::Cached;
use crate::event::Event;
use crate::layer::{Retry, Timeout};
use crate::workflow::{Continue, ModelCall, NodeKind, Schema};

/// How far apart the seeds of two seed offsets (eval epochs) are, so that
/// the `n` consecutive seeds of one call's samples never overlap another
/// epoch's.
pub(crate) const SEED_STRIDE: u64 = 1_000_003;

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

    /// What metering needs of this task.
    fn call_scope(&self) -> CallScope<'_> {
        CallScope {
            shared: &self.shared,
            node: self.node,
            round: self.round,
            scopes: &self.scopes,
        }
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
    pub(super) fn messages(
        &self,
        call: &ModelCall,
        scope: &Value,
    ) -> Result<Vec<Message>, NodeError> {
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
    pub(super) async fn call(
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
            return self
                .call_once(call, messages, attempt, (call.n, 0), seed)
                .await;
        }
        // The backend serves one sample per request: make `n` requests at
        // once (bounded by the concurrency setting), each with its own seed.
        let requests = (0..call.n).map(|i| {
            let seed = seed.map(|s| s.wrapping_add(i as u64));
            self.call_once(call, messages.clone(), attempt, (1, i), seed)
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

    /// One request (`n` samples; `sample`: the index of the first among a
    /// fanned-out `n`) through the per-call stack
    /// `Retry → Metered → [Cached →] Timeout → (the model's persistent layers)`.
    async fn call_once(
        &self,
        call: &ModelCall,
        messages: Vec<Message>,
        attempt: u32,
        (n, sample): (u32, u32),
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
        let hit = AtomicBool::new(false);
        let cached = self.cached(call.model, &timed, sample, &hit);
        let metered = Metered {
            scope: self.call_scope(),
            model: call.model,
            inner: cached.as_ref().map_or(&timed as &dyn LanguageModel, |c| c),
            hit: &hit,
        };
        Retry::new(&metered, decl.retry)
            .complete(&req)
            .await
            .map_err(node_error)
    }

    /// The cache layer over `inner`, when this run caches `model`'s calls.
    fn cached<'a>(
        &'a self,
        model: usize,
        inner: &'a dyn LanguageModel,
        sample: u32,
        hit: &'a AtomicBool,
    ) -> Option<Cached<'a>> {
        let sh = &self.shared;
        let (cache, mode) = sh.cache.as_ref()?;
        Some(Cached {
            inner,
            cache,
            mode: *mode,
            model: sh.identities[model].as_deref()?,
            unit: sh.cache_unit.as_deref(),
            sample,
            hit,
        })
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
        let hit = AtomicBool::new(false);
        let cached = self.cached(model, &timed, 0, &hit);
        let metered = Metered {
            scope: self.call_scope(),
            model,
            inner: cached.as_ref().map_or(&timed as &dyn LanguageModel, |c| c),
            hit: &hit,
        };
        Retry::new(&metered, decl.retry)
            .embed(&req)
            .await
            .map_err(node_error)
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
}

/// A node output's samples: all `n` of them, else its text alone (null
/// when it has none).
pub(super) fn samples(out: &NodeOutput) -> Vec<serde_json::Value> {
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
pub(super) fn object<const N: usize>(pairs: [(&str, serde_json::Value); N]) -> serde_json::Value {
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
