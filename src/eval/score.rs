//! Scorers: each turns (item, output) into a score in [0, 1], a pass flag
//! and a feedback text.
//!
//! **Invariant:** a scorer never changes what it scores and never shows a
//! hidden field to a model: the code scorer runs hidden tests in the
//! sandbox, the judge sees the task, the output and the reference answer
//! only.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};

use super::data::Item;
use crate::engine::{Engine, RunOptions};
use crate::sandbox::{Isolation, Limits, Sandbox};
use crate::workflow::Workflow;

/// What a scorer says of one output.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    /// In [0, 1].
    pub score: f64,
    pub passed: bool,
    pub feedback: String,
}

impl Score {
    fn pass_fail(passed: bool, feedback: impl Into<String>) -> Score {
        Score {
            score: if passed { 1.0 } else { 0.0 },
            passed,
            feedback: feedback.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("scorer `{spec}`: {reason}")]
    Spec { spec: String, reason: String },
    #[error("item `{item}`: {reason}")]
    Item { item: String, reason: String },
}

/// A scorer, chosen per eval (`--scorer`).
pub enum Scorer {
    /// The trimmed output equals the answer.
    Exact,
    /// Equal after lower-casing and dropping punctuation, articles and
    /// extra whitespace (SQuAD's normalisation).
    Normalized,
    /// The normalised answer occurs in the normalised output.
    Contains,
    /// The last number of the output (or the first group of `extract`)
    /// equals the answer's last number within `tolerance`.
    Numeric {
        tolerance: f64,
        extract: Option<Regex>,
    },
    /// The output matches the pattern (`{{answer}}` in it is the answer,
    /// escaped).
    Regex(String),
    /// Python: the output's program plus the item's hidden `test` and a
    /// call of `check(ENTRY_POINT)` run in the sandbox; passes on exit 0.
    Code { sandbox: Sandbox },
    /// The first JSON object of the output is a tool call
    /// (`api_name`/`name`, `parameters`/`arguments`) that matches the
    /// answer's; the score is the share of expected parameters matched.
    ToolCall,
    /// BFCL's AST check (`bfcl::check`): the first JSON object of the
    /// output is one of the allowed calls of the item's `expected`.
    Bfcl,
    /// An external program: the item and output as JSON on stdin; on stdout
    /// a JSON `{score, passed?, feedback?}` or a number.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
    /// A workflow judges: it gets the inputs it declares among `task`,
    /// `output` and `answer`; its output is the score (a number, 0–1 or
    /// 0–10, or an object with `score`), its verification the pass flag.
    Judge {
        engine: Engine,
        workflow: Arc<Workflow>,
    },
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `--scorer` accepts, for messages and `--help`.
pub const SCORERS: &str = "exact, normalized, contains, numeric[:TOLERANCE], regex:PATTERN, code, tool-call, bfcl, command:PROGRAM [ARGS], judge:WORKFLOW";

impl Scorer {
    /// Parses `--scorer`. `extract` is `--extract REGEX` (numeric only);
    /// `isolation` is the sandbox's, for `code`.
    pub fn parse(
        spec: &str,
        extract: Option<&str>,
        isolation: Isolation,
    ) -> Result<Scorer, ScoreError> {
        let bad = |reason: String| ScoreError::Spec {
            spec: spec.to_string(),
            reason,
        };
        let (name, arg) = match spec.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (spec, None),
        };
        if extract.is_some() && name != "numeric" {
            return Err(bad("--extract applies to the numeric scorer only".into()));
        }
        let no_arg = |s: Scorer| match arg {
            Some(a) => Err(bad(format!("takes no argument, got `{a}`"))),
            None => Ok(s),
        };
        match name {
            "exact" => no_arg(Scorer::Exact),
            "normalized" | "normalised" => no_arg(Scorer::Normalized),
            "contains" => no_arg(Scorer::Contains),
            "numeric" => {
                let tolerance = match arg {
                    Some(t) => t
                        .parse::<f64>()
                        .ok()
                        .filter(|t| t.is_finite() && *t >= 0.0)
                        .ok_or_else(|| bad(format!("tolerance `{t}` is not a number ≥ 0")))?,
                    None => 1e-6,
                };
                let extract = extract
                    .map(|r| Regex::new(r).map_err(|e| bad(format!("--extract: {e}"))))
                    .transpose()?;
                Ok(Scorer::Numeric { tolerance, extract })
            }
            "regex" => {
                let pattern = arg
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| bad("needs a pattern: regex:PATTERN".into()))?;
                Regex::new(&pattern.replace("{{answer}}", "x")).map_err(|e| bad(e.to_string()))?;
                Ok(Scorer::Regex(pattern.to_string()))
            }
            "code" => {
                let limits = Limits {
                    time: Duration::from_secs(10),
                    ..Limits::default()
                };
                let sandbox = Sandbox::new(isolation, limits).map_err(|e| bad(e.to_string()))?;
                no_arg(Scorer::Code { sandbox })
            }
            "tool-call" | "tool_call" => no_arg(Scorer::ToolCall),
            "bfcl" => no_arg(Scorer::Bfcl),
            "command" => {
                let argv: Vec<String> = arg
                    .unwrap_or("")
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if argv.is_empty() {
                    return Err(bad("needs a program: command:PROGRAM [ARGS]".into()));
                }
                Ok(Scorer::Command {
                    argv,
                    timeout: Duration::from_secs(60),
                })
            }
            "judge" => {
                let path = arg
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| bad("needs a workflow: judge:WORKFLOW.yaml".into()))?;
                let workflow = crate::workflow::load(std::path::Path::new(path))
                    .map_err(|e| bad(format!("cannot load the judge workflow:\n{}", e.render())))?;
                let declared: Vec<&str> = workflow.inputs.iter().map(|i| i.name.as_str()).collect();
                if !declared.contains(&"output") {
                    return Err(bad(format!(
                        "the judge workflow must declare an input `output` (the answer to judge); it declares: {}",
                        declared.join(", ")
                    )));
                }
                Ok(Scorer::Judge {
                    engine: Engine::new(),
                    workflow: Arc::new(workflow),
                })
            }
            other => Err(bad(format!(
                "unknown scorer `{other}`{}; scorers: {SCORERS}",
                crate::diagnostic::did_you_mean(
                    other,
                    [
                        "exact",
                        "normalized",
                        "contains",
                        "numeric",
                        "regex",
                        "code",
                        "tool-call",
                        "bfcl",
                        "command",
                        "judge"
                    ]
                )
                .map(|b| format!(" (did you mean `{b}`?)"))
                .unwrap_or_default()
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Scorer::Exact => "exact",
            Scorer::Normalized => "normalized",
            Scorer::Contains => "contains",
            Scorer::Numeric { .. } => "numeric",
            Scorer::Regex(_) => "regex",
            Scorer::Code { .. } => "code",
            Scorer::ToolCall => "tool-call",
            Scorer::Bfcl => "bfcl",
            Scorer::Command { .. } => "command",
            Scorer::Judge { .. } => "judge",
        }
    }

    /// Whether this scorer compares against the item's reference answer.
    pub fn needs_answer(&self) -> bool {
        matches!(
            self,
            Scorer::Exact
                | Scorer::Normalized
                | Scorer::Contains
                | Scorer::Numeric { .. }
                | Scorer::ToolCall
                | Scorer::Bfcl
        )
    }

    /// The judge's engine and workflow, for a caller that supplies the
    /// judge's models (`Engine::with_model_spec`, `with_model`).
    pub fn judge_mut(&mut self) -> Option<(&mut Engine, &Workflow)> {
        match self {
            Scorer::Judge { engine, workflow } => Some((engine, &**workflow)),
            _ => None,
        }
    }

    /// Scores one output of one item.
    pub async fn score(&self, item: &Item, output: &str) -> Result<Score, ScoreError> {
        let item_err = |reason: String| ScoreError::Item {
            item: item.id.clone(),
            reason,
        };
        let answer = || -> Result<String, ScoreError> {
            match &item.answer {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Null) | None => Err(item_err("has no reference answer".into())),
                Some(v) => Ok(v.to_string()),
            }
        };
        Ok(match self {
            Scorer::Exact => {
                let a = answer()?;
                let ok = output.trim() == a.trim();
                Score::pass_fail(ok, expected(ok, &a))
            }
            Scorer::Normalized => {
                let a = answer()?;
                let ok = crate::answer::normalize(output) == crate::answer::normalize(&a);
                Score::pass_fail(ok, expected(ok, &a))
            }
            Scorer::Contains => {
                let a = answer()?;
                let ok = crate::answer::mentions(
                    &crate::answer::normalize(output),
                    &crate::answer::normalize(&a),
                    false,
                );
                Score::pass_fail(ok, expected(ok, &a))
            }
            Scorer::Numeric { tolerance, extract } => {
                let a = answer()?;
                let want = crate::answer::number(&a)
                    .ok_or_else(|| item_err(format!("the answer `{a}` holds no number")))?;
                let got = match extract {
                    Some(re) => crate::answer::extract(re, output).and_then(crate::answer::number),
                    None => crate::answer::number(output),
                };
                match got {
                    None => {
                        Score::pass_fail(false, format!("no number in the output; expected {want}"))
                    }
                    Some(got) => {
                        let ok = crate::answer::numbers_match(got, want, *tolerance);
                        Score::pass_fail(
                            ok,
                            if ok {
                                format!("{got} = {want}")
                            } else {
                                format!("got {got}, expected {want}")
                            },
                        )
                    }
                }
            }
            Scorer::Regex(pattern) => {
                let pattern = match &item.answer {
                    Some(a) if pattern.contains("{{answer}}") => {
                        let a = a
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| a.to_string());
                        pattern.replace("{{answer}}", &regex::escape(&a))
                    }
                    _ => pattern.clone(),
                };
                let re = Regex::new(&pattern).map_err(|e| item_err(e.to_string()))?;
                let ok = re.is_match(output);
                Score::pass_fail(
                    ok,
                    if ok {
                        "matches".to_string()
                    } else {
                        format!("does not match /{pattern}/")
                    },
                )
            }
            Scorer::Code { sandbox } => code(sandbox, item, output).await.map_err(item_err)?,
            Scorer::ToolCall => tool_call(expected_call(item).map_err(item_err)?, output),
            Scorer::Bfcl => {
                let want = expected_call(item).map_err(item_err)?;
                let (passed, feedback) =
                    super::bfcl::check(want, item.hidden.get("functions"), output)
                        .map_err(|e| item_err(format!("its BFCL ground truth {e}")))?;
                Score::pass_fail(passed, feedback)
            }
            Scorer::Command { argv, timeout } => command(argv, *timeout, item, output)
                .await
                .map_err(item_err)?,
            Scorer::Judge { engine, workflow } => judge(engine, workflow, item, output)
                .await
                .map_err(item_err)?,
        })
    }
}

