//! Evals: a workflow over a data set, each item scored, everything stored.
//!
//! ```text
//!  DataSpec ─data::load─▶ [Item] ─Selection─▶ units (item × epoch, shard)
//!                                                │ add_units (new only)
//!                      Store (SQLite / Postgres) ◀──── store thread: claims, group commits
//!                                                │ claim
//!  Engine::run_streaming per unit (concurrency N, one engine, seeds + epoch)
//!        │ events ──▶ candidates (each answer the output could have been)
//!        ▼
//!  Scorer per distinct answer ──▶ ItemResult ──finish──▶ Store
//!                                                │
//!  stats::compute(units) ──▶ Metrics ──▶ CLI summary, compare, report
//! ```
//!
//! **Invariants:**
//! - The eval's id is a hash of what determines its results (workflow and
//!   prompts as run, models, data set and mapping, scorer, epochs), not of
//!   the selection: the same command continues the same eval, `--limit 50`
//!   after `--limit 10` adds 40 items, and shards on other machines compute
//!   the same id.
//! - A unit's result is stored before it counts as done; an interrupted
//!   unit is released, never stored as a result.
//! - Nothing of an item's hidden fields reaches a workflow (see `data`).

pub mod bfcl;
pub mod calibrate;
mod call;
pub mod config;
pub mod data;
pub mod digest;
pub mod html;
pub mod report;
pub mod score;
pub mod stats;
pub mod store;
pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::budget::Limits;
use crate::engine::{CancellationToken, Engine, RunOptions};
use crate::event::{Event, NodeStatus};
use crate::hash::fnv1a;
use crate::summary::RunStatus;
use crate::workflow::Workflow;
use data::{DataSpec, Item, Selection};
use score::{Score, Scorer};
use store::{Counts, EvalRecord, Store, StoreError, Unit, WorkerId};

/// An eval that could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Score(#[from] score::ScoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    /// A model of the workflow could not be opened (exit 4, as for `run`).
    #[error("{0}")]
    Model(String),
}

/// What determines an eval's results; its hash is the eval's id.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    pub workflow: Arc<Workflow>,
    /// The workflow file's text, as run.
    pub workflow_source: String,
    /// `--model NAME=SPEC` overrides (the engine must have them too).
    pub models: BTreeMap<String, String>,
    pub data: DataSpec,
    pub selection: Selection,
    /// `--scorer` as given.
    pub scorer: String,
    pub extract: Option<String>,
    /// Runs per item (seeds offset by the epoch).
    pub epochs: u32,
    /// A name for listings (default: the workflow's). A name given is part
    /// of the id: two names, two evals.
    pub name: Option<String>,
    /// The command line, for the record (stored with its secrets masked).
    pub command: Vec<String>,
    /// Decisions for the workflow's `human_review` nodes. Part of the id:
    /// other decisions, other results.
    pub review: Option<EvalReview>,
}

/// Who decides the edits of `human_review` nodes in an eval (never a
/// terminal).
#[derive(Debug, Clone)]
pub enum EvalReview {
    /// Fixed decisions: `accept-all`, `reject-all` or a decisions file.
    Decisions(crate::workflow::ReviewDecisions),
    /// A simulated reviewer with the item's reference answer in mind
    /// ([`crate::review::ReferenceReviewer`]).
    Reference,
    /// People: each item's reviews go to the reviewer this gives for the
    /// item's id (`redraft eval --review web`: the browser).
    People(ReviewerPerItem),
}

/// Gives the reviewer of one item (by id), for [`EvalReview::People`].
#[derive(Clone)]
pub struct ReviewerPerItem(pub Arc<ReviewerFor>);

/// The reviewer of the item with this id.
pub type ReviewerFor = dyn Fn(&str) -> Arc<dyn crate::review::Reviewer> + Send + Sync;

impl std::fmt::Debug for ReviewerPerItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReviewerPerItem")
    }
}

impl EvalPlan {
    /// The models as run: each declared model's spec, overridden.
    pub fn model_specs(&self) -> BTreeMap<String, String> {
        self.workflow
            .models()
            .iter()
            .map(|m| {
                let spec = self
                    .models
                    .get(&m.name)
                    .cloned()
                    .or_else(|| m.spec.clone())
                    .unwrap_or_else(|| "(supplied by the program)".into());
                (m.name.clone(), spec)
            })
            .collect()
    }

    /// The workflow's input names, which data rows feed.
    fn declared_inputs(&self) -> Vec<&str> {
        self.workflow
            .inputs()
            .iter()
            .map(|i| i.name.as_str())
            .collect()
    }

