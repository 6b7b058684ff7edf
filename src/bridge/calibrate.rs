//! MAP-RPE: model-adaptive reflective prompt evolution for one (model,
//! task).
//!
//! Each generation, every island draws a parent from its Pareto front
//! (weighted by the items it leads on), shows the reflection model the
//! parent's failures on a minibatch, and scores the proposed child on the
//! same minibatch; a child that beats its parent there is scored on every
//! item and joins the island. Every `migrate_every` generations each
//! island sends its best to the next. The best candidate overall (mean
//! score over the items, the earliest on ties) is the calibrated prompt.
//!
//! Costs are counted in metric calls (item runs scored), tokens and calls,
//! all checked before each step. State is journaled in the results store
//! (kind `calibration`) after every generation; candidate scores are evals
//! in the same store. A calibration with the same key resumes from its
//! last journaled generation, and its scored candidates cost nothing again.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Arm, BridgeError, Builtin, Task, Writer, clip, extract_prompt, placeholder_list};
use crate::engine::{CancellationToken, Engine};
use crate::eval::data::Selection;
use crate::eval::score::Scorer;
use crate::eval::store::{SharedStore, Store, UnitRecord};
use crate::eval::{self, ItemStatus};

/// The journal kind of calibrations in a results store.
pub const JOURNAL: &str = "calibration";

/// How a calibration searches, and what it may spend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrateOptions {
    pub islands: usize,
    /// Items per minibatch (the parent's failures shown, the child's first test).
    pub minibatch: usize,
    /// Every this many generations the islands exchange their best (0: never).
    pub migrate_every: u32,
    /// Failures shown to the reflection model per proposal.
    pub failures_shown: usize,
    pub seed: u64,
    /// Stop after this many generations.
    pub generations: u32,
    /// Stop before a step would pass this many item runs scored.
    pub max_metric_calls: Option<u64>,
    /// Stop once this many tokens (task model and reflection) are spent.
    pub max_tokens: Option<u64>,
    /// Stop once this many model calls are made.
    pub max_calls: Option<u64>,
    /// Items run at once.
    pub concurrency: usize,
    /// Proposals that lost a placeholder: rejected, or repaired.
    #[serde(default)]
    pub lost_placeholders: super::LostPlaceholders,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        CalibrateOptions {
            islands: 2,
            minibatch: 3,
            migrate_every: 2,
            failures_shown: 3,
            seed: 0,
            generations: 4,
            max_metric_calls: None,
            max_tokens: None,
            max_calls: None,
            concurrency: 1,
            lost_placeholders: super::LostPlaceholders::Reject,
        }
    }
}

/// A prompt in the population, with its score on every item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: usize,
    pub prompt: String,
    pub parent: Option<usize>,
    pub generation: u32,
    /// Item id → score in [0, 1].
    pub scores: BTreeMap<String, f64>,
    pub mean: f64,
    pub passed: usize,
}

/// What became of one reflection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub generation: u32,
    pub island: usize,
    pub parent: usize,
    pub minibatch: Vec<String>,
    pub parent_score: f64,
    /// The child's score on the minibatch, when it was scored.
    pub child_score: Option<f64>,
    /// The candidate it became, if accepted.
    pub accepted: Option<usize>,
    /// Why it was not, if not.
    pub rejected: Option<String>,
    pub prompt: String,
    /// Placeholders the proposal lost and got back (`lost_placeholders: restore`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<String>,
}

/// The journaled state of a calibration (one record per generation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub id: String,
    pub task: String,
    /// A hash of what defines the task (workflow, prompt file, seed prompt,
    /// data, scorer, items): calibrations of one task for two models share it.
    pub task_key: String,
    pub model: String,
    pub reflect: String,
    pub workflow: String,
    pub prompt_file: String,
    /// Generations finished.
    pub generation: u32,
    pub candidates: Vec<Candidate>,
    /// Candidate ids per island.
    pub islands: Vec<Vec<usize>>,
    pub proposals: Vec<Proposal>,
    pub metric_calls: u64,
    pub tokens: u64,
    pub calls: u64,
    /// Why the last session stopped (`generations`, `metric calls`, ...).
    pub stopped: Option<String>,
}

