//! PromptBridge on scripted models (`tests/fixtures/bridge/`): model A
//! answers the sums when told to think step by step, model B when asked
//! for the number only (and gets q2 wrong then); q6's answer is 9, which
//! neither gives. The writer proposes, describes and rewrites by regex on
//! what it is shown (its first rewrite loses the placeholder).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redraft::bridge::calibrate::{self, CalibrateOptions, Step};
use redraft::bridge::migrate::{self, Bridge, CheckSpec};
use redraft::bridge::{BridgeError, LostPlaceholders, Task};
use redraft::eval::data::{DataSpec, Selection};
use redraft::sandbox::Isolation;

use crate::support::{fixtures, redraft};

fn dir() -> PathBuf {
    fixtures().join("bridge")
}

fn spec(file: &str) -> String {
    format!("scripted:{}", dir().join(file).display())
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("redraft-bridge-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn data() -> DataSpec {
    DataSpec {
        source: dir().join("items.jsonl").display().to_string(),
        map: [("question".to_string(), "question".to_string())].into(),
        answer: Some("answer".into()),
        ..DataSpec::default()
    }
}

fn task() -> Task {
    Task {
        name: "sums".into(),
        workflow: dir().join("task.yaml"),
        prompt: "solve.j2".into(),
        data: data(),
        selection: Selection::default(),
        scorer: "numeric".into(),
        extract: None,
        isolation: Isolation::None,
    }
}

fn check_spec() -> CheckSpec {
    CheckSpec {
        data: data(),
        selection: Selection::default(),
        scorer: "numeric".into(),
        extract: None,
        isolation: Isolation::None,
        concurrency: 2,
    }
}

async fn calibrated(
    model: &str,
    store: &str,
    generations: u32,
) -> (calibrate::Calibration, Vec<String>) {
    let steps = Mutex::new(Vec::new());
    let opts = CalibrateOptions {
        generations,
        ..CalibrateOptions::default()
    };
    let cal = calibrate::calibrate(
        &task(),
        &spec(model),
        &spec("writer.yaml"),
        store,
        &opts,
        &Default::default(),
        &|s: &Step| {
            steps
                .lock()
                .unwrap()
                .push(serde_json::to_string(s).unwrap())
        },
    )
    .await
    .unwrap();
    (cal, steps.into_inner().unwrap())
}

#[tokio::test]
async fn calibration_finds_each_models_prompt_and_resumes_from_the_store() {
    let d = temp("calibrate");
    let store = d.join("s.db").display().to_string();
    let (a, steps) = calibrated("a.yaml", &store, 1).await;
    assert_eq!(a.seed().mean, 0.0);
    assert_eq!(a.best().prompt, "Think step by step. {{ inputs.question }}");
    assert_eq!(a.best().passed, 5, "all but q6");
    assert_eq!(a.best().parent, Some(0));
    // Seed on all 6 items, the child on a minibatch of 3, then on the other 3.
    assert_eq!(a.metric_calls, 12);
    assert!(steps[0].contains(r#""step":"scored""#), "{steps:?}");
    // Island 1 drew the same proposal: refused as a duplicate.
    let rejected: Vec<_> = a
        .proposals
        .iter()
        .filter_map(|p| p.rejected.clone())
        .collect();
    assert_eq!(rejected, vec!["it is candidate 1 again"]);

    // Two more generations: resumed after the first, nothing scored twice.
    let (again, steps) = calibrated("a.yaml", &store, 3).await;
    assert!(
        steps[0].contains(r#""step":"resumed","generation":1"#),
        "{steps:?}"
    );
    assert_eq!(again.generation, 3);
    assert_eq!(again.candidates[..2], a.candidates[..]);
    // Nothing already scored was scored again: the one new child (the seed
    // prompt without its final newline) cost its minibatch only.
    assert!(
        !steps.iter().any(|s| s.contains(r#""step":"scored""#)),
        "{steps:?}"
    );
    assert_eq!(again.metric_calls, a.metric_calls + 3);
    let last = again.proposals.last().unwrap();
    assert_eq!(last.prompt, "Question: {{ inputs.question }}");
    assert_eq!(
        last.rejected.as_deref(),
        Some("it does not beat its parent on the minibatch")
    );
    // The journal keeps one record per generation, plus the stops.
    let mut s = redraft::eval::store::open(&store).unwrap();
    let cals = calibrate::calibrations(s.as_mut()).unwrap();
    assert_eq!(cals, vec![again]);
}

#[tokio::test]
async fn a_budget_in_metric_calls_stops_before_a_step_could_pass_it() {
    let d = temp("budget");
    let store = d.join("s.db").display().to_string();
    let opts = CalibrateOptions {
        generations: 5,
        max_metric_calls: Some(10),
        ..CalibrateOptions::default()
    };
    let cal = calibrate::calibrate(
        &task(),
        &spec("a.yaml"),
        &spec("writer.yaml"),
        &store,
        &opts,
        &Default::default(),
        &|_| {},
    )
    .await
    .unwrap();
    // The seed took 6; a step may take up to 6 more: none started.
    assert_eq!(cal.metric_calls, 6);
    assert!(cal.proposals.is_empty());
    assert_eq!(cal.stopped.as_deref(), Some("metric calls (6 of 10)"));
}

#[tokio::test]
async fn a_prompt_file_the_workflow_does_not_use_is_named() {
    let mut t = task();
    t.prompt = "nope.j2".into();
    let d = temp("nofile");
    let err = calibrate::calibrate(
        &t,
        &spec("a.yaml"),
        &spec("writer.yaml"),
        &d.join("s.db").display().to_string(),
        &CalibrateOptions::default(),
        &Default::default(),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("uses no prompt file `nope.j2` (it uses: solve.j2)"),
        "{err}"
    );
}

/// Calibrates the task for both models and learns the mapping.
async fn mapping(store: &str) -> migrate::Mapping {
    calibrated("a.yaml", store, 2).await;
    calibrated("b.yaml", store, 2).await;
    let mut s = redraft::eval::store::open(store).unwrap();
    let cals = calibrate::calibrations(s.as_mut()).unwrap();
    let pairs = migrate::pairs(&cals, &spec("a.yaml"), &spec("b.yaml"));
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].source, "Think step by step. {{ inputs.question }}");
    assert_eq!(
        pairs[0].target,
        "Give the number only. {{ inputs.question }}"
    );
    // The target's calibration never scored the source's best prompt: the
    // paper's transfer gap is unmeasured here, not made up.
    assert_eq!(
        (pairs[0].source_prompt_on_target, pairs[0].transfer_gap),
        (None, None)
    );
    migrate::learn(
        pairs,
        &spec("a.yaml"),
        &spec("b.yaml"),
        &spec("writer.yaml"),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn migration_rewrites_checks_and_replays_what_it_recorded() {
    let d = temp("migrate");
    let m = mapping(&d.join("s.db").display().to_string()).await;
    assert_eq!(
        m.description,
        r#"- Replace "Think step by step" with "Give the number only"."#
    );

    // Record once...
    let rec = d.join("recorded");
    let bridge = Bridge::new(m.clone()).record(&rec).unwrap();
    let migrated = bridge
        .migrate_workflow(dir().join("task2.yaml"))
        .await
        .unwrap();
    let p = &migrated.prompts[0];
    assert_eq!(p.file, "careful.j2");
    assert_eq!(p.text, "Give the number only. {{ inputs.question }}");
    assert_eq!(p.attempts, 2, "the first rewrite lost the placeholder");
    let report = bridge.check(&migrated, &check_spec()).await.unwrap();
    drop(bridge);
    assert_eq!(report.items, 6);
    assert_eq!(report.source.accuracy, Some(5.0 / 6.0));
    assert_eq!(report.direct.accuracy, Some(0.0));
    assert_eq!(report.migrated.accuracy, Some(4.0 / 6.0));
    assert_eq!(report.model_gap, Some(-5.0 / 6.0));
    assert_eq!(report.gain, Some(4.0 / 6.0));
    assert_eq!(report.direct_vs_source.negative.len(), 5);
    assert_eq!(report.migrated_vs_source.negative, vec!["q2"]);
    assert_eq!(
        report.migrated_vs_direct.positive,
        vec!["q1", "q3", "q4", "q5"]
    );
    assert_eq!(report.source.model, spec("a.yaml"));

    // ...replay after: the same rewrite and report, no model run.
    let replay = Bridge::replay(&rec).unwrap();
    assert_eq!(replay.mapping(), &m);
    let again = replay
        .migrate_workflow(dir().join("task2.yaml"))
        .await
        .unwrap();
    assert_eq!(again.prompts, migrated.prompts);
    assert_eq!(replay.check(&again, &check_spec()).await.unwrap(), report);

    // The CLI replays it too, from a directory named relative to where it
    // runs (not to the workflow), with the same check.
    let work = d.join("work");
    copy_dir(&dir(), &work);
    let out = crate::support::redraft_command()
        .args([
            "migrate",
            "work/task2.yaml",
            "--replay",
            "recorded",
            "--tag",
            "r",
        ])
        .args(["--check", "work/items.jsonl", "--map", "question=question"])
        .args(["--answer", "answer", "--scorer", "numeric", "--json", "-q"])
        .current_dir(&d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["check"], serde_json::to_value(&report).unwrap());
    assert_eq!(
        std::fs::read_to_string(work.join("prompts/careful.r.j2")).unwrap(),
        "Give the number only. {{ inputs.question }}"
    );

    // A request the cassettes do not hold fails, naming the closest one.
    let other = replay
        .migrate_prompt("x.j2", "Other: {{ inputs.question }}")
        .await;
    match other {
        Err(BridgeError::Model { step, message }) => {
            assert_eq!(step, "migrate");
            assert!(message.contains("no recorded reply"), "{message}");
        }
        other => panic!("expected a replay miss, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rewrite_that_keeps_losing_a_placeholder_is_an_error_after_the_attempts() {
    let m = migrate::Mapping {
        from: spec("a.yaml"),
        to: spec("b.yaml"),
        writer: spec("writer.yaml"),
        description: "anything".into(),
        pairs: vec![],
    };
    let err = Bridge::new(m)
        .attempts(1)
        .migrate_prompt("p.j2", "Q: {{ inputs.question }}")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.j2: no usable rewrite after 1 attempt(s); the last: it lost {{ inputs.question }}"
    );
}

#[tokio::test]
async fn with_restore_a_rewrite_that_lost_a_placeholder_gets_it_back() {
    let bridge = |writer: &str| {
        Bridge::new(migrate::Mapping {
            from: spec("a.yaml"),
            to: spec("b.yaml"),
            writer: spec(writer),
            description: "anything".into(),
            pairs: vec![],
        })
        .attempts(1)
        .lost_placeholders(LostPlaceholders::Restore)
    };
    let p = bridge("writer-lossy.yaml")
        .migrate_prompt("p.j2", "Q: {{ inputs.question }}")
        .await
        .unwrap();
    assert_eq!(p.attempts, 1);
    assert_eq!(p.restored, vec!["{{ inputs.question }}"]);
    assert_eq!(p.text, "Give the number only.\n\n{{ inputs.question }}");

    // Restoring does not make a rewrite that reads other variables usable.
    let err = bridge("writer.yaml")
        .migrate_prompt("p.j2", "Q: {{ inputs.question }}")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.j2: no usable rewrite after 1 attempt(s); the last: it reads variables the original does not (question)"
    );
}

#[tokio::test]
async fn calibration_with_restore_keeps_proposals_that_lost_a_placeholder() {
    // writer-lossy.yaml proposes prompts without the question.
    let d = temp("restore");
    let store = d.join("s.db").display().to_string();
    let run = |lost| {
        let store = store.clone();
        async move {
            let opts = CalibrateOptions {
                generations: 1,
                lost_placeholders: lost,
                ..CalibrateOptions::default()
            };
            calibrate::calibrate(
                &task(),
                &spec("a.yaml"),
                &spec("writer-lossy.yaml"),
                &store,
                &opts,
                &Default::default(),
                &|_| {},
            )
            .await
            .unwrap()
        }
    };
    let rejected = run(LostPlaceholders::Reject).await;
    assert!(!rejected.proposals.is_empty());
    for p in &rejected.proposals {
        assert_eq!(
            p.rejected.as_deref(),
            Some("it lost {{ inputs.question }}"),
            "{p:?}"
        );
        assert!(p.restored.is_empty());
    }
    assert_eq!(rejected.candidates.len(), 1, "only the seed");

    let restored = run(LostPlaceholders::Restore).await;
    let p = &restored.proposals[0];
    assert_eq!(p.restored, vec!["{{ inputs.question }}"]);
    assert_eq!(p.prompt, "Think step by step.\n\n{{ inputs.question }}");
    assert_eq!(p.rejected, None, "{p:?}");
    assert!(p.accepted.is_some(), "{p:?}");
    assert_eq!(
        restored.best().prompt,
        "Think step by step.\n\n{{ inputs.question }}"
    );
}

#[tokio::test]
async fn pairs_with_the_same_prompt_for_both_models_teach_no_edit_and_prompts_are_kept() {
    let same = migrate::Pair {
        task: "sums".into(),
        source: "Q: {{ inputs.question }}\n".into(),
        target: "Q: {{ inputs.question }}".into(),
        source_score: 0.5,
        target_score: 0.25,
        source_prompt_on_target: None,
        transfer_gap: None,
    };
    // The writer does not exist: it must not be asked.
    let m = migrate::learn(
        vec![same],
        &spec("a.yaml"),
        &spec("b.yaml"),
        &spec("no-such-writer.yaml"),
    )
    .await
    .unwrap();
    assert_eq!(m.description, "");
    let p = Bridge::new(m)
        .migrate_prompt("p.j2", "Q: {{ inputs.question }}")
        .await
        .unwrap();
    assert_eq!(
        (p.text.as_str(), p.attempts, p.tokens),
        ("Q: {{ inputs.question }}", 0, 0)
    );
}

#[tokio::test]
async fn no_calibrated_pair_means_no_mapping() {
    let err = migrate::learn(vec![], "a", "b", &spec("writer.yaml"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no task is calibrated for both a and b"),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn the_cli_calibrates_migrates_writes_beside_the_originals_and_gates_on_flips() {
    let d = temp("cli");
    let work = d.join("work");
    copy_dir(&dir(), &work);
    let store = d.join("s.db").display().to_string();
    let w = |f: &str| work.join(f).display().to_string();
    for model in ["a.yaml", "b.yaml"] {
        let out = redraft(&[
            "calibrate",
            &w("task.yaml"),
            "--data",
            &w("items.jsonl"),
            "--map",
            "question=question",
            "--answer",
            "answer",
            "--scorer",
            "numeric",
            "--model",
            &format!("solver={}", spec(model)),
            "--reflect",
            &spec("writer.yaml"),
            "--generations",
            "2",
            "--store",
            &store,
            "--out",
            &w(&format!("best-{model}.j2")),
            "-q",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("--- calibrated prompt ---"), "{stdout}");
    }
    assert_eq!(
        std::fs::read_to_string(w("best-b.yaml.j2")).unwrap(),
        "Give the number only. {{ inputs.question }}"
    );
    let migrate = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "migrate",
            "--from",
            &spec("a.yaml"),
            "--to",
            &spec("b.yaml"),
            "--writer",
            &spec("writer.yaml"),
            "--store",
            &store,
            "--tag",
            "b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        redraft(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mapping = w("mapping.yaml");
    let out = migrate(&[
        &w("task2.yaml"),
        "--mapping",
        &mapping,
        "--check",
        &w("items.jsonl"),
        "--map",
        "question=question",
        "--answer",
        "answer",
        "--scorer",
        "numeric",
        "--max-nfr",
        "0.1",
        "-q",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "NFR 1/6 is above 0.1: {stdout}");
    assert!(
        stdout.contains("migrated vs source           1 negative (NFR 16.7%)"),
        "{stdout}"
    );
    assert!(stdout.contains("gate failed"), "{stdout}");
    // Written beside the originals, which are untouched; the migrated
    // workflow names the migrated prompt and loads.
    assert_eq!(
        std::fs::read_to_string(work.join("prompts/careful.b.j2")).unwrap(),
        "Give the number only. {{ inputs.question }}"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("prompts/careful.j2")).unwrap(),
        std::fs::read_to_string(dir().join("prompts/careful.j2")).unwrap()
    );
    let migrated = redraft::workflow::load(&work.join("task2.b.yaml")).unwrap();
    assert_eq!(migrated.prompt_files()[0].file, "careful.b.j2");
    // The mapping was written, and is read back next time (no store needed).
    assert!(
        std::fs::read_to_string(&mapping)
            .unwrap()
            .contains("Give the number only")
    );

    // Never over an existing file without --in-place.
    let out = migrate(&[&w("task2.yaml"), "--mapping", &mapping, "-q"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("task2.b.yaml exists: remove it, choose another --tag, or --in-place"),
        "{stderr}"
    );

    // A lone prompt file; then in place.
    let out = migrate(&[&w("prompts/solve.j2"), "--mapping", &mapping, "-q"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(work.join("prompts/solve.b.j2").is_file());
    let out = migrate(&[
        &w("prompts/solve.j2"),
        "--mapping",
        &mapping,
        "--in-place",
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(work.join("prompts/solve.j2")).unwrap(),
        "Give the number only. {{ inputs.question }}"
    );
}

#[test]
fn migrate_refuses_bad_flags_and_mappings_with_a_clear_error() {
    let d = temp("cli-bad");
    let wrong = d.join("m.yaml");
    std::fs::write(
        &wrong,
        "from: x\nto: y\nwriter: z\ndescription: d\npairs: []\n",
    )
    .unwrap();
    let garbage = d.join("g.yaml");
    std::fs::write(&garbage, "from: [\n").unwrap();
    let task2 = dir().join("task2.yaml").display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--mapping".into(), wrong.display().to_string()],
            "is for x → y, not scripted:a → scripted:b",
        ),
        (
            vec!["--mapping".into(), garbage.display().to_string()],
            "mapping ",
        ),
        (
            vec!["--max-nfr".into(), "0.1".into()],
            "--max-nfr gates a check: give --check DATA",
        ),
        (
            vec![
                "--check".into(),
                "x.jsonl".into(),
                "--max-nfr".into(),
                "2".into(),
            ],
            "--max-nfr 2: expected a rate between 0 and 1",
        ),
        (
            vec!["--check".into(), "x.jsonl".into(), task2.clone()],
            "give exactly one workflow (.yaml) among the paths",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "migrate".to_string(),
            "--from".into(),
            "scripted:a".into(),
            "--to".into(),
            "scripted:b".into(),
            task2.clone(),
        ];
        args.extend(extra);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = redraft(&argv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {stderr}");
        assert!(stderr.contains(want), "{argv:?}: {stderr}");
    }
    let out = redraft(&["migrate", "--from", "nope", "--to", "scripted:b", &task2]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: model nope"));
}
