//! The graph over the resolved names: cycles, loop bodies, starts, reachability.

use super::*;

/// Cycles, loop bodies, single entry, nesting, starts and reachability.
/// `ids` are all node ids (also of nodes whose keys failed); `dangling` are
/// nodes an unresolved edge may lead to, counted as reachable.
pub(super) fn graph_checks(cx: &mut Ctx, g: &Resolved, loops: &mut [LoopSpec]) -> Topology {
    let Resolved {
        ids,
        node_spans,
        starts,
        edges,
        edge_spans,
        loop_spans,
        dangling,
    } = *g;
    let n = ids.len();
    let mut g: DiGraph<usize, usize> = DiGraph::with_capacity(n, edges.len());
    let idx: Vec<NodeIndex> = (0..n).map(|i| g.add_node(i)).collect();
    for (ei, e) in edges.iter().enumerate() {
        g.add_edge(idx[e.from], idx[e.to], ei);
    }

    // Forward edges must be acyclic: every cycle needs a loop (stop rule).
    for scc in petgraph::algo::tarjan_scc(&g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let members: HashSet<usize> = scc.iter().map(|i| g[*i]).collect();
        // Blame the edge that points backwards in file order: the likely back edge.
        let inside = || {
            edges
                .iter()
                .enumerate()
                .filter(|(_, e)| members.contains(&e.from) && members.contains(&e.to))
        };
        let Some((ei, e)) = inside()
            .find(|(_, e)| e.to <= e.from)
            .or_else(|| inside().next())
        else {
            continue;
        };
        let mut names: Vec<&str> = members.iter().map(|&m| ids[m].as_str()).collect();
        names.sort();
        cx.err(
            Diagnostic::new(Code::UnboundedCycle, edge_spans[ei], format!("the edges between {} form a cycle with no stop rule", names.join(", ")))
                .label("this edge closes the cycle")
                .help(format!(
                    "remove this edge and declare it as a loop: `loops: [{{id: refine, from: {}, to: {}, max_rounds: 3}}]`",
                    ids[e.from], ids[e.to]
                )),
        );
    }

    let reach = |from: usize| -> HashSet<usize> {
        let mut seen = HashSet::new();
        let mut dfs = Dfs::new(&g, idx[from]);
        while let Some(x) = dfs.next(&g) {
            seen.insert(g[x]);
        }
        seen
    };
    let reached_by = |to: usize| -> HashSet<usize> {
        let rev = Reversed(&g);
        let mut seen = HashSet::new();
        let mut dfs = Dfs::new(rev, idx[to]);
        while let Some(x) = dfs.next(rev) {
            seen.insert(g[x]);
        }
        seen
    };

    // Loop bodies: nodes on a path from the head to the back edge's source.
    for (li, l) in loops.iter_mut().enumerate() {
        let down = reach(l.to);
        if !down.contains(&l.from) {
            cx.err(
                Diagnostic::new(Code::BadLoop, loop_spans[li], format!("loop `{}`: `{}` cannot be reached from `{}`, so `{} -> {}` closes no cycle", l.id, ids[l.from], ids[l.to], ids[l.from], ids[l.to]))
                    .label("not a back edge")
                    .help("a loop's `to` is its head; `from` is the last node of its body, reachable from the head by edges"),
            );
            continue;
        }
        let up = reached_by(l.from);
        let mut body: Vec<usize> = down.intersection(&up).copied().collect();
        body.sort_unstable();
        l.body = body;
    }
    // Single entry: edges from outside a body may only enter at its head.
    for (li, l) in loops.iter().enumerate() {
        if l.body.is_empty() {
            continue;
        }
        for (ei, e) in edges.iter().enumerate() {
            if l.body.contains(&e.to) && !l.body.contains(&e.from) && e.to != l.to {
                cx.err(
                    Diagnostic::new(
                        Code::BadLoop,
                        edge_spans[ei],
                        format!(
                            "edge `{} -> {}` enters loop `{}` at `{}`, not at its head `{}`",
                            ids[e.from], ids[e.to], l.id, ids[e.to], ids[l.to]
                        ),
                    )
                    .label("enters the loop body")
                    .help("a loop is entered only through its head; route this edge to the head"),
                );
            }
        }
        // Nesting: bodies are disjoint or nested.
        for (lj, other) in loops.iter().enumerate().skip(li + 1) {
            let a: HashSet<_> = l.body.iter().collect();
            let b: HashSet<_> = other.body.iter().collect();
            let inter = a.intersection(&b).count();
            if inter > 0 && inter != a.len() && inter != b.len() {
                cx.err(
                    Diagnostic::new(
                        Code::BadLoop,
                        loop_spans[lj],
                        format!(
                            "loops `{}` and `{}` overlap without one containing the other",
                            l.id, other.id
                        ),
                    )
                    .label("overlapping loop")
                    .also(loop_spans[li], "the other loop")
                    .help("loops must be disjoint or nested"),
                );
            }
            if l.from == other.from && l.to == other.to {
                cx.err(
                    Diagnostic::new(
                        Code::BadLoop,
                        loop_spans[lj],
                        format!(
                            "loops `{}` and `{}` have the same back edge",
                            l.id, other.id
                        ),
                    )
                    .label("duplicate back edge")
                    .also(loop_spans[li], "the same back edge"),
                );
            }
        }
    }

    let start_ids: Vec<usize> = starts.iter().map(|s| s.0).collect();
    let start_names = start_ids
        .iter()
        .map(|&s| ids[s].as_str())
        .collect::<Vec<_>>()
        .join(", ");
    for &(s, span) in starts {
        if let Some(e) = edges.iter().find(|e| e.to == s) {
            cx.err(
                Diagnostic::new(Code::NoStart, span, format!("start node `{}` has an incoming edge from `{}`", ids[s], ids[e.from]))
                    .label("start node with an input")
                    .help("a start node runs first, with no inputs; make the edge a loop back edge, or start elsewhere"),
            );
        }
    }
    let mut reached = HashSet::new();
    for &s in start_ids.iter().chain(dangling) {
        reached.extend(reach(s));
    }
    for (i, id) in ids.iter().enumerate() {
        if reached.contains(&i) {
            continue;
        }
        let orphan = !edges.iter().any(|e| e.to == i);
        let d = if orphan {
            Diagnostic::new(
                Code::Unreachable,
                node_spans[i],
                format!("node `{id}` has no incoming edge and is not a start node"),
            )
            .label("never runs")
            .help(format!(
                "add an edge to it, or list it under `start:` (start nodes: {start_names})"
            ))
        } else {
            Diagnostic::new(
                Code::Unreachable,
                node_spans[i],
                format!("node `{id}` cannot be reached from a start node"),
            )
            .label("never runs")
            .help(format!("start nodes: {start_names}"))
        };
        cx.err(d);
    }

    // Adjacency for the engine.
    let mut t = Topology {
        incoming: vec![Vec::new(); n],
        outgoing: vec![Vec::new(); n],
        back_edges: vec![Vec::new(); n],
        loops_of: vec![Vec::new(); n],
        starts: start_ids,
        exits: vec![Vec::new(); edges.len()],
    };
    for (ei, e) in edges.iter().enumerate() {
        t.incoming[e.to].push(ei);
        t.outgoing[e.from].push(ei);
    }
    for (li, l) in loops.iter().enumerate() {
        t.back_edges[l.from].push(li);
        for &b in &l.body {
            t.loops_of[b].push(li);
        }
        for (ei, e) in edges.iter().enumerate() {
            if l.body.contains(&e.from) && !l.body.contains(&e.to) {
                t.exits[ei].push(li);
            }
        }
    }
    for list in &mut t.loops_of {
        list.sort_by_key(|&li| loops[li].body.len());
    }
    t
}
