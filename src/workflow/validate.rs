//! Pass 2: resolve names, load prompts, compile templates and conditions, and
//! check the graph. Produces a [`Workflow`] or every problem found.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use super::Kind;
use super::model::*;
use super::raw::*;
use crate::budget::Limits;
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::template::Templates;
use crate::units::parse_duration;
use crate::yaml::Span;

/// Names every template can read besides inputs and upstream nodes.
pub const BUILTINS: &[&str] = &["inputs", "round", "loop", "history", "artifact"];
/// Extra names in a `select` node's `by` expression.
const SAMPLE_VAR: &str = "sample";
/// Extra name in a judge check's prompt.
const TARGET_VAR: &str = "target";

pub const DEFAULT_JUDGE_PROMPT: &str =
    "Is the following answer correct and complete?\n\n{{ target }}\n\nAnswer with Yes or No.";
pub const DEFAULT_TARGET: &str = "{{ artifact.text }}";
/// Sampling temperature of generate and revise nodes that set none.
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
/// Sampling temperature of critique nodes that set none.
pub const DEFAULT_CRITIQUE_TEMPERATURE: f32 = 0.2;
/// `max_tokens` of a judge that sets none: room for "Yes"/"No" (whose
/// logprobs give the confidence) and a few words, not a whole answer.
pub const DEFAULT_JUDGE_MAX_TOKENS: u32 = 16;
/// The model a workflow gets when it declares none.
pub const DEFAULT_MODEL_NAME: &str = "default";
pub const DEFAULT_MODEL_SPEC: &str = "llama:default";

mod budgets;
mod conversation;
mod declare;
mod flow;
mod graph;
mod ids;
pub(crate) mod library;
mod nodes;
mod refine;
mod variables;

use budgets::budget_checks;
use conversation::conversation_checks;
use declare::{header_pass, inputs_pass, models_pass};
use flow::{edges_pass, loops_pass, output_pass};
use graph::graph_checks;
use ids::NodeIds;
use nodes::*;
use variables::variable_checks;

pub(crate) use library::Env;
pub(crate) use refine::{critique, generate, revise, select, verify, vote};

/// The graph as far as its names resolved, for the graph and variable
/// checks. `ids` are all node ids (also of nodes whose own keys failed);
/// `dangling` are nodes an unresolved name may lead to or feed, whose
/// reachability and upstream are therefore not judged.
#[derive(Clone, Copy)]
struct Resolved<'a> {
    ids: &'a [String],
    node_spans: &'a [Span],
    starts: &'a [(usize, Span)],
    edges: &'a [Edge],
    edge_spans: &'a [Span],
    loop_spans: &'a [Span],
    dangling: &'a [usize],
}

/// Builds a kind's typed spec from its raw node (one per kind, in the kinds table).
pub(crate) type Builder = fn(&mut Ctx, &RawNode, &Env) -> Option<NodeKind>;

pub(crate) struct Ctx {
    diags: Vec<Diagnostic>,
    templates: Templates,
    prompt_dir: std::path::PathBuf,
    /// The workflow file's directory (relative paths other than prompts).
    base_dir: std::path::PathBuf,
    /// Templates to check for variables once the graph is known: (template
    /// name or expression, node it runs in, is expression, span, extra names).
    pending_vars: Vec<VarCheck>,
    /// Prompt texts given in place of files (by the name written in the
    /// workflow), and the prompt files the workflow uses, as read.
    prompt_overrides: std::collections::BTreeMap<String, String>,
    prompt_files: Vec<PromptFile>,
}

struct VarCheck {
    source: VarSource,
    /// The node whose upstream may be read (the node itself is included only
    /// if it is its own ancestor, i.e. in a loop).
    node: usize,
    span: Span,
    extra: &'static [&'static str],
    what: String,
}

enum VarSource {
    Template(String),
    Expression(String),
}

impl Ctx {
    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Compiles an inline template; returns its name.
    fn inline(&mut self, name: String, source: &str, span: Span, what: &str) -> Option<String> {
        match self.templates.add(&name, source) {
            Ok(()) => Some(name),
            Err(e) => {
                self.err(
                    Diagnostic::new(
                        Code::TemplateSyntax,
                        span,
                        format!("{what} does not parse: {e}"),
                    )
                    .label("invalid template"),
                );
                None
            }
        }
    }