fn expected(ok: bool, answer: &str) -> String {
    if ok {
        "matches the answer".into()
    } else {
        format!("expected {answer:?}")
    }
}

/// The program to test: the output's code (its fenced Python, else the
/// whole text); a body without the function's `def` is put under the
/// prompt's signature, HumanEval-style.
pub fn assemble_program(item: &Item, output: &str) -> Result<String, String> {
    let test = item
        .hidden
        .get("test")
        .and_then(Value::as_str)
        .ok_or("has no hidden `test` for the code scorer")?;
    let entry = item.hidden.get("entry_point").and_then(Value::as_str);
    let prompt = item
        .hidden
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or("");
    // Fenced code, else the reply as it is: a bare function body keeps its
    // indentation.
    let code = if crate::extract::blocks(output).is_empty() {
        let start = output.find(|c: char| c != '\n' && c != '\r').unwrap_or(0);
        output[start..].trim_end().to_string()
    } else {
        crate::extract::program(output)
    };
    let defines = entry.is_some_and(|e| code.contains(&format!("def {e}")));
    let mut program = String::with_capacity(prompt.len() + code.len() + test.len() + 64);
    if defines || prompt.is_empty() {
        // The prompt first for its imports and helpers; the output's
        // definition then replaces the stub.
        program.push_str(prompt);
        program.push_str("\n    pass\n\n");
        program.push_str(&code);
    } else {
        program.push_str(prompt);
        program.push_str(&code);
    }
    program.push_str("\n\n");
    program.push_str(test);
    if let Some(e) = entry {
        program.push_str(&format!("\n\ncheck({e})\n"));
    }
    Ok(program)
}