impl Calibration {
    /// A calibration read back from a journal record (`whence` names it in
    /// errors). A record is data from a store: one that breaks what the
    /// search relies on (a seed candidate, no empty island, islands naming
    /// candidates that exist) is an error, never a panic later.
    pub fn from_record(value: serde_json::Value, whence: &str) -> Result<Calibration, BridgeError> {
        let bad = |why: String| {
            BridgeError::Invalid(format!(
                "{whence}: unusable calibration journal record: {why}"
            ))
        };
        let cal: Calibration = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if cal.candidates.is_empty() {
            return Err(bad(
                "it holds no candidate (not even the seed prompt)".into()
            ));
        }
        if let Some(i) = cal.islands.iter().position(Vec::is_empty) {
            return Err(bad(format!("island {i} holds no candidate")));
        }
        if let Some(&c) = cal
            .islands
            .iter()
            .flatten()
            .find(|&&c| c >= cal.candidates.len())
        {
            return Err(bad(format!(
                "an island names candidate {c}, but there are {}",
                cal.candidates.len()
            )));
        }
        Ok(cal)
    }

    /// The calibrated prompt: the best mean over the items, the earliest
    /// on ties (so the seed prompt wins unless something beat it).
    pub fn best(&self) -> &Candidate {
        self.candidates
            .iter()
            .fold(None::<&Candidate>, |best, c| match best {
                Some(b) if b.mean >= c.mean => Some(b),
                _ => Some(c),
            })
            .expect("a calibration has its seed candidate")
    }

    pub fn seed(&self) -> &Candidate {
        &self.candidates[0]
    }
}

/// What a calibration reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Step {
    Resumed {
        generation: u32,
        candidates: usize,
    },
    Scored {
        candidate: usize,
        mean: f64,
        items: usize,
    },
    Proposed {
        generation: u32,
        island: usize,
        parent: usize,
        accepted: Option<usize>,
        rejected: Option<String>,
        parent_score: f64,
        child_score: Option<f64>,
    },
    Exchanged {
        from: usize,
        to: usize,
        candidate: usize,
    },
    Generation {
        generation: u32,
        best: usize,
        best_mean: f64,
        metric_calls: u64,
        tokens: u64,
    },
    Stopped {
        reason: String,
    },
}

