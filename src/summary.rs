//! What a run reports at the end: the summary, loop reports and failures.
//! Data only: `metrics` computes loop metrics and folds events into usage,
//! `event` carries the summary in `run_finished`. Imports neither.

use serde::{Deserialize, Serialize};

use crate::budget::{Exhausted, ScopeReport};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStatus {
    Finished,
    BudgetExhausted,
    Interrupted,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct UsageTotals {
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens served from a cache (a reused KV prefix, or the
    /// server's prompt cache), part of `prompt_tokens`.
    pub reused_tokens: u64,
    /// Calls the response cache served, part of `calls`: they spent no
    /// tokens and cost nothing.
    pub cached_calls: u64,
    /// What the cached replies had cost when they were made (not part of
    /// the token counts above, which are what this run spent).
    pub cached_tokens: u64,
    pub cost_usd: f64,
    /// Some call's usage was estimated, not reported by the backend.
    pub estimated: bool,
}

/// What one pass through a loop body did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    /// Hash of the round's configuration (see module docs).
    #[serde(skip)]
    pub config: Option<u64>,
    pub win: bool,
    /// The verdict's score in this round (the last verdict, for a round with
    /// several): a verifier's mean over its checks, a judge's confidence, a
    /// test pass rate. `None` when no verdict was given.
    pub score: Option<f64>,
    pub tokens: u64,
    /// Guarded loops (`accept`): whether the round's revision was accepted
    /// (`None` in round 1, which judges the draft, and in unguarded loops).
    /// A rejected round records the answer the loop kept (score, config,
    /// win), and the revision's own score in `revision_score`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopReport {
    #[serde(rename = "loop")]
    pub loop_id: String,
    pub rounds: u32,
    pub stop_reason: StopReason,
    pub changes: u32,
    pub wins: u32,
    pub overcorrection_risk_rate: Option<f64>,
    pub correction_success_rate: f64,
    pub improvement_slope: f64,
    pub over_budget_ratio: Option<f64>,
    /// Revisions a guarded loop (`accept`) accepted and rejected; absent
    /// when no revision was judged by a rule (unguarded loops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<u32>,
    pub per_round: Vec<RoundRecord>,
}

/// Why a loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// The body took no back edge (a condition routed around it).
    Exited,
    MaxRounds,
    /// The `until` condition became true.
    Until,
    Converged,
    Budget,
    /// The run stopped (budget, failure, cancellation) inside the loop.
    RunStopped,
}

impl StopReason {
    /// The name used in JSON and in human output.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Exited => "exited",
            StopReason::MaxRounds => "max_rounds",
            StopReason::Until => "until",
            StopReason::Converged => "converged",
            StopReason::Budget => "budget",
            StopReason::RunStopped => "run_stopped",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the returned output came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputSource {
    pub node: String,
    pub round: u32,
    /// The verdict attached to it, if any verify node judged it.
    pub passed: Option<bool>,
    pub score: Option<f64>,
}

/// Everything a run reports at the end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub workflow: String,
    pub status: RunStatus,
    /// Whether the returned output passed verification; `None` when the
    /// workflow has no verify node.
    pub verified: Option<bool>,
    pub output: Option<serde_json::Value>,
    pub output_source: Option<OutputSource>,
    pub usage: UsageTotals,
    pub wall_ms: f64,
    pub budgets: Vec<ScopeReport>,
    pub exhausted: Option<Exhausted>,
    pub loops: Vec<LoopReport>,
    /// Edits proposed and accepted at each `human_review` round (R3).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<ReviewReport>,
    pub node_runs: Vec<(String, u32)>,
    pub error: Option<String>,
    /// The class of failure when `status` is `failed`.
    pub failure: Option<FailureKind>,
    /// The failure, typed: the node it happened in and what went wrong
    /// (for a backend error, its kind: transient, context length, ...).
    pub cause: Option<RunFailure>,
}

/// Why a run failed, typed so that callers can act on it without parsing
/// `error`'s text.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RunFailure {
    /// The node that failed; `None` for failures of the run itself (an
    /// edge or loop condition, the output field).
    pub node: Option<String>,
    pub kind: FailureKind,
    pub cause: FailureCause,
}

impl RunFailure {
    /// A condition or expression of the run (not of one node) failed.
    pub(crate) fn template() -> RunFailure {
        RunFailure {
            node: None,
            kind: FailureKind::Workflow,
            cause: FailureCause::Template,
        }
    }
}

/// What went wrong, by kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureCause {
    /// A model call failed after its retries; `error` says what kind of
    /// failure it was (`transient`, `permanent`, `context_length`, ...).
    Backend {
        backend: String,
        error: crate::backend::ErrorKind,
    },
    /// The reply stayed invalid (schema) after the repair attempts.
    InvalidOutput,
    /// A template or condition failed to render or evaluate.
    Template,
    /// Data a node read was not what it needs (a missing field, a bad
    /// test list, a tool or sandbox failure).
    Data,
    /// A node-level budget stopped a node the run could not do without.
    Budget,
    /// The workflow's `output.field` is not in the chosen output.
    MissingOutput,
}

/// The class of a failed run, for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// A backend call failed or returned unusable output.
    Backend,
    /// A template, condition or data error in the workflow.
    Workflow,
}

/// One review round: R3's acceptance rate is `accepted / proposed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewReport {
    pub node: String,
    pub depth: u32,
    pub proposed: u32,
    pub accepted: u32,
    /// `None` when nothing was proposed.
    pub acceptance_rate: Option<f64>,
}
