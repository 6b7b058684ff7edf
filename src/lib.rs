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
//! The public surface is what `examples/` and an embedder need: running
//! workflows, supplying models, reading what a run did, and evals. Each
//! type has one path (its module's), plus the root re-exports below for the
//! few every embedder uses. The rest is `pub(crate)`: it may change freely.
//!
//! Public:
//! - [`workflow`]: load and check workflow files (YAML → tree → raw →
//!   [`workflow::Workflow`]); [`workflow::keys`] are the format's keys.
//! - [`engine`]: [`Engine`], [`RunOptions`], [`EventStream`]; [`event`]:
//!   what a run reports as it goes; [`summary`]: what it reports at the end
//!   ([`RunSummary`], loop reports, typed failures); [`metrics`]: loop
//!   metrics folded from events.
//! - [`backend`]: the [`LanguageModel`] trait, provider-neutral requests and
//!   the backends (scripted, cassettes, OpenAI-compatible, llama.cpp);
//!   [`layer`]: retry, timeout and rate limits as wrappers around a model.
//! - [`budget`]: limits and the meter.
//! - [`cache`]: the response cache (SQLite or PostgreSQL), so reruns pay
//!   only for calls that changed ([`Engine::with_cache`], [`RunOptions::cache`]).
//! - [`answer`]: reading the answer out of a text (numbers, patterns,
//!   mentions, yes/no, JSON): one meaning for checks, votes, guards and scorers.
//! - [`review`]: R3 edits (diffs with spans and intents), [`Reviewer`].
//! - [`eval`]: a workflow over a data set: settings ([`eval::config`]),
//!   loaders, scorers, the results store (SQLite, PostgreSQL), metrics,
//!   comparisons, verifier calibration and the HTML report (`docs/eval.md`);
//!   [`calibration`]: a verifier's fitted confidence map.
//! - [`bridge`]: PromptBridge, calibrating and migrating prompts between models.
//! - [`methods`]: the shipped methods; [`graph`]: Mermaid and DOT renderings.
//! - [`yaml`], [`diagnostic`]: the spanned YAML tree and error reports.
//! - [`extract`]: code blocks and Python functions out of replies;
//!   [`sandbox`]: running untrusted programs (bubblewrap, rlimits).
//! - [`redact`]: passwords and keys out of URLs, for a program that prints
//!   its own store or model specs.
//! - `otel` (feature `otel`): OTLP export of the spans.
//!
//! Inside the crate only: `template` (minijinja, strict and sandboxed),
//! `similarity` (cosine, BLEU-4, TF-IDF), `cluster` (seeded k-means),
//! `units` (durations and sizes), `sqlite` (WAL set-up both SQLite users share), `hash` (FNV-1a, the one stable hash),
//! `modeljson` (JSON out of model replies), and `cli` (the `redraft`
//! command, feature `cli`; public only for the binary and its tests).

pub mod answer;
pub mod backend;
pub mod bridge;
pub mod budget;
pub mod cache;
pub mod calibration;
/// The `redraft` command (feature `cli`, on by default); not a library API.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
pub(crate) mod cluster;
pub mod diagnostic;
pub mod engine;
pub mod eval;
pub mod event;
pub mod extract;
pub mod file;
pub mod graph;
pub(crate) mod hash;
pub mod layer;
pub mod methods;
pub mod metrics;
pub(crate) mod modeljson;
#[cfg(feature = "otel")]
pub mod otel;
pub mod redact;
pub mod review;
pub mod sandbox;
pub mod similarity;
pub(crate) mod sqlite;
pub mod summary;
pub(crate) mod template;
pub(crate) mod units;
#[cfg(feature = "view")]
pub mod view;
pub mod workflow;
pub mod yaml;

pub use backend::LanguageModel;
pub use engine::{CancellationToken, Engine, EventStream, RunError, RunOptions};
pub use event::{Event, Recorder};
pub use review::Reviewer;
pub use summary::{FailureCause, RunFailure, RunStatus, RunSummary};
pub use workflow::Workflow;
