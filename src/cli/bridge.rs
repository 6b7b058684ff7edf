//! `redraft calibrate | migrate` (PromptBridge, `src/bridge/`).
//!
//! Exit codes: 0 done, 1 (`migrate --check --max-nfr X`) the migrated
//! prompts' negative flip rate against the source is above X, 2 invalid
//! flags, workflow, data or mapping, 4 a model or store failure, 130
//! interrupted (a calibration resumes with the same command).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::eval::{DEFAULT_STORE, DataArgs, EvalArgs};
use super::{EXIT_BACKEND, EXIT_INVALID, EXIT_OK, EXIT_UNVERIFIED, stdout};
use crate::bridge::{
    self, Bridge, BridgeError, CalibrateOptions, CheckSpec, Mapping, Step, Task, migrate,
};
use crate::engine::CancellationToken;
use crate::eval::config::EvalConfig;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 done, 2 invalid flags/workflow/data, 4 a model or store failure, \
130 interrupted. Run the same command again to continue a calibration."
)]
pub struct CalibrateArgs {
    /// The prompt file to calibrate, as the workflow names it (default:
    /// the workflow's only prompt file).
    #[arg(long)]
    pub prompt: Option<String>,
    /// A name for the task; calibrations of one task for two models pair
    /// up into a mapping (default: the data set's name).
    #[arg(long)]
    pub task: Option<String>,
    /// The model that proposes prompts (default: the model being calibrated).
    #[arg(long, value_name = "SPEC")]
    pub reflect: Option<String>,
    /// Populations of prompts evolved apart (exchanging their best now and then).
    #[arg(long, default_value_t = 2)]
    pub islands: usize,
    /// Items a proposal is first tried on before it is scored on all.
    #[arg(long, default_value_t = 3)]
    pub minibatch: usize,
    /// Generations of proposals per island.
    #[arg(long, default_value_t = 4)]
    pub generations: u32,
    /// Exchange the islands' best every N generations (0: never).
    #[arg(long, default_value_t = 2)]
    pub migrate_every: u32,
    /// Stop before a step would pass this many item runs scored.
    #[arg(long)]
    pub max_metric_calls: Option<u64>,
    /// Stop once this many tokens are spent (task model and reflection).
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Stop once this many model calls are made (task model and reflection).
    #[arg(long)]
    pub max_calls: Option<u64>,
    /// Seed of the search's choices (parents, minibatches).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Append the placeholders a proposal lost instead of rejecting it
    /// (for small reflection models, which often drop them).
    #[arg(long)]
    pub restore_placeholders: bool,
    /// Write the calibrated prompt to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The workflow, data, scorer, model and store, as for `redraft eval`
    /// (every model of the workflow runs as the one given with --model).
    #[command(flatten)]
    pub eval: EvalArgs,
}

