//! One meaning of "the answer": the same texts go through every user of
//! `redraft::answer` — a verify node's numeric, contains and judge checks,
//! a vote's extract pattern, and the eval scorers (numeric, contains,
//! numeric with --extract) — and each must read them alike.

use std::sync::Arc;

use redraft::RunOptions;
use redraft::eval::data::Item;
use redraft::eval::score::Scorer;
use redraft::event::{Event, NodeStatus};
use redraft::sandbox::Isolation;

use crate::support::{run, workflow};

/// A reply and the number it ends on (`None`: it holds none): the hard
/// cases of `redraft::answer::number`, and of every user of it.
const NUMBERS: &[(&str, Option<f64>)] = &[
    ("The answer is 72.", Some(72.0)),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", Some(72.0)),
    ("so she earns $1,200 a month", Some(1200.0)),
    ("$1,234.50", Some(1234.5)),
    ("1,000,000 people", Some(1_000_000.0)),
    ("half of it: .5", Some(0.5)),
    ("about 1e3 grains", Some(1000.0)),
    ("2.5e-1", Some(0.25)),
    ("a drop of -3 degrees", Some(-3.0)),
    ("−7 (a unicode minus)", Some(-7.0)),
    ("from 3-4 hours", Some(4.0)),
    ("it rose by 50%", Some(50.0)),
    ("€ 15 each", Some(15.0)),
    ("\\boxed{72} (we checked 80 too)", Some(72.0)),
    ("First 10, then \\boxed{\\frac{3}{4}}", Some(0.75)),
    ("\\boxed{-\\frac{1}{2}}", Some(-0.5)),
    ("the list 1,2,3", Some(3.0)),
    ("H2O and CO2", None),
    ("no numbers here", None),
];

fn item(answer: &str) -> Item {
    Item {
        id: "x".into(),
        inputs: Default::default(),
        answer: Some(serde_json::Value::String(answer.into())),
        hidden: Default::default(),
    }
}

async fn scorer_passes(spec: &str, extract: Option<&str>, answer: &str, text: &str) -> bool {
    let s = Scorer::parse(spec, extract, Isolation::None).unwrap();
    s.score(&item(answer), text).await.unwrap().passed
}

/// The verify node `check`'s verdict on a drafted reply `text`.
async fn verdict(check: &str, text: &str, want: &str) -> (bool, f64) {
    let wf = workflow(&format!(
        r#"
version: 1
models: {{ m: {{ spec: "scripted:unused" }} }}
inputs: {{ want: string }}
nodes:
  - {{ id: draft, kind: generate, template: "Q" }}
  - id: check
    kind: verify
    target: "{{{{ draft.text }}}}"
    checks:
      - {check}
edges: [{{ from: draft, to: check }}]
output: {{ from: [draft] }}
"#
    ));
    let script = serde_json::json!({
        "replies": [
            {"node": "draft", "text": text},
            {"node": "check", "text": text},
        ]
    })
    .to_string();
    let opts = RunOptions {
        inputs: [("want".to_string(), serde_json::json!(want))]
            .into_iter()
            .collect(),
        ..RunOptions::default()
    };
    let (_, events) = run(wf, &script, opts).await;
    events
        .iter()
        .find_map(|e| match e {
            Event::NodeFinished {
                node,
                status: NodeStatus::Done,
                output: Some(v),
                ..
            } if node == "check" => {
                Some((v["passed"].as_bool().unwrap(), v["score"].as_f64().unwrap()))
            }
            _ => None,
        })
        .expect("the check ran")
}

#[tokio::test]
async fn a_check_and_a_scorer_read_the_same_number() {
    for (text, want) in NUMBERS {
        let want_text = want.map_or("1".to_string(), |w| w.to_string());
        let scored = scorer_passes("numeric", None, &want_text, text).await;
        let (checked, _) = verdict("numeric: \"{{ inputs.want }}\"", text, &want_text).await;
        assert_eq!(scored, want.is_some(), "the numeric scorer on {text:?}");
        assert_eq!(checked, want.is_some(), "the numeric check on {text:?}");
        assert_eq!(
            redraft::answer::number(text),
            *want,
            "the answer module on {text:?}"
        );
    }
}

