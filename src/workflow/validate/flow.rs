//! Edges, loops (with their acceptance rules) and the output: how control flows.

use super::*;

/// Forward edges. Invariant: both ends resolve and a condition compiles.
/// An edge whose source is unknown may, once fixed, lead to its target:
/// that target (and what follows it) is returned as `dangling`, not to be
/// reported as unreachable or as reading nodes that are not upstream.
pub(super) fn edges_pass(
    cx: &mut Ctx,
    raw: &RawWorkflow,
    ids: &NodeIds,
    resolve: library::ResolveNode,
) -> (Vec<Edge>, Vec<Span>, Vec<usize>) {
    let node_ids = &ids.ids;
    let mut edges = Vec::new();
    let mut edge_spans = Vec::new();
    let mut dangling = Vec::new();
    for e in &raw.edges {
        let from = e.from.as_ref().and_then(|f| resolve(cx, f, "edge source"));
        let to = e.to.as_ref().and_then(|t| resolve(cx, t, "edge target"));
        match (from, to) {
            (None, Some(to)) => dangling.push(to),
            // A misspelt target most likely meant the closest node id; with
            // none close, it could be any node.
            (Some(_), None) => match e
                .to
                .as_ref()
                .and_then(|t| did_you_mean(&t.value, ids.refs()))
            {
                Some(meant) => dangling.extend(node_ids.iter().position(|id| id == meant)),
                None => dangling.extend(0..node_ids.len()),
            },
            _ => {}
        }
        if let (Some(from), Some(to)) = (from, to) {
            if let Some(w) = &e.when {
                check_expression(cx, &w.value, w.span, from, &[], "the edge condition");
            }
            edges.push(Edge {
                from,
                to,
                when: e.when.as_ref().map(|w| w.value.clone()),
            });
            edge_spans.push(e.span);
        }
    }

    (edges, edge_spans, dangling)
}

/// Loops. Invariant: ids are unique, both ends resolve, stop rules and
/// limits are in range and compile. Bodies are computed by the graph pass.
pub(super) fn loops_pass(
    cx: &mut Ctx,
    raw: &RawWorkflow,
    resolve: library::ResolveNode,
    nodes: &[Option<NodeSpec>],
) -> (Vec<LoopSpec>, Vec<Span>) {
    let mut loops = Vec::new();
    let mut loop_spans = Vec::new();
    let mut loop_ids: HashMap<&str, Span> = HashMap::new();
    for l in &raw.loops {
        let from = l
            .from
            .as_ref()
            .and_then(|f| resolve(cx, f, "loop back edge source"));
        let to = l.to.as_ref().and_then(|t| resolve(cx, t, "loop head"));
        if let Some(id) = &l.id {
            if let Some(first) = loop_ids.get(id.value.as_str()) {
                cx.err(
                    Diagnostic::new(
                        Code::DuplicateId,
                        id.span,
                        format!("loop `{}` is declared twice", id.value),
                    )
                    .label("duplicate")
                    .also(*first, "first declared here"),
                );
            } else {
                loop_ids.insert(&id.value, id.span);
            }
        }
        let what =
            l.id.as_ref()
                .map_or("a loop".into(), |i| format!("loop `{}`", i.value));
        let max_rounds = match &l.max_rounds {
            Some(m) if m.value == 0 => {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        m.span,
                        format!("{what}: `max_rounds` must be at least 1"),
                    )
                    .label("zero rounds"),
                );
                1
            }
            Some(m) => m.value.min(u32::MAX as u64) as u32,
            None => 1,
        };
        if let (Some(u), Some(from)) = (&l.until, from) {
            check_expression(
                cx,
                &u.value,
                u.span,
                from,
                &[],
                &format!("`until` of {what}"),
            );
        }
        let converge = l.converge.as_ref().map(|c| {
            if let Some(from) = from {
                check_expression(
                    cx,
                    &c.score.value,
                    c.score.span,
                    from,
                    &[],
                    &format!("`converge.score` of {what}"),
                );
            }
            let patience = match &c.patience {
                Some(p) if p.value == 0 => {
                    cx.err(
                        Diagnostic::new(
                            Code::InvalidValue,
                            p.span,
                            "`patience` must be at least 1",
                        )
                        .label("zero"),
                    );
                    1
                }
                Some(p) => p.value.min(u32::MAX as u64) as u32,
                None => 1,
            };
            Converge {
                score: c.score.value.clone(),
                patience,
                min_delta: c.min_delta.unwrap_or(0.0),
            }
        });
        let budget = cx.limits(&l.budget, &format!("the budget of {what}"));
        let metrics = LoopMetrics {
            answer: l.metrics_answer.as_ref().and_then(|r| answer_rule(cx, r)),
            gold: l.metrics_gold.as_ref().and_then(|g| {
                let name = format!(
                    "{}.metrics.gold",
                    l.id.as_ref().map_or("loop", |i| i.value.as_str())
                );
                let compiled =
                    cx.inline(name, &g.value, g.span, &format!("`metrics.gold` of {what}"))?;
                if let Some(from) = from {
                    cx.pending_vars.push(VarCheck {
                        source: VarSource::Template(compiled.clone()),
                        node: from,
                        span: g.span,
                        extra: &[],
                        what: format!("`metrics.gold` of {what}"),
                    });
                }
                Some(compiled)
            }),
        };
        let accept = l
            .accept
            .as_ref()
            .and_then(|a| accept_rule(cx, a, from, to, nodes, &metrics, &what));
        if let (Some(from), Some(to), Some(id)) = (from, to, &l.id) {
            loops.push(LoopSpec {
                id: id.value.clone(),
                from,
                to,
                max_rounds,
                until: l.until.as_ref().map(|u| u.value.clone()),
                converge,
                budget,
                round_tokens: l.round_tokens.as_ref().map(|r| r.value),
                metrics,
                accept,
                body: Vec::new(),
            });
            loop_spans.push(l.span);
        }
    }

    (loops, loop_spans)
}