    /// What determines the eval's results (hashed into its id): the
    /// workflow and prompts as run, the models, every file they read
    /// ([`digest::workflow_files`]), the data set's spec and contents, the
    /// scorer and its files, epochs, reviews and a given name. Secrets in
    /// URLs are masked first: a rotated password is the same eval.
    fn key(&self) -> serde_json::Map<String, Value> {
        let models: BTreeMap<String, String> = self
            .model_specs()
            .into_iter()
            .map(|(k, v)| (k, crate::redact::text(&v).into_owned()))
            .collect();
        let key = serde_json::json!({
            "workflow_source": crate::redact::text(&self.workflow_source),
            "prompts": self.workflow.templates.sources(),
            "models": models,
            "data": self.data,
            "scorer": crate::redact::text(&self.scorer),
            "extract": self.extract,
            "epochs": self.epochs,
        });
        let mut key = match key {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object literal"),
        };
        key.insert(
            "files".into(),
            serde_json::json!(digest::workflow_files(&self.workflow, &self.model_specs())),
        );
        key.insert(
            "data_contents".into(),
            match data::load(&self.data, &self.declared_inputs()) {
                Ok(items) => digest::items(&items).into(),
                Err(e) => format!("unreadable: {e}").into(),
            },
        );
        if let Some(files) = digest::scorer_files(&self.scorer) {
            key.insert("scorer_files".into(), files);
        }
        if let Some(name) = &self.name {
            key.insert("name".into(), name.clone().into());
        }
        // Only when given, so that the ids of evals without reviews stay.
        if let Some(review) = &self.review {
            use crate::workflow::ReviewDecisions as D;
            let v = match review {
                EvalReview::Reference => "reference".to_string(),
                EvalReview::People(_) => "people".to_string(),
                EvalReview::Decisions(D::Ask) => "ask".to_string(),
                EvalReview::Decisions(D::AcceptAll) => "accept-all".to_string(),
                EvalReview::Decisions(D::RejectAll) => "reject-all".to_string(),
                EvalReview::Decisions(D::File(path)) => std::fs::read_to_string(path)
                    .unwrap_or_else(|e| format!("{}: {e}", path.display())),
            };
            key.insert("review".into(), v.into());
        }
        key
    }

    /// What is stored with the eval: its key, the command line, where the
    /// workflow was and the version. Never a secret: specs name the
    /// environment variable that holds an API key, and passwords or keys
    /// in URLs (a store's, an endpoint's) are masked ([`crate::redact`]).
    pub fn meta(&self) -> Value {
        self.id_and_meta().1
    }

    /// [`EvalPlan::id`] and [`EvalPlan::meta`] from one reading of the
    /// data and files.
    pub fn id_and_meta(&self) -> (String, Value) {
        let mut meta = self.key();
        let id = format!(
            "{:016x}",
            fnv1a(Value::Object(meta.clone()).to_string().as_bytes())
        );
        meta.insert(
            "workflow_path".into(),
            serde_json::json!(self.workflow.path().map(|p| p.display().to_string())),
        );
        let command: Vec<String> = self
            .command
            .iter()
            .map(|a| crate::redact::text(a).into_owned())
            .collect();
        meta.insert("command".into(), serde_json::json!(command));
        meta.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        (id, Value::Object(meta))
    }

    /// The eval's id: 16 hex digits of FNV-1a over the canonical JSON of
    /// what determines results.
    pub fn id(&self) -> String {
        self.id_and_meta().0
    }
}

/// Limits for the whole eval: no new unit starts once one is reached
/// (counting what earlier runs of the same eval spent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TotalBudget {
    pub tokens: Option<u64>,
    pub calls: Option<u64>,
    pub cost_usd: Option<f64>,
}

/// How an eval runs (none of this changes its id).
#[derive(Clone)]
pub struct EvalOptions {
    /// Units in flight at once.
    pub concurrency: usize,
    /// Overrides of the workflow's own per-run budget.
    pub item_budget: Limits,
    pub total: TotalBudget,
    /// Stop after more than this many failed units in this run.
    pub max_errors: Option<usize>,
    pub retry_failed: bool,
    /// `(index, count)`: only units whose item id hashes to `index`.
    pub shard: Option<(u32, u32)>,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    pub cancel: CancellationToken,
    /// Keep prompts and replies in the stored events.
    pub log_content: bool,
    /// Start over: the stored eval of the same id, if any, is kept under
    /// another id ([`store::Store::archive_eval`]) and this one begins empty.
    pub fresh: bool,
    /// How units use the engine's response cache (if it has one): each
    /// unit's draws are keyed by its item and epoch.
    pub cache: crate::engine::CacheMode,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            concurrency: 4,
            item_budget: Limits::default(),
            total: TotalBudget::default(),
            max_errors: None,
            retry_failed: false,
            shard: None,
            lease: Duration::from_secs(120),
            cancel: CancellationToken::new(),
            log_content: false,
            fresh: false,
            cache: crate::engine::CacheMode::On,
        }
    }
}

/// How a unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Ran and was scored (also when the run's budget ran out: its best
    /// answer so far is what was scored).
    Done,
    /// The run or its scoring failed; `error` says why.
    Failed,
}

