//! The second pass for the node-library kinds: execute, extract, tool,
//! embed, cluster and human_review. The first pass checked the keys; this
//! one checks types and values, compiles templates and expressions, and
//! resolves node and model names.

use std::time::Duration;

use super::{Ctx, VarCheck, VarSource, check_expression, unknown_name};
use crate::diagnostic::{Code, Diagnostic};
use crate::sandbox::{Isolation, Limits};
use crate::workflow::model::*;
use crate::workflow::raw::{EXECUTE_LIMIT_KEYS, RawNode, Spanned, TOOL_HTTP_KEYS};
use crate::yaml::{Node, Span, Value};

/// What the builders need from the surrounding pass.
pub(super) struct Env<'a> {
    pub idx: usize,
    pub id: &'a str,
    pub label: &'a str,
    pub span: Span,
    pub model_names: &'a [&'a str],
    pub resolve: &'a dyn Fn(&mut Ctx, &Spanned<String>, &str) -> Option<usize>,
}

/// `item` is bound in embed's `text`; `sample` in vote's `weight`.
const ITEM_VAR: &[&str] = &["item"];

pub(super) fn build(cx: &mut Ctx, kind: &str, n: &RawNode, env: &Env) -> Option<NodeKind> {
    let f = Fields(&n.library);
    match kind {
        "execute" => execute(cx, &f, env).map(NodeKind::Execute),
        "extract" => {
            let from = required(cx, &f, "from", env).and_then(|v| node_ref(cx, v, env))?;
            let functions = match f.get("language") {
                None => true,
                Some(v) => match string(cx, v, "`language`")?.as_str() {
                    "python" => true,
                    "none" => false,
                    other => {
                        invalid(cx, v.span, format!("unsupported language `{other}`"), "one of: python, none");
                        return None;
                    }
                },
            };
            Some(NodeKind::Extract(ExtractSpec { from, functions }))
        }
        "tool" => tool(cx, &f, env).map(NodeKind::Tool),
        "embed" => {
            let items = required(cx, &f, "items", env)
                .and_then(|v| expression(cx, v, env, "`items`", &[]))?;
            let text = match f.get("text") {
                Some(v) => Some(template(cx, v, env, "text", ITEM_VAR)?),
                None => None,
            };
            let model = match f.get("model") {
                Some(v) => {
                    let name = string(cx, v, "`model`")?;
                    let found = env.model_names.iter().position(|m| *m == name);
                    if found.is_none() {
                        cx.err(unknown_name(
                            Code::UnknownModel,
                            v.span,
                            format!("{} uses model `{name}`, which is not declared", env.label),
                            &name,
                            env.model_names,
                        ));
                        return None;
                    }
                    found
                }
                None => None,
            };
            let dims = match f.get("dims") {
                Some(v) => ranged(cx, v, "`dims`", 1, 1 << 16)? as usize,
                None => 512,
            };
            Some(NodeKind::Embed(EmbedSpec {
                items,
                text,
                model,
                dims,
            }))
        }
        "cluster" => {
            let from = required(cx, &f, "from", env).and_then(|v| node_ref(cx, v, env))?;
            let k = match required(cx, &f, "k", env)? {
                v @ Node {
                    value: Value::Str(_),
                    ..
                } => ClusterK::Expr(expression(cx, v, env, "`k`", &[])?),
                v => ClusterK::Fixed(ranged(cx, v, "`k`", 1, 10_000)? as usize),
            };
            let seed = match f.get("seed") {
                Some(v) => ranged(cx, v, "`seed`", 0, i64::MAX as u64)?,
                None => 0,
            };
            Some(NodeKind::Cluster(ClusterSpec { from, k, seed }))
        }
        "human_review" => {
            let before = required(cx, &f, "before", env)
                .and_then(|v| template(cx, v, env, "before", &[]));
            let after = match f.get("after") {
                Some(v) => template(cx, v, env, "after", &[]),
                None => inline(cx, env, "after", "{{ artifact.text }}", env.span, &[]),
            };
            let decisions = match f.get("decisions") {
                None => None,
                Some(v) => Some(match string(cx, v, "`decisions`")?.as_str() {
                    "ask" => ReviewDecisions::Ask,
                    "accept_all" => ReviewDecisions::AcceptAll,
                    "reject_all" => ReviewDecisions::RejectAll,
                    path => {
                        let full = cx.prompt_dir.parent().unwrap_or(&cx.prompt_dir).join(path);
                        if !full.is_file() {
                            invalid(
                                cx,
                                v.span,
                                format!("decisions file `{}` does not exist", full.display()),
                                "`ask`, `accept_all`, `reject_all`, or a file relative to the workflow",
                            );
                            return None;
                        }
                        ReviewDecisions::File(full)
                    }
                }),
            };
            Some(NodeKind::HumanReview(ReviewSpec {
                before: before?,
                after: after?,
                decisions,
            }))
        }
        _ => None,
    }
}

