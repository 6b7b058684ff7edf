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

mod library;
mod refine;

pub(crate) use library::{
    Env, cluster_node, embed_node, execute_node, extract_node, human_review_node, tool_node,
};
pub(crate) use refine::{critique, generate, revise, select, verify, vote};

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
            None => std::fs::read_to_string(&path),
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
        topology = graph_checks(
            &mut cx,
            node_ids,
            &node_spans,
            &starts,
            &edges,
            &edge_spans,
            &mut loops,
            &loop_spans,
            &dangling,
        );
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
            variable_checks(
                &mut cx,
                node_ids,
                &fields,
                (&edges, &loops, &starts),
                &inputs,
                output_from,
                &dangling,
            );
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

/// Version and prompt directory. Invariant: a workflow that loads says
/// `version: 1`, and its prompt directory exists (unless prompt texts were
/// given in place of its files).
fn header_pass(cx: &mut Ctx, raw: &RawWorkflow) {
    match &raw.version {
        Some(v) if v.value == 1 => {}
        Some(v) => cx.err(
            Diagnostic::new(
                Code::BadVersion,
                v.span,
                format!("unsupported workflow version {}", v.value),
            )
            .label("unsupported")
            .help("this redraft reads `version: 1`"),
        ),
        None => cx.err(
            Diagnostic::new(
                Code::BadVersion,
                Span::point(1, 1),
                "the workflow has no `version`",
            )
            .label("`version: 1` is required")
            .help("add `version: 1` at the top"),
        ),
    }
    // Given prompt texts may stand for every file (a workflow built into
    // the binary); a file still missing is reported where it is named.
    if let Some(p) = &raw.prompt_dir {
        if !cx.prompt_dir.is_dir() && cx.prompt_overrides.is_empty() {
            cx.err(
                Diagnostic::new(
                    Code::MissingPrompt,
                    p.span,
                    format!("prompt directory `{}` does not exist", p.value),
                )
                .label("not a directory")
                .help(format!("resolved to {}", cx.prompt_dir.display())),
            );
        }
    }
}

