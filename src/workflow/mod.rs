//! Workflow files: load, check and describe them.
//!
//! Loading runs in passes, like a compiler: bytes → UTF-8 text → spanned YAML
//! tree ([`crate::yaml`]) → shape-checked raw workflow (`raw`) → resolved,
//! compiled [`Workflow`] (`validate`). Each pass reports every problem it
//! finds; a later pass runs only on what the earlier ones could read.

mod model;
mod raw;

/// The keys of the format, as the reader knows them: the JSON Schema and
/// the reference are checked against these lists.
pub mod keys {
    pub use super::raw::{
        BUDGET_KEYS, CHECK_KINDS, EDGE_KEYS, EXECUTE_LIMIT_KEYS, JUDGE_KEYS, LOOP_KEYS, MODEL_KEYS,
        NODE_COMMON_KEYS, RATE_LIMIT_KEYS, SAMPLING_KEYS, TOOL_HTTP_KEYS, TOP_KEYS,
    };
}
mod validate;

use std::path::{Path, PathBuf};

pub use model::*;
pub use validate::{
    BUILTINS, DEFAULT_JUDGE_PROMPT, DEFAULT_MODEL_NAME, DEFAULT_MODEL_SPEC, DEFAULT_TARGET,
};

use serde::Serialize;

use crate::diagnostic::{self, Code, Diagnostic};
use crate::yaml::{self, Span, YamlErrorKind};
use validate::{Builder, library};

/// The JSON Schema of the workflow format (`redraft schema`).
pub const SCHEMA: &str = include_str!("../../docs/workflow.schema.json");

/// Why a workflow could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid workflow ({} error{})", name, diagnostics.len(), if diagnostics.len() == 1 { "" } else { "s" })]
    Invalid {
        name: String,
        source_text: String,
        diagnostics: Vec<Diagnostic>,
    },
}

impl WorkflowError {
    /// Renders the diagnostics the way `redraft validate` prints them.
    pub fn render(&self) -> String {
        match self {
            WorkflowError::Io { .. } => format!("error[{}]: {self}\n", Code::Io.as_str()),
            WorkflowError::Invalid {
                name,
                source_text,
                diagnostics,
            } => diagnostic::render_all(diagnostics, name, source_text),
        }
    }

