//! The response cache through the engine and the CLI: reruns served from
//! the cache, a changed prompt paying for exactly the calls it changed,
//! sampling semantics, modes, accounting, and a writer killed mid-way.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use redraft::backend::{Completion, CompletionRequest, LanguageModel, Usage, model_fn};
use redraft::cache::{CacheMode, ResponseCache};
use redraft::event::{Collect, Event};
use redraft::{Engine, RunOptions, RunSummary};

use crate::support::{root, workflow};

/// A model whose reply is a function of its prompt (so a changed prompt
/// changes everything downstream), counting the calls that reach it.
fn echo(calls: Arc<AtomicUsize>) -> Arc<dyn LanguageModel> {
    model_fn("echo", move |req: CompletionRequest| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let prompt = &req.messages.last().unwrap().content;
            let digest = prompt
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
            let text = format!("{{\"score\": {}, \"note\": \"{:x}\"}}", digest % 10, digest);
            Ok(Completion::from_texts(
                vec![text; req.n as usize],
                Usage {
                    prompt_tokens: 10,
                    completion_tokens: 5,
                    ..Default::default()
                },
            ))
        }
    })
}

const LOOP: &str = r#"
version: 1
models:
  m: { max_tokens: 32, price: { input: 1.0, output: 2.0 } }
inputs:
  task: { type: string, default: "a haiku" }
nodes:
  - { id: draft, kind: generate, template: "write {{ task }}" }
  - id: grade
    kind: critique
    template: "grade {{ artifact.text }}"
    schema: { type: object, required: [score], properties: { score: { type: number } } }
  - { id: revise, kind: revise, template: "REVISE {{ artifact.text }} using {{ grade.text }}" }
edges:
  - { from: draft, to: grade }
  - { from: grade, to: revise }
loops:
  - { id: polish, from: revise, to: grade, max_rounds: 3 }
output: [draft, revise]
"#;

struct Harness {
    cache: Arc<ResponseCache>,
    calls: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResponseCache::open_sqlite(&dir.path().join("r.db"), 1 << 30).unwrap();
        Harness {
            cache: Arc::new(cache),
            calls: Arc::default(),
            _dir: dir,
        }
    }

    /// Runs `yaml` with the echo model and the cache; returns the summary,
    /// the model-call events and how many calls reached the model.
    async fn run(
        &self,
        yaml: &str,
        opts: RunOptions,
    ) -> (RunSummary, Vec<redraft::event::ModelCallEvent>, usize) {
        let before = self.calls.load(Ordering::SeqCst);
        let events = Arc::new(Collect::default());
        let engine = Engine::new()
            .with_model("m", echo(self.calls.clone()))
            .with_cache(self.cache.clone())
            .with_recorder(events.clone());
        let s = engine.run(workflow(yaml), opts).await.unwrap();
        let calls = model_calls(events.take());
        (s, calls, self.calls.load(Ordering::SeqCst) - before)
    }
}

/// The `model_call` events of a run.
fn model_calls(events: Vec<Event>) -> Vec<redraft::event::ModelCallEvent> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::ModelCall(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// `node rN` of each call, with `*` for calls the cache served.
fn shape(calls: &[redraft::event::ModelCallEvent]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} r{}{}", c.node, c.round, if c.cached { "*" } else { "" }))
        .collect()
}

#[tokio::test]
async fn a_rerun_is_served_from_the_cache_and_spends_nothing() {
    let h = Harness::new();
    let (first, calls, made) = h.run(LOOP, RunOptions::default()).await;
    assert_eq!(made, 7, "{:?}", shape(&calls));
    assert!(calls.iter().all(|c| !c.cached));
    assert_eq!(first.usage.cached_calls, 0);

    let (again, calls, made) = h.run(LOOP, RunOptions::default()).await;
    assert_eq!(made, 0, "a rerun calls no model");
    assert_eq!(calls.len(), 7);
    assert!(
        calls
            .iter()
            .all(|c| c.cached && c.prompt_tokens == 0 && c.cost_usd == 0.0)
    );
    assert!(calls.iter().all(|c| c.cached_tokens == 15));
    assert_eq!(again.output, first.output);
    assert_eq!(again.loops[0].rounds, first.loops[0].rounds);
    // Calls still count; tokens and cost are what was spent: nothing.
    assert_eq!(again.usage.calls, 7);
    assert_eq!(again.usage.cached_calls, 7);
    assert_eq!(again.usage.cached_tokens, 7 * 15);
    assert_eq!((again.usage.total_tokens, again.usage.cost_usd), (0, 0.0));
    assert_eq!(h.cache.counters().hits, 7);
}

