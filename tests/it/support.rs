//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redraft::backend::ScriptedModel;
use redraft::event::{Collect, Event, NodeStatus};
use redraft::{Engine, RunOptions, RunSummary, Workflow};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// Loads a workflow from YAML text (prompt files resolve against fixtures/valid).
pub fn workflow(yaml: &str) -> Arc<Workflow> {
    match redraft::workflow::load_str(yaml, "test.yaml", &fixtures().join("valid")) {
        Ok(wf) => Arc::new(wf),
        Err(e) => panic!("test workflow is invalid:\n{}", e.render()),
    }
}

pub fn load(path: &Path) -> Arc<Workflow> {
    match redraft::workflow::load(path) {
        Ok(wf) => Arc::new(wf),
        Err(e) => panic!("{}", e.render()),
    }
}

/// Runs `wf` with every model replaced by the script, collecting events.
pub async fn run(wf: Arc<Workflow>, script: &str, opts: RunOptions) -> (RunSummary, Vec<Event>) {
    let model = Arc::new(ScriptedModel::from_yaml(script, "test-script").expect("valid script"));
    let events = Arc::new(Collect::default());
    let mut engine = Engine::new().with_recorder(events.clone());
    for m in wf.models() {
        engine = engine.with_model(m.name.clone(), model.clone());
    }
    let summary = engine.run(wf, opts).await.expect("run starts");
    (summary, events.take())
}

/// One line per event, without timings: the shape of a run.
pub fn trace(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        let line = match e {
            Event::RunStarted { .. } => "run started".to_string(),
            Event::NodeStarted { node, round, .. } => format!("start {node} r{round}"),
            Event::NodeFinished {
                node,
                round,
                status,
                ..
            } => {
                let s = match status {
                    NodeStatus::Done => "done",
                    NodeStatus::Skipped => "skip",
                    NodeStatus::Failed => "FAIL",
                    _ => "?",
                };
                format!("{s} {node} r{round}")
            }
            Event::ModelCall(c) => format!(
                "  call {} r{} attempt {}: {}+{} tokens{}",
                c.node,
                c.round,
                c.attempt,
                c.prompt_tokens,
                c.completion_tokens,
                c.error
                    .as_ref()
                    .map(|e| format!(" error: {e}"))
                    .unwrap_or_default()
            ),
            Event::InvalidOutput { node, attempt, .. } => {
                format!("  invalid output {node} attempt {attempt}")
            }
            Event::Verdict {
                node,
                round,
                passed,
                score,
                ..
            } => {
                format!(
                    "  verdict {node} r{round}: {} {score:.2}",
                    if *passed { "pass" } else { "fail" }
                )
            }
            Event::LoopRound { loop_id, round } => format!("loop {loop_id} round {round}"),
            Event::LoopFinished {
                loop_id,
                rounds,
                reason,
            } => format!("loop {loop_id} stopped after {rounds}: {reason:?}"),
            Event::BudgetWarning(w) => format!(
                "  budget warning: {} {} {}/{}",
                w.scope, w.limit, w.used, w.max
            ),
            Event::BudgetExhausted(x) => format!("  budget exhausted: {x}"),
            Event::RunFinished { summary } => format!("run finished: {:?}", summary.status),
            Event::Review {
                node,
                round,
                depth,
                proposed,
                accepted,
            } => format!("  {node} [{round}] review {depth}: {accepted}/{proposed} accepted"),
            other => format!("{other:?}"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// How many times each node finished (done).
pub fn runs(summary: &RunSummary, node: &str) -> u32 {
    summary
        .node_runs
        .iter()
        .find(|(n, _)| n == node)
        .map_or(0, |(_, r)| *r)
}

/// The `redraft` binary, with a response cache of its own (a new file per
/// command, unless the test names one with `--cache-db`): an eval never
/// reuses replies another test stored, and never touches ~/.cache.
pub fn redraft_command() -> std::process::Command {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("redraft-test-caches-{}", std::process::id()));
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_redraft"));
    c.env("REDRAFT_CACHE_DB", dir.join(format!("responses-{n}.db")));
    c
}

/// Runs the `redraft` binary in the repository root (no RUST_LOG).
pub fn redraft(args: &[&str]) -> std::process::Output {
    redraft_command()
        .args(args)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .expect("binary runs")
}

/// Whether bubblewrap is here for sandboxed tests; without it a test says
/// it is skipped, except where peers are required (CI), where that fails.
pub fn have_sandbox() -> bool {
    let ok =
        redraft::sandbox::Sandbox::new(redraft::sandbox::Isolation::Bubblewrap, Default::default())
            .is_ok();
    if !ok {
        assert!(
            std::env::var("REDRAFT_REQUIRE_PEERS").is_err(),
            "bubblewrap is required here"
        );
        eprintln!("skipped: no bubblewrap");
    }
    ok
}

/// Whether every peer a test can use must be there (CI: REDRAFT_REQUIRE_PEERS=1).
pub fn required() -> bool {
    std::env::var("REDRAFT_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// Skips a test whose peer is missing, saying so; fails when peers are required.
pub fn skip(what: &str) {
    assert!(!required(), "REDRAFT_REQUIRE_PEERS=1 but {what} is missing");
    eprintln!("skipped: {what} is missing");
}

/// Reads a child's stderr until it prints `review the edits at URL`; the URL.
pub fn review_url(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "no review URL printed"
        );
        if let Some(u) = line.trim().strip_prefix("review the edits at ") {
            // Keep draining stderr so the child never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
            return u.to_string();
        }
    }
}
