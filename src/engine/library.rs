//! The bodies of the node-library kinds: execute, extract, tool, embed,
//! cluster and human_review. Each reads its inputs through the node's scope,
//! does its work, and returns one JSON output (documented in
//! `docs/workflow-reference.md`). Embedding calls go through the same
//! budget-metered layer as completions.

use std::time::{Duration, Instant};

use minijinja::Value;
use serde_json::json;

use super::NodeError;
use super::nodes::Task;
use super::state::{NodeOutput, Typed, Verdict};
use crate::backend::net::HttpError;
use crate::event::Event;
use crate::review::{self, Edit, ReviewRequest};
use crate::sandbox::{Limits, Outcome, RunResult, Sandbox};
use crate::workflow::{
    ClusterK, ClusterSpec, EmbedSpec, ExecuteSpec, ExtractSpec, ReviewDecisions, ReviewSpec,
    TestCase, TestSource, ToolAction, ToolSpec,
};

/// The most stderr a test result quotes (its end: where the error is).
const STDERR_KEEP: usize = 1200;

impl Task {
    pub(super) async fn execute(&self, e: &ExecuteSpec) -> Result<NodeOutput, NodeError> {
        let templates = &self.shared.wf.templates;
        let tests = match &e.tests {
            TestSource::Literal(cases) => cases.clone(),
            TestSource::Expr(expr) => self
                .eval_list(expr, "tests")?
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    TestCase::from_json(item, e.mode)
                        .map_err(|err| self.data_error(format!("test {}: {err}", i + 1)))
                })
                .collect::<Result<_, _>>()?,
        };
        let programs = match &e.each {
            None => vec![templates.render(&e.code, &self.scope(None))?],
            Some(expr) => self
                .eval_list(expr, "each")?
                .iter()
                .map(|item| {
                    let bound = Value::from_serialize(item);
                    templates.render(&e.code, &self.scope(Some(("item", bound))))
                })
                .collect::<Result<_, _>>()?,
        };
        let sandbox =
            Sandbox::new(e.isolation, e.limits).map_err(|err| self.data_error(err.to_string()))?;
        let argv: Vec<String> = e
            .command
            .iter()
            .map(|a| a.replace("{file}", &e.file))
            .collect();
        let permits = tokio::sync::Semaphore::new(e.parallel);
        let runs = programs
            .iter()
            .map(|program| run_tests(program, &tests, &sandbox, &argv, &permits, e));
        let tested = futures_util::future::join_all(runs).await;
        let tested: Vec<Tested> = tested
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|err| self.data_error(err.to_string()))?;
        let total = tests.len();
        // The sample reported in full: the first that passed the most tests.
        let shown = (0..tested.len())
            .max_by_key(|&i| (tested[i].passed_count, std::cmp::Reverse(i)))
            .unwrap_or(0);
        let passing: Vec<usize> = (0..tested.len())
            .filter(|&i| total > 0 && tested[i].passed_count == total)
            .collect();
        let (passed, score) = match &e.each {
            None => {
                let t = &tested[0];
                let score = if total == 0 {
                    0.0
                } else {
                    t.passed_count as f64 / total as f64
                };
                (!passing.is_empty(), score)
            }
            // Many programs: the node passes when one of them passes every
            // test, and scores the share of programs that do.
            Some(_) if tested.is_empty() => (false, 0.0),
            Some(_) => (
                !passing.is_empty(),
                passing.len() as f64 / tested.len() as f64,
            ),
        };
        let best = tested.get(shown);
        let passed_count = best.map_or(0, |t| t.passed_count);
        let mut text = format!("{passed_count} of {total} tests passed.");
        if e.each.is_some() {
            text = format!(
                "{} of {} programs passed every test; the best passed {passed_count} of {total}.",
                passing.len(),
                tested.len()
            );
        }
        for line in best.map(|t| t.report.as_slice()).unwrap_or_default() {
            text.push('\n');
            text.push_str(line);
        }
        self.shared.emit(Event::Verdict {
            node: self.id().to_string(),
            round: self.round,
            passed,
            score,
            raw_score: None,
            confidence_source: None,
        });
        let mut out = json!({
            "text": text,
            "feedback": text,
            "passed": passed,
            "score": score,
            "passed_count": passed_count,
            "total": total,
            "results": best.map(|t| t.results.clone()).unwrap_or_default(),
            "isolation": sandbox.isolation(),
            "round": self.round,
        });
        if e.each.is_some() {
            out["passing"] = json!(passing);
            out["best"] = json!(shown);
            out["programs"] = tested
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    json!({
                        "index": i,
                        "passed": total > 0 && t.passed_count == total,
                        "passed_count": t.passed_count,
                        "score": if total == 0 { 0.0 } else { t.passed_count as f64 / total as f64 },
                    })
                })
                .collect();
        }
        Ok(NodeOutput::new(out, 0).with_typed(Typed::Verdict(Verdict { passed, score })))
    }

    pub(super) fn extract(&self, e: &ExtractSpec) -> Result<NodeOutput, NodeError> {
        let samples = match e.from {
            Some(from) => self.samples_of(from)?,
            None => self.artifact_samples(),
        };
        let mut programs = Vec::with_capacity(samples.len());
        let mut functions = Vec::new();
        let mut has_errors = Vec::new();
        for (i, sample) in samples.iter().enumerate() {
            let text = sample.as_str().unwrap_or_default();
            let program = crate::extract::program(text);
            if e.functions {
                has_errors.push(crate::extract::functions(&program).has_errors);
                for f in crate::extract::sub_modules(text) {
                    let mut v = serde_json::to_value(&f).unwrap_or_default();
                    v["sample"] = json!(i);
                    functions.push(v);
                }
            }
            programs.push(program);
        }
        Ok(NodeOutput::new(
            json!({
                "text": programs.first().cloned().unwrap_or_default(),
                "code": programs.first().cloned().unwrap_or_default(),
                "programs": programs,
                "functions": functions,
                "has_errors": has_errors,
                "round": self.round,
            }),
            0,
        ))
    }

    pub(super) async fn tool(&self, t: &ToolSpec) -> Result<NodeOutput, NodeError> {
        let templates = &self.shared.wf.templates;
        let scope = self.scope(None);
        let started = Instant::now();
        let (status, ok, error_class, body) = match &t.action {
            ToolAction::Command {
                argv,
                stdin,
                isolation,
            } => {
                let mut args = Vec::with_capacity(argv.len());
                for a in argv {
                    args.push(templates.render(a, &scope)?);
                }
                // A relative program path is relative to the workflow file.
                // Absolute: the program runs in a work directory of its own.
                if args[0].contains('/') && !args[0].starts_with('/') {
                    let path = self.base_dir().join(&args[0]);
                    let path = std::path::absolute(&path).unwrap_or(path);
                    args[0] = path.display().to_string();
                }
                let input = match stdin {
                    Some(s) => templates.render(s, &scope)?,
                    None => String::new(),
                };
                let limits = Limits {
                    time: t.timeout,
                    output: t.max_output.max(1) * 4,
                    ..Limits::default()
                };
                let sandbox =
                    Sandbox::new(*isolation, limits).map_err(|e| self.data_error(e.to_string()))?;
                match sandbox.run(&[], &args, &[], input.as_bytes()).await {
                    Err(e) => (json!(null), false, Some("spawn"), e.to_string()),
                    Ok(run) => {
                        let class = match run.outcome {
                            Outcome::Exited(0) => None,
                            Outcome::Exited(_) => Some("exit_status"),
                            Outcome::TimedOut => Some("timeout"),
                            Outcome::MemoryExceeded => Some("memory"),
                            Outcome::OutputExceeded => Some("output_limit"),
                            Outcome::Signaled(_) => Some("killed"),
                        };
                        let code = match run.outcome {
                            Outcome::Exited(c) => json!(c),
                            _ => json!(null),
                        };
                        let body = if class.is_some() && !run.stderr.trim().is_empty() {
                            format!("{}\n{}", run.stdout, tail(&run.stderr, STDERR_KEEP))
                        } else {
                            run.stdout
                        };
                        (code, class.is_none(), class, body)
                    }
                }
            }
            ToolAction::Http {
                method,
                url,
                body,
                headers,
            } => {
                let url = templates.render(url, &scope)?;
                let payload = match body {
                    Some(b) => Some(templates.render(b, &scope)?),
                    None => None,
                };
                http_call(method, &url, payload, headers, t.timeout).await
            }
        };
        let (text, truncated) = truncate_chars(&body, t.max_output);
        let parsed: Option<serde_json::Value> = serde_json::from_str(body.trim()).ok();
        Ok(NodeOutput::new(
            json!({
                "text": text,
                "status": status,
                "ok": ok,
                "error_class": error_class,
                "truncated": truncated,
                "json": parsed,
                "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
                "round": self.round,
            }),
            0,
        ))
    }

    pub(super) async fn embed(&self, e: &EmbedSpec) -> Result<NodeOutput, NodeError> {
        let templates = &self.shared.wf.templates;
        let list = &self.eval_list(&e.items, "items")?;
        let mut texts = Vec::with_capacity(list.len());
        for item in list {
            texts.push(match &e.text {
                Some(t) => {
                    templates.render(t, &self.scope(Some(("item", Value::from_serialize(item)))))?
                }
                None => default_text(item),
            });
        }
        let (vectors, method, tokens) = match e.model {
            Some(model) if !texts.is_empty() => {
                let out = self.embed_texts(model, texts.clone()).await?;
                if out.vectors.len() != texts.len() {
                    return Err(self.data_error(format!(
                        "the model returned {} vectors for {} texts",
                        out.vectors.len(),
                        texts.len()
                    )));
                }
                (out.vectors, "model", out.usage.total())
            }
            _ => (crate::similarity::tfidf(&texts, e.dims), "tfidf", 0),
        };
        let dims = vectors.first().map_or(0, Vec::len);
        let vectors = std::sync::Arc::new(vectors);
        Ok(NodeOutput::new(
            json!({
                "items": list,
                "texts": texts,
                "vectors": &*vectors,
                "method": method,
                "dims": dims,
                "count": texts.len(),
                "round": self.round,
            }),
            tokens,
        )
        .with_typed(Typed::Embeddings(vectors)))
    }

    pub(super) fn cluster(&self, c: &ClusterSpec) -> Result<NodeOutput, NodeError> {
        let out = self.output_of(c.from)?;
        let Typed::Embeddings(vectors) = &out.typed else {
            return Err(self.data_error(format!(
                "`{}` has no vectors to cluster (use an embed node)",
                self.node_id(c.from)
            )));
        };
        let vectors: &[Vec<f32>] = vectors;
        let items = out.json["items"].as_array().cloned().unwrap_or_default();
        let texts = out.json["texts"].as_array().cloned().unwrap_or_default();
        let k = match &c.k {
            ClusterK::Fixed(k) => *k,
            ClusterK::Expr(expr) => {
                let k = self.shared.wf.templates.number(expr, &self.scope(None))?;
                if !(k >= 1.0 && k.fract() == 0.0) {
                    return Err(
                        self.data_error(format!("`k` evaluated to {k}, not a positive integer"))
                    );
                }
                k as usize
            }
        };
        let result = crate::cluster::kmeans(
            vectors,
            k,
            c.seed.wrapping_add(
                self.shared
                    .seed_offset
                    .wrapping_mul(super::nodes::SEED_STRIDE),
            ),
        )
        .map_err(|e| self.data_error(format!("cannot cluster: {e}")))?;
        let clusters: Vec<serde_json::Value> = (0..result.sizes.len())
            .map(|ci| {
                let members: Vec<usize> = (0..result.assignments.len())
                    .filter(|&i| result.assignments[i] == ci)
                    .collect();
                json!({ "members": members, "size": result.sizes[ci], "representative": result.representatives[ci] })
            })
            .collect();
        let representatives: Vec<serde_json::Value> = result
            .representatives
            .iter()
            .map(|&i| items.get(i).cloned().unwrap_or_default())
            .collect();
        let text = result
            .representatives
            .iter()
            .filter_map(|&i| texts.get(i).and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join("\n\n");
        Ok(NodeOutput::new(
            json!({
                "text": text,
                "k": result.sizes.len(),
                "clusters": clusters,
                "representatives": representatives,
                "representative_indices": result.representatives,
                "assignments": result.assignments,
                "inertia": result.inertia,
                "round": self.round,
            }),
            0,
        ))
    }

    pub(super) async fn human_review(&self, r: &ReviewSpec) -> Result<NodeOutput, NodeError> {
        let templates = &self.shared.wf.templates;
        let before = templates.render(&r.before, &self.scope(None))?;
        let after = templates.render(&r.after, &self.scope(None))?;
        // What earlier rounds of this node rejected is never proposed again.
        let (depth, mut rejected) = match self.data.outputs[self.node].as_deref() {
            Some(NodeOutput {
                typed: Typed::Review { depth, rejected },
                ..
            }) => (depth + 1, rejected.to_vec()),
            _ => (1, Vec::new()),
        };
        let proposals: Vec<Edit> = review::edits(&before, &after)
            .into_iter()
            .filter(|e| !rejected.iter().any(|r| r.same_as(e)))
            .collect();
        let mode = self
            .shared
            .review
            .clone()
            .or_else(|| r.decisions.clone())
            .unwrap_or(ReviewDecisions::Ask);
        let decisions = self
            .decide(&mode, &before, &after, &proposals, depth, r.timeout)
            .await?;
        let text = review::apply(&before, &proposals, &decisions);
        let accepted = decisions.iter().filter(|d| **d).count();
        let mut edits = Vec::with_capacity(proposals.len());
        for (edit, ok) in proposals.iter().zip(&decisions) {
            let mut v = serde_json::to_value(edit).unwrap_or_default();
            v["decision"] = json!(if *ok { "accept" } else { "reject" });
            edits.push(v);
            if !ok {
                rejected.push(edit.clone());
            }
        }
        let proposed = proposals.len();
        self.shared.emit(Event::Review {
            node: self.id().to_string(),
            round: self.round,
            depth,
            proposed: proposed as u32,
            accepted: accepted as u32,
        });
        Ok(NodeOutput::new(
            json!({
                "text": text,
                "changed": text != before,
                "proposed": proposed,
                "accepted": accepted,
                "acceptance_rate": if proposed == 0 { serde_json::Value::Null } else { json!(accepted as f64 / proposed as f64) },
                "edits": edits,
                "rejected": &rejected,
                "depth": depth,
                "round": self.round,
            }),
            0,
        )
        .with_typed(Typed::Review {
            depth,
            rejected: rejected.into(),
        }))
    }

    /// One decision per proposed edit.
    async fn decide(
        &self,
        mode: &ReviewDecisions,
        before: &str,
        after: &str,
        proposals: &[Edit],
        depth: u32,
        timeout: Option<std::time::Duration>,
    ) -> Result<Vec<bool>, NodeError> {
        if proposals.is_empty() {
            return Ok(Vec::new());
        }
        let decisions = match mode {
            ReviewDecisions::AcceptAll => vec![true; proposals.len()],
            ReviewDecisions::RejectAll => vec![false; proposals.len()],
            ReviewDecisions::File(path) => {
                decisions_from_file(path, depth, proposals.len()).map_err(|e| self.data_error(e))?
            }
            ReviewDecisions::Ask => {
                let Some(reviewer) = &self.shared.reviewer else {
                    return Err(self.data_error(
                        "human review needs decisions and this run has no reviewer to ask: pass `--review accept-all`, `--review reject-all` or `--review FILE`, set `decisions:` on the node, or give the run a `Reviewer` (`RunOptions::reviewer`)".into(),
                    ));
                };
                let request = ReviewRequest {
                    node: self.id(),
                    round: self.round,
                    depth,
                    before,
                    after,
                    edits: proposals,
                };
                let asked = reviewer.review(request);
                let decided = match timeout {
                    Some(limit) => tokio::time::timeout(limit, asked).await.map_err(|_| {
                        self.data_error(format!(
                            "no review decision within {limit:?} (the node's `timeout`)"
                        ))
                    })?,
                    None => asked.await,
                };
                decided.map_err(|e| self.data_error(format!("review failed: {e}")))?
            }
        };
        if decisions.len() != proposals.len() {
            return Err(self.data_error(format!(
                "the reviewer gave {} decisions for {} proposed edits",
                decisions.len(),
                proposals.len()
            )));
        }
        Ok(decisions)
    }

    fn node_id(&self, node: usize) -> &str {
        &self.shared.wf.nodes[node].id
    }

    pub(super) fn data_error(&self, message: String) -> NodeError {
        NodeError::Data(format!("`{}`: {message}", self.id()))
    }

    fn base_dir(&self) -> std::path::PathBuf {
        self.shared
            .wf
            .path
            .as_deref()
            .and_then(std::path::Path::parent)
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| ".".into())
    }
}

