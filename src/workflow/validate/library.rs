//! The second pass for the node-library kinds: execute, extract, tool,
//! embed, cluster and human_review, one module each. The first pass checked
//! the keys; the builders check types and values, compile templates and
//! expressions, and resolve node and model names, with the helpers here
//! (one way to read a key of each type).

pub(crate) mod cluster;
pub(crate) mod embed;
pub(crate) mod execute;
pub(crate) mod extract;
pub(crate) mod human_review;
pub(crate) mod tool;

use std::time::Duration;

use super::{Ctx, VarCheck, VarSource, check_expression, unknown_name};
use crate::diagnostic::{Code, Diagnostic};
use crate::sandbox::{Isolation, Limits};
use crate::units::{parse_duration, parse_size};
use crate::workflow::model::*;
use crate::workflow::raw::{
    self, EXECUTE_LIMIT_KEYS, RawBody, RawNode, Spanned, TOOL_HTTP_KEYS, unknown_key,
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

/// A library kind's build: its keys were kept by pass 1
/// (`RawBody::Keys`) and are read here by the kind's `read`.
fn build<T>(
    cx: &mut Ctx,
    n: &RawNode,
    env: &Env,
    read: fn(&mut Ctx, &Fields, &Env) -> Read<T>,
    wrap: fn(T) -> NodeKind,
) -> Option<NodeKind> {
    let RawBody::Keys(keys) = &n.body else {
        return None;
    };
    read(cx, &Fields(keys), env).map(wrap).ok()
}

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
