//! The second pass for the node-library kinds: execute, extract, tool,
//! embed, cluster and human_review. The first pass checked the keys; this
//! one checks types and values, compiles templates and expressions, and
//! resolves node and model names.

use std::time::Duration;

use super::{Ctx, VarCheck, VarSource, check_expression, unknown_name};
use crate::diagnostic::{Code, Diagnostic};
use crate::sandbox::{Isolation, Limits};
use crate::units::{parse_duration, parse_size};
use crate::workflow::model::*;
use crate::workflow::raw::{
    self, EXECUTE_LIMIT_KEYS, RawNode, Spanned, TOOL_HTTP_KEYS, unknown_key,
};
use crate::yaml::{Node, Span, Value};

/// Resolves a node name to its index, reporting an unknown one.
pub(crate) type ResolveNode<'a> = &'a dyn Fn(&mut Ctx, &Spanned<String>, &str) -> Option<usize>;

/// What the builders need from the surrounding pass.
pub(crate) struct Env<'a> {
    pub idx: usize,
    pub id: &'a str,
    pub label: &'a str,
    pub span: Span,
    pub model_names: &'a [&'a str],
    pub models: &'a [ModelDecl],
    pub resolve: ResolveNode<'a>,
}

/// `item` is bound in embed's `text`; `sample` in vote's `weight`.
const ITEM_VAR: &[&str] = &["item"];

/// Reported already: the node cannot be built, but reading goes on so that
/// every problem is reported at once.
struct Reported;

type Read<T> = Result<T, Reported>;

/// An optional key: `Ok(None)` when absent.
fn optional<T>(v: Option<&Node>, parse: impl FnOnce(&Node) -> Option<T>) -> Read<Option<T>> {
    match v {
        None => Ok(None),
        Some(v) => parse(v).map(Some).ok_or(Reported),
    }
}

fn must<T>(v: Option<T>) -> Read<T> {
    v.ok_or(Reported)
}

/// The library kinds' builders: their keys were kept by pass 1
/// (`RawNode::library`) and are read here.
macro_rules! builders {
    ($($name:ident => $read:ident, $variant:ident;)*) => {$(
        pub(crate) fn $name(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
            $read(cx, &Fields(&n.library), env).map(NodeKind::$variant).ok()
        }
    )*};
}

builders! {
    execute_node => execute, Execute;
    extract_node => extract, Extract;
    tool_node => tool, Tool;
    embed_node => embed, Embed;
    cluster_node => cluster, Cluster;
    human_review_node => review, HumanReview;
}