pub fn calibrate_command(args: CalibrateArgs) -> u8 {
    let (task, model) = match task_of(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    let reflect = args.reflect.clone().unwrap_or_else(|| model.clone());
    if let Err(e) = crate::backend::ModelSpec::parse(&reflect) {
        eprintln!("error: --reflect {}: {e}", crate::redact::text(&reflect));
        return EXIT_INVALID;
    }
    let opts = CalibrateOptions {
        islands: args.islands,
        minibatch: args.minibatch,
        migrate_every: args.migrate_every,
        seed: args.seed,
        generations: args.generations,
        max_metric_calls: args.max_metric_calls,
        max_tokens: args.max_tokens,
        max_calls: args.max_calls,
        concurrency: args.eval.concurrency.unwrap_or(1),
        lost_placeholders: lost(args.restore_placeholders),
        ..CalibrateOptions::default()
    };
    let (runtime, flush) = match super::runtime_with_tracing(args.eval.quiet) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let quiet = args.eval.quiet;
    let progress = move |s: &Step| {
        if !quiet {
            eprintln!("calibrate: {}", describe(s));
        }
    };
    let cancel = CancellationToken::new();
    let result = runtime.block_on(async {
        let watcher = interrupt(cancel.clone());
        let r = bridge::calibrate::calibrate(
            &task,
            &model,
            &reflect,
            &args.eval.store.store,
            &opts,
            &cancel,
            &progress,
        )
        .await;
        watcher.abort();
        r
    });
    if let Some(f) = flush {
        f();
    }
    let cal = match result {
        Ok(c) => c,
        Err(e) => return failure(&e, cancel.is_cancelled()),
    };
    let best = cal.best();
    if let Some(out) = &args.out {
        if let Err(e) = crate::file::write_atomic(out, &best.prompt) {
            eprintln!("error: cannot write {}: {e}", out.display());
            return EXIT_BACKEND;
        }
    }
    if args.eval.json {
        stdout(&format!(
            "{:#}\n",
            serde_json::json!({"calibration": cal, "best": best.id})
        ));
    } else {
        let seed = cal.seed();
        let accepted = cal
            .proposals
            .iter()
            .filter(|p| p.accepted.is_some())
            .count();
        stdout(&format!(
            "calibration {} · task {} · model {}\n{} generation(s), {} proposal(s), {} accepted · {} metric calls · {} tokens · stopped: {}\nseed prompt: mean {:.3} ({}/{} passed)\nbest (candidate {}): mean {:.3} ({}/{} passed)\n--- calibrated prompt ---\n{}\n",
            cal.id,
            cal.task,
            cal.model,
            cal.generation,
            cal.proposals.len(),
            accepted,
            cal.metric_calls,
            cal.tokens,
            cal.stopped.as_deref().unwrap_or("-"),
            seed.mean,
            seed.passed,
            seed.scores.len(),
            best.id,
            best.mean,
            best.passed,
            best.scores.len(),
            best.prompt
        ));
    }
    if cancel.is_cancelled() {
        super::interrupted_exit()
    } else {
        EXIT_OK
    }
}

/// The task and the model spec from `redraft eval`'s flags.
fn task_of(args: &CalibrateArgs) -> anyhow::Result<(Task, String)> {
    let e = &args.eval;
    if e.epochs.is_some_and(|n| n != 1) || e.shard.is_some() || e.review.is_some() {
        bail!(
            "calibrate runs each item once on the whole data: --epochs, --shard and --review do not apply"
        );
    }
    let prepared = super::eval::prepare(e)?;
    let (plan, isolation) = (prepared.plan, prepared.isolation);
    let specs = plan.model_specs();
    let mut distinct: Vec<&String> = specs.values().collect();
    distinct.sort();
    distinct.dedup();
    let model = match distinct.as_slice() {
        [one] => (*one).clone(),
        [] => bail!(
            "{} declares no model to calibrate for",
            e.workflow.display()
        ),
        _ => bail!(
            "calibrate tunes a prompt for one model; the workflow runs several ({}): give one spec to all with --model NAME=SPEC",
            specs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let files = plan.workflow.prompt_files();
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        None => {
            let mut names: Vec<&str> = files.iter().map(|f| f.file.as_str()).collect();
            names.sort();
            names.dedup();
            match names.as_slice() {
                [one] => one.to_string(),
                [] => bail!("{} uses no prompt file to calibrate", e.workflow.display()),
                many => bail!(
                    "the workflow uses several prompt files ({}): choose one with --prompt",
                    many.join(", ")
                ),
            }
        }
    };
    let name = args.task.clone().unwrap_or_else(|| {
        Path::new(&plan.data.source)
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.split(':').next().unwrap_or(s).to_string())
            .unwrap_or_else(|| plan.data.source.clone())
    });
    Ok((
        Task {
            name,
            workflow: e.workflow.clone(),
            prompt,
            data: plan.data,
            selection: plan.selection,
            scorer: plan.scorer,
            extract: plan.extract,
            isolation,
        },
        model,
    ))
}

fn describe(s: &Step) -> String {
    match s {
        Step::Resumed {
            generation,
            candidates,
        } => format!("resumed after generation {generation} ({candidates} candidates)"),
        Step::Scored {
            candidate,
            mean,
            items,
        } => format!("candidate {candidate}: mean {mean:.3} over {items} items"),
        Step::Proposed {
            generation,
            island,
            parent,
            accepted,
            rejected,
            parent_score,
            child_score,
        } => {
            let child = child_score.map_or("-".into(), |c| format!("{c:.2}"));
            match (accepted, rejected) {
                (Some(c), _) => format!(
                    "gen {generation} island {island}: child of {parent} accepted as {c} (minibatch {parent_score:.2} → {child})"
                ),
                (None, r) => format!(
                    "gen {generation} island {island}: child of {parent} rejected: {} (minibatch {parent_score:.2} → {child})",
                    r.as_deref().unwrap_or("-")
                ),
            }
        }
        Step::Exchanged {
            from,
            to,
            candidate,
        } => format!("island {from} sent candidate {candidate} to island {to}"),
        Step::Generation {
            generation,
            best,
            best_mean,
            metric_calls,
            tokens,
        } => format!(
            "generation {generation} done: best {best} ({best_mean:.3}) · {metric_calls} metric calls · {tokens} tokens"
        ),
        Step::Stopped { reason } => format!("stopped: {reason}"),
    }
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 done, 1 the migrated prompts' negative flip rate against the source \
is above --max-nfr, 2 invalid flags/workflow/data/mapping, 4 a model or store failure, 130 interrupted."
)]
pub struct MigrateArgs {
    /// Prompt files (.j2, .txt, ...) or workflows (.yaml) to migrate.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The source model (a spec, as calibrated).
    #[arg(long, value_name = "SPEC", required_unless_present = "replay")]
    pub from: Option<String>,
    /// The target model (a spec, as calibrated).
    #[arg(long, value_name = "SPEC", required_unless_present = "replay")]
    pub to: Option<String>,
    /// The mapping file: read if it exists, else learned from the
    /// calibrations in --store and written here.
    #[arg(long, value_name = "FILE")]
    pub mapping: Option<PathBuf>,
    /// Where the calibrations are (and the check's evals go): a SQLite file
    /// or postgres://USER@HOST/DB (password from PGPASSWORD or ~/.pgpass, or
    /// the whole URL in REDRAFT_STORE).
    #[arg(long, env = "REDRAFT_STORE", hide_env_values = true, default_value = DEFAULT_STORE)]
    pub store: String,
    /// The model that writes the mapping and the rewrites (default: the mapping's writer, else --from).
    #[arg(long, value_name = "SPEC")]
    pub writer: Option<String>,
    /// Suffix of the migrated files: NAME.TAG.EXT (default: from --to).
    #[arg(long)]
    pub tag: Option<String>,
    /// Replace the original prompt files instead of writing new ones.
    #[arg(long)]
    pub in_place: bool,
    /// Rewrites tried per prompt before giving up.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// Append the placeholders a rewrite lost instead of trying again.
    #[arg(long)]
    pub restore_placeholders: bool,
    /// Check the migration on held-out data (a file or a built-in data set):
    /// source prompts on --from, on --to (direct transfer), migrated on --to.
    /// The workflow's eval file (WORKFLOW.eval.yaml) gives map, answer and scorer.
    #[arg(long, value_name = "DATA")]
    pub check: Option<String>,
    /// How the check's data set is read and scored, as for `redraft eval`.
    #[command(flatten)]
    pub set: DataArgs,
    /// Check items in flight at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Exit 1 when the migrated prompts' negative flip rate against the source is above this.
    #[arg(long, value_name = "RATE")]
    pub max_nfr: Option<f64>,
    /// Record every model call into DIR (mapping.yaml, writer/source/target.jsonl)
    /// for replay in snapshot tests (`redraft::bridge::Bridge::replay`).
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Replay a migration recorded with --record DIR: its mapping and model
    /// replies, no model run (a request that was not recorded fails).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["from", "to", "mapping", "writer", "record"])]
    pub replay: Option<PathBuf>,
    /// Print what was migrated (and the check) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn migrate_command(args: MigrateArgs) -> u8 {
    if let Some(x) = args.max_nfr {
        if !(0.0..=1.0).contains(&x) {
            eprintln!("error: --max-nfr {x}: expected a rate between 0 and 1");
            return EXIT_INVALID;
        }
        if args.check.is_none() {
            eprintln!("error: --max-nfr gates a check: give --check DATA");
            return EXIT_INVALID;
        }
    }
    for spec in [&args.from, &args.to, &args.writer].into_iter().flatten() {
        if let Err(e) = crate::backend::ModelSpec::parse(spec) {
            eprintln!("error: model {}: {e}", crate::redact::text(spec));
            return EXIT_INVALID;
        }
    }
    let workflows: Vec<&PathBuf> = args.paths.iter().filter(|p| is_workflow(p)).collect();
    let check = match &args.check {
        None => None,
        Some(data) => match workflows.as_slice() {
            [wf] => match check_spec(&args, wf, data) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return EXIT_INVALID;
                }
            },
            _ => {
                eprintln!(
                    "error: --check runs a workflow with the prompts: give exactly one workflow (.yaml) among the paths"
                );
                return EXIT_INVALID;
            }
        },
    };
    let (runtime, flush) = match super::runtime_with_tracing(args.quiet) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let cancel = CancellationToken::new();
    let result = runtime.block_on(async {
        let watcher = interrupt(cancel.clone());
        let r = migrate_all(&args, check.as_ref(), &cancel).await;
        watcher.abort();
        r
    });
    if let Some(f) = flush {
        f();
    }
    match result {
        Ok(code) => code,
        Err(e) => failure(&e, cancel.is_cancelled()),
    }
}

