//! The engine: runs a checked [`Workflow`] against language models.
//!
//! Entry point: [`Engine::run`]. The scheduler (one task, owning all run
//! state) starts nodes whose inputs are ready, runs them concurrently as
//! futures, and applies their results: edges fire or are skipped, loops start
//! new rounds or stop, and every step is an [`Event`].
//!
//! **Invariants:**
//! - the run state is touched only by the scheduler; node futures get an
//!   immutable snapshot and return an output;
//! - a node inside a loop runs at most once per round, and a loop body runs
//!   at most `max_rounds` times;
//! - a run always ends with a [`RunSummary`] holding the best output so far,
//!   whatever stopped it (budget, failure, cancellation).

mod checks;
mod library;
mod metered;
mod nodes;
mod scheduler;
mod state;
mod stream;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tracing::Instrument as _;

pub use tokio_util::sync::CancellationToken;

use crate::backend::cassette::{CassetteWriter, Recording};
use crate::backend::{BackendError, LanguageModel};
use crate::budget::{Exhausted, Limits, Meter, Scope};
pub use crate::cache::CacheMode;
use crate::cache::{CacheError, ModelIdentity, ResponseCache};
use crate::event::{Event, NoRecorder, Recorder};
use crate::layer::{RateLimit, RateLimits};
use crate::metrics::Tally;
use crate::summary::{FailureCause, FailureKind, RunSummary};
use crate::template::TemplateError;
use crate::workflow::{InputType, Workflow};

pub use state::{NodeOutput, Typed, Verdict};
pub use stream::EventStream;

/// Runs workflows. Holds model overrides and the event recorder; cheap to
/// share between runs, and to clone (clones share opened models).
#[derive(Clone)]
pub struct Engine {
    models: Arc<HashMap<String, ModelOverride>>,
    recorder: Arc<dyn Recorder>,
    cassette: Option<Arc<CassetteWriter>>,
    /// The response cache runs may use ([`RunOptions::cache`]).
    cache: Option<Arc<ResponseCache>>,
    /// Models opened from specs, with their persistent layers (rate limit,
    /// recording), shared by every run of this engine: connection pools and
    /// rate-limit buckets outlive a run.
    opened: Arc<Mutex<HashMap<String, OpenedModel>>>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

/// Options of one run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Input values by name (JSON).
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Workflow-level limits that override the file's.
    pub budget: Limits,
    /// Cancel to stop the run; finished work is kept and reported.
    pub cancel: CancellationToken,
    /// Decisions for every `human_review` node, overriding the workflow's.
    pub review: Option<crate::workflow::ReviewDecisions>,
    /// Who decides the edits of `human_review` nodes whose decisions are
    /// `ask`; without one such a node fails, naming the alternatives. The
    /// CLI passes the terminal's.
    pub reviewer: Option<Arc<dyn crate::review::Reviewer>>,
    /// Put each call's rendered messages and reply texts into its
    /// `model_call` event (`prompt`, `reply`). Off by default: prompts can
    /// be large and hold user data. API keys are never part of them.
    pub log_content: bool,
    /// With [`Engine::run_streaming`]: model calls wait while more than
    /// this many events are unread (0: the default, 1024).
    pub event_buffer: usize,
    /// Added to every sampling seed the workflow sets (and to clustering
    /// seeds): `eval --epochs K` runs epoch `e` with offset `e`, so repeated
    /// runs of one item differ while each stays reproducible.
    pub seed_offset: u64,
    /// How this run uses the engine's response cache ([`Engine::with_cache`];
    /// without one nothing is cached). Default `On`: serve hits, store misses.
    pub cache: CacheMode,
    /// Where this run sits among many (an eval's item and epoch): part of
    /// the cache key of every call that draws a sample (temperature above 0
    /// without a seed), so the same draw of another unit is not reused.
    pub cache_unit: Option<String>,
}

/// Unread events of a streamed run before model calls wait.
pub const DEFAULT_EVENT_BUFFER: usize = 1024;

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("input `{name}`: {reason}")]
    Input { name: String, reason: String },
    #[error("model `{name}` could not be opened: {source}")]
    Model {
        name: String,
        source: Box<BackendError>,
    },
    #[error(
        "model `{name}` has no spec: supply one (`--model {name}=SPEC`, or `Engine::with_model` / `with_model_spec`)"
    )]
    NoSpec { name: String },
    #[error(
        "the workflow has no model `{}` to override (models: {known})",
        crate::redact::text(name)
    )]
    UnknownModel { name: String, known: String },
}

