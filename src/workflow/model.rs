//! The checked workflow: what the engine runs.
//!
//! **Invariant:** a [`Workflow`] value only exists after every validation pass
//! succeeded. Node, model and loop references are indices that are known to
//! be in range, every template compiled, every condition parsed, and the
//! forward edges (all edges except loop back edges) form a DAG.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::budget::Limits;
use crate::template::Templates;

/// A validated workflow, ready to run.
///
/// Read-only once loaded: the engine trusts the indices in it (nodes,
/// models, loops) and the topology computed from them, so its parts are
/// reached through accessors, never changed.
#[derive(Debug)]
pub struct Workflow {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    /// Where it was loaded from (for messages and relative paths).
    pub(crate) path: Option<PathBuf>,
    pub(crate) models: Vec<ModelDecl>,
    pub(crate) inputs: Vec<InputDecl>,
    pub(crate) budget: Limits,
    /// The most model calls in flight at once.
    pub(crate) concurrency: usize,
    pub(crate) nodes: Vec<NodeSpec>,
    pub(crate) edges: Vec<Edge>,
    pub(crate) loops: Vec<LoopSpec>,
    pub(crate) output: OutputSpec,
    pub(crate) templates: Arc<Templates>,
    /// The prompt files its nodes use, in the order they are written.
    pub(crate) prompt_files: Vec<PromptFile>,
    pub(crate) topology: Topology,
    /// Problems that do not stop it from running (`W…` codes), and their
    /// rendering against the source (empty when there are none).
    pub(crate) warnings: Vec<crate::diagnostic::Diagnostic>,
    pub(crate) warnings_rendered: String,
}

/// A prompt file a workflow uses, as it was read (or given in its place,
/// see [`crate::workflow::load_with_prompts`]).
#[derive(Debug, Clone)]
pub struct PromptFile {
    /// The compiled template's name (`NODE.prompt`).
    pub template: String,
    /// The file name as written in the workflow (relative to `prompt_dir`).
    pub file: String,
    /// Where it resolves.
    pub path: PathBuf,
    /// Where the workflow names it.
    pub span: crate::yaml::Span,
    pub text: String,
}

impl Workflow {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Where it was loaded from, if from a file.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// The prompt files its nodes use, in the order they are written (a
    /// file named by two nodes is listed twice).
    pub fn prompt_files(&self) -> &[PromptFile] {
        &self.prompt_files
    }

    pub fn models(&self) -> &[ModelDecl] {
        &self.models
    }

    pub fn inputs(&self) -> &[InputDecl] {
        &self.inputs
    }

    /// The workflow-level limits.
    pub fn budget(&self) -> &Limits {
        &self.budget
    }

    /// The most model calls in flight at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    pub fn loops(&self) -> &[LoopSpec] {
        &self.loops
    }

    pub fn output(&self) -> &OutputSpec {
        &self.output
    }

    /// Problems that do not stop it from running (`W…` codes).
    pub fn warnings(&self) -> &[crate::diagnostic::Diagnostic] {
        &self.warnings
    }

    /// The warnings rendered against the source (empty without warnings).
    pub fn warnings_rendered(&self) -> &str {
        &self.warnings_rendered
    }

    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }

    /// True when some node checks the output (exit code 1 means
    /// "unverified"): a verify or execute node that runs after an output
    /// candidate (downstream of an `output.from` node by edges or loop back
    /// edges), so that its verdict attaches to one. Verdict nodes that only
    /// feed the output (ReVISE's checks before its vote) steer the run but
    /// do not verify what it returns.
    pub fn verifies(&self) -> bool {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = self.output.from.clone();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut seen[n], true) {
                continue;
            }
            let next = self.edges.iter().filter(|e| e.from == n).map(|e| e.to);
            let back = self.loops.iter().filter(|l| l.from == n).map(|l| l.to);
            stack.extend(next.chain(back));
        }
        self.nodes
            .iter()
            .enumerate()
            .any(|(i, n)| seen[i] && n.kind.is_verdict())
    }
}

