//! PromptBridge: prompts calibrated per model, and migrated between models.
//!
//! Three steps, each usable on its own (`shared/design/methods.md` §4):
//! - [`calibrate`]: MAP-RPE for one (model, task). A population of prompts
//!   in islands, each candidate scored per item by an eval scorer on the
//!   task's items; a reflection model reads a parent's failures and
//!   proposes a better prompt; a child that beats its parent on a
//!   minibatch is scored on every item and joins its island; parents are
//!   drawn from the island's Pareto front (the candidates that lead on at
//!   least one item); the islands exchange their best now and then. State
//!   is journaled in the results store after every generation, and every
//!   candidate's scores are evals in the same store, so a stopped
//!   calibration resumes where it was.
//! - [`migrate::learn`]: from calibrated (source, target) prompt pairs over
//!   several tasks, a model writes the transfer description (the
//!   systematic edits), kept as a reviewable [`Mapping`] file.
//! - [`migrate::Bridge`]: rewrites prompts (or a workflow's prompt files)
//!   for the target model with a mapping, with no target-side evaluation,
//!   and checks a migration on held-out data (direct transfer vs migrated,
//!   flips against the source). With recorded cassettes it replays
//!   deterministically, for snapshot tests (`docs/migrations.md`).
//!
//! The model calls of the three steps are shipped workflows
//! (`workflows/promptbridge/`, prompts in `prompts/promptbridge/`), built
//! into the binary, so budgets, retries and recording apply as for any run.

pub mod calibrate;
pub mod migrate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{Engine, RunOptions};
use crate::eval::data::{DataSpec, Selection};
use crate::eval::score::Scorer;
use crate::eval::store::StoreError;
use crate::eval::{self, EvalError, EvalOptions, EvalPlan};
use crate::summary::RunStatus;
use crate::workflow::{self, Workflow, WorkflowError};

pub use calibrate::{CalibrateOptions, Calibration, Candidate, Proposal, Step};
pub use migrate::{Bridge, CheckReport, CheckSpec, Mapping, MigratedPrompt, MigratedWorkflow};

/// Why a PromptBridge step could not run.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A model step (reflect, transfer, migrate) did not give a usable reply.
    #[error("{step}: {message}")]
    Model { step: &'static str, message: String },
    /// A rewrite that stayed unusable (lost a placeholder, does not parse).
    #[error("{what}: no usable rewrite after {attempts} attempt(s); the last: {reason}")]
    Unusable {
        what: String,
        attempts: u32,
        reason: String,
    },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One task to calibrate a prompt for: a workflow that uses the prompt
/// file, the data it runs on and how its answers are scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// A name that pairs calibrations of the same task for two models.
    pub name: String,
    pub workflow: PathBuf,
    /// The prompt file to calibrate, as the workflow names it.
    pub prompt: String,
    pub data: DataSpec,
    /// The items calibration scores candidates on (its Pareto set).
    pub selection: Selection,
    /// `--scorer` as given (see `docs/eval.md`).
    pub scorer: String,
    #[serde(default)]
    pub extract: Option<String>,
    /// How the `code` scorer isolates programs (not part of the task's
    /// identity: it changes where tests run, not what they say).
    #[serde(skip, default = "bubblewrap")]
    pub isolation: crate::sandbox::Isolation,
}

fn bubblewrap() -> crate::sandbox::Isolation {
    crate::sandbox::Isolation::Bubblewrap
}

/// The shipped PromptBridge workflows, built into the binary.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Builtin {
    Reflect,
    Transfer,
    Migrate,
}

