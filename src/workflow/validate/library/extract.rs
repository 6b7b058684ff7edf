//! `extract`: code blocks and Python functions from replies.

use super::*;

/// The kind's own keys (besides `id`, `kind`, `budget`).
pub(crate) const KEYS: &[&str] = &["from", "language"];

/// The kind's builder (named in the kinds table).
pub(crate) fn build(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
    super::build(cx, n, env, extract, NodeKind::Extract)
}

pub(super) fn extract(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ExtractSpec> {
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