#[tokio::test]
async fn a_changed_prompt_pays_for_exactly_the_calls_it_changed() {
    let h = Harness::new();
    let (_, first, _) = h.run(LOOP, RunOptions::default()).await;
    assert_eq!(
        shape(&first),
        [
            "draft r1",
            "grade r1",
            "revise r1",
            "grade r2",
            "revise r2",
            "grade r3",
            "revise r3"
        ]
    );
    // Only the revise prompt changes: the draft and the first grade are
    // served; every revise call misses, and so does every grade that reads
    // a revision (its prompt changed with it).
    let changed = LOOP.replace("REVISE {{", "Revise carefully: {{");
    let (_, calls, made) = h.run(&changed, RunOptions::default()).await;
    assert_eq!(
        shape(&calls),
        [
            "draft r1*",
            "grade r1*",
            "revise r1",
            "grade r2",
            "revise r2",
            "grade r3",
            "revise r3"
        ]
    );
    assert_eq!(made, 5);
}

const SAMPLES: &str = r#"
version: 1
models: { m: { max_tokens: 16 } }
nodes:
  - { id: draft, kind: generate, template: "go", n: 3, sampling: { temperature: 0.9 } }
output: { from: draft, field: samples }
"#;

#[tokio::test]
async fn draws_replay_per_position_and_never_collapse() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ResponseCache::open_sqlite(&dir.path().join("r.db"), 1 << 30).unwrap());
    let counter = Arc::new(AtomicUsize::new(0));
    // A sampler: every call that reaches it draws something new.
    let sampler = {
        let counter = counter.clone();
        model_fn("sampler", move |req: CompletionRequest| {
            let i = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(Completion::from_texts(
                    vec![format!("draw {i}"); req.n as usize],
                    Usage::default(),
                ))
            }
        })
    };
    let engine = Engine::new().with_model("m", sampler).with_cache(cache);
    let samples = |s: &RunSummary| s.output.clone().unwrap();
    let unit = |u: &str| RunOptions {
        cache_unit: Some(u.into()),
        ..RunOptions::default()
    };
    let a = engine.run(workflow(SAMPLES), unit("item 1")).await.unwrap();
    assert_eq!(counter.load(Ordering::SeqCst), 3);
    let drawn = samples(&a);
    let texts: std::collections::HashSet<String> = drawn
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(texts.len(), 3, "three distinct draws: {drawn}");
    // The same unit again: the same three draws, none collapsed.
    let again = engine.run(workflow(SAMPLES), unit("item 1")).await.unwrap();
    assert_eq!(samples(&again), drawn);
    assert_eq!(counter.load(Ordering::SeqCst), 3);
    // Another unit (or epoch) draws anew.
    let other = engine
        .run(workflow(SAMPLES), unit("item 1\u{1f}1"))
        .await
        .unwrap();
    assert_eq!(counter.load(Ordering::SeqCst), 6);
    assert_ne!(samples(&other), drawn);
}