/// A named model: a backend spec plus the settings every call gets.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDecl {
    pub name: String,
    /// `scripted:PATH`, `openai:MODEL[@URL]`, `llama:PATH.gguf`, ...;
    /// `None` when the workflow leaves it to the caller (`Engine::with_model`,
    /// `--model NAME=SPEC`).
    pub spec: Option<String>,
    /// Default `max_tokens` for nodes that set none; also the budget's worst case.
    pub max_tokens: u32,
    pub price: Price,
    /// Transport retries of transient failures (`retries`, default 2).
    pub retry: crate::layer::RetryPolicy,
    /// Per-call timeout (`timeout`), if any.
    pub timeout: Option<Duration>,
    /// Requests and tokens per minute (`rate_limit`).
    pub rate_limit: crate::layer::RateLimits,
    /// Whether the response cache may serve its calls (`cache`, default
    /// true; `false` for calls that must be fresh).
    pub cache: bool,
    /// Backend-specific settings, passed through untouched.
    pub settings: serde_json::Value,
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok
            + completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InputDecl {
    pub name: String,
    pub ty: InputType,
    pub default: Option<serde_json::Value>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Any,
}

impl InputType {
    pub const NAMES: &'static [&'static str] = &[
        "string", "number", "integer", "boolean", "object", "array", "any",
    ];

    pub fn parse(s: &str) -> Option<InputType> {
        Some(match s {
            "string" => InputType::String,
            "number" => InputType::Number,
            "integer" => InputType::Integer,
            "boolean" => InputType::Boolean,
            "object" => InputType::Object,
            "array" => InputType::Array,
            "any" => InputType::Any,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether a JSON value has this type.
    pub fn accepts(self, v: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match self {
            InputType::String => v.is_string(),
            InputType::Number => v.is_number(),
            InputType::Integer => v.is_i64() || v.is_u64(),
            InputType::Boolean => v.is_boolean(),
            InputType::Object => v.is_object(),
            InputType::Array => matches!(v, J::Array(_)),
            InputType::Any => true,
        }
    }
}

#[derive(Debug)]
pub struct NodeSpec {
    pub id: String,
    pub kind: NodeKind,
    /// Limits on everything this node spends over the whole run.
    pub budget: Limits,
}

/// The closed set of node kinds: the refinement core (generate, critique,
/// verify, revise, select, vote) and the node library (execute, extract,
/// tool, embed, cluster, human_review), whose bodies live in
/// `engine::library`.
#[derive(Debug)]
pub enum NodeKind {
    /// Sample `n` completions of a prompt.
    Generate(ModelCall),
    /// Ask a model for structured feedback, validated against a JSON Schema.
    Critique(ModelCall),
    /// Check the current artifact; passes when every check passes.
    Verify(VerifySpec),
    /// Rewrite the current artifact; like `generate`, but tracked as a change.
    Revise(ModelCall),
    /// Pick one sample of another node by a score expression.
    Select(SelectSpec),
    /// Majority (or weighted) vote over the answers in another node's samples.
    Vote(VoteSpec),
    /// Run a program against tests in the sandbox.
    Execute(ExecuteSpec),
    /// Pull code and functions out of another node's replies.
    Extract(ExtractSpec),
    /// Call a command or an HTTP endpoint and capture what it did.
    Tool(ToolSpec),
    /// Embed a list of texts (model embeddings or lexical TF-IDF).
    Embed(EmbedSpec),
    /// Seeded k-means over an embed node's vectors, with representatives.
    Cluster(ClusterSpec),
    /// Accept or reject the edits between two texts (R3).
    HumanReview(ReviewSpec),
}

impl NodeKind {
    /// The fields of this node's output that templates can read, where they
    /// are known at load time; `None` only where they depend on the reply (a
    /// schema that declares no properties). Every kind is listed: a new kind
    /// must say what it outputs (tests run every shipped workflow and compare
    /// these lists with what each node really produced).
    pub fn output_fields(&self) -> Option<Vec<String>> {
        let own = |names: &[&str]| Some(names.iter().map(|s| s.to_string()).collect());
        let model = |call: &ModelCall, revise: bool| {
            let mut fields: Vec<String> = ["text", "round", "finish"].map(String::from).to_vec();
            if call.n > 1 {
                fields.push("samples".into());
            }
            if revise {
                fields.push("changed".into());
            }
            if let Some(schema) = &call.schema {
                let props = schema.source.get("properties")?.as_object()?;
                fields.push("data".into());
                fields.extend(props.keys().cloned());
            }
            Some(fields)
        };
        match self {
            NodeKind::Generate(c) | NodeKind::Critique(c) => model(c, false),
            NodeKind::Revise(c) => model(c, true),
            NodeKind::Verify(_) => {
                own(&["passed", "score", "checks", "feedback", "target", "round"])
            }
            NodeKind::Select(_) => own(&["text", "index", "score", "scores", "round"]),
            NodeKind::Vote(_) => own(&["text", "votes", "agreement", "weights", "method", "round"]),
            NodeKind::Execute(e) => {
                let mut fields = vec![
                    "text",
                    "feedback",
                    "passed",
                    "score",
                    "passed_count",
                    "total",
                    "results",
                    "isolation",
                    "round",
                ];
                if e.each.is_some() {
                    fields.extend(["passing", "best", "programs"]);
                }
                own(&fields)
            }
            NodeKind::Extract(_) => own(&[
                "text",
                "code",
                "programs",
                "functions",
                "has_errors",
                "round",
            ]),
            NodeKind::Tool(_) => own(&[
                "text",
                "status",
                "ok",
                "error_class",
                "truncated",
                "json",
                "elapsed_ms",
                "round",
            ]),
            NodeKind::Embed(_) => own(&[
                "items", "texts", "vectors", "method", "dims", "count", "round",
            ]),
            NodeKind::Cluster(_) => own(&[
                "text",
                "k",
                "clusters",
                "representatives",
                "representative_indices",
                "assignments",
                "inertia",
                "round",
            ]),
            NodeKind::HumanReview(_) => own(&[
                "text",
                "changed",
                "proposed",
                "accepted",
                "acceptance_rate",
                "edits",
                "rejected",
                "depth",
                "round",
            ]),
        }
    }

    /// The model calls a node of this kind may make (for budgets and graphs).
    pub fn model_calls(&self) -> Vec<&ModelCall> {
        match self {
            NodeKind::Generate(c) | NodeKind::Critique(c) | NodeKind::Revise(c) => vec![c],
            NodeKind::Verify(v) => v
                .checks
                .iter()
                .filter_map(|c| match c {
                    Check::Judge(call) => Some(call),
                    _ => None,
                })
                .collect(),
            NodeKind::Select(_)
            | NodeKind::Vote(_)
            | NodeKind::Execute(_)
            | NodeKind::Extract(_)
            | NodeKind::Tool(_)
            | NodeKind::Embed(_)
            | NodeKind::Cluster(_)
            | NodeKind::HumanReview(_) => Vec::new(),
        }
    }
}

/// A templated call to a named model.
#[derive(Debug, Clone)]
pub struct ModelCall {
    /// Index into [`Workflow::models`].
    pub model: usize,
    /// Template name of the user message.
    pub prompt: String,
    /// Template name of the system message, if any.
    pub system: Option<String>,
    pub sampling: Sampling,
    /// Number of samples.
    pub n: u32,
    /// Top-k logprobs per generated token, if wanted.
    pub logprobs: Option<u8>,
    /// JSON Schema the reply must satisfy (required for critique).
    pub schema: Option<Arc<Schema>>,
    /// Extra attempts when the reply does not satisfy the schema; the parse
    /// error is fed back to the model on each.
    pub repair_attempts: u32,
    /// The conversation (messages and reply) this call continues: the
    /// prompt is sent as the next user turn.
    pub continues: Option<Continue>,
}

/// Whose conversation a call continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continue {
    /// That model node's latest.
    Node(usize),
    /// The one that produced the current artifact (the latest output
    /// candidate): in a loop, the draft's in round 1 and then the revision's.
    Artifact,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// `None` means the model's default.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
}

/// A compiled JSON Schema plus its source.
pub struct Schema {
    pub source: serde_json::Value,
    pub validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("source", &self.source)
            .finish()
    }
}

