//! Guarded refinement (`accept` on loops) on the scripted backend: a
//! revision replaces the answer only if it passes the loop's rule, and one
//! that changes the final answer may need stronger evidence.

use redraft::RunOptions;
use redraft::event::Event;
use redraft::summary::RunSummary;

use std::path::{Path, PathBuf};

use crate::support::{fixtures, redraft, run, workflow};

/// draft → check → critique → revise, back to check. The verifier's score
/// is the share of its two checks that pass ("because", "therefore"); the
/// critique sees why the last revision was rejected, if it was.
fn guarded(accept: &str) -> std::sync::Arc<redraft::Workflow> {
    workflow(&format!(
        r#"
version: 1
models:
  m: scripted:unused.yaml
nodes:
  - {{ id: draft, kind: generate, template: "Solve." }}
  - id: check
    kind: verify
    target: "{{{{ revise.text if revise is defined else draft.text }}}}"
    checks: [ {{ regex: "because" }}, {{ regex: "therefore" }} ]
  - id: critique
    kind: critique
    schema: {{ type: object, required: [feedback], properties: {{ feedback: {{ type: string, maxLength: 200 }} }} }}
    template: |-
      Critique: {{{{ check.target }}}}
      {{% if loop.rejected %}}Your last suggestion was rejected: {{{{ loop.rejected.reason }}}}{{% endif %}}
  - {{ id: revise, kind: revise, template: "Revise {{{{ check.target }}}} with {{{{ critique.feedback }}}}" }}
edges:
  - {{ from: draft, to: check }}
  - {{ from: check, to: critique, when: "not check.passed and not loop.last" }}
  - {{ from: critique, to: revise }}
loops:
  - {{ id: refine, from: revise, to: check, max_rounds: 3{accept} }}
output: {{ from: [draft, revise] }}
"#
    ))
}

fn revisions(events: &[Event]) -> Vec<(u32, bool, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Revision {
                round,
                accepted,
                reason,
                ..
            } => Some((*round, *accepted, reason.clone())),
            _ => None,
        })
        .collect()
}

fn output(s: &RunSummary) -> &str {
    s.output.as_ref().and_then(|o| o.as_str()).unwrap_or("")
}

/// The draft has half the evidence; the first revision throws it away
/// (and the answer), the second keeps it.
const HARMFUL_THEN_SAME: &str = r#"
replies:
  - { node: draft, text: "because 2 + 2, the answer is 4" }
  - { node: critique, prompt: "was rejected", text: '{"feedback": "Keep the answer; say why."}' }
  - { node: critique, text: '{"feedback": "The answer is wrong."}' }
  - { node: revise, round: 1, text: "the answer is 5" }
  - { node: revise, text: "because 2 + 2, the answer is 4, I am sure" }
"#;

#[tokio::test]
async fn unguarded_loops_take_every_revision() {
    let (s, events) = run(guarded(""), HARMFUL_THEN_SAME, RunOptions::default()).await;
    assert!(revisions(&events).is_empty());
    assert_eq!(output(&s), "because 2 + 2, the answer is 4, I am sure");
    assert_eq!((s.loops[0].accepted, s.loops[0].rejected), (None, None));
    let scores: Vec<_> = s.loops[0].per_round.iter().map(|r| r.score).collect();
    assert_eq!(scores, [Some(0.5), Some(0.0), Some(0.5)]);
}

#[tokio::test]
async fn a_harmful_revision_is_rejected_and_the_next_critique_knows_why() {
    let (s, events) = run(
        guarded(", accept: improved"),
        HARMFUL_THEN_SAME,
        RunOptions::default(),
    )
    .await;
    let r = revisions(&events);
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0],
        (
            2,
            false,
            Some("its score 0.00 does not beat the current answer's 0.50".into())
        )
    );
    // The second revision ties the draft: not an improvement either.
    assert!(!r[1].1);
    // The answer never got worse: the draft is the output.
    assert_eq!(output(&s), "because 2 + 2, the answer is 4");
    assert_eq!(s.output_source.as_ref().unwrap().node, "draft");
    let l = &s.loops[0];
    assert_eq!((l.accepted, l.rejected, l.changes), (Some(0), Some(2), 0));
    let kept: Vec<_> = l
        .per_round
        .iter()
        .map(|r| (r.score, r.accepted, r.revision_score))
        .collect();
    assert_eq!(
        kept,
        [
            (Some(0.5), None, None),
            (Some(0.5), Some(false), Some(0.0)),
            (Some(0.5), Some(false), Some(0.5))
        ]
    );
    // Round 2's critique was shown the rejection (its reply proves it), and
    // round 2's revision worked on the draft, not on the rejected text.
    let prompts: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::NodeFinished {
                node,
                round: 2,
                output: Some(o),
                ..
            } if node == "critique" => Some(o.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(prompts.len(), 1);
    assert!(prompts[0].contains("Keep the answer"), "{prompts:?}");
}