fn extract(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ExtractSpec> {
    let from = optional(f.get("from"), |v| node_ref(cx, v, env));
    let functions = optional(f.get("language"), |v| {
        match string(cx, v, "`language`")?.as_str() {
            "python" => Some(true),
            "none" => Some(false),
            other => {
                invalid(
                    cx,
                    v.span,
                    format!("unsupported language `{other}`"),
                    "one of: python, none",
                );
                None
            }
        }
    });
    Ok(ExtractSpec {
        from: from?,
        functions: functions?.unwrap_or(true),
    })
}

fn embed(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<EmbedSpec> {
    let items = must(required(cx, f, "items", env))
        .and_then(|v| must(expression(cx, v, env, "`items`", &[])));
    let text = optional(f.get("text"), |v| template(cx, v, env, "text", ITEM_VAR));
    let model = optional(f.get("model"), |v| {
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
        }
        found
    });
    let dims = optional(f.get("dims"), |v| ranged(cx, v, "`dims`", 1, 1 << 16));
    Ok(EmbedSpec {
        items: items?,
        text: text?,
        model: model?,
        dims: dims?.map_or(512, |d| d as usize),
    })
}

fn cluster(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ClusterSpec> {
    let from = must(required(cx, f, "from", env)).and_then(|v| must(node_ref(cx, v, env)));
    let k = must(required(cx, f, "k", env)).and_then(|v| match &v.value {
        Value::Str(_) => must(expression(cx, v, env, "`k`", &[])).map(ClusterK::Expr),
        _ => must(ranged(cx, v, "`k`", 1, 10_000)).map(|k| ClusterK::Fixed(k as usize)),
    });
    let seed = optional(f.get("seed"), |v| {
        ranged(cx, v, "`seed`", 0, i64::MAX as u64)
    });
    Ok(ClusterSpec {
        from: from?,
        k: k?,
        seed: seed?.unwrap_or(0),
    })
}

fn review(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ReviewSpec> {
    let before = must(required(cx, f, "before", env))
        .and_then(|v| must(template(cx, v, env, "before", &[])));
    let after = match f.get("after") {
        Some(v) => must(template(cx, v, env, "after", &[])),
        None => must(inline(
            cx,
            env,
            "after",
            "{{ artifact.text }}",
            env.span,
            &[],
        )),
    };
    let decisions = optional(f.get("decisions"), |v| {
        Some(match string(cx, v, "`decisions`")?.as_str() {
            "ask" => ReviewDecisions::Ask,
            "accept_all" => ReviewDecisions::AcceptAll,
            "reject_all" => ReviewDecisions::RejectAll,
            path => {
                let full = cx.base_dir.join(path);
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
        })
    });
    Ok(ReviewSpec {
        before: before?,
        after: after?,
        decisions: decisions?,
    })
}

fn execute(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ExecuteSpec> {
    let code = match f.get("code") {
        Some(v) => must(template(cx, v, env, "code", &[])),
        None => must(inline(
            cx,
            env,
            "code",
            "{{ artifact.text }}",
            env.span,
            &[],
        )),
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

fn tool(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ToolSpec> {
    let timeout = optional(f.get("timeout"), |v| duration(cx, v, "`timeout`"));
    let max_output = optional(f.get("max_output"), |v| size(cx, v, "`max_output`"));
    let action = match (f.get("command"), f.get("http")) {
        (Some(c), Some(h)) => {
            // Still check both, then refuse the pair.
            let _ = command_action(cx, f, env, c);
            let _ = http_action(cx, env, h);
            invalid(
                cx,
                h.span,
                format!("{} has both `command` and `http`", env.label),
                "a tool is one command or one HTTP endpoint",
            );
            Err(Reported)
        }
        (Some(c), None) => command_action(cx, f, env, c),
        (None, Some(h)) => http_action(cx, env, h),
        (None, None) => {
            cx.err(
                Diagnostic::new(
                    Code::MissingKey,
                    env.span,
                    format!("{} has neither `command` nor `http`", env.label),
                )
                .label("a tool needs one")
                .help("`command: [prog, arg, ...]` (no shell) or `http: {url: ..., body: ...}`"),
            );
            Err(Reported)
        }
    };
    Ok(ToolSpec {
        action: action?,
        timeout: timeout?.unwrap_or(Duration::from_secs(10)),
        max_output: max_output?.map_or(2048, |m| m as usize),
    })
}

fn command_action(cx: &mut Ctx, f: &Fields, env: &Env, c: &Node) -> Read<ToolAction> {
    let parts = must(string_list(cx, c, "`command`"))?;
    if parts.is_empty() {
        invalid(
            cx,
            c.span,
            "`command` is empty".into(),
            "e.g. [\"./weather\", \"--city\", \"{{ query.city }}\"]",
        );
        return Err(Reported);
    }
    let mut argv = Vec::new();
    let mut ok = true;
    for (i, part) in parts.iter().enumerate() {
        match inline(cx, env, &format!("command.{i}"), part, c.span, &[]) {
            Some(name) => argv.push(name),
            None => ok = false,
        }
    }
    let stdin = optional(f.get("stdin"), |v| template(cx, v, env, "stdin", &[]));
    let isolation = optional(f.get("isolation"), |v| isolation(cx, v));
    if !ok {
        return Err(Reported);
    }
    Ok(ToolAction::Command {
        argv,
        stdin: stdin?,
        isolation: isolation?.unwrap_or(Isolation::None),
    })
}

fn http_action(cx: &mut Ctx, env: &Env, h: &Node) -> Read<ToolAction> {
    let Value::Map(entries) = &h.value else {
        wrong_type(cx, h, "`http`", "a mapping");
        return Err(Reported);
    };
    let mut url = None;
    let mut method = "POST".to_string();
    let mut body = None;
    let mut headers = Vec::new();
    let mut ok = true;
    for (k, v) in entries {
        let key = match &k.value {
            Value::Str(s) => s.as_str(),
            _ => "",
        };
        match key {
            "url" => {
                url = template(cx, v, env, "http.url", &[]);
                ok &= url.is_some();
            }
            "method" => match string(cx, v, "`http.method`").map(|m| m.to_uppercase()) {
                Some(m) if ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()) => {
                    method = m
                }
                Some(m) => {
                    invalid(
                        cx,
                        v.span,
                        format!("unsupported method `{m}`"),
                        "one of: GET, POST, PUT, PATCH, DELETE",
                    );
                    ok = false;
                }
                None => ok = false,
            },
            "body" => {
                body = template(cx, v, env, "http.body", &[]);
                ok &= body.is_some();
            }
            "headers" => {
                let Value::Map(hs) = &v.value else {
                    wrong_type(cx, v, "`http.headers`", "a mapping");
                    ok = false;
                    continue;
                };
                for (hk, hv) in hs {
                    match (
                        string(cx, hk, "a header name"),
                        string(cx, hv, "a header value"),
                    ) {
                        (Some(k), Some(v)) => headers.push((k, v)),
                        _ => ok = false,
                    }
                }
            }
            other => {
                cx.err(unknown_key(
                    k.span,
                    other,
                    &format!("`http` of {}", env.label),
                    TOOL_HTTP_KEYS,
                ));
                ok = false;
            }
        }
    }
    let Some(url) = url else {
        if !entries
            .iter()
            .any(|(k, _)| matches!(&k.value, Value::Str(s) if s == "url"))
        {
            cx.err(
                Diagnostic::new(
                    Code::MissingKey,
                    h.span,
                    format!("`http` of {} has no `url`", env.label),
                )
                .label("`url` is required"),
            );
        }
        return Err(Reported);
    };
    if !ok {
        return Err(Reported);
    }
    Ok(ToolAction::Http {
        method,
        url,
        body,
        headers,
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
            Diagnostic::new(
                Code::MissingKey,
                env.span,
                format!("{} has no `{key}`", env.label),
            )
            .label(format!("`{key}` is required")),
        );
    }
    v
}

fn wrong_type(cx: &mut Ctx, v: &Node, what: &str, expected: &str) {
    cx.err(raw::wrong_type(v, what, expected));
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
            invalid(
                cx,
                v.span,
                format!("{what} is {i}, outside {min}..={max}"),
                "pick a value in range",
            );
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
            invalid(
                cx,
                v.span,
                format!("{what} is not a positive duration"),
                "e.g. 500ms, 2s, 1m",
            );
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
        invalid(
            cx,
            v.span,
            format!("{what} is not a positive size"),
            "bytes, or e.g. 64KiB, 256MiB, 1GiB",
        );
    }
    parsed
}

fn isolation(cx: &mut Ctx, v: &Node) -> Option<Isolation> {
    match string(cx, v, "`isolation`")?.as_str() {
        "sandbox" => Some(Isolation::Bubblewrap),
        "none" => Some(Isolation::None),
        other => {
            invalid(
                cx,
                v.span,
                format!("unknown isolation `{other}`"),
                "`sandbox` (bubblewrap namespaces) or `none` (explicit opt-out)",
            );
            None
        }
    }
}

fn node_ref(cx: &mut Ctx, v: &Node, env: &Env) -> Option<usize> {
    let name = string(cx, v, "`from`")?;
    (env.resolve)(
        cx,
        &Spanned {
            value: name,
            span: v.span,
        },
        "`from`",
    )
}

fn inline(
    cx: &mut Ctx,
    env: &Env,
    key: &str,
    source: &str,
    span: Span,
    extra: &'static [&'static str],
) -> Option<String> {
    let name = cx.inline(
        format!("{}.{key}", env.id),
        source,
        span,
        &format!("`{key}` of {}", env.label),
    )?;
    cx.pending_vars.push(VarCheck {
        source: VarSource::Template(name.clone()),
        node: env.idx,
        span,
        extra,
        what: format!("`{key}` of {}", env.label),
    });
    Some(name)
}

fn template(
    cx: &mut Ctx,
    v: &Node,
    env: &Env,
    key: &str,
    extra: &'static [&'static str],
) -> Option<String> {
    let source = string(cx, v, &format!("`{key}`"))?;
    inline(cx, env, key, &source, v.span, extra)
}

fn expression(
    cx: &mut Ctx,
    v: &Node,
    env: &Env,
    what: &str,
    extra: &'static [&'static str],
) -> Option<String> {
    let expr = string(cx, v, what)?;
    let before = cx.diags.len();
    check_expression(
        cx,
        &expr,
        v.span,
        env.idx,
        extra,
        &format!("{what} of {}", env.label),
    );
    (cx.diags.len() == before).then_some(expr)
}
