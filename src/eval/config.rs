//! An eval's settings, in two stages: [`EvalConfig`] is what a person
//! wrote (an eval YAML, flags, or both layered with [`EvalConfig::over`]),
//! every field optional; [`EvalConfig::resolve`] checks it against the
//! loaded workflow and gives an [`EvalSetup`]: the plan (what determines
//! the eval's id), the scorer, the engine with the model overrides and the
//! options. The CLI, PromptBridge and embedders all go through it, so a
//! setting means the same from every door.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::data::{Builtin, DataSpec, Selection};
use super::score::{SCORERS, Scorer};
use super::{EvalError, EvalOptions, EvalPlan, TotalBudget};
use crate::budget::Limits;
use crate::engine::Engine;
use crate::sandbox::Isolation;
use crate::workflow::Workflow;

/// The settings as written: the keys of an eval YAML and the flags of
/// `redraft eval` (the same names). Unset fields take the defaults of
/// [`EvalConfig::resolve`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// A data file or a built-in data set (`humaneval`, `gsm8k:PATH`, ...).
    pub data: Option<String>,
    /// Workflow input ← row field (a dotted path).
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// Workflow inputs with one value for every item.
    #[serde(default)]
    pub inputs: BTreeMap<String, Value>,
    /// The row field with the reference answer.
    pub answer: Option<String>,
    /// The row field with the item id.
    pub id: Option<String>,
    /// Row fields only scorers read.
    #[serde(default)]
    pub hidden: Vec<String>,
    pub scorer: Option<String>,
    /// For `numeric`: the pattern of the answer.
    pub extract: Option<String>,
    /// `bubblewrap` (default) or `none`.
    pub sandbox: Option<String>,
    pub limit: Option<usize>,
    #[serde(default)]
    pub ids: Vec<String>,
    pub shuffle: Option<u64>,
    pub epochs: Option<u32>,
    pub concurrency: Option<usize>,
    /// Limits for the whole eval: `tokens`, `calls`, `cost_usd`.
    #[serde(default)]
    pub total_budget: BTreeMap<String, String>,
    pub max_errors: Option<usize>,
    pub name: Option<String>,
    /// Model overrides: workflow model name → spec.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
}

/// What [`EvalConfig::resolve`] gives: everything `eval::run` takes.
pub struct EvalSetup {
    /// The workflow's models, with the config's overrides.
    pub engine: Engine,
    pub plan: EvalPlan,
    pub scorer: Scorer,
    /// Concurrency, total budget and error limit from the config; the rest
    /// at their defaults for the caller to set.
    pub opts: EvalOptions,
    pub isolation: Isolation,
}