/// A model opened once per engine: runs that need it while it opens wait
/// for the one opening it.
type OpenedModel = Arc<OnceCell<Opened>>;

/// An opened model and, when the engine has a cache and the model may use
/// it, its identity in cache keys.
#[derive(Clone)]
pub(crate) struct Opened {
    pub model: Arc<dyn LanguageModel>,
    pub identity: Option<Arc<ModelIdentity>>,
}

/// What replaces a workflow model: an opened model, or another spec opened
/// with the workflow's `settings` for that model.
#[derive(Clone)]
enum ModelOverride {
    Model(Arc<dyn LanguageModel>),
    Spec(String),
}

/// Why a node failed; the run stops on any of these except budget ones
/// below workflow level.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Budget(Exhausted),
    #[error(transparent)]
    Backend(BackendError),
    #[error("node `{node}`: the reply does not satisfy the schema: {error}")]
    InvalidOutput {
        node: String,
        error: String,
        raw: String,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{0}")]
    Data(String),
    #[error("cancelled")]
    Cancelled,
}

impl NodeError {
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            NodeError::Backend(_) | NodeError::InvalidOutput { .. } => FailureKind::Backend,
            _ => FailureKind::Workflow,
        }
    }

    /// The typed form kept in the summary.
    pub fn cause(&self) -> FailureCause {
        match self {
            NodeError::Backend(e) => FailureCause::Backend {
                backend: e.backend.clone(),
                error: e.kind,
            },
            NodeError::InvalidOutput { .. } => FailureCause::InvalidOutput,
            NodeError::Template(_) => FailureCause::Template,
            NodeError::Budget(_) => FailureCause::Budget,
            NodeError::Data(_) | NodeError::Cancelled => FailureCause::Data,
        }
    }
}

/// State shared by the scheduler and node futures.
pub(crate) struct Shared {
    pub wf: Arc<Workflow>,
    pub models: Vec<Arc<dyn LanguageModel>>,
    /// Per model, its cache identity; `None`: its calls are not cached.
    pub identities: Vec<Option<Arc<ModelIdentity>>>,
    /// The cache and how this run uses it (`None`: off, or no cache).
    pub cache: Option<(Arc<ResponseCache>, CacheMode)>,
    pub cache_unit: Option<Arc<str>>,
    pub meter: Meter,
    pub permits: tokio::sync::Semaphore,
    pub names: Arc<state::Names>,
    pub review: Option<crate::workflow::ReviewDecisions>,
    pub reviewer: Option<Arc<dyn crate::review::Reviewer>>,
    pub log_content: bool,
    pub seed_offset: u64,
    /// The run's event stream, when it was started with `run_streaming`.
    pub stream: Option<stream::EventSink>,
    recorder: Arc<dyn Recorder>,
    tally: Mutex<Tally>,
}

impl Shared {
    pub fn emit(&self, event: Event) {
        self.tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(&event);
        self.recorder.record(&event);
        if let Some(stream) = &self.stream {
            stream.send(&event);
        }
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine {
            models: Arc::default(),
            recorder: Arc::new(NoRecorder),
            cassette: None,
            cache: None,
            opened: Arc::default(),
        }
    }

    /// Records every model call of every run into a cassette (`--record`).
    pub fn with_cassette(mut self, cassette: Arc<CassetteWriter>) -> Engine {
        self.cassette = Some(cassette);
        self
    }

    /// Serves model calls from `cache` and stores their replies there, as
    /// each run's [`RunOptions::cache`] says. A model declared with `cache:
    /// false`, and `replay:` models, are never cached. A model given with
    /// [`Engine::with_model`] is named in keys by its `id()`: give it an id
    /// that changes when its replies would.
    pub fn with_cache(mut self, cache: Arc<ResponseCache>) -> Engine {
        self.cache = Some(cache);
        self
    }

    /// The engine's response cache, if it has one.
    pub fn cache(&self) -> Option<&Arc<ResponseCache>> {
        self.cache.as_ref()
    }

