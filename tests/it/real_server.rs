//! Against a real peer: llama.cpp's `llama-server` (built by
//! `scripts/build-peers.sh`) serving the embedded default model
//! (`scripts/fetch-model.sh`), through the `openai:` backend.
//!
//! Needs `REDRAFT_LLAMA_SERVER` and `REDRAFT_MODEL`; `.ci/run` sets both and
//! `REDRAFT_REQUIRE_PEERS=1`, which turns a missing peer into a failure.
//! With `REDRAFT_UPDATE_CASSETTES=1` the run is recorded into
//! `tests/cassettes/`, which the replay test below serves without a server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redraft::backend::cassette::CassetteWriter;
use redraft::event::{Collect, Event};
use redraft::summary::RunStatus;
use redraft::{Engine, RunOptions};

use crate::support::{load, root};

const CASSETTE: &str = "tests/cassettes/self-refine-smollm2.jsonl";
const EXPECTED: &str = "tests/cassettes/self-refine-smollm2.summary.json";

pub(crate) fn peers() -> Option<(PathBuf, PathBuf)> {
    let server = std::env::var_os("REDRAFT_LLAMA_SERVER").map(PathBuf::from);
    let model = std::env::var_os("REDRAFT_MODEL").map(PathBuf::from);
    match (server, model) {
        (Some(s), Some(m)) if s.exists() && m.exists() => Some((s, m)),
        _ if std::env::var("REDRAFT_REQUIRE_PEERS").as_deref() == Ok("1") => {
            panic!(
                "REDRAFT_REQUIRE_PEERS=1 but REDRAFT_LLAMA_SERVER / REDRAFT_MODEL do not name existing files"
            )
        }
        _ => {
            eprintln!(
                "real-server test not run: set REDRAFT_LLAMA_SERVER and REDRAFT_MODEL (see .ci/run)"
            );
            None
        }
    }
}

/// A llama-server child process on 127.0.0.1, killed on drop.
pub(crate) struct LlamaServer {
    child: Child,
    pub(crate) url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn start(server: &std::path::Path, model: &std::path::Path) -> LlamaServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(server)
        .args([
            "-m",
            model.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        // One thread: two collapse under load on these 2-core machines.
        .args([
            "--threads",
            "1",
            "--threads-batch",
            "1",
            "--ctx-size",
            "4096",
            "--parallel",
            "1",
            "--no-webui",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("llama-server starts");
    let s = LlamaServer {
        child,
        url: format!("http://127.0.0.1:{port}/v1"),
    };
    let health = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = reqwest::get(&health).await {
            if r.status().is_success() {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "llama-server did not become healthy in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_refine_runs_against_llama_server() {
    let Some((server, model_path)) = peers() else {
        return;
    };
    let server = start(&server, &model_path).await;
    // llama-server returns one choice whatever `n` says: let the engine fan out.
    let model = redraft::backend::open(
        &format!("openai:smollm2@{}", server.url),
        &serde_json::json!({ "native_n": false }),
        std::path::Path::new("."),
    )
    .unwrap();
    let record = std::env::var("REDRAFT_UPDATE_CASSETTES").as_deref() == Ok("1");
    let events = Arc::new(Collect::default());
    let mut engine = Engine::new()
        .with_model("writer", model)
        .with_recorder(events.clone());
    if record {
        engine = engine.with_cassette(Arc::new(
            CassetteWriter::create(&root().join(CASSETTE)).unwrap(),
        ));
    }
    let wf = load(&root().join("workflows/self-refine.yaml"));
    let s = engine.run(wf, RunOptions::default()).await.unwrap();
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert!(s.usage.calls >= 1 && !s.usage.estimated, "{:?}", s.usage);
    assert!(
        s.output
            .as_ref()
            .and_then(|o| o.as_str())
            .is_some_and(|o| !o.trim().is_empty())
    );
    // Every critique the model wrote satisfied the schema: grammar-constrained
    // decoding on the server, validated again by the engine.
    let events = events.take();
    for e in &events {
        if let Event::NodeFinished {
            node,
            output: Some(o),
            ..
        } = e
        {
            if node == "critique" {
                assert!(o["score"].is_number() && o["feedback"].is_string(), "{o}");
            }
        }
    }
    if record {
        let expected = serde_json::json!({ "output": s.output, "calls": s.usage.calls, "verified": s.verified });
        std::fs::write(
            root().join(EXPECTED),
            serde_json::to_string_pretty(&expected).unwrap() + "\n",
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_critique_from_the_real_model() {
    let Some((server, model_path)) = peers() else {
        return;
    };
    let server = start(&server, &model_path).await;
    let wf = Arc::new(
        redraft::workflow::load_str(
            &format!(
                r#"
version: 1
models:
  judge: {{ spec: "openai:smollm2@{}", max_tokens: 96 }}
inputs:
  answer: {{ type: string, default: "The capital of France is Berlin." }}
nodes:
  - id: critique
    kind: critique
    template: "Grade this answer from 1 to 10 and explain: {{{{ answer }}}}"
    sampling: {{ temperature: 0 }}
    schema:
      type: object
      required: [score, feedback]
      properties:
        score: {{ type: integer, minimum: 1, maximum: 10 }}
        feedback: {{ type: string }}
output: {{ from: critique, field: data }}
"#,
                server.url
            ),
            "critique.yaml",
            &root(),
        )
        .map_err(|e| e.render())
        .unwrap(),
    );
    let s = Engine::new().run(wf, RunOptions::default()).await.unwrap();
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let data = s.output.unwrap();
    let score = data["score"].as_i64().unwrap();
    assert!((1..=10).contains(&score), "{data}");
    assert!(data["feedback"].is_string());
    assert_eq!(s.usage.calls, 1, "valid on the first try: no repair needed");
}

#[tokio::test]
async fn the_recorded_llama_server_run_replays() {
    let cassette = root().join(CASSETTE);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(EXPECTED)).unwrap()).unwrap();
    let model = redraft::backend::open(
        &format!("replay:{}", cassette.display()),
        &serde_json::Value::Null,
        std::path::Path::new("."),
    )
    .unwrap();
    let wf = load(&root().join("workflows/self-refine.yaml"));
    let s = Engine::new()
        .with_model("writer", model)
        .run(wf, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(serde_json::json!(s.output), expected["output"]);
    assert_eq!(serde_json::json!(s.usage.calls), expected["calls"]);
    assert_eq!(serde_json::json!(s.verified), expected["verified"]);
}