fn is_workflow(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// The check's data, selection and scorer, read exactly as `redraft eval`
/// reads them.
fn check_spec(args: &MigrateArgs, workflow: &Path, data: &str) -> anyhow::Result<CheckSpec> {
    let wf = crate::workflow::load(workflow)
        .map_err(|e| anyhow::anyhow!("{}", e.render().trim_end()))?;
    let source = std::fs::read_to_string(workflow)
        .with_context(|| format!("cannot read {}", workflow.display()))?;
    let config = EvalConfig {
        concurrency: args.concurrency,
        ..args.set.flags(Some(data.to_string()))?
    }
    .over(args.set.file(workflow)?);
    let setup = config.resolve(wf, source).context("--check")?;
    Ok(CheckSpec {
        data: setup.plan.data,
        selection: setup.plan.selection,
        scorer: setup.plan.scorer,
        extract: setup.plan.extract,
        isolation: setup.isolation,
        concurrency: args.concurrency.unwrap_or(1),
    })
}

async fn migrate_all(
    args: &MigrateArgs,
    check: Option<&CheckSpec>,
    cancel: &CancellationToken,
) -> Result<u8, BridgeError> {
    let say = |s: String| {
        if !args.quiet {
            eprintln!("migrate: {s}");
        }
    };
    let (mut bridge, to) = match &args.replay {
        Some(dir) => {
            let bridge = Bridge::replay(dir)?;
            say(format!(
                "replaying the migration recorded in {}",
                dir.display()
            ));
            let to = bridge.mapping().to.clone();
            (bridge, to)
        }
        None => {
            // clap requires both without --replay.
            let (Some(from), Some(to)) = (&args.from, &args.to) else {
                return Err(BridgeError::Invalid(
                    "give --from and --to, or --replay DIR".into(),
                ));
            };
            let mut bridge = Bridge::new(mapping(args, from, to, &say).await?);
            if let Some(w) = &args.writer {
                bridge = bridge.writer(w);
            }
            if let Some(dir) = &args.record {
                bridge = bridge.record(dir)?;
                say(format!("recording into {}", dir.display()));
            } else {
                bridge = bridge.store(&args.store);
            }
            (bridge, to.clone())
        }
    };
    if bridge.mapping().description.trim().is_empty() {
        say("every calibrated pair has the same prompt for both models: no edit to learn, prompts are kept as they are".into());
    } else {
        say(format!(
            "transfer description:\n{}",
            bridge.mapping().description
        ));
    }
    bridge = bridge
        .attempts(args.attempts)
        .lost_placeholders(lost(args.restore_placeholders))
        .cancel(cancel.clone());
    let tag = args.tag.clone().unwrap_or_else(|| migrate::tag_of(&to));
    let mut written = Vec::new();
    let mut report = None;
    for path in &args.paths {
        if is_workflow(path) {
            let m = bridge.migrate_workflow(path).await?;
            for p in &m.prompts {
                if p.attempts == 0 {
                    say(format!("{} kept", p.file));
                    continue;
                }
                say(format!(
                    "{} rewritten ({} attempt(s){})",
                    p.file,
                    p.attempts,
                    if p.restored.is_empty() {
                        String::new()
                    } else {
                        format!(", restored {}", p.restored.join(", "))
                    }
                ));
            }
            if let Some(spec) = check {
                report = Some(bridge.check(&m, spec).await?);
            }
            written.extend(m.write(&tag, args.in_place)?);
        } else {
            let m = bridge.migrate_file(path).await?;
            written.push(write_prompt(&m, &tag, args.in_place)?);
        }
    }
    let over = match (&report, args.max_nfr) {
        (Some(r), Some(x)) => r.migrated_vs_source.nfr.is_some_and(|n| n > x),
        _ => false,
    };
    if args.json {
        stdout(&format!(
            "{:#}\n",
            serde_json::json!({
                "written": written,
                "check": report,
                "gate": args.max_nfr.map(|x| serde_json::json!({"max_nfr": x, "passed": !over})),
            })
        ));
    } else {
        let mut out = String::new();
        for w in &written {
            out.push_str(&format!("wrote {}\n", w.display()));
        }
        if let Some(r) = &report {
            out.push_str(&check_text(r));
        }
        if over {
            out.push_str(&format!(
                "gate failed: the migrated prompts' negative flip rate against the source is above --max-nfr {}\n",
                args.max_nfr.unwrap_or_default()
            ));
        }
        stdout(&out);
    }
    Ok(if over { EXIT_UNVERIFIED } else { EXIT_OK })
}

/// The mapping: read from `--mapping` if the file exists, else learned
/// from the calibrations in the store (and saved to `--mapping`).
async fn mapping(
    args: &MigrateArgs,
    from: &str,
    to: &str,
    say: &impl Fn(String),
) -> Result<Mapping, BridgeError> {
    if let Some(path) = args.mapping.as_ref().filter(|p| p.exists()) {
        let m = Mapping::load(path)?;
        if m.from != from || m.to != to {
            return Err(BridgeError::Invalid(format!(
                "mapping {} is for {} → {}, not {from} → {to}",
                path.display(),
                m.from,
                m.to,
            )));
        }
        say(format!(
            "mapping {} ({} pairs)",
            path.display(),
            m.pairs.len()
        ));
        return Ok(m);
    }
    let store = args.store.clone();
    let cals = tokio::task::spawn_blocking(move || {
        let mut s = crate::eval::store::open(&store)?;
        bridge::calibrate::calibrations(s.as_mut())
    })
    .await
    .map_err(|e| BridgeError::Invalid(format!("the store thread failed: {e}")))??;
    let pairs = migrate::pairs(&cals, from, to);
    for p in &pairs {
        let pts = |x: f64| format!("{:+.1} pts", x * 100.0);
        say(match (p.source_prompt_on_target, p.transfer_gap) {
            (Some(on_target), Some(gap)) => format!(
                "task {}: the source's best prompt scores {:.3} on the target, the target's own best {:.3}: transfer gap {}",
                p.task,
                on_target,
                p.target_score,
                pts(gap)
            ),
            _ => format!(
                "task {}: transfer gap not measured (the target's calibration never scored the source's best prompt)",
                p.task
            ),
        });
    }
    let writer = args.writer.as_deref().unwrap_or(from);
    say(format!(
        "learning the mapping from {} calibrated pair(s) in {}",
        pairs.len(),
        crate::redact::url(&args.store)
    ));
    let m = migrate::learn(pairs, from, to, writer).await?;
    if let Some(path) = &args.mapping {
        m.save(path)?;
        say(format!("mapping written to {}", path.display()));
    }
    Ok(m)
}

/// A lone prompt file: `NAME.TAG.EXT` beside it, or over it with `--in-place`.
fn write_prompt(
    p: &bridge::MigratedPrompt,
    tag: &str,
    in_place: bool,
) -> Result<PathBuf, BridgeError> {
    let out = if in_place {
        p.path.clone()
    } else {
        let out = migrate::tagged(&p.path, tag);
        if out.exists() {
            return Err(BridgeError::Invalid(format!(
                "{} exists: remove it, choose another --tag, or --in-place to replace the original",
                out.display()
            )));
        }
        out
    };
    crate::file::write_atomic(&out, &p.text).map_err(|source| BridgeError::Io {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

fn check_text(r: &bridge::CheckReport) -> String {
    let pct = |x: Option<f64>| x.map_or("–".into(), |x| format!("{:.1}%", x * 100.0));
    let pts = |x: Option<f64>| x.map_or("–".into(), |x| format!("{:+.1} pts", x * 100.0));
    let arm = |name: &str, a: &bridge::migrate::ArmReport| {
        let why = a
            .first_error
            .as_ref()
            .map_or(String::new(), |e| format!("    first failure: {e}\n"));
        format!(
            "  {name:<28} {:>7}  ({}/{} right, {} failed, {} tok)\n{why}",
            pct(a.accuracy),
            a.passed,
            a.scored,
            a.failed,
            a.tokens
        )
    };
    let flips = |name: &str, f: &bridge::migrate::FlipReport| {
        format!(
            "  {name:<28} {} negative (NFR {}), {} positive (PFR {}), McNemar p = {:.4}{}\n",
            f.negative.len(),
            pct(f.nfr),
            f.positive.len(),
            pct(f.pfr),
            f.p_value,
            if f.negative.is_empty() {
                String::new()
            } else {
                format!(" · negative: {}", f.negative.join(", "))
            }
        )
    };
    format!(
        "check on {} held-out item(s), from {} to {}:\n{}{}{}model gap (direct − source: the same prompts on the target minus on the source) {} · gain over direct transfer {}\n{}{}{}",
        r.items,
        r.source.model,
        r.direct.model,
        arm("source prompts on from", &r.source),
        arm("source prompts on to", &r.direct),
        arm("migrated prompts on to", &r.migrated),
        pts(r.model_gap),
        pts(r.gain),
        flips("direct vs source", &r.direct_vs_source),
        flips("migrated vs source", &r.migrated_vs_source),
        flips("migrated vs direct", &r.migrated_vs_direct),
    )
}

fn lost(restore: bool) -> bridge::LostPlaceholders {
    if restore {
        bridge::LostPlaceholders::Restore
    } else {
        bridge::LostPlaceholders::Reject
    }
}

fn interrupt(cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    let interrupted = super::interrupt_signal();
    tokio::spawn(async move {
        if interrupted.await {
            eprintln!("stopping; what is stored stays stored");
            cancel.cancel();
        }
    })
}

fn failure(e: &BridgeError, interrupted: bool) -> u8 {
    eprintln!("error: {e}");
    if interrupted {
        return super::interrupted_exit();
    }
    match e {
        BridgeError::Workflow(w) => {
            eprint!("{}", w.render());
            EXIT_INVALID
        }
        BridgeError::Invalid(_) | BridgeError::Io { .. } => EXIT_INVALID,
        BridgeError::Eval(crate::eval::EvalError::Store(_) | crate::eval::EvalError::Model(_))
        | BridgeError::Store(_) => EXIT_BACKEND,
        BridgeError::Eval(_) => EXIT_INVALID,
        BridgeError::Model { .. } | BridgeError::Unusable { .. } => EXIT_BACKEND,
    }
}
