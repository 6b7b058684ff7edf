//! The OpenAI-compatible backend against the in-repo mock server: happy path,
//! every fault, retries, failover, budgets, record/replay and secrets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redraft::backend::openai::OpenAiModel;
use redraft::backend::{
    CallContext, CompletionRequest, ErrorKind, Message, ResponseFormat, SamplingParams,
};
use redraft::budget::Limits;
use redraft::event::{Collect, Event};
use redraft::metrics::{FailureKind, RunStatus};
use redraft::{Engine, LanguageModel, RunOptions};

use crate::mock_openai::{Fault, MockServer};
use crate::support::root;

/// The shipped self-refine workflow, with extra model keys for the writer.
fn self_refine(extra_model_keys: &str) -> Arc<redraft::Workflow> {
    let text = std::fs::read_to_string(root().join("workflows/self-refine.yaml"))
        .unwrap()
        .replace(
            "max_tokens: 256",
            &format!("max_tokens: 256\n{extra_model_keys}"),
        );
    Arc::new(
        redraft::workflow::load_str(&text, "self-refine.yaml", &root().join("workflows"))
            .map_err(|e| e.render())
            .unwrap(),
    )
}

fn model(url: &str, settings: serde_json::Value) -> Arc<dyn LanguageModel> {
    Arc::new(OpenAiModel::new("mock-model", Some(url), &settings).expect("model opens"))
}

async fn run(
    wf: Arc<redraft::Workflow>,
    model: Arc<dyn LanguageModel>,
    opts: RunOptions,
) -> (redraft::RunSummary, Vec<Event>) {
    let events = Arc::new(Collect::default());
    let engine = Engine::new()
        .with_model("writer", model)
        .with_recorder(events.clone());
    let s = engine.run(wf, opts).await.expect("run starts");
    (s, events.take())
}

/// Draft fails the checks, critique is JSON, the revision passes.
fn refine_reply(req: &serde_json::Value) -> String {
    let prompt = req["messages"].to_string();
    if req.get("response_format").is_some() {
        r#"{"score": 4, "feedback": "Write three lines and mention tests."}"#.into()
    } else if prompt.contains("Current answer") {
        "Old code untangles,\ngreen tests keep watch through the night,\nthe build breathes again."
            .into()
    } else {
        "one line about code".into()
    }
}

fn request(text: &str) -> CompletionRequest {
    CompletionRequest {
        messages: vec![Message::user(text)],
        sampling: SamplingParams {
            max_tokens: 16,
            ..Default::default()
        },
        n: 1,
        logprobs: None,
        response_format: ResponseFormat::Text,
        context: CallContext::default(),
    }
}

