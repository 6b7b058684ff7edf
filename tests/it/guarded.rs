//! Guarded refinement (`accept` on loops) on the scripted backend: a
//! revision replaces the answer only if it passes the loop's rule, and one
//! that changes the final answer may need stronger evidence.

use redraft::RunOptions;
use redraft::event::Event;
use redraft::summary::RunSummary;

use crate::support::{run, workflow};

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
