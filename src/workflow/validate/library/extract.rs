//! `extract`: code blocks and Python functions from replies.

use super::*;

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