#[tokio::test]
async fn self_refine_over_http_with_a_structured_critique() {
    let mock = MockServer::start_with(vec![], Duration::ZERO, Box::new(refine_reply), true).await;
    let (s, events) = run(
        self_refine(""),
        model(&mock.url, serde_json::Value::Null),
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(s.verified, Some(true));
    let seen = mock.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.path == "/v1/chat/completions"));
    // The critique asked for the node's JSON Schema as the response format.
    let critique = &seen[1].body;
    assert_eq!(critique["response_format"]["type"], "json_schema");
    assert_eq!(
        critique["response_format"]["json_schema"]["schema"]["required"],
        serde_json::json!(["score", "feedback"])
    );
    assert_eq!(critique["model"], "mock-model");
    assert_eq!(critique["max_tokens"], 160);
    // The critique's fields are in its output, and usage comes from the server.
    let out = events.iter().find_map(|e| match e {
        Event::NodeFinished {
            node,
            output: Some(o),
            ..
        } if node == "critique" => Some(o.clone()),
        _ => None,
    });
    assert_eq!(out.unwrap()["score"], 4);
    assert!(!s.usage.estimated);
    assert_eq!(s.usage.calls, 3);
    assert!(s.usage.completion_tokens > 0);
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_server_said() {
    let faults = vec![Fault::Status {
        code: 429,
        retry_after: Some("0.3"),
        body: r#"{"error":{"message":"slow down"}}"#,
    }];
    let mock = MockServer::start(faults).await;
    let start = Instant::now();
    let (s, events) = run(
        self_refine(""),
        model(&mock.url, serde_json::Value::Null),
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let calls: Vec<_> = events
        .iter()
        .filter_map(|e| {
            if let Event::ModelCall(c) = e {
                Some(c)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].retry, calls[1].retry), (0, 1));
    assert!(
        calls[0]
            .error
            .as_ref()
            .unwrap()
            .contains("rate limited (HTTP 429)")
    );
    assert_eq!(s.usage.calls, 2, "every attempt is a call");
}

#[tokio::test]
async fn server_errors_and_transport_faults_are_retried() {
    let faults = vec![
        Fault::Status {
            code: 500,
            retry_after: None,
            body: "{}",
        },
        Fault::Status {
            code: 502,
            retry_after: None,
            body: "{}",
        },
        Fault::Truncated,
        Fault::Malformed,
        Fault::Drop,
    ];
    let mock = MockServer::start(faults).await;
    let wf = self_refine("    retries: 5\n    retry_delay: 10ms");
    let (s, events) = run(
        wf,
        model(&mock.url, serde_json::json!({ "unhealthy_for": "1ms" })),
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let errors: Vec<String> = events
        .iter()
        .filter_map(|e| {
            if let Event::ModelCall(c) = e {
                c.error.clone()
            } else {
                None
            }
        })
        .collect();
    assert_eq!(errors.len(), 5, "{errors:#?}");
    assert!(errors[0].contains("HTTP 500") && errors[1].contains("HTTP 502"));
    assert!(errors[2].contains("transport error"), "{}", errors[2]);
    assert!(errors[3].contains("malformed reply"), "{}", errors[3]);
    assert_eq!(mock.requests(), 6);
}

#[tokio::test]
async fn a_stall_past_the_timeout_is_cut_and_retried() {
    let mock = MockServer::start(vec![Fault::Stall(Duration::from_secs(5))]).await;
    let start = Instant::now();
    let (s, events) = run(
        self_refine("    timeout: 300ms"),
        model(&mock.url, serde_json::Value::Null),
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert!(start.elapsed() < Duration::from_secs(4));
    let first = events
        .iter()
        .find_map(|e| {
            if let Event::ModelCall(c) = e {
                Some(c.clone())
            } else {
                None
            }
        })
        .unwrap();
    assert!(first.error.unwrap().contains("no reply within 300ms"));
}

#[tokio::test]
async fn each_fault_maps_to_a_typed_error() {
    let cases: Vec<(Fault, ErrorKind, &str)> = vec![
        (
            Fault::Status {
                code: 429,
                retry_after: Some("2"),
                body: "{}",
            },
            ErrorKind::Transient,
            "rate limited",
        ),
        (
            Fault::Status {
                code: 429,
                retry_after: None,
                body: r#"{"error":{"code":"insufficient_quota"}}"#,
            },
            ErrorKind::Permanent,
            "quota",
        ),
        (
            Fault::Status {
                code: 503,
                retry_after: None,
                body: "{}",
            },
            ErrorKind::Transient,
            "server error",
        ),
        (
            Fault::Status {
                code: 401,
                retry_after: None,
                body: "{}",
            },
            ErrorKind::Permanent,
            "authentication failed",
        ),
        (
            Fault::Status {
                code: 404,
                retry_after: None,
                body: "{}",
            },
            ErrorKind::Permanent,
            "not found",
        ),
        (
            Fault::Status {
                code: 400,
                retry_after: None,
                body: r#"{"error":{"code":"context_length_exceeded"}}"#,
            },
            ErrorKind::ContextLength,
            "context length",
        ),
        (Fault::Malformed, ErrorKind::Transient, "malformed reply"),
        (Fault::Truncated, ErrorKind::Transient, "transport error"),
        (Fault::WrongContentType, ErrorKind::Permanent, "text/html"),
        (
            Fault::Huge(4096),
            ErrorKind::Permanent,
            "larger than the 1024-byte limit",
        ),
    ];
    for (fault, kind, needle) in cases {
        let mock = MockServer::start(vec![fault.clone()]).await;
        let m = OpenAiModel::new(
            "m",
            Some(&mock.url),
            &serde_json::json!({ "max_response_bytes": 1024 }),
        )
        .unwrap();
        let e = m.complete(&request("hi")).await.unwrap_err();
        assert_eq!(e.kind, kind, "{fault:?}: {e}");
        assert!(e.message.contains(needle), "{fault:?}: {}", e.message);
        if let Fault::Status {
            code: 429,
            retry_after: Some(_),
            ..
        } = fault
        {
            assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        }
    }
}

#[tokio::test]
async fn missing_usage_is_estimated_and_marked() {
    let mock = MockServer::start(vec![Fault::NoUsage]).await;
    let m = OpenAiModel::new("m", Some(&mock.url), &serde_json::Value::Null).unwrap();
    let c = m
        .complete(&request("a prompt of some length"))
        .await
        .unwrap();
    assert!(c.usage_estimated);
    assert!(c.usage.prompt_tokens > 0 && c.usage.completion_tokens > 0);
    let c = m.complete(&request("again")).await.unwrap();
    assert!(!c.usage_estimated);
}

#[tokio::test]
async fn logprobs_and_embeddings() {
    let mock = MockServer::start(vec![]).await;
    let m = OpenAiModel::new("m", Some(&mock.url), &serde_json::Value::Null).unwrap();
    let mut req = request("Is it right?");
    req.logprobs = Some(2);
    let c = m.complete(&req).await.unwrap();
    let lp = c.choices[0].logprobs.as_ref().unwrap();
    assert_eq!(lp[0].top.len(), 2);
    assert_eq!(mock.seen()[0].body["top_logprobs"], 2);
    let e = m
        .embed(&redraft::backend::EmbeddingRequest {
            texts: vec!["one two".into(), "three".into()],
            context: CallContext::default(),
        })
        .await
        .unwrap();
    assert_eq!(e.vectors.len(), 2);
    assert_eq!(e.vectors[0], vec![7.0, 2.0, 1.0]);
}

#[tokio::test]
async fn requests_spread_over_endpoints_and_fail_over() {
    let a = MockServer::start(vec![]).await;
    let b = MockServer::start(vec![]).await;
    let m = OpenAiModel::new(
        "m",
        Some(&a.url),
        &serde_json::json!({ "base_urls": [b.url] }),
    )
    .unwrap();
    for i in 0..10 {
        m.complete(&request(&format!("call {i}"))).await.unwrap();
    }
    assert_eq!((a.requests(), b.requests()), (5, 5));

    // An endpoint that refuses connections: every call still succeeds, and
    // after the first failure the dead endpoint is skipped.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let live = MockServer::start(vec![]).await;
    let m = OpenAiModel::new(
        "m",
        Some(&dead),
        &serde_json::json!({ "base_urls": [live.url], "unhealthy_for": "60s" }),
    )
    .unwrap();
    for i in 0..6 {
        m.complete(&request(&format!("call {i}"))).await.unwrap();
    }
    assert_eq!(live.requests(), 6);
}

#[tokio::test]
async fn concurrency_per_endpoint_is_bounded() {
    let mock = MockServer::start_with(
        vec![],
        Duration::from_millis(100),
        Box::new(crate::mock_openai::default_reply),
        true,
    )
    .await;
    let m = Arc::new(
        OpenAiModel::new(
            "m",
            Some(&mock.url),
            &serde_json::json!({ "concurrency_per_endpoint": 2 }),
        )
        .unwrap(),
    );
    let start = Instant::now();
    let calls = (0..4).map(|i| {
        let m = m.clone();
        async move { m.complete(&request(&format!("c{i}"))).await.unwrap() }
    });
    futures_util::future::join_all(calls).await;
    // Four 100 ms requests, two at a time: about 200 ms.
    let t = start.elapsed();
    assert!(
        t >= Duration::from_millis(200) && t < Duration::from_millis(380),
        "{t:?}"
    );
}

#[tokio::test]
async fn a_retry_never_skips_the_budget_check() {
    let faults = (0..10)
        .map(|_| Fault::Status {
            code: 503,
            retry_after: Some("0"),
            body: "{}",
        })
        .collect();
    let mock = MockServer::start(faults).await;
    let opts = RunOptions {
        budget: Limits {
            calls: Some(3),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let (s, _) = run(
        self_refine("    retries: 8"),
        model(&mock.url, serde_json::json!({ "unhealthy_for": "1ms" })),
        opts,
    )
    .await;
    assert_eq!(s.status, RunStatus::BudgetExhausted);
    assert_eq!(mock.requests(), 3);
    assert_eq!(s.usage.calls, 3);
}

#[tokio::test]
async fn a_backend_that_stays_down_fails_the_run() {
    let mock = MockServer::start(
        (0..10)
            .map(|_| Fault::Status {
                code: 503,
                retry_after: Some("0"),
                body: "{}",
            })
            .collect(),
    )
    .await;
    let (s, _) = run(
        self_refine(""),
        model(&mock.url, serde_json::json!({ "unhealthy_for": "1ms" })),
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.failure, Some(FailureKind::Backend));
    assert_eq!(mock.requests(), 3, "one try and two retries");
}