async fn code(sandbox: &Sandbox, item: &Item, output: &str) -> Result<Score, String> {
    let program = assemble_program(item, output)?;
    let result = sandbox
        .run(
            &[("main.py".to_string(), program)],
            &["python3".to_string(), "main.py".to_string()],
            &[],
            b"",
        )
        .await
        .map_err(|e| e.to_string())?;
    if result.success() {
        return Ok(Score::pass_fail(true, "all tests passed"));
    }
    let tail: String = {
        let lines: Vec<&str> = result.stderr.lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n")
    };
    let how = match result.outcome {
        crate::sandbox::Outcome::TimedOut => "timed out".to_string(),
        crate::sandbox::Outcome::Exited(c) => format!("exit {c}"),
        other => format!("{other:?}"),
    };
    Ok(Score::pass_fail(
        false,
        format!("tests failed ({how}): {tail}"),
    ))
}

/// The call a tool scorer expects: the item's answer, else its hidden
/// `expected`.
fn expected_call(item: &Item) -> Result<&Value, String> {
    item.answer
        .as_ref()
        .or_else(|| item.hidden.get("expected"))
        .ok_or_else(|| "has no expected call".to_string())
}

fn tool_call(want: &Value, output: &str) -> Score {
    let Some(got) = super::call::first_object(output) else {
        return Score::pass_fail(false, "no JSON tool call in the output");
    };
    let (name, params_of) = (super::call::name, super::call::params);
    let Some(want) = want.as_object() else {
        return Score::pass_fail(false, "the expected call is not an object");
    };
    let (want_name, got_name) = (name(want), name(&got));
    if want_name != got_name {
        return Score::pass_fail(
            false,
            format!("called {got_name:?}, expected {want_name:?}"),
        );
    }
    // A session token is the conversation's, not something the model can know.
    let mut expected: Vec<(String, Value)> =
        params_of(want).unwrap_or_default().into_iter().collect();
    expected.retain(|(k, _)| k != "session_token");
    let got = params_of(&got).unwrap_or_default();
    let matched: Vec<&str> = expected
        .iter()
        .filter(|(k, v)| got.get(k).is_some_and(|g| loose_eq(g, v)))
        .map(|(k, _)| k.as_str())
        .collect();
    let score = if expected.is_empty() {
        1.0
    } else {
        matched.len() as f64 / expected.len() as f64
    };
    let missing: Vec<&str> = expected
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !matched.contains(k))
        .collect();
    Score {
        score,
        passed: missing.is_empty(),
        feedback: if missing.is_empty() {
            "the call matches".into()
        } else {
            format!("wrong or missing parameters: {}", missing.join(", "))
        },
    }
}