#[tokio::test]
async fn modes_and_the_per_model_switch() {
    let h = Harness::new();
    let with = |mode| RunOptions {
        cache: mode,
        ..RunOptions::default()
    };
    // Read-only on an empty cache: every call made, nothing stored.
    let (_, _, made) = h.run(LOOP, with(CacheMode::ReadOnly)).await;
    assert_eq!((made, h.cache.counters().writes), (7, 0));
    // Off: not even looked up.
    let (_, calls, made) = h.run(LOOP, with(CacheMode::Off)).await;
    assert_eq!(made, 7);
    assert!(calls.iter().all(|c| !c.cached));
    assert_eq!(h.cache.counters().misses, 7);
    // On stores; refresh calls again and replaces; read-only then serves.
    h.run(LOOP, with(CacheMode::On)).await;
    let (_, _, made) = h.run(LOOP, with(CacheMode::Refresh)).await;
    assert_eq!(made, 7);
    let (_, _, made) = h.run(LOOP, with(CacheMode::ReadOnly)).await;
    assert_eq!(made, 0);
    // `cache: false` on the model: always fresh.
    let fresh = LOOP.replace("max_tokens: 32,", "max_tokens: 32, cache: false,");
    let (s, _, made) = h.run(&fresh, with(CacheMode::On)).await;
    assert_eq!((made, s.usage.cached_calls), (7, 0));
}

#[tokio::test]
async fn cached_calls_count_toward_calls_limits_but_spend_no_tokens() {
    let h = Harness::new();
    h.run(LOOP, RunOptions::default()).await;
    let mut opts = RunOptions::default();
    opts.budget.calls = Some(3);
    let (s, calls, made) = h.run(LOOP, opts).await;
    assert_eq!((made, calls.len()), (0, 3));
    assert_eq!(s.status, redraft::summary::RunStatus::BudgetExhausted);
    // A token limit no call could fit without the cache... still needs
    // each call's worst case to fit: the check comes before the lookup.
    let mut opts = RunOptions::default();
    opts.budget.tokens = Some(10_000);
    let (s, _, made) = h.run(LOOP, opts).await;
    assert_eq!((made, s.usage.total_tokens), (0, 0));
    assert_eq!(s.status, redraft::summary::RunStatus::Finished);
}

// --- the CLI ---------------------------------------------------------------

fn redraft(args: &[&str]) -> Output {
    crate::support::redraft_command()
        .args(args)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// A data set of `n` GSM8K-like rows.
fn rows(dir: &std::path::Path, n: usize) -> String {
    let path = dir.join("items.jsonl");
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"id\": \"q{i}\", \"task\": \"What is {i} + {i}?\", \"answer\": \"{}\"}}\n",
                2 * i
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `eval workflows/guarded.yaml` over `data` (scored as numbers) into `store`.
fn guarded_eval<'a>(data: &'a str, store: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "workflows/guarded.yaml",
        "--data",
        data,
        "--answer",
        "answer",
        "--scorer",
        "numeric",
        "--store",
        store,
    ]
}

#[test]
fn eval_reruns_come_from_the_cache_and_the_report_shows_hits_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = rows(dir.path(), 6);
    let db = dir.path().join("cache.db").display().to_string();
    let eval = |store: &str, extra: &[&str]| {
        let mut args = guarded_eval(&data, store);
        args.extend(["--cache-db", &db, "--json", "-q"]);
        args.extend_from_slice(extra);
        redraft(&args)
    };
    let store1 = dir.path().join("a.db").display().to_string();
    let first = eval(&store1, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let m1 = &json(&first)["metrics"];
    assert_eq!(m1["total_cached_calls"], 0);
    let calls = m1["cache_by_node"].as_array().unwrap();
    let total: u64 = calls.iter().map(|n| n["calls"].as_u64().unwrap()).sum();
    assert!(total >= 6);
    // Another store (a fresh eval of the same workflow): every call cached.
    let store2 = dir.path().join("b.db").display().to_string();
    let second = eval(&store2, &[]);
    let m2 = &json(&second)["metrics"];
    assert_eq!(m2["total_cached_calls"].as_u64(), Some(total));
    assert_eq!(m2["total_tokens"], 0);
    assert!(
        m2["cache_by_node"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["hit_rate"] == 1.0)
    );
    assert_eq!(json(&second)["ran"]["calls"].as_u64(), Some(total));
    // The human summary says so, and the report shows hits per node.
    let store3 = dir.path().join("c.db").display().to_string();
    let mut args = guarded_eval(&data, &store3);
    args.extend(["--cache-db", &db]);
    let human = redraft(&args);
    let err = String::from_utf8_lossy(&human.stderr);
    assert!(
        err.contains(&format!(
            "response cache: {total} of {total} calls served (100%)"
        )),
        "{err}"
    );
    let html = dir.path().join("r.html").display().to_string();
    let r = redraft(&["report", "--store", &store2, "-o", &html]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("Response cache") && page.contains("100.0%"),
        "no cache table"
    );
    // --cache off: nothing served.
    let off = eval(
        &dir.path().join("d.db").display().to_string(),
        &["--cache", "off"],
    );
    assert_eq!(json(&off)["metrics"]["total_cached_calls"], 0);
    // stats, prune, clear.
    let stats = redraft(&["cache", "stats", "--json", "--cache-db", &db]);
    let entries = json(&stats)["entries"].as_u64().unwrap();
    assert_eq!(entries, total);
    let pruned = redraft(&["cache", "prune", "--cache-db", &db, "--cache-max-size", "1"]);
    assert!(pruned.status.success());
    assert_eq!(
        json(&redraft(&["cache", "stats", "--json", "--cache-db", &db]))["entries"],
        0
    );
    let cleared = redraft(&["cache", "clear", "--cache-db", &db]);
    assert!(String::from_utf8_lossy(&cleared.stdout).contains("removed 0 entries"));
}

