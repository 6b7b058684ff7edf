//! The OpenAI-compatible backend against the in-repo mock server: happy path,
//! every fault, retries, failover, budgets, record/replay and secrets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redraft::backend::openai::OpenAiModel;
use redraft::backend::{
    CallContext, CompletionRequest, ErrorKind, Message, ResponseFormat, SamplingParams,
};
use redraft::budget::Limits;
use redraft::event::{CallOutcome, Collect, Event};
use redraft::summary::{FailureKind, RunStatus};
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
    } else if prompt.contains("Your last answer had the wrong form") {
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
    assert_eq!(critique["max_tokens"], 200);
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
    let mock = MockServer::start(vec![Fault::Stall(Duration::from_secs(600))]).await;
    let (s, events) = run(
        self_refine("    timeout: 300ms"),
        model(&mock.url, serde_json::Value::Null),
        RunOptions::default(),
    )
    .await;
    // Finishing at all shows the stalled request was cut (it would take 10 minutes).
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
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
        // A 200 that is not JSON (a proxy's page) is retried like a 5xx.
        (Fault::WrongContentType, ErrorKind::Transient, "text/html"),
        // Our own size limit is ours, not the server's 413.
        (
            Fault::Huge(4096),
            ErrorKind::Permanent,
            "larger than redraft's 1024-byte limit",
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
        if let Fault::Huge(_) = fault {
            // Redraft's own limit, not a status the server never sent.
            assert!(!e.message.contains("413"), "{}", e.message);
        }
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

/// What the server served from its prompt cache is reused prompt tokens,
/// never more than the prompt; a reply without the detail reuses none.
#[tokio::test]
async fn prompt_tokens_the_server_cached_are_counted_as_reused() {
    let mock = MockServer::start(vec![Fault::CachedPrompt(3), Fault::CachedPrompt(10_000)]).await;
    let m = OpenAiModel::new("m", Some(&mock.url), &serde_json::Value::Null).unwrap();
    let req = request("a prompt of some length");
    let c = m.complete(&req).await.unwrap();
    assert_eq!(c.usage.cached_tokens, 3, "{:?}", c.usage);
    let c = m.complete(&req).await.unwrap();
    assert_eq!(
        c.usage.cached_tokens, c.usage.prompt_tokens,
        "{:?}",
        c.usage
    );
    let c = m.complete(&req).await.unwrap();
    assert_eq!(c.usage.cached_tokens, 0);
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
    let calls = (0..4).map(|i| {
        let m = m.clone();
        async move { m.complete(&request(&format!("c{i}"))).await.unwrap() }
    });
    futures_util::future::join_all(calls).await;
    // Four 100 ms requests started at once: the server never saw more than two.
    assert_eq!(mock.requests(), 4);
    assert!(
        (1..=2).contains(&mock.max_in_flight()),
        "{}",
        mock.max_in_flight()
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

/// Runs the CLI in a blocking task while the mock serves on the runtime.
async fn cli(args: Vec<String>, env: Vec<(&'static str, String)>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = crate::support::redraft_command();
        cmd.args(&args)
            .current_dir(root())
            .env_remove("RUST_LOG")
            .env_remove("OPENAI_API_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("binary runs")
    })
    .await
    .unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("redraft-openai-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_leaves_the_authorization_header() {
    const KEY: &str = "sk-redraft-test-7f3a9c1e5b";
    // The second request is refused with a body that echoes the key, as some servers do.
    let echo: &'static str = Box::leak(
        format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#)
            .into_boxed_str(),
    );
    let mock = MockServer::start_with(
        vec![
            Fault::Ok,
            Fault::Status {
                code: 401,
                retry_after: None,
                body: echo,
            },
        ],
        Duration::ZERO,
        Box::new(refine_reply),
        true,
    )
    .await;
    let (log, cassette) = (temp("secret.jsonl"), temp("secret-cassette.jsonl"));
    let cache = temp("secret-cache.db");
    let args: Vec<String> = [
        "run",
        "workflows/self-refine.yaml",
        "--json",
        "--log",
        log.to_str().unwrap(),
        "--log-content",
        "--record",
        cassette.to_str().unwrap(),
        "--cache",
        "on",
        "--cache-db",
        cache.to_str().unwrap(),
        "--model",
        &format!("writer=openai:mock-model@{}", mock.url),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = cli(
        args,
        vec![
            ("OPENAI_API_KEY", KEY.to_string()),
            ("RUST_LOG", "trace".to_string()),
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The key was sent...
    assert!(
        mock.seen()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {KEY}")))
    );
    // ...and appears nowhere else: stdout, stderr (with trace logging), event log, cassette.
    for (what, text) in [
        ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
        ("stderr", String::from_utf8_lossy(&out.stderr).into_owned()),
        ("log", std::fs::read_to_string(&log).unwrap()),
        ("cassette", std::fs::read_to_string(&cassette).unwrap()),
        // The response cache, byte for byte (the first reply was stored).
        (
            "cache",
            String::from_utf8_lossy(&std::fs::read(&cache).unwrap()).into_owned(),
        ),
    ] {
        assert!(!text.contains(KEY), "the key leaked into {what}:\n{text}");
        assert!(
            !text.contains("7f3a9c1e5b"),
            "part of the key leaked into {what}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed (HTTP 401)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_with_retries_replays_deterministically() {
    let mock = MockServer::start_with(
        vec![
            Fault::Ok,
            Fault::Status {
                code: 503,
                retry_after: Some("0"),
                body: "{}",
            },
            Fault::Truncated,
        ],
        Duration::ZERO,
        Box::new(refine_reply),
        true,
    )
    .await;
    let (cassette, log1, log2) = (
        temp("replay.jsonl"),
        temp("record-log.jsonl"),
        temp("replay-log.jsonl"),
    );
    let base = |log: &std::path::Path, model: String| -> Vec<String> {
        vec![
            "run".into(),
            "workflows/self-refine.yaml".into(),
            "--json".into(),
            "--log".into(),
            log.display().to_string(),
            "--model".into(),
            model,
        ]
    };
    let mut record = base(&log1, format!("writer=openai:mock-model@{}", mock.url));
    record.extend(["--record".to_string(), cassette.display().to_string()]);
    let first = cli(record, vec![]).await;
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let served = mock.requests();
    assert_eq!(served, 5, "draft, critique (503, truncated, ok), revise");

    let second = cli(
        base(&log2, format!("writer=replay:{}", cassette.display())),
        vec![],
    )
    .await;
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(mock.requests(), served, "the replay made no HTTP request");
    let summary = |o: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (summary(&first), summary(&second));
    assert_eq!(a["output"], b["output"]);
    assert_eq!(a["usage"]["calls"], b["usage"]["calls"]);
    assert_eq!(a["usage"]["total_tokens"], b["usage"]["total_tokens"]);
    // The same calls, retries and errors in the same order.
    let calls = |log: &std::path::Path| -> Vec<(String, u64, bool)> {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["event"] == "model_call")
            .map(|e| {
                (
                    e["node"].as_str().unwrap().to_string(),
                    e["retry"].as_u64().unwrap(),
                    e["error"].is_string(),
                )
            })
            .collect()
    };
    assert_eq!(calls(&log1), calls(&log2));
    assert_eq!(calls(&log1).iter().filter(|c| c.2).count(), 2);

    // A request the cassette lacks names the closest one and the difference.
    let miss = cli(
        vec![
            "run".into(),
            "workflows/self-refine.yaml".into(),
            "--input".into(),
            "task=Write a limerick.".into(),
            "--model".into(),
            format!("writer=replay:{}", cassette.display()),
        ],
        vec![],
    )
    .await;
    assert_eq!(miss.status.code(), Some(4));
    let err = String::from_utf8_lossy(&miss.stderr);
    assert!(
        err.contains("no recorded reply for node `draft` round 1"),
        "{err}"
    );
    assert!(err.contains("closest recorded request"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_4_when_the_server_stays_down_and_the_log_stays_valid() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let log = temp("down.jsonl");
    let out = cli(
        vec![
            "run".into(),
            "workflows/self-refine.yaml".into(),
            "--log".into(),
            log.display().to_string(),
            "--model".into(),
            format!("writer=openai:m@{dead}"),
        ],
        vec![],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect();
    assert_eq!(
        events.iter().filter(|e| e["event"] == "model_call").count(),
        3,
        "a try and two retries"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["summary"]["status"].as_str()),
        (Some("run_finished"), Some("failed"))
    );
}

#[tokio::test]
async fn calls_in_the_summary_equal_requests_the_server_received() {
    // A server error (retried), then a critique the workflow's wall time cuts
    // after the server got it.
    let mock = MockServer::start_with(
        vec![
            Fault::Status {
                code: 500,
                retry_after: None,
                body: "{}",
            },
            Fault::Ok,
            Fault::Stall(Duration::from_secs(600)),
        ],
        Duration::ZERO,
        Box::new(refine_reply),
        true,
    )
    .await;
    let opts = RunOptions {
        budget: Limits {
            wall_time: Some(Duration::from_secs(2)),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let (s, events) = run(
        self_refine("    retry_delay: 10ms"),
        model(&mock.url, serde_json::Value::Null),
        opts,
    )
    .await;
    assert_eq!(s.status, RunStatus::BudgetExhausted, "{:?}", s.error);
    assert_eq!(mock.requests(), 3);
    assert_eq!(s.usage.calls, 3, "summary calls = requests received");
    let outcomes: Vec<CallOutcome> = events
        .iter()
        .filter_map(|e| match e {
            Event::ModelCall(c) => Some(c.outcome),
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        [CallOutcome::Error, CallOutcome::Ok, CallOutcome::Cut]
    );

    // Cancelled (Ctrl-C) while the server holds the draft request.
    let mock = MockServer::start(vec![Fault::Stall(Duration::from_secs(600))]).await;
    let cancel = redraft::CancellationToken::new();
    let opts = RunOptions {
        cancel: cancel.clone(),
        ..RunOptions::default()
    };
    let wf = self_refine("");
    let m = model(&mock.url, serde_json::Value::Null);
    let running = tokio::spawn(async move { run(wf, m, opts).await });
    // Cancel once the server has the request (bounded wait).
    for _ in 0..1000 {
        if mock.requests() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(mock.requests(), 1);
    cancel.cancel();
    let (s, events) = running.await.unwrap();
    assert_eq!(s.status, RunStatus::Interrupted);
    assert_eq!(s.usage.calls, 1, "summary calls = requests received");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ModelCall(c) if c.outcome == CallOutcome::Cancelled))
    );
}

#[tokio::test]
async fn a_200_reply_that_is_cut_or_not_json_is_retried_by_default() {
    let mock = MockServer::start(vec![Fault::Truncated, Fault::WrongContentType]).await;
    // No `retries` key: the default policy (two retries), as for a 5xx.
    let (s, _) = run(
        self_refine("    retry_delay: 10ms"),
        model(&mock.url, serde_json::Value::Null),
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(mock.requests(), 3);
    assert_eq!(s.usage.calls, 3);
}

#[tokio::test]
async fn a_model_override_keeps_the_workflow_settings() {
    let mock = MockServer::start(vec![Fault::Huge(4096)]).await;
    let text = std::fs::read_to_string(root().join("workflows/self-refine.yaml"))
        .unwrap()
        .replace(
            "max_tokens: 256",
            "max_tokens: 256\n    settings: { max_response_bytes: 1000 }",
        );
    let wf = Arc::new(
        redraft::workflow::load_str(&text, "self-refine.yaml", &root().join("workflows"))
            .map_err(|e| e.render())
            .unwrap(),
    );
    let engine = Engine::new().with_model_spec("writer", format!("openai:m@{}", mock.url));
    let s = engine.run(wf.clone(), RunOptions::default()).await.unwrap();
    // The workflow's 1000-byte limit applied to the overriding spec.
    assert_eq!(s.status, RunStatus::Failed);
    let error = s.error.unwrap();
    assert!(error.contains("1000-byte limit"), "{error}");

    // Overriding a model the workflow does not have is an error.
    let engine = Engine::new().with_model_spec("critic", format!("openai:m@{}", mock.url));
    let e = engine
        .run(wf.clone(), RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, redraft::RunError::UnknownModel { name, .. } if name == "critic"),
        "{e}"
    );
    let engine = Engine::new().with_model("critic", model(&mock.url, serde_json::Value::Null));
    assert!(engine.run(wf, RunOptions::default()).await.is_err());
}