fn execute(cx: &mut Ctx, f: &Fields, env: &Env) -> Option<ExecuteSpec> {
    let code = match f.get("code") {
        Some(v) => template(cx, v, env, "code", &[]),
        None => inline(cx, env, "code", "{{ artifact.text }}", env.span, &[]),
    };
    let mode = match f.get("mode") {
        None => TestMode::Stdio,
        Some(v) => match string(cx, v, "`mode`")?.as_str() {
            "stdio" => TestMode::Stdio,
            "assert" => TestMode::Assert,
            other => {
                invalid(cx, v.span, format!("unknown test mode `{other}`"), "one of: stdio, assert");
                return None;
            }
        },
    };
    let tests = match required(cx, f, "tests", env)? {
        v @ Node {
            value: Value::Str(_),
            ..
        } => TestSource::Expr(expression(cx, v, env, "`tests`", &[])?),
        v @ Node {
            value: Value::Seq(items),
            ..
        } => {
            let mut cases = Vec::new();
            for item in items {
                match TestCase::from_json(&item.to_json(), mode) {
                    Ok(c) => cases.push(c),
                    Err(e) => invalid(cx, item.span, format!("a test case {e}"), test_help(mode)),
                }
            }
            if cases.is_empty() && items.is_empty() {
                invalid(cx, v.span, "the test list is empty".into(), test_help(mode));
            }
            TestSource::Literal(cases)
        }
        v => {
            wrong_type(cx, v, "`tests`", "a list of tests or an expression");
            return None;
        }
    };
    let file = match f.get("file") {
        Some(v) => {
            let name = string(cx, v, "`file`")?;
            let plain = std::path::Path::new(&name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || name.is_empty() {
                invalid(cx, v.span, format!("`file` `{name}` is not a plain file name"), "e.g. main.py");
                return None;
            }
            name
        }
        None => "main.py".to_string(),
    };
    let command = match f.get("command") {
        Some(v) => string_list(cx, v, "`command`")?,
        None => vec!["python3".to_string(), "{file}".to_string()],
    };
    if command.is_empty() {
        invalid(cx, f.get("command").map_or(env.span, |v| v.span), "`command` is empty".into(), "e.g. [python3, \"{file}\"]");
    }
    let mut limits = Limits::default();
    if let Some(v) = f.get("limits") {
        let Value::Map(entries) = &v.value else {
            wrong_type(cx, v, "`limits`", "a mapping");
            return None;
        };
        for (k, val) in entries {
            let key = match &k.value {
                Value::Str(s) => s.as_str(),
                _ => "",
            };
            match key {
                "time" => limits.time = duration(cx, val, "`limits.time`")?,
                "memory" => limits.memory = size(cx, val, "`limits.memory`")?,
                "output" => limits.output = size(cx, val, "`limits.output`")? as usize,
                "processes" => limits.processes = ranged(cx, val, "`limits.processes`", 1, 4096)?,
                other => {
                    let mut d = Diagnostic::new(
                        Code::UnknownKey,
                        k.span,
                        format!("unknown key `{other}` in `limits` of {}", env.label),
                    )
                    .label("not a key here");
                    d = d.help(format!("expected one of: {}", EXECUTE_LIMIT_KEYS.join(", ")));
                    cx.err(d);
                }
            }
        }
    }
    let isolation = match f.get("isolation") {
        Some(v) => isolation(cx, v)?,
        None => Isolation::Bubblewrap,
    };
    let parallel = match f.get("parallel") {
        Some(v) => ranged(cx, v, "`parallel`", 1, 64)? as usize,
        None => 2,
    };
    Some(ExecuteSpec {
        code: code?,
        tests,
        mode,
        command,
        file,
        limits,
        isolation,
        parallel,
    })
}

fn test_help(mode: TestMode) -> &'static str {
    match mode {
        TestMode::Stdio => "stdio tests are {input: \"...\", output: \"...\"}",
        TestMode::Assert => "assert tests are code strings, or {code: \"assert f(1) == 2\"}",
    }
}