#[test]
fn a_damaged_cache_file_is_a_warning_and_clear_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = rows(dir.path(), 2);
    let db = dir.path().join("cache.db");
    std::fs::write(&db, b"this is not a database, just bytes ".repeat(200)).unwrap();
    let db = db.display().to_string();
    let store = dir.path().join("s.db").display().to_string();
    let mut args = guarded_eval(&data, &store);
    args.extend(["--cache-db", &db, "--json", "-q"]);
    let o = redraft(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("running without the response cache"));
    assert_eq!(json(&o)["metrics"]["done"], 2);
    let stats = redraft(&["cache", "stats", "--cache-db", &db]);
    assert_eq!(stats.status.code(), Some(2));
    let cleared = redraft(&["cache", "clear", "--cache-db", &db]);
    assert!(
        cleared.status.success(),
        "{}",
        String::from_utf8_lossy(&cleared.stderr)
    );
    assert!(
        redraft(&["cache", "stats", "--cache-db", &db])
            .status
            .success()
    );
    // A file that is someone else's database is refused, and left alone.
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    let before = std::fs::read(&other).unwrap();
    let o = redraft(&["cache", "clear", "--cache-db", &other.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a redraft response cache"));
    assert_eq!(std::fs::read(&other).unwrap(), before);
}

/// The child side of the tests with writers in other processes: with
/// `REDRAFT_TEST_CACHE_SAME_KEYS`, writes that many entries whose keys and
/// values every such child shares, then ends; else writes large entries
/// until it is killed.
#[test]
#[ignore = "the child of other tests (run with --ignored --exact)"]
fn writer_child() {
    let path = std::env::var("REDRAFT_TEST_CACHE_WRITER")
        .expect("REDRAFT_TEST_CACHE_WRITER names the cache to write");
    let cache = ResponseCache::open_sqlite(path.as_ref(), 1 << 40).unwrap();
    if let Some(n) = std::env::var("REDRAFT_TEST_CACHE_SAME_KEYS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        for i in 0..n {
            let value = Completion::from_texts([format!("same {i}")], Usage::default());
            cache.store_value(&format!("k{i}"), "m", &value);
        }
        assert_eq!(cache.counters().errors, 0);
        return;
    }
    let big = "z".repeat(200_000);
    for i in 0.. {
        cache
            .store()
            .put(&format!("k{i}"), "m", &format!("{i}:{big}"), i)
            .unwrap();
        let value = Completion::from_texts([format!("reply {i} {big}")], Usage::default());
        cache.store_value(&format!("v{i}"), "m", &value);
    }
}

fn writer(path: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "cache::writer_child", "--ignored", "--nocapture"])
        .env("REDRAFT_TEST_CACHE_WRITER", path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}