impl Schema {
    pub fn compile(source: serde_json::Value) -> Result<Schema, String> {
        let validator = jsonschema::validator_for(&source).map_err(|e| e.to_string())?;
        Ok(Schema { source, validator })
    }

    /// The first few violations, one line each; empty when valid.
    pub fn violations(&self, instance: &serde_json::Value) -> Vec<String> {
        self.validator
            .iter_errors(instance)
            .take(5)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect()
    }
}

#[derive(Debug)]
pub struct VerifySpec {
    /// Template name of the text under test (default: `{{ artifact.text }}`).
    pub target: String,
    pub checks: Vec<Check>,
    /// Maps the mean of the checks' scores to a calibrated confidence
    /// (`calibration: FILE`); `passed` still comes from the checks.
    pub calibration: Option<Arc<crate::calibration::Calibration>>,
    /// Where that calibration was read from (resolved against the workflow).
    pub calibration_path: Option<std::path::PathBuf>,
}

#[derive(Debug)]
pub enum Check {
    /// Equal after trimming (optionally ignoring case). `expected` is a template.
    Exact { expected: String, ignore_case: bool },
    /// The target contains the text (a template), by default in any case.
    Contains { expected: String, ignore_case: bool },
    /// The target has exactly this many non-empty lines (a template).
    Lines { expected: String },
    /// The target matches the regular expression.
    Regex(regex::Regex),
    /// The last number in the target is within `tolerance` of `expected`.
    Numeric { expected: String, tolerance: f64 },
    /// The target parses as JSON and satisfies the schema.
    JsonSchema(Arc<Schema>),
    /// A model answers whether the target is acceptable.
    Judge(ModelCall),
}