impl Builtin {
    fn name(self) -> &'static str {
        match self {
            Builtin::Reflect => "reflect",
            Builtin::Transfer => "transfer",
            Builtin::Migrate => "migrate",
        }
    }

    fn sources(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Builtin::Reflect => (
                include_str!("../../workflows/promptbridge/reflect.yaml"),
                "reflect.j2",
                include_str!("../../prompts/promptbridge/reflect.j2"),
            ),
            Builtin::Transfer => (
                include_str!("../../workflows/promptbridge/transfer.yaml"),
                "transfer.j2",
                include_str!("../../prompts/promptbridge/transfer.j2"),
            ),
            Builtin::Migrate => (
                include_str!("../../workflows/promptbridge/migrate.yaml"),
                "migrate.j2",
                include_str!("../../prompts/promptbridge/migrate.j2"),
            ),
        }
    }

    /// The workflow, its prompt given as text (so it runs from anywhere).
    pub(crate) fn load(self) -> Arc<Workflow> {
        let (yaml, file, prompt) = self.sources();
        let prompts = [(file.to_string(), prompt.to_string())].into();
        let name = format!("workflows/promptbridge/{}.yaml", self.name());
        let wf = workflow::load_str_with_prompts(yaml, &name, Path::new("."), &prompts)
            .unwrap_or_else(|e| panic!("the shipped {name} is valid (tested): {e}"));
        Arc::new(wf)
    }
}

/// The model that writes prompts (reflection, transfer description,
/// rewrites): one engine whose `writer` model is `spec`.
#[derive(Clone)]
pub(crate) struct Writer {
    engine: Engine,
    pub(crate) spec: String,
}

/// What one writer step returned, and what it cost.
pub(crate) struct Written {
    pub text: String,
    pub tokens: u64,
    pub calls: u64,
}

impl Writer {
    pub(crate) fn new(engine: Engine, spec: &str) -> Writer {
        Writer {
            engine: engine.with_model_spec("writer", spec),
            spec: spec.to_string(),
        }
    }

    /// Runs a built-in step; a run that does not finish with text is an
    /// error naming the step and why.
    pub(crate) async fn write(
        &self,
        step: Builtin,
        inputs: serde_json::Map<String, Value>,
        seed_offset: u64,
        token_limit: Option<u64>,
    ) -> Result<Written, BridgeError> {
        let mut opts = RunOptions {
            inputs,
            seed_offset,
            ..RunOptions::default()
        };
        opts.budget.tokens = token_limit;
        let summary = self
            .engine
            .run(step.load(), opts)
            .await
            .map_err(|e| BridgeError::Model {
                step: step.name(),
                message: e.to_string(),
            })?;
        let text = match (&summary.status, &summary.output) {
            (RunStatus::Finished, Some(Value::String(s))) => s.clone(),
            (RunStatus::Finished, Some(v)) => v.to_string(),
            _ => {
                return Err(BridgeError::Model {
                    step: step.name(),
                    message: format!(
                        "the {} run ended {}{}",
                        self.spec,
                        format!("{:?}", summary.status).to_lowercase(),
                        summary
                            .error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                });
            }
        };
        Ok(Written {
            text,
            tokens: summary.usage.total_tokens,
            calls: summary.usage.calls,
        })
    }
}

/// The prompt in a writer's reply: the first fenced block's content when
/// there is one (its info string dropped), else the whole reply; trimmed.
pub fn extract_prompt(reply: &str) -> String {
    let Some(start) = reply.find("```") else {
        return reply.trim().to_string();
    };
    let rest = &reply[start + 3..];
    // The info string (```jinja) runs to the end of the line.
    let body = match rest.find('\n') {
        Some(nl) if !rest[..nl].contains(' ') => &rest[nl + 1..],
        _ => rest,
    };
    let body = match body.find("```") {
        Some(end) => &body[..end],
        None => body,
    };
    body.trim().to_string()
}

/// The template expressions of a prompt (`{{ inputs.task }}`), each once,
/// in order: what a rewrite must keep word for word.
pub fn placeholders(prompt: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let p = &rest[start..start + len + 2];
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
        rest = &rest[start + len + 2..];
    }
    out
}

