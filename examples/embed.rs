//! Embedding redraft in an application: load a workflow from a string, plug
//! in your own model (an async function, no spec needed in the YAML),
//! stream the events while the run goes on, and act on a typed failure.
//!
//! Run with `cargo run --example embed`.

use std::sync::Arc;

use redraft::backend::{BackendError, Completion, ErrorKind, Usage, model_fn};
use redraft::{Engine, Event, FailureCause, RunOptions, RunStatus};

/// The workflow declares the model `calc` without a spec: the program
/// supplies it (`Engine::with_model`).
const WORKFLOW: &str = r#"
version: 1
name: arithmetic
models:
  calc: { max_tokens: 16 }
inputs:
  question: { type: string, default: "What is 17 * 3?" }
budget: { calls: 6 }
nodes:
  - { id: answer, kind: generate, template: "{{ question }}" }
  - id: check
    kind: verify
    checks: [ { numeric: "51" } ]
  - id: fix
    kind: revise
    template: "{{ question }} Your answer {{ artifact.text }} was wrong: {{ check.feedback }}"
edges:
  - { from: answer, to: check }
  - { from: check, to: fix, when: "not check.passed" }
loops:
  - { id: retry, from: fix, to: check, max_rounds: 3 }
output: { from: [answer, fix] }
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workflow =
        redraft::workflow::load_str(WORKFLOW, "arithmetic.yaml", std::path::Path::new("."))
            .map_err(|e| e.render())?;
    let workflow = Arc::new(workflow);

    // A toy "model": it answers badly at first and fixes its answer when
    // told it was wrong. Replace it with a client for your own inference.
    let calculator = model_fn("calculator-v0", |req| async move {
        let prompt = &req.messages.last().expect("a user message").content;
        let text = if prompt.contains("was wrong") {
            "17 * 3 = 51"
        } else {
            "17 * 3 = 41"
        };
        let usage = Usage {
            prompt_tokens: prompt.len() as u64 / 4,
            completion_tokens: 4,
            ..Default::default()
        };
        Ok(Completion::from_texts(vec![text; req.n as usize], usage))
    });
    let engine = Engine::new().with_model("calc", calculator);

    // Stream the events while the run goes on (the summary future owns
    // what it needs, so it can be spawned).
    let (mut events, run) = engine.run_streaming(workflow.clone(), RunOptions::default());
    let run = tokio::spawn(run);
    while let Some(event) = events.next().await {
        match event {
            Event::NodeFinished {
                node,
                round,
                status,
                ..
            } => println!("  {node} (round {round}): {status:?}"),
            Event::Verdict { passed, .. } => {
                println!("    verdict: {}", if passed { "pass" } else { "fail" })
            }
            _ => {}
        }
    }
    let summary = run.await??;
    println!(
        "status: {:?}, verified: {:?}, output: {}",
        summary.status,
        summary.verified,
        summary.output.unwrap_or_default()
    );
    println!(
        "calls: {}, tokens: {}",
        summary.usage.calls, summary.usage.total_tokens
    );

    // A model whose context is too small: the summary says so, typed, so
    // the program can react (here: it would pick a larger model).
    let tiny = model_fn("tiny", |_req| async {
        Err(BackendError::new(
            "tiny",
            ErrorKind::ContextLength,
            "the prompt does not fit 512 tokens",
        ))
    });
    let summary = Engine::new()
        .with_model("calc", tiny)
        .run(workflow, RunOptions::default())
        .await?;
    assert_eq!(summary.status, RunStatus::Failed);
    if let Some(failure) = &summary.cause {
        match &failure.cause {
            FailureCause::Backend {
                error: ErrorKind::ContextLength,
                ..
            } => println!(
                "node `{}` needs a model with a longer context",
                failure.node.as_deref().unwrap_or("?")
            ),
            other => println!("failed: {other:?}"),
        }
    }
    Ok(())
}
