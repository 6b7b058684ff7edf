//! `redraft eval | runs | compare | report`.
//!
//! Exit codes of `eval`: 0 every unit finished (failed units within
//! `--max-errors` included), 2 invalid workflow, data or flags, 3 the total
//! budget was spent with units left, 4 more units failed than
//! `--max-errors` allows, every unit the run started failed, or the store
//! failed, 130 interrupted. `compare`
//! exits 1 when the negative flip rate is above `--max-nfr`.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{EXIT_BACKEND, EXIT_BUDGET, EXIT_INVALID, EXIT_OK, stdout};
use crate::eval::EvalReview;
use crate::eval::calibrate::CalibrateTarget;
use crate::eval::config::{EvalConfig, EvalSetup};
use crate::eval::report::ReportEval;
use crate::eval::score::{SCORERS, Scorer};
use crate::eval::store::{self, Store, UnitRecord};
use crate::eval::{
    self, EvalEnd, EvalOptions, EvalOutcome, EvalPlan, ItemResult, Progress, Totals,
};
use crate::workflow;

pub const DEFAULT_STORE: &str = "runs/redraft.db";

/// The results store of a command, and how long it may take to answer.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The results store: a SQLite file, or postgres://USER@HOST/DB shared
    /// by many workers (password from PGPASSWORD or ~/.pgpass; or the whole
    /// URL in REDRAFT_STORE, kept off the command line). Never printed with
    /// its password.
    #[arg(long, env = "REDRAFT_STORE", hide_env_values = true, default_value = DEFAULT_STORE)]
    pub store: String,
    #[command(flatten)]
    pub timeouts: StoreTimeouts,
}

/// How long a store may take: flags of every command that opens one.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreTimeouts {
    /// How long connecting to a PostgreSQL store may take, handshake and
    /// login included (default: the URL's connect_timeout, else 10s).
    #[arg(long, value_name = "DURATION")]
    pub store_connect_timeout: Option<String>,
    /// How long one store statement may wait for an answer: a PostgreSQL
    /// server that stopped answering, or another process holding a SQLite
    /// file's lock.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub store_timeout: String,
}

impl StoreTimeouts {
    pub fn options(&self, access: store::Access) -> anyhow::Result<store::StoreOptions> {
        let duration = |flag: &str, v: &str| {
            crate::units::parse_duration(v)
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{flag} {v}: expected a positive duration (10s, 2m)"))
        };
        Ok(store::StoreOptions {
            access,
            connect_timeout: self
                .store_connect_timeout
                .as_deref()
                .map(|v| duration("store-connect-timeout", v))
                .transpose()?,
            statement_timeout: duration("store-timeout", &self.store_timeout)?,
        })
    }

    /// Opens the store at `location` with these timeouts.
    pub fn open(&self, location: &str, access: store::Access) -> anyhow::Result<Box<dyn Store>> {
        Ok(store::open_with(location, &self.options(access)?)?)
    }
}

impl StoreArgs {
    /// Opens the store for reading and writing.
    pub fn open(&self) -> anyhow::Result<Box<dyn Store>> {
        self.timeouts.open(&self.store, store::Access::ReadWrite)
    }

