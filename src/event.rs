//! Run events: the contract between the engine and everything that observes
//! a run (the CLI's human output, the JSONL log, metrics, library users).
//!
//! **Invariant:** the set of events is closed and each serialises to one JSON
//! object with an `event` tag. Adding a field is compatible; renaming one is
//! not.

use serde::Serialize;

use crate::budget::{Exhausted, Warning};
use crate::summary::RunSummary;
pub use crate::summary::StopReason;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    RunStarted {
        workflow: String,
        inputs: serde_json::Value,
    },
    NodeStarted {
        node: String,
        kind: &'static str,
        round: u32,
    },
    NodeFinished {
        node: String,
        round: u32,
        status: NodeStatus,
        elapsed_ms: f64,
        /// The node's output (omitted for skipped nodes).
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<std::sync::Arc<serde_json::Value>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    ModelCall(ModelCallEvent),
    /// A reply that did not satisfy the node's JSON Schema (raw text kept).
    InvalidOutput {
        node: String,
        round: u32,
        attempt: u32,
        error: String,
        raw: String,
    },
    Verdict {
        node: String,
        round: u32,
        passed: bool,
        /// The confidence (calibrated when the node has a calibration).
        score: f64,
        /// The score before calibration, when the node has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        raw_score: Option<f64>,
        /// Where a judge's confidence came from: `logprobs` or `verbalized`.
        #[serde(skip_serializing_if = "Option::is_none")]
        confidence_source: Option<&'static str>,
    },
    LoopRound {
        #[serde(rename = "loop")]
        loop_id: String,
        round: u32,
    },
    /// A guarded loop (`accept`) decided on a revision: `node` wrote it,
    /// the loop head judged it with `score`; `current_score` is the answer
    /// it would replace. A rejected revision leaves the answer as it was.
    Revision {
        #[serde(rename = "loop")]
        loop_id: String,
        round: u32,
        node: String,
        accepted: bool,
        score: f64,
        current_score: f64,
        /// Whether its final answer differs from the current one (when the
        /// loop knows how to find the final answer).
        answer_changed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    LoopFinished {
        #[serde(rename = "loop")]
        loop_id: String,
        rounds: u32,
        reason: StopReason,
    },
    BudgetWarning(Warning),
    BudgetExhausted(Exhausted),
    /// A `human_review` node's decisions: `depth` counts its reviews.
    Review {
        node: String,
        round: u32,
        depth: u32,
        proposed: u32,
        accepted: u32,
    },
    RunFinished {
        summary: std::sync::Arc<RunSummary>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCallEvent {
    pub node: String,
    pub round: u32,
    /// The workflow's name for the model.
    pub model: String,
    /// The backend's model id.
    pub model_id: String,
    /// Repair attempt (invalid structured output fed back), from 0.
    pub attempt: u32,
    /// Transport retry of this attempt, from 0.
    pub retry: u32,
    pub n: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from a cache (reused KV prefix), part of `prompt_tokens`.
    pub reused_tokens: u64,
    /// The response cache served the call: nothing was sent, `prompt_tokens`,
    /// `completion_tokens` and `cost_usd` are 0, and `cached_tokens` says
    /// what the reply had cost when it was made.
    pub cached: bool,
    /// Tokens (prompt and completion) of the cached reply, not spent again.
    pub cached_tokens: u64,
    pub usage_estimated: bool,
    pub latency_ms: f64,
    pub cost_usd: f64,
    /// How the call ended. Every request that may have reached the server
    /// is a call, also one cut by a wall-time limit or cancelled.
    pub outcome: CallOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The rendered messages (`[{role, content}]`) or texts to embed, with
    /// `RunOptions::log_content` (`--log-content`) only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<serde_json::Value>,
    /// The reply texts (one per sample), with `log_content` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Vec<String>>,
}

/// How a model call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallOutcome {
    /// The backend answered.
    Ok,
    /// The backend (or a layer under the budget, such as a timeout) failed.
    Error,
    /// A wall-time limit cut the call after the request was sent; its prompt
    /// tokens are estimated (`usage_estimated`).
    Cut,
    /// The run was cancelled (Ctrl-C, a cancellation token) while the call
    /// was in flight; its prompt tokens are estimated.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeStatus {
    Done,
    Skipped,
    Failed,
}

/// Receives events. Must be cheap and must not fail: a recorder that can
/// fail (a file) reports its own errors later.
pub trait Recorder: Send + Sync {
    fn record(&self, event: &Event);
}

/// Sends every event to several recorders in order.
#[derive(Default)]
pub struct Fanout(pub Vec<Box<dyn Recorder>>);

impl Recorder for Fanout {
    fn record(&self, event: &Event) {
        for r in &self.0 {
            r.record(event);
        }
    }
}

/// Discards events.
pub struct NoRecorder;

impl Recorder for NoRecorder {
    fn record(&self, _: &Event) {}
}

/// Collects events in memory (tests, library users).
#[derive(Default)]
pub struct Collect(pub std::sync::Mutex<Vec<Event>>);

impl Collect {
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Recorder for Collect {
    fn record(&self, event: &Event) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}

impl<R: Recorder + ?Sized> Recorder for std::sync::Arc<R> {
    fn record(&self, event: &Event) {
        (**self).record(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_read_the_same_in_json_and_on_the_terminal() {
        use StopReason::*;
        for r in [Exited, MaxRounds, Until, Converged, Budget, RunStopped] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.to_string());
        }
    }
}