    /// Loads and compiles a prompt file.
    fn prompt_file(&mut self, name: String, file: &Spanned<String>, what: &str) -> Option<String> {
        let path = self.prompt_dir.join(&file.value);
        let text = match self.prompt_overrides.get(&file.value) {
            Some(text) => Ok(text.clone()),
            // A byte-order mark an editor wrote is not part of the prompt.
            None => std::fs::read_to_string(&path)
                .map(|t| t.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(t)),
        };
        match text {
            Ok(text) => {
                let compiled = self.inline(
                    name.clone(),
                    &text,
                    file.span,
                    &format!("{what} ({})", path.display()),
                );
                self.prompt_files.push(PromptFile {
                    template: name,
                    file: file.value.clone(),
                    path,
                    span: file.span,
                    text,
                });
                compiled
            }
            Err(e) => {
                self.err(
                    Diagnostic::new(
                        Code::MissingPrompt,
                        file.span,
                        format!("cannot read prompt file `{}`: {e}", file.value),
                    )
                    .label("prompt file")
                    .help(format!("looked for {}", path.display())),
                );
                None
            }
        }
    }

    fn limits(&mut self, raw: &Option<RawBudget>, what: &str) -> Limits {
        let Some(b) = raw else {
            return Limits::default();
        };
        let mut l = Limits::default();
        let bad = |c: &mut Self, span: Span, msg: String| {
            c.err(Diagnostic::new(Code::BadBudget, span, msg).label("invalid limit"));
        };
        if let Some(t) = &b.tokens {
            if t.value <= 0 {
                bad(
                    self,
                    t.span,
                    format!("{what}: a token limit of {} allows no model call", t.value),
                );
            } else {
                l.tokens = Some(t.value as u64);
            }
        }
        if let Some(c) = &b.calls {
            if c.value <= 0 {
                bad(
                    self,
                    c.span,
                    format!("{what}: a call limit of {} allows no model call", c.value),
                );
            } else {
                l.calls = Some(c.value as u64);
            }
        }
        if let Some(c) = &b.cost_usd {
            if c.value <= 0.0 {
                bad(
                    self,
                    c.span,
                    format!("{what}: a cost limit of {} allows no model call", c.value),
                );
            } else {
                l.cost_usd = Some(c.value);
            }
        }
        if let Some(w) = &b.wall_time {
            match parse_duration(&w.value) {
                Some(d) if !d.is_zero() => l.wall_time = Some(d),
                Some(_) => bad(
                    self,
                    w.span,
                    format!("{what}: a wall time of 0 allows nothing"),
                ),
                None => self.err(
                    Diagnostic::new(
                        Code::BadBudget,
                        w.span,
                        format!("{what}: `{}` is not a duration", w.value),
                    )
                    .label("invalid duration")
                    .help("write a number with a unit: 500ms, 30s, 2m, 1h"),
                ),
            }
        }
        l
    }
}

fn unknown_name(code: Code, span: Span, what: String, name: &str, known: &[&str]) -> Diagnostic {
    let d = Diagnostic::new(code, span, what).label(match code {
        Code::UnknownModel => "unknown model",
        _ => "unknown node",
    });
    match did_you_mean(name, known.iter().copied()) {
        Some(best) => d.help(format!("did you mean `{best}`?")),
        None if known.is_empty() => d.help("none are defined"),
        None => d.help(format!("defined: {}", known.join(", "))),
    }
}

