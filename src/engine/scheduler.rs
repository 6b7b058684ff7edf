//! The scheduler: dataflow over forward edges, rounds over loop back edges.
//!
//! - A node is *ready* when every incoming forward edge is resolved and at
//!   least one fired; when all resolved and none fired it is *skipped*, and
//!   the skip propagates (dead-path elimination).
//! - An edge leaving an active loop is evaluated each time its source runs
//!   but stays unresolved while the loop may iterate; when the loop stops,
//!   its latest evaluation decides (fired, or skipped if it never fired or
//!   its last evaluation was false). So a node after a loop runs once, on
//!   the loop's final state.
//! - A loop round ends when no body node is ready or running. If the back
//!   edge's source finished in that round and no stop rule holds, the body is
//!   reset (outputs kept, visible as the previous round's) and the head runs
//!   again with round + 1.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
// tokio's clock: run and call times follow paused time in tests.
use tokio::time::Instant;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use minijinja::Value;
use tracing::Instrument as _;

use super::nodes::Task;
use super::state::{NodeOutput, NodeScope, ScopeData, Verdict};
use super::{CancellationToken, NodeError, Shared};
use crate::budget::{Exhausted, Scope};
use crate::event::{Event, NodeStatus, StopReason};
use crate::summary::{
    FailureCause, FailureKind, LoopReport, OutputSource, RoundRecord, RunFailure, RunStatus,
    RunSummary,
};
use crate::workflow::AcceptRule;
use crate::workflow::Selection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Pending,
    Ready,
    Running,
    Done,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Es {
    Unresolved,
    Fired,
    Skipped,
}

#[derive(Debug, Default)]
struct LoopRt {
    active: bool,
    round: u32,
    back_requested: bool,
    budget_hit: bool,
    records: Vec<RoundRecord>,
    round_tokens: u64,
    round_config: Option<u64>,
    round_win: bool,
    round_score: Option<f64>,
    /// The round's win by the loop's `metrics.gold`, when it has one (the
    /// verifier's `round_win` still decides how the loop stops).
    round_gold_win: Option<bool>,
    best_score: Option<f64>,
    stale: u32,
    /// Guarded loops: the answer the loop holds (the last accepted one).
    current: Option<Current>,
    /// The last rejected revision, until a revision is accepted.
    rejected: Option<Rejection>,
    rejections: u32,
    round_accepted: Option<bool>,
    round_revision_score: Option<f64>,
}

/// The answer a guarded loop holds: the head's verdict on it, and the
/// back edge source's output that wrote it (`None`: the draft).
#[derive(Debug, Clone)]
struct Current {
    head: Arc<NodeOutput>,
    from: Option<Arc<NodeOutput>>,
    score: f64,
    passed: bool,
    answer: Option<String>,
    text: String,
}

#[derive(Debug, Clone)]
struct Rejection {
    round: u32,
    reason: String,
    score: f64,
    answer: Option<String>,
    text: String,
}

impl LoopRt {
    /// Closes the current round's record; `latest` hashes the latest
    /// candidate, the configuration when no verify node judged one.
    fn record_round(&mut self, latest: Option<u64>) {
        self.records.push(RoundRecord {
            round: self.round,
            config: self.round_config.or(latest),
            win: self.round_gold_win.unwrap_or(self.round_win),
            score: self.round_score,
            tokens: self.round_tokens,
            accepted: self.round_accepted,
            revision_score: self.round_revision_score,
        });
    }
}

struct Candidate {
    node: usize,
    round: u32,
    output: Arc<NodeOutput>,
    passed: Option<bool>,
    score: Option<f64>,
    /// A revision a guarded loop rejected: never the artifact or the output.
    rejected: bool,
}

enum Stop {
    Budget(Exhausted),
    Failed(RunFailure, String),
    Interrupted,
}

type Finished = (usize, u32, Result<NodeOutput, NodeError>, Instant);

