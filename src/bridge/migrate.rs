//! The mapping (a transfer description learned from calibrated pairs) and
//! migration: prompts rewritten for the target model, checked on held-out
//! data, recorded once and replayed in snapshot tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::calibrate::Calibration;
use super::{Arm, BridgeError, Builtin, Writer, extract_prompt, placeholder_list, unusable};
use crate::backend::cassette::CassetteWriter;
use crate::engine::{CancellationToken, Engine};
use crate::eval::data::{DataSpec, Selection};
use crate::eval::score::Scorer;
use crate::eval::stats;
use crate::sandbox::Isolation;
use crate::workflow::{self, Prompts};

/// A learned source → target mapping: the transfer description and the
/// calibrated pairs it was written from. Kept as a YAML file to review
/// and commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    /// The source model (the spec its prompts were calibrated with).
    pub from: String,
    pub to: String,
    /// The model that wrote the description (and, by default, rewrites).
    pub writer: String,
    /// The systematic source → target edits, in the writer's words. Empty
    /// when every calibrated pair has the same prompt for both models:
    /// there is no edit to learn, and migration keeps prompts as they are.
    pub description: String,
    pub pairs: Vec<Pair>,
}

/// One task's calibrated prompts for the two models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub task: String,
    pub source: String,
    pub target: String,
    /// Mean scores on the task's calibration items.
    pub source_score: f64,
    pub target_score: f64,
    /// A(Mt, T, p*Ms): the target model's mean score with the source's
    /// best prompt, when the target's calibration scored that very prompt
    /// (the seed both started from, or a proposal both reached); else
    /// unmeasured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prompt_on_target: Option<f64>,
    /// PromptBridge's transfer gap Δ = A(Mt, T, p*Ms) − A(Mt, T, p*Mt):
    /// what the target loses by running the source's best prompt instead
    /// of its own (≤ 0; 0 when the two best prompts are the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_gap: Option<f64>,
}

impl Mapping {
    pub fn load(path: &Path) -> Result<Mapping, BridgeError> {
        let text = std::fs::read_to_string(path).map_err(|source| BridgeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_saphyr::from_str(&text)
            .map_err(|e| BridgeError::Invalid(format!("mapping {}: {e}", path.display())))
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a mapping serialises")
    }

    pub fn save(&self, path: &Path) -> Result<(), BridgeError> {
        let io = |source| BridgeError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        crate::file::write_atomic(path, self.to_yaml()).map_err(io)
    }
}

/// The calibrated pairs for `from` → `to`: tasks calibrated for both
/// models (same task key), each model's best calibration of it.
pub fn pairs(calibrations: &[Calibration], from: &str, to: &str) -> Vec<Pair> {
    let best = |model: &str, key: &str| {
        calibrations
            .iter()
            .filter(|c| c.model == model && c.task_key == key)
            .max_by(|a, b| a.best().mean.total_cmp(&b.best().mean))
    };
    let mut keys: Vec<&str> = calibrations.iter().map(|c| c.task_key.as_str()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (s, t) = (best(from, key)?, best(to, key)?);
            let source = s.best().prompt.clone();
            // Every calibration of the task on the target model, searched for
            // the source's prompt (the seed, or a proposal both reached).
            let source_prompt_on_target = calibrations
                .iter()
                .filter(|c| c.model == to && c.task_key == key)
                .flat_map(|c| c.candidates.iter())
                .find(|c| c.prompt.trim() == source.trim())
                .map(|c| c.mean);
            Some(Pair {
                task: s.task.clone(),
                source,
                target: t.best().prompt.clone(),
                source_score: s.best().mean,
                target_score: t.best().mean,
                source_prompt_on_target,
                transfer_gap: source_prompt_on_target.map(|a| a - t.best().mean),
            })
        })
        .collect()
}