fn tool(cx: &mut Ctx, f: &Fields, env: &Env) -> Option<ToolSpec> {
    let timeout = match f.get("timeout") {
        Some(v) => duration(cx, v, "`timeout`")?,
        None => Duration::from_secs(10),
    };
    let max_output = match f.get("max_output") {
        Some(v) => size(cx, v, "`max_output`")? as usize,
        None => 2048,
    };
    let action = match (f.get("command"), f.get("http")) {
        (Some(_), Some(h)) => {
            invalid(cx, h.span, format!("{} has both `command` and `http`", env.label), "a tool is one command or one HTTP endpoint");
            return None;
        }
        (Some(c), None) => {
            let parts = string_list(cx, c, "`command`")?;
            if parts.is_empty() {
                invalid(cx, c.span, "`command` is empty".into(), "e.g. [\"./weather\", \"--city\", \"{{ query.city }}\"]");
                return None;
            }
            let mut argv = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                argv.push(inline(cx, env, &format!("command.{i}"), part, c.span, &[])?);
            }
            let stdin = match f.get("stdin") {
                Some(v) => Some(template(cx, v, env, "stdin", &[])?),
                None => None,
            };
            let isolation = match f.get("isolation") {
                Some(v) => isolation(cx, v)?,
                None => Isolation::None,
            };
            ToolAction::Command {
                argv,
                stdin,
                isolation,
            }
        }
        (None, Some(h)) => {
            let Value::Map(entries) = &h.value else {
                wrong_type(cx, h, "`http`", "a mapping");
                return None;
            };
            let mut url = None;
            let mut method = "POST".to_string();
            let mut body = None;
            let mut headers = Vec::new();
            for (k, v) in entries {
                let key = match &k.value {
                    Value::Str(s) => s.as_str(),
                    _ => "",
                };
                match key {
                    "url" => url = template(cx, v, env, "http.url", &[]),
                    "method" => {
                        let m = string(cx, v, "`http.method`")?.to_uppercase();
                        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()) {
                            invalid(cx, v.span, format!("unsupported method `{m}`"), "one of: GET, POST, PUT, PATCH, DELETE");
                            return None;
                        }
                        method = m;
                    }
                    "body" => body = Some(template(cx, v, env, "http.body", &[])?),
                    "headers" => {
                        let Value::Map(hs) = &v.value else {
                            wrong_type(cx, v, "`http.headers`", "a mapping");
                            return None;
                        };
                        for (hk, hv) in hs {
                            headers.push((string(cx, hk, "a header name")?, string(cx, hv, "a header value")?));
                        }
                    }
                    other => cx.err(
                        Diagnostic::new(Code::UnknownKey, k.span, format!("unknown key `{other}` in `http` of {}", env.label))
                            .label("not a key here")
                            .help(format!("expected one of: {}", TOOL_HTTP_KEYS.join(", "))),
                    ),
                }
            }
            let Some(url) = url else {
                cx.err(
                    Diagnostic::new(Code::MissingKey, h.span, format!("`http` of {} has no `url`", env.label))
                        .label("`url` is required"),
                );
                return None;
            };
            ToolAction::Http {
                method,
                url,
                body,
                headers,
            }
        }
        (None, None) => {
            cx.err(
                Diagnostic::new(Code::MissingKey, env.span, format!("{} has neither `command` nor `http`", env.label))
                    .label("a tool needs one")
                    .help("`command: [prog, arg, ...]` (no shell) or `http: {url: ..., body: ...}`"),
            );
            return None;
        }
    };
    Some(ToolSpec {
        action,
        timeout,
        max_output,
    })
}

// ---- typed readers -------------------------------------------------------

struct Fields<'a>(&'a [(&'static str, Node)]);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Node> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

fn required<'a>(cx: &mut Ctx, f: &'a Fields, key: &str, env: &Env) -> Option<&'a Node> {
    let v = f.get(key);
    if v.is_none() {
        cx.err(
            Diagnostic::new(Code::MissingKey, env.span, format!("{} has no `{key}`", env.label))
                .label(format!("`{key}` is required")),
        );
    }
    v
}

fn wrong_type(cx: &mut Ctx, v: &Node, what: &str, expected: &str) {
    cx.err(
        Diagnostic::new(
            Code::WrongType,
            v.span,
            format!("{what} must be {expected}, found {}", v.value.type_name()),
        )
        .label(format!("expected {expected}")),
    );
}

fn invalid(cx: &mut Ctx, span: Span, message: String, help: &str) {
    cx.err(
        Diagnostic::new(Code::InvalidValue, span, message)
            .label("invalid")
            .help(help.to_string()),
    );
}

fn string(cx: &mut Ctx, v: &Node, what: &str) -> Option<String> {
    match &v.value {
        Value::Str(s) => Some(s.clone()),
        _ => {
            wrong_type(cx, v, what, "a string");
            None
        }
    }
}