/// Values equal as JSON, or as text (`"3"` and `3`), case-insensitively.
fn loose_eq(a: &Value, b: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.trim().to_lowercase(),
        other => other.to_string().to_lowercase(),
    };
    a == b || text(a) == text(b)
}

async fn command(
    argv: &[String],
    timeout: Duration,
    item: &Item,
    output: &str,
) -> Result<Score, String> {
    use tokio::io::AsyncWriteExt as _;
    let input = json!({
        "id": item.id,
        "inputs": item.inputs,
        "answer": item.answer,
        "hidden": item.hidden,
        "output": output,
    });
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the scorer `{}`: {e}", argv[0]))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let body = input.to_string();
    let write = async move {
        let _ = stdin.write_all(body.as_bytes()).await;
    };
    let (_, out) = tokio::time::timeout(timeout, async {
        tokio::join!(write, child.wait_with_output())
    })
    .await
    .map_err(|_| format!("the scorer `{}` ran past {timeout:?}", argv[0]))?;
    let out = out.map_err(|e| format!("the scorer `{}` failed: {e}", argv[0]))?;
    if !out.status.success() {
        return Err(format!(
            "the scorer `{}` exited with {}: {}",
            argv[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    parse_score_reply(text.trim()).map_err(|e| format!("the scorer `{}` {e}", argv[0]))
}

/// A command scorer's stdout: `{score, passed?, feedback?}` or a number
/// (then the rest of the lines are the feedback).
pub fn parse_score_reply(text: &str) -> Result<Score, String> {
    // Negative scores say the output made things worse than its input
    // (R3's distance score): kept as they are, never clipped to 0.
    let check = |score: f64| {
        if (-1.0..=1.0).contains(&score) {
            Ok(score)
        } else {
            Err(format!("printed score {score}, not in [-1, 1]"))
        }
    };
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text) {
        let score = o
            .get("score")
            .and_then(Value::as_f64)
            .ok_or("printed JSON without a numeric `score`")?;
        let score = check(score)?;
        return Ok(Score {
            score,
            passed: o
                .get("passed")
                .and_then(Value::as_bool)
                .unwrap_or(score >= 0.5),
            feedback: o
                .get("feedback")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        });
    }
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let score = first
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("printed {first:?}: expected a JSON object or a number"))?;
    let score = check(score)?;
    Ok(Score {
        score,
        passed: score >= 0.5,
        feedback: rest.trim().to_string(),
    })
}

async fn judge(
    engine: &Engine,
    wf: &Arc<Workflow>,
    item: &Item,
    output: &str,
) -> Result<Score, String> {
    let mut inputs = serde_json::Map::new();
    for decl in &wf.inputs {
        let v = match decl.name.as_str() {
            "output" => Some(Value::String(output.to_string())),
            "task" => item.inputs.get("task").cloned(),
            "answer" => item.answer.clone(),
            _ => None,
        };
        if let Some(v) = v {
            inputs.insert(decl.name.clone(), v);
        }
    }
    let summary = engine
        .run(
            wf.clone(),
            RunOptions {
                inputs,
                ..RunOptions::default()
            },
        )
        .await
        .map_err(|e| format!("the judge could not run: {e}"))?;
    if let Some(e) = &summary.error {
        return Err(format!("the judge failed: {e}"));
    }
    let text = match &summary.output {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let from_output = match &summary.output {
        Some(Value::Object(o)) => o.get("score").and_then(Value::as_f64),
        Some(Value::Number(n)) => n.as_f64(),
        _ => crate::answer::number(&text),
    };
    let score = match (from_output, summary.verified) {
        (Some(s), _) if (0.0..=1.0).contains(&s) => s,
        (Some(s), _) if s > 1.0 && s <= 10.0 => s / 10.0,
        (_, Some(v)) => f64::from(u8::from(v)),
        _ => {
            return Err(format!(
                "the judge gave no score in [0, 10] and no verdict: {text:?}"
            ));
        }
    };
    Ok(Score {
        score,
        passed: summary.verified.unwrap_or(score >= 0.5),
        feedback: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(answer: Option<Value>) -> Item {
        Item {
            id: "x".into(),
            inputs: Default::default(),
            answer,
            hidden: Default::default(),
        }
    }

    fn run(scorer: &Scorer, item: &Item, output: &str) -> Score {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scorer.score(item, output))
            .unwrap()
    }

    /// Each row: scorer, answer, output, expected score.
    #[test]
    fn text_and_number_scorers() {
        let cases: &[(&str, Option<&str>, &str, &str, f64)] = &[
            ("exact", None, "42", " 42\n", 1.0),
            ("exact", None, "42", "42.", 0.0),
            ("normalized", None, "The Eiffel Tower", "eiffel tower!", 1.0),
            ("contains", None, "Paris", "It is paris, France.", 1.0),
            ("contains", None, "Paris", "Lyon", 0.0),
            (
                "numeric",
                None,
                "#### 1,234",
                "so the answer is $1,234.",
                1.0,
            ),
            (
                "numeric",
                None,
                "18",
                "She started with 18 cleaners, not 20.",
                0.0,
            ),
            ("numeric", None, "18", "18 then 20 then 18", 1.0),
            ("numeric:0.5", None, "3", "3.4", 1.0),
            (
                "numeric",
                Some(r"answer is (\S+)"),
                "7",
                "answer is 7, not 8",
                1.0,
            ),
            ("numeric", None, "7", "no digits here", 0.0),
            ("regex:^\\d+$", None, "7", "123", 1.0),
            (
                "regex:{{answer}} apples",
                None,
                "1.5",
                "I have 1.5 apples",
                1.0,
            ),
            (
                "regex:{{answer}} apples",
                None,
                "1.5",
                "I have 105 apples",
                0.0,
            ),
        ];
        for (spec, extract, answer, output, want) in cases {
            let s = Scorer::parse(spec, *extract, Isolation::None).unwrap();
            let got = run(&s, &item(Some(Value::from(*answer))), output);
            assert_eq!(got.score, *want, "{spec} {answer:?} {output:?}: {got:?}");
            assert_eq!(got.passed, *want == 1.0);
        }
    }

    #[test]
    fn bad_specs_and_missing_answers_are_errors_that_say_what() {
        for (spec, extract, msg) in [
            ("exactly", None, "did you mean `exact`?"),
            ("numeric:-1", None, "not a number ≥ 0"),
            ("regex:(", None, "regex parse error"),
            ("regex", None, "needs a pattern"),
            (
                "exact",
                Some("x"),
                "--extract applies to the numeric scorer only",
            ),
            ("command:", None, "needs a program"),
            (
                "judge:/no/such.yaml",
                None,
                "cannot load the judge workflow",
            ),
        ] {
            let e = Scorer::parse(spec, extract, Isolation::None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(msg), "{spec}: {e}");
        }
        let s = Scorer::parse("numeric", None, Isolation::None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(s.score(&item(None), "1"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "item `x`: has no reference answer");
        let e = rt
            .block_on(s.score(&item(Some("n/a".into())), "1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no number"), "{e}");
    }

    #[test]
    fn tool_calls_match_by_name_and_parameters() {
        let want = json!({"api_name": "AddAlarm", "parameters": {"session_token": "t", "time": "18:30:00"}});
        let s = Scorer::ToolCall;
        let i = item(Some(want));
        let ok = run(
            &s,
            &i,
            "Sure:\n```json\n{\"api_name\": \"AddAlarm\", \"parameters\": {\"time\": \"18:30:00\"}}\n```",
        );
        assert!(ok.passed, "{ok:?}");
        let wrong = run(
            &s,
            &i,
            "{\"name\": \"AddAlarm\", \"arguments\": {\"time\": \"6:30\"}}",
        );
        assert_eq!((wrong.score, wrong.passed), (0.0, false));
        assert!(wrong.feedback.contains("time"));
        let other = run(&s, &i, "{\"api_name\": \"DeleteAlarm\"}");
        assert!(
            other.feedback.contains("expected Some(\"AddAlarm\")"),
            "{other:?}"
        );
        assert!(!run(&s, &i, "no json").passed);
        // Parameters as a JSON object in a string (OpenAI's `arguments`).
        let quoted = run(
            &s,
            &i,
            r#"{"name": "AddAlarm", "arguments": "{\"time\": \"18:30:00\"}"}"#,
        );
        assert!(quoted.passed, "{quoted:?}");
        let garbled = run(
            &s,
            &i,
            r#"{"api_name": "AddAlarm", "parameters": "time=18:30"}"#,
        );
        assert_eq!((garbled.score, garbled.passed), (0.0, false));
    }

    #[test]
    fn command_replies_are_json_or_a_number() {
        assert_eq!(
            parse_score_reply("0.25\nclose").unwrap(),
            Score {
                score: 0.25,
                passed: false,
                feedback: "close".into()
            }
        );
        let s = parse_score_reply(r#"{"score": 1, "feedback": "ok"}"#).unwrap();
        assert!(s.passed);
        // Harm is a negative score, kept as it is.
        let s = parse_score_reply("-0.5").unwrap();
        assert_eq!((s.score, s.passed), (-0.5, false));
        assert!(
            parse_score_reply("-1.5")
                .unwrap_err()
                .contains("not in [-1, 1]")
        );
        assert!(
            parse_score_reply("7")
                .unwrap_err()
                .contains("not in [-1, 1]")
        );
        assert!(
            parse_score_reply("great")
                .unwrap_err()
                .contains("expected a JSON object or a number")
        );
        assert!(
            parse_score_reply(r#"{"passed": true}"#)
                .unwrap_err()
                .contains("without a numeric `score`")
        );
    }

    #[test]
    fn a_command_scorer_reads_the_item_on_stdin() {
        let dir = super::super::data::tests::tempdir();
        let script = dir.join("score.py");
        std::fs::write(&script, "import json,sys\nd=json.load(sys.stdin)\nprint(1.0 if d['output']==d['answer'] else 0.0)\nprint('compared', d['id'])\n").unwrap();
        let s = Scorer::parse(
            &format!("command:python3 {}", script.display()),
            None,
            Isolation::None,
        )
        .unwrap();
        let i = item(Some("yes".into()));
        assert_eq!(
            run(&s, &i, "yes"),
            Score {
                score: 1.0,
                passed: true,
                feedback: "compared x".into()
            }
        );
        assert!(!run(&s, &i, "no").passed);
        let s = Scorer::parse("command:false", None, Isolation::None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(s.score(&i, "yes")).unwrap_err().to_string();
        assert!(e.contains("the scorer `false` exited with"), "{e}");
    }

    #[test]
    fn code_runs_hidden_tests_on_a_body_or_a_whole_function() {
        let mut i = item(None);
        i.hidden.insert(
            "prompt".into(),
            "from typing import List\n\ndef add(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n"
                .into(),
        );
        i.hidden.insert(
            "test".into(),
            "def check(f):\n    assert f([1, 2]) == 3\n".into(),
        );
        i.hidden.insert("entry_point".into(), "add".into());
        let s = Scorer::parse("code", None, Isolation::None).unwrap();
        assert!(run(&s, &i, "    return sum(xs)\n").passed);
        assert!(run(&s, &i, "```python\ndef add(xs):\n    return sum(xs)\n```").passed);
        let bad = run(&s, &i, "```python\ndef add(xs):\n    return 0\n```");
        assert!(!bad.passed);
        assert!(bad.feedback.contains("AssertionError"), "{bad:?}");
    }
}