#[test]
fn processes_writing_the_same_keys_at_once_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let children: Vec<_> = (0..3)
        .map(|_| {
            writer(&path)
                .env("REDRAFT_TEST_CACHE_SAME_KEYS", "300")
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cache = ResponseCache::open_sqlite(&path, 1 << 40).unwrap();
    assert_eq!(cache.store().stats().unwrap().entries, 300);
    for i in 0..300 {
        let c: Completion = cache.lookup(&format!("k{i}"), false).unwrap();
        assert_eq!(c.choices[0].text, format!("same {i}"));
    }
}

#[test]
fn a_writer_killed_mid_way_leaves_a_usable_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut child = writer(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    // Kill it once it has written a few dozen entries (mid-write, likely:
    // each is 200 KB).
    loop {
        std::thread::sleep(std::time::Duration::from_millis(30));
        let n = ResponseCache::open_sqlite(&path, 1 << 40)
            .ok()
            .and_then(|c| c.store().stats().ok())
            .map_or(0, |s| s.entries);
        if n >= 40 {
            break;
        }
        assert!(
            start.elapsed().as_secs() < 60,
            "the writer made no progress"
        );
        assert!(child.try_wait().unwrap().is_none(), "the writer ended");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let cache = ResponseCache::open_sqlite(&path, 1 << 40).unwrap();
    let stats = cache.store().stats().unwrap();
    assert!(stats.entries >= 40);
    let mut seen = BTreeMap::new();
    for i in 0..stats.entries + 10 {
        if let Some(c) = cache.lookup::<Completion>(&format!("v{i}"), true) {
            assert!(c.choices[0].text.starts_with(&format!("reply {i} ")));
            seen.insert(i, ());
        }
    }
    assert!(!seen.is_empty());
    assert_eq!(cache.counters().damaged, 0, "a committed entry is whole");
    // And it takes new entries.
    cache.store_value(
        "after",
        "m",
        &Completion::from_texts(["ok"], Usage::default()),
    );
    assert!(cache.lookup::<Completion>("after", true).is_some());
}

#[test]
fn a_postgres_store_holds_the_cache_its_workers_share() {
    let Some(url) = crate::eval::postgres_url() else {
        return;
    };
    let opts = redraft::eval::store::StoreOptions::default();
    let open = || redraft::eval::store::open_cache(&url, 1 << 30, &opts).unwrap();
    let (a, b) = (open(), open());
    assert!(
        !a.location().contains("pw-"),
        "no password: {}",
        a.location()
    );
    let tag = format!("{}-{}", std::process::id(), line!());
    let reply = Completion::from_texts(["shared"], Usage::default());
    a.store_value(&format!("{tag}-k"), "m", &reply);
    assert_eq!(
        b.lookup::<Completion>(&format!("{tag}-k"), true),
        Some(reply.clone())
    );
    // A damaged entry is a miss there too.
    b.store()
        .put(&format!("{tag}-bad"), "m", "0000000000000000:{", 0)
        .unwrap();
    assert_eq!(a.lookup::<Completion>(&format!("{tag}-bad"), true), None);
    assert_eq!(a.counters().damaged, 1);

    // An eval on the PostgreSQL store caches there: a second eval of the
    // same items (another name, so another eval) calls no model.
    let dir = tempfile::tempdir().unwrap();
    let data = rows(dir.path(), 3);
    let eval = |name: &str| {
        crate::support::redraft_command()
            .args(guarded_eval(&data, &url))
            .args(["--name", name, "--json", "-q"])
            .env_remove("REDRAFT_CACHE_DB")
            .current_dir(root())
            .output()
            .unwrap()
    };
    let first = eval(&format!("cache-a-{tag}"));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = eval(&format!("cache-b-{tag}"));
    let m = &json(&second)["metrics"];
    assert!(m["total_cached_calls"].as_u64().unwrap() >= 3, "{m}");
    assert_eq!(m["total_tokens"], 0);

    // Pruning keeps the most recently used entries within the bound.
    let last = Completion::from_texts(["the newest entry"], Usage::default());
    std::thread::sleep(std::time::Duration::from_millis(5));
    a.store_value(&format!("{tag}-last"), "m", &last);
    let size = a
        .store()
        .get(&format!("{tag}-last"))
        .unwrap()
        .unwrap()
        .len() as u64;
    assert!(a.store().prune(size).unwrap() > 0);
    assert!(a.store().value_bytes().unwrap() <= size);
    assert_eq!(
        b.lookup::<Completion>(&format!("{tag}-last"), false),
        Some(last)
    );
    assert_eq!(b.lookup::<Completion>(&format!("{tag}-k"), false), None);
}

/// Runs a workflow file (its own scripted model) with `cache`; returns the
/// summary and its model calls.
async fn run_file(
    cache: &Arc<ResponseCache>,
    wf: redraft::Workflow,
) -> (RunSummary, Vec<redraft::event::ModelCallEvent>) {
    let events = Arc::new(Collect::default());
    let engine = Engine::new()
        .with_cache(cache.clone())
        .with_recorder(events.clone());
    let s = engine
        .run(Arc::new(wf), RunOptions::default())
        .await
        .unwrap();
    (s, model_calls(events.take()))
}

#[tokio::test]
async fn on_the_scripted_model_a_changed_revise_prompt_makes_exactly_the_revise_calls() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ResponseCache::open_sqlite(&dir.path().join("r.db"), 1 << 30).unwrap());
    let path = root().join("workflows/guarded.yaml");
    let (first, calls) = run_file(&cache, redraft::workflow::load(&path).unwrap()).await;
    let revise_calls = calls.iter().filter(|c| c.node == "revise").count();
    assert!(revise_calls >= 2, "{:?}", shape(&calls));
    assert!(calls.iter().all(|c| !c.cached));
    let revise = std::fs::read_to_string(root().join("prompts/guarded/revise.j2")).unwrap();
    let changed = redraft::workflow::load_with_prompts(
        &path,
        &[(
            "revise.j2".to_string(),
            format!("Take the feedback seriously.\n{revise}"),
        )]
        .into_iter()
        .collect(),
    )
    .unwrap();
    let (again, calls) = run_file(&cache, changed).await;
    // The scripted revise replies do not depend on the prompt, so what
    // reads them sees the same text: exactly the revise calls are made.
    let made: Vec<String> = calls
        .iter()
        .filter(|c| !c.cached)
        .map(|c| format!("{} r{}", c.node, c.round))
        .collect();
    assert_eq!(made.len(), revise_calls, "{made:?}");
    assert!(made.iter().all(|m| m.starts_with("revise ")), "{made:?}");
    assert_eq!(again.output, first.output);
    assert_eq!(again.usage.calls, first.usage.calls);
}