#[tokio::test]
async fn a_mention_means_the_same_to_a_check_and_a_scorer() {
    for (text, needle, mentioned) in [
        ("Green Tests keep watch", "test", true),
        ("I attest to it", "test", false),
        ("It is the Eiffel Tower.", "eiffel tower", true),
        ("the teleiffel tower", "eiffel", false),
    ] {
        let scored = scorer_passes("contains", None, needle, text).await;
        let (checked, _) = verdict("contains: \"{{ inputs.want }}\"", text, needle).await;
        assert_eq!(scored, mentioned, "the contains scorer on {text:?}");
        assert_eq!(checked, mentioned, "the contains check on {text:?}");
    }
}

#[tokio::test]
async fn a_pattern_picks_the_last_answer_for_a_vote_and_a_scorer() {
    let text = "First guess: the answer is 3. On reflection the answer is 4.";
    let pattern = r"answer is (\d+)";
    assert!(scorer_passes("numeric", Some(pattern), "4", text).await);
    assert!(!scorer_passes("numeric", Some(pattern), "3", text).await);
    let wf = workflow(&format!(
        r#"
version: 1
models: {{ m: {{ spec: "scripted:unused" }} }}
nodes:
  - {{ id: solve, kind: generate, template: "Q", n: 3 }}
  - {{ id: pick, kind: vote, from: solve, extract: '{pattern}' }}
edges: [{{ from: solve, to: pick }}]
output: {{ from: [pick] }}
"#
    ));
    let script = serde_json::json!({
        "replies": [{"node": "solve", "samples": [text, text, "the answer is 3"]}]
    })
    .to_string();
    let (summary, _) = run(Arc::clone(&wf), &script, RunOptions::default()).await;
    assert_eq!(summary.output, Some(serde_json::json!("4")), "{summary:?}");
}

/// `extract: number` counts each sample's final number as the numeric
/// scorer reads it: `\boxed{15}`, "The answer is: $15." and "15.0" are one
/// answer, and each passes the scorer for 15 while the 7 does not.
#[tokio::test]
async fn a_vote_by_number_agrees_with_the_numeric_scorer() {
    let samples = [
        r"so \boxed{15} vacuum cleaners",
        "The answer is: $15.",
        "x = 15.0",
        "I think 7",
    ];
    for (text, right) in samples.iter().zip([true, true, true, false]) {
        assert_eq!(
            scorer_passes("numeric", None, "15", text).await,
            right,
            "{text}"
        );
    }
    let wf = workflow(
        r#"
version: 1
models: { m: { spec: "scripted:unused" } }
nodes:
  - { id: solve, kind: generate, template: "Q", n: 4 }
  - { id: pick, kind: vote, from: solve, extract: number }
edges: [{ from: solve, to: pick }]
output: { from: [pick] }
"#,
    );
    let script =
        serde_json::json!({"replies": [{"node": "solve", "samples": samples}]}).to_string();
    let (summary, events) = run(Arc::clone(&wf), &script, RunOptions::default()).await;
    assert_eq!(summary.output, Some(serde_json::json!("15")), "{summary:?}");
    let votes = events.iter().find_map(|e| match e {
        redraft::event::Event::NodeFinished {
            node,
            output: Some(o),
            ..
        } if node == "pick" => Some(o["votes"].clone()),
        _ => None,
    });
    assert_eq!(votes, Some(serde_json::json!({"15": 3, "7": 1})));
    assert_eq!(redraft::answer::format_number(18.0), "18");
    assert_eq!(redraft::answer::format_number(-0.5), "-0.5");
}

#[tokio::test]
async fn a_judges_yes_survives_markdown() {
    for (reply, yes) in [
        ("**Yes**, it is right.", true),
        ("Yes.", true),
        ("# No", false),
        ("Nope", false),
    ] {
        let (_, score) = verdict(
            "judge: { model: m, template: \"Right? {{ target }}\" }",
            reply,
            "",
        )
        .await;
        assert_eq!(score, f64::from(u8::from(yes)), "the judge's {reply:?}");
    }
}
