//! Pass 1: the YAML tree checked for shape (keys, types, required fields),
//! names still unresolved. Every problem becomes a diagnostic; parsing goes
//! on after an error so that one run reports them all.
//!
//! **Invariant:** the `*_KEYS` lists are the whole format. The JSON Schema in
//! `docs/workflow.schema.json` is tested against them.

use super::Kind;
use crate::diagnostic::{Code, Diagnostic, did_you_mean};

/// The kind names, for help texts.
fn kind_names() -> String {
    Kind::names().collect::<Vec<_>>().join(", ")
}
use crate::yaml::{Node, Span, Value};

/// A value with the span it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

pub const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "prompt_dir",
    "models",
    "inputs",
    "budget",
    "concurrency",
    "start",
    "nodes",
    "edges",
    "loops",
    "output",
];
pub const MODEL_KEYS: &[&str] = &[
    "spec",
    "max_tokens",
    "price",
    "retries",
    "retry_delay",
    "timeout",
    "rate_limit",
    "cache",
    "settings",
];
pub const RATE_LIMIT_KEYS: &[&str] = &["rpm", "tpm"];
pub const PRICE_KEYS: &[&str] = &["input", "output"];
pub const INPUT_KEYS: &[&str] = &["type", "default", "description"];
pub const BUDGET_KEYS: &[&str] = &["tokens", "calls", "cost_usd", "wall_time"];
pub const NODE_COMMON_KEYS: &[&str] = &["id", "kind", "budget"];
pub const MODEL_CALL_KEYS: &[&str] = &[
    "model",
    "prompt",
    "template",
    "system",
    "sampling",
    "n",
    "logprobs",
    "schema",
    "repair_attempts",
    "continue",
];
pub const VERIFY_KEYS: &[&str] = &["target", "checks", "calibration"];
pub const SELECT_KEYS: &[&str] = &["from", "by", "order"];
pub const VOTE_KEYS: &[&str] = &["from", "items", "extract", "weight"];
pub const EXECUTE_LIMIT_KEYS: &[&str] = &["time", "memory", "output", "processes"];
pub const TOOL_HTTP_KEYS: &[&str] = &["url", "method", "body", "headers"];
pub const SAMPLING_KEYS: &[&str] = &["temperature", "top_p", "seed", "max_tokens", "stop"];
pub const CHECK_KINDS: &[&str] = &[
    "exact",
    "contains",
    "lines",
    "regex",
    "numeric",
    "json_schema",
    "judge",
];
pub const CHECK_OPTION_KEYS: &[&str] = &["ignore_case", "tolerance"];
pub const JUDGE_KEYS: &[&str] = &[
    "model", "prompt", "template", "system", "sampling", "logprobs", "continue",
];
pub const EDGE_KEYS: &[&str] = &["from", "to", "when"];
pub const LOOP_KEYS: &[&str] = &[
    "id",
    "from",
    "to",
    "max_rounds",
    "until",
    "converge",
    "budget",
    "round_tokens",
    "metrics",
    "accept",
];
pub const ACCEPT_KEYS: &[&str] = &[
    "when",
    "margin",
    "answer",
    "answer_change",
    "answer_change_margin",
];
pub const METRICS_KEYS: &[&str] = &["answer", "gold"];
pub const CONVERGE_KEYS: &[&str] = &["score", "patience", "min_delta"];
pub const OUTPUT_KEYS: &[&str] = &["from", "field", "select"];

#[derive(Debug, Default)]
pub struct RawWorkflow {
    pub version: Option<Spanned<i64>>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub prompt_dir: Option<Spanned<String>>,
    pub models: Vec<RawModel>,
    pub inputs: Vec<RawInput>,
    pub budget: Option<RawBudget>,
    pub concurrency: Option<Spanned<u64>>,
    /// Start nodes; the first node when absent.
    pub start: Vec<Spanned<String>>,
    pub nodes: Vec<RawNode>,
    pub edges: Vec<RawEdge>,
    pub loops: Vec<RawLoop>,
    pub output: Option<RawOutput>,
    /// Span of the whole document (for "missing key" errors).
    pub span: Span,
}

#[derive(Debug)]
pub struct RawModel {
    pub name: Spanned<String>,
    pub spec: Option<Spanned<String>>,
    pub max_tokens: Option<Spanned<u64>>,
    pub price_in: Option<f64>,
    pub price_out: Option<f64>,
    pub retries: Option<Spanned<u64>>,
    pub retry_delay: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rpm: Option<Spanned<u64>>,
    pub tpm: Option<Spanned<u64>>,
    /// `cache: false`: every call goes to the model.
    pub cache: Option<bool>,
    pub settings: serde_json::Value,
}