    /// Uses `model` for the workflow model named `name`, instead of its spec.
    /// The workflow's other settings for it (retries, timeout, rate limits,
    /// prices, max tokens) still apply. Running a workflow that has no model
    /// `name` is an error ([`RunError::UnknownModel`]).
    pub fn with_model(mut self, name: impl Into<String>, model: Arc<dyn LanguageModel>) -> Engine {
        Arc::make_mut(&mut self.models).insert(name.into(), ModelOverride::Model(model));
        self
    }

    /// Opens the workflow model named `name` from `spec` instead of its own
    /// spec, keeping its `settings` (timeouts, size limits, endpoints'
    /// concurrency, ...) and everything else about it: what `--model
    /// NAME=SPEC` does. Running a workflow that has no model `name` is an
    /// error ([`RunError::UnknownModel`]).
    pub fn with_model_spec(mut self, name: impl Into<String>, spec: impl Into<String>) -> Engine {
        Arc::make_mut(&mut self.models).insert(name.into(), ModelOverride::Spec(spec.into()));
        self
    }

    /// Sends every event of every run to `recorder`.
    pub fn with_recorder(mut self, recorder: Arc<dyn Recorder>) -> Engine {
        self.recorder = recorder;
        self
    }

    /// Opens the workflow's models: overrides first, else their specs
    /// (relative paths resolve against the workflow's directory).
    ///
    /// Each model is opened once per engine and shared by its runs. Opening
    /// (reading GGUF weights, fetching `hf:` files) runs on a blocking
    /// thread, never on the async runtime, and no lock is held across it:
    /// concurrent runs that need the same model wait for the one opening
    /// it, runs that need other models do not wait at all.
    pub async fn open_models(
        &self,
        wf: &Workflow,
    ) -> Result<Vec<Arc<dyn LanguageModel>>, RunError> {
        Ok(self
            .open_models_with_identity(wf)
            .await?
            .into_iter()
            .map(|o| o.model)
            .collect())
    }