#[tokio::test]
async fn a_helpful_revision_is_accepted() {
    let script = r#"
replies:
  - { node: draft, text: "the answer is 4" }
  - { node: critique, text: '{"feedback": "Say why."}' }
  - { node: revise, round: 1, text: "because 2 + 2, the answer is 4" }
  - { node: revise, text: "because 2 + 2, therefore the answer is 4" }
"#;
    let (s, events) = run(guarded(", accept: improved"), script, RunOptions::default()).await;
    assert_eq!(revisions(&events), [(2, true, None), (3, true, None)]);
    assert_eq!(output(&s), "because 2 + 2, therefore the answer is 4");
    assert_eq!(s.verified, Some(true));
    let l = &s.loops[0];
    assert_eq!((l.accepted, l.rejected), (Some(2), Some(0)));
}

#[tokio::test]
async fn a_revision_that_changes_the_final_answer_needs_the_stronger_evidence() {
    let script = r#"
replies:
  - { node: draft, text: "the answer is 5" }
  - { node: critique, text: '{"feedback": "Explain."}' }
  - { node: revise, round: 1, text: "because I recounted, the answer is 4" }
  - { node: revise, text: "because 2 + 3, the answer is 5" }
"#;
    let accept =
        r#", accept: { when: improved, answer: 'answer is (\d+)', answer_change: verified }"#;
    let (s, events) = run(guarded(accept), script, RunOptions::default()).await;
    let r = revisions(&events);
    // Round 2: better score, but it changes 5 to 4 and the verifier did not pass it.
    assert_eq!(
        r[0],
        (
            2,
            false,
            Some("it changes the final answer from 5 to 4 without the evidence `answer_change` asks for: the verifier did not pass it (score 0.50)".into())
        )
    );
    // Round 3: the same score, the same answer, better reasoning: accepted.
    assert_eq!(r[1], (3, true, None));
    assert_eq!(output(&s), "because 2 + 3, the answer is 5");
    let changed: Vec<bool> = events
        .iter()
        .filter_map(|e| match e {
            Event::Revision { answer_changed, .. } => Some(*answer_changed),
            _ => None,
        })
        .collect();
    assert_eq!(changed, [true, false]);

    // The same revisions with a plain `improved`: the answer flips to 4.
    let (s, _) = run(guarded(", accept: improved"), script, RunOptions::default()).await;
    assert_eq!(output(&s), "because I recounted, the answer is 4");

    // `answer: number` reads answers as the numeric scorer does: a revision
    // that boxes a new number changes the answer (the pattern saw none).
    let boxed = script.replace(
        "because I recounted, the answer is 4",
        r"because I recounted, \\boxed{4}",
    );
    let by_number = r#", accept: { when: improved, answer: number, answer_change: verified }"#;
    let (_, events) = run(guarded(by_number), &boxed, RunOptions::default()).await;
    let reason = revisions(&events)[0].2.clone().unwrap_or_default();
    assert!(reason.contains("from 5 to 4"), "{reason}");
}

