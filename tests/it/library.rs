//! The node library on the scripted backend: each kind through a workflow
//! fixture in `tests/fixtures/library/`.

use std::sync::Arc;

use redraft::backend::BoxFuture;
use redraft::event::Event;
use redraft::review::{ReviewError, ReviewRequest, Reviewer};
use redraft::summary::RunStatus;
use redraft::workflow::ReviewDecisions;
use redraft::{RunOptions, RunSummary};

use crate::support::{fixtures, have_sandbox, load, root, run, runs, workflow};

fn library(name: &str) -> Arc<redraft::Workflow> {
    load(&fixtures().join("library").join(name))
}

fn script(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("library").join(name)).unwrap()
}

/// Runs `library/NAME.yaml` on its `NAME.replies.yaml`.
async fn run_library(name: &str, opts: RunOptions) -> (RunSummary, Vec<Event>) {
    run(
        library(&format!("{name}.yaml")),
        &script(&format!("{name}.replies.yaml")),
        opts,
    )
    .await
}

fn output_of(events: &[Event], node: &str, round: u32) -> serde_json::Value {
    events
        .iter()
        .find_map(|e| match e {
            Event::NodeFinished {
                node: n,
                round: r,
                output: Some(o),
                ..
            } if n == node && *r == round => Some((**o).clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no output of {node} in round {round}"))
}

#[tokio::test]
async fn execute_repairs_a_program_until_its_tests_pass() {
    if !have_sandbox() {
        return;
    }
    let (s, events) = run_library("repair", RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(s.verified, Some(true));
    assert!(
        s.output
            .as_ref()
            .unwrap()
            .as_str()
            .unwrap()
            .contains("a + b")
    );
    // Round 1: both tests fail, with what was expected and what came out.
    let first = output_of(&events, "run", 1);
    assert_eq!(first["passed"], false);
    assert_eq!(first["score"], 0.0);
    let r0 = &first["results"][0];
    assert_eq!(r0["status"], "failed");
    assert_eq!(r0["expected"], "3");
    assert_eq!(r0["actual"].as_str().unwrap().trim(), "-1");
    let feedback = first["feedback"].as_str().unwrap();
    assert!(feedback.starts_with("0 of 2 tests passed."), "{feedback}");
    assert!(feedback.contains(r#"expected "3", got "-1""#), "{feedback}");
    assert_eq!(first["isolation"], "bubblewrap");
    // Round 2 passes; the loop metrics see the verdicts.
    assert_eq!(output_of(&events, "run", 2)["passed"], true);
    let report = &s.loops[0];
    assert_eq!((report.rounds, report.wins), (2, 1));
    assert_eq!(runs(&s, "fix"), 1);
}

#[tokio::test]
async fn execute_reports_every_outcome() {
    if !have_sandbox() {
        return;
    }
    let (s, _) = run_library("outcomes", RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let out = s.output.unwrap();
    let statuses: Vec<&str> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["passed", "failed", "error", "timeout", "output_limit"]
    );
    assert_eq!(out["passed_count"], 1);
    assert_eq!(out["passed"], false);
    let feedback = out["feedback"].as_str().unwrap();
    assert!(feedback.contains("AssertionError: three"), "{feedback}");
    assert!(feedback.contains("NameError"), "{feedback}");
    assert!(feedback.contains("timed out after 1.5 s"), "{feedback}");
}

#[tokio::test]
async fn assert_tests_say_what_an_equality_got() {
    if !have_sandbox() {
        return;
    }
    let wf = workflow(
        r#"
version: 1
models: { m: "scripted:x" }
inputs:
  tests: { type: array }
nodes:
  - id: run
    kind: execute
    mode: assert
    code: "LIMIT = 3\ndef f(x):\n    return x + 1\n"
    tests: "tests"
output: { from: run, field: "." }
"#,
    );
    let tests = serde_json::json!([
        "assert f(1) == 2",
        "assert f(2) == 4",
        // Not one equality: run as written (a message, a chain, another operator).
        "assert f(1) < LIMIT, 'too big'",
        "assert f(5) < LIMIT, 'too big'",
        "assert 1 < f(1) == 2",
        // A string that would end a naive harness's literal, then an equality.
        "assert f(0) == len('\"\"\"\\n)\\'')",
        "assert g(1) == 2",
        "x = f(1)\nassert x == 2",
    ]);
    let mut opts = RunOptions::default();
    opts.inputs.insert("tests".into(), tests);
    let (s, _) = run(wf, "replies: []", opts).await;
    let out = s.output.unwrap();
    let statuses: Vec<&str> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "passed", "failed", "passed", "failed", "passed", "failed", "error", "passed"
        ],
        "{out}"
    );
    let feedback = out["feedback"].as_str().unwrap();
    assert!(
        feedback.contains("Test 2: `assert f(2) == 4` failed: AssertionError: got 3, expected 4"),
        "{feedback}"
    );
    assert!(
        feedback
            .contains("Test 4: `assert f(5) < LIMIT, 'too big'` failed: AssertionError: too big"),
        "{feedback}"
    );
    assert!(
        feedback.contains("AssertionError: got 1, expected 6"),
        "{feedback}"
    );
    assert!(
        feedback.contains("NameError: name 'g' is not defined"),
        "{feedback}"
    );
}

#[tokio::test]
async fn execute_tests_can_come_from_inputs() {
    if !have_sandbox() {
        return;
    }
    let wf = workflow(
        r#"
version: 1
models: { m: "scripted:x" }
inputs:
  tests: { type: array }
nodes:
  - { id: draft, kind: generate, template: "go" }
  - { id: run, kind: execute, code: "print(input()[::-1])", tests: "tests" }
edges: [{ from: draft, to: run }]
output: { from: run, field: "." }
"#,
    );
    let mut opts = RunOptions::default();
    opts.inputs.insert(
        "tests".into(),
        serde_json::json!([{"input": "abc", "output": "cba"}, {"input": "xy", "output": "xy"}]),
    );
    let (s, _) = run(wf, "replies: [{ text: ok }]", opts).await;
    let out = s.output.unwrap();
    assert_eq!(out["passed_count"], 1, "{out}");
    assert_eq!(out["total"], 2);

    // A malformed test list is a clear workflow error.
    let wf = workflow(
        r#"
version: 1
models: { m: "scripted:x" }
inputs:
  tests: { type: array }
nodes:
  - { id: run, kind: execute, code: "print(1)", tests: "tests" }
output: { from: run, field: "." }
"#,
    );
    let mut opts = RunOptions::default();
    opts.inputs
        .insert("tests".into(), serde_json::json!([{"input": "abc"}]));
    let (s, _) = run(wf, "replies: []", opts).await;
    assert_eq!(s.status, RunStatus::Failed);
    let error = s.error.unwrap();
    assert!(
        error.contains("`run`: test 1: needs string `input` and `output`"),
        "{error}"
    );
}

#[test]
fn execute_without_a_sandbox_refuses_unless_opted_out() {
    let dir = std::env::temp_dir().join(format!("redraft-nosandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wf = |isolation: &str| {
        format!(
            "version: 1\nnodes:\n  - {{ id: run, kind: execute, code: \"print(input())\", isolation: {isolation}, tests: [{{ input: hi, output: hi }}] }}\noutput: {{ from: run, field: \".\" }}\n"
        )
    };
    let run_cli = |file: &str| {
        crate::support::redraft_command()
            .args(["run", file, "--json", "-q"])
            // No bubblewrap on this PATH.
            .env("PATH", "/nonexistent")
            .output()
            .unwrap()
    };
    let strict = dir.join("strict.yaml");
    std::fs::write(&strict, wf("sandbox")).unwrap();
    let out = run_cli(strict.to_str().unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "failed");
    assert!(
        summary["error"].as_str().unwrap().contains("bubblewrap"),
        "{summary}"
    );
    let open = dir.join("open.yaml");
    std::fs::write(&open, wf("none")).unwrap();
    let out = run_cli(open.to_str().unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["output"]["passed"], true, "{summary}");
    assert_eq!(summary["output"]["isolation"], "none");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn extract_embed_and_cluster_pick_representatives_reproducibly() {
    let wf = library("codechain.yaml");
    let (s, events) = run(
        wf.clone(),
        &script("codechain.replies.yaml"),
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let program = output_of(&events, "program", 1);
    let names: Vec<&str> = program["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "parse_numbers",
            "total_sum",
            "read_numbers",
            "sum_values",
            "parse_ints"
        ]
    );
    let vectors = output_of(&events, "vectors", 1);
    assert_eq!(vectors["method"], "tfidf");
    assert_eq!(vectors["count"], 5);
    assert_eq!(vectors["dims"], 256);
    let groups = output_of(&events, "groups", 1);
    assert_eq!(groups["k"], 2);
    // The parsers and the summers fall into two clusters.
    let a = groups["assignments"].as_array().unwrap();
    assert_eq!(a[0], a[2]);
    assert_eq!(a[0], a[4]);
    assert_eq!(a[1], a[3]);
    assert_ne!(a[0], a[1]);
    let reps: Vec<&str> = groups["representatives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(reps.len(), 2);
    assert!(groups["text"].as_str().unwrap().contains("def "));
    // Same seed, same clusters.
    let (_, again) = run(wf, &script("codechain.replies.yaml"), RunOptions::default()).await;
    assert_eq!(output_of(&again, "groups", 1), groups);
}

#[tokio::test]
async fn embed_with_a_model_is_a_metered_call() {
    let wf = workflow(
        r#"
version: 1
models: { m: "scripted:x" }
nodes:
  - { id: draft, kind: generate, template: "go", n: 3 }
  - { id: vectors, kind: embed, items: "draft.samples", model: m }
  - { id: groups, kind: cluster, from: vectors, k: 2 }
edges: [{ from: draft, to: vectors }, { from: vectors, to: groups }]
output: { from: groups, field: "." }
"#,
    );
    let script = r#"
replies:
  - { node: draft, samples: ["sort the list", "sort it quickly", "print a greeting"] }
embeddings:
  - { text: "sort", vector: [1.0, 0.0] }
  - { text: "greeting", vector: [0.0, 1.0] }
"#;
    let (s, events) = run(wf, script, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let calls: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::ModelCall(c) if c.node == "vectors" => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].prompt_tokens, 3 + 3 + 3);
    assert_eq!(s.usage.calls, 2);
    let out = s.output.unwrap();
    assert_eq!(out["assignments"], serde_json::json!([0, 0, 1]));
}

#[tokio::test]
async fn a_weighted_vote_can_overrule_the_majority() {
    let (s, events) = run_library("vote", RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let majority = output_of(&events, "majority", 1);
    assert_eq!(majority["text"], "41");
    assert_eq!(majority["method"], "majority");
    let weighted = output_of(&events, "weighted", 1);
    assert_eq!(weighted["text"], "42");
    assert_eq!(weighted["method"], "weighted");
    // 0.9 of 1.4 total weight.
    let agreement = weighted["agreement"].as_f64().unwrap();
    assert!((agreement - 0.9 / 1.4).abs() < 1e-9, "{agreement}");
}

#[tokio::test]
async fn tool_commands_get_model_text_as_single_arguments() {
    let (s, _) = run_library("tool", RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let out = s.output.unwrap();
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["status"], 0);
    // The shell metacharacters arrived as text in one argument.
    assert_eq!(out["json"]["city"], "Oslo; rm -rf / $(whoami)");
    assert_eq!(out["json"]["days"], 3);
    // max_output: 60 characters, marked as cut.
    assert_eq!(out["truncated"], true);
    assert_eq!(out["text"].as_str().unwrap().chars().count(), 61);
}

#[tokio::test]
async fn tool_failures_are_classified() {
    let wf = |command: &str| {
        workflow(&format!(
            "version: 1\nnodes:\n  - {{ id: call, kind: tool, command: {command}, timeout: 1s }}\noutput: {{ from: call, field: \".\" }}\n"
        ))
    };
    let tool = root().join("tests/fixtures/tools/lookup");
    let tool = tool.display();
    let cases = [
        (format!(r#"["{tool}", "--bogus"]"#), "exit_status"),
        (
            format!(r#"["{tool}", "--city", "x", "--sleep", "5"]"#),
            "timeout",
        ),
        (r#"["/nonexistent/tool"]"#.to_string(), "spawn"),
    ];
    for (command, class) in cases {
        let (s, _) = run(wf(&command), "replies: []", RunOptions::default()).await;
        let out = s.output.unwrap_or_default();
        assert_eq!(out["error_class"], class, "{command}: {out}");
        assert_eq!(out["ok"], false);
    }
}

#[tokio::test]
async fn tool_http_calls_capture_status_and_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let server_seen = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = server_seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                // Read headers and the (small) body.
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&got).to_string();
                let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push(format!("{path} {body}"));
                let (status, reply) = if path == "/fail" {
                    (
                        "500 Internal Server Error",
                        r#"{"error": "boom"}"#.to_string(),
                    )
                } else {
                    ("200 OK", format!(r#"{{"echo": {body}}}"#))
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    let wf = |path: &str, body: &str| {
        workflow(&format!(
            "version: 1\nmodels: {{ m: \"scripted:x\" }}\nnodes:\n  - {{ id: params, kind: generate, template: go }}\n  - {{ id: call, kind: tool, http: {{ url: \"http://{addr}{path}\", body: '{body}' }} }}\nedges: [{{ from: params, to: call }}]\noutput: {{ from: call, field: \".\" }}\n"
        ))
    };
    let script = r#"replies: [{ node: params, text: '{"q": "weather in Oslo"}' }]"#;
    let (s, _) = run(
        wf("/api", "{{ params.text }}"),
        script,
        RunOptions::default(),
    )
    .await;
    let out = s.output.unwrap();
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["ok"], true);
    assert_eq!(out["json"]["echo"]["q"], "weather in Oslo");

    let (s, _) = run(
        wf("/fail", "{{ params.text }}"),
        script,
        RunOptions::default(),
    )
    .await;
    let out = s.output.unwrap();
    assert_eq!(
        (out["status"].clone(), out["error_class"].clone()),
        (500.into(), "http_5xx".into())
    );

    // Parameters that are not JSON never reach the endpoint.
    let before = seen.lock().unwrap().len();
    let bad = r#"replies: [{ node: params, text: "city = Oslo" }]"#;
    let (s, _) = run(wf("/api", "{{ params.text }}"), bad, RunOptions::default()).await;
    let out = s.output.unwrap();
    assert_eq!(out["error_class"], "invalid_parameters", "{out}");
    assert_eq!(seen.lock().unwrap().len(), before);

    // Nothing listening.
    let closed = workflow(
        "version: 1\nnodes:\n  - { id: call, kind: tool, http: { url: \"http://127.0.0.1:9/x\", method: GET } }\noutput: { from: call, field: \".\" }\n",
    );
    let (s, _) = run(closed, "replies: []", RunOptions::default()).await;
    assert_eq!(s.output.unwrap()["error_class"], "connection");
}

fn reviews(s: &RunSummary) -> Vec<(u32, u32, u32)> {
    s.reviews
        .iter()
        .map(|r| (r.depth, r.proposed, r.accepted))
        .collect()
}

#[tokio::test]
async fn human_review_applies_accepted_edits_and_forgets_nothing_rejected() {
    let (s, events) = run_library("review", RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let first = output_of(&events, "review", 1);
    let edits = first["edits"].as_array().unwrap();
    assert_eq!(edits.len(), 2, "{first}");
    assert_eq!(
        (edits[0]["before"].as_str(), edits[0]["after"].as_str()),
        (Some("was"), Some("were"))
    );
    assert_eq!(edits[0]["kind"], "replace");
    assert_eq!(edits[0]["intent"], "fluency");
    assert_eq!(edits[1]["decision"], "reject");
    assert_eq!(
        first["text"],
        "The results were good and we has finish the tests."
    );
    // Round 2 re-proposes only the rejected edit: filtered, nothing left, stop.
    assert_eq!(reviews(&s), [(1, 2, 1), (2, 0, 0)]);
    assert_eq!(s.reviews[0].acceptance_rate, Some(0.5));
    assert_eq!(s.reviews[1].acceptance_rate, None);
    assert_eq!(
        s.output.unwrap(),
        "The results were good and we has finish the tests."
    );
}

#[tokio::test]
async fn review_decisions_from_the_run_override_the_workflow() {
    let opts = RunOptions {
        review: Some(ReviewDecisions::AcceptAll),
        ..RunOptions::default()
    };
    let (s, _) = run_library("review", opts).await;
    assert_eq!(reviews(&s), [(1, 2, 2), (2, 0, 0)]);
    assert_eq!(
        s.output.unwrap(),
        "The results were good and we have finished the tests."
    );
    // Asking needs a terminal; tests have none.
    let opts = RunOptions {
        review: Some(ReviewDecisions::Ask),
        ..RunOptions::default()
    };
    let (s, _) = run_library("review", opts).await;
    assert_eq!(s.status, RunStatus::Failed);
    assert!(s.error.unwrap().contains("--review accept-all"));
}

/// A person who never decides: the node's `timeout` fails it, naming the
/// limit; without one the run would wait for good.
#[tokio::test]
async fn a_review_nobody_decides_fails_at_the_nodes_timeout() {
    struct Away;
    impl Reviewer for Away {
        fn review<'a>(
            &'a self,
            _: ReviewRequest<'a>,
        ) -> BoxFuture<'a, Result<Vec<bool>, ReviewError>> {
            Box::pin(std::future::pending())
        }
    }
    let wf = workflow(
        r#"
version: 1
models: { m: { spec: "scripted:unused" } }
inputs: { document: { type: string, default: "It were good." } }
nodes:
  - { id: propose, kind: revise, template: "Fix: {{ inputs.document }}" }
  - { id: review, kind: human_review, before: "{{ inputs.document }}", after: "{{ propose.text }}", timeout: 50ms }
edges: [{ from: propose, to: review }]
output: { from: [review] }
"#,
    );
    let opts = RunOptions {
        review: Some(ReviewDecisions::Ask),
        reviewer: Some(Arc::new(Away)),
        ..RunOptions::default()
    };
    let (s, _) = run(
        wf,
        r#"{"replies": [{"node": "propose", "text": "It was good."}]}"#,
        opts,
    )
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    let error = s.error.unwrap();
    assert!(error.contains("no review decision within 50ms"), "{error}");
}

/// CodeChain clusters each distinct sub-module once: four passing samples
/// that repeat one helper word for word give one module, not four.
#[tokio::test]
async fn codechain_embeds_each_distinct_sub_module_once() {
    if !have_sandbox() {
        return;
    }
    let sample = "```module\ndef is_vowel(ch):\n    \"\"\"Whether ch is a vowel.\"\"\"\n```\n\n```python\ndef is_vowel(ch):\n    return ch.lower() in 'aeiou'\n\ndef count_vowels(word: str) -> int:\n    return sum(map(is_vowel, word))\n```";
    let replies = format!(
        "replies:\n  - node: draft\n    samples: [{0}, {0}, {0}, {0}]\n  - node: revise\n    samples: [{0}, {0}, {0}, {0}]\n",
        serde_json::to_string(sample).unwrap()
    );
    let wf = load(&root().join("workflows/codechain.yaml"));
    let (s, events) = run(wf, &replies, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let modules = output_of(&events, "modules", 1);
    assert_eq!(modules["count"], 1, "{modules}");
    assert_eq!(modules["items"][0]["name"], "is_vowel");
}

#[tokio::test]
async fn rbd_rejudges_until_the_detector_finds_no_bias() {
    let wf = load(&root().join("workflows/rbd.yaml"));
    let replies = std::fs::read_to_string(root().join("workflows/replies/rbd.yaml")).unwrap();
    let (s, events) = run(wf, &replies, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(s.output.as_ref().unwrap(), "b");
    assert_eq!(runs(&s, "detect"), 2);
    assert_eq!(runs(&s, "rejudge"), 1);
    let first = output_of(&events, "detect", 1);
    assert_eq!(
        (first["biased"].as_str(), first["bias_type"].as_str()),
        (Some("yes"), Some("verbosity"))
    );
    // The detector sees the judge's model name, its latest decision and the
    // decision in the other order (here the judge chose by position: (a)
    // both times), and the re-evaluation sees the prior decision and the
    // detector's reasoning:
    // replies keyed on those prompts fail loudly when they are missing.
    let keyed = r#"
replies:
  - { node: judge, text: '{"choice": "a"}' }
  - node: swapped
    prompt: 'Output \(a\):\n72\n'
    text: '{"choice": "a"}'
  - node: detect
    prompt: 'judge was SmolLM2-135M-Instruct[\s\S]*The judge chose: Output \(a\)\n[\s\S]*chose this Output \(b\): a different output than above, so its choice followed the order'
    text: '{"reasoning": "it follows the order", "bias_type": "position", "biased": "yes"}'
  - node: rejudge
    prompt: 'Prior evaluation: Output \(a\)[\s\S]*it follows the order'
    text: '{"choice": "b"}'
  - node: detect
    prompt: 'The judge chose: Output \(b\)\n[\s\S]*chose this Output \(b\): the same output, whatever the order'
    text: '{"reasoning": "fine", "bias_type": "none", "biased": "no"}'
"#;
    let wf = load(&root().join("workflows/rbd.yaml"));
    let (s, _) = run(wf, keyed, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(s.output.unwrap(), "b");
    // `rbd: false`: the judge alone, the baseline the loop is measured against.
    let mut opts = RunOptions::default();
    opts.inputs.insert("rbd".into(), serde_json::json!(false));
    let wf = load(&root().join("workflows/rbd.yaml"));
    let (s, _) = run(wf, &replies, opts).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(s.output.as_ref().unwrap(), "a");
    assert_eq!(
        (runs(&s, "swapped"), runs(&s, "detect"), runs(&s, "rejudge")),
        (0, 0, 0)
    );
}

/// ReVISE's verifier: confidence p(Yes)/(p(Yes)+p(No)) from the first
/// token's logprobs when the backend gives them, else verbalised; the
/// verdict event says which.
#[tokio::test]
async fn verify_confidence_comes_from_logprobs_or_words() {
    let wf = || {
        workflow(
            r#"
version: 1
models: { m: "scripted:x" }
nodes:
  - { id: solve, kind: generate, template: "What is 2 + 2?" }
  - id: check
    kind: verify
    checks:
      - judge: { template: "Is this answer correct? {{ target }} Answer Yes or No.", logprobs: 5 }
edges: [{ from: solve, to: check }]
output: { from: solve }
"#,
        )
    };
    let sources = |events: &[Event]| -> Vec<(Option<&'static str>, f64)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Verdict {
                    confidence_source,
                    score,
                    ..
                } => Some((*confidence_source, *score)),
                _ => None,
            })
            .collect()
    };
    // ln 0.6 and ln 0.2: p(Yes) / (p(Yes) + p(No)) = 0.75.
    let with_logprobs = r#"
replies:
  - { node: solve, text: "4" }
  - node: check
    text: "Yes"
    logprobs:
      - { token: "Yes", logprob: -0.5108256, top: [["Yes", -0.5108256], ["No", -1.6094379], ["Maybe", -2.0]] }
"#;
    let (s, events) = run(wf(), with_logprobs, RunOptions::default()).await;
    assert_eq!(s.verified, Some(true));
    let got = sources(&events);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Some("logprobs"));
    assert!((got[0].1 - 0.75).abs() < 1e-4, "{got:?}");

    let verbalised = r#"
replies:
  - { node: solve, text: "5" }
  - { node: check, text: '{"verdict": "no", "confidence": 0.9}' }
"#;
    let (s, events) = run(wf(), verbalised, RunOptions::default()).await;
    assert_eq!(s.verified, Some(false));
    let got = sources(&events);
    assert_eq!(got[0].0, Some("verbalized"));
    assert!((got[0].1 - 0.1).abs() < 1e-9, "{got:?}");
}

/// Extraction on real replies of SmolLM2-135M-Instruct to HumanEval prompts
/// (fenced, unfenced, several blocks, cut off by the token limit): the
/// program and functions found are snapshotted and reviewed.
#[test]
fn extraction_on_real_model_outputs() {
    insta::glob!("../fixtures/extract", "*.txt", |path| {
        let reply = std::fs::read_to_string(path).unwrap();
        let program = redraft::extract::program(&reply);
        let parsed = redraft::extract::functions(&program);
        let mut report = format!(
            "blocks: {}\nhas_errors: {}\n",
            redraft::extract::blocks(&reply)
                .iter()
                .map(|b| format!(
                    "{}{}",
                    if b.lang.is_empty() { "-" } else { &b.lang },
                    if b.closed { "" } else { " (cut off)" }
                ))
                .collect::<Vec<_>>()
                .join(", "),
            parsed.has_errors
        );
        for f in &parsed.functions {
            report.push_str(&format!(
                "- {} (lines {}-{}): {:?}\n  docstring: {:?}\n",
                f.name, f.start_line, f.end_line, f.header, f.docstring
            ));
        }
        report.push_str("program:\n");
        report.push_str(&program);
        insta::assert_snapshot!(report);
    });
}

/// A program's own reviewer decides `ask` nodes: here a policy that keeps
/// edits which do not change the meaning. It sees each request's texts.
#[tokio::test]
async fn an_embedders_reviewer_decides_the_edits() {
    struct KeepMeaning(std::sync::Mutex<Vec<(String, u32, usize)>>);
    impl Reviewer for KeepMeaning {
        fn review<'a>(
            &'a self,
            req: ReviewRequest<'a>,
        ) -> BoxFuture<'a, Result<Vec<bool>, ReviewError>> {
            self.0
                .lock()
                .unwrap()
                .push((req.node.to_string(), req.depth, req.edits.len()));
            let keep = req
                .edits
                .iter()
                .map(|e| e.intent != "meaning-changed")
                .collect();
            Box::pin(async move { Ok(keep) })
        }
    }
    let reviewer = Arc::new(KeepMeaning(Default::default()));
    let opts = RunOptions {
        review: Some(ReviewDecisions::Ask),
        reviewer: Some(reviewer.clone()),
        ..RunOptions::default()
    };
    let (s, events) = run_library("review", opts).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let first = output_of(&events, "review", 1);
    let decided: Vec<_> = first["edits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["intent"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(!decided.is_empty());
    for (intent, decision) in decided {
        assert_eq!(
            decision == "accept",
            intent != "meaning-changed",
            "{intent}"
        );
    }
    assert_eq!(reviewer.0.lock().unwrap()[0], ("review".to_string(), 1, 2));
}

/// A reviewer that never answers (a person who walked away) does not hold
/// a cancelled run: the review future is dropped and the run ends
/// interrupted with what it had.
#[tokio::test(start_paused = true)]
async fn a_pending_review_is_cancelled_with_the_run() {
    struct Away(Arc<std::sync::atomic::AtomicBool>);
    struct Dropped(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    impl Reviewer for Away {
        fn review<'a>(
            &'a self,
            _: ReviewRequest<'a>,
        ) -> BoxFuture<'a, Result<Vec<bool>, ReviewError>> {
            let guard = Dropped(self.0.clone());
            Box::pin(async move {
                let _guard = guard;
                std::future::pending().await
            })
        }
    }
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cancel = redraft::CancellationToken::new();
    let opts = RunOptions {
        review: Some(ReviewDecisions::Ask),
        reviewer: Some(Arc::new(Away(dropped.clone()))),
        cancel: cancel.clone(),
        ..RunOptions::default()
    };
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        cancel.cancel();
    });
    let (s, _) = run_library("review", opts).await;
    canceller.await.unwrap();
    assert_eq!(s.status, RunStatus::Interrupted);
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    // The revision was made before the review: it is kept.
    assert_eq!(
        s.node_runs.iter().find(|(n, _)| n == "revise").unwrap().1,
        1
    );
}

/// A reviewer that answers for too few or too many edits fails the node,
/// saying so: no edit is applied or rejected by a guess.
#[tokio::test]
async fn a_reviewer_must_decide_every_edit() {
    struct Short(usize);
    impl Reviewer for Short {
        fn review<'a>(
            &'a self,
            req: ReviewRequest<'a>,
        ) -> BoxFuture<'a, Result<Vec<bool>, ReviewError>> {
            let n = (req.edits.len() + self.0).saturating_sub(1);
            Box::pin(async move { Ok(vec![true; n]) })
        }
    }
    for extra in [0, 2] {
        let opts = RunOptions {
            review: Some(ReviewDecisions::Ask),
            reviewer: Some(Arc::new(Short(extra))),
            ..RunOptions::default()
        };
        let (s, _) = run_library("review", opts).await;
        assert_eq!(s.status, RunStatus::Failed);
        assert!(
            s.error
                .as_deref()
                .unwrap_or("")
                .contains("decisions for 2 proposed edits"),
            "{:?}",
            s.error
        );
        assert_eq!(s.cause.unwrap().node.as_deref(), Some("review"));
    }
}