/// Has `writer` describe the systematic edits from `pairs`' source
/// prompts to their target prompts. When no pair differs, nothing is
/// asked and the description is empty (a writer asked to describe edits
/// that are not there invents some).
pub async fn learn(
    pairs: Vec<Pair>,
    from: &str,
    to: &str,
    writer: &str,
) -> Result<Mapping, BridgeError> {
    if pairs.is_empty() {
        return Err(BridgeError::Invalid(format!(
            "no task is calibrated for both {from} and {to}: run `redraft calibrate` for each model on the same tasks first"
        )));
    }
    let mapping = |description: String, pairs| Mapping {
        from: from.to_string(),
        to: to.to_string(),
        writer: writer.to_string(),
        description,
        pairs,
    };
    if pairs.iter().all(|p| p.source.trim() == p.target.trim()) {
        return Ok(mapping(String::new(), pairs));
    }
    let shown: String = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "Task {} ({}):\nPrompt for the source model (score {:.2}):\n```\n{}\n```\nPrompt for the target model (score {:.2}):\n```\n{}\n```\n\n",
                i + 1,
                p.task,
                p.source_score,
                p.source,
                p.target_score,
                p.target
            )
        })
        .collect();
    let inputs = serde_json::Map::from_iter([("pairs".to_string(), Value::from(shown))]);
    let written = Writer::new(Engine::new(), writer)
        .write(Builtin::Transfer, inputs, 0, None)
        .await?;
    Ok(mapping(written.text.trim().to_string(), pairs))
}

/// A prompt rewritten for the target model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigratedPrompt {
    /// The file name as the workflow (or the command line) gives it.
    pub file: String,
    pub path: PathBuf,
    pub original: String,
    pub text: String,
    /// Rewrites it took (a rewrite that lost a placeholder is tried again;
    /// 0 when the mapping has no edit and the prompt was kept).
    pub attempts: u32,
    pub tokens: u64,
    /// Placeholders the rewrite lost and got back ([`Bridge::lost_placeholders`]).
    pub restored: Vec<String>,
}

/// A workflow with its prompt files rewritten (nothing written yet).
#[derive(Debug, Clone)]
pub struct MigratedWorkflow {
    pub path: PathBuf,
    pub prompts: Vec<MigratedPrompt>,
}

impl MigratedWorkflow {
    /// The prompt texts to load the workflow with (file → migrated text).
    pub fn prompt_texts(&self) -> Prompts {
        self.prompts
            .iter()
            .map(|p| (p.file.clone(), p.text.clone()))
            .collect()
    }

    /// Writes the migration: each prompt beside its original as
    /// `NAME.TAG.EXT` and the workflow as `NAME.TAG.yaml` naming them; with
    /// `in_place`, over the original prompt files instead (the workflow is
    /// then unchanged). Never replaces an existing file otherwise.
    /// Returns the files written.
    pub fn write(&self, tag: &str, in_place: bool) -> Result<Vec<PathBuf>, BridgeError> {
        if in_place {
            return write_prompts(&self.prompts, None, true);
        }
        check_tag(tag)?;
        let source = std::fs::read_to_string(&self.path).map_err(|source| BridgeError::Io {
            path: self.path.clone(),
            source,
        })?;
        let wf = workflow::load(&self.path)?;
        let renamed = |file: &str| tagged(Path::new(file), tag).display().to_string();
        let mut edits: Vec<(crate::yaml::Span, &str, String)> = wf
            .prompt_files()
            .iter()
            .filter(|f| self.prompts.iter().any(|p| p.file == f.file))
            .map(|f| (f.span, f.file.as_str(), renamed(&f.file)))
            .collect();
        edits.sort_by_key(|(s, _, _)| std::cmp::Reverse((s.line, s.col)));
        let mut yaml = source;
        for (span, old, new) in &edits {
            yaml = replace_at(&yaml, *span, old, new).ok_or_else(|| {
                BridgeError::Invalid(format!(
                    "{}:{}:{}: cannot find `{old}` where the workflow names it",
                    self.path.display(),
                    span.line,
                    span.col
                ))
            })?;
        }
        let out = tagged(&self.path, tag);
        // The migrated workflow must load with the migrated prompts.
        let texts: Prompts = self
            .prompts
            .iter()
            .map(|p| (renamed(&p.file), p.text.clone()))
            .collect();
        let base = self.path.parent().unwrap_or(Path::new("."));
        workflow::load_str_with_prompts(&yaml, &out.display().to_string(), base, &texts)?;
        refuse_existing(&out)?;
        let mut written = write_prompts(&self.prompts, Some(tag), false)?;
        crate::file::write_atomic(&out, yaml).map_err(|source| BridgeError::Io {
            path: out.clone(),
            source,
        })?;
        written.push(out);
        Ok(written)
    }
}

