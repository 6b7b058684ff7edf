//! The results store and evals, hardened: a store that is refused is never
//! written, concurrent creation, read-only commands, secrets out of every
//! output and record, SIGTERM as a clean stop, PostgreSQL as users run it,
//! shards that claim only their own units, and evals that measure nothing.
//!
//! PostgreSQL tests need `REDRAFT_TEST_POSTGRES` (`scripts/start-postgres.sh`)
//! and are skipped, saying so, without it (unless `REDRAFT_REQUIRE_PEERS=1`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{fixtures, root};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redraft-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bin() -> Command {
    let mut c = crate::support::redraft_command();
    c.current_dir(root())
        .env_remove("REDRAFT_STORE")
        .env_remove("PGPASSWORD")
        .env_remove("RUST_LOG");
    c
}

fn redraft(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(o)))
}

fn arith_args<'a>(store: &'a str, data: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "tests/fixtures/eval/arith.yaml",
        "--data",
        data,
        "--map",
        "task=question",
        "--answer",
        "answer",
        "--scorer",
        "numeric",
        "--store",
        store,
    ]
}

const ARITH: &str = "tests/fixtures/eval/arith.jsonl";

/// Writes `dir/name` as JSONL rows of `(id, question, answer)` (the arith
/// fixture's fields) and returns its path.
fn items(dir: &Path, name: &str, rows: &[(&str, &str, &str)]) -> String {
    let text: String = rows
        .iter()
        .map(|(id, question, answer)| {
            format!(
                "{}\n",
                serde_json::json!({"id": id, "question": question, "answer": answer})
            )
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `eval` of the arith fixture into `store` with extra flags.
fn arith(store: &str, extra: &[&str]) -> Output {
    let mut args = arith_args(store, ARITH);
    args.extend_from_slice(extra);
    redraft(&args)
}

fn required() -> bool {
    std::env::var("REDRAFT_REQUIRE_PEERS").as_deref() == Ok("1")
}

fn postgres_url() -> Option<String> {
    match std::env::var("REDRAFT_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                !required(),
                "REDRAFT_REQUIRE_PEERS=1 but REDRAFT_TEST_POSTGRES is missing"
            );
            eprintln!("skipped: a PostgreSQL server (REDRAFT_TEST_POSTGRES) is missing");
            None
        }
    }
}

fn sqlite_tables(path: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut s = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The file's bytes and the names of the files beside it (a -wal or
/// -journal appearing is a write too).
fn snapshot(path: &Path) -> (Vec<u8>, Vec<String>) {
    let dir = path.parent().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (std::fs::read(path).unwrap(), names)
}

/// Every command that opens a store, on `store`: each must exit 2 with a
/// message containing `says`, and leave the file as it was.
fn refused_untouched(store: &Path, says: &str) {
    let s = store.to_str().unwrap();
    let before = snapshot(store);
    for (what, o) in [
        ("eval", arith(s, &["-q"])),
        ("runs", redraft(&["runs", "--store", s])),
        (
            "report",
            redraft(&["report", "x", "--store", s, "-o", "/dev/null"]),
        ),
        ("compare", redraft(&["compare", "x", "y", "--store", s])),
    ] {
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        assert!(stderr(&o).contains(says), "{what}: {}", text(&o));
        assert!(
            stderr(&o).contains(s),
            "{what} names the store: {}",
            text(&o)
        );
        assert!(
            snapshot(store) == before,
            "{what} changed {}",
            store.display()
        );
    }
}

#[test]
fn read_only_commands_never_create_a_store() {
    let dir = temp_dir("readonly");
    let store = dir.join("nowhere/none.db");
    let s = store.to_str().unwrap();
    for args in [
        vec!["runs", "--store", s],
        vec!["report", "--store", s, "-o", "/dev/null"],
        vec!["report", "x", "--store", s, "-o", "/dev/null"],
        vec!["compare", "x", "y", "--store", s],
    ] {
        let o = redraft(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            stderr(&o).contains("does not exist"),
            "{args:?}: {}",
            text(&o)
        );
        assert!(!dir.join("nowhere").exists(), "{args:?} created the folder");
    }
    // An empty file is no store either, and stays empty.
    std::fs::write(dir.join("empty.db"), "").unwrap();
    let o = redraft(&["runs", "--store", dir.join("empty.db").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", text(&o));
    assert_eq!(std::fs::read(dir.join("empty.db")).unwrap().len(), 0);
}

#[test]
fn a_foreign_sqlite_file_is_refused_and_left_as_it_was() {
    let dir = temp_dir("foreign");
    let store = dir.join("theirs.db");
    let c = rusqlite::Connection::open(&store).unwrap();
    c.execute_batch(
        "CREATE TABLE units (id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO units (name) VALUES ('metre');
         CREATE TABLE customers (id INTEGER);",
    )
    .unwrap();
    drop(c);
    refused_untouched(&store, "is not a redraft results store");
    let o = redraft(&["runs", "--store", store.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("`customers`, `units`"),
        "names what it found: {}",
        text(&o)
    );
    assert_eq!(sqlite_tables(&store), ["customers", "units"]);
}

/// A path that holds something other than a file (a directory, a device)
/// is refused as what it is, by every command and by the response cache,
/// before SQLite answers "unable to open" or "disk I/O error".
#[test]
fn a_path_that_is_no_file_is_refused_as_what_it_is() {
    let dir = temp_dir("not-a-file");
    let d = dir.to_str().unwrap();
    for (path, what) in [(d, "a directory"), ("/dev/null", "a device")] {
        for o in [
            arith(path, &["-q"]),
            redraft(&["runs", "--store", path]),
            redraft(&["report", "--store", path]),
        ] {
            assert_eq!(o.status.code(), Some(2), "{}", text(&o));
            assert!(
                stderr(&o).contains(&format!(
                    "results store {path}: {what}, not a database file"
                )),
                "{}",
                text(&o)
            );
        }
        let o = redraft(&["cache", "stats", "--cache-db", path]);
        assert!(
            stderr(&o).contains(&format!(
                "response cache {path}: {what}, not a database file"
            )),
            "{}",
            text(&o)
        );
    }
    assert!(stderr(&arith(d, &["-q"])).contains(&format!("e.g. {d}/results.db")));
    // Nothing was created inside the directory.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// A store with one finished eval of the arith fixture.
fn made_store(dir: &Path) -> PathBuf {
    let store = dir.join("r.db");
    let o = arith(store.to_str().unwrap(), &["-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    store
}

#[test]
fn a_store_of_a_newer_redraft_is_refused_and_left_as_it_was() {
    let dir = temp_dir("newer");
    let store = made_store(&dir);
    let c = rusqlite::Connection::open(&store).unwrap();
    c.execute_batch(
        "UPDATE redraft_meta SET value = '99' WHERE key = 'schema_version';
         PRAGMA journal_mode=DELETE;",
    )
    .unwrap();
    drop(c);
    refused_untouched(&store, "newer than this redraft reads");
}

#[test]
fn a_damaged_store_is_refused_and_never_written() {
    let dir = temp_dir("damaged");
    // Its bookkeeping lost: no schema version row. Nothing may add one.
    let store = made_store(&dir);
    let c = rusqlite::Connection::open(&store).unwrap();
    c.execute_batch("DELETE FROM redraft_meta; PRAGMA journal_mode=DELETE;")
        .unwrap();
    drop(c);
    refused_untouched(&store, "is damaged (redraft_meta holds no schema version)");
    // Pages overwritten: the file is not readable as a database.
    let store = dir.join("garbled.db");
    std::fs::copy(dir.join("r.db"), &store).unwrap();
    let mut bytes = std::fs::read(&store).unwrap();
    for (i, b) in bytes.iter_mut().enumerate().skip(100) {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(&store, bytes).unwrap();
    refused_untouched(&store, "is damaged");
    // Not a database at all.
    let store = dir.join("notes.db");
    std::fs::write(&store, "these are my notes, not a database\n".repeat(200)).unwrap();
    refused_untouched(&store, "is damaged (the file is not a SQLite database)");
}

#[test]
fn a_store_of_the_previous_schema_is_upgraded_in_place() {
    let dir = temp_dir("upgrade");
    let store = made_store(&dir);
    // Back to version 1: no shard_hash column.
    let c = rusqlite::Connection::open(&store).unwrap();
    c.execute_batch(
        "ALTER TABLE units DROP COLUMN shard_hash;
         UPDATE redraft_meta SET value = '1' WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(c);
    // Read-only commands read it as it is.
    let o = redraft(&["runs", "--store", store.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(json(&o)[0]["done"], 5);
    // An eval upgrades it and resumes the same eval (nothing runs again).
    let o = arith(store.to_str().unwrap(), &["-q", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(json(&o)["ran"]["done"], 0);
    let c = rusqlite::Connection::open(&store).unwrap();
    let (version, unhashed): (String, i64) = c
        .query_row(
            "SELECT (SELECT value FROM redraft_meta), (SELECT COUNT(*) FROM units WHERE shard_hash IS NULL)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((version.as_str(), unhashed), ("2", 0));
}

#[test]
fn evals_started_together_on_a_new_file_all_open_it() {
    let dir = temp_dir("together");
    for round in 0..3 {
        let store = dir.join(format!("new-{round}.db"));
        let s = store.to_str().unwrap();
        let children: Vec<_> = (0..8)
            .map(|_| {
                bin()
                    .args(arith_args(s, ARITH))
                    .arg("-q")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let o = child.wait_with_output().unwrap();
            assert_eq!(o.status.code(), Some(0), "round {round}: {}", text(&o));
        }
        let c = rusqlite::Connection::open(&store).unwrap();
        let (versions, done): (i64, i64) = c
            .query_row(
                "SELECT (SELECT COUNT(*) FROM redraft_meta), (SELECT COUNT(*) FROM units WHERE status = 'done')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((versions, done), (1, 5), "round {round}");
    }
}

#[test]
fn a_clean_exit_leaves_no_write_ahead_log() {
    let dir = temp_dir("wal");
    let store = made_store(&dir);
    let wal = dir.join("r.db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "a -wal file of {} bytes is left",
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0)
    );
    // The store is whole without it, and reading it leaves nothing beside.
    let o = redraft(&["runs", "--store", store.to_str().unwrap(), "--json"]);
    assert_eq!(json(&o)[0]["done"], 5, "{}", text(&o));
    let beside: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside, ["r.db"], "files left beside the store");
}

#[test]
fn a_lock_held_past_the_store_timeout_fails_the_eval_with_a_message() {
    let dir = temp_dir("locked");
    let store = made_store(&dir);
    let c = rusqlite::Connection::open(&store).unwrap();
    c.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = Instant::now();
    let o = arith(
        store.to_str().unwrap(),
        &["-q", "--fresh", "--store-timeout", "1s"],
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stderr(&o).contains("no answer within 1s (another process holds the database's lock)"),
        "{}",
        text(&o)
    );
    c.execute_batch("ROLLBACK").unwrap();
}

/// Fails, showing where, when `secret` is anywhere in `haystack`.
fn assert_hidden(secret: &str, haystack: &str, what: &str) {
    if let Some(at) = haystack.find(secret) {
        // The nearest character boundaries at or before each end (MSRV
        // 1.85: no `floor_char_boundary`).
        let floor = |i: usize| {
            (0..=i.min(haystack.len()))
                .rev()
                .find(|&b| haystack.is_char_boundary(b))
                .unwrap_or(0)
        };
        let from = floor(at.saturating_sub(300));
        let to = floor(at + secret.len() + 100);
        panic!(
            "the secret {secret:?} is in {what}:\n…{}…",
            &haystack[from..to]
        );
    }
}

/// Every stored column of every eval and unit in a SQLite store, as text.
fn sqlite_dump(path: &Path) -> String {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut out = String::new();
    // Every table: a results store's, or a response cache's.
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for table in tables {
        let mut s = c.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = s.column_count();
        let rows = s
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        v => format!("{v:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join("\t"))
            })
            .unwrap();
        for r in rows {
            out.push_str(&r.unwrap());
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn no_endpoint_secret_reaches_any_output_log_or_record() {
    let server = crate::mock_openai::MockServer::start(vec![]).await;
    let dir = temp_dir("endpoint-secret");
    let store = dir.join("r.db");
    let (password, key) = ("pw-Endpoint-7c1e", "key-Query-93ab");
    let port = server
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/v1")
        .to_string();
    let spec = format!("solver=openai:m@http://user:{password}@127.0.0.1:{port}/v1?api_key={key}");
    let store_s = store.to_str().unwrap().to_string();
    let report = dir.join("report.html");
    let log = dir.join("run.jsonl");
    let (spec2, report2, log2) = (spec.clone(), report.clone(), log.clone());
    let cache = dir.join("cache.db");
    let cache_s = cache.to_str().unwrap().to_string();
    let outputs = tokio::task::spawn_blocking(move || {
        let mut args = arith_args(&store_s, ARITH);
        args.extend(["--json", "--model", &spec2, "--cache-db", &cache_s]);
        let eval = redraft(&args);
        let runs = redraft(&["runs", "--store", &store_s]);
        let listing = redraft(&["runs", "--store", &store_s, "--json"]);
        let rep = redraft(&[
            "report",
            "--store",
            &store_s,
            "-o",
            report2.to_str().unwrap(),
        ]);
        let run = redraft(&[
            "run",
            "tests/fixtures/eval/arith.yaml",
            "--input",
            "task=What is 2+2?",
            "--model",
            &spec2,
            "--json",
            "--log",
            log2.to_str().unwrap(),
            "--cache",
            "on",
            "--cache-db",
            &cache_s,
        ]);
        // A spec that does not parse, and one that names no model: errors.
        let bad_spec = spec2.replace("openai:m@", "openai:@");
        let bad = redraft(&[
            "run",
            "tests/fixtures/eval/arith.yaml",
            "--model",
            &bad_spec,
        ]);
        let no_name = redraft(&[
            "run",
            "tests/fixtures/eval/arith.yaml",
            "--model",
            &spec2.replace("solver=", ""),
        ]);
        let unknown = redraft(&[
            "run",
            "tests/fixtures/eval/arith.yaml",
            "--model",
            &spec2.replace("solver=", "nobody="),
        ]);
        for o in [&bad, &no_name, &unknown] {
            assert_eq!(o.status.code(), Some(2), "{}", text(o));
        }
        [eval, runs, listing, rep, run, bad, no_name, unknown]
    })
    .await
    .unwrap();
    let mut everything = String::new();
    for o in &outputs {
        everything.push_str(&text(o));
    }
    everything.push_str(&std::fs::read_to_string(&report).unwrap_or_default());
    everything.push_str(&std::fs::read_to_string(&log).unwrap_or_default());
    everything.push_str(&sqlite_dump(&store));
    // The response cache: its model identities name the endpoint.
    let cached = sqlite_dump(&cache);
    assert!(cached.contains("127.0.0.1"), "the cache was written");
    everything.push_str(&cached);
    assert!(everything.contains("127.0.0.1"), "the outputs do say where");
    assert!(everything.contains("***"), "and that a secret was there");
    assert_hidden(password, &everything, "the outputs, log, report or store");
    assert_hidden(key, &everything, "the outputs, log, report or store");
}

/// A workflow whose `headers:` hold a credential: written literally, it is
/// masked wherever the workflow's source goes (the stored eval, the
/// report, runs, --json, the log); written as `${VAR}`, the workflow holds
/// no secret at all and the header carries the variable's value. An unset
/// variable is an error that names it.
#[tokio::test(flavor = "multi_thread")]
async fn a_credential_in_a_workflows_headers_reaches_no_output_or_record() {
    let server = crate::mock_openai::MockServer::start(vec![]).await;
    let dir = temp_dir("header-secret");
    let (literal, from_env) = ("lit-Key-8f0a2b", "env-Secret-11aa3c");
    let source = std::fs::read_to_string(root().join("tests/fixtures/eval/arith.yaml"))
        .unwrap()
        .replace(
            "spec: scripted:arith.replies.yaml",
            &format!(
                "spec: \"openai:m@{}\"\n    settings: {{ headers: {{ Authorization: \"Bearer ${{REDRAFT_TEST_AUTH}}\", x-api-key: \"{literal}\" }} }}",
                server.url
            ),
        );
    assert!(source.contains(literal), "the fixture's model line changed");
    let wf = dir.join("headers.yaml");
    std::fs::write(&wf, source).unwrap();
    let store = dir.join("r.db");
    let (report, log) = (dir.join("report.html"), dir.join("run.jsonl"));
    let (wf_s, store_s) = (wf.display().to_string(), store.display().to_string());
    let (report_s, log_s) = (report.display().to_string(), log.display().to_string());
    let outputs = tokio::task::spawn_blocking(move || {
        let with_env = |args: &[&str]| {
            bin()
                .args(args)
                .env("REDRAFT_TEST_AUTH", from_env)
                .output()
                .unwrap()
        };
        let eval = with_env(&[
            "eval",
            &wf_s,
            "--data",
            ARITH,
            "--map",
            "task=question",
            "--answer",
            "answer",
            "--store",
            &store_s,
            "--json",
            "--cache",
            "off",
        ]);
        assert_eq!(eval.status.code(), Some(0), "{}", text(&eval));
        let runs = with_env(&["runs", "--store", &store_s, "--json"]);
        let rep = with_env(&["report", "--store", &store_s, "-o", &report_s]);
        let run = with_env(&[
            "run",
            &wf_s,
            "--input",
            "task=What is 2+2?",
            "--json",
            "--log",
            &log_s,
        ]);
        let unset = redraft(&["run", &wf_s, "--input", "task=What is 2+2?"]);
        assert_eq!(unset.status.code(), Some(4), "{}", text(&unset));
        assert!(
            stderr(&unset).contains(
                "header `Authorization` names the environment variable REDRAFT_TEST_AUTH, which is not set"
            ),
            "{}",
            text(&unset)
        );
        // An eval says so once, before any unit runs (it failed every unit
        // alike, each stored as failed); the same command with the variable
        // set then runs them all.
        let empty = format!("{store_s}.unset.db");
        let unset_eval = redraft(&[
            "eval", &wf_s, "--data", ARITH, "--map", "task=question", "--answer", "answer",
            "--store", &empty,
        ]);
        assert_eq!(unset_eval.status.code(), Some(4), "{}", text(&unset_eval));
        assert!(stderr(&unset_eval).contains("REDRAFT_TEST_AUTH, which is not set"));
        let listed = json(&redraft(&["runs", "--store", &empty, "--json"]));
        assert_eq!(
            (&listed[0]["done"], &listed[0]["failed"]),
            (&serde_json::json!(0), &serde_json::json!(0)),
            "{listed}"
        );
        let set_eval = with_env(&[
            "eval", &wf_s, "--data", ARITH, "--map", "task=question", "--answer", "answer",
            "--store", &empty, "--json", "--cache", "off",
        ]);
        assert_eq!(set_eval.status.code(), Some(0), "{}", text(&set_eval));
        assert_eq!(json(&set_eval)["metrics"]["failed"], 0, "{}", text(&set_eval));
        [eval, runs, rep, run, unset, unset_eval, set_eval]
    })
    .await
    .unwrap();
    // The header carried the variable's value.
    let seen = server.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {from_env}"))),
        "{:?}",
        seen.iter().map(|r| &r.authorization).collect::<Vec<_>>()
    );
    let mut everything = String::new();
    for o in &outputs {
        everything.push_str(&text(o));
    }
    everything.push_str(&std::fs::read_to_string(&report).unwrap());
    everything.push_str(&std::fs::read_to_string(&log).unwrap());
    let stored = sqlite_dump(&store);
    assert!(stored.contains("x-api-key"), "the stored source says where");
    everything.push_str(&stored);
    assert_hidden(
        literal,
        &everything,
        "an output, report, log or stored record",
    );
    assert_hidden(
        from_env,
        &everything,
        "an output, report, log or stored record",
    );
}

/// Runs every command against a PostgreSQL store given by `url`, with
/// `env` set, and returns all they printed and wrote.
fn pg_commands(url: &str, env: &[(&str, &str)], dir: &Path, data: &str) -> String {
    let report = dir.join("report.html");
    let run = |args: &[&str]| {
        let mut c = bin();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let mut args = arith_args(url, data);
    args.push("--json");
    let eval = run(&args);
    assert_eq!(eval.status.code(), Some(0), "{}", text(&eval));
    let id = json(&eval)["eval"].as_str().unwrap().to_string();
    let outs = [
        eval,
        run(&["runs", "--store", url]),
        run(&["runs", "--store", url, "--json"]),
        run(&["compare", &id, &id, "--store", url, "--max-nfr", "0"]),
        run(&[
            "report",
            &id,
            "--store",
            url,
            "-o",
            report.to_str().unwrap(),
        ]),
        // The store in the variable: nothing on the command line.
        {
            let mut c = bin();
            c.args(["runs"]).env("REDRAFT_STORE", url);
            for (k, v) in env {
                c.env(k, v);
            }
            c.output().unwrap()
        },
        {
            let mut c = bin();
            c.args(["runs", "--help"]).env("REDRAFT_STORE", url);
            c.output().unwrap()
        },
    ];
    for o in &outs[1..6] {
        assert_eq!(o.status.code(), Some(0), "{}", text(o));
    }
    let mut all: String = outs.iter().map(text).collect();
    all.push_str(&std::fs::read_to_string(&report).unwrap());
    let mut c = postgres::Client::connect(
        &std::env::var("REDRAFT_TEST_POSTGRES").unwrap(),
        postgres::NoTls,
    )
    .unwrap();
    for row in c
        .query(
            "SELECT e.meta || e.name || COALESCE(string_agg(u.item || COALESCE(u.result, '') || COALESCE(u.summary, '') || COALESCE(u.events, ''), ''), '')
             FROM evals e LEFT JOIN units u ON u.eval_id = e.id WHERE e.id = $1 GROUP BY e.id",
            &[&id],
        )
        .unwrap()
    {
        all.push_str(row.get::<_, &str>(0));
    }
    all
}

#[test]
fn no_store_password_reaches_any_output_or_record() {
    let Some(url) = postgres_url() else { return };
    let pw = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(cred, _)| cred.split_once(':'))
        .map(|(_, pw)| pw.to_string())
        .expect("REDRAFT_TEST_POSTGRES holds a password");
    assert!(
        pw.len() >= 8 && !"postgres://redraft@127.0.0.1:5432/redraft".contains(&pw),
        "REDRAFT_TEST_POSTGRES's password {pw:?} is too plain to grep for (scripts/start-postgres.sh sets one)"
    );
    let dir = temp_dir("pg-secret");
    // A data set of its own: a new eval on a long-lived server.
    let question = format!("What is 2+2? ({})", std::process::id());
    let data = items(&dir, "items.jsonl", &[("a", &question, "4")]);
    let data = data.as_str();
    let all = pg_commands(&url, &[], &dir, data);
    assert!(all.contains("***"), "the password's place is marked");
    assert_hidden(&pw, &all, "an output, report or stored record");
    // The password from PGPASSWORD, as PostgreSQL users give it.
    let bare = redraft::redact::without_password(&url);
    let all = pg_commands(&bare, &[("PGPASSWORD", &pw)], &dir, data);
    assert_hidden(&pw, &all, "an output with PGPASSWORD");
    // And from a password file.
    let pgpass = dir.join("pgpass");
    std::fs::write(&pgpass, format!("*:*:*:*:{pw}\n")).unwrap();
    let all = pg_commands(
        &bare,
        &[("PGPASSFILE", pgpass.to_str().unwrap())],
        &dir,
        data,
    );
    assert_hidden(&pw, &all, "an output with a password file");
}

#[test]
fn postgres_errors_say_what_the_server_said() {
    let Some(url) = postgres_url() else { return };
    let (head, db) = url.rsplit_once('/').unwrap();
    let (scheme_user, host) = head.rsplit_once('@').unwrap();
    let (scheme_user, _) = scheme_user.rsplit_once(':').unwrap();
    let wrong_pw = format!("{scheme_user}:Wrong-Pass-4e1@{host}/{db}");
    let o = redraft(&["runs", "--store", &wrong_pw]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("password authentication failed")
            && stderr(&o).contains("SQLSTATE 28P01"),
        "{}",
        text(&o)
    );
    assert_hidden("Wrong-Pass-4e1", &text(&o), "the error");
    let o = redraft(&["runs", "--store", &format!("{head}/no_such_db_9f2")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("\"no_such_db_9f2\" does not exist")
            && stderr(&o).contains("SQLSTATE 3D000"),
        "{}",
        text(&o)
    );
    // A NUL byte in an item id: the server's reason, not `db error`.
    let dir = temp_dir("pg-nul");
    let id = format!("a\u{0}{}", std::process::id());
    let data = items(&dir, "nul.jsonl", &[(&id, "What is 2+2?", "4")]);
    let o = redraft(&arith_args(&url, &data));
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stderr(&o).contains("SQLSTATE"), "{}", text(&o));
    assert!(!stderr(&o).trim_end().ends_with("db error"), "{}", text(&o));
}

#[test]
fn a_server_that_never_answers_times_out() {
    // Accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(2) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(8));
    });
    let url = format!("postgres://u:Silent-Pw-1@127.0.0.1:{port}/db");
    let started = Instant::now();
    let o = redraft(&["runs", "--store", &url, "--store-connect-timeout", "1s"]);
    assert!(started.elapsed() < Duration::from_secs(6), "it waited");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("no answer within 1s (connecting"),
        "{}",
        text(&o)
    );
    assert_hidden("Silent-Pw-1", &text(&o), "the timeout");
    // The URL's own connect_timeout is honoured.
    let started = Instant::now();
    let o = redraft(&["runs", "--store", &format!("{url}?connect_timeout=1")]);
    assert!(started.elapsed() < Duration::from_secs(6), "it waited");
    assert!(stderr(&o).contains("no answer within 1s"), "{}", text(&o));
    drop(held);
}

#[test]
fn a_postgres_statement_that_waits_past_the_timeout_fails_with_a_message() {
    let Some(url) = postgres_url() else { return };
    // The tables exist.
    let dir = temp_dir("pg-lock");
    let o = redraft(&["runs", "--store", &url]);
    let _ = (o, &dir);
    let o = arith(&url, &["-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("LOCK TABLE evals IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let started = Instant::now();
    let o = redraft(&["runs", "--store", &url, "--store-timeout", "1s"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("no answer within 1s (a statement)"),
        "{}",
        text(&o)
    );
    tx.rollback().unwrap();
}

/// The eval tests' slow eval (a scripted model taking 25 ms a reply) with
/// extra flags, without the store or password variables of the caller.
fn slow_eval(store: &str, data: &str, extra: &[&str]) -> Command {
    let mut c = crate::eval::slow_eval(store, data);
    c.args(extra)
        .env_remove("REDRAFT_STORE")
        .env_remove("PGPASSWORD");
    c
}

/// The listing of the eval named `name`, through `runs --json`.
fn progress(store: &str, name: &str) -> Option<serde_json::Value> {
    let o = redraft(&["runs", "--store", store, "--json"]);
    let all = serde_json::from_slice::<serde_json::Value>(&o.stdout).ok()?;
    all.as_array()?.iter().find(|e| e["name"] == name).cloned()
}

fn done_of(store: &str, name: &str) -> i64 {
    progress(store, name).map_or(0, |e| e["done"].as_i64().unwrap_or(0))
}

/// A name no other test run uses (PostgreSQL outlives test runs).
fn unique(label: &str) -> String {
    format!(
        "{label}-{}-{}",
        std::process::id(),
        redraft::eval::store::now_ms()
    )
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling our own child, which has not been waited for.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// SIGTERM mid-eval: exit 143, finished units kept, none left claimed,
/// and the same command finishes the rest.
fn sigterm_mid_eval(store: &str, dir: &Path) {
    let data = crate::eval::slow_data(dir, 120);
    let name = unique("sigterm");
    let child = slow_eval(store, &data, &["--name", &name]).spawn().unwrap();
    let start = Instant::now();
    loop {
        if done_of(store, &name) >= 8 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    assert!(
        stderr(&out).contains("terminated (SIGTERM): stopping"),
        "{}",
        text(&out)
    );
    let v = json(&out);
    assert_eq!(v["end"], "interrupted");
    let done = v["counts"]["done"].as_u64().unwrap();
    assert!((8..120).contains(&done), "{v}");
    assert_eq!(v["counts"]["claimed"], 0, "claims were released: {v}");
    let again = slow_eval(store, &data, &["--name", &name])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let v2 = json(&again);
    assert_eq!(v2["counts"]["done"], 120);
    assert_eq!(
        v2["ran"]["done"].as_u64().unwrap() + done,
        120,
        "nothing ran twice"
    );
}

#[test]
fn sigterm_stops_an_eval_cleanly_on_sqlite() {
    let dir = temp_dir("sigterm");
    let store = dir.join("r.db");
    sigterm_mid_eval(store.to_str().unwrap(), &dir);
}

#[test]
fn sigterm_stops_an_eval_cleanly_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let dir = temp_dir("sigterm-pg");
    sigterm_mid_eval(&url, &dir);
}

#[test]
fn sigterm_and_sighup_stop_a_run_with_its_best_so_far() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
        let child = bin()
            .args([
                "run",
                "tests/fixtures/eval/slow.yaml",
                "--input",
                "task=wait",
                "--model",
                "m=scripted:../scripts/stall.yaml",
                "--json",
                "-q",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert_eq!(json(&out)["status"], "interrupted", "{}", text(&out));
    }
}

/// The units each worker ran, by the worker that stored them.
fn shard_check(store: &str, dir: &Path) {
    let data = crate::eval::slow_data(dir, 60);
    let name = unique("shards");
    let shard_of = |id: &str| redraft::eval::shard_of(id, 2);
    // Shard 0 is killed midway: its claims stay behind.
    let mut child = slow_eval(store, &data, &["--shard", "0/2", "--name", &name])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while done_of(store, &name) < 4 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Shard 1 runs its own units, and only those.
    let one = slow_eval(store, &data, &["--shard", "1/2", "--name", &name])
        .output()
        .unwrap();
    assert_eq!(one.status.code(), Some(0), "{}", text(&one));
    let ones = (0..60)
        .map(|i| format!("i{i:04}"))
        .filter(|id| shard_of(id) == 1)
        .count() as u64;
    assert_eq!(
        json(&one)["ran"]["done"],
        ones,
        "shard 1 ran exactly its units"
    );
    let zero = slow_eval(store, &data, &["--shard", "0/2", "--name", &name])
        .output()
        .unwrap();
    assert_eq!(zero.status.code(), Some(0), "{}", text(&zero));
    assert_eq!(json(&zero)["counts"]["done"], 60);
    assert_eq!(json(&zero)["counts"]["claimed"], 0);
}

#[test]
fn a_shard_claims_only_its_own_units_on_sqlite() {
    let dir = temp_dir("shards");
    shard_check(dir.join("r.db").to_str().unwrap(), &dir);
}

#[test]
fn a_shard_claims_only_its_own_units_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let dir = temp_dir("shards-pg");
    shard_check(&url, &dir);
}

#[test]
fn an_eval_of_nothing_fails() {
    let dir = temp_dir("nothing");
    let store = dir.join("r.db");
    let s = store.to_str().unwrap();
    for (name, contents) in [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n\n"),
        ("empty.csv", ""),
        ("header.csv", "question,answer\n"),
        ("empty.json", "[]"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        let o = redraft(&arith_args(s, path.to_str().unwrap()));
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(
            stderr(&o).contains("no items") || stderr(&o).contains("no rows"),
            "{name}: {}",
            text(&o)
        );
    }
    let o = arith(s, &["--limit", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("keeps none of the 5 items (--limit 0)"),
        "{}",
        text(&o)
    );
    let o = arith(s, &["--shard", "1/40", "--ids", "a"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("holds none of the 1 selected items"),
        "{}",
        text(&o)
    );
    // Nothing was stored for any of them.
    let o = redraft(&["runs", "--store", s, "--json"]);
    assert!(
        o.status.code() == Some(2) || json(&o) == serde_json::json!([]),
        "{}",
        text(&o)
    );
}

#[test]
fn compare_pairs_the_same_questions_and_a_gate_needs_pairs() {
    let dir = temp_dir("pairs");
    let store = dir.join("r.db");
    let s = store.to_str().unwrap();
    // Two CSV files without ids: row numbers, unrelated questions.
    let (x, y) = (dir.join("x.csv"), dir.join("y.csv"));
    std::fs::write(&x, "question,answer\nWhat is 2+2?,4\nWhat is 3+3?,6\n").unwrap();
    std::fs::write(&y, "question,answer\nWhat is 5+5?,10\nWhat is 7+7?,14\n").unwrap();
    let id = |o: &Output| json(o)["eval"].as_str().unwrap().to_string();
    let a = redraft(&[arith_args(s, x.to_str().unwrap()), vec!["--json", "-q"]].concat());
    let b = redraft(&[arith_args(s, y.to_str().unwrap()), vec!["--json", "-q"]].concat());
    let (a, b) = (id(&a), id(&b));
    let o = redraft(&[
        "compare",
        &a,
        &b,
        "--store",
        s,
        "--json",
        "--max-nfr",
        "0.5",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a gate over nothing fails: {}",
        text(&o)
    );
    let c = &json(&o)["comparison"];
    assert_eq!(
        (c["paired"].as_u64(), c["mismatched"].as_u64()),
        (Some(0), Some(2)),
        "{c}"
    );
    assert!(stderr(&o).contains("2 unit(s) share an id"), "{}", text(&o));
    assert!(stderr(&o).contains("nothing to gate on"), "{}", text(&o));
    // Paired by id when asked (twins by design).
    let o = redraft(&["compare", &a, &b, "--store", s, "--json", "--pair-by", "id"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(json(&o)["comparison"]["paired"], 2);
    // Two evals of one data set whose inputs differ by design (here the
    // mapping; a method's own `--input tau=0` alike) pair by id, as the
    // methods table, the report's flip matrix and the viewer pair them.
    let r = dir.join("r.jsonl");
    std::fs::write(
        &r,
        "{\"id\":\"p\",\"question\":\"What is 2+2?\",\"asked\":\"What is 2+2, please?\",\"answer\":\"4\"}\n\
         {\"id\":\"q\",\"question\":\"What is 3+3?\",\"asked\":\"What is 3+3, please?\",\"answer\":\"6\"}\n",
    )
    .unwrap();
    let r = r.to_str().unwrap();
    let mapped = |field: &str| {
        let mut args = arith_args(s, r);
        let map = format!("task={field}");
        let at = args.iter().position(|a| *a == "task=question").unwrap();
        args[at] = &map;
        id(&redraft(&[args, vec!["--json", "-q"]].concat()))
    };
    let (q, asked) = (mapped("question"), mapped("asked"));
    let o = redraft(&["compare", &q, &asked, "--store", s, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(json(&o)["comparison"]["paired"], 2, "{}", text(&o));
    assert!(
        stderr(&o).contains("paired by id, as both ran on the same data set"),
        "{}",
        text(&o)
    );
    let o = redraft(&[
        "compare",
        &q,
        &asked,
        "--store",
        s,
        "--json",
        "--pair-by",
        "content",
    ]);
    assert_eq!(json(&o)["comparison"]["paired"], 0, "{}", text(&o));
    // Two evals with no item in common.
    let z = items(&dir, "z.jsonl", &[("zz", "What is 9+9?", "18")]);
    let c2 = id(&redraft(
        &[arith_args(s, &z), vec!["--json", "-q"]].concat(),
    ));
    let o = redraft(&["compare", &a, &c2, "--store", s, "--max-nfr", "0.05"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // The same eval twice: everything pairs; the minimum is the user's.
    let o = redraft(&[
        "compare",
        &a,
        &a,
        "--store",
        s,
        "--max-nfr",
        "0",
        "--min-pairs",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(1), "2 pairs < 3: {}", text(&o));
    let o = redraft(&[
        "compare",
        &a,
        &a,
        "--store",
        s,
        "--max-nfr",
        "0",
        "--min-pairs",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A copy of the checked fixture (a verify node) with a calibration file.
fn calibrated_copy(dir: &Path) -> PathBuf {
    for f in ["checked.yaml", "checked.replies.yaml"] {
        std::fs::copy(fixtures().join("eval").join(f), dir.join(f)).unwrap();
    }
    let wf = dir.join("checked.yaml");
    let text = std::fs::read_to_string(&wf).unwrap().replace(
        "    kind: verify\n",
        "    kind: verify\n    calibration: check.calibration.yaml\n",
    );
    std::fs::write(&wf, text).unwrap();
    fit(dir, &[(0.9, true), (0.2, false), (0.8, true), (0.7, false)]);
    wf
}

fn fit(dir: &Path, points: &[(f64, bool)]) {
    redraft::calibration::Calibration::fit("check", redraft::calibration::Method::Platt, points)
        .unwrap()
        .save(&dir.join("check.calibration.yaml"))
        .unwrap();
}

#[test]
fn every_file_that_determines_results_is_part_of_the_eval_id() {
    let dir = temp_dir("identity");
    let store = dir.join("r.db");
    let s = store.to_str().unwrap();
    let wf = calibrated_copy(&dir);
    let data = dir.join("items.jsonl");
    std::fs::copy(fixtures().join("eval/arith.jsonl"), &data).unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            wf.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--map",
            "task=question",
            "--answer",
            "answer",
            "--scorer",
            "numeric",
            "--store",
            s,
            "--json",
            "-q",
        ];
        args.extend_from_slice(extra);
        let o = redraft(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v = json(&o);
        let ran = &v["ran"];
        (
            v["eval"].as_str().unwrap().to_string(),
            ran["done"].as_u64().unwrap() + ran["failed"].as_u64().unwrap(),
        )
    };
    let (first, ran) = eval(&[]);
    assert_eq!(ran, 5);
    assert_eq!(eval(&[]), (first.clone(), 0), "the same command resumes");
    // A refitted calibration: another eval.
    fit(
        &dir,
        &[(0.9, false), (0.2, true), (0.8, false), (0.7, true)],
    );
    let (refit, ran) = eval(&[]);
    assert!(refit != first && ran == 5, "{refit} {ran}");
    // The scripted model's replies (its weights): another eval.
    let replies = dir.join("checked.replies.yaml");
    let text = std::fs::read_to_string(&replies).unwrap();
    std::fs::write(&replies, format!("{text}\n# changed\n")).unwrap();
    let (replied, _) = eval(&[]);
    assert!(replied != refit);
    // A data row: another eval.
    let rows = std::fs::read_to_string(&data)
        .unwrap()
        .replace("3+3", "3+4");
    std::fs::write(&data, rows).unwrap();
    let (changed, _) = eval(&[]);
    assert!(changed != replied);
    // A name given: another eval; again the same name: the same eval.
    let (named, ran) = eval(&["--name", "trial"]);
    assert!(named != changed && ran == 5, "{named} {changed} {ran}");
    assert_eq!(eval(&["--name", "trial"]), (named.clone(), 0));
    // --fresh: the same id starts over; the old results are kept aside.
    assert_eq!(eval(&["--name", "trial", "--fresh"]), (named.clone(), 5));
    let o = redraft(&["runs", "--store", s, "--json"]);
    let listing = json(&o);
    assert!(
        listing
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "trial (replaced)" && e["units"] == 5),
        "{listing:#}"
    );
}

#[test]
fn report_without_an_eval_reports_the_newest() {
    let dir = temp_dir("latest");
    let store = made_store(&dir);
    let z = items(&dir, "z.jsonl", &[("zz", "What is 9+9?", "18")]);
    let o = redraft(
        &[
            arith_args(store.to_str().unwrap(), &z),
            vec!["--json", "-q", "--name", "newest"],
        ]
        .concat(),
    );
    let newest = json(&o)["eval"].as_str().unwrap().to_string();
    let out = dir.join("report.html");
    let o = redraft(&[
        "report",
        "--store",
        store.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!("the newest eval, {newest}")),
        "{}",
        text(&o)
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("newest"));
    // `-o -` is stdout, the same page.
    let o = redraft(&["report", "--store", store.to_str().unwrap(), "-o", "-"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), html);
    // A reader that goes away (`| head -c 1`) is no error.
    let mut child = bin()
        .args(["report", "--store", store.to_str().unwrap(), "-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn sigterm_stops_a_calibration_cleanly() {
    let dir = temp_dir("sigterm-calibrate");
    for entry in std::fs::read_dir(fixtures().join("bridge")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("prompts")).unwrap();
    for entry in std::fs::read_dir(fixtures().join("bridge/prompts")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("prompts").join(entry.file_name())).unwrap();
    }
    std::fs::copy(
        fixtures().join("eval/slow.replies.yaml"),
        dir.join("slow.replies.yaml"),
    )
    .unwrap();
    let rows: Vec<(String, String)> = (0..200)
        .map(|i| (format!("q{i:03}"), format!("What is 2+2? ({i})")))
        .collect();
    let rows: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(i, q)| (i.as_str(), q.as_str(), "4"))
        .collect();
    items(&dir, "many.jsonl", &rows);
    let store = dir.join("s.db");
    let child = bin()
        .args([
            "calibrate",
            dir.join("task.yaml").to_str().unwrap(),
            "--data",
            dir.join("many.jsonl").to_str().unwrap(),
            "--answer",
            "answer",
            "--scorer",
            "numeric",
            "--model",
            "solver=scripted:slow.replies.yaml",
            "--store",
            store.to_str().unwrap(),
            "-q",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Scoring the seed prompt takes 200 × 25 ms: stop it midway.
    let start = Instant::now();
    while !store.exists() || start.elapsed() < Duration::from_millis(800) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "it never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    assert!(stderr(&out).contains("terminated (SIGTERM): stopping; what is stored stays stored"));
    // What it finished is stored and none of its units is left claimed.
    let c = rusqlite::Connection::open(&store).unwrap();
    let (done, claimed): (i64, i64) = c
        .query_row(
            "SELECT COALESCE(SUM(status = 'done'), 0), COALESCE(SUM(status = 'claimed'), 0) FROM units",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(done > 0 && done < 200, "{done} units done");
    assert_eq!(claimed, 0);
}
