//! Conversations: which model calls continue which, and what that needs.

use super::*;

/// `continue: NODE` on a model call: resolves the node and checks that its
/// conversation exists when the call is made (a generate, critique or
/// revise node upstream by forward edges) and that the call does not also
/// set a `system` message (the conversation has its own).
pub(super) fn conversation_checks(
    cx: &mut Ctx,
    raw: &RawWorkflow,
    nodes: &mut [Option<NodeSpec>],
    ids: &[String],
    edges: &[Edge],
    resolve: &Resolve<'_>,
) {
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); ids.len()];
    for e in edges {
        preds[e.to].push(e.from);
    }
    let upstream = |node: usize| closure(preds[node].clone(), &preds);
    for (idx, n) in raw.nodes.iter().enumerate() {
        for (check, call) in n.calls() {
            let Some(name) = &call.continues else {
                continue;
            };
            let reader = &ids[idx];
            if name.value == "artifact" {
                // Defined where `artifact` is: the variable checks hold it to
                // the same rule as reading `{{ artifact }}`.
                cx.pending_vars.push(VarCheck {
                    source: VarSource::Expression("artifact".into()),
                    node: idx,
                    span: name.span,
                    extra: &[],
                    what: "`continue: artifact`".into(),
                });
                if let Some(system) = &call.system {
                    cx.err(
                        Diagnostic::new(
                            Code::InvalidValue,
                            system.span,
                            format!("`{reader}` continues the artifact's conversation and also sets `system`"),
                        )
                        .label("a continued conversation keeps its own system message")
                        .help("remove `system`, or do not `continue`"),
                    );
                } else {
                    set_continue(nodes, idx, check, Continue::Artifact);
                }
                continue;
            }
            let Some(from) = resolve(cx, name, "`continue`") else {
                continue;
            };
            let is_model = matches!(
                nodes[from].as_ref().map(|s| &s.kind),
                Some(NodeKind::Generate(_) | NodeKind::Critique(_) | NodeKind::Revise(_))
            );
            let problem = if from == idx {
                Some((
                    "a node cannot continue its own conversation".to_string(),
                    "continue an upstream node's",
                ))
            } else if nodes[from].is_some() && !is_model {
                Some((
                    format!(
                        "`{}` is not a generate, critique or revise node: it has no conversation",
                        ids[from]
                    ),
                    "continue a model node",
                ))
            } else if !upstream(idx).contains(&from) {
                Some((
                    format!(
                        "`{reader}` can run before `{}`, whose conversation it continues",
                        ids[from]
                    ),
                    "add an edge path from it, so its conversation exists",
                ))
            } else if let Some(system) = &call.system {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        system.span,
                        format!(
                            "`{reader}` continues `{}`'s conversation and also sets `system`",
                            ids[from]
                        ),
                    )
                    .label("a continued conversation keeps its own system message")
                    .help("remove `system`, or do not `continue`"),
                );
                None
            } else {
                None
            };
            if let Some((message, help)) = problem {
                cx.err(
                    Diagnostic::new(Code::InvalidValue, name.span, message)
                        .label("no conversation to continue here")
                        .help(help),
                );
                continue;
            }
            set_continue(nodes, idx, check, Continue::Node(from));
        }
    }
}

/// Sets the resolved `continue` on node `idx`'s own call, or on its judge
/// check `check`.
pub(super) fn set_continue(
    nodes: &mut [Option<NodeSpec>],
    idx: usize,
    check: Option<usize>,
    to: Continue,
) {
    let Some(spec) = nodes[idx].as_mut() else {
        return;
    };
    let call = match (&mut spec.kind, check) {
        (NodeKind::Generate(c) | NodeKind::Critique(c) | NodeKind::Revise(c), None) => Some(c),
        (NodeKind::Verify(v), Some(ci)) => match v.checks.get_mut(ci) {
            Some(Check::Judge(c)) => Some(c),
            _ => None,
        },
        _ => None,
    };
    if let Some(c) = call {
        c.continues = Some(to);
    }
}
