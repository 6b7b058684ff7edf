//! `human_review`: the texts before and after, and where decisions come from.

use super::*;

/// The kind's own keys (besides `id`, `kind`, `budget`).
pub(crate) const KEYS: &[&str] = &["before", "after", "decisions", "timeout"];

/// The kind's builder (named in the kinds table).
pub(crate) fn build(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
    super::build(cx, n, env, review, NodeKind::HumanReview)
}

pub(super) fn review(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ReviewSpec> {
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
    let timeout = optional(f.get("timeout"), |v| duration(cx, v, "`timeout`"));
    Ok(ReviewSpec {
        before: before?,
        after: after?,
        decisions: decisions?,
        timeout: timeout?,
    })
}