/// Calibrates `task`'s prompt for `model` (a spec every model of the
/// workflow runs as), with `reflect` (a spec) writing the proposals.
/// Resumes the calibration with the same key found in `store`.
pub async fn calibrate(
    task: &Task,
    model: &str,
    reflect: &str,
    store: &str,
    opts: &CalibrateOptions,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&Step) + Send + Sync),
) -> Result<Calibration, BridgeError> {
    if opts.islands == 0 || opts.minibatch == 0 {
        return Err(BridgeError::Invalid(
            "islands and minibatch must be at least 1".into(),
        ));
    }
    let seed_arm = arm(task, None, model)?;
    let seed_prompt = prompt_text(&seed_arm, task)?;
    let items: Vec<String> = eval::load_items(&seed_arm.plan)?
        .into_iter()
        .map(|i| i.id)
        .collect();
    if items.is_empty() {
        return Err(BridgeError::Invalid(format!(
            "task `{}` selects no items",
            task.name
        )));
    }
    let scorer = Arc::new(
        Scorer::parse(&task.scorer, task.extract.as_deref(), task.isolation)
            .map_err(eval::EvalError::from)?,
    );
    let task_key = crate::hash::fnv1a(
        serde_json::json!({
            "workflow": seed_arm.plan.workflow_source,
            "prompt_file": task.prompt,
            "prompt": seed_prompt,
            "data": task.data,
            "scorer": task.scorer,
            "extract": task.extract,
            "items": items,
        })
        .to_string()
        .as_bytes(),
    );
    let task_key = format!("{task_key:016x}");
    let id = format!(
        "{:016x}",
        crate::hash::fnv1a(
            serde_json::json!({
                "task": task_key,
                "model": model,
                "reflect": reflect,
                "islands": opts.islands,
                "minibatch": opts.minibatch,
                "migrate_every": opts.migrate_every,
                "failures_shown": opts.failures_shown,
                "seed": opts.seed,
                "lost_placeholders": opts.lost_placeholders,
            })
            .to_string()
            .as_bytes()
        )
    );
    let run = Calibrator {
        task,
        model,
        items,
        scorer,
        store: SharedStore::open(store).await?,
        opts,
        cancel,
        progress,
        writer: Writer::new(Engine::new(), reflect),
    };
    let journal = run.journal_read(&id).await?;
    let mut cal = match journal {
        Some(mut cal) => {
            // Why the last session stopped no longer holds.
            cal.stopped = None;
            progress(&Step::Resumed {
                generation: cal.generation,
                candidates: cal.candidates.len(),
            });
            cal
        }
        None => {
            let mut cal = Calibration {
                id: id.clone(),
                task: task.name.clone(),
                task_key,
                model: model.to_string(),
                reflect: reflect.to_string(),
                workflow: task.workflow.display().to_string(),
                prompt_file: task.prompt.clone(),
                generation: 0,
                candidates: Vec::new(),
                islands: vec![vec![0]; opts.islands],
                proposals: Vec::new(),
                metric_calls: 0,
                tokens: 0,
                calls: 0,
                stopped: None,
            };
            let all = run.items.clone();
            let scores = run.score(&mut cal, &seed_prompt, &all).await?;
            let seed = Candidate {
                id: 0,
                prompt: seed_prompt.clone(),
                parent: None,
                generation: 0,
                mean: mean(&scores),
                passed: scores.values().filter(|s| **s >= 1.0).count(),
                scores,
            };
            progress(&Step::Scored {
                candidate: 0,
                mean: seed.mean,
                items: seed.scores.len(),
            });
            cal.candidates.push(seed);
            run.journal_write(&cal).await?;
            cal
        }
    };
    let reason = loop {
        if let Some(reason) = run.over(&cal) {
            break reason;
        }
        let g = cal.generation;
        let mut stop = None;
        for island in 0..opts.islands {
            stop = run.over(&cal);
            if stop.is_some() {
                break;
            }
            run.propose(&mut cal, island).await?;
        }
        if let Some(reason) = stop {
            break reason;
        }
        if opts.migrate_every > 0 && (g + 1) % opts.migrate_every == 0 && opts.islands > 1 {
            exchange(&mut cal, progress);
        }
        cal.generation += 1;
        let best = cal.best();
        progress(&Step::Generation {
            generation: cal.generation,
            best: best.id,
            best_mean: best.mean,
            metric_calls: cal.metric_calls,
            tokens: cal.tokens,
        });
        run.journal_write(&cal).await?;
    };
    cal.stopped = Some(reason.clone());
    run.journal_write(&cal).await?;
    progress(&Step::Stopped { reason });
    Ok(cal)
}

/// Reads the latest journaled state of every calibration in a store.
pub fn calibrations(
    store: &mut dyn crate::eval::store::Store,
) -> Result<Vec<Calibration>, BridgeError> {
    let mut out = Vec::new();
    for key in store.record_keys(JOURNAL)? {
        if let Some(last) = store.records(JOURNAL, &key)?.pop() {
            let whence = format!("calibration {key} in {}", store.location());
            out.push(Calibration::from_record(last, &whence)?);
        }
    }
    Ok(out)
}

fn arm(task: &Task, prompt: Option<&str>, model: &str) -> Result<Arm, BridgeError> {
    let prompts = prompt
        .map(|p| [(task.prompt.clone(), p.to_string())].into())
        .unwrap_or_default();
    Arm::new(
        &task.workflow,
        &prompts,
        model,
        super::Items {
            data: &task.data,
            selection: &task.selection,
            scorer: &task.scorer,
            extract: task.extract.as_deref(),
        },
        format!("calibrate {}", task.name),
    )
}