impl ItemStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Done => "done",
            ItemStatus::Failed => "failed",
        }
    }
}

/// One answer the run produced that could have been its output, in order,
/// with the tokens spent up to it: the data of the score-per-round and
/// score-vs-tokens curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub node: String,
    pub round: u32,
    /// Tokens the run had spent when this answer was produced.
    pub tokens: u64,
    pub score: f64,
    pub passed: bool,
    /// Of a node that drew `n` > 1 samples: how many there were and how
    /// many passed (each is scored; `score`/`passed` are the first's, the
    /// answer the output would be). The data of per-round pass@k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<SampleCount>,
    /// The answer is the previous candidate's, unchanged (a revision that
    /// kept it: an RBD judge insisting on its decision).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    /// A guarded loop (`accept`) rejected this revision: the answer stayed
    /// the previous accepted one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejected: bool,
}

/// One verify node's judgement in a run: its confidence (score) and
/// whether the text it judged (its `target`) passes the eval's scorer. The
/// data of how well a verifier's confidence separates right from wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictPoint {
    pub node: String,
    pub round: u32,
    /// The node's raw confidence (before any calibration).
    pub confidence: f64,
    pub passed: bool,
    /// The calibrated confidence, when the node applied a calibration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<f64>,
}

/// Samples of one candidate and how many of them passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleCount {
    pub n: u32,
    pub passed: u32,
}

/// The stored result of one unit.
/// The format of a stored [`ItemResult`]. 1: loop reports and review
/// rounds as untyped JSON (records without a `format` field); 2: typed
/// (the same JSON, checked when read). A result of a newer format is
/// refused, never misread.
pub const RESULT_FORMAT: u32 = 2;

fn format_1() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// [`RESULT_FORMAT`] when written.
    #[serde(default = "format_1")]
    pub format: u32,
    pub item_id: String,
    pub epoch: u32,
    pub status: ItemStatus,
    /// The final output's score.
    pub score: Option<Score>,
    pub output: Option<String>,
    pub candidates: Vec<Candidate>,
    /// Every verify node's judgement, its target scored like an answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<VerdictPoint>,
    /// The run's status (`finished`, `budget_exhausted`, `failed`).
    pub run_status: Option<RunStatus>,
    pub tokens: u64,
    /// Prompt tokens of `tokens` (the rest were generated).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prompt_tokens: u64,
    /// Prompt tokens of `tokens` served from a cache (a reused KV prefix,
    /// or a server's prompt cache) rather than computed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reused_tokens: u64,
    /// Calls of `calls` the response cache served (they spent nothing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_calls: u64,
    /// What the cached replies had cost when they were made (not in `tokens`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
    /// Calls and cache hits per node, when the unit ran with a cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls_by_node: Vec<NodeCalls>,
    pub calls: u64,
    pub cost_usd: f64,
    pub wall_ms: f64,
    pub error: Option<String>,
    /// The run summary (JSON). Stored in a column of its own, like
    /// `events`, and read only when asked for.
    #[serde(skip)]
    pub summary: Option<Value>,
    /// The summary's loop reports and review rounds (what metrics read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loops: Vec<crate::summary::LoopReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<crate::summary::ReviewReport>,
    /// The run's events but the last (`run_finished` repeats the summary).
    /// Stored in a column of their own, read only when asked for (reports):
    /// metrics over many items never parse them.
    #[serde(skip)]
    pub events: Vec<Value>,
    /// Summary and events already serialised by the runner (written as they
    /// are, never parsed back into values on the way to the store).
    #[serde(skip)]
    pub(crate) encoded: Option<(String, String)>,
    pub worker: String,
    /// Unix milliseconds.
    pub finished_at: i64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One node's model calls in a unit, and how many the cache served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCalls {
    pub node: String,
    pub calls: u64,
    pub cached: u64,
}

impl NodeCalls {
    /// Adds `calls` and `cached` to `node`'s entry in `tally` (appended on
    /// first sight, so nodes keep the order they first called in).
    pub(crate) fn add(tally: &mut Vec<NodeCalls>, node: &str, calls: u64, cached: u64) {
        let i = match tally.iter().position(|n| n.node == node) {
            Some(i) => i,
            None => {
                tally.push(NodeCalls {
                    node: node.to_string(),
                    calls: 0,
                    cached: 0,
                });
                tally.len() - 1
            }
        };
        tally[i].calls += calls;
        tally[i].cached += cached;
    }
}

/// Calls and cache hits per node, in the order nodes first called.
fn calls_by_node(events: &[Event]) -> Vec<NodeCalls> {
    let mut out = Vec::new();
    for e in events {
        if let Event::ModelCall(c) = e {
            NodeCalls::add(&mut out, &c.node, 1, u64::from(c.cached));
        }
    }
    out
}

impl ItemResult {
    /// The first answer's correctness (the draft), if any answer was made.
    pub fn first(&self) -> Option<&Candidate> {
        self.candidates.first()
    }
}

