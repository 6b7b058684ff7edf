//! Budgets: every limit leaves room for the calls it governs.

use super::*;

pub(super) fn budget_checks(
    cx: &mut Ctx,
    nodes: &[Option<NodeSpec>],
    models: &[ModelDecl],
    loops: &[LoopSpec],
    budget: &Limits,
    raw: &RawWorkflow,
) {
    for (i, node) in nodes.iter().enumerate() {
        let Some(node) = node else { continue };
        for call in node.kind.model_calls() {
            let max = call
                .sampling
                .max_tokens
                .unwrap_or(models[call.model].max_tokens) as u64;
            let worst = max * call.n as u64;
            let mut scopes: Vec<(String, Option<u64>, Span)> = vec![(
                "the workflow".into(),
                budget.tokens,
                raw.budget.as_ref().map_or(raw.span, |b| b.span),
            )];
            for l in loops.iter().filter(|l| l.body.contains(&i)) {
                let span = raw
                    .loops
                    .iter()
                    .find(|r| r.id.as_ref().is_some_and(|id| id.value == l.id))
                    .map_or(raw.span, |r| r.span);
                scopes.push((format!("loop `{}`", l.id), l.budget.tokens, span));
            }
            scopes.push((
                format!("node `{}`", node.id),
                node.budget.tokens,
                raw.nodes[i].span,
            ));
            for (scope, limit, span) in scopes {
                if let Some(limit) = limit {
                    if worst > limit {
                        cx.err(
                            Diagnostic::new(Code::BadBudget, span, format!("node `{}` may use {worst} completion tokens in one call, more than the {limit}-token budget of {scope}", node.id))
                                .label("no call of this node fits")
                                .help("raise the token limit or lower the node's `max_tokens` (or `n`)"),
                        );
                    }
                }
            }
        }
    }
}