/// The status of one test and the line a revise prompt can quote.
/// One program's test results.
struct Tested {
    passed_count: usize,
    results: Vec<serde_json::Value>,
    /// One line per failing test.
    report: Vec<String>,
}

/// Runs `program` against every test, each in a fresh sandbox, at most
/// `permits` at once (shared by all the programs of a node).
async fn run_tests(
    program: &str,
    tests: &[TestCase],
    sandbox: &Sandbox,
    argv: &[String],
    permits: &tokio::sync::Semaphore,
    e: &ExecuteSpec,
) -> Result<Tested, crate::sandbox::SandboxError> {
    let runs = tests.iter().map(|test| {
        let (source, stdin) = match test {
            TestCase::Stdio { input, .. } => (program.to_string(), input.clone()),
            TestCase::Assert { code } if e.file.ends_with(".py") => {
                (python_assert(program, code), String::new())
            }
            TestCase::Assert { code } => (format!("{program}\n\n{code}\n"), String::new()),
        };
        let files = vec![(e.file.clone(), source)];
        async move {
            let _permit = permits.acquire().await;
            sandbox.run(&files, argv, &[], stdin.as_bytes()).await
        }
    });
    let finished = futures_util::future::join_all(runs).await;
    let mut tested = Tested {
        passed_count: 0,
        results: Vec::with_capacity(tests.len()),
        report: Vec::new(),
    };
    for (i, (test, run)) in tests.iter().zip(finished).enumerate() {
        let run = run?;
        let (status, line) = judge(test, &run, e.limits);
        if status == "passed" {
            tested.passed_count += 1;
        } else {
            tested.report.push(format!("Test {}: {line}", i + 1));
        }
        let mut r = json!({
            "index": i,
            "status": status,
            "time_ms": run.wall_ms,
            "stderr": tail(&run.stderr, STDERR_KEEP),
        });
        if let Some(cleanup) = &run.cleanup_error {
            r["cleanup_error"] = json!(cleanup);
        }
        if let TestCase::Stdio { input, output } = test {
            r["input"] = json!(input);
            r["expected"] = json!(output);
            r["actual"] = json!(run.stdout);
        } else if let TestCase::Assert { code } = test {
            r["test"] = json!(code);
        }
        tested.results.push(r);
    }
    Ok(tested)
}

