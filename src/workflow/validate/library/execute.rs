//! `execute`: a program, its tests, the sandbox limits.

use super::*;

/// The kind's own keys (besides `id`, `kind`, `budget`).
pub(crate) const KEYS: &[&str] = &[
    "code",
    "each",
    "tests",
    "mode",
    "command",
    "file",
    "limits",
    "isolation",
    "parallel",
];

/// The kind's builder (named in the kinds table).
pub(crate) fn build(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
    super::build(cx, n, env, execute, NodeKind::Execute)
}

pub(super) fn execute(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ExecuteSpec> {
    let each = optional(f.get("each"), |v| expression(cx, v, env, "`each`", &[]));
    // With `each`, the code template sees the item as `item`.
    let extra: &'static [&'static str] = if f.get("each").is_some() {
        &["item"]
    } else {
        &[]
    };
    let default_code = if f.get("each").is_some() {
        "{{ item }}"
    } else {
        "{{ artifact.text }}"
    };
    let code = match f.get("code") {
        Some(v) => must(template(cx, v, env, "code", extra)),
        None => must(inline(cx, env, "code", default_code, env.span, extra)),
    };
    let mode = optional(f.get("mode"), |v| match string(cx, v, "`mode`")?.as_str() {
        "stdio" => Some(TestMode::Stdio),
        "assert" => Some(TestMode::Assert),
        other => {
            invalid(
                cx,
                v.span,
                format!("unknown test mode `{other}`"),
                "one of: stdio, assert",
            );
            None
        }
    })
    .map(|m| m.unwrap_or(TestMode::Stdio));
    let tests = must(required(cx, f, "tests", env)).and_then(|v| match &v.value {
        Value::Str(_) => must(expression(cx, v, env, "`tests`", &[])).map(TestSource::Expr),
        Value::Seq(items) => {
            let mode = mode.as_ref().copied().unwrap_or(TestMode::Stdio);
            let mut cases = Vec::new();
            let mut ok = true;
            for item in items {
                match TestCase::from_json(&item.to_json(), mode) {
                    Ok(c) => cases.push(c),
                    Err(e) => {
                        invalid(cx, item.span, format!("a test case {e}"), test_help(mode));
                        ok = false;
                    }
                }
            }
            if items.is_empty() {
                invalid(cx, v.span, "the test list is empty".into(), test_help(mode));
                ok = false;
            }
            if ok {
                Ok(TestSource::Literal(cases))
            } else {
                Err(Reported)
            }
        }
        _ => {
            wrong_type(cx, v, "`tests`", "a list of tests or an expression");
            Err(Reported)
        }
    });
    let file = optional(f.get("file"), |v| {
        let name = string(cx, v, "`file`")?;
        let plain = std::path::Path::new(&name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || name.is_empty() {
            invalid(
                cx,
                v.span,
                format!("`file` `{name}` is not a plain file name"),
                "e.g. main.py",
            );
            return None;
        }
        Some(name)
    });
    let command = optional(f.get("command"), |v| {
        let argv = string_list(cx, v, "`command`")?;
        if argv.is_empty() {
            invalid(
                cx,
                v.span,
                "`command` is empty".into(),
                "e.g. [python3, \"{file}\"]",
            );
            return None;
        }
        Some(argv)
    });
    let limits = optional(f.get("limits"), |v| limits(cx, v, env));
    let isolation = optional(f.get("isolation"), |v| isolation(cx, v));
    let parallel = optional(f.get("parallel"), |v| ranged(cx, v, "`parallel`", 1, 64));
    Ok(ExecuteSpec {
        code: code?,
        each: each?,
        tests: tests?,
        mode: mode?,
        command: command?.unwrap_or_else(|| vec!["python3".to_string(), "{file}".to_string()]),
        file: file?.unwrap_or_else(|| "main.py".to_string()),
        limits: limits?.unwrap_or_default(),
        isolation: isolation?.unwrap_or(Isolation::Bubblewrap),
        parallel: parallel?.map_or(2, |p| p as usize),
    })
}

fn limits(cx: &mut Ctx, v: &Node, env: &Env) -> Option<Limits> {
    let Value::Map(entries) = &v.value else {
        wrong_type(cx, v, "`limits`", "a mapping");
        return None;
    };
    let mut limits = Limits::default();
    let mut ok = true;
    for (k, val) in entries {
        let key = match &k.value {
            Value::Str(s) => s.as_str(),
            _ => "",
        };
        let read = match key {
            "time" => duration(cx, val, "`limits.time`").map(|d| limits.time = d),
            "memory" => size(cx, val, "`limits.memory`").map(|m| limits.memory = m),
            "output" => size(cx, val, "`limits.output`").map(|o| limits.output = o as usize),
            "processes" => {
                ranged(cx, val, "`limits.processes`", 1, 4096).map(|p| limits.processes = p)
            }
            other => {
                cx.err(unknown_key(
                    k.span,
                    other,
                    &format!("`limits` of {}", env.label),
                    EXECUTE_LIMIT_KEYS,
                ));
                None
            }
        };
        ok &= read.is_some();
    }
    ok.then_some(limits)
}

fn test_help(mode: TestMode) -> &'static str {
    match mode {
        TestMode::Stdio => "stdio tests are {input: \"...\", output: \"...\"}",
        TestMode::Assert => "assert tests are code strings, or {code: \"assert f(1) == 2\"}",
    }
}