impl Check {
    pub fn name(&self) -> &'static str {
        match self {
            Check::Exact { .. } => "exact",
            Check::Contains { .. } => "contains",
            Check::Lines { .. } => "lines",
            Check::Regex(_) => "regex",
            Check::Numeric { .. } => "numeric",
            Check::JsonSchema(_) => "json_schema",
            Check::Judge(_) => "judge",
        }
    }
}

#[derive(Debug)]
pub struct SelectSpec {
    /// The node whose samples are ranked.
    pub from: usize,
    /// Expression evaluated per sample, with `sample` bound to it.
    pub by: String,
    pub order: Order,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Max,
    Min,
}

/// What a vote counts.
#[derive(Debug)]
pub enum VoteFrom {
    /// The samples of a node.
    Node(usize),
    /// An expression giving a list of answers (texts), e.g. the final
    /// answers of several refinement chains.
    Items(String),
}

#[derive(Debug)]
pub struct VoteSpec {
    pub from: VoteFrom,
    /// Reads the answer from each sample (the whole trimmed text when absent).
    pub extract: Option<crate::answer::Rule>,
    /// Expression giving each sample's weight (`sample` bound); majority when absent.
    pub weight: Option<String>,
}

#[derive(Debug)]
pub struct ExecuteSpec {
    /// Template name of the program source (`item` bound with `each`).
    pub code: String,
    /// An expression giving a list: one program per item, each run against
    /// every test (CodeChain's samples).
    pub each: Option<String>,
    pub tests: TestSource,
    pub mode: TestMode,
    /// Argument vector; `{file}` is replaced by the program's file name.
    pub command: Vec<String>,
    pub file: String,
    pub limits: crate::sandbox::Limits,
    pub isolation: crate::sandbox::Isolation,
    /// Tests run at once.
    pub parallel: usize,
}