pub(crate) struct Run {
    sh: Arc<Shared>,
    inputs: Value,
    inputs_json: serde_json::Value,
    status: Vec<St>,
    edges: Vec<Es>,
    /// For edges leaving an active loop: whether their latest evaluation fired.
    exit_fired: Vec<bool>,
    outputs: Vec<Option<Arc<NodeOutput>>>,
    /// Earlier outputs of each node, as template lists.
    history: Vec<Value>,
    /// Outputs a guarded loop put back after a rejection: already in the
    /// history, so not added to it again when the node runs next.
    restored: Vec<bool>,
    runs: Vec<u32>,
    loops: Vec<LoopRt>,
    reports: Vec<LoopReport>,
    candidates: Vec<Candidate>,
    ready: VecDeque<usize>,
    snapshot: Option<Arc<ScopeData>>,
    stop: Option<Stop>,
    started: Instant,
}

impl Run {
    pub fn new(sh: Arc<Shared>, inputs: serde_json::Map<String, serde_json::Value>) -> Run {
        let wf = &sh.wf;
        let (n, e, l) = (wf.nodes.len(), wf.edges.len(), wf.loops.len());
        let inputs_json = serde_json::Value::Object(inputs);
        Run {
            inputs: super::state::json_value(&inputs_json),
            inputs_json,
            status: vec![St::Pending; n],
            edges: vec![Es::Unresolved; e],
            exit_fired: vec![false; e],
            outputs: vec![None; n],
            history: vec![Value::from(Vec::<Value>::new()); n],
            restored: vec![false; n],
            runs: vec![0; n],
            loops: (0..l)
                .map(|_| LoopRt {
                    round: 1,
                    ..LoopRt::default()
                })
                .collect(),
            reports: Vec::new(),
            candidates: Vec::new(),
            ready: VecDeque::new(),
            snapshot: None,
            stop: None,
            started: Instant::now(),
            sh,
        }
    }