/// A loop's `accept`. Invariant: the head is a verify node (its verdict
/// is what a rule compares), expressions parse and read known names, the
/// margins are in [0, 1], and `answer_change` has an answer pattern.
pub(super) fn accept_rule(
    cx: &mut Ctx,
    a: &RawAccept,
    from: Option<usize>,
    to: Option<usize>,
    nodes: &[Option<NodeSpec>],
    metrics: &LoopMetrics,
    what: &str,
) -> Option<Accept> {
    if let Some(head) = to.and_then(|t| nodes[t].as_ref()) {
        if !head.kind.is_verdict() {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    a.span,
                    format!(
                        "{what}: `accept` compares the head's verdicts, but its head `{}` is a {} node",
                        head.id,
                        head.kind.name()
                    ),
                )
                .label("needs a verify node as the loop head")
                .help("make the loop run `to` a verify node that judges the revision"),
            );
        }
    }
    let rule = |cx: &mut Ctx, r: &Spanned<String>, key: &str| match r.value.trim() {
        "always" => Some(AcceptRule::Always),
        "improved" => Some(AcceptRule::Improved),
        "verified" => Some(AcceptRule::Verified),
        expr => {
            let from = from?;
            check_expression(
                cx,
                expr,
                r.span,
                from,
                &["revision"],
                &format!("`accept.{key}` of {what}"),
            );
            Some(AcceptRule::Expression(expr.to_string()))
        }
    };
    let when = a.when.as_ref().and_then(|w| rule(cx, w, "when"))?;
    let answer_change = a
        .answer_change
        .as_ref()
        .and_then(|w| rule(cx, w, "answer_change"));
    let margin = |cx: &mut Ctx, m: Option<&Spanned<f64>>, key: &str| {
        let m = m?;
        if !(0.0..=1.0).contains(&m.value) {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    m.span,
                    format!("{what}: `accept.{key}` must be between 0 and 1 (scores are)"),
                )
                .label("out of range"),
            );
        }
        Some(m.value.clamp(0.0, 1.0))
    };
    let base = margin(cx, a.margin.as_ref(), "margin").unwrap_or(0.0);
    let change_margin = margin(cx, a.answer_change_margin.as_ref(), "answer_change_margin");
    let answer = a
        .answer
        .as_ref()
        .and_then(|r| answer_rule(cx, r))
        .or_else(|| metrics.answer.clone());
    if (a.answer_change.is_some() || a.answer_change_margin.is_some()) && answer.is_none() {
        cx.err(
            Diagnostic::new(
                Code::MissingKey,
                a.span,
                format!("{what}: `accept.answer_change` needs the final answer's pattern"),
            )
            .label("no `accept.answer` or `metrics.answer`")
            .help("add `answer: 'answer is:? *(-?[0-9.,]+)'` (first capture group) to `accept`"),
        );
    }
    Some(Accept {
        rule: when,
        margin: base,
        answer,
        answer_change,
        answer_change_margin: change_margin,
    })
}

/// The output. Invariant: it names at least one node, every name resolves,
/// and the selection is known.
pub(super) fn output_pass(
    cx: &mut Ctx,
    raw: &RawWorkflow,
    resolve: library::ResolveNode,
) -> Option<OutputSpec> {
    match &raw.output {
        None => {
            cx.err(Diagnostic::new(Code::BadOutput, raw.span, "the workflow has no `output`").label("`output` is required").help("name the nodes whose results are the answer, e.g. `output: {from: [draft, revise]}`"));
            None
        }
        Some(o) if o.from.is_empty() => {
            cx.err(
                Diagnostic::new(Code::BadOutput, o.span, "`output` names no node")
                    .label("empty output")
                    .help("list the nodes whose results are the answer in `from`"),
            );
            None
        }
        Some(o) => {
            let from: Vec<usize> = o
                .from
                .iter()
                .filter_map(|f| resolve(cx, f, "output"))
                .collect();
            let select = match o.select.as_ref().map(|s| s.value.as_str()) {
                None | Some("best") => Selection::Best,
                Some("latest") => Selection::Latest,
                Some(other) => {
                    let span = o.select.as_ref().map_or(o.span, |s| s.span);
                    cx.err(
                        Diagnostic::new(
                            Code::InvalidValue,
                            span,
                            format!("unknown output selection `{other}`"),
                        )
                        .label("invalid")
                        .help("one of: best, latest"),
                    );
                    Selection::Best
                }
            };
            (from.len() == o.from.len()).then(|| OutputSpec {
                from,
                field: o
                    .field
                    .as_ref()
                    .map_or("text".to_string(), |f| f.value.clone()),
                select,
            })
        }
    }
}