fn judge(test: &TestCase, run: &RunResult, limits: Limits) -> (&'static str, String) {
    let last_error = || {
        run.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    match run.outcome {
        Outcome::TimedOut => (
            "timeout",
            format!("timed out after {:.1} s", limits.time.as_secs_f64()),
        ),
        Outcome::MemoryExceeded => (
            "memory",
            format!("ran out of memory ({} MiB limit)", limits.memory >> 20),
        ),
        Outcome::OutputExceeded => (
            "output_limit",
            format!("printed more than {} bytes", limits.output),
        ),
        Outcome::Signaled(sig) => ("error", format!("killed by signal {sig}")),
        Outcome::Exited(code) => match test {
            TestCase::Stdio { input, output } => {
                if code != 0 {
                    (
                        "error",
                        format!("exited with status {code}: {}", last_error()),
                    )
                } else if same_output(&run.stdout, output) {
                    ("passed", String::new())
                } else {
                    (
                        "failed",
                        format!(
                            "input {:?}: expected {:?}, got {:?}",
                            clip(input, 200),
                            clip(output.trim_end(), 200),
                            clip(run.stdout.trim_end(), 200)
                        ),
                    )
                }
            }
            TestCase::Assert { code: test } => {
                if code == 0 {
                    ("passed", String::new())
                } else if run.stderr.contains("AssertionError") {
                    (
                        "failed",
                        format!("`{}` failed: {}", clip(test.trim(), 200), last_error()),
                    )
                } else {
                    (
                        "error",
                        format!("`{}` raised: {}", clip(test.trim(), 200), last_error()),
                    )
                }
            }
        },
    }
}

/// `program` followed by the test `assert`, in Python. A test of the form
/// `assert LEFT == RIGHT` (one comparison, no message) is evaluated so that a
/// failure says what the left side was (`got 3, expected 4`): that is the
/// execution feedback a self-debugging prompt quotes. Every other test runs
/// as written, at the top level of the program, as if appended to it. The
/// test reaches Python as a string literal, so no test text can break out
/// of the harness.
fn python_assert(program: &str, test: &str) -> String {
    let literal = serde_json::to_string(test).unwrap_or_default();
    format!(
        "{program}\n\n\
def __redraft_test(source):
    import ast
    body = ast.parse(source).body
    if (len(body) == 1 and isinstance(body[0], ast.Assert) and body[0].msg is None
            and isinstance(body[0].test, ast.Compare) and len(body[0].test.ops) == 1
            and isinstance(body[0].test.ops[0], ast.Eq)):
        part = lambda node: eval(compile(ast.Expression(node), '<test>', 'eval'), globals())
        got = part(body[0].test.left)
        want = part(body[0].test.comparators[0])
        if not got == want:
            raise AssertionError('got ' + repr(got)[:300] + ', expected ' + repr(want)[:300])
    else:
        exec(compile(source, '<test>', 'exec'), globals())
__redraft_test({literal})
"
    )
}

/// Equal up to trailing whitespace on each line and trailing blank lines.
fn same_output(actual: &str, expected: &str) -> bool {
    let norm = |s: &str| -> Vec<String> {
        let mut lines: Vec<String> = s.lines().map(|l| l.trim_end().to_string()).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    };
    norm(actual) == norm(expected)
}

fn clip(s: &str, max: usize) -> String {
    truncate_chars(s, max).0
}

/// The first `max` characters, and whether anything was cut.
fn truncate_chars(s: &str, max: usize) -> (String, bool) {
    match s.char_indices().nth(max) {
        Some((i, _)) => (format!("{}…", &s[..i]), true),
        None => (s.to_string(), false),
    }
}

/// The last `max` bytes (on a character boundary).
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// An item's text when the node gives no `text` template.
fn default_text(item: &serde_json::Value) -> String {
    match item {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => match (o.get("header"), o.get("code"), o.get("text")) {
            (Some(h), Some(c), _) if c.is_string() => {
                match o.get("docstring").and_then(|d| d.as_str()) {
                    Some(doc) => format!(
                        "{}\n{doc}\n{}",
                        h.as_str().unwrap_or(""),
                        c.as_str().unwrap_or("")
                    ),
                    None => c.as_str().unwrap_or("").to_string(),
                }
            }
            (_, Some(c), _) if c.is_string() => c.as_str().unwrap_or("").to_string(),
            (_, _, Some(t)) if t.is_string() => t.as_str().unwrap_or("").to_string(),
            _ => item.to_string(),
        },
        other => other.to_string(),
    }
}

async fn http_call(
    method: &str,
    url: &str,
    body: Option<String>,
    headers: &[(String, String)],
    timeout: Duration,
) -> (serde_json::Value, bool, Option<&'static str>, String) {
    if let Some(b) = &body
        && serde_json::from_str::<serde_json::Value>(b).is_err()
    {
        return (
            json!(null),
            false,
            Some("invalid_parameters"),
            format!("the parameters are not valid JSON: {}", clip(b, 300)),
        );
    }
    let request = match tool_request(method, url, body, headers) {
        Ok(r) => r,
        Err(e) => return (json!(null), false, Some("invalid_parameters"), e),
    };
    // The process's one HTTP client (TLS only once an https:// URL is used).
    match crate::backend::net::execute(request, timeout, TOOL_REPLY_LIMIT).await {
        Err(e) => {
            let class = match e {
                HttpError::Timeout => "timeout",
                HttpError::TooLarge { .. } => "output_limit",
                _ => "connection",
            };
            (json!(null), false, Some(class), e.to_string())
        }
        Ok(reply) => {
            let status = reply.status;
            let text = String::from_utf8_lossy(&reply.body).into_owned();
            let class = if status.is_client_error() {
                Some("http_4xx")
            } else if status.is_server_error() {
                Some("http_5xx")
            } else {
                None
            };
            (json!(status.as_u16()), class.is_none(), class, text)
        }
    }
}

/// The most of a tool's HTTP reply that is read.
const TOOL_REPLY_LIMIT: usize = 8 << 20;

fn tool_request(
    method: &str,
    url: &str,
    body: Option<String>,
    headers: &[(String, String)],
) -> Result<reqwest::Request, String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let url = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let mut request = reqwest::Request::new(method, url);
    let map = request.headers_mut();
    for (k, v) in headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| format!("header {k:?}: {e}"))?;
        // `${NAME}`: the environment variable, so the workflow holds no key.
        let v = crate::backend::header_value(k, v)?;
        let value =
            reqwest::header::HeaderValue::from_str(&v).map_err(|e| format!("header {k:?}: {e}"))?;
        map.insert(name, value);
    }
    if let Some(b) = body {
        map.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        *request.body_mut() = Some(b.into());
    }
    Ok(request)
}