    /// The diagnostics as JSON objects (see [`diagnostics_json`]). An
    /// unreadable file is one `E001` I/O diagnostic at 1:1.
    pub fn to_json(&self) -> Vec<serde_json::Value> {
        match self {
            WorkflowError::Io { path, .. } => {
                let d = Diagnostic::new(Code::Io, crate::yaml::Span::point(1, 1), self.to_string());
                diagnostics_json(&path.display().to_string(), &[d])
            }
            WorkflowError::Invalid {
                name, diagnostics, ..
            } => diagnostics_json(name, diagnostics),
        }
    }

    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            WorkflowError::Io { .. } => &[],
            WorkflowError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

/// Diagnostics (errors or warnings) of `file` as JSON objects: `{code,
/// message, file, line, col, end_line, end_col, label, help, severity}`.
pub fn diagnostics_json(file: &str, diagnostics: &[Diagnostic]) -> Vec<serde_json::Value> {
    diagnostics
        .iter()
        .map(|d| {
            serde_json::json!({
                "code": d.code.as_str(),
                "message": d.message,
                "file": file,
                "line": d.span.line.max(1),
                "col": d.span.col.max(1),
                "end_line": d.span.end_line.max(d.span.line.max(1)),
                "end_col": d.span.end_col.max(d.span.col.max(1)),
                "label": d.label,
                "help": d.help,
                "related": d.related.iter().map(|(span, label)| serde_json::json!({
                    "line": span.line.max(1),
                    "col": span.col.max(1),
                    "end_line": span.end_line.max(span.line.max(1)),
                    "end_col": span.end_col.max(span.col.max(1)),
                    "label": label,
                })).collect::<Vec<_>>(),
                "severity": if d.code.is_warning() { "warning" } else { "error" },
            })
        })
        .collect()
}

/// Loads and checks a workflow file. Prompt files resolve against its directory.
pub fn load(path: &Path) -> Result<Workflow, WorkflowError> {
    load_with_prompts(path, &Prompts::new())
}

/// Prompt texts given in place of prompt files, by the file name as the
/// workflow writes it (`prompt: draft.j2` → `"draft.j2"`).
pub type Prompts = std::collections::BTreeMap<String, String>;

/// Loads a workflow file with some prompt files replaced by the given
/// texts (a candidate prompt, a migrated one): checked exactly as if the
/// files held them.
pub fn load_with_prompts(path: &Path, prompts: &Prompts) -> Result<Workflow, WorkflowError> {
    let bytes = read_limited(path).map_err(|source| WorkflowError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let name = path.display().to_string();
    let mut wf = load_source(&bytes, &name, base, prompts)?;
    wf.path = Some(path.to_path_buf());
    Ok(wf)
}

/// Reads at most one byte past the YAML size limit, so that a huge file is
/// refused without reading it all.
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let limit = yaml::Limits::default().max_bytes as u64 + 1;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Loads a workflow from a string; `name` is used in messages and `base_dir`
/// to find prompt files.
pub fn load_str(source: &str, name: &str, base_dir: &Path) -> Result<Workflow, WorkflowError> {
    load_bytes(source.as_bytes(), name, base_dir)
}

/// Loads a workflow from raw bytes (checked for UTF-8 and size first).
pub fn load_bytes(bytes: &[u8], name: &str, base_dir: &Path) -> Result<Workflow, WorkflowError> {
    load_source(bytes, name, base_dir, &Prompts::new())
}

/// Loads a workflow from a string with some prompt files given as texts
/// (see [`load_with_prompts`]).
pub fn load_str_with_prompts(
    source: &str,
    name: &str,
    base_dir: &Path,
    prompts: &Prompts,
) -> Result<Workflow, WorkflowError> {
    load_source(source.as_bytes(), name, base_dir, prompts)
}

fn load_source(
    bytes: &[u8],
    name: &str,
    base_dir: &Path,
    prompts: &Prompts,
) -> Result<Workflow, WorkflowError> {
    let invalid = |source_text: String, diagnostics: Vec<Diagnostic>| WorkflowError::Invalid {
        name: name.to_string(),
        source_text,
        diagnostics,
    };
    let limits = yaml::Limits::default();
    if bytes.len() > limits.max_bytes {
        let d = Diagnostic::new(
            Code::YamlLimit,
            Span::point(1, 1),
            format!(
                "the file is larger than {} KiB; workflows are small text files",
                limits.max_bytes / 1024
            ),
        )
        .label("too large");
        return Err(invalid(String::new(), vec![d]));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() as u32 + 1;
            let col = valid.iter().rev().take_while(|b| **b != b'\n').count() as u32 + 1;
            let d = Diagnostic::new(
                Code::NotUtf8,
                Span::point(line, col),
                format!(
                    "the file is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
            .label("invalid UTF-8");
            return Err(invalid(
                String::from_utf8_lossy(bytes).into_owned(),
                vec![d],
            ));
        }
    };
    let tree = match yaml::parse(text, limits) {
        Ok(t) => t,
        Err(e) => {
            let code = match e.kind {
                YamlErrorKind::Syntax
                | YamlErrorKind::MultipleDocuments
                | YamlErrorKind::DuplicateKey(_) => Code::YamlSyntax,
                YamlErrorKind::Empty => Code::Empty,
                _ => Code::YamlLimit,
            };
            let d = Diagnostic::new(code, e.span, e.message.clone()).label(match code {
                Code::YamlSyntax => "here",
                Code::Empty => "empty",
                _ => "limit exceeded",
            });
            let d = match e.kind {
                YamlErrorKind::Empty => d.help("a workflow starts with `version: 1`"),
                YamlErrorKind::DuplicateKey(first) => d.also(first, "first written here"),
                _ => d,
            };
            return Err(invalid(text.to_string(), vec![d]));
        }
    };
    let mut reader = raw::Reader::default();
    let raw = reader.workflow(&tree);
    let mut wf = validate::check(raw, base_dir, prompts.clone(), reader.diagnostics).map_err(
        |mut diagnostics| {
            diagnostics.sort_by_key(|d| (d.span.line, d.span.col));
            invalid(text.to_string(), diagnostics)
        },
    )?;
    if !wf.warnings.is_empty() {
        wf.warnings.sort_by_key(|d| (d.span.line, d.span.col));
        wf.warnings_rendered = diagnostic::render_all(&wf.warnings, name, text);
    }
    Ok(wf)
}

// ---- The table of node kinds ----
//
// The table of node kinds: one entry per kind, the only place a kind's
// name, keys, builder and properties are written down.
//
// Adding a kind: write its builder (`validate/`), its spec variant in
// [`NodeKind`] and its runner (`engine/`), then add one line here. The
// compiler then points at every `match` that must learn the kind (the
// engine's runner dispatch, the pass-1 reader), and tests check that the
// kind is in the JSON Schema (`docs/workflow.schema.json`) with exactly
// these keys and has a section in `docs/workflow-reference.md`.
//
// The table is the module's registry: it names each kind's pass-1 reader
// (`raw`) and pass-2 builder (`validate`), which look kinds up in it; it
// lives in the module's root so that those files do not import each other
// in a circle.

/// The closed set of node kinds, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Generate,
    Critique,
    Verify,
    Revise,
    Select,
    Vote,
    Execute,
    Extract,
    Tool,
    Embed,
    Cluster,
    HumanReview,
}

/// Everything the format knows about one kind.
pub struct KindDef {
    pub kind: Kind,
    /// The name written in `kind:`.
    pub name: &'static str,
    /// What a node of this kind does, in a line.
    pub summary: &'static str,
    /// Its own keys (besides `id`, `kind`, `budget`).
    pub keys: &'static [&'static str],
    /// Its output is a verdict on the artifact (`passed`, `score`): loop
    /// metrics and best-output selection read it.
    pub verdict: bool,
    /// Reads the kind's keys of a node (pass 1: shape and types).
    pub(crate) read: raw::RawReader,
    /// Builds the kind's typed spec from what `read` read (pass 2: names,
    /// templates, values).
    pub(crate) build: Builder,
}

impl std::fmt::Debug for KindDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindDef").field("name", &self.name).finish()
    }
}