#[derive(Debug)]
pub struct RawInput {
    pub name: Spanned<String>,
    pub ty: Option<Spanned<String>>,
    pub default: Option<(serde_json::Value, Span)>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct RawBudget {
    pub span: Span,
    pub tokens: Option<Spanned<i64>>,
    pub calls: Option<Spanned<i64>>,
    pub cost_usd: Option<Spanned<f64>>,
    pub wall_time: Option<Spanned<String>>,
}

#[derive(Debug)]
pub struct RawNode {
    pub span: Span,
    pub id: Option<Spanned<String>>,
    pub kind: Option<Spanned<String>>,
    pub budget: Option<RawBudget>,
    /// What the kind's own reader (in the kinds table) made of its keys.
    pub body: RawBody,
}

/// A node's kind-specific keys as its kind's pass-1 reader read them: one
/// variant per reader, so a builder matches the one it expects.
#[derive(Debug)]
pub enum RawBody {
    /// No kind, or one that is not known: the keys were not judged.
    Unread,
    /// generate, critique, revise.
    Call(RawCall),
    Verify(RawVerify),
    Select(RawSelect),
    Vote(RawVote),
    /// The node-library kinds: their keys, type-checked by their builders
    /// in pass 2 (which compile templates and resolve names as they read).
    Keys(Vec<(&'static str, Node)>),
}

#[derive(Debug)]
pub struct RawVerify {
    pub target: Option<Spanned<String>>,
    /// The calibration file.
    pub calibration: Option<Spanned<String>>,
    pub checks: Vec<RawCheck>,
}

#[derive(Debug)]
pub struct RawSelect {
    pub from: Option<Spanned<String>>,
    pub by: Option<Spanned<String>>,
    pub order: Option<Spanned<String>>,
}

#[derive(Debug)]
pub struct RawVote {
    pub from: Option<Spanned<String>>,
    /// The answers as an expression (instead of `from`'s samples).
    pub items: Option<Spanned<String>>,
    pub extract: Option<Spanned<String>>,
    pub weight: Option<Spanned<String>>,
}

impl RawNode {
    /// The node's model calls as written: its own (`None`), and its judge
    /// checks' (`Some(check index)`).
    pub fn calls(&self) -> Vec<(Option<usize>, &RawCall)> {
        match &self.body {
            RawBody::Call(c) => vec![(None, c)],
            RawBody::Verify(v) => v
                .checks
                .iter()
                .enumerate()
                .filter_map(|(ci, c)| match c {
                    RawCheck::Judge(call) => Some((Some(ci), &**call)),
                    _ => None,
                })
                .collect(),
            RawBody::Unread | RawBody::Select(_) | RawBody::Vote(_) | RawBody::Keys(_) => {
                Vec::new()
            }
        }
    }
}

/// A kind's pass-1 reader: its keys of the node (`f`) into its [`RawBody`].
pub(crate) type RawReader = fn(&mut Reader, &mut Fields<'_>, &NodeAt<'_>) -> RawBody;

/// The node a reader reads, for its messages.
pub(crate) struct NodeAt<'a> {
    pub span: Span,
    pub label: &'a str,
    /// The kind's own keys.
    pub keys: &'static [&'static str],
}

/// generate, critique, revise: a model call.
pub(crate) fn read_call(r: &mut Reader, f: &mut Fields<'_>, at: &NodeAt<'_>) -> RawBody {
    RawBody::Call(r.call_fields(f, at.span, at.label, true))
}

/// verify: a target, checks and a calibration file.
pub(crate) fn read_verify(r: &mut Reader, f: &mut Fields<'_>, at: &NodeAt<'_>) -> RawBody {
    let target = f.get("target").and_then(|n| r.string(n, "`target`"));
    let calibration = f
        .get("calibration")
        .and_then(|n| r.string(n, "`calibration`"));
    let checks = match f.get("checks") {
        Some(list) => {
            let items = r.list(list, "`checks`");
            if items.is_empty() {
                r.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        list.span,
                        format!("{} has an empty `checks` list", at.label),
                    )
                    .label("no checks")
                    .help("a verify node needs at least one check"),
                );
            }
            items.iter().filter_map(|item| r.check(item)).collect()
        }
        None => {
            r.err(
                Diagnostic::new(
                    Code::MissingKey,
                    at.span,
                    format!("{} has no `checks`", at.label),
                )
                .label("`checks` is required")
                .help(format!("a list of checks: {}", CHECK_KINDS.join(", "))),
            );
            Vec::new()
        }
    };
    RawBody::Verify(RawVerify {
        target,
        calibration,
        checks,
    })
}

/// select: `from`, `by`, `order`.
pub(crate) fn read_select(r: &mut Reader, f: &mut Fields<'_>, at: &NodeAt<'_>) -> RawBody {
    let from = f.get("from").and_then(|n| r.string(n, "`from`"));
    r.required(from.as_ref(), "from", at.label, at.span);
    let by = f.get("by").and_then(|n| r.string(n, "`by`"));
    r.required(by.as_ref(), "by", at.label, at.span);
    let order = f.get("order").and_then(|n| r.string(n, "`order`"));
    RawBody::Select(RawSelect { from, by, order })
}

