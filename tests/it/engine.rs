//! The engine on the scripted backend.

use std::sync::Arc;
use std::time::Duration;

use redraft::backend::ErrorKind;
use redraft::budget::{LimitKind, Limits, Scope};
use redraft::event::{CallOutcome, Event, ModelCallEvent, StopReason};
use redraft::summary::{FailureCause, FailureKind, RunStatus};
use redraft::{CancellationToken, RunOptions};

use crate::support::{load, root, run, runs, trace, workflow};

const SELF_REFINE_SCRIPT_NEVER_PASSES: &str = r#"
replies:
  - node: draft
    text: "a first line"
  - node: critique
    text: '{"score": 3, "feedback": "needs three lines"}'
  - node: revise
    round: 3
    prompt: 'Write exactly 3 lines, each on a line of its own, and use the word "test"'
    text: "still one line, later round"
  - node: revise
    prompt: 'Write exactly 3 lines, each on a line of its own, and use the word "test"'
    text: "still one line"
"#;

fn self_refine() -> Arc<redraft::Workflow> {
    load(&root().join("workflows/self-refine.yaml"))
}

fn shipped_script() -> String {
    std::fs::read_to_string(root().join("workflows/replies/self-refine.yaml")).unwrap()
}

#[tokio::test]
async fn self_refine_runs_until_the_verifier_passes() {
    let (s, events) = run(self_refine(), &shipped_script(), RunOptions::default()).await;
    insta::assert_snapshot!(trace(&events));
    assert_eq!(s.status, RunStatus::Finished);
    assert_eq!(s.verified, Some(true));
    assert_eq!(s.output_source.as_ref().unwrap().node, "revise");
    assert_eq!(s.output_source.as_ref().unwrap().round, 2);
    let l = &s.loops[0];
    assert_eq!(
        (l.rounds, l.stop_reason, l.changes, l.wins),
        (3, StopReason::Exited, 2, 1)
    );
    // Each round's verdict score, not only win or lose: one of the two
    // checks passed in rounds 1 and 2, both in round 3.
    let scores: Vec<Option<f64>> = l.per_round.iter().map(|r| r.score).collect();
    assert_eq!(scores, [Some(0.5), Some(0.5), Some(1.0)]);
    // Calls and tokens in the summary equal the sum over model-call events.
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
    assert_eq!(s.usage.calls, calls.len() as u64);
    assert_eq!(
        s.usage.total_tokens,
        calls
            .iter()
            .map(|c| c.prompt_tokens + c.completion_tokens)
            .sum::<u64>()
    );
    assert_eq!(s.budgets[0].spent.tokens, s.usage.total_tokens);
}