/// Model declarations. Invariant: names are unique, specs parse, limits
/// are in range; a workflow that calls a model but declares none gets the
/// embedded default (`default` = `llama:default`).
fn models_pass(cx: &mut Ctx, raw: &RawWorkflow) -> Vec<ModelDecl> {
    let mut models = Vec::new();
    let mut seen: HashMap<&str, Span> = HashMap::new();
    for m in &raw.models {
        if let Some(first) = seen.get(m.name.value.as_str()) {
            cx.err(
                Diagnostic::new(
                    Code::DuplicateId,
                    m.name.span,
                    format!("model `{}` is declared twice", m.name.value),
                )
                .label("duplicate")
                .also(*first, "first declared here"),
            );
        } else {
            seen.insert(&m.name.value, m.name.span);
        }
        let spec = m.spec.as_ref().map(|s| s.value.clone());
        if m.spec.is_none() {
            cx.err(
                Diagnostic::new(
                    Code::ModelSuppliedAtRun,
                    m.name.span,
                    format!("model `{}` has no `spec`", m.name.value),
                )
                .label("no spec")
                .help(format!(
                    "it must be supplied when the workflow runs (`--model {}=SPEC`, or `Engine::with_model` in a program)",
                    m.name.value
                )),
            );
        }
        if let Some(s) = &m.spec {
            if let Err(e) = crate::backend::ModelSpec::parse(&s.value) {
                cx.err(
                    Diagnostic::new(Code::BadModelSpec, s.span, e.to_string())
                        .label("invalid spec")
                        .help(crate::backend::ModelSpec::HELP),
                );
            }
        }
        let max_tokens = match &m.max_tokens {
            Some(t) if t.value == 0 || t.value > u32::MAX as u64 => {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        t.span,
                        "`max_tokens` must be between 1 and 4294967295",
                    )
                    .label("out of range"),
                );
                DEFAULT_MAX_TOKENS
            }
            Some(t) => t.value as u32,
            None => DEFAULT_MAX_TOKENS,
        };
        for (price, key) in [(m.price_in, "input"), (m.price_out, "output")] {
            if price.is_some_and(|p| p < 0.0) {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        m.name.span,
                        format!("model `{}` has a negative {key} price", m.name.value),
                    )
                    .label("negative price"),
                );
            }
        }
        let timeout = m
            .timeout
            .as_ref()
            .and_then(|t| match parse_duration(&t.value) {
                Some(d) if !d.is_zero() => Some(d),
                _ => {
                    cx.err(
                        Diagnostic::new(
                            Code::InvalidValue,
                            t.span,
                            format!(
                                "`timeout` of model `{}` is not a positive duration",
                                m.name.value
                            ),
                        )
                        .label("invalid duration")
                        .help("write a number with a unit: 500ms, 30s, 2m"),
                    );
                    None
                }
            });
        let mut retry = crate::layer::RetryPolicy::default();
        if let Some(r) = &m.retries {
            if r.value > 10 {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        r.span,
                        format!("`retries` = {} is more than 10", r.value),
                    )
                    .label("out of range"),
                );
            }
            retry.max_retries = r.value.min(10) as u32;
        }
        if let Some(d) = &m.retry_delay {
            match parse_duration(&d.value) {
                Some(delay) => retry.base_delay = delay,
                None => cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        d.span,
                        format!(
                            "`retry_delay` of model `{}` is not a duration",
                            m.name.value
                        ),
                    )
                    .label("invalid duration")
                    .help("write a number with a unit: 100ms, 1s"),
                ),
            }
        }
        for limit in [&m.rpm, &m.tpm].into_iter().flatten() {
            if limit.value == 0 {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        limit.span,
                        "a rate limit of 0 allows no call",
                    )
                    .label("zero"),
                );
            }
        }
        let rate_limit = crate::layer::RateLimits {
            requests_per_minute: m
                .rpm
                .as_ref()
                .map(|r| r.value.clamp(1, u32::MAX as u64) as u32),
            tokens_per_minute: m.tpm.as_ref().map(|t| t.value.max(1)),
        };
        models.push(ModelDecl {
            name: m.name.value.clone(),
            spec,
            max_tokens,
            price: Price {
                input_per_mtok: m.price_in.unwrap_or(0.0),
                output_per_mtok: m.price_out.unwrap_or(0.0),
            },
            retry,
            timeout,
            rate_limit,
            settings: m.settings.clone(),
        });
    }
    // A workflow that declares no model but calls one gets the embedded
    // default model (SmolLM2 through llama.cpp) under the name `default`.
    let calls_a_model = raw.nodes.iter().any(|n| {
        n.call.is_some()
            || n.checks
                .iter()
                .flatten()
                .any(|c| matches!(c, RawCheck::Judge(_)))
    });
    if models.is_empty() && calls_a_model {
        models.push(ModelDecl {
            name: DEFAULT_MODEL_NAME.to_string(),
            spec: Some(DEFAULT_MODEL_SPEC.to_string()),
            max_tokens: DEFAULT_MAX_TOKENS,
            price: Price::default(),
            retry: crate::layer::RetryPolicy::default(),
            timeout: None,
            rate_limit: crate::layer::RateLimits::default(),
            settings: serde_json::Value::Null,
        });
    }

    models
}