/// `dir/name.ext` → `dir/name.TAG.ext`.
pub fn tagged(path: &Path, tag: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("prompt");
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}.{tag}.{ext}"),
        None => format!("{stem}.{tag}"),
    };
    path.with_file_name(name)
}

/// A tag from a model spec, in `[a-z0-9_-]`: the model's name without its
/// backend, server address, folders or file extension
/// (`openai:gpt-4o-mini@http://…` → `gpt-4o-mini`,
/// `llama:models/gemma-3-270m.gguf` → `gemma-3-270m`,
/// `scripted:replies/b.yaml` → `b`).
pub fn tag_of(spec: &str) -> String {
    let (backend, rest) = spec.split_once(':').unwrap_or(("", spec));
    let rest = match backend {
        "openai" => rest.split('@').next().unwrap_or(rest),
        _ => rest,
    };
    let tail = rest.rsplit('/').find(|s| !s.is_empty()).unwrap_or("target");
    let tail = [".gguf", ".yaml", ".yml", ".json", ".jsonl"]
        .iter()
        .find_map(|ext| tail.strip_suffix(ext))
        .unwrap_or(tail);
    let tag: String = tail
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let tag = tag.trim_matches('-');
    if tag.is_empty() {
        "target".into()
    } else {
        tag.into()
    }
}

fn check_tag(tag: &str) -> Result<(), BridgeError> {
    let ok = !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(BridgeError::Invalid(format!(
            "tag {tag:?}: use letters, digits, `-`, `_` and `.`"
        )))
    }
}

fn refuse_existing(path: &Path) -> Result<(), BridgeError> {
    if path.exists() {
        return Err(BridgeError::Invalid(format!(
            "{} exists: remove it, choose another --tag, or --in-place to replace the originals",
            path.display()
        )));
    }
    Ok(())
}

fn write_prompts(
    prompts: &[MigratedPrompt],
    tag: Option<&str>,
    in_place: bool,
) -> Result<Vec<PathBuf>, BridgeError> {
    let targets: Vec<PathBuf> = prompts
        .iter()
        .map(|p| match tag {
            Some(t) if !in_place => tagged(&p.path, t),
            _ => p.path.clone(),
        })
        .collect();
    if !in_place {
        for t in &targets {
            refuse_existing(t)?;
        }
    }
    for (p, t) in prompts.iter().zip(&targets) {
        crate::file::write_atomic(t, &p.text).map_err(|source| BridgeError::Io {
            path: t.clone(),
            source,
        })?;
    }
    Ok(targets)
}

/// Replaces `old` at or after `span`'s start, on its line.
fn replace_at(text: &str, span: crate::yaml::Span, old: &str, new: &str) -> Option<String> {
    let line_start = if span.line <= 1 {
        0
    } else {
        text.match_indices('\n').nth(span.line as usize - 2)?.0 + 1
    };
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |e| line_start + e);
    let line = &text[line_start..line_end];
    let from = line
        .char_indices()
        .nth(span.col.saturating_sub(1) as usize)
        .map_or(line.len(), |(i, _)| i);
    let at = line_start + from + line[from..].find(old)?;
    Some(format!("{}{new}{}", &text[..at], &text[at + old.len()..]))
}

/// Held-out data a migration is checked on.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub data: DataSpec,
    pub selection: Selection,
    pub scorer: String,
    pub extract: Option<String>,
    pub isolation: Isolation,
    pub concurrency: usize,
}