/// What to do with a rewrite that lost some of the original prompt's
/// placeholders (small writers often drop `{{ inputs.x }}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostPlaceholders {
    /// The rewrite is unusable (a proposal is rejected, a migration tries again).
    #[default]
    Reject,
    /// The lost placeholders are appended after a blank line, each on a
    /// line of its own, and the rewrite is used (and says which it got).
    Restore,
}

/// `rewrite` with `original`'s placeholders that it lost appended (after a
/// blank line, one per line), and the ones that were. A rewrite with no
/// text of its own stays as it is.
pub fn restore_placeholders(original: &str, rewrite: &str) -> (String, Vec<String>) {
    let lost: Vec<String> = placeholders(original)
        .into_iter()
        .filter(|p| !rewrite.contains(p.as_str()))
        .collect();
    if lost.is_empty() || rewrite.trim().is_empty() {
        return (rewrite.to_string(), Vec::new());
    }
    (
        format!("{}\n\n{}", rewrite.trim_end(), lost.join("\n")),
        lost,
    )
}

/// Why a rewritten prompt cannot replace `original`: empty, lost one of
/// its placeholders, or a template that does not parse. `None` when usable.
pub fn unusable(original: &str, rewrite: &str) -> Option<String> {
    if rewrite.trim().is_empty() {
        return Some("the rewrite is empty".into());
    }
    let lost: Vec<String> = placeholders(original)
        .into_iter()
        .filter(|p| !rewrite.contains(p.as_str()))
        .collect();
    if !lost.is_empty() {
        return Some(format!("it lost {}", lost.join(", ")));
    }
    let mut t = crate::template::Templates::new();
    if let Err(e) = t.add("rewrite", rewrite) {
        return Some(format!("it is not a valid template: {e}"));
    }
    let (before, after) = {
        let mut o = crate::template::Templates::new();
        let _ = o.add("original", original);
        (o.variable_paths("original"), t.variable_paths("rewrite"))
    };
    let mut new: Vec<&String> = after.difference(&before).collect();
    if !new.is_empty() {
        new.sort();
        return Some(format!(
            "it reads variables the original does not ({})",
            new.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

/// The placeholders as the writer prompts list them.
pub(crate) fn placeholder_list(prompt: &str) -> String {
    let p = placeholders(prompt);
    if p.is_empty() {
        "no template expressions (there are none to keep)".into()
    } else {
        p.join(", ")
    }
}

/// Cuts `s` to at most `max` characters, marking the cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The items an arm runs on and how they are scored (a task's, or a
/// check's).
pub(crate) struct Items<'a> {
    pub data: &'a DataSpec,
    pub selection: &'a Selection,
    pub scorer: &'a str,
    pub extract: Option<&'a str>,
}

/// A workflow with one prompt file's text given, every model run as
/// `model`, over a task's data: an eval plan.
pub(crate) struct Arm {
    pub plan: EvalPlan,
    pub engine: Engine,
}

impl Arm {
    /// `prompts` replace the workflow's prompt files; every model the
    /// workflow declares is run as `model`.
    pub(crate) fn new(
        workflow: &Path,
        prompts: &workflow::Prompts,
        model: &str,
        items: Items<'_>,
        name: String,
    ) -> Result<Arm, BridgeError> {
        let source = std::fs::read_to_string(workflow).map_err(|source| BridgeError::Io {
            path: workflow.to_path_buf(),
            source,
        })?;
        let wf = workflow::load_with_prompts(workflow, prompts)?;
        crate::backend::ModelSpec::parse(model)
            .map_err(|e| BridgeError::Invalid(format!("model {model}: {e}")))?;
        let mut engine = Engine::new();
        let mut models = BTreeMap::new();
        for m in wf.models() {
            engine = engine.with_model_spec(m.name.clone(), model);
            models.insert(m.name.clone(), model.to_string());
        }
        Ok(Arm {
            plan: EvalPlan {
                workflow: Arc::new(wf),
                workflow_source: source,
                models,
                data: items.data.clone(),
                selection: items.selection.clone(),
                scorer: items.scorer.to_string(),
                extract: items.extract.map(str::to_string),
                epochs: 1,
                name: Some(name),
                command: Vec::new(),
                review: None,
            },
            engine,
        })
    }

    /// Runs (or continues) the eval in `store`; returns every stored unit
    /// of it (other selections' too) and what this call spent.
    pub(crate) async fn run(
        &self,
        scorer: &Arc<Scorer>,
        store: &eval::store::SharedStore,
        concurrency: usize,
        cancel: &crate::engine::CancellationToken,
    ) -> Result<(Vec<eval::store::UnitRecord>, eval::Totals), BridgeError> {
        let opts = EvalOptions {
            concurrency,
            cancel: cancel.clone(),
            ..EvalOptions::default()
        };
        let out = eval::run(
            &self.engine,
            &self.plan,
            scorer.clone(),
            Box::new(store.clone()),
            opts,
            &eval::Quiet,
        )
        .await?;
        if out.end == eval::EvalEnd::Interrupted {
            return Err(BridgeError::Invalid("interrupted".into()));
        }
        let id = out.eval.id.clone();
        let units = store.with(move |s| s.units(&id, false)).await?;
        Ok((units, out.ran))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_is_the_first_fenced_block() {
        assert_eq!(
            extract_prompt("Sure!\n```\nSolve: {{ x }}\n```\nok"),
            "Solve: {{ x }}"
        );
        assert_eq!(extract_prompt("```jinja\nA\nB\n```"), "A\nB");
        assert_eq!(extract_prompt("  no fences  "), "no fences");
        // An unclosed fence keeps what follows it.
        assert_eq!(extract_prompt("```\nA {{ x }}"), "A {{ x }}");
        // A fence whose first line is prose keeps that line.
        assert_eq!(
            extract_prompt("```Answer in one word```"),
            "Answer in one word"
        );
    }

    #[test]
    fn placeholders_are_kept_word_for_word() {
        let p = "Q: {{ inputs.task }}\nAgain: {{ inputs.task }} {{ x | upper }}";
        assert_eq!(
            placeholders(p),
            vec!["{{ inputs.task }}", "{{ x | upper }}"]
        );
        assert_eq!(unusable(p, "Solve {{ inputs.task }} {{ x | upper }}"), None);
        assert_eq!(
            unusable(p, "Solve {{inputs.task}} {{ x | upper }}").unwrap(),
            "it lost {{ inputs.task }}"
        );
        assert_eq!(unusable(p, "  ").unwrap(), "the rewrite is empty");
        let broken = unusable(p, "{{ inputs.task }} {{ x | upper }} {% if %}").unwrap();
        assert!(broken.starts_with("it is not a valid template"), "{broken}");
        let new = unusable(p, "{{ inputs.task }} {{ x | upper }} {{ inputs.secret }}").unwrap();
        assert_eq!(
            new,
            "it reads variables the original does not (inputs.secret)"
        );
    }

    #[test]
    fn lost_placeholders_are_appended_when_asked() {
        let p = "Solve:\n{{ inputs.a }}\nand {{ inputs.b }}";
        assert_eq!(
            restore_placeholders(p, "Think about {{ inputs.b }}.\n"),
            (
                "Think about {{ inputs.b }}.\n\n{{ inputs.a }}".to_string(),
                vec!["{{ inputs.a }}".to_string()]
            )
        );
        assert_eq!(
            restore_placeholders(p, "x {{ inputs.a }}{{ inputs.b }}")
                .1
                .len(),
            0
        );
        assert_eq!(restore_placeholders(p, " \n"), (" \n".to_string(), vec![]));
        let (restored, _) = restore_placeholders(p, "Be brief.");
        assert_eq!(unusable(p, &restored), None);
    }

    #[test]
    fn the_shipped_steps_load() {
        for step in [Builtin::Reflect, Builtin::Transfer, Builtin::Migrate] {
            step.load();
        }
    }
}