/// Every kind, in [`Kind`] order.
pub static KINDS: [KindDef; 12] = [
    def(
        Kind::Generate,
        "generate",
        "sample `n` completions of a prompt",
        raw::MODEL_CALL_KEYS,
        false,
        raw::read_call,
        validate::generate,
    ),
    def(
        Kind::Critique,
        "critique",
        "structured feedback from a model, checked against a JSON Schema",
        raw::MODEL_CALL_KEYS,
        false,
        raw::read_call,
        validate::critique,
    ),
    def(
        Kind::Verify,
        "verify",
        "check the artifact; passes when every check passes",
        raw::VERIFY_KEYS,
        true,
        raw::read_verify,
        validate::verify,
    ),
    def(
        Kind::Revise,
        "revise",
        "rewrite the artifact (a generate tracked as a change)",
        raw::MODEL_CALL_KEYS,
        false,
        raw::read_call,
        validate::revise,
    ),
    def(
        Kind::Select,
        "select",
        "pick one sample of another node by a score expression",
        raw::SELECT_KEYS,
        false,
        raw::read_select,
        validate::select,
    ),
    def(
        Kind::Vote,
        "vote",
        "majority or weighted vote over the answers in another node's samples",
        raw::VOTE_KEYS,
        false,
        raw::read_vote,
        validate::vote,
    ),
    def(
        Kind::Execute,
        "execute",
        "run a program against tests in the sandbox",
        library::execute::KEYS,
        true,
        raw::read_keys,
        library::execute::build,
    ),
    def(
        Kind::Extract,
        "extract",
        "pull code and functions out of replies",
        library::extract::KEYS,
        false,
        raw::read_keys,
        library::extract::build,
    ),
    def(
        Kind::Tool,
        "tool",
        "call a command or an HTTP endpoint and capture what it did",
        library::tool::KEYS,
        false,
        raw::read_keys,
        library::tool::build,
    ),
    def(
        Kind::Embed,
        "embed",
        "embed a list of texts (model embeddings or lexical TF-IDF)",
        library::embed::KEYS,
        false,
        raw::read_keys,
        library::embed::build,
    ),
    def(
        Kind::Cluster,
        "cluster",
        "seeded k-means over an embed node's vectors, with representatives",
        library::cluster::KEYS,
        false,
        raw::read_keys,
        library::cluster::build,
    ),
    def(
        Kind::HumanReview,
        "human_review",
        "accept or reject the edits between two texts (R3)",
        library::human_review::KEYS,
        false,
        raw::read_keys,
        library::human_review::build,
    ),
];

const fn def(
    kind: Kind,
    name: &'static str,
    summary: &'static str,
    keys: &'static [&'static str],
    verdict: bool,
    read: raw::RawReader,
    build: Builder,
) -> KindDef {
    KindDef {
        kind,
        name,
        summary,
        keys,
        verdict,
        read,
        build,
    }
}

impl Kind {
    /// The kind named `name` (as written in `kind:`).
    pub fn parse(name: &str) -> Option<Kind> {
        KINDS.iter().find(|d| d.name == name).map(|d| d.kind)
    }

    /// Its entry in [`KINDS`].
    pub fn def(self) -> &'static KindDef {
        &KINDS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// Every kind's name, in table order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        KINDS.iter().map(|d| d.name)
    }
}

impl NodeKind {
    /// Which kind this spec is.
    pub fn kind(&self) -> Kind {
        match self {
            NodeKind::Generate(_) => Kind::Generate,
            NodeKind::Critique(_) => Kind::Critique,
            NodeKind::Verify(_) => Kind::Verify,
            NodeKind::Revise(_) => Kind::Revise,
            NodeKind::Select(_) => Kind::Select,
            NodeKind::Vote(_) => Kind::Vote,
            NodeKind::Execute(_) => Kind::Execute,
            NodeKind::Extract(_) => Kind::Extract,
            NodeKind::Tool(_) => Kind::Tool,
            NodeKind::Embed(_) => Kind::Embed,
            NodeKind::Cluster(_) => Kind::Cluster,
            NodeKind::HumanReview(_) => Kind::HumanReview,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Whether the node's output is a verdict on the artifact (`passed`,
    /// `score`): verify, and execute (tests passed, pass rate).
    pub fn is_verdict(&self) -> bool {
        self.kind().def().verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_kind_order_with_unique_names() {
        for (i, d) in KINDS.iter().enumerate() {
            assert_eq!(d.kind as usize, i, "{}", d.name);
            assert_eq!(Kind::parse(d.name), Some(d.kind));
            assert_eq!(serde_json::to_value(d.kind).unwrap(), d.name);
        }
        assert_eq!(Kind::parse("generat"), None);
    }
}
