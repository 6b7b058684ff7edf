//! Embedding redraft in an application: load a workflow from a string, plug
//! in your own model, and watch the events.
//!
//! Run with `cargo run --example embed`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use redraft::backend::{BackendError, Choice, Completion, CompletionRequest, FinishReason, Usage};
use redraft::{Engine, Event, LanguageModel, Recorder, RunOptions};

/// A toy "model": it answers arithmetic questions, badly at first. Replace
/// it with a client for your own inference service.
struct Calculator;

impl LanguageModel for Calculator {
    fn id(&self) -> &str {
        "calculator-v0"
    }

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            let prompt = &req.messages.last().expect("a user message").content;
            // First try: a sloppy answer. When the prompt carries feedback, fix it.
            let text = if prompt.contains("was wrong") {
                "17 * 3 = 51"
            } else {
                "17 * 3 = 41"
            };
            Ok(Completion {
                choices: vec![
                    Choice {
                        text: text.to_string(),
                        finish: FinishReason::Stop,
                        logprobs: None
                    };
                    req.n as usize
                ],
                usage: Usage {
                    prompt_tokens: prompt.len() as u64 / 4,
                    completion_tokens: 4,
                    ..Default::default()
                },
                usage_estimated: true,
            })
        })
    }
}

/// Prints a line per event; a real app might forward them to its UI or traces.
struct Printer;

impl Recorder for Printer {
    fn record(&self, event: &Event) {
        match event {
            Event::NodeFinished {
                node,
                round,
                status,
                ..
            } => println!("  {node} (round {round}): {status:?}"),
            Event::Verdict { passed, .. } => {
                println!("    verdict: {}", if *passed { "pass" } else { "fail" })
            }
            _ => {}
        }
    }
}

const WORKFLOW: &str = r#"
version: 1
name: arithmetic
models:
  calc: { spec: "scripted:not-used.yaml", max_tokens: 16 }
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
    let engine = Engine::new()
        .with_model("calc", Arc::new(Calculator))
        .with_recorder(Arc::new(Printer));
    let summary = engine
        .run(Arc::new(workflow), RunOptions::default())
        .await?;
    println!(
        "status: {:?}, verified: {:?}",
        summary.status, summary.verified
    );
    println!("output: {}", summary.output.unwrap_or_default());
    println!(
        "calls: {}, tokens: {}",
        summary.usage.calls, summary.usage.total_tokens
    );
    Ok(())
}
