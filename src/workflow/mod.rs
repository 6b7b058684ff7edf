//! Workflow files: load, check and describe them.
//!
//! Loading runs in passes, like a compiler: bytes → UTF-8 text → spanned YAML
//! tree ([`crate::yaml`]) → shape-checked raw workflow (`raw`) → resolved,
//! compiled [`Workflow`] (`validate`). Each pass reports every problem it
//! finds; a later pass runs only on what the earlier ones could read.

mod kinds;
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

pub use kinds::{KINDS, Kind, KindDef};
pub use model::*;
pub use validate::{
    BUILTINS, DEFAULT_JUDGE_PROMPT, DEFAULT_MODEL_NAME, DEFAULT_MODEL_SPEC, DEFAULT_TARGET,
};

use crate::diagnostic::{self, Code, Diagnostic};
use crate::yaml::{self, Span, YamlErrorKind};

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