/// Decisions for review `depth` (1-based) from a YAML or JSON file.
fn decisions_from_file(
    path: &std::path::Path,
    depth: u32,
    count: usize,
) -> Result<Vec<bool>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read decisions file {}: {e}", path.display()))?;
    let doc = crate::yaml::parse(&text, Default::default())
        .map_err(|e| format!("decisions file {}: {e}", path.display()))?
        .to_json();
    let rounds = doc.as_array().ok_or_else(|| {
        format!(
            "decisions file {}: expected a list with one entry per review round",
            path.display()
        )
    })?;
    let entry = rounds.get(depth as usize - 1).ok_or_else(|| {
        format!(
            "decisions file {} has {} entries; review round {depth} needs one",
            path.display(),
            rounds.len()
        )
    })?;
    let word = |v: &serde_json::Value| -> Result<bool, String> {
        match v.as_str().map(|s| s.replace('-', "_")) {
            Some(s) if s == "accept" => Ok(true),
            Some(s) if s == "reject" => Ok(false),
            _ => Err(format!(
                "decisions file {}, round {depth}: `{v}` is not `accept` or `reject`",
                path.display()
            )),
        }
    };
    match entry {
        serde_json::Value::String(s) if s.replace('-', "_") == "accept_all" => {
            Ok(vec![true; count])
        }
        serde_json::Value::String(s) if s.replace('-', "_") == "reject_all" => {
            Ok(vec![false; count])
        }
        serde_json::Value::Array(list) if list.len() == count => list.iter().map(word).collect(),
        serde_json::Value::Array(list) => Err(format!(
            "decisions file {}, round {depth}: {} decisions for {count} proposed edits",
            path.display(),
            list.len()
        )),
        other => Err(format!(
            "decisions file {}, round {depth}: `{other}` is not `accept_all`, `reject_all` or a list",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tools_header_reads_the_environment_it_names() {
        let home = std::env::var("HOME").expect("HOME is set");
        let headers = [("X-Key".to_string(), "k ${HOME}".to_string())];
        let req = tool_request("POST", "http://127.0.0.1:9/api", None, &headers).unwrap();
        assert_eq!(req.headers()["x-key"], format!("k {home}").as_str());
        let unset = [(
            "X-Key".to_string(),
            "${REDRAFT_SURELY_UNSET_VAR_72}".to_string(),
        )];
        let e = tool_request("POST", "http://127.0.0.1:9/api", None, &unset).unwrap_err();
        assert_eq!(
            e,
            "header `X-Key` names the environment variable REDRAFT_SURELY_UNSET_VAR_72, which is not set"
        );
    }

    #[test]
    fn output_comparison_ignores_trailing_space_only() {
        assert!(same_output("1 2\n3  \n\n", "1 2\n3"));
        assert!(!same_output("1 2\n3", "1 2\n4"));
        assert!(!same_output(" 3", "3"));
    }

    #[test]
    fn truncation_is_by_characters() {
        assert_eq!(truncate_chars("héllo", 2), ("hé…".to_string(), true));
        assert_eq!(truncate_chars("hi", 5), ("hi".to_string(), false));
        assert_eq!(tail("abcdef", 3), "…def");
    }

    #[test]
    fn decisions_file_entries() {
        let dir = std::env::temp_dir().join(format!("redraft-decisions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.yaml");
        std::fs::write(&path, "- [accept, reject]\n- reject_all\n- accept-all\n").unwrap();
        assert_eq!(decisions_from_file(&path, 1, 2).unwrap(), [true, false]);
        assert_eq!(
            decisions_from_file(&path, 2, 3).unwrap(),
            [false, false, false]
        );
        assert_eq!(decisions_from_file(&path, 3, 1).unwrap(), [true]);
        assert!(
            decisions_from_file(&path, 1, 3)
                .unwrap_err()
                .contains("2 decisions for 3")
        );
        assert!(
            decisions_from_file(&path, 4, 1)
                .unwrap_err()
                .contains("needs one")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