/// The task's prompt file as the workflow read it.
fn prompt_text(arm: &Arm, task: &Task) -> Result<String, BridgeError> {
    let files = arm.plan.workflow.prompt_files();
    match files.iter().find(|f| f.file == task.prompt) {
        Some(f) => Ok(f.text.clone()),
        None => Err(BridgeError::Invalid(format!(
            "{} uses no prompt file `{}` (it uses: {})",
            task.workflow.display(),
            task.prompt,
            if files.is_empty() {
                "none".to_string()
            } else {
                files
                    .iter()
                    .map(|f| f.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))),
    }
}

fn mean(scores: &BTreeMap<String, f64>) -> f64 {
    if scores.is_empty() {
        0.0
    } else {
        scores.values().sum::<f64>() / scores.len() as f64
    }
}

/// The best of each island joins the next one (a ring).
fn exchange(cal: &mut Calibration, progress: &(dyn Fn(&Step) + Send + Sync)) {
    let n = cal.islands.len();
    let bests: Vec<usize> = cal
        .islands
        .iter()
        .map(|isl| {
            *isl.iter()
                .max_by(|a, b| {
                    cal.candidates[**a]
                        .mean
                        .total_cmp(&cal.candidates[**b].mean)
                        .then(b.cmp(a))
                })
                .expect("islands are never empty")
        })
        .collect();
    for (from, best) in bests.into_iter().enumerate() {
        let to = (from + 1) % n;
        if !cal.islands[to].contains(&best) {
            cal.islands[to].push(best);
            progress(&Step::Exchanged {
                from,
                to,
                candidate: best,
            });
        }
    }
}

/// The candidates of `island` that lead (score the island's best) on at
/// least one item, each weighted by how many items it leads on.
pub fn pareto_front(cal: &Calibration, island: &[usize]) -> Vec<(usize, usize)> {
    let mut lead: BTreeMap<usize, usize> = BTreeMap::new();
    let items: Vec<&String> = cal.candidates[island[0]].scores.keys().collect();
    for item in items {
        let best = island
            .iter()
            .map(|c| cal.candidates[*c].scores.get(item).copied().unwrap_or(0.0))
            .fold(f64::MIN, f64::max);
        for c in island {
            if cal.candidates[*c].scores.get(item).copied().unwrap_or(0.0) >= best {
                *lead.entry(*c).or_default() += 1;
            }
        }
    }
    lead.into_iter().collect()
}

/// SplitMix64: a seeded draw that is the same on every platform.
fn draw(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Calibrator<'a> {
    task: &'a Task,
    model: &'a str,
    items: Vec<String>,
    scorer: Arc<Scorer>,
    /// One connection for the calibration's evals and its journal.
    store: SharedStore,
    opts: &'a CalibrateOptions,
    cancel: &'a CancellationToken,
    progress: &'a (dyn Fn(&Step) + Send + Sync),
    writer: Writer,
}

impl Calibrator<'_> {
    /// Why no further step may start, if none may.
    fn over(&self, cal: &Calibration) -> Option<String> {
        let o = self.opts;
        if self.cancel.is_cancelled() {
            return Some("interrupted".into());
        }
        if cal.generation >= o.generations {
            return Some(format!("{} generations", o.generations));
        }
        // A step scores up to every item (an accepted child).
        if let Some(max) = o.max_metric_calls {
            if cal.metric_calls + self.items.len() as u64 > max {
                return Some(format!("metric calls ({} of {max})", cal.metric_calls));
            }
        }
        if o.max_tokens.is_some_and(|m| cal.tokens >= m) {
            return Some(format!("tokens ({})", cal.tokens));
        }
        if o.max_calls.is_some_and(|m| cal.calls >= m) {
            return Some(format!("calls ({})", cal.calls));
        }
        None
    }

    /// Scores `prompt` on `ids` (the stored results of earlier sessions
    /// count and cost nothing again); item id → score.
    async fn score(
        &self,
        cal: &mut Calibration,
        prompt: &str,
        ids: &[String],
    ) -> Result<BTreeMap<String, f64>, BridgeError> {
        let mut arm = arm(self.task, Some(prompt), self.model)?;
        arm.plan.selection = Selection {
            ids: ids.to_vec(),
            shuffle: None,
            limit: None,
        };
        let (units, ran) = arm
            .run(
                &self.scorer,
                &self.store,
                self.opts.concurrency,
                self.cancel,
            )
            .await?;
        cal.metric_calls += ran.done + ran.failed;
        cal.tokens += ran.tokens;
        cal.calls += ran.calls;
        Ok(scores_of(&units, ids))
    }

    /// One reflection on `island`: draw a parent, show its failures on a
    /// minibatch, score the child there, keep it if it beats the parent.
    async fn propose(&self, cal: &mut Calibration, island: usize) -> Result<(), BridgeError> {
        let g = cal.generation;
        let turn = u64::from(g) * self.opts.islands as u64 + island as u64;
        let front = pareto_front(cal, &cal.islands[island]);
        let weight: usize = front.iter().map(|(_, w)| w).sum();
        let mut pick = (draw(self.opts.seed ^ turn) % weight.max(1) as u64) as usize;
        let parent = front
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(c, _)| *c)
            .unwrap_or(cal.islands[island][0]);
        // Minibatches rotate through the items.
        let n = self.items.len();
        let b = self.opts.minibatch.min(n);
        let start = (turn as usize * b) % n;
        let batch: Vec<String> = (0..b)
            .map(|k| self.items[(start + k) % n].clone())
            .collect();
        let p = &cal.candidates[parent];
        let parent_score: f64 = batch
            .iter()
            .map(|i| p.scores.get(i).copied().unwrap_or(0.0))
            .sum();
        let parent_prompt = p.prompt.clone();
        let mut proposal = Proposal {
            generation: g,
            island,
            parent,
            minibatch: batch.clone(),
            parent_score,
            child_score: None,
            accepted: None,
            rejected: None,
            prompt: String::new(),
            restored: Vec::new(),
        };
        let failures = self.failures(&parent_prompt, &batch).await?;
        if failures.is_empty() {
            proposal.rejected = Some("the parent is right on the whole minibatch".into());
        } else {
            let inputs = serde_json::Map::from_iter([
                ("prompt".to_string(), Value::from(parent_prompt.clone())),
                (
                    "placeholders".to_string(),
                    Value::from(placeholder_list(&parent_prompt)),
                ),
                ("examples".to_string(), Value::from(failures)),
            ]);
            let left = self.opts.max_tokens.map(|m| m.saturating_sub(cal.tokens));
            let written = self
                .writer
                .write(
                    Builtin::Reflect,
                    inputs,
                    self.opts.seed.wrapping_add(turn),
                    left,
                )
                .await?;
            cal.tokens += written.tokens;
            cal.calls += written.calls;
            let mut child = extract_prompt(&written.text);
            if self.opts.lost_placeholders == super::LostPlaceholders::Restore {
                (child, proposal.restored) = super::restore_placeholders(&parent_prompt, &child);
            }
            proposal.prompt = child.clone();
            if let Some(why) = self.unfit(&parent_prompt, &child) {
                proposal.rejected = Some(why);
            } else if let Some(c) = cal.candidates.iter().find(|c| c.prompt == child) {
                proposal.rejected = Some(format!("it is candidate {} again", c.id));
            } else {
                let on_batch = self.score(cal, &child, &batch).await?;
                let child_score: f64 = on_batch.values().sum();
                proposal.child_score = Some(child_score);
                if child_score <= parent_score {
                    proposal.rejected = Some("it does not beat its parent on the minibatch".into());
                } else {
                    let all = self.items.clone();
                    let scores = self.score(cal, &child, &all).await?;
                    let id = cal.candidates.len();
                    let c = Candidate {
                        id,
                        prompt: child,
                        parent: Some(parent),
                        generation: g + 1,
                        mean: mean(&scores),
                        passed: scores.values().filter(|s| **s >= 1.0).count(),
                        scores,
                    };
                    (self.progress)(&Step::Scored {
                        candidate: id,
                        mean: c.mean,
                        items: c.scores.len(),
                    });
                    cal.candidates.push(c);
                    cal.islands[island].push(id);
                    proposal.accepted = Some(id);
                }
            }
        }
        (self.progress)(&Step::Proposed {
            generation: g,
            island,
            parent,
            accepted: proposal.accepted,
            rejected: proposal.rejected.clone(),
            parent_score,
            child_score: proposal.child_score,
        });
        cal.proposals.push(proposal);
        Ok(())
    }

    /// Why a proposed prompt cannot be a candidate: it lost a placeholder,
    /// or the workflow does not load with it.
    fn unfit(&self, parent: &str, child: &str) -> Option<String> {
        if let Some(why) = super::unusable(parent, child) {
            return Some(why);
        }
        let prompts = [(self.task.prompt.clone(), child.to_string())].into();
        match crate::workflow::load_with_prompts(&self.task.workflow, &prompts) {
            Ok(_) => None,
            Err(e) => Some(format!(
                "the workflow does not load with it: {}",
                e.diagnostics()
                    .first()
                    .map(|d| d.message.clone())
                    .unwrap_or_else(|| e.to_string())
            )),
        }
    }

    /// The parent's wrong answers on the batch, as the reflection prompt
    /// shows them: the task's inputs, the answer, the reference and the
    /// scorer's feedback (its stored results: the parent was scored on
    /// every item).
    async fn failures(&self, prompt: &str, batch: &[String]) -> Result<String, BridgeError> {
        let arm = arm(self.task, Some(prompt), self.model)?;
        let id = arm.plan.id();
        let units = self.store.with(move |s| s.units(&id, false)).await?;
        let mut out = String::new();
        let mut shown = 0;
        for u in units.iter().filter(|u| batch.contains(&u.item.id)) {
            let Some(r) = &u.result else { continue };
            let score = r.score.as_ref();
            if score.is_some_and(|s| s.passed) || shown >= self.opts.failures_shown {
                continue;
            }
            shown += 1;
            let task: Vec<String> = u
                .item
                .inputs
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    format!("{k}: {}", clip(&v, 600))
                })
                .collect();
            out.push_str(&format!(
                "\nTask {shown}:\n{}\nModel's answer: {}\n",
                task.join("\n"),
                clip(
                    r.output
                        .as_deref()
                        .unwrap_or(r.error.as_deref().unwrap_or("(none)")),
                    600
                ),
            ));
            if let Some(a) = &u.item.answer {
                let a = a
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| a.to_string());
                out.push_str(&format!("Correct answer: {}\n", clip(&a, 300)));
            }
            if let Some(s) = score.filter(|s| !s.feedback.is_empty()) {
                out.push_str(&format!("Feedback: {}\n", clip(&s.feedback, 300)));
            }
        }
        Ok(out)
    }

    async fn journal_read(&self, id: &str) -> Result<Option<Calibration>, BridgeError> {
        let id = id.to_string();
        let last = self
            .store
            .with(move |s| s.records(JOURNAL, &id))
            .await?
            .pop();
        let whence = self.store.location();
        last.map(|v| Calibration::from_record(v, &whence))
            .transpose()
    }

    async fn journal_write(&self, cal: &Calibration) -> Result<(), BridgeError> {
        let value = serde_json::to_value(cal).expect("a calibration serialises");
        let id = cal.id.clone();
        self.store
            .with(move |s| s.append_record(JOURNAL, &id, &value))
            .await?;
        Ok(())
    }
}