#[tokio::test]
async fn max_rounds_caps_the_loop_exactly() {
    let (s, events) = run(
        self_refine(),
        SELF_REFINE_SCRIPT_NEVER_PASSES,
        RunOptions::default(),
    )
    .await;
    let l = &s.loops[0];
    // The last round's check routes around critique (`not loop.last`), but
    // what happened is that the rounds ran out without a pass.
    assert_eq!(l.stop_reason, StopReason::MaxRounds);
    assert_eq!(l.rounds, 4);
    assert_eq!(runs(&s, "check"), 4);
    assert_eq!(runs(&s, "revise"), 3);
    assert_eq!(runs(&s, "critique"), 3);
    assert_eq!(s.verified, Some(false));
    // Every rewrite prompt said what the checks want (the replies are keyed
    // on it: without it the script has no reply and the run fails).
    assert!(trace(&events).contains("done revise r3"));
    // ORR: configs draft, r1, r2, r2 → changes at rounds 2 and 3 of 4: 2/3.
    assert_eq!(l.changes, 2);
    assert!((l.overcorrection_risk_rate.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(l.correction_success_rate, 0.0);
}

const LOOP_WORKFLOW: &str = r#"
version: 1
models:
  m: scripted:unused.yaml
nodes:
  - { id: draft, kind: generate, template: "draft" }
  - id: grade
    kind: critique
    template: "grade {{ artifact.text }}"
    schema: { type: object, required: [score], properties: { score: { type: number } } }
  - { id: revise, kind: revise, template: "revise {{ artifact.text }} round {{ round }}" }
edges:
  - { from: draft, to: grade }
  - { from: grade, to: revise }
loops:
  - id: polish
    from: revise
    to: grade
    max_rounds: 10
    STOP_RULE
output: [draft, revise]
"#;

fn loop_workflow(stop_rule: &str) -> Arc<redraft::Workflow> {
    workflow(&LOOP_WORKFLOW.replace("STOP_RULE", stop_rule))
}

const GRADES: &str = r#"
replies:
  - { node: draft, text: "v0" }
  - { node: grade, round: 1, text: '{"score": 5}' }
  - { node: grade, round: 2, text: '{"score": 6}' }
  - { node: grade, round: 3, text: '{"score": 6}' }
  - { node: grade, text: '{"score": 6}' }
  - { node: revise, round: 1, text: "v1" }
  - { node: revise, round: 2, text: "v2" }
  - { node: revise, round: 3, text: "stop" }
  - { node: revise, text: "v9" }
"#;

#[tokio::test]
async fn until_stops_the_loop() {
    let wf = loop_workflow(r#"until: "revise.text == 'stop'""#);
    let (s, _) = run(wf, GRADES, RunOptions::default()).await;
    assert_eq!(s.loops[0].stop_reason, StopReason::Until);
    assert_eq!(s.loops[0].rounds, 3);
    assert_eq!(s.output.unwrap(), "stop");
}

#[tokio::test]
async fn convergence_stops_when_the_score_stalls() {
    // Scores 5, 6, 6, 6: best improves in round 2, then stalls for 2 rounds.
    let wf = loop_workflow("converge: { score: grade.score, patience: 2 }");
    let (s, _) = run(wf, GRADES, RunOptions::default()).await;
    assert_eq!(s.loops[0].stop_reason, StopReason::Converged);
    assert_eq!(s.loops[0].rounds, 4);
}

#[tokio::test]
async fn max_rounds_without_other_rules() {
    let wf = loop_workflow("");
    let (s, _) = run(wf, GRADES, RunOptions::default()).await;
    assert_eq!(s.loops[0].stop_reason, StopReason::MaxRounds);
    assert_eq!(s.loops[0].rounds, 10);
    assert_eq!(runs(&s, "revise"), 10);
    assert_eq!(runs(&s, "grade"), 10);
}

#[tokio::test]
async fn a_loop_budget_stops_the_loop_not_the_run() {
    // Each round: grade (prompt 2 words + max 512) — the loop allows about two rounds.
    let wf = loop_workflow("budget: { calls: 5 }");
    let (s, events) = run(wf, GRADES, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished);
    assert_eq!(s.loops[0].stop_reason, StopReason::Budget);
    // 5 calls in the loop: grade, revise, grade, revise, grade; the 6th is refused.
    assert_eq!(runs(&s, "grade"), 3);
    assert_eq!(runs(&s, "revise"), 2);
    let exhausted: Vec<_> = events
        .iter()
        .filter_map(|e| {
            if let Event::BudgetExhausted(x) = e {
                Some(x)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0].scope, Scope::Loop("polish".into()));
    assert_eq!(exhausted[0].limit, LimitKind::Calls);
}

#[tokio::test]
async fn workflow_token_budget_is_exact_and_keeps_the_best_output() {
    // Scripted tokens are words; max_tokens defaults to 512. Worst case of a
    // call = prompt words + 512. With a 530-token limit:
    //   draft     prompt "draft" (1):             0 + 513 = 513 ok, uses 1+1 → 2
    //   grade r1  prompt "grade v0" (2):          2 + 514 = 516 ok, uses 2+2 → 6
    //   revise r1 prompt "revise v0 round 1" (4): 6 + 516 = 522 ok, uses 4+1 → 11
    //   grade r2  prompt "grade v1" (2):         11 + 514 = 525 ok, uses 2+2 → 15
    //   revise r2 prompt "revise v1 round 2" (4): 15 + 516 = 531 > 530: refused.
    let wf = loop_workflow("");
    let opts = RunOptions {
        budget: Limits {
            tokens: Some(530),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let (s, events) = run(wf, GRADES, opts).await;
    assert_eq!(s.status, RunStatus::BudgetExhausted);
    let x = s.exhausted.as_ref().unwrap();
    assert_eq!(
        (x.scope.clone(), x.limit, x.would_use, x.max),
        (Scope::Workflow, LimitKind::Tokens, 531.0, 530.0)
    );
    assert_eq!(s.usage.calls, 4);
    assert_eq!(s.usage.total_tokens, 15);
    assert_eq!((s.usage.prompt_tokens, s.usage.completion_tokens), (9, 6));
    assert_eq!(s.budgets[0].overrun.tokens, 0);
    // The best so far is the latest candidate (this workflow has no verifier).
    assert_eq!(s.output.unwrap(), "v1");
    assert_eq!(s.loops[0].stop_reason, StopReason::RunStopped);
    assert!(
        trace(&events)
            .contains("budget exhausted: workflow budget exhausted: tokens would reach 531 of 530")
    );
    // A warning fired once 80% (424 tokens) of... no: spending stayed at 15.
    assert!(!events.iter().any(|e| matches!(e, Event::BudgetWarning(_))));
}

#[tokio::test]
async fn call_budget_and_warning() {
    let wf = loop_workflow("");
    let opts = RunOptions {
        budget: Limits {
            calls: Some(5),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let (s, events) = run(wf, GRADES, opts).await;
    assert_eq!(s.status, RunStatus::BudgetExhausted);
    assert_eq!(s.usage.calls, 5);
    let warnings: Vec<_> = events
        .iter()
        .filter_map(|e| {
            if let Event::BudgetWarning(w) = e {
                Some(w)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(warnings.len(), 1, "one warning at 4 of 5 calls");
    assert_eq!(
        (warnings[0].limit, warnings[0].used),
        (LimitKind::Calls, 4.0)
    );
}

#[tokio::test]
async fn best_so_far_prefers_a_passing_candidate_over_a_later_failing_one() {
    let wf = workflow(
        r#"
version: 1
models: { m: "scripted:unused.yaml" }
nodes:
  - { id: draft, kind: generate, template: "draft" }
  - { id: check, kind: verify, checks: [ { regex: "good" } ] }
  - { id: revise, kind: revise, template: "revise {{ artifact.text }}" }
edges:
  - { from: draft, to: check }
  - { from: check, to: revise }
loops:
  - { id: l, from: revise, to: check, max_rounds: 3 }
output: { from: [draft, revise], select: best }
"#,
    );
    let script = r#"
replies:
  - { node: draft, text: "good draft" }
  - { node: revise, round: 1, text: "worse" }
  - { node: revise, text: "even worse" }
"#;
    let (s, _) = run(wf, script, RunOptions::default()).await;
    assert_eq!(s.output.unwrap(), "good draft");
    assert_eq!(s.verified, Some(true));
    let l = &s.loops[0];
    // Configs: draft (win), worse (lose), even worse (lose): two changes, none successful.
    assert_eq!((l.rounds, l.changes, l.wins), (3, 2, 1));
    assert_eq!(l.correction_success_rate, 0.0);
    assert!((l.improvement_slope + 0.5).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn independent_branches_overlap() {
    let wf = load(&root().join("tests/fixtures/valid/fan-out.yaml"));
    let script =
        std::fs::read_to_string(root().join("tests/fixtures/scripts/fan-out.yaml")).unwrap();
    let start = tokio::time::Instant::now();
    let (s, events) = run(wf, &script, RunOptions::default()).await;
    let elapsed = start.elapsed();
    assert_eq!(s.status, RunStatus::Finished);
    // Two 100 ms branches: 100 ms of (virtual) time together, 200 if serial.
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(150),
        "{elapsed:?}"
    );
    let t = trace(&events);
    let pos = |needle: &str| {
        t.find(needle)
            .unwrap_or_else(|| panic!("{needle} not in\n{t}"))
    };
    assert!(pos("start style") < pos("done facts") && pos("start facts") < pos("done style"));
    assert!(pos("start essay") > pos("done facts").max(pos("done style")));
}

#[tokio::test(start_paused = true)]
async fn concurrency_setting_serialises_model_calls() {
    let path = root().join("tests/fixtures/valid/fan-out.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("concurrency: 4", "concurrency: 1");
    let wf = workflow(&text);
    let script =
        std::fs::read_to_string(root().join("tests/fixtures/scripts/fan-out.yaml")).unwrap();
    let start = tokio::time::Instant::now();
    let (s, _) = run(wf, &script, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn cancellation_keeps_finished_work() {
    let wf = self_refine();
    let script = r#"
replies:
  - { node: draft, text: "a draft" }
  - { node: critique, text: '{"score": 2, "feedback": "x"}', latency_ms: 60000 }
"#;
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c2.cancel();
    });
    let (s, events) = run(
        wf,
        script,
        RunOptions {
            cancel,
            ..RunOptions::default()
        },
    )
    .await;
    assert_eq!(s.status, RunStatus::Interrupted);
    assert_eq!(s.output.unwrap(), "a draft");
    assert_eq!(s.verified, Some(false));
    assert_eq!(s.loops[0].stop_reason, StopReason::RunStopped);
    assert!(matches!(events.last(), Some(Event::RunFinished { .. })));
}

#[tokio::test]
async fn invalid_structured_output_is_repaired_with_the_error_fed_back() {
    let wf = self_refine();
    let script = r#"
replies:
  - { node: draft, text: "one line" }
  - { node: critique, prompt: "not valid", text: '{"score": 4, "feedback": "add lines"}' }
  - { node: critique, text: "I think it is fine, score eleven" }
  - { node: revise, text: "a\nb tests\nc" }
"#;
    let (s, events) = run(wf, script, RunOptions::default()).await;
    let t = trace(&events);
    assert_eq!(s.status, RunStatus::Finished, "{t}");
    assert_eq!(s.verified, Some(true), "{t}");
    assert!(t.contains("invalid output critique attempt 0"), "{t}");
    assert!(t.contains("call critique r1 attempt 1"), "{t}");
}

#[tokio::test]
async fn output_that_stays_invalid_fails_the_run_as_a_backend_failure() {
    let script = r#"
replies:
  - { node: draft, text: "one line" }
  - { node: critique, text: '{"score": "high"}' }
"#;
    let (s, events) = run(self_refine(), script, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.failure, Some(FailureKind::Backend));
    let cause = s.cause.as_ref().unwrap();
    assert_eq!(cause.node.as_deref(), Some("critique"));
    assert_eq!(cause.cause, FailureCause::InvalidOutput);
    assert!(
        s.error.as_ref().unwrap().contains("schema"),
        "{:?}",
        s.error
    );
    let raws: Vec<_> = events
        .iter()
        .filter_map(|e| {
            if let Event::InvalidOutput { raw, .. } = e {
                Some(raw.clone())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        raws,
        vec![r#"{"score": "high"}"#.to_string(); 2],
        "the raw text is kept in the log"
    );
    // Nothing computed is lost: the draft is still the output.
    assert_eq!(s.output.unwrap(), "one line");
}

#[tokio::test]
async fn a_structured_reply_cut_at_max_tokens_says_so_and_asks_for_less() {
    let wf = || {
        workflow(
            r#"
version: 1
models: { m: "scripted:x" }
nodes:
  - id: plan
    kind: generate
    template: "Plan it."
    sampling: { max_tokens: 4 }
    schema: { type: object, required: [steps], properties: { steps: { type: string } } }
output: { from: plan }
"#,
        )
    };
    let invalid = |events: &[Event]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::InvalidOutput { error, .. } => Some(error.clone()),
                _ => None,
            })
            .collect()
    };
    // The scripted model cuts replies at max_tokens words, as a real one
    // would. The repair prompt tells the model it was cut off; its short
    // reply then parses.
    let script = r#"
replies:
  - { node: plan, prompt: "cut off: keep every string short", text: '{"steps": "a"}' }
  - { node: plan, text: '{"steps": "one two three four five six"}' }
"#;
    let (s, events) = run(wf(), script, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{}", trace(&events));
    let errors = invalid(&events);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("cut off at max_tokens = 4") && errors[0].contains("raise `max_tokens`"),
        "{errors:?}"
    );
    // Cut every time: the run's error says what to change.
    let script = r#"
replies:
  - { node: plan, text: '{"steps": "one two three four five six"}' }
"#;
    let (s, _) = run(wf(), script, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Failed);
    assert!(
        s.error
            .as_ref()
            .unwrap()
            .contains("cut off at max_tokens = 4"),
        "{:?}",
        s.error
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_error_fails_the_run_with_the_best_output_kept() {
    let script = r#"
replies:
  - { node: draft, text: "one line" }
  - { node: critique, error: { kind: transient, message: "503 from upstream" } }
"#;
    let (s, _) = run(self_refine(), script, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.failure, Some(FailureKind::Backend));
    assert!(s.error.as_ref().unwrap().contains("503"));
    assert_eq!(s.output.unwrap(), "one line");
    // The draft, then the critique tried once and retried twice (the default);
    // every attempt is a call.
    assert_eq!(s.usage.calls, 4);
}

#[tokio::test(start_paused = true)]
async fn every_retry_passes_the_budget_check() {
    let script = r#"
replies:
  - { node: draft, text: "one line" }
  - { node: critique, error: { kind: transient, message: "503 from upstream" } }
"#;
    let text = std::fs::read_to_string(root().join("workflows/self-refine.yaml"))
        .unwrap()
        .replace("max_tokens: 256", "max_tokens: 256\n    retries: 5");
    let wf = redraft::workflow::load_str(&text, "self-refine.yaml", &root().join("workflows"))
        .map_err(|e| e.render())
        .unwrap();
    let opts = RunOptions {
        budget: Limits {
            calls: Some(3),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let (s, events) = run(Arc::new(wf), script, opts).await;
    // Draft + two critique attempts fit the 3-call budget; the third attempt is refused.
    assert_eq!(s.status, RunStatus::BudgetExhausted);
    assert_eq!(s.usage.calls, 3);
    let retries: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::ModelCall(c) if c.node == "critique" => Some(c.retry),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [0, 1]);
}

#[tokio::test]
async fn a_missing_script_reply_is_a_loud_error() {
    let (s, _) = run(
        self_refine(),
        "replies:
  - { node: draft, text: x }
",
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    assert!(
        s.error
            .unwrap()
            .contains("no scripted reply matches node `critique` round 1")
    );
}

#[tokio::test]
async fn a_runtime_template_error_is_a_workflow_failure() {
    let wf = workflow(
        r#"
version: 1
models: { m: "scripted:unused.yaml" }
inputs: { data: { type: object, default: {} } }
nodes:
  - { id: draft, kind: generate, template: "{{ data.missing_field }}" }
output: draft
"#,
    );
    let (s, _) = run(
        wf,
        "replies:
  - { text: x }
",
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.failure, Some(FailureKind::Workflow));
    let cause = s.cause.unwrap();
    assert_eq!(
        (cause.node.as_deref(), cause.cause),
        (Some("draft"), FailureCause::Template)
    );
    assert!(s.error.unwrap().contains("undefined"));
}

/// Callers tell a context-length failure from a permanent or a transient
/// one (after its retries) by the summary's typed cause, not its text.
#[tokio::test(start_paused = true)]
async fn a_failed_run_keeps_the_typed_backend_error() {
    for (kind, expected) in [
        ("context_length", ErrorKind::ContextLength),
        ("permanent", ErrorKind::Permanent),
        ("transient", ErrorKind::Transient),
    ] {
        let script = format!(
            "replies:\n  - {{ node: draft, text: \"one line\" }}\n  - {{ node: critique, error: {{ kind: {kind}, message: \"nope\" }} }}\n"
        );
        let (s, _) = run(self_refine(), &script, RunOptions::default()).await;
        assert_eq!(s.status, RunStatus::Failed, "{kind}");
        let cause = s.cause.expect(kind);
        assert_eq!(cause.node.as_deref(), Some("critique"), "{kind}");
        assert_eq!(cause.kind, FailureKind::Backend, "{kind}");
        match cause.cause {
            FailureCause::Backend { error, .. } => assert_eq!(error, expected, "{kind}"),
            other => panic!("{kind}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn vote_and_select_over_samples() {
    let wf = load(&root().join("tests/fixtures/valid/vote.yaml"));
    let script = std::fs::read_to_string(root().join("tests/fixtures/scripts/vote.yaml")).unwrap();
    let (s, events) = run(wf, &script, RunOptions::default()).await;
    assert_eq!(s.output.unwrap(), "42");
    assert_eq!(s.verified, Some(true));
    assert_eq!(s.usage.calls, 1, "n = 5 samples in one call");
    let longest = events.iter().find_map(|e| match e {
        Event::NodeFinished {
            node,
            output: Some(o),
            ..
        } if node == "longest" => Some(o.clone()),
        _ => None,
    });
    assert_eq!(longest.unwrap()["index"], 2);
}

#[tokio::test]
async fn inputs_are_checked_before_the_run() {
    let wf = self_refine();
    let engine = redraft::Engine::new();
    let mut inputs = serde_json::Map::new();
    inputs.insert("tsk".into(), "x".into());
    let err = engine
        .run(
            wf.clone(),
            RunOptions {
                inputs,
                ..RunOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did you mean `task`?"), "{err}");
    let mut inputs = serde_json::Map::new();
    inputs.insert("task".into(), 3.into());
    let err = engine
        .run(
            wf,
            RunOptions {
                inputs,
                ..RunOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expected string"), "{err}");
}

/// A backend that serves one sample per request, slowly.
struct OneSampleAtATime;

impl redraft::LanguageModel for OneSampleAtATime {
    fn id(&self) -> &str {
        "one-at-a-time"
    }

    fn complete<'a>(
        &'a self,
        req: &'a redraft::backend::CompletionRequest,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<redraft::backend::Completion, redraft::backend::BackendError>,
    > {
        Box::pin(async move {
            assert_eq!(req.n, 1, "the engine must split n for this backend");
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(redraft::backend::Completion {
                choices: vec![redraft::backend::Choice {
                    text: format!("seed {}", req.sampling.seed.unwrap_or(0)),
                    finish: redraft::backend::FinishReason::Stop,
                    logprobs: None,
                }],
                usage: redraft::backend::Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    ..Default::default()
                },
                usage_estimated: false,
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn samples_run_concurrently_on_backends_without_native_n() {
    for (concurrency, expected_ms) in [(4, 100), (2, 200)] {
        let wf = workflow(&format!(
            r#"
version: 1
models: {{ m: "scripted:unused.yaml" }}
concurrency: {concurrency}
nodes:
  - {{ id: draft, kind: generate, template: "go", n: 4, sampling: {{ seed: 10 }} }}
output: {{ from: draft, field: samples }}
"#
        ));
        let events = Arc::new(redraft::event::Collect::default());
        let engine = redraft::Engine::new()
            .with_model("m", Arc::new(OneSampleAtATime))
            .with_recorder(events.clone());
        let start = tokio::time::Instant::now();
        let s = engine.run(wf, RunOptions::default()).await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(expected_ms),
            "concurrency {concurrency}"
        );
        assert_eq!(
            s.output.unwrap(),
            serde_json::json!(["seed 10", "seed 11", "seed 12", "seed 13"])
        );
        assert_eq!((s.usage.calls, s.usage.total_tokens), (4, 20));
        let calls = events
            .take()
            .into_iter()
            .filter(|e| matches!(e, Event::ModelCall(c) if c.n == 1))
            .count();
        assert_eq!(calls, 4);
    }
}

#[tokio::test]
async fn nested_loops_and_a_node_after_them() {
    let wf = workflow(
        r#"
version: 1
models: { m: "scripted:unused.yaml" }
nodes:
  - { id: plan, kind: generate, template: "plan {{ round }}" }
  - { id: write, kind: generate, template: "write {{ plan.text }} {{ round }}" }
  - { id: review, kind: generate, template: "review {{ write.text }}" }
  - { id: judge, kind: generate, template: "judge {{ review.text }}" }
  - { id: publish, kind: generate, template: "publish {{ write.text }}" }
edges:
  - { from: plan, to: write }
  - { from: write, to: review }
  - { from: review, to: judge }
  - { from: review, to: publish }
loops:
  - { id: inner, from: review, to: write, max_rounds: 2 }
  - { id: outer, from: judge, to: plan, max_rounds: 2 }
output: publish
"#,
    );
    let script = r#"
replies:
  - { node: plan, round: 1, text: "p1" }
  - { node: plan, round: 2, text: "p2" }
  - { node: write, prompt: "p2 2", text: "final draft" }
  - { node: write, text: "draft" }
  - { node: review, text: "ok" }
  - { node: judge, text: "fine" }
  - { node: publish, prompt: "final draft", text: "published" }
"#;
    let (s, events) = run(wf, script, RunOptions::default()).await;
    insta::assert_snapshot!(trace(&events));
    assert_eq!(s.status, RunStatus::Finished);
    assert_eq!(s.output.as_ref().unwrap(), "published");
    for (node, n) in [
        ("plan", 2),
        ("write", 4),
        ("review", 4),
        ("judge", 2),
        ("publish", 1),
    ] {
        assert_eq!(runs(&s, node), n, "{node}");
    }
    let reasons: Vec<_> = s
        .loops
        .iter()
        .map(|l| (l.loop_id.as_str(), l.rounds, l.stop_reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("inner", 2, StopReason::MaxRounds),
            ("inner", 2, StopReason::MaxRounds),
            ("outer", 2, StopReason::MaxRounds)
        ]
    );
}

#[tokio::test]
async fn a_node_budget_skips_the_node_and_costs_are_priced() {
    // $1 per million prompt tokens, $2 per million completion tokens.
    let text = std::fs::read_to_string(root().join("workflows/self-refine.yaml"))
        .unwrap()
        .replace(
            "max_tokens: 256",
            "max_tokens: 256\n    price: { input: 1.0, output: 2.0 }",
        )
        .replace(
            "    prompt: critique.j2",
            "    prompt: critique.j2\n    budget: { calls: 1 }",
        );
    let wf = redraft::workflow::load_str(&text, "self-refine.yaml", &root().join("workflows"))
        .map_err(|e| e.render())
        .unwrap();
    let (s, events) = run(
        Arc::new(wf),
        SELF_REFINE_SCRIPT_NEVER_PASSES,
        RunOptions::default(),
    )
    .await;
    assert_eq!(s.status, RunStatus::Finished);
    assert_eq!(runs(&s, "critique"), 1);
    assert_eq!(runs(&s, "revise"), 1);
    assert_eq!(s.loops[0].rounds, 2);
    let exhausted = events
        .iter()
        .find_map(|e| {
            if let Event::BudgetExhausted(x) = e {
                Some(x.clone())
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(
        (exhausted.scope, exhausted.limit),
        (Scope::Node("critique".into()), LimitKind::Calls)
    );
    let expected: f64 =
        s.usage.prompt_tokens as f64 * 1e-6 + s.usage.completion_tokens as f64 * 2e-6;
    assert!(
        (s.usage.cost_usd - expected).abs() < 1e-12,
        "{} vs {expected}",
        s.usage.cost_usd
    );
    assert!(s.usage.cost_usd > 0.0);
}

#[tokio::test(start_paused = true)]
async fn wall_time_cuts_a_slow_call_and_keeps_the_draft() {
    let script = r#"
replies:
  - { node: draft, text: "a draft" }
  - { node: critique, text: '{"score": 2, "feedback": "x"}', latency_ms: 600000 }
"#;
    let opts = RunOptions {
        budget: Limits {
            wall_time: Some(Duration::from_secs(2)),
            ..Limits::default()
        },
        ..RunOptions::default()
    };
    let (s, events) = run(self_refine(), script, opts).await;
    assert_eq!(s.status, RunStatus::BudgetExhausted);
    assert_eq!(s.exhausted.as_ref().unwrap().limit, LimitKind::WallTime);
    assert_eq!(s.output.clone().unwrap(), "a draft");
    // The critique was sent before the limit cut it: it is a call, evented
    // as cut, with its prompt estimated, and the summary counts it.
    let calls: Vec<&ModelCallEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::ModelCall(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].node, "critique");
    assert_eq!(calls[1].outcome, CallOutcome::Cut);
    assert!(calls[1].usage_estimated && calls[1].prompt_tokens > 0);
    assert_eq!(s.usage.calls, 2);
    assert_eq!(s.budgets[0].spent.calls, 2);
    assert!(s.usage.estimated);
    // Wall time follows tokio's (paused) clock: the limit, not the latency.
    assert!((s.wall_ms - 2000.0).abs() < 50.0, "{}", s.wall_ms);
}

#[tokio::test]
async fn latex_in_a_critique_reaches_the_revise_prompt_intact() {
    // `\f` is a JSON escape (form feed) and `\s` none at all: as a model
    // writes them, both must reach the revise prompt as LaTeX.
    let script = r#"
replies:
  - { node: draft, text: "x = 0.5" }
  - { node: critique, text: '{"score": 3, "feedback": "Write it as \frac{1}{2}, not \sqrt{0.25}"}' }
  - { node: revise, prompt: 'Write it as \\frac\{1\}\{2\}, not \\sqrt\{0\.25\}', text: "intact" }
  - { node: revise, text: "corrupted" }
"#;
    let (s, events) = run(self_refine(), script, RunOptions::default()).await;
    assert_ne!(s.status, RunStatus::Failed, "{:?}", s.error);
    let revisions: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::NodeFinished {
                node,
                output: Some(o),
                ..
            } if node == "revise" => Some(o["text"].as_str().unwrap_or("").to_string()),
            _ => None,
        })
        .collect();
    assert!(!revisions.is_empty());
    assert!(revisions.iter().all(|r| r == "intact"), "{revisions:?}");
}

/// A model that fails after working: a local model whose KV cache ran out
/// midway, say.
struct FailsMidway;

impl redraft::LanguageModel for FailsMidway {
    fn id(&self) -> &str {
        "fails-midway"
    }

    fn complete<'a>(
        &'a self,
        _req: &'a redraft::backend::CompletionRequest,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<redraft::backend::Completion, redraft::backend::BackendError>,
    > {
        Box::pin(async {
            Err(redraft::backend::BackendError::new(
                "fails-midway",
                redraft::backend::ErrorKind::ContextLength,
                "no room left in the KV cache",
            )
            .with_usage(redraft::backend::Usage {
                prompt_tokens: 100,
                completion_tokens: 42,
                cached_tokens: 0,
            }))
        })
    }
}

#[tokio::test]
async fn a_call_that_fails_midway_keeps_its_usage() {
    let events = Arc::new(redraft::event::Collect::default());
    let engine = redraft::Engine::new()
        .with_model("writer", Arc::new(FailsMidway))
        .with_recorder(events.clone());
    let s = engine
        .run(self_refine(), RunOptions::default())
        .await
        .unwrap();
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.usage.calls, 1);
    assert_eq!(
        (s.usage.prompt_tokens, s.usage.completion_tokens),
        (100, 42)
    );
    assert_eq!(s.budgets[0].spent.tokens, 142);
}

#[tokio::test]
async fn prompts_and_replies_reach_the_log_only_when_asked() {
    let calls = |events: &[Event]| -> Vec<ModelCallEvent> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ModelCall(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    };
    let (_, events) = run(self_refine(), &shipped_script(), RunOptions::default()).await;
    assert!(
        calls(&events)
            .iter()
            .all(|c| c.prompt.is_none() && c.reply.is_none())
    );
    let opts = RunOptions {
        log_content: true,
        ..RunOptions::default()
    };
    let (_, events) = run(self_refine(), &shipped_script(), opts).await;
    let calls = calls(&events);
    let draft = &calls[0];
    let prompt = draft.prompt.as_ref().unwrap();
    assert_eq!(prompt[0]["role"], "user");
    assert!(
        prompt[0]["content"]
            .as_str()
            .unwrap()
            .contains("Write a haiku about refactoring code"),
        "{prompt}"
    );
    assert_eq!(
        draft.reply.as_deref().unwrap(),
        ["Old functions untangle,\nnames grow clear as morning light,\nthe code breathes again."]
    );
    // In the JSON log line too.
    let line = serde_json::to_value(Event::ModelCall(draft.clone())).unwrap();
    assert!(
        line["prompt"].is_array() && line["reply"].is_array(),
        "{line}"
    );
}

#[tokio::test]
async fn the_judged_self_refine_follows_its_task() {
    let wf = load(&root().join("workflows/self-refine-judged.yaml"));
    let script =
        std::fs::read_to_string(root().join("workflows/replies/self-refine-judged.yaml")).unwrap();
    let (s, events) = run(wf, &script, RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(s.verified, Some(true));
    assert_eq!(s.output_source.as_ref().unwrap().node, "revise");
    // The judge read the task it was given, and its confidence came from logprobs.
    let judged: Vec<(bool, f64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Verdict {
                passed,
                score,
                confidence_source: Some("logprobs"),
                ..
            } => Some((*passed, *score)),
            _ => None,
        })
        .collect();
    assert_eq!(judged.len(), 2);
    assert!(!judged[0].0 && judged[1].0, "{judged:?}");
    assert!(judged[1].1 > 0.9, "{judged:?}");
}

#[tokio::test]
async fn a_judge_can_continue_the_drafts_conversation() {
    let wf = workflow(
        r#"
version: 1
models:
  m: scripted:unused.yaml
inputs:
  task: string
nodes:
  - { id: draft, kind: generate, system: "You solve problems.", template: "Solve: {{ task }}" }
  - id: check
    kind: verify
    target: "{{ draft.text }}"
    checks:
      - judge: { continue: draft, template: "Is the solution above correct? Answer Yes or No.", logprobs: 2 }
edges: [{ from: draft, to: check }]
output: draft
"#,
    );
    let script = r#"
replies:
  - { node: draft, text: "x = 4" }
  - node: check
    prompt: 'Solve: 2x = 8(?s).*x = 4.*correct\?'
    text: "Yes"
"#;
    let opts = RunOptions {
        inputs: serde_json::json!({ "task": "2x = 8" })
            .as_object()
            .unwrap()
            .clone(),
        log_content: true,
        ..RunOptions::default()
    };
    let (s, events) = run(wf, script, opts).await;
    assert_eq!(s.verified, Some(true), "{:?}", s.error);
    let judge = events
        .iter()
        .find_map(|e| match e {
            Event::ModelCall(c) if c.node == "check" => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    // The draft's system and prompt, its reply, then the judge's question.
    let prompt = judge.prompt.unwrap();
    let turns: Vec<(&str, &str)> = prompt
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        turns,
        [
            ("system", "You solve problems."),
            ("user", "Solve: 2x = 8"),
            ("assistant", "x = 4"),
            ("user", "Is the solution above correct? Answer Yes or No."),
        ]
    );
}

#[tokio::test]
async fn a_judge_continuing_the_artifact_follows_the_latest_revision() {
    let wf = workflow(
        r#"
version: 1
models:
  m: scripted:unused.yaml
nodes:
  - { id: draft, kind: generate, template: "Solve 2x = 8." }
  - id: check
    kind: verify
    checks:
      - judge: { continue: artifact, template: "Is the solution above correct? Answer Yes or No." }
  - { id: revise, kind: revise, template: "Try again." }
edges:
  - { from: draft, to: check }
  - { from: check, to: revise, when: "not check.passed" }
loops:
  - { id: refine, from: revise, to: check, max_rounds: 2 }
output: { from: [draft, revise] }
"#,
    );
    let script = r#"
replies:
  - { node: draft, text: "x = 3" }
  - { node: check, round: 1, text: "No" }
  - { node: revise, text: "x = 4" }
  - { node: check, round: 2, text: "Yes" }
"#;
    let opts = RunOptions {
        log_content: true,
        ..RunOptions::default()
    };
    let (s, events) = run(wf, script, opts).await;
    assert_eq!(s.verified, Some(true), "{:?}", s.error);
    let judged: Vec<Vec<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::ModelCall(c) if c.node == "check" => Some(
                c.prompt
                    .as_ref()
                    .unwrap()
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["content"].as_str().unwrap().to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    let q = "Is the solution above correct? Answer Yes or No.";
    // Round 1 continues the draft's conversation, round 2 the revision's.
    assert_eq!(judged[0], ["Solve 2x = 8.", "x = 3", q]);
    assert_eq!(judged[1], ["Try again.", "x = 4", q]);
}

#[tokio::test]
async fn loop_metrics_can_score_by_a_gold_answer_and_count_answer_changes() {
    let yaml = |metrics: &str| {
        format!(
            r#"
version: 1
models:
  m: scripted:unused.yaml
inputs:
  gold: string
nodes:
  - {{ id: draft, kind: generate, template: "Solve." }}
  - id: check
    kind: verify
    checks: [ {{ regex: "NEVER" }} ]
  - {{ id: revise, kind: revise, template: "Again." }}
edges:
  - {{ from: draft, to: check }}
  - {{ from: check, to: revise, when: "not check.passed and not loop.last" }}
loops:
  - {{ id: refine, from: revise, to: check, max_rounds: 3{metrics} }}
output: {{ from: [draft, revise] }}
"#
        )
    };
    let script = r#"
replies:
  - { node: draft, text: "so the answer is 3" }
  - { node: revise, round: 1, text: "Put differently, the answer is 3" }
  - { node: revise, round: 2, text: "Fixed: the answer is 4" }
"#;
    let opts = || RunOptions {
        inputs: serde_json::json!({ "gold": "4" })
            .as_object()
            .unwrap()
            .clone(),
        ..RunOptions::default()
    };
    // By the verifier and the whole text: two changes (one a rewording), no win.
    let (s, _) = run(workflow(&yaml("")), script, opts()).await;
    let l = &s.loops[0];
    assert_eq!((l.rounds, l.changes, l.wins), (3, 2, 0));
    // By the gold answer and the extracted answer: one change, and it won.
    let metrics = r#", metrics: { answer: 'answer is (\d+)', gold: "{{ gold }}" }"#;
    let (s, _) = run(workflow(&yaml(metrics)), script, opts()).await;
    let l = &s.loops[0];
    assert_eq!((l.rounds, l.changes, l.wins), (3, 1, 1));
    assert_eq!(l.correction_success_rate, 1.0);
    let wins: Vec<bool> = l.per_round.iter().map(|r| r.win).collect();
    assert_eq!(wins, [false, false, true]);
    // The verifier still steered the loop: it never passed.
    assert_eq!(s.verified, Some(false));
}

/// A model declared without a spec is one the caller supplies: it runs
/// with `Engine::with_model`, and without it the run fails before any call,
/// naming the model.
#[tokio::test]
async fn a_model_without_a_spec_is_supplied_by_the_caller() {
    let yaml = r#"
version: 1
name: supplied
models:
  app: { max_tokens: 64 }
nodes:
  - { id: draft, kind: generate, model: app, template: "hi" }
output: draft
"#;
    let wf = workflow(yaml);
    assert_eq!(wf.models()[0].spec, None);
    let codes: Vec<_> = wf.warnings().iter().map(|d| d.code.as_str()).collect();
    assert_eq!(codes, ["W002"]);
    let err = redraft::Engine::new()
        .run(wf.clone(), RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, redraft::RunError::NoSpec { name } if name == "app"),
        "{err}"
    );
    assert!(err.to_string().contains("--model app=SPEC"), "{err}");
    let (s, _) = run(wf, "replies:\n  - { text: hello }\n", RunOptions::default()).await;
    assert_eq!(s.output.unwrap(), "hello");
}

/// Opening a model (here: a script behind a FIFO, which blocks until
/// someone writes it, as loading weights from a slow disk would) runs off
/// the async runtime: on a single-threaded runtime, other tasks keep
/// running while it opens. Two concurrent runs of one engine open the
/// model once (a second open would block on the FIFO for ever).
#[test]
fn models_open_off_the_runtime_once_per_engine() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = std::env::temp_dir().join(format!("redraft-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("replies.yaml");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let yaml = format!(
        "version: 1\nname: fifo\nmodels:\n  m: scripted:{}\nnodes:\n  - {{ id: draft, kind: generate, model: m, template: hi }}\noutput: draft\n",
        fifo.display()
    );
    let wf = workflow(&yaml);
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(AtomicBool::new(false));
    let writer = {
        let (fifo, blocked) = (fifo.clone(), blocked.clone());
        std::thread::spawn(move || {
            // Written when the runtime shows it is alive, or after 10 s
            // (then the runtime was blocked), so a failure cannot hang.
            if wait
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_err()
            {
                blocked.store(true, Ordering::SeqCst);
            }
            std::fs::write(&fifo, "replies:\n  - { text: opened }\n").unwrap();
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let summaries = rt.block_on(async {
        let engine = Arc::new(redraft::Engine::new());
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let (engine, wf) = (engine.clone(), wf.clone());
                tokio::spawn(async move { engine.run(wf, RunOptions::default()).await })
            })
            .collect();
        // Only reached while the models open if opening does not block
        // this (the only) runtime thread.
        tokio::time::sleep(Duration::from_millis(20)).await;
        go.send(()).unwrap();
        let mut out = Vec::new();
        for r in runs {
            out.push(r.await.unwrap().unwrap());
        }
        out
    });
    writer.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !blocked.load(Ordering::SeqCst),
        "opening blocked the runtime"
    );
    for s in summaries {
        assert_eq!(s.output.unwrap(), "opened");
    }
}

fn chatty(rounds: u32) -> Arc<redraft::Workflow> {
    workflow(&format!(
        r#"
version: 1
name: chatty
models: {{ m: "scripted:unused.yaml" }}
nodes:
  - {{ id: draft, kind: generate, model: m, template: "go" }}
  - {{ id: revise, kind: revise, model: m, template: "again" }}
edges:
  - {{ from: draft, to: revise }}
loops:
  - {{ id: more, from: revise, to: revise, max_rounds: {rounds} }}
output: revise
"#
    ))
}

fn scripted_engine(script: &str) -> (redraft::Engine, Arc<redraft::event::Collect>) {
    let model = Arc::new(redraft::backend::ScriptedModel::from_yaml(script, "s").unwrap());
    let recorded = Arc::new(redraft::event::Collect::default());
    let engine = redraft::Engine::new()
        .with_model("m", model)
        .with_recorder(recorded.clone());
    (engine, recorded)
}

/// The stream carries exactly the events a recorder sees, in order, and
/// ends after `run_finished`.
#[tokio::test]
async fn a_streamed_run_yields_every_event_then_ends() {
    let (engine, recorded) = scripted_engine("replies:\n  - { text: more }\n");
    let (mut events, summary) = engine.run_streaming(chatty(3), RunOptions::default());
    let (summary, streamed) = tokio::join!(summary, async {
        let mut all = Vec::new();
        while let Some(e) = events.next().await {
            all.push(e);
        }
        all
    });
    let summary = summary.unwrap();
    assert_eq!(summary.status, RunStatus::Finished, "{:?}", summary.error);
    assert!(matches!(streamed.last(), Some(Event::RunFinished { .. })));
    assert_eq!(streamed, recorded.take());
    let calls = streamed
        .iter()
        .filter(|e| matches!(e, Event::ModelCall(_)))
        .count();
    assert_eq!(calls, 4);
}

/// A consumer that stops reading slows the run at its next model call, not
/// the scheduler, and the queue stays near the buffer; reading again lets
/// the run finish. A dropped stream releases the run.
#[tokio::test]
async fn an_unread_stream_holds_model_calls_back() {
    use futures_util::StreamExt;
    let (engine, recorded) = scripted_engine("replies:\n  - { text: more }\n");
    let engine = Arc::new(engine);
    let opts = RunOptions {
        event_buffer: 8,
        ..RunOptions::default()
    };
    let (mut events, summary) = engine.run_streaming(chatty(40), opts.clone());
    let run = tokio::spawn(summary);
    // Let the run go as far as it can without a reader.
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    let calls = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::ModelCall(_)))
            .count()
    };
    let held = recorded.take();
    assert!(!run.is_finished());
    assert!(
        (1..=4).contains(&calls(&held)) && held.len() <= 8 + 6,
        "{} calls, {} events while nobody read",
        calls(&held),
        held.len()
    );
    let mut streamed = Vec::new();
    while let Some(e) = events.next().await {
        streamed.push(e);
    }
    assert_eq!(run.await.unwrap().unwrap().status, RunStatus::Finished);
    assert_eq!(calls(&streamed), 41);
    // Dropped before reading: the run goes on to the end.
    let (events, summary) = engine.run_streaming(chatty(40), opts);
    drop(events.boxed());
    assert_eq!(summary.await.unwrap().status, RunStatus::Finished);
}

/// Clones of an engine share what it opened, but a clone given another
/// model for the same name runs that model, not the one cached.
#[tokio::test]
async fn an_engine_clone_with_another_model_uses_it() {
    let (first, _) = scripted_engine("replies:\n  - { text: first }\n");
    let wf = chatty(1);
    let s = first.run(wf.clone(), RunOptions::default()).await.unwrap();
    assert_eq!(s.output.unwrap(), "first");
    let other =
        redraft::backend::ScriptedModel::from_yaml("replies:\n  - { text: second }\n", "s2")
            .unwrap();
    let second = first.clone().with_model("m", Arc::new(other));
    let s = second.run(wf.clone(), RunOptions::default()).await.unwrap();
    assert_eq!(s.output.unwrap(), "second");
    // The original keeps its own.
    let s = first.run(wf, RunOptions::default()).await.unwrap();
    assert_eq!(s.output.unwrap(), "first");
}