impl EvalConfig {
    /// Reads an eval YAML; a relative data path is relative to the file.
    pub fn read(path: &Path) -> Result<EvalConfig, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            EvalError::Invalid(format!("cannot read eval file {}: {e}", path.display()))
        })?;
        let mut config: EvalConfig = serde_saphyr::from_str(&text)
            .map_err(|e| EvalError::Invalid(format!("eval file {}: {e}", path.display())))?;
        if let (Some(data), Some(dir)) = (&config.data, path.parent()) {
            let (prefix, p) = match Builtin::of_source(data) {
                Some((b, Some(p))) => (format!("{}:", b.name()), p.to_string()),
                Some((_, None)) => (data.clone(), String::new()),
                None => (String::new(), data.clone()),
            };
            if !p.is_empty() && Path::new(&p).is_relative() {
                config.data = Some(format!("{prefix}{}", dir.join(p).display()));
            }
        }
        Ok(config)
    }

    /// The eval file that goes with `workflow` by default: its name with
    /// `.eval.yaml`, when that file exists.
    pub fn beside(workflow: &Path) -> Option<PathBuf> {
        Some(workflow.with_extension("eval.yaml")).filter(|p| p.is_file())
    }

    /// `self` layered over `base`: a setting given here wins; maps and
    /// lists add to the base's (a key given here replaces the base's).
    pub fn over(self, base: EvalConfig) -> EvalConfig {
        fn extend<K: Ord, V>(mut base: BTreeMap<K, V>, over: BTreeMap<K, V>) -> BTreeMap<K, V> {
            base.extend(over);
            base
        }
        fn append<T>(mut base: Vec<T>, over: Vec<T>) -> Vec<T> {
            base.extend(over);
            base
        }
        EvalConfig {
            data: self.data.or(base.data),
            map: extend(base.map, self.map),
            inputs: extend(base.inputs, self.inputs),
            answer: self.answer.or(base.answer),
            id: self.id.or(base.id),
            hidden: append(base.hidden, self.hidden),
            scorer: self.scorer.or(base.scorer),
            extract: self.extract.or(base.extract),
            sandbox: self.sandbox.or(base.sandbox),
            limit: self.limit.or(base.limit),
            ids: append(base.ids, self.ids),
            shuffle: self.shuffle.or(base.shuffle),
            epochs: self.epochs.or(base.epochs),
            concurrency: self.concurrency.or(base.concurrency),
            total_budget: extend(base.total_budget, self.total_budget),
            max_errors: self.max_errors.or(base.max_errors),
            name: self.name.or(base.name),
            models: extend(base.models, self.models),
        }
    }

    /// How the code scorer isolates programs.
    pub fn isolation(&self) -> Result<Isolation, EvalError> {
        match self.sandbox.as_deref() {
            None | Some("bubblewrap") => Ok(Isolation::Bubblewrap),
            Some("none") => Ok(Isolation::None),
            Some(other) => Err(invalid(format!(
                "sandbox {other}: expected bubblewrap or none"
            ))),
        }
    }

    /// Checks the settings against `workflow` (its text as run in
    /// `source`) and builds the eval. Defaults: the data set's own scorer
    /// (`exact` for a file), 1 epoch, concurrency 4.
    pub fn resolve(self, workflow: Workflow, source: String) -> Result<EvalSetup, EvalError> {
        let isolation = self.isolation()?;
        let engine = engine_for(&workflow, &self.models)?;
        let data = DataSpec {
            source: self.data.ok_or_else(|| {
                let builtins: Vec<&str> = Builtin::ALL.iter().map(|b| b.name()).collect();
                invalid(format!(
                    "no data set: give --data FILE (or {}), or `data:` in the eval file",
                    builtins.join(", ")
                ))
            })?,
            map: self.map,
            inputs: self.inputs,
            answer: self.answer,
            id: self.id,
            hidden: self.hidden,
        };
        let builtin = Builtin::of_source(&data.source).map(|(b, _)| b);
        let scorer_spec = match self.scorer {
            Some(s) => s,
            None => match builtin.and_then(|b| b.default_scorer()) {
                Some(s) => s.to_string(),
                None if builtin.is_some() => {
                    return Err(invalid(format!(
                        "data set `{}` has no reference answers for every item: choose --scorer judge:WORKFLOW (scorers: {SCORERS})",
                        data.source
                    )));
                }
                None => "exact".to_string(),
            },
        };
        let scorer = Scorer::parse(&scorer_spec, self.extract.as_deref(), isolation)?;
        let epochs = self.epochs.unwrap_or(1);
        if epochs == 0 {
            return Err(invalid("epochs must be at least 1"));
        }
        let concurrency = self.concurrency.unwrap_or(4);
        if concurrency == 0 {
            return Err(invalid("concurrency must be at least 1"));
        }
        let totals: Vec<String> = self
            .total_budget
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let total = Limits::parse(&totals, "--total-budget").map_err(EvalError::Invalid)?;
        if total.wall_time.is_some() {
            return Err(invalid(
                "--total-budget wall_time: not supported for a whole eval (stop it with Ctrl-C; it resumes)",
            ));
        }
        let plan = EvalPlan {
            workflow: Arc::new(workflow),
            workflow_source: source,
            models: self.models,
            data,
            selection: Selection {
                ids: self.ids,
                shuffle: self.shuffle,
                limit: self.limit,
            },
            scorer: scorer_spec,
            extract: self.extract,
            epochs,
            name: self.name,
            command: Vec::new(),
            review: None,
        };
        let opts = EvalOptions {
            concurrency,
            total: TotalBudget {
                tokens: total.tokens,
                calls: total.calls,
                cost_usd: total.cost_usd,
            },
            max_errors: self.max_errors,
            ..EvalOptions::default()
        };
        Ok(EvalSetup {
            engine,
            plan,
            scorer,
            opts,
            isolation,
        })
    }
}

/// An engine that runs `workflow`'s models as `models` (name → spec)
/// say; every name must be one of the workflow's and every spec must parse.
pub fn engine_for(
    workflow: &Workflow,
    models: &BTreeMap<String, String>,
) -> Result<Engine, EvalError> {
    let mut engine = Engine::new();
    for (name, spec) in models {
        if workflow.model_index(name).is_none() {
            let known: Vec<&str> = workflow.models.iter().map(|m| m.name.as_str()).collect();
            let name = crate::redact::text(name);
            return Err(invalid(format!(
                "--model {name}: the workflow has no model `{name}` (models: {})",
                known.join(", ")
            )));
        }
        crate::backend::ModelSpec::parse(spec)
            .map_err(|e| invalid(format!("--model {name}: {e}")))?;
        // Opened by the engine with the workflow's settings for `name`.
        engine = engine.with_model_spec(name, spec);
    }
    Ok(engine)
}

fn invalid(message: impl Into<String>) -> EvalError {
    EvalError::Invalid(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_given_over_a_base_wins_and_maps_and_lists_add_up() {
        let base: EvalConfig = serde_saphyr::from_str(
            "data: a.jsonl\nmap: {task: q, b: x}\nids: [1]\nepochs: 2\ntotal_budget: {tokens: '5'}\n",
        )
        .unwrap();
        let over = EvalConfig {
            data: Some("b.jsonl".into()),
            map: [("task".to_string(), "question".to_string())].into(),
            ids: vec!["2".into()],
            ..EvalConfig::default()
        };
        let c = over.over(base);
        assert_eq!(c.data.as_deref(), Some("b.jsonl"));
        assert_eq!(c.map["task"], "question");
        assert_eq!(c.map["b"], "x");
        assert_eq!(c.ids, ["1", "2"]);
        assert_eq!(c.epochs, Some(2));
        assert_eq!(c.total_budget["tokens"], "5");
    }

    #[test]
    fn an_unknown_key_in_an_eval_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("redraft-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.eval.yaml");
        std::fs::write(&p, "data: d.jsonl\nepoch: 3\n").unwrap();
        let e = EvalConfig::read(&p).unwrap_err().to_string();
        assert!(e.contains("x.eval.yaml") && e.contains("epoch"), "{e}");
        std::fs::write(&p, "data: d.jsonl\n").unwrap();
        let c = EvalConfig::read(&p).unwrap();
        assert_eq!(c.data, Some(dir.join("d.jsonl").display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