/// Where an execute node's tests come from.
#[derive(Debug)]
pub enum TestSource {
    /// Written in the workflow.
    Literal(Vec<TestCase>),
    /// An expression giving a list (e.g. `inputs.tests`), read at run time.
    Expr(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TestCase {
    /// Feed `input` on stdin; stdout must equal `output` (trailing
    /// whitespace of each line ignored).
    Stdio { input: String, output: String },
    /// Run the program followed by this code; passes when it exits with 0.
    Assert { code: String },
}

impl TestCase {
    /// One test case from JSON (the workflow's list, or an expression's value).
    pub fn from_json(v: &serde_json::Value, mode: TestMode) -> Result<TestCase, String> {
        let text = |v: &serde_json::Value| -> Option<String> {
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        match mode {
            TestMode::Stdio => {
                let input = v.get("input").and_then(text);
                let output = v.get("output").and_then(text);
                match (input, output) {
                    (Some(input), Some(output)) => Ok(TestCase::Stdio { input, output }),
                    _ => Err("needs string `input` and `output`".into()),
                }
            }
            TestMode::Assert => match v {
                serde_json::Value::String(code) => Ok(TestCase::Assert { code: code.clone() }),
                _ => match v.get("code").and_then(text) {
                    Some(code) => Ok(TestCase::Assert { code }),
                    None => Err("needs test code (a string, or `code:`)".into()),
                },
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestMode {
    Stdio,
    Assert,
}

#[derive(Debug)]
pub struct ExtractSpec {
    /// The node whose replies (all samples) are read; the artifact when absent.
    pub from: Option<usize>,
    /// Split the program into functions (Python); otherwise blocks only.
    pub functions: bool,
}

#[derive(Debug)]
pub struct ToolSpec {
    pub action: ToolAction,
    pub timeout: Duration,
    /// Characters of the response kept.
    pub max_output: usize,
}

#[derive(Debug)]
pub enum ToolAction {
    /// A program run directly (no shell); each argument is a template.
    Command {
        argv: Vec<String>,
        stdin: Option<String>,
        isolation: crate::sandbox::Isolation,
    },
    /// An HTTP request; `url` and `body` are templates, `body` must render to JSON.
    Http {
        method: String,
        url: String,
        body: Option<String>,
        headers: Vec<(String, String)>,
    },
}

#[derive(Debug)]
pub struct EmbedSpec {
    /// Expression giving the list of items.
    pub items: String,
    /// Template name rendering each item's text (`item` bound), if set.
    pub text: Option<String>,
    /// Model with embeddings; lexical TF-IDF when absent.
    pub model: Option<usize>,
    /// Dimensions of the TF-IDF vectors.
    pub dims: usize,
}

#[derive(Debug)]
pub struct ClusterSpec {
    /// An embed node.
    pub from: usize,
    pub k: ClusterK,
    pub seed: u64,
}

#[derive(Debug)]
pub enum ClusterK {
    Fixed(usize),
    /// An expression, e.g. a per-round schedule `[5, 4, 3, 2, 1][loop.round - 1]`.
    Expr(String),
}

#[derive(Debug)]
pub struct ReviewSpec {
    /// Template names of the text before and after the revision.
    pub before: String,
    pub after: String,
    /// Decisions when no person is asked (the run's `--review` wins).
    pub decisions: Option<ReviewDecisions>,
    /// How long a person (a `Reviewer`) may take to decide; the node fails
    /// past it (no limit when absent).
    pub timeout: Option<std::time::Duration>,
}

/// Where review decisions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewDecisions {
    /// Ask on the terminal.
    Ask,
    AcceptAll,
    RejectAll,
    /// A YAML/JSON file: one entry per round, each `accept_all`,
    /// `reject_all`, or a list of `accept`/`reject` per proposed edit.
    File(PathBuf),
}

/// A forward edge. Loop back edges live in [`LoopSpec`].
#[derive(Debug, Clone)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    /// A condition expression; the edge fires only when it is true.
    pub when: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LoopSpec {
    pub id: String,
    /// The back edge `from -> to`; `to` is the loop head.
    pub from: usize,
    pub to: usize,
    /// The body runs at most this many times (rounds are numbered from 1).
    pub max_rounds: u32,
    /// Stop before starting another round when this expression is true.
    pub until: Option<String>,
    pub converge: Option<Converge>,
    /// Limits for everything spent inside the loop.
    pub budget: Limits,
    /// A soft per-round token target: not enforced, measured by the
    /// over-budget ratio.
    pub round_tokens: Option<u64>,
    /// How the loop metrics judge a round, when the workflow says.
    pub metrics: LoopMetrics,
    /// When a revision replaces the current answer (`None`: always).
    pub accept: Option<Accept>,
    /// Nodes of the body (computed): on a path from the head to `from`.
    pub body: Vec<usize>,
}

/// A loop's acceptance rule (guarded refinement). The head is a verify
/// node: round 1 judges the draft, every later round the revision `from`
/// wrote. A revision that fails the rule is rejected: the head's verdict and
/// `from`'s output go back to the current (last accepted) answer, and the
/// next round sees why in `loop.rejected`.
#[derive(Debug, Clone)]
pub struct Accept {
    pub rule: AcceptRule,
    /// How much the score must rise for `improved`.
    pub margin: f64,
    /// The final answer in a judged text; defaults to the loop's
    /// `metrics.answer`.
    pub answer: Option<crate::answer::Rule>,
    /// What a revision that changes the final answer must pass as well.
    pub answer_change: Option<AcceptRule>,
    /// The margin for `improved` when the final answer changes (default:
    /// `margin`).
    pub answer_change_margin: Option<f64>,
}

impl Accept {
    /// A short description: `improved by 0.05; a changed answer: verified`.
    pub fn describe(&self) -> String {
        let rule = |r: &AcceptRule, margin: f64| match r {
            AcceptRule::Improved if margin > 0.0 => format!("improved by {margin}"),
            other => other.name().to_string(),
        };
        let mut s = rule(&self.rule, self.margin);
        let change_margin = self.answer_change_margin.unwrap_or(self.margin);
        match (&self.answer_change, self.answer_change_margin) {
            (Some(r), _) => s.push_str(&format!("; a changed answer: {}", rule(r, change_margin))),
            (None, Some(m)) => s.push_str(&format!("; a changed answer: improved by {m}")),
            (None, None) => {}
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AcceptRule {
    /// Every revision replaces the answer (no guard).
    Always,
    /// The verifier's score rises by at least the margin (and more than 0),
    /// or the verdict turns from failed to passed.
    Improved,
    /// The verifier passes the revision.
    Verified,
    /// A condition over `revision` and `loop.current` (`{score, passed,
    /// answer}` each).
    Expression(String),
}

impl AcceptRule {
    /// The rule as written (`always`, `improved`, `verified`, or the expression).
    pub fn name(&self) -> &str {
        match self {
            AcceptRule::Always => "always",
            AcceptRule::Improved => "improved",
            AcceptRule::Verified => "verified",
            AcceptRule::Expression(e) => e,
        }
    }
}

/// What loop metrics measure a round by, apart from the verifier that
/// steers the loop.
#[derive(Debug, Clone, Default)]
pub struct LoopMetrics {
    /// The final answer in a candidate's text: a change is a change of
    /// this, not any rewording.
    pub answer: Option<crate::answer::Rule>,
    /// Template name of the right answer (e.g. from an input): a win is a
    /// round whose answer equals it (numbers compared as numbers).
    pub gold: Option<String>,
}

/// Stop when the score has not improved by more than `min_delta` over the
/// best so far for `patience` consecutive rounds.
#[derive(Debug, Clone)]
pub struct Converge {
    pub score: String,
    pub patience: u32,
    pub min_delta: f64,
}

#[derive(Debug, Clone)]
pub struct OutputSpec {
    /// Nodes whose results are candidate outputs.
    pub from: Vec<usize>,
    /// Field of the node output to return (`text` by default; `.` for all).
    pub field: String,
    pub select: Selection,
}

impl OutputSpec {
    /// The returned value of a candidate's output: `field` as a dotted path
    /// (`data.answer`), or the whole output for `.`.
    pub fn read(&self, output: &serde_json::Value) -> Option<serde_json::Value> {
        if self.field == "." {
            return Some(output.clone());
        }
        self.field
            .split('.')
            .try_fold(output, |v, key| v.get(key))
            .cloned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The candidate with the best verdict (passed, then score); ties and
    /// unverified runs go to the latest.
    Best,
    /// The latest candidate.
    Latest,
}

/// Adjacency derived from edges and loops, computed once at load time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Topology {
    /// Forward edge indices into each node.
    pub incoming: Vec<Vec<usize>>,
    /// Forward edge indices out of each node.
    pub outgoing: Vec<Vec<usize>>,
    /// Loops whose back edge starts at each node.
    pub back_edges: Vec<Vec<usize>>,
    /// Loops containing each node, innermost first.
    pub loops_of: Vec<Vec<usize>>,
    /// Nodes with no incoming forward edge.
    pub starts: Vec<usize>,
    /// For each edge: the loops it leaves (source inside, target outside).
    pub exits: Vec<Vec<usize>>,
}

/// The default for `max_tokens` when neither node nor model sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 512;