#[tokio::test]
async fn an_expression_rule_and_an_answer_change_margin() {
    let script = r#"
replies:
  - { node: draft, text: "the answer is 5" }
  - { node: critique, text: '{"feedback": "Explain."}' }
  - { node: revise, round: 1, text: "because I recounted, the answer is 4" }
  - { node: revise, text: "because I recounted, therefore the answer is 4" }
"#;
    // A change of answer must raise the score by 0.75: 0 → 0.5 is not enough, 0 → 1 is.
    let accept = r#", accept: { when: "revision.score >= loop.current.score", answer: 'answer is (\d+)', answer_change_margin: 0.75 }"#;
    let (s, events) = run(guarded(accept), script, RunOptions::default()).await;
    let r = revisions(&events);
    assert_eq!(
        r[0],
        (
            2,
            false,
            Some("it changes the final answer from 5 to 4: its score 0.50 does not beat the current answer's 0.00 by 0.75".into())
        )
    );
    assert_eq!(r[1], (3, true, None));
    assert_eq!(output(&s), "because I recounted, therefore the answer is 4");
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("redraft-guarded-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy(files: &[&str], to: &Path) {
    for f in files {
        std::fs::copy(fixtures().join("eval").join(f), to.join(f)).unwrap();
    }
}

fn eval_json(dir: &Path, workflow: &str, data: &str, extra: &[&str]) -> serde_json::Value {
    let wf = dir.join(workflow).display().to_string();
    let data = dir.join(data).display().to_string();
    let store = dir.join(format!("{workflow}.db")).display().to_string();
    let mut args = vec![
        "eval",
        &wf,
        "--data",
        &data,
        "--map",
        "task=question",
        "--answer",
        "answer",
        "--scorer",
        "numeric",
        "--store",
        &store,
        "--json",
    ];
    args.extend(extra);
    let o = redraft(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{err}");
    let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["stderr"] = err.into_owned().into();
    v
}

/// The arith items through draft → judge → critique → revise, with the
/// loop's `accept` given.
fn guarded_eval(dir: &Path, accept: &str) -> serde_json::Value {
    let name = format!("guarded-{}.yaml", accept.len());
    std::fs::write(
        dir.join(&name),
        format!(
            r#"
version: 1
models:
  solver: scripted:guarded.replies.yaml
inputs:
  task: string
nodes:
  - {{ id: draft, kind: generate, template: "Q: {{{{ task }}}}" }}
  - id: check
    kind: verify
    target: "{{{{ revise.text if revise is defined else draft.text }}}}"
    checks: [ {{ judge: {{ model: solver, template: "Is this right? {{{{ target }}}}" }} }} ]
  - id: critique
    kind: critique
    template: "Check this answer to {{{{ task }}}}: {{{{ check.target }}}}"
    schema: {{ type: object, required: [feedback], properties: {{ feedback: {{ type: string, maxLength: 200 }} }} }}
  - id: revise
    kind: revise
    template: "Improve the answer to {{{{ task }}}}: {{{{ check.target }}}} Feedback: {{{{ critique.feedback }}}}"
edges:
  - {{ from: draft, to: check }}
  - {{ from: check, to: critique, when: "not check.passed and not loop.last" }}
  - {{ from: critique, to: revise }}
loops:
  - {{ id: refine, from: revise, to: check, max_rounds: 2{accept} }}
output: {{ from: [draft, revise], select: latest }}
"#
        ),
    )
    .unwrap();
    eval_json(dir, &name, "arith.jsonl", &[])
}

#[test]
fn a_guarded_eval_loses_no_right_draft_and_counts_the_rejections() {
    // The judge in guarded.replies.yaml: "no" at 0.55 is a confidence of 0.45.
    let d = temp("eval");
    copy(&["guarded.replies.yaml", "arith.jsonl"], &d);

    // Unguarded, the latest answer: c's and e's right drafts are revised
    // wrong (negative flips), b's wrong one right.
    let v = guarded_eval(&d, "");
    let m = &v["metrics"];
    assert_eq!(m["accuracy"], 0.4);
    assert_eq!(m["flips"]["negative"], 2);
    assert_eq!(m["flips"]["positive"], 1);
    let r1 = &m["per_round"][1];
    assert_eq!(r1["flips"]["negative"], 2);
    assert!(r1.get("rejected").is_none());
    let err = v["stderr"].as_str().unwrap();
    assert!(
        err.contains("revision 1 turned more right answers wrong (2) than wrong ones right (1) for this model: stop before it (at most 0 revision(s)) or guard the loop (`accept`)"),
        "{err}"
    );

    // Guarded: the harmful revisions (c: 0.4 → 0.3, e: 0.45 → 0.4) and d's
    // (0.2 → 0.1) are rejected; the helpful one (0.3 → 0.9) is taken.
    let v = guarded_eval(&d, ", accept: improved");
    let m = &v["metrics"];
    assert_eq!(m["accuracy"], 0.8);
    assert_eq!(m["flips"]["negative"], 0);
    assert_eq!(m["flips"]["positive"], 1);
    let r1 = &m["per_round"][1];
    assert_eq!(r1["rejected"], 3);
    assert_eq!(r1["flips"]["negative"], 0);
    assert_eq!(r1["accuracy"], 0.8);
    let err = v["stderr"].as_str().unwrap();
    assert!(
        err.contains("vs the previous round · round 1 (4 items, 3 rejected): −0 +1 (NFR 0.0%)"),
        "{err}"
    );
}

#[test]
fn eval_calibrates_a_verifier_on_half_the_items_and_the_workflow_applies_it() {
    let d = temp("calibrate");
    copy(
        &[
            "overconfident.yaml",
            "overconfident.replies.yaml",
            "overconfident.jsonl",
        ],
        &d,
    );
    let v = eval_json(
        &d,
        "overconfident.yaml",
        "overconfident.jsonl",
        &["--calibrate", "check=isotonic"],
    );
    let err = v["stderr"].as_str().unwrap();
    // 16 items: 7 held in (5 right), 9 held out. The judge ranks well and
    // scales badly: ECE falls, AUROC stays.
    assert!(
        err.contains("calibration of `check` (isotonic, fitted on 7 verdicts of half the items, 5 on right answers)"),
        "{err}"
    );
    assert!(
        err.contains("held-out half, 9 verdicts: ECE 0.317 → 0.000 · AUROC 1.000 → 1.000"),
        "{err}"
    );
    // --json carries the fit as well.
    assert_eq!(v["calibration"]["map"]["method"], "isotonic");
    assert_eq!(v["calibration"]["held_out"]["verdicts"], 9);
    let file = d.join("overconfident.check.calibration.yaml");
    let c = redraft::calibration::Calibration::load(&file).unwrap();
    assert_eq!(c.method(), redraft::calibration::Method::Isotonic);
    assert_eq!((c.apply(0.7), c.apply(0.95)), (0.0, 1.0));

    // Applied at run time: the verdicts keep their raw confidence and gain
    // a calibrated one, which the eval measures.
    let wf = std::fs::read_to_string(d.join("overconfident.yaml"))
        .unwrap()
        .replace(
            "    kind: verify\n",
            "    kind: verify\n    calibration: overconfident.check.calibration.yaml\n",
        );
    std::fs::write(d.join("applied.yaml"), wf).unwrap();
    let v = eval_json(&d, "applied.yaml", "overconfident.jsonl", &[]);
    let m = &v["metrics"];
    assert_eq!(
        m["confidence"]["ece"].as_f64().map(|e| (e * 1e3).round()),
        Some(250.0)
    );
    assert_eq!(m["calibrated_confidence"]["ece"], 0.0);
    assert_eq!(m["calibrated_confidence"]["auroc"], 1.0);
    assert_eq!(m["calibrated_confidence"]["verdicts"], 16);

    // Refitting a node that names its calibration rewrites that file.
    let again = eval_json(
        &d,
        "applied.yaml",
        "overconfident.jsonl",
        &["--calibrate", "check"],
    );
    let err = again["stderr"].as_str().unwrap();
    assert!(
        err.contains(&format!("written to {}", file.display())),
        "{err}"
    );
    assert_eq!(
        redraft::calibration::Calibration::load(&file)
            .unwrap()
            .method(),
        redraft::calibration::Method::Platt
    );

    // The report plots both.
    let id = v["eval"].as_str().unwrap();
    let html = d.join("r.html").display().to_string();
    let store = d.join("applied.yaml.db").display().to_string();
    let o = redraft(&["report", id, "--store", &store, "-o", &html]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(html.contains("Verifier reliability"));
    assert!(
        html.contains("calibrated</"),
        "a calibrated series in the legend"
    );
}

#[test]
fn calibrate_refuses_what_it_cannot_fit() {
    let d = temp("refuse");
    copy(
        &[
            "overconfident.yaml",
            "overconfident.replies.yaml",
            "overconfident.jsonl",
            "checked.yaml",
            "checked.replies.yaml",
            "arith.jsonl",
        ],
        &d,
    );
    let wf = d.join("overconfident.yaml").display().to_string();
    let data = d.join("overconfident.jsonl").display().to_string();
    for (flag, needle) in [
        ("draft", "`draft` is not a verify node of"),
        ("nope", "(verify nodes: check)"),
        (
            "check=cubic",
            "unknown calibration method \"cubic\": platt or isotonic",
        ),
    ] {
        let o = redraft(&[
            "eval",
            &wf,
            "--data",
            &data,
            "--calibrate",
            flag,
            "--store",
            ":memory:",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{flag}: {err}");
    }
    // 5 items: the held-in half judged only right answers. The eval itself
    // is kept; the calibration is refused.
    let store = d.join("s.db").display().to_string();
    let o = redraft(&[
        "eval",
        &d.join("checked.yaml").display().to_string(),
        "--data",
        &d.join("arith.jsonl").display().to_string(),
        "--map",
        "task=question",
        "--answer",
        "answer",
        "--scorer",
        "numeric",
        "--store",
        &store,
        "--calibrate",
        "check",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot calibrate `check`: all 3 of its verdicts judged right answers"),
        "{err}"
    );
    assert!(
        err.contains("5 done"),
        "the eval finished and is stored: {err}"
    );
    assert!(!d.join("checked.check.calibration.yaml").exists());
}

#[test]
fn the_graph_shows_the_acceptance_rule() {
    let wf = crate::support::load(&crate::support::root().join("workflows/guarded.yaml"));
    let chart = redraft::graph::mermaid(&wf);
    assert!(
        chart.contains(
            r#"revise -.->|"loop refine: max 3 rounds, accept improved by 0.05; a changed answer: verified"| check"#
        ),
        "{chart}"
    );
}