/// vote: `from` or `items`, `extract`, `weight`.
pub(crate) fn read_vote(r: &mut Reader, f: &mut Fields<'_>, at: &NodeAt<'_>) -> RawBody {
    let from = f.get("from").and_then(|n| r.string(n, "`from`"));
    let items = f.get("items").and_then(|n| r.string(n, "`items`"));
    if f.get("items").is_none() {
        r.required(from.as_ref(), "from", at.label, at.span);
    }
    let extract = f.get("extract").and_then(|n| r.string(n, "`extract`"));
    let weight = f.get("weight").and_then(|n| r.string(n, "`weight`"));
    RawBody::Vote(RawVote {
        from,
        items,
        extract,
        weight,
    })
}

/// The node-library kinds: their keys, kept for their builders.
pub(crate) fn read_keys(_: &mut Reader, f: &mut Fields<'_>, at: &NodeAt<'_>) -> RawBody {
    RawBody::Keys(
        at.keys
            .iter()
            .filter_map(|key| Some((*key, f.get(key)?.clone())))
            .collect(),
    )
}

/// The model-call part of a node or a judge check.
#[derive(Debug, Default)]
pub struct RawCall {
    pub span: Span,
    pub model: Option<Spanned<String>>,
    pub prompt_file: Option<Spanned<String>>,
    pub template: Option<Spanned<String>>,
    pub system: Option<Spanned<String>>,
    pub sampling: RawSampling,
    pub n: Option<Spanned<u64>>,
    pub logprobs: Option<Spanned<u64>>,
    pub schema: Option<(serde_json::Value, Span)>,
    pub repair_attempts: Option<Spanned<u64>>,
    /// `continue: NODE`: carry on that node's conversation.
    pub continues: Option<Spanned<String>>,
}

#[derive(Debug, Default)]
pub struct RawSampling {
    pub temperature: Option<Spanned<f64>>,
    pub top_p: Option<Spanned<f64>>,
    pub seed: Option<u64>,
    pub max_tokens: Option<Spanned<u64>>,
    pub stop: Vec<String>,
}

#[derive(Debug)]
pub enum RawCheck {
    Exact {
        expected: Spanned<String>,
        ignore_case: bool,
    },
    Contains {
        expected: Spanned<String>,
        ignore_case: bool,
    },
    Lines(Spanned<String>),
    Regex(Spanned<String>),
    Numeric {
        expected: Spanned<String>,
        tolerance: f64,
    },
    JsonSchema(serde_json::Value, Span),
    Judge(Box<RawCall>),
}

#[derive(Debug)]
pub struct RawEdge {
    pub span: Span,
    pub from: Option<Spanned<String>>,
    pub to: Option<Spanned<String>>,
    pub when: Option<Spanned<String>>,
}

#[derive(Debug)]
pub struct RawLoop {
    pub span: Span,
    pub id: Option<Spanned<String>>,
    pub from: Option<Spanned<String>>,
    pub to: Option<Spanned<String>>,
    pub max_rounds: Option<Spanned<u64>>,
    pub until: Option<Spanned<String>>,
    pub converge: Option<RawConverge>,
    pub budget: Option<RawBudget>,
    pub round_tokens: Option<Spanned<u64>>,
    /// `metrics: {answer: REGEX, gold: TEMPLATE}`.
    pub metrics_answer: Option<Spanned<String>>,
    pub metrics_gold: Option<Spanned<String>>,
    pub accept: Option<RawAccept>,
}

/// `accept: RULE` or `accept: {when, margin, answer, answer_change,
/// answer_change_margin}`.
#[derive(Debug)]
pub struct RawAccept {
    pub span: Span,
    pub when: Option<Spanned<String>>,
    pub margin: Option<Spanned<f64>>,
    pub answer: Option<Spanned<String>>,
    pub answer_change: Option<Spanned<String>>,
    pub answer_change_margin: Option<Spanned<f64>>,
}

#[derive(Debug)]
pub struct RawConverge {
    pub score: Spanned<String>,
    pub patience: Option<Spanned<u64>>,
    pub min_delta: Option<f64>,
}

#[derive(Debug)]
pub struct RawOutput {
    pub span: Span,
    pub from: Vec<Spanned<String>>,
    pub field: Option<Spanned<String>>,
    pub select: Option<Spanned<String>>,
}

/// Collects diagnostics while reading the tree.
#[derive(Default)]
pub struct Reader {
    pub diagnostics: Vec<Diagnostic>,
}

/// The keys of one mapping, tracking which were read.
pub(crate) struct Fields<'n> {
    entries: &'n [(Node, Node)],
    used: Vec<bool>,
    allowed: Vec<&'static str>,
    what: String,
}