    pub async fn execute(mut self, cancel: CancellationToken) -> RunSummary {
        let sh = self.sh.clone();
        sh.emit(Event::RunStarted {
            workflow: sh.wf.name.clone(),
            inputs: self.inputs_json.clone(),
        });
        for &s in &sh.wf.topology.starts {
            self.status[s] = St::Ready;
            self.ready.push_back(s);
        }
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Finished>> = FuturesUnordered::new();
        loop {
            if self.stop.is_none() {
                while let Some(node) = self.ready.pop_front() {
                    in_flight.push(self.start(node));
                }
            }
            // After a budget stop, calls already in flight finish (their
            // cost is reserved), so their results are not thrown away.
            if in_flight.is_empty()
                || matches!(self.stop, Some(Stop::Failed(..) | Stop::Interrupted))
            {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.stop = Some(Stop::Interrupted);
                    break;
                }
                Some((node, round, result, started)) = in_flight.next() => {
                    self.finish(node, round, result, started);
                }
            }
        }
        drop(in_flight);
        self.summary()
    }

    fn round_of(&self, node: usize) -> u32 {
        self.sh.wf.topology.loops_of[node]
            .first()
            .map_or(1, |&l| self.loops[l].round)
    }

    fn loop_info(&self, node: usize) -> Option<Value> {
        let &li = self.sh.wf.topology.loops_of[node].first()?;
        let spec = &self.sh.wf.loops[li];
        let round = self.loops[li].round;
        let l = &self.loops[li];
        let current = l.current.as_ref().map(|c| {
            minijinja::context! {
                score => c.score,
                passed => c.passed,
                answer => c.answer.as_deref(),
                text => c.text.as_str(),
            }
        });
        let rejected = l.rejected.as_ref().map(|r| {
            minijinja::context! {
                round => r.round,
                reason => r.reason.as_str(),
                score => r.score,
                answer => r.answer.as_deref(),
                text => r.text.as_str(),
            }
        });
        Some(minijinja::context! {
            id => spec.id.as_str(),
            round => round,
            max_rounds => spec.max_rounds,
            last => round >= spec.max_rounds,
            current => current,
            rejected => rejected,
            rejections => l.rejections,
        })
    }

    fn data(&mut self) -> Arc<ScopeData> {
        if let Some(d) = &self.snapshot {
            return d.clone();
        }
        let d = Arc::new(ScopeData {
            names: self.sh.names.clone(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            history: self.history.clone(),
            artifact: self.judged().map(|c| c.output.clone()),
        });
        self.snapshot = Some(d.clone());
        d
    }

    fn scope(&mut self, node: usize) -> Value {
        NodeScope {
            data: self.data(),
            round: self.round_of(node),
            loop_info: self.loop_info(node),
            extra: None,
        }
        .into_value()
    }

    fn start(&mut self, node: usize) -> BoxFuture<'static, Finished> {
        let sh = self.sh.clone();
        let wf = &sh.wf;
        for &li in &wf.topology.loops_of[node] {
            if wf.loops[li].to == node && !self.loops[li].active {
                self.loops[li].active = true;
                sh.emit(Event::LoopRound {
                    loop_id: wf.loops[li].id.clone(),
                    round: self.loops[li].round,
                });
            }
        }
        self.status[node] = St::Running;
        let round = self.round_of(node);
        sh.emit(Event::NodeStarted {
            node: wf.nodes[node].id.clone(),
            kind: wf.nodes[node].kind.name(),
            round,
        });
        let mut scopes = Vec::with_capacity(2 + wf.topology.loops_of[node].len());
        scopes.push(0);
        scopes.extend(
            wf.topology.loops_of[node]
                .iter()
                .map(|&l| 1 + l)
                .filter(|&i| !wf.loops[i - 1].budget.is_unlimited()),
        );
        if !wf.nodes[node].budget.is_unlimited() {
            scopes.push(1 + wf.loops.len() + node);
        }
        let task = Task {
            shared: sh.clone(),
            node,
            round,
            data: self.data(),
            loop_info: self.loop_info(node),
            scopes,
        };
        let started = Instant::now();
        let span = tracing::info_span!(
            "redraft.node",
            redraft.node = %wf.nodes[node].id,
            redraft.kind = wf.nodes[node].kind.name(),
            redraft.round = round,
        );
        Box::pin(async move { (node, round, task.run().await, started) }.instrument(span))
    }

    fn finish(
        &mut self,
        node: usize,
        round: u32,
        result: Result<NodeOutput, NodeError>,
        started: Instant,
    ) {
        let sh = self.sh.clone();
        let wf = &sh.wf;
        let id = wf.nodes[node].id.clone();
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        if !matches!(result, Err(NodeError::Budget(_))) {
            self.runs[node] += 1;
        }
        match result {
            Ok(out) => {
                sh.emit(Event::NodeFinished {
                    node: id,
                    round,
                    status: NodeStatus::Done,
                    elapsed_ms,
                    output: Some(out.json.clone()),
                    error: None,
                });
                self.record_output(node, round, out);
                if self.stop.is_some() {
                    return;
                }
                self.resolve_outgoing(node);
                for &li in &wf.topology.back_edges[node] {
                    self.loops[li].back_requested = true;
                }
                self.end_rounds(node);
            }
            Err(NodeError::Budget(ex)) => {
                sh.emit(Event::BudgetExhausted(ex.clone()));
                match &ex.scope {
                    Scope::Workflow => {
                        sh.emit(Event::NodeFinished {
                            node: id,
                            round,
                            status: NodeStatus::Skipped,
                            elapsed_ms,
                            output: None,
                            error: Some(ex.to_string()),
                        });
                        self.status[node] = St::Skipped;
                        self.stop.get_or_insert(Stop::Budget(ex));
                    }
                    scope => {
                        if let Scope::Loop(lid) = scope {
                            if let Some(li) = wf.loops.iter().position(|l| &l.id == lid) {
                                self.loops[li].budget_hit = true;
                            }
                        }
                        self.skip(node, Some(ex.to_string()));
                        self.end_rounds(node);
                    }
                }
            }
            Err(e) => {
                self.status[node] = St::Done;
                sh.emit(Event::NodeFinished {
                    node: id,
                    round,
                    status: NodeStatus::Failed,
                    elapsed_ms,
                    output: None,
                    error: Some(e.to_string()),
                });
                if !matches!(e, NodeError::Cancelled) {
                    self.stop.get_or_insert(Stop::Failed(
                        RunFailure {
                            node: Some(wf.nodes[node].id.clone()),
                            kind: e.failure_kind(),
                            cause: e.cause(),
                        },
                        e.to_string(),
                    ));
                }
            }
        }
    }

    fn record_output(&mut self, node: usize, round: u32, out: NodeOutput) {
        let wf = self.sh.wf.clone();
        self.status[node] = St::Done;
        let out = Arc::new(out);
        let prev = self.outputs[node].replace(out.clone());
        if let Some(prev) = prev.filter(|_| !std::mem::take(&mut self.restored[node])) {
            self.push_history(node, prev.value.clone());
        }
        self.snapshot = None;
        for &li in &wf.topology.loops_of[node] {
            self.loops[li].round_tokens += out.tokens;
        }
        if wf.output.from.contains(&node) {
            self.candidates.push(Candidate {
                node,
                round,
                output: out.clone(),
                passed: None,
                score: None,
                rejected: false,
            });
        }
        if wf.nodes[node].kind.is_verdict() {
            let mut verdict = out.typed.verdict().unwrap_or(Verdict {
                passed: false,
                score: 0.0,
            });
            for li in 0..wf.loops.len() {
                if wf.loops[li].to == node && wf.loops[li].accept.is_some() {
                    if let Some(kept) = self.guard(li, node, round, &out, verdict) {
                        verdict = kept;
                    }
                }
            }
            let (passed, score) = (verdict.passed, verdict.score);
            let config = self.judged_mut().map(|c| {
                c.passed = Some(passed);
                c.score = Some(score);
                hash_text(c.output.text.as_deref())
            });
            for &li in &wf.topology.loops_of[node] {
                let metrics = &wf.loops[li].metrics;
                // Only loops with `metrics` look at the judged text again.
                let answer = if metrics.answer.is_some() || metrics.gold.is_some() {
                    self.judged()
                        .and_then(|c| c.output.text.as_deref())
                        .map(|t| answer_of(metrics.answer.as_ref(), t))
                } else {
                    None
                };
                let config = match (&metrics.answer, &answer) {
                    (Some(_), Some(a)) => Some(hash_text(Some(a))),
                    _ => config,
                };
                let gold_win = match (&metrics.gold, &answer) {
                    (Some(gold), Some(a)) => {
                        let scope = self.scope(node);
                        Some(
                            wf.templates
                                .render(gold, &scope)
                                .is_ok_and(|g| crate::answer::same(a, &g)),
                        )
                    }
                    (Some(_), None) => Some(false),
                    _ => None,
                };
                let l = &mut self.loops[li];
                l.round_win |= passed;
                if let Some(w) = gold_win {
                    l.round_gold_win = Some(l.round_gold_win.unwrap_or(false) || w);
                }
                l.round_score = Some(score);
                l.round_config = config.or(l.round_config);
            }
        }
    }

    /// The latest output candidate that no guarded loop rejected: the
    /// artifact, and what a verdict judges.
    fn judged(&self) -> Option<&Candidate> {
        self.candidates.iter().rev().find(|c| !c.rejected)
    }

    fn judged_mut(&mut self) -> Option<&mut Candidate> {
        self.candidates.iter_mut().rev().find(|c| !c.rejected)
    }

    fn push_history(&mut self, node: usize, value: Value) {
        let earlier = self.history[node].try_iter().into_iter().flatten();
        self.history[node] = earlier.chain([value]).collect();
    }

    /// Guarded refinement at loop `li`'s head `node`, which just judged
    /// `out`. The first verdict of the loop judges the draft and makes it
    /// the current answer; each later one judges the revision the back
    /// edge's source wrote, and the loop's `accept` rule decides. A
    /// rejected revision goes to the history, the head's verdict and the
    /// source's output go back to the current answer's, and the verdict
    /// the rest of the run sees (returned) is the current answer's.
    fn guard(
        &mut self,
        li: usize,
        node: usize,
        round: u32,
        out: &Arc<NodeOutput>,
        verdict: Verdict,
    ) -> Option<Verdict> {
        let wf = self.sh.wf.clone();
        let spec = &wf.loops[li];
        let accept = spec.accept.as_ref()?;
        let text = judged_text(out)
            .or_else(|| self.judged().and_then(|c| c.output.text.clone()))
            .unwrap_or_default();
        let answer = accept
            .answer
            .as_ref()
            .map(|re| answer_of(Some(re), &text))
            .filter(|a| !a.is_empty());
        let Some(current) = self.loops[li].current.clone() else {
            self.loops[li].current = Some(Current {
                head: out.clone(),
                from: None,
                score: verdict.score,
                passed: verdict.passed,
                answer,
                text,
            });
            return None;
        };
        let revision = self.outputs[spec.from].clone();
        let changed = match (&current.answer, &answer) {
            (Some(a), Some(b)) => !crate::answer::same(a, b),
            (Some(_), None) => true,
            _ => false,
        };
        let decision = self.decide(
            li,
            node,
            &current,
            verdict,
            answer.as_deref(),
            &text,
            changed,
        );
        self.sh.emit(Event::Revision {
            loop_id: spec.id.clone(),
            round,
            node: wf.nodes[spec.from].id.clone(),
            accepted: decision.is_ok(),
            score: verdict.score,
            current_score: current.score,
            answer_changed: changed,
            reason: decision.as_ref().err().cloned(),
        });
        let l = &mut self.loops[li];
        match decision {
            Ok(()) => {
                l.round_accepted = Some(true);
                l.rejected = None;
                l.current = Some(Current {
                    head: out.clone(),
                    from: revision,
                    score: verdict.score,
                    passed: verdict.passed,
                    answer,
                    text,
                });
                None
            }
            Err(reason) => {
                l.round_accepted = Some(false);
                l.round_revision_score = Some(verdict.score);
                l.rejections += 1;
                l.rejected = Some(Rejection {
                    round,
                    reason,
                    score: verdict.score,
                    answer,
                    text,
                });
                // The head's history already holds the current verdict.
                self.push_history(node, out.value.clone());
                self.outputs[node] = Some(current.head.clone());
                self.restored[node] = true;
                if let Some(rejected) = &revision {
                    self.push_history(spec.from, rejected.value.clone());
                    if let Some(c) = self
                        .candidates
                        .iter_mut()
                        .rev()
                        .find(|c| Arc::ptr_eq(&c.output, rejected))
                    {
                        c.rejected = true;
                    }
                }
                self.outputs[spec.from] = current.from.clone();
                self.restored[spec.from] = current.from.is_some();
                self.snapshot = None;
                Some(Verdict {
                    passed: current.passed,
                    score: current.score,
                })
            }
        }
    }

    /// Whether a revision passes loop `li`'s acceptance rule (and, when it
    /// changes the final answer, the stricter one); `Err` says why not.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        li: usize,
        node: usize,
        current: &Current,
        v: Verdict,
        answer: Option<&str>,
        text: &str,
        changed: bool,
    ) -> Result<(), String> {
        let wf = self.sh.wf.clone();
        let Some(accept) = wf.loops[li].accept.as_ref() else {
            return Ok(());
        };
        let margin = if changed {
            accept.answer_change_margin.unwrap_or(accept.margin)
        } else {
            accept.margin
        };
        self.rule(node, &accept.rule, margin, current, v, answer, text)?;
        if changed {
            if let Some(rule) = &accept.answer_change {
                self.rule(node, rule, margin, current, v, answer, text)
                    .map_err(|why| {
                        format!(
                            "it changes the final answer from {} to {} without the evidence `answer_change` asks for: {why}",
                            current.answer.as_deref().unwrap_or("-"),
                            answer.unwrap_or("none")
                        )
                    })?;
            } else if accept.answer_change_margin.is_some() && accept.rule != AcceptRule::Improved {
                self.rule(
                    node,
                    &AcceptRule::Improved,
                    margin,
                    current,
                    v,
                    answer,
                    text,
                )
                .map_err(|why| {
                    format!(
                        "it changes the final answer from {} to {}: {why}",
                        current.answer.as_deref().unwrap_or("-"),
                        answer.unwrap_or("none")
                    )
                })?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn rule(
        &mut self,
        node: usize,
        rule: &AcceptRule,
        margin: f64,
        current: &Current,
        v: Verdict,
        answer: Option<&str>,
        text: &str,
    ) -> Result<(), String> {
        match rule {
            AcceptRule::Always => Ok(()),
            AcceptRule::Verified if v.passed => Ok(()),
            AcceptRule::Verified => Err(format!(
                "the verifier did not pass it (score {:.2})",
                v.score
            )),
            AcceptRule::Improved => {
                let rise = v.score - current.score;
                if (v.passed && !current.passed) || (rise > 0.0 && rise >= margin - 1e-12) {
                    Ok(())
                } else if margin > 0.0 {
                    Err(format!(
                        "its score {:.2} does not beat the current answer's {:.2} by {margin}",
                        v.score, current.score
                    ))
                } else {
                    Err(format!(
                        "its score {:.2} does not beat the current answer's {:.2}",
                        v.score, current.score
                    ))
                }
            }
            AcceptRule::Expression(expr) => {
                let revision = minijinja::context! {
                    score => v.score,
                    passed => v.passed,
                    answer => answer,
                    text => text,
                };
                let scope = NodeScope {
                    data: self.data(),
                    round: self.round_of(node),
                    loop_info: self.loop_info(node),
                    extra: Some(("revision", revision)),
                }
                .into_value();
                match self.sh.wf.templates.condition(expr, &scope) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!("`{expr}` is false")),
                    Err(e) => {
                        self.stop
                            .get_or_insert(Stop::Failed(RunFailure::template(), e.to_string()));
                        Err(format!("`{expr}` failed: {e}"))
                    }
                }
            }
        }
    }

    /// Evaluates a condition in the scope of `node`; a failure stops the run.
    fn condition(&mut self, node: usize, expr: &str) -> Option<bool> {
        let scope = self.scope(node);
        match self.sh.wf.templates.condition(expr, &scope) {
            Ok(b) => Some(b),
            Err(e) => {
                self.stop
                    .get_or_insert(Stop::Failed(RunFailure::template(), e.to_string()));
                None
            }
        }
    }

    fn exit_pending(&self, edge: usize) -> bool {
        self.sh.wf.topology.exits[edge]
            .iter()
            .any(|&l| self.loops[l].active)
    }

    fn resolve_outgoing(&mut self, node: usize) {
        let wf = self.sh.wf.clone();
        for &ei in &wf.topology.outgoing[node] {
            if self.edges[ei] != Es::Unresolved {
                continue;
            }
            let fire = match &wf.edges[ei].when {
                None => true,
                Some(expr) => match self.condition(node, expr) {
                    Some(b) => b,
                    None => return,
                },
            };
            if self.exit_pending(ei) {
                // Leaving a loop that may go on: the latest evaluation
                // decides when the loop ends.
                self.exit_fired[ei] = fire;
                continue;
            }
            self.edges[ei] = if fire { Es::Fired } else { Es::Skipped };
            self.settle(wf.edges[ei].to);
        }
    }

    /// Marks a node ready or skipped once all its inputs are resolved.
    fn settle(&mut self, node: usize) {
        if self.status[node] != St::Pending {
            return;
        }
        let wf = self.sh.wf.clone();
        let incoming = &wf.topology.incoming[node];
        if incoming.iter().any(|&e| self.edges[e] == Es::Unresolved) {
            return;
        }
        if incoming.iter().any(|&e| self.edges[e] == Es::Fired) {
            self.status[node] = St::Ready;
            self.ready.push_back(node);
        } else {
            self.skip(node, None);
        }
    }

    fn skip(&mut self, node: usize, reason: Option<String>) {
        let wf = self.sh.wf.clone();
        self.status[node] = St::Skipped;
        let round = self.round_of(node);
        self.sh.emit(Event::NodeFinished {
            node: wf.nodes[node].id.clone(),
            round,
            status: NodeStatus::Skipped,
            elapsed_ms: 0.0,
            output: None,
            error: reason,
        });
        for &ei in &wf.topology.outgoing[node] {
            if self.edges[ei] == Es::Unresolved && !self.exit_pending(ei) {
                self.edges[ei] = Es::Skipped;
                self.settle(wf.edges[ei].to);
            }
        }
    }

    /// Ends the rounds of the loops around `node` whose bodies went quiet,
    /// innermost first.
    fn end_rounds(&mut self, node: usize) {
        let wf = self.sh.wf.clone();
        for &li in &wf.topology.loops_of[node] {
            if self.stop.is_some() || !self.loops[li].active {
                return;
            }
            let busy = wf.loops[li]
                .body
                .iter()
                .any(|&b| matches!(self.status[b], St::Ready | St::Running));
            if busy {
                return;
            }
            self.end_round(li);
        }
    }

    fn end_round(&mut self, li: usize) {
        let wf = self.sh.wf.clone();
        let spec = &wf.loops[li];
        let from = spec.from;
        let latest = self
            .candidates
            .last()
            .map(|c| hash_text(c.output.text.as_deref()));
        let l = &mut self.loops[li];
        l.record_round(latest);
        let reason = if l.budget_hit {
            Some(StopReason::Budget)
        } else if !l.back_requested && (l.round < spec.max_rounds || l.round_win) {
            // Left through a condition (passing, in the last round).
            Some(StopReason::Exited)
        } else if l.round >= spec.max_rounds {
            // All rounds used: also when the last round skipped its way to
            // the back edge (a `not loop.last` guard) without passing.
            Some(StopReason::MaxRounds)
        } else {
            None
        };
        let reason = reason.or_else(|| {
            if let Some(until) = &spec.until {
                if self.condition(from, until)? {
                    return Some(StopReason::Until);
                }
            }
            let c = spec.converge.as_ref()?;
            let scope = self.scope(from);
            let score = match wf.templates.number(&c.score, &scope) {
                Ok(s) => s,
                Err(e) => {
                    self.stop
                        .get_or_insert(Stop::Failed(RunFailure::template(), e.to_string()));
                    return None;
                }
            };
            let l = &mut self.loops[li];
            match l.best_score {
                Some(best) if score <= best + c.min_delta => l.stale += 1,
                _ => {
                    l.best_score = Some(score);
                    l.stale = 0;
                }
            }
            (l.stale >= c.patience).then_some(StopReason::Converged)
        });
        if self.stop.is_some() {
            return;
        }
        match reason {
            Some(r) => self.finish_loop(li, r),
            None => self.next_round(li),
        }
    }

    fn next_round(&mut self, li: usize) {
        let wf = self.sh.wf.clone();
        let spec = &wf.loops[li];
        let l = &mut self.loops[li];
        l.round += 1;
        l.back_requested = false;
        l.round_tokens = 0;
        l.round_config = None;
        l.round_win = false;
        l.round_score = None;
        l.round_gold_win = None;
        l.round_accepted = None;
        l.round_revision_score = None;
        let round = l.round;
        for &b in &spec.body {
            self.status[b] = St::Pending;
        }
        for (ei, e) in wf.edges.iter().enumerate() {
            if spec.body.contains(&e.from) && spec.body.contains(&e.to) {
                self.edges[ei] = Es::Unresolved;
                self.exit_fired[ei] = false;
            }
        }
        // Inner loops start over.
        for (lj, inner) in wf.loops.iter().enumerate() {
            if lj != li && inner.body.iter().all(|b| spec.body.contains(b)) {
                self.loops[lj] = LoopRt {
                    round: 1,
                    ..LoopRt::default()
                };
            }
        }
        self.snapshot = None;
        self.sh.emit(Event::LoopRound {
            loop_id: spec.id.clone(),
            round,
        });
        self.status[spec.to] = St::Ready;
        self.ready.push_back(spec.to);
    }

    fn finish_loop(&mut self, li: usize, reason: StopReason) {
        let wf = self.sh.wf.clone();
        let spec = &wf.loops[li];
        let l = &mut self.loops[li];
        l.active = false;
        let rounds = std::mem::take(&mut l.records);
        self.sh.emit(Event::LoopFinished {
            loop_id: spec.id.clone(),
            rounds: rounds.len() as u32,
            reason,
        });
        self.reports.push(LoopReport::compute(
            &spec.id,
            reason,
            &rounds,
            spec.round_tokens,
        ));
        for (ei, exits) in wf.topology.exits.iter().enumerate() {
            if exits.contains(&li) && self.edges[ei] == Es::Unresolved && !self.exit_pending(ei) {
                self.edges[ei] = if self.exit_fired[ei] {
                    Es::Fired
                } else {
                    Es::Skipped
                };
                self.settle(wf.edges[ei].to);
            }
        }
    }

    fn best(&self) -> Option<&Candidate> {
        match self.sh.wf.output.select {
            Selection::Latest => self.judged(),
            Selection::Best => {
                let scored = self
                    .candidates
                    .iter()
                    .filter(|c| c.score.is_some() && !c.rejected);
                let best = scored.fold(None::<&Candidate>, |best, c| match best {
                    Some(b) if (b.passed, b.score) > (c.passed, c.score) => Some(b),
                    _ => Some(c),
                });
                best.or(self.judged())
            }
        }
    }

    fn summary(mut self) -> RunSummary {
        let sh = self.sh.clone();
        let wf = &sh.wf;
        // Loops cut short by the stop report their rounds, the cut one included.
        let latest = self
            .candidates
            .last()
            .map(|c| hash_text(c.output.text.as_deref()));
        for li in 0..wf.loops.len() {
            let l = &mut self.loops[li];
            if l.active {
                l.record_round(latest);
                self.finish_loop(li, StopReason::RunStopped);
            }
        }
        let (mut status, mut error, exhausted) = match self.stop.take() {
            None => (RunStatus::Finished, None, None),
            Some(Stop::Budget(ex)) => (RunStatus::BudgetExhausted, None, Some(ex)),
            Some(Stop::Failed(f, msg)) => (RunStatus::Failed, Some((f, msg)), None),
            Some(Stop::Interrupted) => (RunStatus::Interrupted, None, None),
        };
        let best = self.best();
        let mut output = None;
        let mut output_source = None;
        if let Some(c) = best {
            let field = &wf.output.field;
            match wf.output.read(&c.output.json) {
                Some(v) => output = Some(v),
                None if status == RunStatus::Finished => {
                    status = RunStatus::Failed;
                    error = Some((
                        RunFailure {
                            node: None,
                            kind: FailureKind::Workflow,
                            cause: FailureCause::MissingOutput,
                        },
                        format!(
                            "output field `{field}` is not in the output of node `{}`",
                            wf.nodes[c.node].id
                        ),
                    ));
                }
                None => {}
            }
            output_source = Some(OutputSource {
                node: wf.nodes[c.node].id.clone(),
                round: c.round,
                passed: c.passed,
                score: c.score,
            });
        }
        let verified = wf
            .verifies()
            .then(|| best.is_some_and(|c| c.passed == Some(true)));
        let mut tally = sh.tally.lock().unwrap_or_else(|e| e.into_inner());
        let summary = RunSummary {
            workflow: wf.name.clone(),
            status,
            verified,
            output,
            output_source,
            usage: tally.usage,
            wall_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            budgets: sh.meter.report(),
            exhausted,
            loops: std::mem::take(&mut self.reports),
            reviews: std::mem::take(&mut tally.reviews),
            node_runs: wf
                .nodes
                .iter()
                .zip(&self.runs)
                .map(|(n, r)| (n.id.clone(), *r))
                .collect(),
            error: error.as_ref().map(|(_, m)| m.clone()),
            failure: error.as_ref().map(|(f, _)| f.kind),
            cause: error.map(|(f, _)| f),
        };
        drop(tally);
        // Recorders that keep the event share the summary; copy only then.
        let summary = Arc::new(summary);
        sh.emit(Event::RunFinished {
            summary: summary.clone(),
        });
        Arc::try_unwrap(summary).unwrap_or_else(|shared| (*shared).clone())
    }
}

/// The final answer in `text` by `rule` ([`crate::answer::Rule`]), empty
/// without one; the whole trimmed text without a rule.
fn answer_of(rule: Option<&crate::answer::Rule>, text: &str) -> String {
    match rule {
        Some(rule) => rule.read(text).unwrap_or_default(),
        None => text.trim().to_string(),
    }
}

/// The text a verify node judged (its `target`), if it says.
fn judged_text(out: &NodeOutput) -> Option<String> {
    out.json.get("target")?.as_str().map(str::to_string)
}

fn hash_text(text: Option<&str>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}