    /// The store, as a `--store` flag someone may copy into a command:
    /// empty when it came from REDRAFT_STORE (the next command reads it
    /// too), else without its password.
    pub fn flag(&self) -> String {
        let from_env = std::env::var("REDRAFT_STORE").is_ok_and(|v| v == self.store);
        if from_env || self.store == DEFAULT_STORE {
            String::new()
        } else {
            format!(" --store {}", crate::redact::without_password(&self.store))
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(
    args_override_self = true,
    after_help = "Exit codes: 0 all units finished, 2 invalid workflow/data/flags, 3 total budget spent with units left, \
4 more failed units than --max-errors, all failed, or a store failure, 130 interrupted. Run the same command again to continue."
)]
pub struct EvalArgs {
    /// The workflow to run on every item.
    pub workflow: PathBuf,
    /// A .jsonl, .json or .csv file (optionally .gz), or a built-in data set:
    /// humaneval, gsm8k, mtbench, tooltalk, bfcl-simple, bfcl-multiple
    /// (optionally NAME:PATH).
    #[arg(long)]
    pub data: Option<String>,
    #[command(flatten)]
    pub set: DataArgs,
    /// Give a workflow input the same value for every item: NAME=VALUE
    /// (typed by the input's declaration, e.g. `--input tau=0.7`).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Runs per item, seeds varied (pass@k needs K > 1).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Units in flight at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Per-item limits over the workflow's: tokens=N, calls=N, cost_usd=X, wall_time=30s.
    #[arg(long = "budget", value_name = "LIMIT=VALUE")]
    pub budgets: Vec<String>,
    /// Limits for the whole eval (tokens, calls, cost_usd): no new item starts once one is spent.
    #[arg(long = "total-budget", value_name = "LIMIT=VALUE")]
    pub total_budgets: Vec<String>,
    /// Stop (exit 4) once more units than this have failed in this run.
    #[arg(long)]
    pub max_errors: Option<usize>,
    /// Run failed units again.
    #[arg(long)]
    pub retry_failed: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Start over: keep the stored eval of the same id under another id
    /// (listed by `redraft runs` as replaced) and run every item again.
    #[arg(long)]
    pub fresh: bool,
    /// Run only shard I of N (I/N), or N with the index from
    /// JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// How long a claim holds without renewal (a worker that dies on
    /// another host frees its units after this): 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    pub lease: String,
    /// A name for listings (default: the workflow's). A name given is part
    /// of the eval's id: another name starts another eval.
    #[arg(long)]
    pub name: Option<String>,
    /// Use another backend for a workflow model, NAME=SPEC.
    #[arg(long = "model", short = 'm', value_name = "NAME=SPEC")]
    pub models: Vec<String>,
    /// Use another backend for a model of the `judge:` scorer's workflow, NAME=SPEC.
    #[arg(long = "judge-model", value_name = "NAME=SPEC")]
    pub judge_models: Vec<String>,
    /// Decisions for human review nodes: accept-all, reject-all, reference
    /// (accept an edit when it brings the text closer to the item's
    /// reference answer), web (people, in the browser: the URL is printed;
    /// each item's reviews go to one reviewer), or a decisions FILE (one
    /// entry per review round); part of the eval's id.
    #[arg(long, value_name = "MODE|FILE")]
    pub review: Option<String>,
    /// Keep prompts and replies in the stored events.
    #[arg(long)]
    pub log_content: bool,
    #[command(flatten)]
    pub cache: super::cache::CacheArgs,
    /// After the eval, fit a calibration of verify node NODE's confidence
    /// (METHOD: platt, the default, or isotonic) on half the items, report
    /// its reliability on the other half, and write it for `calibration:`.
    #[arg(long, value_name = "NODE[=METHOD]")]
    pub calibrate: Option<String>,
    /// Where --calibrate writes (default: the node's `calibration:` file,
    /// else WORKFLOW.NODE.calibration.yaml beside the workflow).
    #[arg(long, value_name = "FILE", requires = "calibrate")]
    pub calibration_out: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The flags of a data set and its scoring, declared once for every
/// command that runs a workflow over one (`eval`, `calibrate`, `migrate
/// --check`); the data source itself is each command's own flag.
#[derive(Debug, Default, clap::Args)]
pub struct DataArgs {
    /// Settings from an eval YAML (data, map, answer, scorer, epochs, ...);
    /// flags override it. Default: WORKFLOW's name with `.eval.yaml`, if present.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Feed a workflow input from a row field: INPUT=FIELD (a dotted path).
    #[arg(long = "map", value_name = "INPUT=FIELD")]
    pub map: Vec<String>,
    /// The row field holding the reference answer.
    #[arg(long)]
    pub answer: Option<String>,
    /// The row field holding the item id.
    #[arg(long)]
    pub id: Option<String>,
    /// Row fields only scorers read (hidden tests), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub hidden: Vec<String>,
    #[arg(long, help = format!("How to score: {SCORERS}"))]
    pub scorer: Option<String>,
    /// For `numeric`: a regex whose first group (or match) is the answer.
    #[arg(long, value_name = "REGEX")]
    pub extract: Option<String>,
    /// Isolation of the code scorer: bubblewrap (default) or none.
    #[arg(long, value_name = "bubblewrap|none")]
    pub sandbox: Option<String>,
    /// Run at most this many items (after --ids and --shuffle); at least 1.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only these item ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<String>,
    /// Shuffle the items with this seed (before --limit).
    #[arg(long, value_name = "SEED")]
    pub shuffle: Option<u64>,
}

impl DataArgs {
    /// The eval file: `--config`, else the one beside `workflow`, else
    /// nothing.
    pub fn file(&self, workflow: &Path) -> anyhow::Result<EvalConfig> {
        Ok(
            match self.config.clone().or_else(|| EvalConfig::beside(workflow)) {
                Some(path) => EvalConfig::read(&path)?,
                None => EvalConfig::default(),
            },
        )
    }

    /// The flags as settings (with `data`, the command's own source).
    pub fn flags(&self, data: Option<String>) -> anyhow::Result<EvalConfig> {
        let mut map = BTreeMap::new();
        for m in &self.map {
            let (input, field) = m
                .split_once('=')
                .with_context(|| format!("--map {m:?}: expected INPUT=FIELD"))?;
            map.insert(input.to_string(), field.to_string());
        }
        Ok(EvalConfig {
            data,
            map,
            answer: self.answer.clone(),
            id: self.id.clone(),
            hidden: self.hidden.clone(),
            scorer: self.scorer.clone(),
            extract: self.extract.clone(),
            sandbox: self.sandbox.clone(),
            limit: self.limit,
            ids: self.ids.clone(),
            shuffle: self.shuffle,
            ..EvalConfig::default()
        })
    }
}

pub(crate) struct Prepared {
    pub(crate) engine: crate::Engine,
    pub(crate) plan: EvalPlan,
    pub(crate) scorer: Scorer,
    pub(crate) opts: EvalOptions,
    pub(crate) isolation: crate::sandbox::Isolation,
    pub(crate) calibrate: Option<CalibrateTarget>,
}

/// Loads the workflow and resolves the eval file and flags into what
/// `eval::run` takes.
pub(crate) fn prepare(args: &EvalArgs) -> anyhow::Result<Prepared> {
    let wf =
        workflow::load(&args.workflow).map_err(|e| anyhow::anyhow!("{}", e.render().trim_end()))?;
    if !args.quiet {
        eprint!("{}", wf.warnings_rendered);
    }
    let source = std::fs::read_to_string(&args.workflow)
        .with_context(|| format!("cannot read {}", args.workflow.display()))?;
    let mut inputs = BTreeMap::new();
    for kv in &args.inputs {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--input {kv:?}: expected NAME=VALUE"))?;
        inputs.insert(k.to_string(), crate::engine::parse_input_value(&wf, k, v)?);
    }
    let (_, models) = super::engine_with_models(&wf, &args.models)?;
    let flags = EvalConfig {
        inputs,
        epochs: args.epochs,
        concurrency: args.concurrency,
        total_budget: key_values(&args.total_budgets, "--total-budget")?,
        max_errors: args.max_errors,
        name: args.name.clone(),
        models,
        ..args.set.flags(args.data.clone())?
    }
    .over(args.set.file(&args.workflow)?);
    let calibrate = args
        .calibrate
        .as_deref()
        .map(|flag| {
            CalibrateTarget::parse(flag, &wf, &args.workflow, args.calibration_out.as_deref())
        })
        .transpose()?;
    let EvalSetup {
        engine,
        mut plan,
        mut scorer,
        mut opts,
        isolation,
    } = flags.resolve(wf, source)?;
    if let Some((engine, judge)) = scorer.judge_mut() {
        *engine = super::engine_with_models(judge, &args.judge_models)?.0;
    } else if !args.judge_models.is_empty() {
        bail!("--judge-model applies to the judge:WORKFLOW scorer only");
    }
    plan.review = match args.review.as_deref() {
        Some("ask") => bail!(
            "--review ask: an eval never asks on the terminal; give accept-all, reject-all, reference, web or a decisions file"
        ),
        Some("reference") if plan.data.answer.is_none() => bail!(
            "--review reference: the reviewer needs each item's reference text; name its field with --answer"
        ),
        Some("reference") => Some(EvalReview::Reference),
        // The browser's reviewer is set where the viewer starts (the runtime).
        Some("web") => None,
        Some(r) => Some(EvalReview::Decisions(super::parse_review(r)?)),
        None => None,
    };
    plan.command = std::env::args().collect();
    opts.shard = args
        .shard
        .as_deref()
        .map(|s| eval::parse_shard(s, |k| std::env::var(k).ok()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    opts.lease = crate::units::parse_duration(&args.lease)
        .filter(|d| *d >= Duration::from_secs(3))
        .with_context(|| {
            format!(
                "--lease {}: expected a duration of at least 3s (30s, 2m)",
                args.lease
            )
        })?;
    opts.item_budget = super::parse_budgets(&args.budgets)?;
    opts.retry_failed = args.retry_failed;
    opts.fresh = args.fresh;
    opts.log_content = args.log_content;
    Ok(Prepared {
        engine,
        plan,
        scorer,
        opts,
        isolation,
        calibrate,
    })
}

/// `KEY=VALUE` items as a map (a later key replaces an earlier one).
fn key_values(items: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| {
            let (k, v) = item
                .split_once('=')
                .with_context(|| format!("{flag} {item:?}: expected LIMIT=VALUE"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The progress bar on a terminal; plain lines (at most one a second)
/// otherwise.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    plain: Mutex<(Instant, u64, u64)>,
    quiet: bool,
    /// The first failures of this run, shown at the end.
    errors: Mutex<Vec<String>>,
}

impl Bar {
    fn message(t: &Totals) -> String {
        let scored = t.done.max(1) as f64;
        format!(
            "acc {:.1}% · score {:.3} · {} failed · {} tok · ${:.4}",
            t.passed as f64 / scored * 100.0,
            t.score_sum / scored,
            t.failed,
            t.tokens,
            t.cost_usd
        )
    }
}

impl Progress for Bar {
    fn started(&self, total: u64, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            bar.reset_eta();
        } else if !self.quiet {
            eprintln!("eval: {done} of {total} units already finished");
        }
        let mut p = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        *p = (Instant::now(), done, total);
    }

    fn finished(&self, r: &ItemResult, t: &Totals) {
        if let Some(e) = &r.error {
            let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
            if errors.len() < 3 {
                errors.push(format!("{} (epoch {}): {e}", r.item_id, r.epoch));
            }
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(Bar::message(t));
            return;
        }
        if self.quiet {
            return;
        }
        let mut p = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        p.1 += 1;
        if p.0.elapsed() >= Duration::from_secs(1) || p.1 == p.2 {
            p.0 = Instant::now();
            eprintln!("eval: {}/{} · {}", p.1, p.2, Bar::message(t));
        }
    }
}

/// A viewer over the store at `location`, opened read-only off the runtime
/// (`redraft view`, and `eval --review web`, whose app shows the eval as it
/// runs).
pub(crate) async fn viewer_over(
    location: &str,
    timeouts: &StoreTimeouts,
    config: crate::view::ViewConfig,
) -> anyhow::Result<crate::view::Viewer> {
    let options = timeouts.options(store::Access::ReadOnly)?;
    let at = location.to_string();
    let opened = tokio::task::spawn_blocking(move || store::open_with(&at, &options))
        .await
        .context("the store thread failed")?
        .with_context(|| {
            format!(
                "cannot open the store {}",
                crate::redact::without_password(location)
            )
        })?;
    Ok(crate::view::start(config, Some(store::SharedStore::new(opened))).await?)
}

pub fn eval_command(args: EvalArgs) -> u8 {
    let prepared = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    let (runtime, flush_traces) = match super::runtime_with_tracing(args.quiet) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let store = match args.store.open() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    let bar = Bar {
        bar: (!args.quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} · ETA {eta} · {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        }),
        plain: Mutex::new((Instant::now(), 0, 0)),
        quiet: args.quiet,
        errors: Mutex::default(),
    };
    let Prepared {
        mut engine,
        plan,
        scorer,
        mut opts,
        calibrate,
        ..
    } = prepared;
    let cache = args
        .store
        .timeouts
        .options(store::Access::ReadWrite)
        .and_then(|o| {
            args.cache
                .open(crate::cache::CacheMode::On, Some(&args.store.store), &o)
        });
    match cache {
        Ok((mode, cache)) => {
            opts.cache = mode;
            if let Some(cache) = cache {
                engine = engine.with_cache(cache);
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    }
    let cancel = opts.cancel.clone();
    let web_review = args.review.as_deref() == Some("web");
    let location = args.store.store.clone();
    let mut plan = plan;
    let result = runtime.block_on(async {
        // Listen before anything is printed (the review URL), so a signal
        // sent once it is seen is never lost to the default action.
        let interrupted = super::interrupt_signal();
        // Reviews in the browser, on a viewer over this eval's store.
        let _viewer = if web_review {
            let config = crate::view::ViewConfig::default();
            match viewer_over(&location, &args.store.timeouts, config).await {
                Ok(viewer) => {
                    eprintln!("review the edits at {}review", viewer.url());
                    let reviewer = viewer.reviewer();
                    plan.review = Some(EvalReview::People(eval::ReviewerPerItem(Arc::new(
                        move |item: &str| -> Arc<dyn crate::review::Reviewer> {
                            Arc::new(reviewer.for_item(item))
                        },
                    ))));
                    Some(viewer)
                }
                Err(e) => return Err(eval::EvalError::Invalid(format!("--review web: {e:#}"))),
            }
        } else {
            None
        };
        let watcher = tokio::spawn(async move {
            if interrupted.await {
                eprintln!("stopping; finished items are stored, run the same command to continue");
                cancel.cancel();
            }
        });
        let r = eval::run(&engine, &plan, Arc::new(scorer), store, opts, &bar).await;
        watcher.abort();
        r
    });
    if let Some(b) = &bar.bar {
        b.finish_and_clear();
    }
    if let Some(flush) = flush_traces {
        flush();
    }
    runtime.shutdown_background();
    match result {
        Ok(outcome) => {
            for e in bar.errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                eprintln!("failed: {e}");
            }
            let fitted = calibrate
                .as_ref()
                .map(|target| calibrate_after(target, &outcome, &args).map(|c| (c, target)));
            let code = print_outcome(
                &outcome,
                &args,
                fitted
                    .as_ref()
                    .and_then(|f| f.as_ref().ok())
                    .map(|(c, _)| c),
            );
            match fitted {
                Some(Ok((c, target))) => {
                    print_calibration(&c, target, &args);
                    code
                }
                Some(Err(e)) => {
                    eprintln!("error: {e:#}");
                    EXIT_INVALID
                }
                None => code,
            }
        }
        Err(e @ (eval::EvalError::Store(_) | eval::EvalError::Model(_))) => {
            eprintln!("error: {e}");
            EXIT_BACKEND
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_INVALID
        }
    }
}

/// `--calibrate`: fit on this eval's stored verdicts, write, report.
fn calibrate_after(
    target: &CalibrateTarget,
    o: &EvalOutcome,
    args: &EvalArgs,
) -> anyhow::Result<crate::calibration::Calibration> {
    let units = args.store.open()?.units(&o.eval.id, false)?;
    let c = target.fit(&units)?;
    c.save(&target.out)
        .with_context(|| format!("cannot write {}", target.out.display()))?;
    Ok(c)
}

/// What `--calibrate` fitted, after the eval's own lines.
fn print_calibration(
    c: &crate::calibration::Calibration,
    target: &CalibrateTarget,
    args: &EvalArgs,
) {
    if !args.quiet {
        let p = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.3}"));
        eprintln!(
            "calibration of `{}` ({}, fitted on {} verdicts of half the items, {} on right answers) written to {}",
            c.node,
            c.method(),
            c.fitted_on,
            c.right,
            target.out.display()
        );
        match &c.held_out {
            Some(h) => eprintln!(
                "  held-out half, {} verdicts: ECE {:.3} → {:.3} · AUROC {} → {}",
                h.verdicts,
                h.ece_before,
                h.ece_after,
                p(h.auroc_before),
                p(h.auroc_after)
            ),
            None => eprintln!("  no held-out verdicts to measure it on (too few items)"),
        }
        eprintln!(
            "  apply it with `calibration: {}` on node `{}`",
            target
                .out
                .file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into_owned()),
            c.node
        );
    }
}

/// `--json`: the eval's outcome and metrics, and the calibration fitted.
fn outcome_json(
    o: &EvalOutcome,
    store: &StoreArgs,
    calibration: Option<&crate::calibration::Calibration>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "eval": o.eval.id,
        "name": o.eval.name,
        "store": crate::redact::url(&store.store),
        "end": o.end,
        "budget_limit": o.budget_limit,
        "ran": o.ran,
        "counts": o.counts,
        "metrics": o.metrics,
    });
    if let Some(c) = calibration {
        v["calibration"] = serde_json::to_value(c).unwrap_or_default();
    }
    v
}

/// How the eval ended, as an exit code, and what to say about it (always
/// said, unless `quiet` says only the code matters).
fn exit_of(o: &EvalOutcome, max_errors: Option<usize>) -> (u8, Option<(String, bool)>) {
    match o.end {
        EvalEnd::Done if o.ran.failed > 0 && o.ran.done == 0 => (
            EXIT_BACKEND,
            Some(("every unit this run started failed".into(), true)),
        ),
        EvalEnd::Done => (EXIT_OK, None),
        EvalEnd::BudgetSpent => (
            EXIT_BUDGET,
            Some((
                format!(
                    "total budget spent ({}): units left; raise --total-budget and run again to continue",
                    o.budget_limit.unwrap_or("?")
                ),
                false,
            )),
        ),
        EvalEnd::TooManyErrors => (
            EXIT_BACKEND,
            Some((
                format!(
                    "stopped: more than {} units failed",
                    max_errors.unwrap_or(0)
                ),
                true,
            )),
        ),
        EvalEnd::Interrupted => (super::interrupted_exit(), None),
    }
}

fn print_outcome(
    o: &EvalOutcome,
    args: &EvalArgs,
    calibration: Option<&crate::calibration::Calibration>,
) -> u8 {
    if args.json {
        stdout(&format!(
            "{:#}\n",
            outcome_json(o, &args.store, calibration)
        ));
    }
    if !args.quiet {
        for line in summary_lines(o, &args.store) {
            eprintln!("{line}");
        }
    }
    let (code, message) = exit_of(o, args.max_errors);
    if let Some((message, always)) = message {
        if always || !args.quiet {
            eprintln!("{message}");
        }
    }
    code
}

/// The text summary of an eval on stderr, line by line.
fn summary_lines(o: &EvalOutcome, store: &StoreArgs) -> Vec<String> {
    let m = &o.metrics;
    let mut lines = Vec::new();
    let pct = |x: Option<f64>| x.map_or("–".into(), |x| format!("{:.1}%", x * 100.0));
    lines.push(format!(
        "eval {} ({}) · {} units: {} done, {} failed, {} left · accuracy {} · mean score {}",
        o.eval.id,
        o.eval.name,
        o.counts.total(),
        o.counts.done,
        o.counts.failed,
        o.counts.pending + o.counts.claimed,
        pct(m.accuracy),
        m.mean_score.map_or("–".into(), |s| format!("{s:.3}")),
    ));
    if !m.pass_at_k.is_empty() && m.pass_at_k.len() > 1 {
        let p: Vec<String> = m
            .pass_at_k
            .iter()
            .map(|(k, v)| format!("pass@{k} {:.1}%", v * 100.0))
            .collect();
        lines.push(format!("  {}", p.join(" · ")));
    }
    let sampled: Vec<String> = m
        .per_round
        .iter()
        .filter_map(|r| {
            let p1 = r.sampled_pass_at_k.get(&1)?;
            let top = r
                .sampled_pass_at_k
                .iter()
                .next_back()
                .filter(|(k, _)| **k > 1);
            // Items that stopped earlier count with their last round.
            let reached = if r.reached < m.per_round[0].reached {
                format!(" ({} revised)", r.reached)
            } else {
                String::new()
            };
            Some(match top {
                Some((k, v)) => format!(
                    "round {}{reached}: pass@1 {:.1}% pass@{k} {:.1}%",
                    r.round,
                    p1 * 100.0,
                    v * 100.0
                ),
                None => format!("round {}{reached}: pass@1 {:.1}%", r.round, p1 * 100.0),
            })
        })
        .collect();
    if !sampled.is_empty() {
        lines.push(format!("  over samples · {}", sampled.join(" · ")));
    }
    if m.flips.units > 0 && m.per_round.len() > 1 {
        lines.push(format!(
            "  first answer {} → final {} · negative flips {} · positive flips {}",
            pct(m.first_accuracy),
            pct(m.accuracy),
            m.flips.negative,
            m.flips.positive
        ));
    }
    let rounds: Vec<String> = m
        .per_round
        .iter()
        .filter_map(|r| {
            let f = r.flips?;
            let rejected = if r.rejected > 0 {
                format!(", {} rejected", r.rejected)
            } else {
                String::new()
            };
            Some(format!(
                "round {} ({} items{rejected}): −{} +{} (NFR {:.1}%)",
                r.round,
                r.reached,
                f.negative,
                f.positive,
                f.negative_rate * 100.0
            ))
        })
        .collect();
    if !rounds.is_empty() {
        lines.push(format!("  vs the previous round · {}", rounds.join(" · ")));
    }
    // When not to refine: the first round that hurt more than it helped.
    if let Some((r, f)) = m
        .per_round
        .iter()
        .find_map(|r| Some((r, r.flips?)).filter(|(_, f)| f.negative > f.positive))
    {
        lines.push(format!(
            "  revision {} turned more right answers wrong ({}) than wrong ones right ({}) for this model: stop before it (at most {} revision(s)) or guard the loop (`accept`)",
            r.round,
            f.negative,
            f.positive,
            r.round - 1
        ));
    }
    if !m.per_node.is_empty() {
        let p: Vec<String> = m
            .per_node
            .iter()
            .map(|p| {
                format!(
                    "{} {:.1}% ({:.0} tok)",
                    p.node,
                    p.accuracy * 100.0,
                    p.tokens
                )
            })
            .collect();
        lines.push(format!("  per output node · {}", p.join(" · ")));
    }
    if !m.reviews.is_empty() {
        let r: Vec<String> = m
            .reviews
            .iter()
            .map(|r| {
                format!(
                    "depth {}: {} of {} accepted ({})",
                    r.depth,
                    r.accepted,
                    r.proposed,
                    pct(r.acceptance_rate)
                )
            })
            .collect();
        lines.push(format!("  review · {}", r.join(" · ")));
    }
    if let Some(i) = &m.insistency {
        lines.push(format!(
            "  revisions that kept the answer: {} of {} ({:.1}%), {} of them right",
            i.kept,
            i.revisions,
            i.rate * 100.0,
            pct(i.kept_right)
        ));
    }
    if let Some(c) = &m.confidence {
        let f = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.3}"));
        lines.push(format!(
            "  verifier confidence: {} verdicts ({} on right answers) · mean right {} wrong {} · AUROC {} · ECE {}",
            c.verdicts,
            c.right,
            f(c.mean_right),
            f(c.mean_wrong),
            f(c.auroc),
            f(c.ece)
        ));
        if let Some(k) = &m.calibrated_confidence {
            lines.push(format!(
                "  calibrated: mean right {} wrong {} · AUROC {} · ECE {}",
                f(k.mean_right),
                f(k.mean_wrong),
                f(k.auroc),
                f(k.ece)
            ));
        }
    }
    lines.push(format!(
        "  tokens/unit mean {:.0} p50 {:.0} p95 {:.0} · wall ms p50 {:.0} p95 {:.0} · this run: {} units, {} tokens, ${:.4}",
        m.tokens.mean,
        m.tokens.p50,
        m.tokens.p95,
        m.wall_ms.p50,
        m.wall_ms.p95,
        o.ran.done + o.ran.failed,
        o.ran.tokens,
        o.ran.cost_usd
    ));
    if m.total_reused_tokens > 0 {
        lines.push(format!(
            "  {} of {} prompt tokens were reused from a cache",
            m.total_reused_tokens, m.total_prompt_tokens
        ));
    }
    if !m.cache_by_node.is_empty() {
        let calls: u64 = m.cache_by_node.iter().map(|n| n.calls).sum();
        lines.push(format!(
            "  response cache: {} of {calls} calls served ({:.0}%), {} tokens not spent",
            m.total_cached_calls,
            100.0 * m.total_cached_calls as f64 / calls.max(1) as f64,
            m.total_cached_tokens
        ));
    }
    lines.push(format!(
        "  stored in {} · `redraft report {}{} -o report.html`",
        crate::redact::url(&store.store),
        &o.eval.id,
        store.flag()
    ));
    lines
}

#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the listing as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn runs_command(args: RunsArgs) -> u8 {
    let listing = args
        .store
        .timeouts
        .open(&args.store.store, store::Access::ReadOnly)
        .and_then(|mut s| Ok(s.evals()?));
    let evals = match listing {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    if args.json {
        stdout(&format!("{:#}\n", serde_json::json!(evals)));
        return EXIT_OK;
    }
    let mut out = format!(
        "{:<16}  {:<20}  {:<18}  {:>6}  {:>6}  {:>6}  {:>6}  {:<19}  {}\n",
        "id", "name", "workflow", "units", "done", "failed", "score", "created (UTC)", "models"
    );
    for e in &evals {
        out.push_str(&format!(
            "{:<16}  {:<20}  {:<18}  {:>6}  {:>6}  {:>6}  {:>6}  {:<19}  {}\n",
            e.id,
            e.name,
            e.workflow,
            e.units,
            e.done,
            e.failed,
            e.mean_score.map_or("–".into(), |s| format!("{s:.3}")),
            utc(e.created_at),
            e.models
        ));
    }
    stdout(&out);
    EXIT_OK
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC), without a date crate.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `[STORE#]ID`: an eval in the given store, else in `--store`.
fn split_ref<'a>(r: &'a str, default: &'a str) -> (&'a str, &'a str) {
    match r.rsplit_once('#') {
        Some((store, id)) if !store.is_empty() => (store, id),
        _ => (default, r),
    }
}

/// An eval's record and units, merged across stores (shards written to
/// several files): a unit finished in any of them counts. Stores open
/// read-only: a store that does not exist is an error, never created.
fn load_eval(
    stores: &[String],
    id: &str,
    events: bool,
    timeouts: &StoreTimeouts,
) -> anyhow::Result<ReportEval> {
    let mut record = None;
    let mut units: Vec<UnitRecord> = Vec::new();
    let mut index: BTreeMap<(String, u32), usize> = BTreeMap::new();
    let mut errors = Vec::new();
    for location in stores {
        let mut s = timeouts.open(location, store::Access::ReadOnly)?;
        let rec = match s.eval(id) {
            Ok(r) => r,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        for u in s.units(&rec.id, events)? {
            let key = (u.item.id.clone(), u.epoch);
            match index.get(&key) {
                Some(&i) if units[i].result.is_none() => units[i] = u,
                Some(_) => {}
                None => {
                    index.insert(key, units.len());
                    units.push(u);
                }
            }
        }
        record.get_or_insert(rec);
    }
    let Some(record) = record else {
        bail!("{}", errors.join("; "));
    };
    let metrics = crate::eval::stats::compute(&units);
    Ok(ReportEval {
        record,
        metrics,
        units,
    })
}

/// The newest eval among the stores (by creation time), for commands
/// given no eval.
fn latest_eval(stores: &[String], timeouts: &StoreTimeouts) -> anyhow::Result<String> {
    let mut newest: Option<store::EvalListing> = None;
    for location in stores {
        for e in timeouts.open(location, store::Access::ReadOnly)?.evals()? {
            if newest.as_ref().is_none_or(|n| e.created_at >= n.created_at) {
                newest = Some(e);
            }
        }
    }
    newest.map(|e| e.id).with_context(|| {
        format!(
            "{} holds no evals: run `redraft eval` first",
            stores
                .iter()
                .map(|s| crate::redact::url(s).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The old eval: an id, a unique id prefix or name, or STORE#ID.
    pub a: String,
    /// The new eval.
    pub b: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Exit 1 when the negative flip rate (right in A, wrong in B) is above
    /// this, or when fewer than --min-pairs units are paired.
    #[arg(long, value_name = "RATE")]
    pub max_nfr: Option<f64>,
    /// With --max-nfr: the fewest paired units the gate accepts (a gate
    /// over nothing passes nothing).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_pairs: usize,
    /// Which units are the same question: `data` (by id when both ran on
    /// the same data set, whatever inputs each method added; else as
    /// `content`), `content` (the same id, epoch and item: inputs and
    /// reference answer) or `id` (the same id and epoch, for twins that
    /// differ by design, such as RBD's biased sets).
    #[arg(long, value_enum, default_value_t = PairBy::Data)]
    pub pair_by: PairBy,
    /// Print the comparison as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PairBy {
    /// `id` when both ran on the same data set, else `content` (what
    /// `report` and `view` do).
    Data,
    Content,
    Id,
}

pub fn compare_command(args: CompareArgs) -> u8 {
    let load = |r: &str| {
        let (store, id) = split_ref(r, &args.store.store);
        load_eval(&[store.to_string()], id, false, &args.store.timeouts)
    };
    let (a, b) = match (load(&args.a), load(&args.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    if let Some(x) = args.max_nfr {
        if !(0.0..=1.0).contains(&x) {
            eprintln!("error: --max-nfr {x}: expected a rate between 0 and 1");
            return EXIT_INVALID;
        }
    }
    let pairing = match args.pair_by {
        PairBy::Data => crate::eval::stats::Pairing::between(&a.record, &b.record),
        PairBy::Content => crate::eval::stats::Pairing::Content,
        PairBy::Id => crate::eval::stats::Pairing::Id,
    };
    let c = crate::eval::stats::compare(&a.units, &b.units, pairing);
    if c.mismatched > 0 {
        eprintln!(
            "warning: {} unit(s) share an id with the other eval but not their item (inputs or reference answer){}",
            c.mismatched,
            match pairing {
                crate::eval::stats::Pairing::Content => {
                    ": not paired (`--pair-by id` pairs twins that differ by design)"
                }
                crate::eval::stats::Pairing::Id if args.pair_by == PairBy::Id => {
                    ": paired by id as asked"
                }
                crate::eval::stats::Pairing::Id => {
                    ": paired by id, as both ran on the same data set (`--pair-by content` pairs only the same items)"
                }
            }
        );
    }
    if args.json {
        let v = serde_json::json!({"a": a.record.id, "b": b.record.id, "comparison": c});
        stdout(&format!("{v:#}\n"));
    } else {
        let pct = |x: Option<f64>| x.map_or("–".into(), |x| format!("{:.1}%", x * 100.0));
        let mut out = format!(
            "{} ({}) → {} ({}): {} paired units{}\naccuracy {} → {} · right in both {} ({})\nnegative flips {} (NFR {}) · positive flips {} (PFR {}) · McNemar exact p = {:.4}{}\n",
            a.record.id,
            a.record.name,
            b.record.id,
            b.record.name,
            c.paired,
            if c.unpaired > 0 {
                format!(" ({} scored in one only)", c.unpaired)
            } else {
                String::new()
            },
            pct(c.accuracy_a),
            pct(c.accuracy_b),
            c.both_right,
            pct(c.consistency),
            c.negative,
            pct(c.negative_flip_rate),
            c.positive,
            pct(c.positive_flip_rate),
            c.p_value,
            if c.p_value < 0.05 {
                " (significant at 5%)"
            } else {
                " (not significant at 5%: could be noise)"
            }
        );
        for f in &c.flipped {
            out.push_str(&format!(
                "  {:<8} {} (epoch {}): {:.3} → {:.3}\n",
                f.direction, f.item, f.epoch, f.score_a, f.score_b
            ));
        }
        stdout(&out);
    }
    match args.max_nfr {
        Some(_) if c.paired < args.min_pairs.max(1) => {
            eprintln!(
                "the gate needs at least {} paired unit(s) and {} are paired: nothing to gate on (do the evals share items?)",
                args.min_pairs.max(1),
                c.paired
            );
            1
        }
        Some(max) if c.negative_flip_rate.unwrap_or(0.0) > max => {
            eprintln!(
                "negative flip rate {:.3} is above --max-nfr {max}",
                c.negative_flip_rate.unwrap_or(0.0)
            );
            1
        }
        _ => EXIT_OK,
    }
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Evals: ids, unique id prefixes or names, or STORE#ID (default: the
    /// newest eval in the stores).
    pub evals: Vec<String>,
    /// Stores to read (several: shards of one eval are merged).
    #[arg(long, env = "REDRAFT_STORE", hide_env_values = true, default_value = DEFAULT_STORE)]
    pub store: Vec<String>,
    #[command(flatten)]
    pub timeouts: StoreTimeouts,
    /// The HTML file to write (`-`: stdout).
    #[arg(short, long, default_value = "report.html")]
    pub output: PathBuf,
    /// Every eval whose name starts with PREFIX (the newest of each name),
    /// after the evals named.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// The eval the others are set against (single shot): put first, so the
    /// methods table gives McNemar p and flips against it. An id, prefix or
    /// name (the newest of that name).
    #[arg(long, value_name = "EVAL")]
    pub baseline: Option<String>,
    /// Also write the methods table as Markdown (two evals or more).
    #[arg(long, value_name = "FILE.md")]
    pub table: Option<PathBuf>,
    /// Also write the accuracy-versus-tokens frontier as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub frontier: Option<PathBuf>,
}

/// The evals a report shows: the baseline first, then the evals named, then
/// those whose names start with the prefix (the newest of each name, oldest
/// name first); each once.
fn report_selection(args: &ReportArgs) -> anyhow::Result<Vec<String>> {
    let mut listing: Vec<store::EvalListing> = Vec::new();
    if args.prefix.is_some() || args.baseline.is_some() {
        for location in &args.store {
            listing.extend(
                args.timeouts
                    .open(location, store::Access::ReadOnly)?
                    .evals()?,
            );
        }
        listing.sort_by_key(|e| e.created_at);
    }
    // A name given twice (the eval was re-run under a changed workflow) means
    // its newest eval; a unique id prefix means its eval (so the baseline is
    // not shown twice when the prefix also selects it); anything else is
    // left to the loader, which says what is wrong with it.
    let newest = |name: &str| -> String {
        if let Some(e) = listing.iter().rev().find(|e| e.name == name) {
            return e.id.clone();
        }
        match listing
            .iter()
            .filter(|e| e.id.starts_with(name))
            .collect::<Vec<_>>()
            .as_slice()
        {
            [one] => one.id.clone(),
            _ => name.to_string(),
        }
    };
    let mut out: Vec<String> = Vec::new();
    let mut push = |id: String| {
        if !out.contains(&id) {
            out.push(id);
        }
    };
    if let Some(b) = &args.baseline {
        push(newest(b));
    }
    for e in &args.evals {
        push(e.clone());
    }
    if let Some(prefix) = &args.prefix {
        let mut names: Vec<&str> = Vec::new();
        for e in &listing {
            if e.name.starts_with(prefix.as_str()) && !names.contains(&e.name.as_str()) {
                names.push(&e.name);
            }
        }
        if names.is_empty() {
            anyhow::bail!("no eval's name starts with `{prefix}`");
        }
        for n in names {
            push(newest(n));
        }
    }
    Ok(out)
}

pub fn report_command(args: ReportArgs) -> u8 {
    let named = if args.evals.is_empty() && args.prefix.is_none() && args.baseline.is_none() {
        match latest_eval(&args.store, &args.timeouts) {
            Ok(id) => {
                eprintln!("report: the newest eval, {id}");
                vec![id]
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return EXIT_INVALID;
            }
        }
    } else {
        match report_selection(&args) {
            Ok(named) => named,
            Err(e) => {
                eprintln!("error: {e:#}");
                return EXIT_INVALID;
            }
        }
    };
    let mut evals = Vec::new();
    for r in &named {
        let loaded = match r.rsplit_once('#') {
            Some((store, id)) if !store.is_empty() => {
                load_eval(&[store.to_string()], id, true, &args.timeouts)
            }
            _ => load_eval(&args.store, r, true, &args.timeouts),
        };
        match loaded {
            Ok(e) => evals.push(e),
            Err(e) => {
                eprintln!("error: {e:#}");
                return EXIT_INVALID;
            }
        }
    }
    let rows = crate::eval::report::method_rows(&evals);
    let mut files = vec![(
        &args.output,
        crate::eval::report::render_with(&evals, &rows),
    )];
    if let Some(path) = &args.table {
        files.push((path, crate::eval::table::markdown(&rows)));
    }
    if let Some(path) = &args.frontier {
        let title = format!(
            "{}: accuracy vs tokens per item",
            rows.first().map_or("", |r| r.models.as_str())
        );
        files.push((path, crate::eval::table::frontier_svg(&title, &rows)));
    }
    for (path, text) in files {
        // `-` is stdout; a reader that went away (`| head`) is no error.
        if path.as_os_str() == "-" {
            super::stdout(&text);
            continue;
        }
        match crate::file::write_atomic(path, text) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                return EXIT_INVALID;
            }
        }
    }
    EXIT_OK
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