/// Running totals of this process's units, for progress and budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Totals {
    pub done: u64,
    pub failed: u64,
    pub passed: u64,
    pub score_sum: f64,
    pub tokens: u64,
    pub calls: u64,
    pub cost_usd: f64,
}

impl Totals {
    fn add(&mut self, r: &ItemResult) {
        match r.status {
            ItemStatus::Done => self.done += 1,
            ItemStatus::Failed => self.failed += 1,
        }
        if let Some(s) = &r.score {
            self.passed += u64::from(s.passed);
            self.score_sum += s.score;
        }
        self.tokens += r.tokens;
        self.calls += r.calls;
        self.cost_usd += r.cost_usd;
    }

    fn over(&self, budget: &TotalBudget, before: &Totals) -> Option<&'static str> {
        let tokens = self.tokens + before.tokens;
        let calls = self.calls + before.calls;
        let cost = self.cost_usd + before.cost_usd;
        if budget.tokens.is_some_and(|t| tokens >= t) {
            Some("tokens")
        } else if budget.calls.is_some_and(|c| calls >= c) {
            Some("calls")
        } else if budget.cost_usd.is_some_and(|c| cost >= c) {
            Some("cost_usd")
        } else {
            None
        }
    }
}

/// Receives progress (the CLI's bar). Called from the runner's task.
pub trait Progress: Send + Sync {
    /// `total` units in the eval, `done` of them finished before this run.
    fn started(&self, _total: u64, _done: u64) {}
    fn finished(&self, _result: &ItemResult, _totals: &Totals) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// Why the runner stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalEnd {
    /// No unit is left to run (some may have failed).
    Done,
    /// The total budget was spent; units remain.
    BudgetSpent,
    /// More units failed than `max_errors` allows.
    TooManyErrors,
    Interrupted,
}

/// What `run` returns.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOutcome {
    pub eval: EvalRecord,
    pub end: EvalEnd,
    /// Units this run finished (done or failed).
    pub ran: Totals,
    pub counts: Counts,
    /// Which limit of the total budget was reached.
    pub budget_limit: Option<&'static str>,
    pub metrics: stats::Metrics,
}

/// The stable shard of an item id among `count`.
pub fn shard_of(item_id: &str, count: u32) -> u32 {
    (fnv1a(item_id.as_bytes()) % u64::from(count.max(1))) as u32
}

/// Parses `--shard I/N`, or the index of a Kubernetes indexed job
/// (`JOB_COMPLETION_INDEX`) or a Slurm array task (`SLURM_ARRAY_TASK_ID`)
/// with `N` given alone (`--shard N`).
pub fn parse_shard(spec: &str, env: impl Fn(&str) -> Option<String>) -> Result<(u32, u32), String> {
    let (index, count) = match spec.split_once('/') {
        Some((i, n)) => (i.trim().to_string(), n.trim().to_string()),
        None => {
            let index = env("JOB_COMPLETION_INDEX")
                .or_else(|| env("SLURM_ARRAY_TASK_ID"))
                .ok_or_else(|| {
                    format!("--shard {spec}: give I/N, or set JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID for the index")
                })?;
            (index, spec.trim().to_string())
        }
    };
    let count: u32 = count.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        format!("--shard {spec}: the shard count `{count}` is not a positive integer")
    })?;
    let index: u32 = index
        .parse()
        .map_err(|_| format!("--shard {spec}: the shard index `{index}` is not a number"))?;
    if index >= count {
        return Err(format!(
            "--shard {spec}: index {index} is not below the count {count} (shards count from 0)"
        ));
    }
    Ok((index, count))
}

/// Loads and selects the items of a plan. An eval that would measure
/// nothing is an error: a data set without items, or a selection that
/// keeps none (`--limit 0`).
pub fn load_items(plan: &EvalPlan) -> Result<Vec<Item>, EvalError> {
    let items = data::load(&plan.data, &plan.declared_inputs())?;
    if items.is_empty() {
        return Err(EvalError::Invalid(format!(
            "data set {}: no items (the file holds no rows); an eval of nothing measures nothing",
            plan.data.source
        )));
    }
    let all = items.len();
    let selected = plan.selection.apply(items)?;
    if selected.is_empty() {
        return Err(EvalError::Invalid(format!(
            "the selection keeps none of the {all} items{}: nothing to measure",
            match plan.selection.limit {
                Some(0) => " (--limit 0)",
                _ => "",
            }
        )));
    }
    Ok(selected)
}