/// Runs pass 2. `base_dir` is the directory of the workflow file.
///
/// The passes below run in this order, each on whatever the earlier ones
/// could resolve; each reports every problem it finds, and a name that
/// does not resolve is reported once (where it is written) and hides no
/// other problem.
pub fn check(
    raw: RawWorkflow,
    base_dir: &Path,
    prompt_overrides: std::collections::BTreeMap<String, String>,
    mut diags: Vec<Diagnostic>,
) -> Result<Workflow, Vec<Diagnostic>> {
    let prompt_dir = match &raw.prompt_dir {
        Some(p) => base_dir.join(&p.value),
        None => base_dir.to_path_buf(),
    };
    let mut cx = Ctx {
        diags: Vec::new(),
        templates: Templates::new(),
        prompt_dir,
        base_dir: base_dir.to_path_buf(),
        pending_vars: Vec::new(),
        prompt_overrides,
        prompt_files: Vec::new(),
    };
    header_pass(&mut cx, &raw);
    let models = models_pass(&mut cx, &raw);
    let model_names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    // Node ids and input names share the template namespace.
    let mut names: HashMap<String, (&'static str, Span)> = HashMap::new();
    let inputs = inputs_pass(&mut cx, &raw, &mut names);
    let ids = NodeIds::new(&mut cx, &raw, &mut names);
    let resolve = |cx: &mut Ctx, name: &Spanned<String>, what: &str| ids.resolve(cx, name, what);
    let mut nodes = nodes_pass(&mut cx, &raw, &ids, &model_names, &models, &resolve);
    let (edges, edge_spans, mut dangling) = edges_pass(&mut cx, &raw, &ids, &resolve);
    let (mut loops, loop_spans) = loops_pass(&mut cx, &raw, &resolve, &nodes);
    // Workflow settings.
    let budget = cx.limits(&raw.budget, "the workflow budget");
    let concurrency = match &raw.concurrency {
        Some(c) if c.value == 0 => {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    c.span,
                    "`concurrency` must be at least 1",
                )
                .label("zero"),
            );
            1
        }
        Some(c) => c.value.min(4096) as usize,
        None => 8,
    };

    let output = output_pass(&mut cx, &raw, &resolve);
    conversation_checks(&mut cx, &raw, &mut nodes, &ids.ids, &edges, &resolve);
    let node_ids = &ids.ids;
    // Graph, variable and budget checks run on whatever resolved: a name
    // that did not resolve is reported once and hides no other problem.
    let mut topology = Topology::default();
    if !raw.nodes.is_empty() {
        let node_spans: Vec<Span> = raw
            .nodes
            .iter()
            .map(|n| n.id.as_ref().map_or(n.span, |i| i.span))
            .collect();
        let starts: Vec<(usize, Span)> = if raw.start.is_empty() {
            vec![(0, node_spans[0])]
        } else {
            raw.start
                .iter()
                .filter_map(|s| resolve(&mut cx, s, "start node").map(|i| (i, s.span)))
                .collect()
        };
        // An unknown start name may be any node: reachability says nothing then.
        if starts.len() < raw.start.len() {
            dangling.extend(0..node_ids.len());
        }
        // A node whose id is taken twice is reported as a duplicate; edges to
        // that name resolve to the first one, so its reachability is moot.
        for (i, id) in node_ids.iter().enumerate() {
            if node_ids[..i].contains(id) {
                dangling.push(i);
            }
        }
        let graph = Resolved {
            ids: node_ids,
            node_spans: &node_spans,
            starts: &starts,
            edges: &edges,
            edge_spans: &edge_spans,
            loop_spans: &loop_spans,
            dangling: &dangling,
        };
        topology = graph_checks(&mut cx, &graph, &mut loops);
        if cx
            .diags
            .iter()
            .all(|d| !matches!(d.code, Code::UnboundedCycle | Code::BadLoop))
        {
            let fields: Vec<Option<Vec<String>>> = nodes
                .iter()
                .map(|n| n.as_ref().and_then(|n| n.kind.output_fields()))
                .collect();
            let output_from = output.as_ref().map_or(&[][..], |o| &o.from[..]);
            variable_checks(&mut cx, &graph, &loops, &fields, &inputs, output_from);
        }
        budget_checks(&mut cx, &nodes, &models, &loops, &budget, &raw);
    }

    // A node that could not be built always has a diagnostic of its own;
    // should one ever lack it, say so rather than run a partial workflow.
    if diags.iter().chain(&cx.diags).all(|d| d.code.is_warning()) {
        for (i, n) in nodes.iter().enumerate() {
            if n.is_none() {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        raw.nodes[i].span,
                        format!("node `{}` could not be read", node_ids[i]),
                    )
                    .label("incomplete node"),
                );
            }
        }
    }
    diags.append(&mut cx.diags);
    if diags.iter().any(|d| !d.code.is_warning()) {
        return Err(diags);
    }
    let warnings = diags;
    let nodes: Vec<NodeSpec> = nodes.into_iter().flatten().collect();
    Ok(Workflow {
        name: raw.name.unwrap_or_else(|| "workflow".into()),
        description: raw.description,
        path: None,
        models,
        inputs,
        budget,
        concurrency,
        nodes,
        edges,
        loops,
        output: output.expect("no diagnostics means an output"),
        templates: Arc::new(cx.templates),
        prompt_files: cx.prompt_files,
        topology,
        warnings,
        warnings_rendered: String::new(),
    })
}

/// Every node reachable from `start` by following `next` (adjacency lists
/// by node index), the start nodes included only if reached again.
fn closure(start: Vec<usize>, next: &[Vec<usize>]) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut stack = start;
    while let Some(x) = stack.pop() {
        if seen.insert(x) {
            stack.extend(next[x].iter().copied());
        }
    }
    seen
}

/// Looks a node name up, reporting an unknown one (`what` names the key).
type Resolve<'a> = dyn Fn(&mut Ctx, &Spanned<String>, &str) -> Option<usize> + 'a;