#[tokio::test]
async fn embeddings_are_cached_like_completions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("script.yaml"),
        r#"
replies:
  - { node: draft, samples: ["sort the list", "sort it quickly", "print a greeting"] }
embeddings:
  - { text: "sort", vector: [1.0, 0.0] }
  - { text: "greeting", vector: [0.0, 1.0] }
"#,
    )
    .unwrap();
    let path = dir.path().join("embed.yaml");
    std::fs::write(
        &path,
        r#"
version: 1
models: { m: "scripted:script.yaml" }
nodes:
  - { id: draft, kind: generate, template: "go", n: 3 }
  - { id: vectors, kind: embed, items: "draft.samples", model: m }
  - { id: groups, kind: cluster, from: vectors, k: 2 }
edges: [{ from: draft, to: vectors }, { from: vectors, to: groups }]
output: { from: groups, field: "." }
"#,
    )
    .unwrap();
    let cache = Arc::new(ResponseCache::open_sqlite(&dir.path().join("r.db"), 1 << 30).unwrap());
    let (first, calls) = run_file(&cache, redraft::workflow::load(&path).unwrap()).await;
    assert!(calls.iter().all(|c| !c.cached));
    let (again, calls) = run_file(&cache, redraft::workflow::load(&path).unwrap()).await;
    let embed: Vec<_> = calls.iter().filter(|c| c.node == "vectors").collect();
    assert_eq!(embed.len(), 1);
    assert!(embed[0].cached && embed[0].prompt_tokens == 0 && embed[0].cached_tokens == 9);
    assert_eq!(again.output, first.output);
    assert_eq!(again.usage.cached_calls, 2);
}
