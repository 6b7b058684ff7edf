//! Every shipped method end to end on the real default model
//! (SmolLM2-135M-Instruct), in process through `llama:` and through
//! `openai:` against llama.cpp's `llama-server`. The graphs, prompts,
//! schemas, tools and sandbox are the shipped ones; only the sizes shrink
//! so that the test command stays short: at most 2 samples per node, 128
//! new tokens per call, 2 rounds per loop (one revision). What the model
//! writes is not asserted (it is a 135M model); that each method's steps
//! run on real replies is: the nodes that make the method what it is ran,
//! the structured replies parsed, and the run finished.
//!
//! Needs `REDRAFT_MODEL` (and `REDRAFT_LLAMA_SERVER` for the server half);
//! `REDRAFT_REQUIRE_PEERS=1` (`.ci/run`) turns a missing peer into a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redraft::backend::LanguageModel;
use redraft::event::{Collect, Event};
use redraft::summary::RunStatus;
use redraft::workflow::ReviewDecisions;
use redraft::{Engine, RunOptions, RunSummary};

use crate::support::{have_sandbox, root, runs};

/// A shipped workflow with its sizes capped (samples, new tokens, loop
/// rounds); everything else as shipped.
fn shrunk(method: &str) -> Arc<redraft::workflow::Workflow> {
    let dir = root().join("workflows");
    let source = std::fs::read_to_string(dir.join(format!("{method}.yaml"))).unwrap();
    let cap = |re: &str, max: u64, text: &str| -> String {
        let re = regex::Regex::new(re).unwrap();
        re.replace_all(text, |c: &regex::Captures| {
            let v: u64 = c[2].parse().unwrap();
            format!("{}{}", &c[1], v.min(max))
        })
        .into_owned()
    };
    // A structured reply keeps the room its schema's bounds need (the
    // workflows size it so): cut short, the JSON is never complete, and
    // whether a 135M model's reply fits a smaller cap depends on the CPU
    // the floats were summed on. Free text is capped. Each node's block
    // starts at `  - id: `.
    let source = source
        .split("\n  - id: ")
        .map(|block| {
            if block.contains("\n    schema:") {
                block.to_string()
            } else {
                cap(r"(max_tokens: )(\d+)", 256, block)
            }
        })
        .collect::<Vec<_>>()
        .join("\n  - id: ");
    let source = cap(r"(\bn: )(\d+)", 2, &source);
    let source = cap(r"(max_rounds: )(\d+)", 2, &source);
    let wf = redraft::workflow::load_str(&source, &format!("{method}.yaml"), &dir)
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    Arc::new(wf)
}

fn model_path() -> Option<PathBuf> {
    let path = std::env::var_os("REDRAFT_MODEL").map(PathBuf::from);
    match path {
        Some(p) if p.exists() => Some(p),
        _ if std::env::var("REDRAFT_REQUIRE_PEERS").as_deref() == Ok("1") => {
            panic!("REDRAFT_REQUIRE_PEERS=1 but REDRAFT_MODEL does not name a file")
        }
        _ => {
            eprintln!("real-model method tests not run: set REDRAFT_MODEL (see .ci/run)");
            None
        }
    }
}

/// What one method needs and what its run must show.
struct Case {
    method: &'static str,
    inputs: serde_json::Value,
    /// Nodes that must have run at least once.
    ran: &'static [&'static str],
}