/// One arm of a check: prompts on a model over the held-out items.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmReport {
    pub model: String,
    /// `source` or `migrated`.
    pub prompts: &'static str,
    pub accuracy: Option<f64>,
    pub passed: usize,
    pub scored: usize,
    /// Units that failed to run (not scored).
    pub failed: usize,
    pub tokens: u64,
    pub calls: u64,
    /// Why the first failed unit failed (item id: error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Item-level changes from one arm to another.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlipReport {
    /// Right in the first, wrong in the second.
    pub negative: Vec<String>,
    pub positive: Vec<String>,
    pub nfr: Option<f64>,
    pub pfr: Option<f64>,
    /// Exact McNemar p-value of the discordant items.
    pub p_value: f64,
}

/// The check of a migration on held-out items: the source prompts on the
/// source model, the same prompts on the target (direct transfer), and
/// the migrated prompts on the target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub items: usize,
    pub source: ArmReport,
    pub direct: ArmReport,
    pub migrated: ArmReport,
    /// Direct transfer's accuracy minus the source's: A(Mt, p) − A(Ms, p),
    /// the same prompts on the target minus on the source, i.e. how much
    /// weaker (or stronger) the target model is with them. Not the
    /// paper's transfer gap, which compares the target's score with the
    /// source's best prompt to its score with its own best
    /// ([`Pair::transfer_gap`], per calibrated task).
    pub model_gap: Option<f64>,
    /// Migrated minus direct transfer.
    pub gain: Option<f64>,
    pub direct_vs_source: FlipReport,
    pub migrated_vs_source: FlipReport,
    pub migrated_vs_direct: FlipReport,
}

impl CheckReport {
    /// The flips, without token counts (what a snapshot usually pins).
    pub fn flips(&self) -> Value {
        serde_json::json!({
            "items": self.items,
            "accuracy": {
                "source": self.source.accuracy,
                "direct": self.direct.accuracy,
                "migrated": self.migrated.accuracy,
            },
            "direct_vs_source": self.direct_vs_source,
            "migrated_vs_source": self.migrated_vs_source,
            "migrated_vs_direct": self.migrated_vs_direct,
        })
    }
}

fn flip_report(
    a: &[crate::eval::store::UnitRecord],
    b: &[crate::eval::store::UnitRecord],
) -> FlipReport {
    let c = stats::compare(a, b, stats::Pairing::Content);
    let ids = |dir: &str| {
        c.flipped
            .iter()
            .filter(|f| f.direction == dir)
            .map(|f| f.item.clone())
            .collect()
    };
    FlipReport {
        negative: ids("negative"),
        positive: ids("positive"),
        nfr: c.negative_flip_rate,
        pfr: c.positive_flip_rate,
        p_value: c.p_value,
    }
}

/// Where recorded calls go: one cassette per role, so that the source and
/// target models' replies never mix.
struct Cassettes {
    writer: Arc<CassetteWriter>,
    source: Arc<CassetteWriter>,
    target: Arc<CassetteWriter>,
}

/// Migrates prompts with a mapping, and checks migrations: the library
/// side of `redraft migrate`, for programs and snapshot tests.
///
/// ```no_run
/// # async fn t() -> Result<(), redraft::bridge::BridgeError> {
/// // Replays what `redraft migrate --record tests/migrations/smol-to-gemma` recorded.
/// let bridge = redraft::bridge::Bridge::replay("tests/migrations/smol-to-gemma")?;
/// let m = bridge.migrate_file("prompts/summarize.j2").await?;
/// // insta::assert_snapshot!(m.text);
/// # Ok(()) }
/// ```
pub struct Bridge {
    mapping: Mapping,
    writer: Writer,
    source: String,
    target: String,
    attempts: u32,
    lost: super::LostPlaceholders,
    store: Option<String>,
    cassettes: Option<Cassettes>,
    cancel: CancellationToken,
}

