//! The workflow as a petgraph graph, and its Mermaid and DOT renderings.

use std::fmt::Write as _;

use petgraph::graph::DiGraph;
use petgraph::visit::EdgeRef;

use crate::workflow::Workflow;

#[derive(Debug, Clone, PartialEq)]
pub struct NodeLabel {
    pub id: String,
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EdgeLabel {
    Forward {
        when: Option<String>,
    },
    /// A loop back edge.
    Back {
        loop_id: String,
        max_rounds: u32,
        until: Option<String>,
        /// A guarded loop's acceptance rule, described.
        accept: Option<String>,
    },
}

/// Nodes and edges (forward and back) of a workflow.
pub fn build(wf: &Workflow) -> DiGraph<NodeLabel, EdgeLabel> {
    let mut g = DiGraph::new();
    let idx: Vec<_> = wf
        .nodes
        .iter()
        .map(|n| {
            g.add_node(NodeLabel {
                id: n.id.clone(),
                kind: n.kind.name(),
            })
        })
        .collect();
    for e in &wf.edges {
        g.add_edge(
            idx[e.from],
            idx[e.to],
            EdgeLabel::Forward {
                when: e.when.clone(),
            },
        );
    }
    for l in &wf.loops {
        g.add_edge(
            idx[l.from],
            idx[l.to],
            EdgeLabel::Back {
                loop_id: l.id.clone(),
                max_rounds: l.max_rounds,
                until: l.until.clone(),
                accept: l.accept.as_ref().map(|a| a.describe()),
            },
        );
    }
    g
}

fn back_label(
    loop_id: &str,
    max_rounds: u32,
    until: &Option<String>,
    accept: &Option<String>,
) -> String {
    let mut s = format!("loop {loop_id}: max {max_rounds} rounds");
    if let Some(u) = until {
        s.push_str(&format!(", until {u}"));
    }
    if let Some(a) = accept {
        s.push_str(&format!(", accept {a}"));
    }
    s
}

/// A Mermaid flowchart; back edges are dotted.
pub fn mermaid(wf: &Workflow) -> String {
    let g = build(wf);
    let esc = |s: &str| s.replace('"', "#quot;");
    let mut out = String::from("flowchart TD\n");
    for n in g.node_indices() {
        let l = &g[n];
        let _ = writeln!(out, "    {}[\"{} ({})\"]", l.id, esc(&l.id), l.kind);
    }
    for e in g.edge_references() {
        let (a, b) = (&g[e.source()].id, &g[e.target()].id);
        let _ = match e.weight() {
            EdgeLabel::Forward { when: None } => writeln!(out, "    {a} --> {b}"),
            EdgeLabel::Forward { when: Some(w) } => {
                writeln!(out, "    {a} -->|\"{}\"| {b}", esc(w))
            }
            EdgeLabel::Back {
                loop_id,
                max_rounds,
                until,
                accept,
            } => {
                writeln!(
                    out,
                    "    {a} -.->|\"{}\"| {b}",
                    esc(&back_label(loop_id, *max_rounds, until, accept))
                )
            }
        };
    }
    out
}

/// A Graphviz digraph; back edges are dashed.
pub fn dot(wf: &Workflow) -> String {
    let g = build(wf);
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = format!(
        "digraph \"{}\" {{\n    rankdir=TB;\n    node [shape=box];\n",
        esc(&wf.name)
    );
    for n in g.node_indices() {
        let l = &g[n];
        let _ = writeln!(
            out,
            "    \"{}\" [label=\"{}\\n({})\"];",
            esc(&l.id),
            esc(&l.id),
            l.kind
        );
    }
    for e in g.edge_references() {
        let (a, b) = (esc(&g[e.source()].id), esc(&g[e.target()].id));
        let _ = match e.weight() {
            EdgeLabel::Forward { when: None } => writeln!(out, "    \"{a}\" -> \"{b}\";"),
            EdgeLabel::Forward { when: Some(w) } => {
                writeln!(out, "    \"{a}\" -> \"{b}\" [label=\"{}\"];", esc(w))
            }
            EdgeLabel::Back {
                loop_id,
                max_rounds,
                until,
                accept,
            } => writeln!(
                out,
                "    \"{a}\" -> \"{b}\" [style=dashed, label=\"{}\"];",
                esc(&back_label(loop_id, *max_rounds, until, accept))
            ),
        };
    }
    out.push_str("}\n");
    out
}