/// The method's case, or none when a peer it needs is missing here (a
/// failure under `REDRAFT_REQUIRE_PEERS=1`).
fn case(method: &'static str) -> Option<Case> {
    let (inputs, ran): (serde_json::Value, &'static [&'static str]) = match method {
        // τ = 1: every chain is doubted, so critique and revise run.
        "revise" => (
            serde_json::json!({ "tau": 1.0 }),
            &[
                "solve1",
                "check1",
                "critique1",
                "revise1",
                "majority",
                "weighted",
            ],
        ),
        // Refine whatever the judge's confidence, when it does not pass.
        "guarded" => (
            serde_json::json!({ "confident": 1.01 }),
            &["solve", "check"],
        ),
        "rbd" => (serde_json::json!({}), &["judge", "detect"]),
        "r3" => (serde_json::json!({}), &["propose", "review"]),
        // Revise whatever passes or not: the 135M model rarely passes.
        "codechain" => (
            serde_json::json!({ "revise_unfiltered": true }),
            &["draft", "program", "public", "modules"],
        ),
        "draft" => (
            serde_json::json!({}),
            &["explore", "novelty", "call", "analyze", "rewrite"],
        ),
        other => panic!("no case for {other}"),
    };
    let missing = match method {
        "codechain" if !have_sandbox() => Some("a sandbox"),
        "draft" if redraft::eval::data::python_package_dir("tooltalk").is_none() => {
            Some("the nvidia-tooltalk package")
        }
        _ => None,
    };
    if let Some(what) = missing {
        assert!(
            std::env::var("REDRAFT_REQUIRE_PEERS").is_err(),
            "{method} needs {what} here"
        );
        eprintln!("{method} not run: it needs {what}");
        return None;
    }
    Some(Case {
        method,
        inputs,
        ran,
    })
}

async fn run_case(model: Arc<dyn LanguageModel>, case: &Case, label: &str) -> RunSummary {
    let wf = shrunk(case.method);
    let events = Arc::new(Collect::default());
    let mut engine = Engine::new().with_recorder(events.clone());
    for decl in wf.models() {
        engine = engine.with_model(&decl.name, model.clone());
    }
    let inputs = case
        .inputs
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // R3's reviewer rejects the first round's edits and accepts the next.
    let decisions = std::env::temp_dir().join(format!("redraft-r3-{}.yaml", std::process::id()));
    std::fs::write(&decisions, "- reject_all\n- accept_all\n- accept_all\n").unwrap();
    let opts = RunOptions {
        inputs,
        review: Some(ReviewDecisions::File(decisions)),
        ..RunOptions::default()
    };
    let s = engine.run(wf, opts).await.expect("run starts");
    let events = events.take();
    assert_eq!(
        s.status,
        RunStatus::Finished,
        "{label} {}: {:?}\n{}",
        case.method,
        s.error,
        crate::support::trace(&events)
    );
    for node in case.ran {
        assert!(
            runs(&s, node) >= 1,
            "{label} {}: {node} did not run\n{}",
            case.method,
            crate::support::trace(&events)
        );
    }
    assert!(
        s.usage.calls >= 2 && s.usage.total_tokens > 0,
        "{:?}",
        s.usage
    );
    assert!(s.output.is_some(), "{label} {}: no output", case.method);
    // Every structured reply the engine accepted was a real model's.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ModelCall(c) if c.completion_tokens > 0))
    );
    eprintln!(
        "{label} {}: {} calls, {} tokens",
        case.method, s.usage.calls, s.usage.total_tokens
    );
    s
}

fn local_model() -> Option<Arc<dyn LanguageModel>> {
    let path = model_path()?;
    let spec = format!("llama:{}", path.display());
    let settings = serde_json::json!({ "threads": 1, "context_size": 4096 });
    Some(redraft::backend::open(&spec, &settings, Path::new(".")).unwrap())
}

/// One test per method and backend: `llama_METHOD` in process,
/// `openai_METHOD` against a llama-server of its own.
macro_rules! real_method_tests {
    ($($method:ident),*) => {
        mod llama_model {
            use super::*;
            $(
                #[cfg(feature = "llama")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $method() {
                    let (Some(model), Some(case)) = (local_model(), case(stringify!($method))) else {
                        return;
                    };
                    run_case(model, &case, "llama").await;
                }
            )*
        }
        mod llama_server {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $method() {
                    let Some((server, path)) = crate::real_server::peers() else {
                        return;
                    };
                    let Some(case) = case(stringify!($method)) else { return };
                    let server = crate::real_server::start(&server, &path).await;
                    let model = redraft::backend::open(
                        &format!("openai:smollm2@{}", server.url),
                        &serde_json::json!({ "native_n": false }),
                        Path::new("."),
                    )
                    .unwrap();
                    run_case(model, &case, "openai").await;
                }
            )*
        }
    };
}

real_method_tests!(codechain, revise, guarded, draft, rbd, r3);