/// Item id → score of the done units among `ids` (a failed run scores 0).
fn scores_of(units: &[UnitRecord], ids: &[String]) -> BTreeMap<String, f64> {
    units
        .iter()
        .filter(|u| u.epoch == 0 && ids.contains(&u.item.id))
        .filter_map(|u| {
            let r = u.result.as_ref()?;
            let s = match r.status {
                ItemStatus::Done => r.score.as_ref().map_or(0.0, |s| s.score),
                _ => 0.0,
            };
            Some((u.item.id.clone(), s))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A calibration with one candidate per row of item scores (prompts
    /// `p0`, `p1`, ...), all on one island.
    pub(crate) fn cal(scores: &[&[f64]]) -> Calibration {
        Calibration {
            id: "x".into(),
            task: "t".into(),
            task_key: "k".into(),
            model: "m".into(),
            reflect: "r".into(),
            workflow: "w".into(),
            prompt_file: "p".into(),
            generation: 0,
            candidates: scores
                .iter()
                .enumerate()
                .map(|(id, s)| {
                    let scores: BTreeMap<String, f64> = s
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (format!("i{i}"), *v))
                        .collect();
                    Candidate {
                        id,
                        prompt: format!("p{id}"),
                        parent: None,
                        generation: 0,
                        mean: mean(&scores),
                        passed: 0,
                        scores,
                    }
                })
                .collect(),
            islands: vec![(0..scores.len()).collect()],
            proposals: vec![],
            metric_calls: 0,
            tokens: 0,
            calls: 0,
            stopped: None,
        }
    }

    #[test]
    fn the_front_keeps_every_candidate_that_leads_somewhere() {
        // 0 leads on i0, 1 on i1 and i2, 2 nowhere (dominated by 1).
        let c = cal(&[&[1.0, 0.0, 0.0], &[0.0, 1.0, 1.0], &[0.0, 0.5, 1.0]]);
        assert_eq!(pareto_front(&c, &[0, 1, 2]), vec![(0, 1), (1, 2), (2, 1)]);
        // Ties lead together; an island sees only its own.
        let c = cal(&[&[0.0, 0.0], &[0.0, 0.0]]);
        assert_eq!(pareto_front(&c, &[0, 1]), vec![(0, 2), (1, 2)]);
        assert_eq!(pareto_front(&c, &[1]), vec![(1, 2)]);
    }

    #[test]
    fn the_best_is_the_highest_mean_and_the_earliest_on_ties() {
        assert_eq!(cal(&[&[0.5], &[0.5], &[0.4]]).best().id, 0);
        assert_eq!(cal(&[&[0.5], &[0.75], &[0.75]]).best().id, 1);
    }

    #[test]
    fn islands_send_their_best_to_the_next() {
        let mut c = cal(&[&[0.1], &[0.9], &[0.5]]);
        c.islands = vec![vec![0, 1], vec![0, 2]];
        let steps = std::sync::Mutex::new(Vec::new());
        exchange(&mut c, &|s| steps.lock().unwrap().push(format!("{s:?}")));
        assert_eq!(c.islands, vec![vec![0, 1, 2], vec![0, 2, 1]]);
        assert_eq!(steps.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_journal_record_that_breaks_the_search_is_an_error() {
        let good = serde_json::to_value(cal(&[&[0.5], &[0.7]])).unwrap();
        assert!(Calibration::from_record(good.clone(), "s.db").is_ok());
        for (change, says) in [
            (serde_json::json!({"candidates": []}), "holds no candidate"),
            (
                serde_json::json!({"islands": [[0], []]}),
                "island 1 holds no candidate",
            ),
            (
                serde_json::json!({"islands": [[0, 7]]}),
                "names candidate 7, but there are 2",
            ),
            (serde_json::json!({"generation": "one"}), "invalid type"),
        ] {
            let mut v = good.clone();
            for (k, x) in change.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e = Calibration::from_record(v, "s.db").unwrap_err().to_string();
            assert!(
                e.contains("s.db: unusable calibration journal record") && e.contains(says),
                "{e}"
            );
        }
    }

    #[test]
    fn draws_are_fixed_by_the_seed() {
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