/// Input declarations. Invariant: names are unique, shadow no built-in,
/// and defaults have the declared type.
fn inputs_pass(
    cx: &mut Ctx,
    raw: &RawWorkflow,
    names: &mut HashMap<String, (&'static str, Span)>,
) -> Vec<InputDecl> {
    let mut inputs = Vec::new();
    for i in &raw.inputs {
        let name = &i.name.value;
        if BUILTINS.contains(&name.as_str()) {
            cx.err(
                Diagnostic::new(
                    Code::DuplicateId,
                    i.name.span,
                    format!("input `{name}` shadows a built-in variable"),
                )
                .label("reserved name")
                .help(format!("reserved: {}", BUILTINS.join(", "))),
            );
        } else if let Some(&(_, first)) = names.get(name) {
            cx.err(
                Diagnostic::new(
                    Code::DuplicateId,
                    i.name.span,
                    format!("input `{name}` is declared twice"),
                )
                .label("duplicate")
                .also(first, "first declared here"),
            );
        } else {
            names.insert(name.clone(), ("input", i.name.span));
        }
        let ty = match &i.ty {
            None => InputType::String,
            Some(t) => InputType::parse(&t.value).unwrap_or_else(|| {
                let d = Diagnostic::new(
                    Code::InvalidValue,
                    t.span,
                    format!("unknown input type `{}`", t.value),
                )
                .label("unknown type");
                let d = match did_you_mean(&t.value, InputType::NAMES.iter().copied()) {
                    Some(b) => d.help(format!("did you mean `{b}`?")),
                    None => d.help(format!("one of: {}", InputType::NAMES.join(", "))),
                };
                cx.err(d);
                InputType::Any
            }),
        };
        if let Some((default, span)) = &i.default {
            if !ty.accepts(default) {
                cx.err(
                    Diagnostic::new(
                        Code::WrongType,
                        *span,
                        format!("the default of input `{name}` is not of type {}", ty.name()),
                    )
                    .label("wrong type"),
                );
            }
        }
        inputs.push(InputDecl {
            name: name.clone(),
            ty,
            default: i.default.as_ref().map(|d| d.0.clone()),
            description: i.description.clone(),
        });
    }

    inputs
}

/// Node ids, collected before anything refers to them so that references
/// resolve in any order. A node without an id is `#N` (never resolvable).
struct NodeIds {
    ids: Vec<String>,
}

impl NodeIds {
    /// Invariant: ids are unique, valid template names, and clash with no
    /// input or built-in variable.
    fn new(
        cx: &mut Ctx,
        raw: &RawWorkflow,
        names: &mut HashMap<String, (&'static str, Span)>,
    ) -> NodeIds {
        let mut node_ids: Vec<String> = Vec::new();
        for (i, n) in raw.nodes.iter().enumerate() {
            let Some(id) = &n.id else {
                node_ids.push(format!("#{}", i + 1));
                continue;
            };
            if BUILTINS.contains(&id.value.as_str()) {
                cx.err(
                    Diagnostic::new(
                        Code::DuplicateId,
                        id.span,
                        format!("node `{}` shadows a built-in variable", id.value),
                    )
                    .label("reserved name")
                    .help(format!("reserved: {}", BUILTINS.join(", "))),
                );
            } else if let Some(&(prev, first)) = names.get(&id.value) {
                let (msg, also) = if prev == "node" {
                    (
                        format!("node `{}` is defined twice", id.value),
                        "first defined here",
                    )
                } else {
                    (
                        format!("node `{}` has the same name as an input", id.value),
                        "the input",
                    )
                };
                cx.err(
                    Diagnostic::new(Code::DuplicateId, id.span, msg)
                        .label("duplicate")
                        .also(first, also)
                        .help("node ids and input names share one namespace in templates"),
                );
            } else if !id
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || id.value.starts_with(|c: char| c.is_ascii_digit())
            {
                cx.err(Diagnostic::new(Code::InvalidValue, id.span, format!("node id `{}` is not a valid template name", id.value)).label("invalid id").help("use letters, digits and `_`, not starting with a digit (ids are template variables)"));
            }
            if !BUILTINS.contains(&id.value.as_str()) {
                names.entry(id.value.clone()).or_insert(("node", id.span));
            }
            node_ids.push(id.value.clone());
        }
        NodeIds { ids: node_ids }
    }

    /// The resolvable ids, sorted and unique ("did you mean" candidates).
    fn refs(&self) -> Vec<&str> {
        let mut refs: Vec<&str> = self
            .ids
            .iter()
            .map(String::as_str)
            .filter(|s| !s.starts_with('#'))
            .collect();
        refs.sort_unstable();
        refs.dedup();
        refs
    }

    /// The node named `name`; an unknown name is reported (with the
    /// closest id) and resolves to nothing.
    fn resolve(&self, cx: &mut Ctx, name: &Spanned<String>, what: &str) -> Option<usize> {
        let found = self.ids.iter().position(|n| *n == name.value);
        if found.is_none() {
            cx.err(unknown_name(
                Code::UnknownNode,
                name.span,
                format!("{what} `{}` is not a defined node", name.value),
                &name.value,
                &self.refs(),
            ));
        }
        found
    }
}

/// Nodes: each raw node through its kind's builder (the kinds table).
/// Invariant: a node whose own keys failed keeps its place (`None`), so the
/// graph, variable and budget passes still check everything else.
fn nodes_pass(
    cx: &mut Ctx,
    raw: &RawWorkflow,
    ids: &NodeIds,
    model_names: &[&str],
    models: &[ModelDecl],
    resolve: library::ResolveNode,
) -> Vec<Option<NodeSpec>> {
    let node_ids = &ids.ids;
    let mut nodes = Vec::new();
    for (idx, n) in raw.nodes.iter().enumerate() {
        let id = node_ids[idx].clone();
        let label = format!("node `{id}`");
        let budget = cx.limits(&n.budget, &format!("the budget of {label}"));
        let env = Env {
            idx,
            id: &id,
            label: &label,
            span: n.span,
            model_names,
            models,
            resolve,
        };
        let kind = n
            .kind
            .as_ref()
            .and_then(|k| Kind::parse(&k.value))
            .and_then(|k| (k.def().build)(cx, n, &env));
        nodes.push(kind.map(|kind| NodeSpec { id, kind, budget }));
    }

    nodes
}

/// Forward edges. Invariant: both ends resolve and a condition compiles.
/// An edge whose source is unknown may, once fixed, lead to its target:
/// that target (and what follows it) is returned as `dangling`, not to be
/// reported as unreachable or as reading nodes that are not upstream.
fn edges_pass(
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
fn loops_pass(
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
            answer: l.metrics_answer.as_ref().and_then(|r| compile_regex(cx, r)),
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
fn accept_rule(
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
        .and_then(|r| compile_regex(cx, r))
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
fn output_pass(
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

/// What a model call is for; it decides the defaults of unset sampling keys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CallRole {
    /// generate, revise: some variety, the model's `max_tokens`.
    Generate,
    /// critique: structured feedback, little variety.
    Critique,
    /// a verify node's judge: deterministic, and only its first tokens are
    /// read (Yes/No, or their logprobs).
    Judge,
}

impl CallRole {
    /// The temperature when the workflow sets none. Fixed here rather than
    /// left to each backend (llama.cpp samples at 0.8, OpenAI at 1.0), so a
    /// workflow behaves the same on every backend.
    fn temperature(self) -> f32 {
        match self {
            CallRole::Generate => DEFAULT_TEMPERATURE,
            CallRole::Critique => DEFAULT_CRITIQUE_TEMPERATURE,
            CallRole::Judge => 0.0,
        }
    }

    /// `max_tokens` when the workflow sets none (`None`: the model's).
    fn max_tokens(self) -> Option<u32> {
        (self == CallRole::Judge).then_some(DEFAULT_JUDGE_MAX_TOKENS)
    }
}

#[allow(clippy::too_many_arguments)]
fn model_call(
    cx: &mut Ctx,
    c: &RawCall,
    node: usize,
    id: &str,
    label: &str,
    model_names: &[&str],
    models: &[ModelDecl],
    role: CallRole,
) -> Option<ModelCall> {
    let needs_prompt = role != CallRole::Judge;
    let model = match &c.model {
        Some(m) => {
            let found = model_names.iter().position(|n| *n == m.value);
            if found.is_none() {
                cx.err(unknown_name(
                    Code::UnknownModel,
                    m.span,
                    format!("{label} uses model `{}`, which is not declared", m.value),
                    &m.value,
                    model_names,
                ));
            }
            found
        }
        None if models.len() == 1 => Some(0),
        None => {
            let help = if models.is_empty() {
                "declare one under `models:`".to_string()
            } else {
                format!("name one of: {}", model_names.join(", "))
            };
            cx.err(
                Diagnostic::new(
                    Code::MissingKey,
                    c.span,
                    format!("{label} names no `model`"),
                )
                .label("`model` is required")
                .help(help),
            );
            None
        }
    };
    let prompt = match (&c.prompt_file, &c.template) {
        (Some(file), _) => {
            cx.prompt_file(format!("{id}.prompt"), file, &format!("prompt of {label}"))
        }
        (None, Some(t)) => cx.inline(
            format!("{id}.prompt"),
            &t.value,
            t.span,
            &format!("`template` of {label}"),
        ),
        (None, None) if needs_prompt => {
            cx.err(
                Diagnostic::new(Code::MissingKey, c.span, format!("{label} has no prompt"))
                    .label("`prompt` or `template` is required")
                    .help(
                        "`prompt: file.j2` (under the prompt directory) or `template: inline text`",
                    ),
            );
            None
        }
        (None, None) => cx.inline(
            format!("{id}.prompt"),
            DEFAULT_JUDGE_PROMPT,
            c.span,
            "the default judge prompt",
        ),
    };
    let extra: &'static [&'static str] = if needs_prompt { &[] } else { &[TARGET_VAR] };
    if let Some(p) = &prompt {
        let span = c
            .prompt_file
            .as_ref()
            .or(c.template.as_ref())
            .map_or(c.span, |s| s.span);
        cx.pending_vars.push(VarCheck {
            source: VarSource::Template(p.clone()),
            node,
            span,
            extra,
            what: format!("the prompt of {label}"),
        });
    }
    let system = c.system.as_ref().and_then(|s| {
        let name = cx.inline(
            format!("{id}.{}system", if needs_prompt { "" } else { "judge." }),
            &s.value,
            s.span,
            &format!("`system` of {label}"),
        )?;
        cx.pending_vars.push(VarCheck {
            source: VarSource::Template(name.clone()),
            node,
            span: s.span,
            extra,
            what: format!("`system` of {label}"),
        });
        Some(name)
    });
    let s = &c.sampling;
    if let Some(t) = &s.temperature {
        if !(0.0..=2.0).contains(&t.value) {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    t.span,
                    format!("temperature {} is outside 0..=2", t.value),
                )
                .label("out of range"),
            );
        }
    }
    if let Some(t) = &s.top_p {
        if !(t.value > 0.0 && t.value <= 1.0) {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    t.span,
                    format!("top_p {} is outside (0, 1]", t.value),
                )
                .label("out of range"),
            );
        }
    }
    if let Some(m) = &s.max_tokens {
        if m.value == 0 || m.value > u32::MAX as u64 {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    m.span,
                    "`max_tokens` must be at least 1",
                )
                .label("out of range"),
            );
        }
    }
    let n = match &c.n {
        Some(n) if n.value == 0 || n.value > 128 => {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    n.span,
                    format!("`n` = {} is outside 1..=128", n.value),
                )
                .label("out of range"),
            );
            1
        }
        Some(n) => n.value as u32,
        None => 1,
    };
    let logprobs = match &c.logprobs {
        Some(l) if l.value > 20 => {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    l.span,
                    format!("`logprobs` = {} is more than 20", l.value),
                )
                .label("out of range"),
            );
            None
        }
        Some(l) => Some(l.value as u8),
        None => None,
    };
    let schema = c
        .schema
        .as_ref()
        .and_then(|(src, span)| compile_schema(cx, src, *span));
    if let (Some(schema), Some(m), Some((_, span))) = (&schema, model, &c.schema) {
        let max_tokens = s
            .max_tokens
            .as_ref()
            .map(|m| m.value.min(u32::MAX as u64) as u32)
            .or(role.max_tokens())
            .unwrap_or(models[m].max_tokens);
        if let Some(d) = reply_fit(&schema.source, max_tokens, *span, label) {
            cx.err(d);
        }
    }
    let model = model?;
    let prompt = prompt?;
    Some(ModelCall {
        model,
        prompt,
        system,
        sampling: Sampling {
            temperature: Some(
                s.temperature
                    .as_ref()
                    .map_or(role.temperature(), |t| t.value as f32),
            ),
            top_p: s.top_p.as_ref().map(|t| t.value as f32),
            seed: s.seed,
            max_tokens: s
                .max_tokens
                .as_ref()
                .map(|m| m.value.clamp(1, u32::MAX as u64) as u32)
                .or(role.max_tokens()),
            stop: s.stop.clone(),
        },
        n,
        logprobs,
        schema,
        repair_attempts: c
            .repair_attempts
            .as_ref()
            .map_or(1, |r| r.value.min(5) as u32),
        // Resolved by `conversation_checks`, once every node is known.
        continues: None,
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

/// `continue: NODE` on a model call: resolves the node and checks that its
/// conversation exists when the call is made (a generate, critique or
/// revise node upstream by forward edges) and that the call does not also
/// set a `system` message (the conversation has its own).
fn conversation_checks(
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
        let judges = n
            .checks
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(ci, c)| match c {
                RawCheck::Judge(call) => Some((Some(ci), &**call)),
                _ => None,
            });
        let calls: Vec<(Option<usize>, &RawCall)> =
            n.call.iter().map(|c| (None, c)).chain(judges).collect();
        for (check, call) in calls {
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
fn set_continue(nodes: &mut [Option<NodeSpec>], idx: usize, check: Option<usize>, to: Continue) {
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

/// Characters of the shortest and (if bounded) the longest JSON text a
/// schema accepts, roughly: string lengths, numbers, nesting and keys.
fn reply_chars(schema: &serde_json::Value) -> (usize, Option<usize>) {
    let get = |k: &str| {
        schema
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
    };
    if let Some(options) = schema.get("enum").and_then(|e| e.as_array()) {
        let lens = options.iter().map(|o| o.to_string().len());
        return (lens.clone().min().unwrap_or(0), lens.max());
    }
    // One of several shapes: the shortest of their shortest, the longest of
    // their longest (unbounded if any is).
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(|e| e.as_array()) {
            let all: Vec<(usize, Option<usize>)> = options.iter().map(reply_chars).collect();
            let min = all.iter().map(|a| a.0).min().unwrap_or(0);
            let max = all
                .iter()
                .try_fold(0, |acc: usize, a| a.1.map(|m| acc.max(m)));
            return (min, max);
        }
    }
    match schema.get("type").and_then(|t| t.as_str()) {
        Some("string") => (
            get("minLength").unwrap_or(0) + 2,
            get("maxLength").map(|m| m + 2),
        ),
        Some("integer") | Some("number") => (1, Some(24)),
        Some("boolean") => (4, Some(5)),
        Some("null") => (4, Some(4)),
        Some("array") => {
            let (item_min, item_max) = schema.get("items").map_or((1, None), reply_chars);
            let min = get("minItems").unwrap_or(0) * (item_min + 1) + 2;
            let max = match (get("maxItems"), item_max) {
                (Some(n), Some(m)) => Some(n * (m + 1) + 2),
                _ => None,
            };
            (min, max)
        }
        Some("object") => {
            // Properties beyond the named ones, as a schema: unbounded, even
            // with `maxProperties`, which grammar-constrained decoding
            // (llama.cpp, OpenAI) does not enforce: a small model repeats
            // keys until max_tokens.
            let additional = schema.get("additionalProperties");
            let free = matches!(
                additional,
                Some(serde_json::Value::Object(_) | serde_json::Value::Bool(true))
            );
            let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
                // No named properties: `{}` only when extras are closed.
                let closed = additional == Some(&serde_json::Value::Bool(false));
                return (2, closed.then_some(2));
            };
            let required: Vec<&str> = schema
                .get("required")
                .and_then(|r| r.as_array())
                .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let (mut min, mut max) = (2, Some(2));
            for (key, sub) in props {
                let (lo, hi) = reply_chars(sub);
                let entry = key.len() + 4; // "key": and a comma
                if required.contains(&key.as_str()) {
                    min += entry + lo;
                }
                max = max.zip(hi).map(|(a, b)| a + entry + b);
            }
            (min, max.filter(|_| !free))
        }
        _ => (0, None),
    }
}

/// A warning when a structured reply cannot, or may not, fit `max_tokens`:
/// a reply cut at `max_tokens` is invalid JSON, and the node then fails
/// after its repair attempts. Tokens are estimated from characters: at
/// most 4 a token for the shortest reply, 2.5 for the longest (digits and
/// punctuation are often a token each: a small model's 390-character
/// critique of a GSM8K solution took 160 tokens). A schema with no bound
/// at all (a string without `maxLength`, an object with free properties,
/// `maxProperties` or not) is flagged too.
fn reply_fit(
    schema: &serde_json::Value,
    max_tokens: u32,
    span: Span,
    label: &str,
) -> Option<Diagnostic> {
    let (min, max) = reply_chars(schema);
    let (message, help) = if min / 4 > max_tokens as usize {
        (
            format!(
                "the shortest reply the schema of {label} accepts (~{} tokens) cannot fit its `max_tokens` ({max_tokens})",
                min / 4
            ),
            "raise `max_tokens`, or lower the schema's `minLength`/`minItems`",
        )
    } else if let Some(max) = max.filter(|m| m * 2 / 5 > max_tokens as usize) {
        (
            format!(
                "the longest reply the schema of {label} accepts (~{} tokens) may not fit its `max_tokens` ({max_tokens}); a reply cut short is invalid JSON",
                max * 2 / 5
            ),
            "raise `max_tokens`, or bound the fields tighter (`maxLength`, `maxItems`)",
        )
    } else if max.is_none() {
        (
            format!(
                "the schema of {label} puts no bound on a reply's length (a string without `maxLength`, an array without `maxItems`, or an object with free properties), so a reply may run past its `max_tokens` ({max_tokens}) and be cut, invalid JSON"
            ),
            "bound every field (`maxLength`, `maxItems`) and name an object's properties: grammar-constrained decoding then keeps replies inside the bound (it ignores `maxProperties`; free-form data fits in a string with `maxLength`)",
        )
    } else {
        return None;
    };
    Some(
        Diagnostic::new(Code::ReplyMayNotFit, span, message)
            .label("schema and max_tokens disagree")
            .help(help),
    )
}

#[allow(clippy::too_many_arguments)]
fn verify_check(
    cx: &mut Ctx,
    c: &RawCheck,
    node: usize,
    id: &str,
    index: usize,
    label: &str,
    model_names: &[&str],
    models: &[ModelDecl],
) -> Option<Check> {
    let expected = |cx: &mut Ctx, e: &Spanned<String>| {
        let name = cx.inline(
            format!("{id}.checks.{index}"),
            &e.value,
            e.span,
            &format!("check {} of {label}", index + 1),
        )?;
        cx.pending_vars.push(VarCheck {
            source: VarSource::Template(name.clone()),
            node,
            span: e.span,
            extra: &[],
            what: format!("check {} of {label}", index + 1),
        });
        Some(name)
    };
    match c {
        RawCheck::Exact {
            expected: e,
            ignore_case,
        } => expected(cx, e).map(|expected| Check::Exact {
            expected,
            ignore_case: *ignore_case,
        }),
        RawCheck::Numeric {
            expected: e,
            tolerance,
        } => expected(cx, e).map(|expected| Check::Numeric {
            expected,
            tolerance: *tolerance,
        }),
        RawCheck::Contains {
            expected: e,
            ignore_case,
        } => expected(cx, e).map(|expected| Check::Contains {
            expected,
            ignore_case: *ignore_case,
        }),
        RawCheck::Lines(e) => expected(cx, e).map(|expected| Check::Lines { expected }),
        RawCheck::Regex(r) => compile_regex(cx, r).map(Check::Regex),
        RawCheck::JsonSchema(src, span) => compile_schema(cx, src, *span).map(Check::JsonSchema),
        RawCheck::Judge(call) => {
            let judge_id = format!("{id}.checks.{index}.judge");
            model_call(
                cx,
                call,
                node,
                &judge_id,
                &format!("the judge of {label}"),
                model_names,
                models,
                CallRole::Judge,
            )
            .map(Check::Judge)
        }
    }
}

fn compile_regex(cx: &mut Ctx, r: &Spanned<String>) -> Option<regex::Regex> {
    match regex::RegexBuilder::new(&r.value)
        .size_limit(1 << 20)
        .build()
    {
        Ok(re) => Some(re),
        Err(e) => {
            let detail = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_string();
            cx.err(
                Diagnostic::new(
                    Code::BadRegex,
                    r.span,
                    format!("invalid regular expression: {detail}"),
                )
                .label("invalid regex"),
            );
            None
        }
    }
}

fn compile_schema(cx: &mut Ctx, src: &serde_json::Value, span: Span) -> Option<Arc<Schema>> {
    match Schema::compile(src.clone()) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            cx.err(
                Diagnostic::new(Code::BadSchema, span, format!("invalid JSON Schema: {e}"))
                    .label("invalid schema"),
            );
            None
        }
    }
}