impl Bridge {
    /// Rewrites with `mapping.writer`; checks on `mapping.from` / `mapping.to`.
    pub fn new(mapping: Mapping) -> Bridge {
        Bridge {
            writer: Writer::new(Engine::new(), &mapping.writer),
            source: mapping.from.clone(),
            target: mapping.to.clone(),
            mapping,
            attempts: 3,
            lost: super::LostPlaceholders::Reject,
            store: None,
            cassettes: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Replays a recorded migration: `DIR/mapping.yaml` and the cassettes
    /// `DIR/{writer,source,target}.jsonl` that `redraft migrate --record
    /// DIR` wrote. No model is run; a request that was not recorded fails
    /// naming the closest recorded one.
    pub fn replay(dir: impl AsRef<Path>) -> Result<Bridge, BridgeError> {
        // Absolute: the arms resolve relative model paths against the
        // workflow's directory, not the caller's.
        let dir = std::path::absolute(dir.as_ref()).map_err(|source| BridgeError::Io {
            path: dir.as_ref().to_path_buf(),
            source,
        })?;
        let mapping = Mapping::load(&dir.join("mapping.yaml"))?;
        let spec = |role: &str| format!("replay:{}", dir.join(format!("{role}.jsonl")).display());
        Ok(Bridge::new(mapping)
            .writer(&spec("writer"))
            .models(&spec("source"), &spec("target")))
    }

    /// Records every model call into `DIR/{writer,source,target}.jsonl`
    /// (and the mapping into `DIR/mapping.yaml`), for [`Bridge::replay`].
    /// Checks then run on a fresh store, so that every call is made.
    pub fn record(mut self, dir: impl AsRef<Path>) -> Result<Bridge, BridgeError> {
        let dir = dir.as_ref();
        let io = |path: PathBuf| move |source| BridgeError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        self.mapping.save(&dir.join("mapping.yaml"))?;
        let open = |role: &str| -> Result<Arc<CassetteWriter>, BridgeError> {
            let path = dir.join(format!("{role}.jsonl"));
            // A cassette is rewritten whole: stale replies would replay.
            let _ = std::fs::remove_file(&path);
            Ok(Arc::new(
                CassetteWriter::create(&path).map_err(io(path.clone()))?,
            ))
        };
        let c = Cassettes {
            writer: open("writer")?,
            source: open("source")?,
            target: open("target")?,
        };
        self.writer = Writer::new(
            Engine::new().with_cassette(c.writer.clone()),
            &self.writer.spec,
        );
        self.cassettes = Some(c);
        self.store = None;
        Ok(self)
    }

    /// Rewrites with another model (a spec).
    pub fn writer(mut self, spec: &str) -> Bridge {
        let engine = match &self.cassettes {
            Some(c) => Engine::new().with_cassette(c.writer.clone()),
            None => Engine::new(),
        };
        self.writer = Writer::new(engine, spec);
        self
    }

    /// Checks on these models (specs) instead of the mapping's.
    pub fn models(mut self, source: &str, target: &str) -> Bridge {
        self.source = source.to_string();
        self.target = target.to_string();
        self
    }

    /// Rewrites tried per prompt before giving up (default 3).
    pub fn attempts(mut self, n: u32) -> Bridge {
        self.attempts = n.max(1);
        self
    }

    /// What to do with a rewrite that lost a placeholder (default: try
    /// again, up to the attempts).
    pub fn lost_placeholders(mut self, policy: super::LostPlaceholders) -> Bridge {
        self.lost = policy;
        self
    }

    /// Keeps the check's evals in this results store (default: a temporary
    /// one, removed after). Ignored while recording.
    pub fn store(mut self, location: &str) -> Bridge {
        if self.cassettes.is_none() {
            self.store = Some(location.to_string());
        }
        self
    }

    /// Stops evals and rewrites when cancelled.
    pub fn cancel(mut self, token: CancellationToken) -> Bridge {
        self.cancel = token;
        self
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Rewrites one prompt (`file` names it in messages).
    pub async fn migrate_prompt(
        &self,
        file: &str,
        text: &str,
    ) -> Result<MigratedPrompt, BridgeError> {
        self.rewrite(file, Path::new(file), text, None).await
    }

    /// Rewrites a prompt file (nothing is written).
    pub async fn migrate_file(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<MigratedPrompt, BridgeError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BridgeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.rewrite(&path.display().to_string(), path, &text, None)
            .await
    }

    /// Rewrites every prompt file a workflow uses (each once); the
    /// workflow must load with the rewrites (nothing is written).
    pub async fn migrate_workflow(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<MigratedWorkflow, BridgeError> {
        let path = path.as_ref();
        let wf = workflow::load(path)?;
        let mut prompts: Vec<MigratedPrompt> = Vec::new();
        for f in wf.prompt_files() {
            if prompts.iter().any(|p| p.file == f.file) {
                continue;
            }
            prompts.push(self.rewrite(&f.file, &f.path, &f.text, Some(path)).await?);
        }
        Ok(MigratedWorkflow {
            path: path.to_path_buf(),
            prompts,
        })
    }

    async fn rewrite(
        &self,
        file: &str,
        path: &Path,
        original: &str,
        workflow: Option<&Path>,
    ) -> Result<MigratedPrompt, BridgeError> {
        if self.mapping.description.trim().is_empty() {
            // No systematic edit was learned: the prompt stays as it is.
            return Ok(MigratedPrompt {
                file: file.to_string(),
                path: path.to_path_buf(),
                original: original.to_string(),
                text: original.to_string(),
                attempts: 0,
                tokens: 0,
                restored: Vec::new(),
            });
        }
        let mut feedback = String::new();
        let mut tokens = 0;
        for attempt in 1..=self.attempts {
            if self.cancel.is_cancelled() {
                return Err(BridgeError::Invalid("interrupted".into()));
            }
            let inputs = serde_json::Map::from_iter([
                (
                    "description".to_string(),
                    Value::from(self.mapping.description.clone()),
                ),
                ("prompt".to_string(), Value::from(original)),
                (
                    "placeholders".to_string(),
                    Value::from(placeholder_list(original)),
                ),
                ("feedback".to_string(), Value::from(feedback.clone())),
            ]);
            let written = self
                .writer
                .write(Builtin::Migrate, inputs, u64::from(attempt - 1), None)
                .await?;
            tokens += written.tokens;
            let mut text = extract_prompt(&written.text);
            let mut restored = Vec::new();
            if self.lost == super::LostPlaceholders::Restore {
                (text, restored) = super::restore_placeholders(original, &text);
            }
            let why = unusable(original, &text).or_else(|| {
                let wf = workflow?;
                let prompts = [(file.to_string(), text.clone())].into();
                workflow::load_with_prompts(wf, &prompts).err().map(|e| {
                    format!(
                        "the workflow does not load with it: {}",
                        e.diagnostics()
                            .first()
                            .map(|d| d.message.clone())
                            .unwrap_or_else(|| e.to_string())
                    )
                })
            });
            match why {
                None => {
                    return Ok(MigratedPrompt {
                        file: file.to_string(),
                        path: path.to_path_buf(),
                        original: original.to_string(),
                        text,
                        attempts: attempt,
                        tokens,
                        restored,
                    });
                }
                Some(why) => feedback = why,
            }
        }
        Err(BridgeError::Unusable {
            what: file.to_string(),
            attempts: self.attempts,
            reason: feedback,
        })
    }

    /// Checks a migration on held-out data: source prompts on the source
    /// model, on the target model (direct transfer), and migrated prompts
    /// on the target, with flips against the source.
    pub async fn check(
        &self,
        migrated: &MigratedWorkflow,
        spec: &CheckSpec,
    ) -> Result<CheckReport, BridgeError> {
        let temp = match &self.store {
            Some(_) => None,
            None => Some(TempStore::new()?),
        };
        let location = match (&self.store, &temp) {
            (Some(s), _) => s.clone(),
            (None, Some(t)) => t.location(),
            (None, None) => unreachable!("a temporary store when none is given"),
        };
        let store = crate::eval::store::SharedStore::open(&location).await?;
        let scorer = Arc::new(
            Scorer::parse(&spec.scorer, spec.extract.as_deref(), spec.isolation)
                .map_err(crate::eval::EvalError::from)?,
        );
        let arm = |prompts: &Prompts,
                   model: &str,
                   label: &str,
                   cassette: Option<&Arc<CassetteWriter>>| {
            let mut a = Arm::new(
                &migrated.path,
                prompts,
                model,
                super::Items {
                    data: &spec.data,
                    selection: &spec.selection,
                    scorer: &spec.scorer,
                    extract: spec.extract.as_deref(),
                },
                format!("migrate check: {label}"),
            )?;
            if let Some(c) = cassette {
                a.engine = a.engine.with_cassette(c.clone());
            }
            Ok::<_, BridgeError>(a)
        };
        let none = Prompts::new();
        let c = self.cassettes.as_ref();
        let arms = [
            (
                "source",
                arm(&none, &self.source, "source", c.map(|c| &c.source))?,
            ),
            (
                "direct",
                arm(&none, &self.target, "direct", c.map(|c| &c.target))?,
            ),
            (
                "migrated",
                arm(
                    &migrated.prompt_texts(),
                    &self.target,
                    "migrated",
                    c.map(|c| &c.target),
                )?,
            ),
        ];
        let mut results = Vec::new();
        for (label, a) in &arms {
            let (units, _) = a
                .run(&scorer, &store, spec.concurrency.max(1), &self.cancel)
                .await?;
            // Only the held-out selection (a kept store may hold more).
            let ids: Vec<String> = crate::eval::load_items(&a.plan)?
                .into_iter()
                .map(|i| i.id)
                .collect();
            let units: Vec<_> = units
                .into_iter()
                .filter(|u| u.epoch == 0 && ids.contains(&u.item.id))
                .collect();
            let model = if *label == "source" {
                &self.mapping.from
            } else {
                &self.mapping.to
            };
            results.push((arm_report(&units, model, label), units));
        }
        drop(temp);
        let [(source, su), (direct, du), (migrated_arm, mu)] =
            <[_; 3]>::try_from(results).map_err(|_| BridgeError::Invalid("three arms".into()))?;
        let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        Ok(CheckReport {
            items: su.len(),
            model_gap: diff(source.accuracy, direct.accuracy),
            gain: diff(direct.accuracy, migrated_arm.accuracy),
            direct_vs_source: flip_report(&su, &du),
            migrated_vs_source: flip_report(&su, &mu),
            migrated_vs_direct: flip_report(&du, &mu),
            source,
            direct,
            migrated: migrated_arm,
        })
    }
}

fn arm_report(units: &[crate::eval::store::UnitRecord], model: &str, label: &str) -> ArmReport {
    use crate::eval::ItemStatus;
    let results: Vec<_> = units.iter().filter_map(|u| u.result.as_ref()).collect();
    let scored: Vec<_> = results
        .iter()
        .filter(|r| r.status == ItemStatus::Done && r.score.is_some())
        .collect();
    let passed = scored
        .iter()
        .filter(|r| r.score.as_ref().is_some_and(|s| s.passed))
        .count();
    ArmReport {
        model: model.to_string(),
        prompts: if label == "migrated" {
            "migrated"
        } else {
            "source"
        },
        accuracy: (!scored.is_empty()).then(|| passed as f64 / scored.len() as f64),
        passed,
        scored: scored.len(),
        failed: results.len() - scored.len(),
        tokens: results.iter().map(|r| r.tokens).sum(),
        calls: results.iter().map(|r| r.calls).sum(),
        first_error: results
            .iter()
            .filter(|r| !(r.status == ItemStatus::Done && r.score.is_some()))
            .find_map(|r| Some(format!("{}: {}", r.item_id, r.error.as_deref()?))),
    }
}

/// A SQLite store in a directory of its own, removed on drop.
struct TempStore(PathBuf);

impl TempStore {
    fn new() -> Result<TempStore, BridgeError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "redraft-migrate-{}-{}-{n}",
            std::process::id(),
            crate::eval::store::now_ms()
        ));
        std::fs::create_dir_all(&dir).map_err(|source| BridgeError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(TempStore(dir))
    }

    fn location(&self) -> String {
        self.0.join("check.db").display().to_string()
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_tagged_names() {
        assert_eq!(
            tag_of("llama:/m/gemma-3-270m-q4_k_m.gguf"),
            "gemma-3-270m-q4_k_m"
        );
        assert_eq!(tag_of("llama:default"), "default");
        assert_eq!(
            tag_of("openai:Qwen 2.5@http://127.0.0.1:8080/v1"),
            "qwen-2-5"
        );
        assert_eq!(tag_of("openai:gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(tag_of("scripted:replies/b.yaml"), "b");
        assert_eq!(tag_of("scripted:../"), "target");
        assert_eq!(
            tagged(Path::new("p/draft.j2"), "g"),
            Path::new("p/draft.g.j2")
        );
        assert_eq!(tagged(Path::new("README"), "g"), Path::new("README.g"));
        assert!(check_tag("a/b").is_err() && check_tag("").is_err() && check_tag("g-1.2").is_ok());
    }

    #[test]
    fn a_reference_is_replaced_where_it_is_named() {
        let yaml = "a: draft.j2\nnodes:\n  - prompt: draft.j2 # draft.j2\n";
        let span = crate::yaml::Span {
            line: 3,
            col: 13,
            end_line: 3,
            end_col: 21,
        };
        assert_eq!(
            replace_at(yaml, span, "draft.j2", "draft.g.j2").unwrap(),
            "a: draft.j2\nnodes:\n  - prompt: draft.g.j2 # draft.j2\n"
        );
        assert_eq!(replace_at(yaml, span, "other.j2", "x"), None);
    }

    fn calibration(model: &str, key: &str, prompts: &[(&str, f64)]) -> Calibration {
        let scores: Vec<Vec<f64>> = prompts.iter().map(|(_, mean)| vec![*mean]).collect();
        let rows: Vec<&[f64]> = scores.iter().map(Vec::as_slice).collect();
        let mut c = super::super::calibrate::tests::cal(&rows);
        (c.model, c.task_key, c.task) = (model.into(), key.into(), "sums".into());
        for (candidate, (prompt, _)) in c.candidates.iter_mut().zip(prompts) {
            candidate.prompt = (*prompt).into();
        }
        c
    }

    /// Δ = A(Mt, p*Ms) − A(Mt, p*Mt), read where the target's calibration
    /// scored the source's best prompt; never the source's own score.
    #[test]
    fn the_transfer_gap_is_the_targets_loss_with_the_sources_best_prompt() {
        let cals = [
            // The source keeps its seed (nothing beat it).
            calibration("src", "k", &[("Q: {{ q }}", 0.9), ("Think. {{ q }}", 0.5)]),
            // The target scored that seed at 0.4 and found a better prompt.
            calibration(
                "tgt",
                "k",
                &[("Q: {{ q }}\n", 0.4), ("A number only. {{ q }}", 0.7)],
            ),
            // Another task: the source's best was never tried on the target.
            calibration(
                "src",
                "k2",
                &[("Seed {{ q }}", 0.2), ("Better {{ q }}", 0.6)],
            ),
            calibration("tgt", "k2", &[("Seed {{ q }}", 0.3)]),
        ];
        let pairs = pairs(&cals, "src", "tgt");
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].source_prompt_on_target, Some(0.4));
        assert!((pairs[0].transfer_gap.unwrap() - (0.4 - 0.7)).abs() < 1e-12);
        assert_eq!(pairs[1].source, "Better {{ q }}");
        assert_eq!(
            (pairs[1].source_prompt_on_target, pairs[1].transfer_gap),
            (None, None)
        );
    }

    #[test]
    fn a_mapping_round_trips_through_yaml() {
        let m = Mapping {
            from: "llama:default".into(),
            to: "llama:/m/g.gguf".into(),
            writer: "llama:default".into(),
            description: "- Say \"answer\" first.\n- Keep it short: one line.\n".into(),
            pairs: vec![Pair {
                task: "gsm8k".into(),
                source: "Solve: {{ inputs.task }}\n\nEnd with: #### N".into(),
                target: "Q: {{ inputs.task }}\nA:".into(),
                source_score: 0.25,
                target_score: 0.5,
                source_prompt_on_target: Some(0.25),
                transfer_gap: Some(-0.25),
            }],
        };
        let yaml = m.to_yaml();
        assert!(
            yaml.contains("description: |"),
            "block scalars for review:\n{yaml}"
        );
        assert_eq!(serde_saphyr::from_str::<Mapping>(&yaml).unwrap(), m);
    }
}
