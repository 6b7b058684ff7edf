//! Variables: every name a template or condition reads is provided upstream.

use super::*;

/// Every variable a template or condition reads must exist where it is
/// read: an input, a built-in, or a node upstream. Attribute reads that the
/// validator can know are checked too: `inputs.<declared input>`,
/// `history.<node>`, `loop.<id|round|max_rounds|last>` only inside a loop,
/// and `<node>.<field>` where the node's output fields are known (`fields`).
pub(super) fn variable_checks(
    cx: &mut Ctx,
    g: &Resolved,
    loops: &[LoopSpec],
    fields: &[Option<Vec<String>>],
    inputs: &[InputDecl],
    output_from: &[usize],
) {
    let Resolved {
        ids,
        starts,
        edges,
        dangling,
        ..
    } = *g;
    // Ancestors over forward and back edges.
    let n = ids.len();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in edges {
        preds[e.to].push(e.from);
        succs[e.from].push(e.to);
    }
    for l in loops {
        preds[l.to].push(l.from);
    }
    // Nodes an unresolved edge may feed: their upstream is unknown.
    let uncertain = closure(dangling.to_vec(), &succs);
    // Where `artifact` (the latest output of an `output.from` node) is
    // defined from the first round on: downstream of one by forward edges.
    let artifact_ready = closure(output_from.to_vec(), &succs);
    // Nodes that never run are reported as unreachable, not as readers.
    let reached = closure(starts.iter().map(|s| s.0).collect(), &succs);
    let in_loop = |node: usize| loops.iter().any(|l| l.body.contains(&node));
    let pending = std::mem::take(&mut cx.pending_vars);
    for check in pending {
        let paths = match &check.source {
            VarSource::Template(name) => cx.templates.variable_paths(name),
            VarSource::Expression(e) => cx.templates.expression_paths(e),
        };
        let up = closure(preds[check.node].clone(), &preds);
        let reader = &ids[check.node];
        // Top-level variables, then the attributes read from each.
        let mut vars: Vec<String> = paths
            .iter()
            .map(|p| p.split('.').next().unwrap_or(p).to_string())
            .collect();
        vars.sort();
        vars.dedup();
        let mut attrs: Vec<(&str, &str)> = paths
            .iter()
            .filter_map(|p| {
                let mut parts = p.split('.');
                Some((parts.next()?, parts.next()?))
            })
            .collect();
        attrs.sort();
        attrs.dedup();
        for (var, attr) in attrs {
            let problem = match var {
                "inputs" if !inputs.iter().any(|i| i.name == attr) => {
                    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                    Some((format!("no input is named `{attr}`"), names))
                }
                "history" if !ids.iter().any(|id| id == attr) => Some((
                    format!("`history.{attr}` names no node"),
                    ids.iter()
                        .map(String::as_str)
                        .filter(|s| !s.starts_with('#'))
                        .collect(),
                )),
                "loop" if !LOOP_FIELDS.contains(&attr) => Some((
                    format!("loops have no field `{attr}`"),
                    LOOP_FIELDS.to_vec(),
                )),
                node => match ids
                    .iter()
                    .position(|id| id == node)
                    .and_then(|i| fields[i].as_ref())
                {
                    Some(known) if !known.iter().any(|f| f == attr) => {
                        let mut known: Vec<&str> = known.iter().map(String::as_str).collect();
                        known.sort_unstable();
                        Some((format!("`{node}` has no output field `{attr}`"), known))
                    }
                    _ => None,
                },
            };
            if let Some((label, known)) = problem {
                let d = Diagnostic::new(
                    Code::UnknownVariable,
                    check.span,
                    format!("{} reads `{var}.{attr}`, which does not exist", check.what),
                )
                .label(label);
                cx.err(match did_you_mean(attr, known.iter().copied()) {
                    Some(best) => d.help(format!("did you mean `{var}.{best}`?")),
                    None if known.is_empty() => d.help("there are none".to_string()),
                    None => d.help(format!("one of: {}", known.join(", "))),
                });
            }
        }
        for var in vars {
            if var == "loop" && !in_loop(check.node) {
                cx.err(
                    Diagnostic::new(
                        Code::UnknownVariable,
                        check.span,
                        format!(
                            "{} reads `loop`, but `{reader}` is in no loop",
                            check.what
                        ),
                    )
                    .label("`loop` is only defined inside a loop body")
                    .help("read `loop` only in nodes (and edges leaving nodes) of a loop body, or use `round`"),
                );
                continue;
            }
            if var == "artifact"
                && !output_from.is_empty()
                && reached.contains(&check.node)
                && !artifact_ready.contains(&check.node)
                && !uncertain.contains(&check.node)
            {
                let names: Vec<&str> = output_from.iter().map(|&o| ids[o].as_str()).collect();
                cx.err(
                    Diagnostic::new(
                        Code::UnknownVariable,
                        check.span,
                        format!(
                            "{} reads `artifact`, but `{reader}` can run before any output node ({})",
                            check.what,
                            names.join(", ")
                        ),
                    )
                    .label("`artifact` is undefined until an `output.from` node has run")
                    .help("list a node that runs before it in `output.from` (e.g. the first draft), or read that node directly (for a verify node: set `target`)"),
                );
                continue;
            }
            if BUILTINS.contains(&var.as_str())
                || check.extra.contains(&var.as_str())
                || inputs.iter().any(|i| i.name == var)
            {
                continue;
            }
            if let Some(pos) = ids.iter().position(|id| *id == var) {
                // A condition on an edge or loop may read its own source node.
                let own = matches!(check.source, VarSource::Expression(_)) && pos == check.node;
                if up.contains(&pos) || own || uncertain.contains(&check.node) {
                    continue;
                }
                cx.err(
                    Diagnostic::new(
                        Code::UnknownVariable,
                        check.span,
                        format!(
                            "{} reads `{var}`, which is not upstream of `{reader}`",
                            check.what
                        ),
                    )
                    .label(format!("`{var}` has not run yet here"))
                    .help(format!(
                        "add an edge path from `{var}` to `{reader}`, or read another node"
                    )),
                );
                continue;
            }
            let mut known: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            known.extend(up.iter().map(|&u| ids[u].as_str()));
            known.extend(
                BUILTINS
                    .iter()
                    .filter(|&&b| b != "loop" || in_loop(check.node)),
            );
            known.extend(check.extra);
            let d = Diagnostic::new(
                Code::UnknownVariable,
                check.span,
                format!(
                    "{} reads `{var}`, which no input or upstream node provides",
                    check.what
                ),
            )
            .label(format!("unknown variable `{var}`"));
            let d = match did_you_mean(&var, known.iter().copied()) {
                Some(best) => d.help(format!("did you mean `{best}`?")),
                None => d.help(format!("available here: {}", {
                    known.sort();
                    known.join(", ")
                })),
            };
            cx.err(d);
        }
    }
}

/// What `loop` has inside a loop body (see `engine::scheduler::loop_info`).
pub(super) const LOOP_FIELDS: &[&str] = &[
    "id",
    "round",
    "max_rounds",
    "last",
    "current",
    "rejected",
    "rejections",
];