fn string_list(cx: &mut Ctx, v: &Node, what: &str) -> Option<Vec<String>> {
    match &v.value {
        Value::Seq(items) => items
            .iter()
            .map(|i| match &i.value {
                Value::Str(s) => Some(s.clone()),
                Value::Int(n) => Some(n.to_string()),
                Value::Float(n) => Some(n.to_string()),
                _ => {
                    wrong_type(cx, i, &format!("an item of {what}"), "a string");
                    None
                }
            })
            .collect(),
        _ => {
            wrong_type(cx, v, what, "a list of strings");
            None
        }
    }
}

fn ranged(cx: &mut Ctx, v: &Node, what: &str, min: u64, max: u64) -> Option<u64> {
    match v.value {
        Value::Int(i) if i >= 0 && (i as u64) >= min && (i as u64) <= max => Some(i as u64),
        Value::Int(i) => {
            invalid(cx, v.span, format!("{what} is {i}, outside {min}..={max}"), "pick a value in range");
            None
        }
        _ => {
            wrong_type(cx, v, what, "an integer");
            None
        }
    }
}

fn duration(cx: &mut Ctx, v: &Node, what: &str) -> Option<Duration> {
    let parsed = match &v.value {
        Value::Str(s) => parse_duration(s),
        Value::Int(i) if *i >= 0 => Some(Duration::from_secs(*i as u64)),
        Value::Float(f) if *f >= 0.0 && f.is_finite() => Duration::try_from_secs_f64(*f).ok(),
        _ => None,
    };
    match parsed {
        Some(d) if !d.is_zero() => Some(d),
        _ => {
            invalid(cx, v.span, format!("{what} is not a positive duration"), "e.g. 500ms, 2s, 1m");
            None
        }
    }
}

/// Bytes: an integer, or a number with a unit (`64KiB`, `256MiB`, `1GiB`, `KB`, `MB`, `GB`).
fn size(cx: &mut Ctx, v: &Node, what: &str) -> Option<u64> {
    let parsed = match &v.value {
        Value::Int(i) if *i > 0 => Some(*i as u64),
        Value::Str(s) => parse_size(s),
        _ => None,
    };
    if parsed.is_none() {
        invalid(cx, v.span, format!("{what} is not a positive size"), "bytes, or e.g. 64KiB, 256MiB, 1GiB");
    }
    parsed
}

pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = (s[..split].trim(), s[split..].trim());
    let value: f64 = num.parse().ok()?;
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => return None,
    };
    let bytes = value * scale;
    (bytes.is_finite() && bytes >= 1.0 && bytes < 1e15).then_some(bytes as u64)
}

fn isolation(cx: &mut Ctx, v: &Node) -> Option<Isolation> {
    match string(cx, v, "`isolation`")?.as_str() {
        "sandbox" => Some(Isolation::Bubblewrap),
        "none" => Some(Isolation::None),
        other => {
            invalid(cx, v.span, format!("unknown isolation `{other}`"), "`sandbox` (bubblewrap namespaces) or `none` (explicit opt-out)");
            None
        }
    }
}

fn node_ref(cx: &mut Ctx, v: &Node, env: &Env) -> Option<usize> {
    let name = string(cx, v, "`from`")?;
    (env.resolve)(cx, &Spanned { value: name, span: v.span }, "`from`")
}

fn inline(cx: &mut Ctx, env: &Env, key: &str, source: &str, span: Span, extra: &'static [&'static str]) -> Option<String> {
    let name = cx.inline(format!("{}.{key}", env.id), source, span, &format!("`{key}` of {}", env.label))?;
    cx.pending_vars.push(VarCheck {
        source: VarSource::Template(name.clone()),
        node: env.idx,
        span,
        extra,
        what: format!("`{key}` of {}", env.label),
    });
    Some(name)
}

fn template(cx: &mut Ctx, v: &Node, env: &Env, key: &str, extra: &'static [&'static str]) -> Option<String> {
    let source = string(cx, v, &format!("`{key}`"))?;
    inline(cx, env, key, &source, v.span, extra)
}

fn expression(cx: &mut Ctx, v: &Node, env: &Env, what: &str, extra: &'static [&'static str]) -> Option<String> {
    let expr = string(cx, v, what)?;
    let before = cx.diags.len();
    check_expression(cx, &expr, v.span, env.idx, extra, &format!("{what} of {}", env.label));
    (cx.diags.len() == before).then_some(expr)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("256 MiB"), Some(256 << 20));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("-5MiB"), None);
    }
}