fn check_expression(
    cx: &mut Ctx,
    expr: &str,
    span: Span,
    node: usize,
    extra: &'static [&'static str],
    what: &str,
) {
    match cx.templates.add_expression(expr) {
        Ok(_) => cx.pending_vars.push(VarCheck {
            source: VarSource::Expression(expr.to_string()),
            node,
            span,
            extra,
            what: what.to_string(),
        }),
        Err(e) => cx.err(
            Diagnostic::new(
                Code::InvalidCondition,
                span,
                format!("{what} does not parse: {e}"),
            )
            .label("invalid expression"),
        ),
    }
}

/// Cycles, loop bodies, single entry, nesting, starts and reachability.
/// `ids` are all node ids (also of nodes whose keys failed); `dangling` are
/// nodes an unresolved edge may lead to, counted as reachable.
#[allow(clippy::too_many_arguments)]
fn graph_checks(
    cx: &mut Ctx,
    ids: &[String],
    node_spans: &[Span],
    starts: &[(usize, Span)],
    edges: &[Edge],
    edge_spans: &[Span],
    loops: &mut [LoopSpec],
    loop_spans: &[Span],
    dangling: &[usize],
) -> Topology {
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

/// Every variable a template or condition reads must exist where it is
/// read: an input, a built-in, or a node upstream. Attribute reads that the
/// validator can know are checked too: `inputs.<declared input>`,
/// `history.<node>`, `loop.<id|round|max_rounds|last>` only inside a loop,
/// and `<node>.<field>` where the node's output fields are known (`fields`).
#[allow(clippy::too_many_arguments)]
fn variable_checks(
    cx: &mut Ctx,
    ids: &[String],
    fields: &[Option<Vec<String>>],
    (edges, loops, starts): (&[Edge], &[LoopSpec], &[(usize, Span)]),
    inputs: &[InputDecl],
    output_from: &[usize],
    dangling: &[usize],
) {
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
const LOOP_FIELDS: &[&str] = &[
    "id",
    "round",
    "max_rounds",
    "last",
    "current",
    "rejected",
    "rejections",
];

fn budget_checks(
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