    /// [`Engine::open_models`], with each model's cache identity.
    pub(crate) async fn open_models_with_identity(
        &self,
        wf: &Workflow,
    ) -> Result<Vec<Opened>, RunError> {
        let base = wf
            .path
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        if let Some(name) = self.models.keys().find(|n| wf.model_index(n).is_none()) {
            let known: Vec<&str> = wf.models.iter().map(|m| m.name.as_str()).collect();
            return Err(RunError::UnknownModel {
                name: name.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        let mut models = Vec::with_capacity(wf.models.len());
        // Clones of an engine share what it opened, so the key names all
        // that makes a model: a given model by identity, the cassette too.
        let cassette = self.cassette.as_ref().map(|c| Arc::as_ptr(c) as usize);
        let cache = self.cache.as_ref().map(|c| Arc::as_ptr(c) as usize);
        for m in &wf.models {
            let spec = match self.models.get(&m.name) {
                Some(ModelOverride::Spec(spec)) => spec.clone(),
                Some(ModelOverride::Model(model)) => format!("given {:p}", Arc::as_ptr(model)),
                None => format!("{:?}", m.spec),
            };
            let key = format!(
                "{}\u{1f}{}\u{1f}{spec}\u{1f}{}\u{1f}{:?}\u{1f}{cassette:?}\u{1f}{cache:?}\u{1f}{}",
                base.display(),
                m.name,
                m.settings,
                m.rate_limit,
                m.cache
            );
            let cell = self
                .opened
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default()
                .clone();
            let model = cell.get_or_try_init(|| self.open_model(m, base)).await?;
            models.push(model.clone());
        }
        Ok(models)
    }

    /// Opens one model with its persistent layers (recording, rate limit),
    /// and its cache identity when the engine has a cache.
    async fn open_model(
        &self,
        m: &crate::workflow::ModelDecl,
        base: &Path,
    ) -> Result<Opened, RunError> {
        let mut identity = None;
        let mut model = match self.models.get(&m.name) {
            Some(ModelOverride::Model(model)) => {
                if m.cache {
                    identity = Some(Arc::new(ModelIdentity {
                        key: format!("given:{}", model.id()),
                        contextual: false,
                    }));
                }
                model.clone()
            }
            given => {
                let spec = match given {
                    Some(ModelOverride::Spec(spec)) => spec.clone(),
                    _ => m.spec.clone().ok_or_else(|| RunError::NoSpec {
                        name: m.name.clone(),
                    })?,
                };
                if let (Some(cache), true) = (&self.cache, m.cache) {
                    let (cache, of, settings, dir) = (
                        cache.clone(),
                        spec.clone(),
                        m.settings.clone(),
                        base.to_path_buf(),
                    );
                    // Hashing a GGUF the first time takes seconds: off the
                    // runtime. A model that cannot be named is not cached
                    // (opening it says what is wrong, if anything is).
                    let named =
                        tokio::task::spawn_blocking(move || cache.identity(&of, &settings, &dir))
                            .await
                            .map_err(|e| CacheError::Identity(e.to_string()))
                            .and_then(|r| r);
                    identity = match named {
                        Ok(id) => id.map(Arc::new),
                        Err(e) => {
                            tracing::warn!(model = %m.name, "{e}; its calls are not cached");
                            None
                        }
                    };
                }
                let (settings, base) = (m.settings.clone(), base.to_path_buf());
                let opening = spec.clone();
                tokio::task::spawn_blocking(move || {
                    crate::backend::open(&opening, &settings, &base)
                })
                .await
                .unwrap_or_else(|e| {
                    Err(BackendError::new(
                        &spec,
                        crate::backend::ErrorKind::Config,
                        format!("opening the model stopped: {e}"),
                    ))
                })
                .map_err(|source| RunError::Model {
                    name: m.name.clone(),
                    source: Box::new(source),
                })?
            }
        };
        if let Some(cassette) = &self.cassette {
            model = Arc::new(Recording::new(model, &m.name, cassette.clone()));
        }
        if m.rate_limit != RateLimits::default() {
            model = Arc::new(RateLimit::new(model, m.rate_limit));
        }
        Ok(Opened { model, identity })
    }

    /// Runs a workflow to the end and returns its summary.
    pub async fn run(&self, wf: Arc<Workflow>, opts: RunOptions) -> Result<RunSummary, RunError> {
        self.run_with(wf, opts, None).await
    }

    /// Runs a workflow, streaming its events: returns the stream and the
    /// future of the summary. Poll both (e.g. spawn the future, which owns
    /// what it needs, and read the stream); the stream ends after
    /// `run_finished`. The engine's recorder still gets every event.
    ///
    /// ```no_run
    /// # async fn demo(engine: redraft::Engine, wf: std::sync::Arc<redraft::Workflow>) {
    /// let (mut events, summary) = engine.run_streaming(wf, Default::default());
    /// let (summary, ()) = tokio::join!(summary, async {
    ///     while let Some(event) = events.next().await {
    ///         println!("{}", serde_json::to_string(&event).unwrap());
    ///     }
    /// });
    /// # }
    /// ```
    pub fn run_streaming(
        &self,
        wf: Arc<Workflow>,
        opts: RunOptions,
    ) -> (
        EventStream,
        impl std::future::Future<Output = Result<RunSummary, RunError>> + Send + 'static,
    ) {
        let buffer = match opts.event_buffer {
            0 => DEFAULT_EVENT_BUFFER,
            n => n,
        };
        let (sink, stream) = stream::channel(buffer);
        let engine = self.clone();
        (stream, async move {
            engine.run_with(wf, opts, Some(sink)).await
        })
    }

    async fn run_with(
        &self,
        wf: Arc<Workflow>,
        opts: RunOptions,
        stream: Option<stream::EventSink>,
    ) -> Result<RunSummary, RunError> {
        let inputs = resolve_inputs(&wf, &opts.inputs)?;
        let cache = match (&self.cache, opts.cache) {
            (Some(cache), mode) if mode != CacheMode::Off => Some((cache.clone(), mode)),
            _ => None,
        };
        let (models, identities) = self
            .open_models_with_identity(&wf)
            .await?
            .into_iter()
            .map(|o| (o.model, o.identity))
            .unzip();
        let mut budget = wf.budget;
        budget.overlay(&opts.budget);
        let mut scopes = vec![(Scope::Workflow, budget)];
        scopes.extend(
            wf.loops
                .iter()
                .map(|l| (Scope::Loop(l.id.clone()), l.budget)),
        );
        scopes.extend(
            wf.nodes
                .iter()
                .map(|n| (Scope::Node(n.id.clone()), n.budget)),
        );
        let ids: Vec<Arc<str>> = wf.nodes.iter().map(|n| Arc::from(n.id.as_str())).collect();
        let names = Arc::new(state::Names {
            index: ids
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, id)| (id, i))
                .collect(),
            ids,
        });
        let shared = Arc::new(Shared {
            models,
            identities,
            cache,
            cache_unit: opts.cache_unit.map(Arc::from),
            meter: Meter::new(scopes),
            permits: tokio::sync::Semaphore::new(wf.concurrency),
            names,
            review: opts.review,
            reviewer: opts.reviewer,
            log_content: opts.log_content,
            seed_offset: opts.seed_offset,
            stream,
            recorder: self.recorder.clone(),
            tally: Mutex::new(Tally::default()),
            wf,
        });
        let span = tracing::info_span!("redraft.run", redraft.workflow = %shared.wf.name);
        Ok(scheduler::Run::new(shared, inputs)
            .execute(opts.cancel)
            .instrument(span)
            .await)
    }
}

/// A compile-time check: the futures of a run can move between threads
/// (`tokio::spawn`), and so can the event stream.
#[allow(dead_code)]
fn _runs_are_send(engine: &Engine, wf: Arc<Workflow>) {
    fn send<T: Send>(_: T) {}
    send(engine.run(wf.clone(), RunOptions::default()));
    send(engine.run_streaming(wf, RunOptions::default()));
}

/// Checks given inputs against the declared ones and fills defaults.
fn resolve_inputs(
    wf: &Workflow,
    given: &serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, RunError> {
    for name in given.keys() {
        if !wf.inputs.iter().any(|i| &i.name == name) {
            let known: Vec<&str> = wf.inputs.iter().map(|i| i.name.as_str()).collect();
            let hint = match crate::diagnostic::did_you_mean(name, known.iter().copied()) {
                Some(b) => format!("did you mean `{b}`?"),
                None if known.is_empty() => "the workflow declares no inputs".to_string(),
                None => format!("declared inputs: {}", known.join(", ")),
            };
            return Err(RunError::Input {
                name: name.clone(),
                reason: format!("not declared by the workflow; {hint}"),
            });
        }
    }
    let mut out = serde_json::Map::new();
    for decl in &wf.inputs {
        let value = match given.get(&decl.name).or(decl.default.as_ref()) {
            Some(v) => v.clone(),
            None => {
                return Err(RunError::Input {
                    name: decl.name.clone(),
                    reason: "is required (no default); pass it with --input".into(),
                });
            }
        };
        if !decl.ty.accepts(&value) {
            return Err(RunError::Input {
                name: decl.name.clone(),
                reason: format!("expected {}, got {value}", decl.ty.name()),
            });
        }
        out.insert(decl.name.clone(), value);
    }
    Ok(out)
}

/// Parses a `--input k=v` value by the declared type of `k`.
pub fn parse_input_value(
    wf: &Workflow,
    name: &str,
    raw: &str,
) -> Result<serde_json::Value, RunError> {
    let ty = wf
        .inputs
        .iter()
        .find(|i| i.name == name)
        .map_or(InputType::String, |i| i.ty);
    let err = |what: &str| RunError::Input {
        name: name.to_string(),
        reason: format!("{raw:?} is not {what}"),
    };
    match ty {
        InputType::String => Ok(serde_json::Value::String(raw.to_string())),
        InputType::Integer => raw
            .trim()
            .parse::<i64>()
            .map(Into::into)
            .map_err(|_| err("an integer")),
        InputType::Number => raw
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .ok_or_else(|| err("a number")),
        InputType::Boolean => raw
            .trim()
            .parse::<bool>()
            .map(Into::into)
            .map_err(|_| err("true or false")),
        InputType::Object | InputType::Array | InputType::Any => serde_json::from_str(raw)
            .or_else(|e| {
                if ty == InputType::Any {
                    Ok(serde_json::Value::String(raw.to_string()))
                } else {
                    Err(e)
                }
            })
            .map_err(|_| err("JSON")),
    }
}
