//! `tool`: a command or an HTTP request.

use super::*;

/// The kind's own keys (besides `id`, `kind`, `budget`).
pub(crate) const KEYS: &[&str] = &[
    "command",
    "stdin",
    "http",
    "timeout",
    "max_output",
    "isolation",
];

/// The kind's builder (named in the kinds table).
pub(crate) fn build(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
    super::build(cx, n, env, tool, NodeKind::Tool)
}

pub(super) fn tool(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ToolSpec> {
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