/// Runs (or continues) an eval. Items already finished in the store are
/// not run again; with `retry_failed`, failed ones are.
pub async fn run(
    engine: &Engine,
    plan: &EvalPlan,
    scorer: Arc<Scorer>,
    store: Box<dyn Store>,
    opts: EvalOptions,
    progress: &dyn Progress,
) -> Result<EvalOutcome, EvalError> {
    if plan.epochs == 0 {
        return Err(EvalError::Invalid("--epochs must be at least 1".into()));
    }
    let items = load_items(plan)?;
    if scorer.needs_answer() {
        if let Some(i) = items.iter().find(|i| i.answer.is_none()) {
            return Err(EvalError::Invalid(format!(
                "item `{}` has no reference answer, which the `{}` scorer needs; name the field with --answer",
                i.id,
                scorer.name()
            )));
        }
    }
    let units: Vec<Unit> = items
        .iter()
        .filter(|i| opts.shard.is_none_or(|(k, n)| shard_of(&i.id, n) == k))
        .flat_map(|i| {
            (0..plan.epochs).map(|epoch| Unit {
                item: i.clone(),
                epoch,
            })
        })
        .collect();
    if let (true, Some((k, n))) = (units.is_empty(), opts.shard) {
        return Err(EvalError::Invalid(format!(
            "shard {k}/{n} holds none of the {} selected items: nothing to measure (use fewer shards)",
            items.len()
        )));
    }
    let (id, meta) = plan.id_and_meta();
    let record = EvalRecord {
        id,
        name: plan
            .name
            .clone()
            .unwrap_or_else(|| plan.workflow.name().to_string()),
        workflow: plan.workflow.name().to_string(),
        created_at: store::now_ms(),
        meta,
    };
    let me = WorkerId::this_process();
    let actor = StoreActor::spawn(store);
    let eval = {
        let (record, me) = (record.clone(), me.clone());
        let (retry, fresh) = (opts.retry_failed, opts.fresh);
        actor
            .call(move |s| -> Result<EvalRecord, StoreError> {
                if fresh {
                    s.archive_eval(&record.id)?;
                }
                let eval = s.open_eval(&record)?;
                s.add_units(&eval.id, &units)?;
                if retry {
                    s.reset_failed(&eval.id)?;
                }
                s.release_dead(&eval.id, &me)?;
                Ok(eval)
            })
            .await??
    };
    let id = eval.id.clone();
    let before = {
        let id = id.clone();
        actor.call(move |s| s.spent(&id)).await??
    };
    let counts = {
        let id = id.clone();
        actor.call(move |s| s.counts(&id)).await??
    };
    // A model its spec or settings make unusable (a missing file, an
    // unset variable a header names) would fail every unit the same way:
    // said once, before any unit runs, and only when one is left to run
    // (a finished eval loads no weights). Opened models are kept by the
    // engine, so the first unit does not open them again.
    if counts.pending > 0 {
        match engine.open_models(&plan.workflow).await {
            Err(e @ crate::engine::RunError::Model { .. }) => {
                return Err(EvalError::Model(e.to_string()));
            }
            Err(
                e @ (crate::engine::RunError::UnknownModel { .. }
                | crate::engine::RunError::NoSpec { .. }),
            ) => return Err(EvalError::Invalid(e.to_string())),
            _ => {}
        }
    }
    progress.started(counts.total() as u64, (counts.done + counts.failed) as u64);

    let mut totals = Totals::default();
    let mut end = EvalEnd::Done;
    let mut budget_limit = None;
    {
        let heartbeat = {
            let (actor, id, me, lease) = (actor.clone(), id.clone(), me.clone(), opts.lease);
            let lease_ms = lease.as_millis() as i64;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let (id, me) = (id.clone(), me.clone());
                    let _ = actor.call(move |s| s.renew(&id, &me, lease_ms)).await;
                }
            })
        };
        let shared = Arc::new(UnitContext {
            engine: engine.clone(),
            workflow: plan.workflow.clone(),
            scorer,
            budget: opts.item_budget,
            log_content: opts.log_content,
            cache: opts.cache,
            review: plan.review.clone(),
            worker: me.to_string(),
        });
        let concurrency = opts.concurrency.max(1);
        let mut queue: std::collections::VecDeque<Unit> = Default::default();
        let mut running = tokio::task::JoinSet::new();
        let mut exhausted = false;
        loop {
            // A result the store could not commit stops the eval at once
            // (no more units run for nothing).
            actor.check()?;
            if opts.cancel.is_cancelled() {
                end = EvalEnd::Interrupted;
            } else if let Some(limit) = totals.over(&opts.total, &before) {
                end = EvalEnd::BudgetSpent;
                budget_limit = Some(limit);
            } else if opts.max_errors.is_some_and(|m| totals.failed as usize > m) {
                end = EvalEnd::TooManyErrors;
            }
            let stopping = end != EvalEnd::Done;
            if !stopping && running.len() < concurrency {
                if queue.is_empty() && !exhausted {
                    let want = (concurrency * 2).max(CLAIM_BATCH) - running.len();
                    let (id, me) = (id.clone(), me.clone());
                    let lease_ms = opts.lease.as_millis() as i64;
                    let shard = opts.shard;
                    let claimed = actor
                        .call(move |s| s.claim(&id, &me, want, lease_ms, shard))
                        .await??;
                    exhausted = claimed.is_empty();
                    queue.extend(claimed);
                }
                if let Some(unit) = queue.pop_front() {
                    let ctx = shared.clone();
                    let cancel = opts.cancel.child_token();
                    running.spawn(async move { ctx.run_unit(unit, cancel).await });
                    continue;
                }
            }
            // Wait for a unit to end; none running and none to start: done.
            let Some(joined) = running.join_next().await else {
                break;
            };
            match joined {
                Ok(UnitEnd::Finished(result)) => {
                    totals.add(&result);
                    progress.finished(&result, &totals);
                    actor.finish(id.clone(), *result);
                }
                Ok(UnitEnd::Interrupted(key)) => {
                    let (id, me) = (id.clone(), me.clone());
                    actor.call(move |s| s.release(&id, &me, &[key])).await??;
                }
                Err(join) => {
                    return Err(EvalError::Invalid(format!("an eval task failed: {join}")));
                }
            }
        }
        heartbeat.abort();
        // Give back what was claimed but not started.
        let left: Vec<(String, u32)> = queue.drain(..).map(|u| (u.item.id, u.epoch)).collect();
        if !left.is_empty() {
            let (id2, me2) = (id.clone(), me.clone());
            actor.call(move |s| s.release(&id2, &me2, &left)).await??;
        }
    }
    let (counts, units) = {
        let id = id.clone();
        actor
            .call(move |s| -> Result<_, StoreError> { Ok((s.counts(&id)?, s.units(&id, false)?)) })
            .await??
    };
    actor.check()?;
    // Closes the store (a SQLite store folds its write-ahead log back into
    // the file) before the process may exit.
    actor.close().await?;
    let metrics = stats::compute(&units);
    Ok(EvalOutcome {
        eval,
        end,
        ran: totals,
        counts,
        budget_limit,
        metrics,
    })
}