impl<'n> Fields<'n> {
    fn get(&mut self, key: &str) -> Option<&'n Node> {
        let i = self
            .entries
            .iter()
            .position(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))?;
        self.used[i] = true;
        Some(&self.entries[i].1)
    }

    /// Reports every key that was not read: unknown, or not valid here.
    fn finish(self, r: &mut Reader) {
        let allowed = &self.allowed;
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let name = match &k.value {
                Value::Str(s) => s.clone(),
                other => format!("{other:?}"),
            };
            r.diagnostics
                .push(unknown_key(k.span, &name, &self.what, allowed));
        }
    }
}

/// A key that `what` does not take, with the nearest allowed one.
pub(crate) fn unknown_key(span: Span, name: &str, what: &str, allowed: &[&str]) -> Diagnostic {
    let d = Diagnostic::new(
        Code::UnknownKey,
        span,
        format!("unknown key `{name}` in {what}"),
    )
    .label("not a key here");
    match did_you_mean(name, allowed.iter().copied()) {
        Some(best) => d.help(format!("did you mean `{best}`?")),
        None => d.help(format!("expected one of: {}", allowed.join(", "))),
    }
}

/// A value of the wrong YAML type.
pub(crate) fn wrong_type(node: &Node, what: &str, expected: &str) -> Diagnostic {
    Diagnostic::new(
        Code::WrongType,
        node.span,
        format!(
            "{what} must be {expected}, found {}",
            node.value.type_name()
        ),
    )
    .label(format!("expected {expected}"))
}

impl Reader {
    fn err(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        self.err(wrong_type(node, what, expected));
    }

    fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        allowed: &[&'static [&'static str]],
    ) -> Option<Fields<'n>> {
        match &node.value {
            Value::Map(entries) => Some(Fields {
                entries,
                used: vec![false; entries.len()],
                allowed: allowed.iter().flat_map(|l| l.iter().copied()).collect(),
                what: what.to_string(),
            }),
            _ => {
                self.wrong_type(node, what, "a mapping");
                None
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        match &node.value {
            Value::Str(s) => Some(Spanned {
                value: s.clone(),
                span: node.span,
            }),
            _ => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    /// A string, or a number/bool rendered as text (for templates like `expected: 42`).
    fn text(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        let value = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                self.wrong_type(node, what, "a string");
                return None;
            }
        };
        Some(Spanned {
            value,
            span: node.span,
        })
    }

    fn int(&mut self, node: &Node, what: &str) -> Option<Spanned<i64>> {
        match &node.value {
            Value::Int(i) => Some(Spanned {
                value: *i,
                span: node.span,
            }),
            _ => {
                self.wrong_type(node, what, "an integer");
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, what: &str) -> Option<Spanned<u64>> {
        let i = self.int(node, what)?;
        if i.value < 0 {
            self.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    node.span,
                    format!("{what} must not be negative"),
                )
                .label("negative"),
            );
            return None;
        }
        Some(Spanned {
            value: i.value as u64,
            span: i.span,
        })
    }

    fn float(&mut self, node: &Node, what: &str) -> Option<Spanned<f64>> {
        match &node.value {
            Value::Int(i) => Some(Spanned {
                value: *i as f64,
                span: node.span,
            }),
            Value::Float(f) if f.is_finite() => Some(Spanned {
                value: *f,
                span: node.span,
            }),
            _ => {
                self.wrong_type(node, what, "a finite number");
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(node, what, "true or false");
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, what: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                self.wrong_type(node, what, "a list");
                &[]
            }
        }
    }

    /// Entries of a mapping keyed by name (models, inputs).
    fn named<'n>(&mut self, node: &'n Node, what: &str) -> Vec<(Spanned<String>, &'n Node)> {
        match &node.value {
            Value::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| self.string(k, &format!("a key of {what}")).map(|k| (k, v)))
                .collect(),
            Value::Null => Vec::new(),
            _ => {
                self.wrong_type(node, what, "a mapping");
                Vec::new()
            }
        }
    }

    fn required<T>(&mut self, value: Option<T>, key: &str, what: &str, span: Span) -> Option<T> {
        if value.is_none() {
            self.err(
                Diagnostic::new(Code::MissingKey, span, format!("{what} has no `{key}`"))
                    .label(format!("`{key}` is required")),
            );
        }
        value
    }

    /// Reads the whole document.
    pub fn workflow(&mut self, root: &Node) -> RawWorkflow {
        let mut w = RawWorkflow {
            span: root.span,
            ..RawWorkflow::default()
        };
        let Some(mut f) = self.fields(root, "the workflow", &[TOP_KEYS]) else {
            return w;
        };
        w.version = f.get("version").and_then(|n| self.int(n, "`version`"));
        w.name = f
            .get("name")
            .and_then(|n| self.string(n, "`name`"))
            .map(|s| s.value);
        w.description = f
            .get("description")
            .and_then(|n| self.string(n, "`description`"))
            .map(|s| s.value);
        w.prompt_dir = f
            .get("prompt_dir")
            .and_then(|n| self.string(n, "`prompt_dir`"));
        if let Some(n) = f.get("models") {
            for (name, v) in self.named(n, "`models`") {
                let model = self.model(name, v);
                w.models.push(model);
            }
        }
        if let Some(n) = f.get("inputs") {
            for (name, v) in self.named(n, "`inputs`") {
                let input = self.input(name, v);
                w.inputs.push(input);
            }
        }
        w.budget = f
            .get("budget")
            .map(|n| self.budget(n, "the workflow budget"));
        w.concurrency = f
            .get("concurrency")
            .and_then(|n| self.uint(n, "`concurrency`"));
        if let Some(n) = f.get("start") {
            w.start = match &n.value {
                Value::Str(_) => self.string(n, "`start`").into_iter().collect(),
                _ => self
                    .list(n, "`start`")
                    .iter()
                    .filter_map(|i| self.string(i, "a start node"))
                    .collect(),
            };
        }
        match f.get("nodes") {
            Some(n) => {
                for (i, item) in self.list(n, "`nodes`").iter().enumerate() {
                    let node = self.node(item, i);
                    w.nodes.push(node);
                }
            }
            None => self.err(
                Diagnostic::new(
                    Code::MissingKey,
                    Span::point(1, 1),
                    "the workflow has no `nodes`",
                )
                .label("`nodes` is required")
                .help("add a `nodes:` list with at least one node"),
            ),
        }
        if let Some(n) = f.get("edges") {
            for item in self.list(n, "`edges`") {
                if let Some(e) = self.edge(item) {
                    w.edges.push(e);
                }
            }
        }
        if let Some(n) = f.get("loops") {
            for item in self.list(n, "`loops`") {
                if let Some(l) = self.loop_(item) {
                    w.loops.push(l);
                }
            }
        }
        w.output = f.get("output").and_then(|n| self.output(n));
        f.finish(self);
        w
    }

    fn model(&mut self, name: Spanned<String>, node: &Node) -> RawModel {
        let mut m = RawModel {
            name,
            spec: None,
            max_tokens: None,
            price_in: None,
            price_out: None,
            retries: None,
            retry_delay: None,
            timeout: None,
            rpm: None,
            tpm: None,
            cache: None,
            settings: serde_json::Value::Null,
        };
        // Shorthand: `writer: scripted:replies.yaml`.
        if let Value::Str(_) = node.value {
            m.spec = self.string(node, "a model spec");
            return m;
        }
        let what = format!("model `{}`", m.name.value);
        let Some(mut f) = self.fields(node, &what, &[MODEL_KEYS]) else {
            return m;
        };
        m.spec = f
            .get("spec")
            .and_then(|n| self.string(n, &format!("`spec` of {what}")));
        m.max_tokens = f
            .get("max_tokens")
            .and_then(|n| self.uint(n, "`max_tokens`"));
        if let Some(p) = f.get("price") {
            if let Some(mut pf) = self.fields(p, "`price`", &[PRICE_KEYS]) {
                m.price_in = pf
                    .get("input")
                    .and_then(|n| self.float(n, "`price.input`"))
                    .map(|s| s.value);
                m.price_out = pf
                    .get("output")
                    .and_then(|n| self.float(n, "`price.output`"))
                    .map(|s| s.value);
                pf.finish(self);
            }
        }
        m.retries = f.get("retries").and_then(|n| self.uint(n, "`retries`"));
        m.retry_delay = f
            .get("retry_delay")
            .and_then(|n| self.text(n, "`retry_delay`"));
        m.timeout = f.get("timeout").and_then(|n| self.text(n, "`timeout`"));
        if let Some(r) = f.get("rate_limit") {
            if let Some(mut rf) = self.fields(r, "`rate_limit`", &[RATE_LIMIT_KEYS]) {
                m.rpm = rf.get("rpm").and_then(|n| self.uint(n, "`rate_limit.rpm`"));
                m.tpm = rf.get("tpm").and_then(|n| self.uint(n, "`rate_limit.tpm`"));
                rf.finish(self);
            }
        }
        m.cache = f.get("cache").and_then(|n| self.bool(n, "`cache`"));
        if let Some(s) = f.get("settings") {
            m.settings = s.to_json();
        }
        f.finish(self);
        m
    }

    fn input(&mut self, name: Spanned<String>, node: &Node) -> RawInput {
        let mut i = RawInput {
            name,
            ty: None,
            default: None,
            description: None,
        };
        match &node.value {
            // Shorthand: `task: string`.
            Value::Str(_) => i.ty = self.string(node, "an input type"),
            Value::Null => {}
            _ => {
                let what = format!("input `{}`", i.name.value);
                if let Some(mut f) = self.fields(node, &what, &[INPUT_KEYS]) {
                    i.ty = f.get("type").and_then(|n| self.string(n, "`type`"));
                    i.default = f.get("default").map(|n| (n.to_json(), n.span));
                    i.description = f
                        .get("description")
                        .and_then(|n| self.string(n, "`description`"))
                        .map(|s| s.value);
                    f.finish(self);
                }
            }
        }
        i
    }

    fn budget(&mut self, node: &Node, what: &str) -> RawBudget {
        let mut b = RawBudget {
            span: node.span,
            ..RawBudget::default()
        };
        let Some(mut f) = self.fields(node, what, &[BUDGET_KEYS]) else {
            return b;
        };
        b.tokens = f.get("tokens").and_then(|n| self.int(n, "`tokens`"));
        b.calls = f.get("calls").and_then(|n| self.int(n, "`calls`"));
        b.cost_usd = f.get("cost_usd").and_then(|n| self.float(n, "`cost_usd`"));
        b.wall_time = f.get("wall_time").and_then(|n| self.text(n, "`wall_time`"));
        f.finish(self);
        b
    }

    fn node(&mut self, node: &Node, index: usize) -> RawNode {
        let mut raw = RawNode {
            span: node.span,
            id: None,
            kind: None,
            budget: None,
            body: RawBody::Unread,
        };
        // Peek at the kind first: it decides which keys are valid.
        let kind = node.get("kind").and_then(|k| match &k.value {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        });
        let known = kind.and_then(Kind::parse);
        let specific: &'static [&'static str] = known.map_or(&[], |k| k.def().keys);
        let label = node
            .get("id")
            .and_then(|n| match &n.value {
                Value::Str(s) => Some(format!("node `{s}`")),
                _ => None,
            })
            .unwrap_or_else(|| format!("node #{}", index + 1));
        let what = match kind {
            Some(k) => format!("{label} (kind `{k}`)"),
            None => label.clone(),
        };
        let Some(mut f) = self.fields(node, &what, &[NODE_COMMON_KEYS, specific]) else {
            return raw;
        };
        raw.id = f.get("id").and_then(|n| self.string(n, "`id`"));
        self.required(raw.id.as_ref(), "id", &label, node.span);
        raw.kind = f.get("kind").and_then(|n| self.string(n, "`kind`"));
        match &raw.kind {
            None if node.get("kind").is_none() => {
                self.err(
                    Diagnostic::new(
                        Code::MissingKey,
                        node.span,
                        format!("{label} has no `kind`"),
                    )
                    .label("`kind` is required")
                    .help(format!("one of: {}", kind_names())),
                );
                // Without a kind the other keys cannot be judged.
                f.used.iter_mut().for_each(|u| *u = true);
            }
            None => f.used.iter_mut().for_each(|u| *u = true),
            Some(k) if known.is_none() => {
                let mut d = Diagnostic::new(
                    Code::InvalidValue,
                    k.span,
                    format!("unknown node kind `{}`", k.value),
                )
                .label("unknown kind");
                d = match did_you_mean(&k.value, Kind::names()) {
                    Some(best) => d.help(format!("did you mean `{best}`?")),
                    None => d.help(format!("one of: {}", kind_names())),
                };
                self.err(d);
                // Keys of an unknown kind cannot be judged: mark them read.
                f.used.iter_mut().for_each(|u| *u = true);
            }
            _ => {}
        }
        raw.budget = f
            .get("budget")
            .map(|n| self.budget(n, &format!("the budget of {label}")));
        if let Some(k) = known {
            let at = NodeAt {
                span: node.span,
                label: &label,
                keys: specific,
            };
            raw.body = (k.def().read)(self, &mut f, &at);
        }
        f.finish(self);
        raw
    }

    fn call_fields(
        &mut self,
        f: &mut Fields<'_>,
        span: Span,
        label: &str,
        node_level: bool,
    ) -> RawCall {
        let mut c = RawCall {
            span,
            ..RawCall::default()
        };
        c.model = f.get("model").and_then(|n| self.string(n, "`model`"));
        c.prompt_file = f.get("prompt").and_then(|n| self.string(n, "`prompt`"));
        c.template = f.get("template").and_then(|n| self.string(n, "`template`"));
        c.system = f.get("system").and_then(|n| self.string(n, "`system`"));
        if let Some(s) = f.get("sampling") {
            c.sampling = self.sampling(s);
        }
        c.logprobs = f.get("logprobs").and_then(|n| self.uint(n, "`logprobs`"));
        c.continues = f.get("continue").and_then(|n| self.string(n, "`continue`"));
        if node_level {
            c.n = f.get("n").and_then(|n| self.uint(n, "`n`"));
            c.schema = f.get("schema").map(|n| (n.to_json(), n.span));
            c.repair_attempts = f
                .get("repair_attempts")
                .and_then(|n| self.uint(n, "`repair_attempts`"));
        }
        if let (Some(p), Some(_)) = (&c.prompt_file, &c.template) {
            self.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    p.span,
                    format!("{label} sets both `prompt` and `template`"),
                )
                .label("one of these")
                .help(
                    "`prompt` names a file under the prompt directory; `template` is inline text",
                ),
            );
        }
        c
    }

    fn sampling(&mut self, node: &Node) -> RawSampling {
        let mut s = RawSampling::default();
        let Some(mut f) = self.fields(node, "`sampling`", &[SAMPLING_KEYS]) else {
            return s;
        };
        s.temperature = f
            .get("temperature")
            .and_then(|n| self.float(n, "`temperature`"));
        s.top_p = f.get("top_p").and_then(|n| self.float(n, "`top_p`"));
        s.seed = f
            .get("seed")
            .and_then(|n| self.uint(n, "`seed`"))
            .map(|v| v.value);
        s.max_tokens = f
            .get("max_tokens")
            .and_then(|n| self.uint(n, "`max_tokens`"));
        if let Some(n) = f.get("stop") {
            s.stop = match &n.value {
                Value::Str(one) => vec![one.clone()],
                _ => self
                    .list(n, "`stop`")
                    .iter()
                    .filter_map(|i| self.string(i, "a stop string").map(|s| s.value))
                    .collect(),
            };
        }
        f.finish(self);
        s
    }

    fn check(&mut self, node: &Node) -> Option<RawCheck> {
        let mut f = self.fields(node, "a check", &[CHECK_KINDS, CHECK_OPTION_KEYS])?;
        let present: Vec<&str> = CHECK_KINDS
            .iter()
            .copied()
            .filter(|k| node.get(k).is_some())
            .collect();
        if present.len() != 1 {
            let msg = if present.is_empty() {
                "a check names no check kind".to_string()
            } else {
                format!("a check names several kinds: {}", present.join(", "))
            };
            self.err(
                Diagnostic::new(Code::InvalidValue, node.span, msg)
                    .label("exactly one kind per check")
                    .help(format!("one of: {}", CHECK_KINDS.join(", "))),
            );
            return None;
        }
        let kind = present[0];
        let value = f.get(kind)?;
        let ignore_case = self.check_option(
            &mut f,
            kind,
            "ignore_case",
            matches!(kind, "exact" | "contains"),
        );
        // `contains` asks whether the text mentions something: any case.
        let ignore_case = ignore_case
            .and_then(|n| self.bool(n, "`ignore_case`"))
            .unwrap_or(kind == "contains");
        let tolerance = self.check_option(&mut f, kind, "tolerance", kind == "numeric");
        let tolerance = tolerance.and_then(|n| self.float(n, "`tolerance`"));
        if let Some(t) = &tolerance {
            if t.value < 0.0 {
                self.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        t.span,
                        "`tolerance` must not be negative",
                    )
                    .label("negative"),
                );
            }
        }
        let check = match kind {
            "exact" => self.text(value, "`exact`").map(|expected| RawCheck::Exact {
                expected,
                ignore_case,
            }),
            "contains" => self
                .text(value, "`contains`")
                .map(|expected| RawCheck::Contains {
                    expected,
                    ignore_case,
                }),
            "lines" => self.text(value, "`lines`").map(RawCheck::Lines),
            "regex" => self.string(value, "`regex`").map(RawCheck::Regex),
            "numeric" => self
                .text(value, "`numeric`")
                .map(|expected| RawCheck::Numeric {
                    expected,
                    tolerance: tolerance.map_or(1e-6, |t| t.value),
                }),
            "json_schema" => Some(RawCheck::JsonSchema(value.to_json(), value.span)),
            _ => {
                let mut jf = self.fields(value, "a `judge` check", &[JUDGE_KEYS])?;
                let call = self.call_fields(&mut jf, value.span, "the judge", false);
                jf.finish(self);
                Some(RawCheck::Judge(Box::new(call)))
            }
        };
        f.finish(self);
        check
    }

    /// An option key of a check, which only some check kinds accept.
    fn check_option<'n>(
        &mut self,
        f: &mut Fields<'n>,
        kind: &str,
        key: &str,
        valid: bool,
    ) -> Option<&'n Node> {
        let n = f.get(key)?;
        if !valid {
            self.err(
                Diagnostic::new(
                    Code::UnknownKey,
                    n.span,
                    format!("`{key}` does not apply to a `{kind}` check"),
                )
                .label("not valid here"),
            );
            return None;
        }
        Some(n)
    }

    fn edge(&mut self, node: &Node) -> Option<RawEdge> {
        let mut f = self.fields(node, "an edge", &[EDGE_KEYS])?;
        let e = RawEdge {
            span: node.span,
            from: f.get("from").and_then(|n| self.string(n, "`from`")),
            to: f.get("to").and_then(|n| self.string(n, "`to`")),
            when: f.get("when").and_then(|n| self.string(n, "`when`")),
        };
        self.required(e.from.as_ref(), "from", "an edge", node.span);
        self.required(e.to.as_ref(), "to", "an edge", node.span);
        f.finish(self);
        Some(e)
    }

    fn loop_(&mut self, node: &Node) -> Option<RawLoop> {
        let mut f = self.fields(node, "a loop", &[LOOP_KEYS])?;
        let id = f.get("id").and_then(|n| self.string(n, "`id`"));
        let what = id
            .as_ref()
            .map_or("a loop".to_string(), |i| format!("loop `{}`", i.value));
        let mut l = RawLoop {
            span: node.span,
            id,
            from: f.get("from").and_then(|n| self.string(n, "`from`")),
            to: f.get("to").and_then(|n| self.string(n, "`to`")),
            max_rounds: f
                .get("max_rounds")
                .and_then(|n| self.uint(n, "`max_rounds`")),
            until: f.get("until").and_then(|n| self.string(n, "`until`")),
            converge: None,
            budget: f
                .get("budget")
                .map(|n| self.budget(n, &format!("the budget of {what}"))),
            round_tokens: f
                .get("round_tokens")
                .and_then(|n| self.uint(n, "`round_tokens`")),
            metrics_answer: None,
            metrics_gold: None,
            accept: None,
        };
        if let Some(a) = f.get("accept") {
            l.accept = self.accept(a);
        }
        if let Some(m) = f.get("metrics") {
            if let Some(mut mf) = self.fields(m, "`metrics`", &[METRICS_KEYS]) {
                l.metrics_answer = mf.get("answer").and_then(|n| self.string(n, "`answer`"));
                l.metrics_gold = mf.get("gold").and_then(|n| self.string(n, "`gold`"));
                mf.finish(self);
            }
        }
        self.required(l.id.as_ref(), "id", &what, node.span);
        self.required(l.from.as_ref(), "from", &what, node.span);
        self.required(l.to.as_ref(), "to", &what, node.span);
        if l.max_rounds.is_none() {
            self.err(
                Diagnostic::new(
                    Code::MissingKey,
                    node.span,
                    format!("{what} has no `max_rounds`"),
                )
                .label("`max_rounds` is required")
                .help("every loop needs a hard cap, even with `until` or `converge`"),
            );
        }
        if let Some(c) = f.get("converge") {
            if let Some(mut cf) = self.fields(c, "`converge`", &[CONVERGE_KEYS]) {
                let score = cf.get("score").and_then(|n| self.string(n, "`score`"));
                let patience = cf.get("patience").and_then(|n| self.uint(n, "`patience`"));
                let min_delta = cf
                    .get("min_delta")
                    .and_then(|n| self.float(n, "`min_delta`"))
                    .map(|v| v.value);
                if let Some(score) = self.required(score, "score", "`converge`", c.span) {
                    l.converge = Some(RawConverge {
                        score,
                        patience,
                        min_delta,
                    });
                }
                cf.finish(self);
            }
        }
        f.finish(self);
        Some(l)
    }

    fn accept(&mut self, node: &Node) -> Option<RawAccept> {
        if let Value::Str(_) = &node.value {
            return Some(RawAccept {
                span: node.span,
                when: self.string(node, "`accept`"),
                margin: None,
                answer: None,
                answer_change: None,
                answer_change_margin: None,
            });
        }
        let mut f = self.fields(node, "`accept`", &[ACCEPT_KEYS])?;
        let a = RawAccept {
            span: node.span,
            when: f.get("when").and_then(|n| self.string(n, "`when`")),
            margin: f.get("margin").and_then(|n| self.float(n, "`margin`")),
            answer: f.get("answer").and_then(|n| self.string(n, "`answer`")),
            answer_change: f
                .get("answer_change")
                .and_then(|n| self.string(n, "`answer_change`")),
            answer_change_margin: f
                .get("answer_change_margin")
                .and_then(|n| self.float(n, "`answer_change_margin`")),
        };
        f.finish(self);
        self.required(a.when.as_ref(), "when", "`accept`", node.span);
        Some(a)
    }

    fn output(&mut self, node: &Node) -> Option<RawOutput> {
        let mut out = RawOutput {
            span: node.span,
            from: Vec::new(),
            field: None,
            select: None,
        };
        let from_node = match &node.value {
            Value::Str(_) | Value::Seq(_) => Some(node),
            _ => {
                let mut f = self.fields(node, "`output`", &[OUTPUT_KEYS])?;
                let from = f.get("from");
                out.field = f.get("field").and_then(|n| self.string(n, "`field`"));
                out.select = f.get("select").and_then(|n| self.string(n, "`select`"));
                f.finish(self);
                from
            }
        };
        if let Some(n) = from_node {
            out.from = match &n.value {
                Value::Str(_) => self.string(n, "`output.from`").into_iter().collect(),
                _ => self
                    .list(n, "`output.from`")
                    .iter()
                    .filter_map(|i| self.string(i, "a node id"))
                    .collect(),
            };
        }
        Some(out)
    }
}
