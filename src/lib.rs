//! # redraft
//!
//! Agentic iterative refinement as a product: workflows are YAML graphs of
//! nodes that generate, critique, verify and revise with language models,
//! looping until a stop rule holds, under budgets that are enforced before
//! every model call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let wf = Arc::new(redraft::workflow::load("workflows/self-refine.yaml".as_ref())?);
//! let summary = redraft::Engine::new().run(wf, redraft::RunOptions::default()).await?;
//! println!("{:?}", summary.output);
//! # Ok(()) }
//! ```
//!
//! For a program that embeds redraft: [`Engine::run_streaming`] streams the
//! events while a run goes on, [`backend::model_fn`] turns an async function
//! into a model (a workflow may declare a model without `spec` for the
//! program to supply), [`RunOptions::reviewer`] decides human-review nodes,
//! and [`RunSummary::cause`] says typed why a run failed. Build with
//! `default-features = false` to leave out the CLI's dependencies; feature
//! `otel` exports traces ([`otel`], `docs/observability.md`).
//!
//! ## Layout
//! - [`answer`]: reading the answer out of a text (numbers, patterns,
//!   mentions, yes/no, JSON): one meaning for checks, votes, guards and scorers.
//! - [`workflow`]: load and check workflow files (YAML → tree → raw → [`workflow::Workflow`]).
//! - [`yaml`], [`diagnostic`]: the spanned YAML tree and the error reports.
//! - [`template`]: minijinja prompts and conditions, strict and sandboxed.
//! - [`backend`]: the [`LanguageModel`] trait and backends (scripted).
//! - [`engine`]: the scheduler that runs a workflow; [`event`]: what it reports.
//! - [`budget`]: limits and the meter; [`summary`]: what a run reports;
//!   [`metrics`]: loop metrics and usage folded from events.
//! - [`extract`], [`cluster`]: code blocks and Python functions; seeded k-means.
//! - [`review`]: R3 edits (diffs with spans and intents) and applying them.
//! - [`sandbox`]: running untrusted programs (bubblewrap namespaces, rlimits).
//! - [`similarity`]: cosine, BLEU-4, lexical TF-IDF embeddings.
//! - [`units`]: durations and sizes as workflows write them.
//! - [`hash`]: FNV-1a, the one stable hash (ids, shards, cassette keys).
//! - [`redact`]: passwords and keys out of URLs and command lines, before
//!   anything is printed or stored.
//! - [`eval`]: a workflow over a data set: loaders, scorers, the results
//!   store (SQLite, PostgreSQL), metrics, comparisons and the HTML report
//!   (`docs/eval.md`).
//! - [`graph`]: Mermaid and DOT renderings; `cli`: the `redraft` command.

pub mod answer;
pub mod backend;
pub mod bridge;
pub mod budget;
pub mod calibration;
/// The `redraft` command (feature `cli`, on by default); not a library API.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
pub mod cluster;
pub mod diagnostic;
pub mod engine;
pub mod eval;
pub mod event;
pub mod extract;
pub mod graph;
pub mod hash;
pub mod layer;
pub mod methods;
pub mod metrics;
pub mod modeljson;
#[cfg(feature = "otel")]
pub mod otel;
pub mod redact;
pub mod review;
pub mod sandbox;
pub mod similarity;
pub mod summary;
pub mod template;
pub mod units;
pub mod workflow;
pub mod yaml;

pub use backend::LanguageModel;
pub use engine::{CancellationToken, Engine, EventStream, RunError, RunOptions};
pub use event::{Event, Recorder};
pub use review::Reviewer;
pub use summary::{FailureCause, RunFailure, RunStatus, RunSummary};
pub use workflow::Workflow;