/// Units claimed at once, at least: one store round trip per batch. A
/// worker that dies holds at most this many (plus its concurrency) until
/// their lease ends or a worker on its host sees it gone.
const CLAIM_BATCH: usize = 32;

/// What a unit needs to run.
struct UnitContext {
    engine: Engine,
    workflow: Arc<Workflow>,
    scorer: Arc<Scorer>,
    budget: Limits,
    log_content: bool,
    cache: crate::engine::CacheMode,
    review: Option<EvalReview>,
    worker: String,
}

enum UnitEnd {
    Finished(Box<ItemResult>),
    Interrupted((String, u32)),
}

impl UnitContext {
    async fn run_unit(&self, unit: Unit, cancel: CancellationToken) -> UnitEnd {
        let started = Instant::now();
        let (review, reviewer) = match &self.review {
            None => (None, None),
            Some(EvalReview::Decisions(d)) => (Some(d.clone()), None),
            Some(EvalReview::Reference) => {
                let reference = unit.item.answer.as_ref().map(text_of).unwrap_or_default();
                let reviewer: Arc<dyn crate::review::Reviewer> =
                    Arc::new(crate::review::ReferenceReviewer { reference });
                (Some(crate::workflow::ReviewDecisions::Ask), Some(reviewer))
            }
            Some(EvalReview::People(per_item)) => (
                Some(crate::workflow::ReviewDecisions::Ask),
                Some((per_item.0)(&unit.item.id)),
            ),
        };
        let opts = RunOptions {
            inputs: unit.item.inputs.clone(),
            budget: self.budget,
            cancel,
            seed_offset: u64::from(unit.epoch),
            log_content: self.log_content,
            review,
            reviewer,
            cache: self.cache,
            cache_unit: Some(format!("{}\u{1f}{}", unit.item.id, unit.epoch)),
            ..RunOptions::default()
        };
        let (mut stream, run) = self.engine.run_streaming(self.workflow.clone(), opts);
        let (summary, events) = tokio::join!(run, async {
            let mut events = Vec::new();
            while let Some(e) = stream.next().await {
                events.push(e);
            }
            events
        });
        let mut result = ItemResult {
            format: RESULT_FORMAT,
            item_id: unit.item.id.clone(),
            epoch: unit.epoch,
            status: ItemStatus::Failed,
            score: None,
            output: None,
            candidates: Vec::new(),
            verdicts: Vec::new(),
            run_status: None,
            tokens: 0,
            prompt_tokens: 0,
            reused_tokens: 0,
            cached_calls: 0,
            cached_tokens: 0,
            calls_by_node: Vec::new(),
            calls: 0,
            cost_usd: 0.0,
            wall_ms: 0.0,
            error: None,
            summary: None,
            loops: Vec::new(),
            reviews: Vec::new(),
            events: Vec::new(),
            encoded: None,
            worker: self.worker.clone(),
            finished_at: 0,
        };
        let summary = match summary {
            Ok(s) => s,
            Err(e) => {
                result.error = Some(e.to_string());
                return UnitEnd::Finished(Box::new(self.stamp(result, started)));
            }
        };
        if summary.status == RunStatus::Interrupted {
            return UnitEnd::Interrupted((unit.item.id, unit.epoch));
        }
        result.run_status = Some(summary.status);
        result.tokens = summary.usage.total_tokens;
        result.prompt_tokens = summary.usage.prompt_tokens;
        result.reused_tokens = summary.usage.reused_tokens;
        result.cached_calls = summary.usage.cached_calls;
        result.cached_tokens = summary.usage.cached_tokens;
        if self.engine.cache().is_some() && self.cache != crate::engine::CacheMode::Off {
            result.calls_by_node = calls_by_node(&events);
        }
        result.calls = summary.usage.calls;
        result.cost_usd = summary.usage.cost_usd;
        result.output = summary.output.as_ref().map(text_of);
        let mut cache: HashMap<String, Score> = HashMap::new();
        let mut scoring_error = None;
        let mut previous: Option<String> = None;
        for Answer {
            node,
            round,
            tokens,
            text,
            samples,
            rejected,
        } in candidates(&self.workflow, &events)
        {
            let kept = previous.as_deref() == Some(text.trim());
            previous = Some(text.trim().to_string());
            let score = match self.score_cached(&mut cache, &unit.item, &text).await {
                Ok(s) => s,
                Err(e) => {
                    scoring_error.get_or_insert(e.to_string());
                    continue;
                }
            };
            let mut count = None;
            if samples.len() > 1 {
                let mut passed = 0;
                for sample in &samples {
                    match self.score_cached(&mut cache, &unit.item, sample).await {
                        Ok(s) => passed += u32::from(s.passed),
                        Err(e) => {
                            scoring_error.get_or_insert(e.to_string());
                        }
                    }
                }
                count = Some(SampleCount {
                    n: samples.len() as u32,
                    passed,
                });
            }
            result.candidates.push(Candidate {
                node,
                round,
                tokens,
                score: score.score,
                passed: score.passed,
                samples: count,
                kept,
                rejected,
            });
        }
        for (node, round, confidence, calibrated, target) in verdicts(&self.workflow, &events) {
            match self.score_cached(&mut cache, &unit.item, &target).await {
                Ok(s) => result.verdicts.push(VerdictPoint {
                    node,
                    round,
                    confidence,
                    passed: s.passed,
                    calibrated,
                }),
                Err(e) => {
                    scoring_error.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(out) = &result.output {
            match self.score_cached(&mut cache, &unit.item, out).await {
                Ok(s) => result.score = Some(s),
                Err(e) => {
                    scoring_error.get_or_insert(e.to_string());
                }
            }
        }
        result.error = summary.error.clone().or(scoring_error);
        result.status = match (summary.status, &result.score) {
            (RunStatus::Failed, _) | (_, None) => ItemStatus::Failed,
            _ => ItemStatus::Done,
        };
        if result.status == ItemStatus::Failed && result.error.is_none() {
            result.error = Some("the run produced no output".into());
        }
        result.loops = summary.loops.clone();
        result.reviews = summary.reviews.clone();
        let kept: Vec<&Event> = events
            .iter()
            .filter(|e| !matches!(e, Event::RunFinished { .. }))
            .collect();
        result.encoded = Some((
            serde_json::to_string(&summary).unwrap_or_else(|_| "null".into()),
            serde_json::to_string(&kept).unwrap_or_else(|_| "[]".into()),
        ));
        UnitEnd::Finished(Box::new(self.stamp(result, started)))
    }

    fn stamp(&self, mut r: ItemResult, started: Instant) -> ItemResult {
        r.wall_ms = started.elapsed().as_secs_f64() * 1e3;
        r.finished_at = store::now_ms();
        r
    }

    async fn score_cached(
        &self,
        cache: &mut HashMap<String, Score>,
        item: &Item,
        text: &str,
    ) -> Result<Score, score::ScoreError> {
        if let Some(s) = cache.get(text) {
            return Ok(s.clone());
        }
        let s = self.scorer.score(item, text).await?;
        cache.insert(text.to_string(), s.clone());
        Ok(s)
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One answer the output could have been.
struct Answer {
    node: String,
    round: u32,
    /// Tokens the run had spent up to it.
    tokens: u64,
    text: String,
    /// All its samples' texts, when the node drew several.
    samples: Vec<String>,
    /// A guarded loop rejected it (the loop kept the previous answer).
    rejected: bool,
}

/// Every answer the run's output could have been (a finished node among
/// `output.from`, read at `output.field`), in order, with the tokens spent
/// up to it.
fn candidates(wf: &Workflow, events: &[Event]) -> Vec<Answer> {
    let from: Vec<&str> = wf
        .output()
        .from
        .iter()
        .map(|&i| wf.nodes()[i].id.as_str())
        .collect();
    let mut tokens = 0;
    let mut out = Vec::new();
    for e in events {
        match e {
            Event::ModelCall(c) => tokens += c.prompt_tokens + c.completion_tokens,
            Event::NodeFinished {
                node,
                round,
                status: NodeStatus::Done,
                output: Some(value),
                ..
            } if from.contains(&node.as_str()) => {
                if let Some(v) = wf.output().read(value) {
                    let samples = match value.get("samples") {
                        Some(Value::Array(all)) => all.iter().map(text_of).collect(),
                        _ => Vec::new(),
                    };
                    out.push(Answer {
                        node: node.clone(),
                        round: *round,
                        tokens,
                        text: text_of(&v),
                        samples,
                        rejected: false,
                    });
                }
            }
            // The decision comes after the revision it judges.
            Event::Revision {
                node,
                accepted: false,
                ..
            } => {
                if let Some(a) = out.iter_mut().rev().find(|a| a.node == *node) {
                    a.rejected = true;
                }
            }
            _ => {}
        }
    }
    out
}

/// Every verify node's judgement in the run: node, round, raw confidence,
/// calibrated confidence (when the node has a calibration) and the text
/// it judged.
fn verdicts(wf: &Workflow, events: &[Event]) -> Vec<(String, u32, f64, Option<f64>, String)> {
    let verify: Vec<&str> = wf
        .nodes()
        .iter()
        .filter(|n| matches!(n.kind, crate::workflow::NodeKind::Verify(_)))
        .map(|n| n.id.as_str())
        .collect();
    events
        .iter()
        .filter_map(|e| match e {
            Event::NodeFinished {
                node,
                round,
                status: NodeStatus::Done,
                output: Some(value),
                ..
            } if verify.contains(&node.as_str()) => {
                let score = value.get("score")?.as_f64()?;
                let (raw, calibrated) = match value.get("raw_score").and_then(Value::as_f64) {
                    Some(raw) => (raw, Some(score)),
                    None => (score, None),
                };
                Some((
                    node.clone(),
                    *round,
                    raw,
                    calibrated,
                    text_of(value.get("target")?),
                ))
            }
            _ => None,
        })
        .collect()
}

/// Work for the store thread that answers through its own channel.
type StoreCall = Box<dyn FnOnce(&mut dyn Store) + Send>;

enum Command {
    Finish(String, Box<ItemResult>),
    Call(StoreCall),
    /// Drop the store and end the thread.
    Close,
}

/// The store on a thread of its own: blocking database calls never run on
/// the async runtime, and results queued while a commit runs are committed
/// together (group commit).
#[derive(Clone)]
struct StoreActor {
    tx: std::sync::mpsc::Sender<Command>,
    /// The first error of a background commit.
    failed: Arc<Mutex<Option<StoreError>>>,
    /// Resolved when the thread has dropped the store.
    done: Arc<Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>,
}

impl StoreActor {
    fn spawn(mut store: Box<dyn Store>) -> StoreActor {
        let (tx, rx) = std::sync::mpsc::channel::<Command>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let failed: Arc<Mutex<Option<StoreError>>> = Arc::default();
        let slot = failed.clone();
        std::thread::Builder::new()
            .name("redraft-store".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch: Vec<Command> = vec![first];
                    batch.extend(rx.try_iter());
                    let mut finishes: BTreeMap<String, Vec<ItemResult>> = BTreeMap::new();
                    let mut calls = Vec::new();
                    let mut close = false;
                    for c in batch {
                        match c {
                            Command::Finish(eval, r) => finishes.entry(eval).or_default().push(*r),
                            Command::Call(f) => calls.push(f),
                            Command::Close => close = true,
                        }
                    }
                    for (eval, results) in finishes {
                        if let Err(e) = store.finish(&eval, &results) {
                            slot.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                    for f in calls {
                        f(&mut *store);
                    }
                    if close {
                        break;
                    }
                }
                drop(store);
                let _ = done_tx.send(());
            })
            .expect("spawning the store thread");
        StoreActor {
            tx,
            failed,
            done: Arc::new(Mutex::new(Some(done_rx))),
        }
    }

    /// Commits what is queued, closes the store and waits for its thread.
    async fn close(&self) -> Result<(), StoreError> {
        let _ = self.tx.send(Command::Close);
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(done) = done {
            let _ = done.await;
        }
        self.check()
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        self.check()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.tx.send(Command::Call(Box::new(move |s| {
            let _ = tx.send(f(s));
        })));
        let gone = || StoreError::Db {
            store: "(store thread)".into(),
            message: "the store thread stopped".into(),
        };
        sent.map_err(|_| gone())?;
        let out = rx.await.map_err(|_| gone())?;
        self.check()?;
        Ok(out)
    }

    fn finish(&self, eval: String, result: ItemResult) {
        let _ = self.tx.send(Command::Finish(eval, Box::new(result)));
    }

    /// Fails with the first background commit error, if one happened.
    fn check(&self) -> Result<(), StoreError> {
        match self.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
