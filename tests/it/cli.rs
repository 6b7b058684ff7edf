//! The `redraft` binary: exit codes, output and the event log.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{redraft, root};

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Kills a child that outlives `limit`, through its handle: a child that
/// was already reaped is never signalled, so a reused PID is safe. Dropping
/// the watchdog stops it.
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    fn start(
        child: std::sync::Arc<std::sync::Mutex<std::process::Child>>,
        limit: std::time::Duration,
    ) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                let _ = child.lock().unwrap_or_else(|e| e.into_inner()).kill();
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.take();
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redraft-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

const FLAGSHIP: &str = "workflows/self-refine.yaml";

#[test]
fn run_prints_the_verified_output_and_exits_0() {
    let o = redraft(&["run", FLAGSHIP]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Old functions untangle,\ngreen tests keep watch through the night,\nthe code breathes again.\n"
    );
    assert!(
        stderr(&o).contains("finished · verified · 5 calls"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unverified_output_exits_1() {
    let script = temp("never.yaml");
    std::fs::write(&script, "replies:\n  - { node: critique, text: '{\"score\": 2, \"feedback\": \"x\"}' }\n  - { text: one line }\n").unwrap();
    let spec = format!("writer=scripted:{}", script.display());
    let o = redraft(&["run", FLAGSHIP, "--model", &spec, "-q"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(stdout(&o), "one line\n");
    // Quiet means quiet: no progress and no summary line.
    assert_eq!(stderr(&o), "");
    // Without -q, stop reasons read as in the JSON, not as Rust names.
    let o = redraft(&["run", FLAGSHIP, "--model", &spec]);
    let err = stderr(&o);
    assert!(
        err.contains("loop refine: stopped after 4 rounds (max_rounds)"),
        "{err}"
    );
    assert!(
        !err.contains("Exited") && !err.contains("round(s)"),
        "{err}"
    );
}

#[test]
fn budget_exhaustion_exits_3_with_the_best_so_far() {
    let o = redraft(&["run", FLAGSHIP, "--budget", "tokens=150", "--json"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json summary");
    assert_eq!(summary["status"], "budget_exhausted");
    assert_eq!(summary["exhausted"]["limit"], "tokens");
    assert!(
        summary["output"]
            .as_str()
            .unwrap()
            .starts_with("Old functions untangle")
    );
    assert_eq!(summary["usage"]["calls"], 1);
}

#[test]
fn backend_failure_exits_4() {
    let script = temp("fail.yaml");
    std::fs::write(
        &script,
        "replies:\n  - { error: { kind: transient, message: upstream is down } }\n",
    )
    .unwrap();
    let spec = format!("writer=scripted:{}", script.display());
    let o = redraft(&["run", FLAGSHIP, "--model", &spec]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("upstream is down"));
    // A model that cannot be opened is a backend failure too.
    let o = redraft(&[
        "run",
        FLAGSHIP,
        "--model",
        "writer=scripted:/no/such/file.yaml",
    ]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("/no/such/file.yaml"));
}

#[test]
fn usage_errors_exit_2_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", FLAGSHIP, "--budget", "tokens=lots"], "tokens=lots"),
        (&["run", FLAGSHIP, "--budget", "money=3"], "unknown limit"),
        (&["run", FLAGSHIP, "--input", "task"], "expected NAME=VALUE"),
        (
            &["run", FLAGSHIP, "--input", "tsk=x"],
            "did you mean `task`?",
        ),
        (
            &["run", FLAGSHIP, "--model", "critic=scripted:x.yaml"],
            "no model `critic`",
        ),
        (&["run", FLAGSHIP, "--model", "writer=gpt4"], "model spec"),
        (
            &["run", FLAGSHIP, "--input-file", "/no/such.json"],
            "cannot read input file",
        ),
        (
            &["run", "tests/fixtures/invalid/unknown-edge-target.yaml"],
            "error[E021]",
        ),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let o = redraft(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn input_file_supplies_inputs() {
    let f = temp("inputs.json");
    std::fs::write(&f, r#"{"task": "Write a haiku."}"#).unwrap();
    let o = redraft(&[
        "run",
        FLAGSHIP,
        "--input-file",
        f.to_str().unwrap(),
        "--json",
        "-q",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    std::fs::write(&f, "[1, 2]").unwrap();
    let o = redraft(&["run", FLAGSHIP, "--input-file", f.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("expected an object of inputs"),
        "{}",
        stderr(&o)
    );
    // A data-set row with more fields than the workflow's inputs.
    std::fs::write(&f, r#"{"task": "Write a haiku.", "answer": "42", "id": 7}"#).unwrap();
    let o = redraft(&["run", FLAGSHIP, "--input-file", f.to_str().unwrap(), "-q"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("input `answer`"), "{}", stderr(&o));
    let o = redraft(&[
        "run",
        FLAGSHIP,
        "--input-file",
        f.to_str().unwrap(),
        "--ignore-unknown-inputs",
        "-q",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn validate_exit_codes() {
    let o = redraft(&["validate", FLAGSHIP, "tests/fixtures/valid/vote.yaml"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = redraft(&[
        "validate",
        FLAGSHIP,
        "tests/fixtures/invalid/cycle-without-loop.yaml",
    ]);
    assert_eq!(code(&o), 2);
    assert!(stdout(&o).contains("self-refine.yaml: ok"));
    assert!(stderr(&o).contains("error[E024]"));
    let o = redraft(&["validate", "no/such/file.yaml"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("cannot read no/such/file.yaml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn validate_as_json_keeps_file_line_and_column() {
    let o = redraft(&[
        "validate",
        "--format",
        "json",
        FLAGSHIP,
        "tests/fixtures/invalid/independent-problems.yaml",
        "no/such/file.yaml",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let reports: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[0]["ok"], true);
    assert_eq!(reports[1]["ok"], false);
    let diags = reports[1]["diagnostics"].as_array().unwrap();
    let codes: Vec<&str> = diags.iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["E022", "E032", "E023", "E021"]);
    let edge = &diags[3];
    assert_eq!(
        edge["file"],
        "tests/fixtures/invalid/independent-problems.yaml"
    );
    assert_eq!(
        (edge["line"].as_u64(), edge["col"].as_u64()),
        (Some(23), Some(24))
    );
    assert_eq!(edge["end_col"], 28);
    assert_eq!(edge["help"], "did you mean `check`?");
    assert_eq!(reports[2]["diagnostics"][0]["code"], "E001");
    // `run --json` on an invalid workflow prints the same list.
    let o = redraft(&[
        "run",
        "tests/fixtures/invalid/independent-problems.yaml",
        "--json",
    ]);
    assert_eq!(code(&o), 2);
    let run: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(run["status"], "invalid");
    assert_eq!(run["diagnostics"].as_array().unwrap().len(), 4);
}

#[test]
fn graph_renders_mermaid_and_dot() {
    let m = redraft(&["graph", FLAGSHIP]);
    assert_eq!(code(&m), 0);
    let d = redraft(&["graph", FLAGSHIP, "--format", "dot"]);
    assert_eq!(code(&d), 0);
    insta::assert_snapshot!("graph_mermaid", stdout(&m));
    insta::assert_snapshot!("graph_dot", stdout(&d));
}

#[test]
fn schema_prints_the_json_schema() {
    let o = redraft(&["schema"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["properties"]["version"]["const"], 1);
}

#[test]
fn the_event_log_has_one_json_event_per_line() {
    let log = temp("run.jsonl");
    let o = redraft(&["run", FLAGSHIP, "--log", log.to_str().unwrap(), "-q"]);
    assert_eq!(code(&o), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(events.first().unwrap()["event"], "run_started");
    assert_eq!(events.last().unwrap()["event"], "run_finished");
    assert_eq!(
        events.iter().filter(|e| e["event"] == "model_call").count(),
        5
    );
    let summary = &events.last().unwrap()["summary"];
    assert_eq!(summary["loops"][0]["rounds"], 3);
}

#[test]
fn ctrl_c_exits_130_with_the_best_so_far_and_a_valid_log() {
    use std::io::BufRead;
    let script = temp("slow.yaml");
    std::fs::write(
        &script,
        "replies:\n  - { node: draft, text: a draft }\n  - { node: critique, text: '{\"score\": 1, \"feedback\": \"x\"}', latency_ms: 60000 }\n",
    )
    .unwrap();
    let log = temp("interrupted.jsonl");
    let spec = format!("writer=scripted:{}", script.display());
    let mut child = crate::support::redraft_command()
        .args([
            "run",
            FLAGSHIP,
            "--model",
            &spec,
            "--log",
            log.to_str().unwrap(),
        ])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut stdout = child.stdout.take().unwrap();
    let pid = child.id() as i32;
    let child = std::sync::Arc::new(std::sync::Mutex::new(child));
    let _watchdog = Watchdog::start(child.clone(), std::time::Duration::from_secs(30));
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("check done") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("check done"), "{seen}");
    // The child is not reaped yet, so its PID cannot have been reused.
    // SAFETY: plain syscall.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    let status = child.lock().unwrap().wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(out, "a draft\n");
    let text = std::fs::read_to_string(&log).unwrap();
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).expect("valid JSON line");
    }
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("\"status\":\"interrupted\"")
    );
    // A call in flight when Ctrl-C came is a call: evented as cancelled and
    // counted. (Whether the critique was already sent when the signal came
    // is a race here; `openai::calls_in_the_summary_equal_requests_the_server_received`
    // waits for the server to hold the request.)
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let calls: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "model_call")
        .collect();
    assert_eq!(calls[0]["outcome"], "ok");
    if let Some(critique) = calls.get(1) {
        assert_eq!(critique["outcome"], "cancelled");
        assert_eq!(critique["node"], "critique");
        assert_eq!(critique["usage_estimated"], true);
    }
    let summary = &events.last().unwrap()["summary"];
    assert_eq!(summary["usage"]["calls"], calls.len());
}

#[test]
fn a_closed_stdout_pipe_is_not_a_panic() {
    use std::io::Read;
    // Enough output to overflow the pipe buffer once the reader is gone.
    let mut args = vec!["validate".to_string()];
    args.extend(std::iter::repeat_n(FLAGSHIP.to_string(), 1000));
    let mut child = crate::support::redraft_command()
        .args(&args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte and hang up, like `redraft validate ... | head -c1`.
    let mut out = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    out.read_exact(&mut one).unwrap();
    drop(out);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn review_decisions_come_from_the_command_line() {
    let o = redraft(&[
        "run",
        "tests/fixtures/library/review.yaml",
        "--review",
        "reject-all",
        "--json",
        "-q",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let reviews = summary["reviews"].as_array().unwrap();
    assert_eq!(reviews[0]["proposed"], 2);
    assert_eq!(reviews[0]["accepted"], 0);
    assert_eq!(reviews[0]["acceptance_rate"], 0.0);
    // The rejected edits are not proposed again: the loop stops at depth 2.
    assert_eq!(reviews[1]["proposed"], 0);
    assert_eq!(
        summary["output"],
        "The results was good and we has finish the tests."
    );

    let o = redraft(&[
        "run",
        "tests/fixtures/library/review.yaml",
        "--review",
        "sometimes",
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("--review \"sometimes\""),
        "{}",
        stderr(&o)
    );
}

/// The `redraft …` lines of the README's `sh` blocks (continuations joined,
/// trailing comments dropped).
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = match line.find("  #") {
            Some(i) => &line[..i],
            None => line,
        }
        .trim();
        if current.is_empty() && !code.starts_with("redraft ") {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(code);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

#[test]
fn every_command_in_the_readme_works() {
    let commands = readme_commands();
    assert!(commands.len() >= 4, "{commands:#?}");
    // A scratch directory that sees the repository's workflows and prompts,
    // so files the commands write (logs, schemas) land there.
    let dir = temp("readme");
    std::fs::create_dir_all(&dir).unwrap();
    for shared in ["workflows", "prompts"] {
        let link = dir.join(shared);
        if !link.exists() {
            std::os::unix::fs::symlink(root().join(shared), &link).unwrap();
        }
    }
    // Copied, not linked: commands write beside the examples' files.
    let copied = Command::new("cp")
        .arg("-r")
        .arg(root().join("examples"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(copied.success());
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_redraft"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The eval examples read data sets that packages ship
    // (`scripts/fetch-data.sh`, run by the quick start): without them those
    // examples, and the ones reading their results, are skipped, saying so
    // (unless REDRAFT_REQUIRE_PEERS=1, as in CI).
    let missing = missing_data_sets(&commands);
    if !missing.is_empty() {
        assert!(
            std::env::var("REDRAFT_REQUIRE_PEERS").as_deref() != Ok("1"),
            "REDRAFT_REQUIRE_PEERS=1 but the data set package(s) {missing:?} are missing"
        );
        eprintln!(
            "skipped: the README's eval examples (the data set package(s) {missing:?} are missing: scripts/fetch-data.sh)"
        );
    }
    for command in &commands {
        let evals = [
            "redraft eval ",
            "redraft runs",
            "redraft compare ",
            "redraft report ",
        ];
        if !missing.is_empty() && evals.iter().any(|e| command.starts_with(e)) {
            continue;
        }
        // A server: it prints its URL, answers there, and stops when told.
        if command.starts_with("redraft view") {
            serves(command, &dir, &path);
            continue;
        }
        let o = Command::new("sh")
            .args(["-c", command])
            .current_dir(&dir)
            .env("PATH", &path)
            .env("REDRAFT_CACHE_DB", dir.join("responses.db"))
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        // Every example can succeed: runs included (verified, exit 0).
        assert!(
            code(&o) == 0,
            "`{command}` exited {}:\n{}{}",
            code(&o),
            stdout(&o),
            stderr(&o)
        );
    }
}

/// Runs a README command that serves (`redraft view`): the URL it prints
/// answers with the eval list, then the server is stopped.
fn serves(command: &str, dir: &Path, path: &str) {
    use std::io::{BufRead, Read, Write};
    let mut child = Command::new("sh")
        .args(["-c", &format!("exec {command}")])
        .current_dir(dir)
        .env("PATH", path)
        // `--open` may find no browser here: it warns and goes on serving.
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("redraft view: ")
        .unwrap_or_else(|| panic!("`{command}` printed {line:?}"));
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /api/evals HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "`{command}`: {answer}");
}

/// The built-in data sets the commands name whose packages are not installed.
fn missing_data_sets(commands: &[String]) -> Vec<&'static str> {
    use redraft::eval::data::{Builtin, python_package_dir};
    let mut missing: Vec<&'static str> = commands
        .iter()
        .flat_map(|c| {
            c.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|w| w[0] == "--data")
                .map(|w| w[1].to_string())
                .collect::<Vec<_>>()
        })
        .filter_map(|d| match Builtin::of_source(&d) {
            Some((b, None)) => Some(b),
            _ => None,
        })
        .filter(|b| python_package_dir(b.package().1).is_none())
        .map(|b| b.package().0)
        .collect();
    missing.dedup();
    missing
}

/// The key structure of a JSON value: object keys (recursively) and the
/// first element of arrays; values themselves do not matter.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.first().map(shape).into_iter().collect())
        }
        _ => serde_json::Value::Null,
    }
}

#[test]
fn the_documented_summary_is_the_printed_summary() {
    let reference = std::fs::read_to_string(root().join("docs/workflow-reference.md")).unwrap();
    let section = &reference[reference.find("## Run summary and metrics").unwrap()..];
    let start = section.find("```json\n").unwrap() + "```json\n".len();
    let end = start + section[start..].find("```").unwrap();
    let documented: serde_json::Value = serde_json::from_str(&section[start..end]).unwrap();
    let o = redraft(&["run", FLAGSHIP, "--json", "-q"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(shape(&documented), shape(&printed));
}

#[test]
fn warnings_are_shown_and_do_not_fail() {
    let f = temp("warns.yaml");
    let script = root().join("tests/fixtures/scripts/echo.yaml");
    std::fs::write(
        &f,
        format!(
            "version: 1\nmodels:\n  m: scripted:{}\nnodes:\n  - id: critique\n    kind: critique\n    template: Critique.\n    sampling: {{ max_tokens: 50 }}\n    schema: {{ type: object, properties: {{ feedback: {{ type: string, maxLength: 3000 }} }} }}\noutput: critique\n",
            script.display()
        ),
    )
    .unwrap();
    let o = redraft(&["validate", f.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).ends_with(": ok\n"), "{}", stdout(&o));
    assert!(stderr(&o).contains("warning[W001]"), "{}", stderr(&o));
    let o = redraft(&["validate", "--format", "json", f.to_str().unwrap()]);
    let reports: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(reports[0]["ok"], true);
    assert_eq!(reports[0]["diagnostics"][0]["severity"], "warning");
    assert_eq!(reports[0]["diagnostics"][0]["code"], "W001");
}

#[test]
fn the_flagship_checks_follow_the_task_through_its_inputs() {
    let script = temp("limerick.yaml");
    std::fs::write(
        &script,
        r#"
replies:
  - { node: draft, text: "Rain on the roof,\na soft grey tune,\nall afternoon." }
  - { node: critique, text: '{"score": 4, "feedback": "A limerick has five lines."}' }
  - node: revise
    text: |-
      There once was a cloud full of rain
      that drizzled all over the plain;
      it watered the wheat,
      it dampened the street,
      then floated back home down the lane.
"#,
    )
    .unwrap();
    let spec = format!("writer=scripted:{}", script.display());
    let args = |lines: &str, mention: &str| {
        redraft(&[
            "run",
            FLAGSHIP,
            "--model",
            &spec,
            "--input",
            "task=Write a limerick about rain.",
            "--input",
            &format!("lines={lines}"),
            "--input",
            &format!("mention={mention}"),
            "-q",
        ])
    };
    // Five lines about rain: the revision passes the task's own checks.
    let o = args("5", "rain");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("There once was a cloud"),
        "{}",
        stdout(&o)
    );
    // The haiku's checks (3 lines, mentions tests) would never pass it.
    let o = args("3", "test");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
}

/// The embedding example runs as documented: streamed events, the fixed
/// answer, and the typed context-length failure.
#[test]
fn the_embedding_example_runs() {
    // Test builds compile the examples next to the test binary's directory.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/embed");
    if !example.exists() {
        panic!(
            "{} is not built (cargo builds examples with the tests)",
            example.display()
        );
    }
    let out = Command::new(&example).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("  fix (round 1): Done"), "{stdout}");
    assert!(stdout.contains("output: \"17 * 3 = 51\""), "{stdout}");
    assert!(
        stdout.contains("node `answer` needs a model with a longer context"),
        "{stdout}"
    );
}

#[test]
fn every_flag_of_every_command_has_its_own_help() {
    use clap::CommandFactory as _;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let help = arg
                .get_help()
                .or(arg.get_long_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            if help.trim().is_empty() {
                missing.push(format!(
                    "{path} {}",
                    arg.get_long()
                        .map_or(id.to_uppercase(), |l| format!("--{l}"))
                ));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&redraft::cli::Cli::command(), "redraft", &mut missing);
    assert!(missing.is_empty(), "flags without help: {missing:#?}");
    // Each help line belongs to its flag: the summary of `--json` is its
    // own, not the start of the next flag's.
    let o = redraft(&["eval", "--help"]);
    let help = stdout(&o);
    let json_line = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("--json"))
        .nth(1)
        .unwrap_or_default();
    assert!(json_line.contains("JSON"), "{help}");
    let calibrate = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("--calibrate"))
        .nth(1)
        .unwrap_or_default();
    assert!(!calibrate.contains("JSON"), "{help}");
}
