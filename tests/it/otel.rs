//! OpenTelemetry export (feature `otel`): a run's spans reach an OTLP/HTTP
//! receiver on 127.0.0.1, inside the test, with the GenAI attributes.
//!
//! The exporter is installed as the process's global subscriber: nextest
//! runs each test in a process of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redraft::RunOptions;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing_subscriber::layer::SubscriberExt as _;

use crate::support::{load, root};

/// Accepts OTLP/HTTP JSON posts, one per connection, keeping the bodies.
async fn receiver() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = got.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, length, path) = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        break (end + 4, length, path);
                    }
                };
                while buf.len() < head_end + length {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
                kept.lock().unwrap().push((path, body));
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got)
}

/// `{key: value}` of an OTLP JSON span's attributes.
fn attributes(span: &Value) -> HashMap<String, Value> {
    span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let v = &a["value"];
            let value = v
                .get("stringValue")
                .or_else(|| v.get("intValue"))
                .or_else(|| v.get("doubleValue"))
                .or_else(|| v.get("boolValue"))
                .cloned()
                .unwrap_or(Value::Null);
            (a["key"].as_str().unwrap_or("").to_string(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_genai_attributes() {
    let (endpoint, got) = receiver().await;
    // SAFETY: set before any other thread of this test reads the environment.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
        std::env::set_var("OTEL_SERVICE_NAME", "redraft-test");
    }
    let (layer, guard) = redraft::otel::layer_from_env()
        .expect("an endpoint is set")
        .unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let wf = load(&root().join("workflows/self-refine.yaml"));
    let script =
        std::fs::read_to_string(root().join("workflows/replies/self-refine.yaml")).unwrap();
    let (s, _) = crate::support::run(wf, &script, RunOptions::default()).await;
    assert_eq!(s.status, redraft::RunStatus::Finished);
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap();

    let posts = got.lock().unwrap().clone();
    assert!(!posts.is_empty(), "nothing exported");
    let mut spans = Vec::new();
    for (path, body) in &posts {
        assert_eq!(path, "/v1/traces");
        for rs in body["resourceSpans"].as_array().unwrap() {
            let service = attributes(&rs["resource"])["service.name"].clone();
            assert_eq!(service, "redraft-test");
            for ss in rs["scopeSpans"].as_array().unwrap() {
                spans.extend(ss["spans"].as_array().unwrap().iter().cloned());
            }
        }
    }
    let named =
        |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };
    let runs = named("redraft.run");
    assert_eq!(runs.len(), 1);
    assert_eq!(attributes(runs[0])["redraft.workflow"], "self-refine");
    // One node span per node execution, children of the run.
    let nodes = named("redraft.node");
    let executions: u32 = s.node_runs.iter().map(|(_, n)| n).sum();
    assert_eq!(nodes.len() as u32, executions);
    assert!(nodes.iter().all(|n| n["traceId"] == runs[0]["traceId"]));
    assert!(nodes.iter().all(|n| n["parentSpanId"] == runs[0]["spanId"]));
    // One client span per model call, named `chat MODEL`, with usage.
    let calls: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"].as_str().unwrap_or("").starts_with("chat "))
        .collect();
    assert_eq!(calls.len() as u64, s.usage.calls);
    let mut input = 0;
    let mut output = 0;
    for c in &calls {
        assert_eq!(c["kind"], 3, "SPAN_KIND_CLIENT: {c}");
        let a = attributes(c);
        assert_eq!(a["gen_ai.operation.name"], "chat");
        assert!(a.contains_key("gen_ai.request.model"), "{a:?}");
        assert!(a.contains_key("gen_ai.request.max_tokens"), "{a:?}");
        assert!(a.contains_key("gen_ai.response.finish_reasons"), "{a:?}");
        let int = |k: &str| -> u64 {
            match &a[k] {
                Value::String(s) => s.parse().unwrap(),
                v => v.as_u64().unwrap(),
            }
        };
        input += int("gen_ai.usage.input_tokens");
        output += int("gen_ai.usage.output_tokens");
        assert!(
            nodes.iter().any(|n| n["spanId"] == c["parentSpanId"]),
            "a call's parent is its node"
        );
    }
    assert_eq!(
        (input, output),
        (s.usage.prompt_tokens, s.usage.completion_tokens)
    );
}
