//! The `redraft` command line. This is the edge: errors get context here and
//! become exit codes; the library below stays typed.
//!
//! Exit codes (stable, documented in README and `redraft --help`):
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | finished; verified where the workflow verifies |
//! | 1    | finished, but the output did not pass verification |
//! | 2    | invalid workflow, input or usage |
//! | 3    | budget exhausted (the best output so far is printed) |
//! | 4    | model or backend failure |
//! | 130  | interrupted (Ctrl-C); 143 after SIGTERM, 129 after SIGHUP |

mod bridge;
mod cache;
mod eval;
mod review;
mod view;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::Layer as _;

use crate::budget::Limits;
use crate::engine::{Engine, RunError, RunOptions};
use crate::event::{CallOutcome, Event, Fanout, NodeStatus, Recorder};
use crate::summary::{FailureKind, RunStatus, RunSummary};
use crate::workflow::{self, Workflow};

pub const EXIT_OK: u8 = 0;
pub const EXIT_UNVERIFIED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_BUDGET: u8 = 3;
pub const EXIT_BACKEND: u8 = 4;
pub const EXIT_INTERRUPTED: u8 = 130;

const EXIT_HELP: &str = "Exit codes: 0 finished (and verified, where the workflow verifies), 1 finished unverified, \
2 invalid workflow or usage, 3 budget exhausted (best-so-far printed), 4 model/backend failure, \
130 interrupted (Ctrl-C), 143 stopped by SIGTERM, 129 by SIGHUP (each stops cleanly, like Ctrl-C).";

#[derive(Debug, Parser)]
#[command(name = "redraft", version, about = "Run draft → critique → verify → revise workflows with LLMs.", after_help = EXIT_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a workflow and print its output.
    Run(RunArgs),
    /// Check workflow files; exit 2 if any is invalid.
    Validate {
        /// The workflow files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// `human` (rustc-style, on stderr) or `json` (one array on stdout:
        /// per file, `ok` and its diagnostics with file, line and column).
        #[arg(long, value_enum, default_value_t = DiagnosticFormat::Human)]
        format: DiagnosticFormat,
    },
    /// Print a workflow's graph.
    Graph {
        /// The workflow to draw.
        file: PathBuf,
        /// Mermaid (for Markdown) or DOT (for Graphviz).
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print the JSON Schema of the workflow format.
    Schema,
    /// Write a ready-to-edit copy of a shipped method (workflow, prompts,
    /// scripted replies, tools) into a directory; without METHOD, list them.
    New {
        /// The method to copy (`redraft new` lists them).
        method: Option<String>,
        /// Where to write it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Run a workflow over a data set, score every item, store the results
    /// (resumable: the same command continues where it stopped).
    Eval(Box<eval::EvalArgs>),
    /// List the evals in a results store.
    Runs(eval::RunsArgs),
    /// Item-level flips between two evals, with a paired significance test.
    Compare(eval::CompareArgs),
    /// Write one self-contained HTML report of one or more evals.
    Report(eval::ReportArgs),
    /// Calibrate a workflow's prompt for a model (PromptBridge MAP-RPE):
    /// evolve it with a reflection model, scored on a data set; stored and
    /// resumable.
    Calibrate(Box<bridge::CalibrateArgs>),
    /// Rewrite prompts (or a workflow's prompts) for another model with a
    /// mapping learned from calibrations; check the result on held-out data.
    Migrate(Box<bridge::MigrateArgs>),
    /// The response cache: `stats`, `clear`, `prune` (to --cache-max-size).
    Cache(cache::CacheCommand),
    /// Serve a local web app over a results store: evals as they run, one
    /// eval's report with item filters and pages, comparisons.
    View(view::ViewArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiagnosticFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The workflow to run.
    pub file: PathBuf,
    /// An input value, `NAME=VALUE` (parsed by the input's declared type).
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Inputs from a JSON (or YAML) object.
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,
    /// Skip the fields of `--input-file` that the workflow does not declare
    /// (a data-set row with more columns than inputs), instead of failing.
    #[arg(long)]
    pub ignore_unknown_inputs: bool,
    /// Use another backend for a workflow model, `NAME=SPEC`.
    #[arg(long = "model", short = 'm', value_name = "NAME=SPEC")]
    pub models: Vec<String>,
    /// Override a workflow budget limit: tokens=N, calls=N, cost_usd=X, wall_time=30s.
    #[arg(long = "budget", value_name = "LIMIT=VALUE")]
    pub budgets: Vec<String>,
    /// Write every event as a JSON line to this file.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Put each call's rendered prompt and reply texts into its `model_call`
    /// event (for debugging prompts; off by default; never API keys).
    #[arg(long)]
    pub log_content: bool,
    /// Record every model call into a cassette (JSONL) for `replay:FILE`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Decisions for human review nodes: accept-all, reject-all, ask (on
    /// the terminal), web (in the browser: the URL is printed), or a
    /// decisions FILE (one entry per review round).
    #[arg(long, value_name = "MODE|FILE")]
    pub review: Option<String>,
    #[command(flatten)]
    pub cache: cache::CacheArgs,
    /// Print a machine-readable summary instead of the output alone.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

pub(crate) fn parse_review(s: &str) -> anyhow::Result<workflow::ReviewDecisions> {
    use workflow::ReviewDecisions as D;
    Ok(match s {
        "accept-all" | "accept_all" => D::AcceptAll,
        "reject-all" | "reject_all" => D::RejectAll,
        "ask" | "web" => D::Ask,
        path => {
            let p = PathBuf::from(path);
            anyhow::ensure!(
                p.is_file(),
                "--review {path:?}: not accept-all, reject-all, ask, web, or an existing decisions file"
            );
            D::File(p)
        }
    })
}

/// What reaches stderr from `tracing`: `RUST_LOG` if set; otherwise
/// warnings, except llama.cpp's own (its loader's notes about the model
/// file, under the target `llama-cpp-2`; `RUST_LOG=llama-cpp-2=info` shows
/// them), and with `-q` errors only.
fn log_filter(rust_log: Option<String>, quiet: bool) -> tracing_subscriber::EnvFilter {
    let default = if quiet {
        "error"
    } else {
        "warn,llama-cpp-2=error"
    };
    rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default))
}

/// Logs to stderr, filtered by `RUST_LOG` (errors only with `-q`). With
/// the `otel` feature and an OTLP endpoint in the environment, spans are
/// also exported (call inside the runtime); the guard flushes them.
pub(crate) fn init_tracing(quiet: bool) -> Option<Box<dyn FnOnce()>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter(std::env::var("RUST_LOG").ok(), quiet));
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otel")]
    match crate::otel::layer_from_env() {
        Some(Ok((layer, guard))) => {
            let _ = registry.with(layer).try_init();
            return Some(Box::new(move || guard.shutdown()));
        }
        Some(Err(e)) => eprintln!("warning: not exporting traces: {e}"),
        None => {}
    }
    let _ = registry.try_init();
    None
}

/// Parses arguments, runs, and returns the exit code.
pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                EXIT_INVALID
            } else {
                EXIT_OK
            };
        }
    };
    if !matches!(
        cli.command,
        Command::Run(_) | Command::Eval(_) | Command::Calibrate(_) | Command::Migrate(_)
    ) {
        // `run` sets up logging (and trace export) inside its runtime.
        init_tracing(false);
    }
    match cli.command {
        Command::Run(args) => run_command(args),
        Command::Validate { files, format } => validate_command(&files, format),
        Command::Graph { file, format } => match workflow::load(&file) {
            Ok(wf) => {
                let _ = stdout(&match format {
                    GraphFormat::Mermaid => crate::graph::mermaid(&wf),
                    GraphFormat::Dot => crate::graph::dot(&wf),
                });
                EXIT_OK
            }
            Err(e) => {
                eprint!("{}", e.render());
                EXIT_INVALID
            }
        },
        Command::Schema => {
            let _ = stdout(workflow::SCHEMA);
            EXIT_OK
        }
        Command::New { method, dir, force } => new_command(method.as_deref(), &dir, force),
        Command::Eval(args) => eval::eval_command(*args),
        Command::Runs(args) => eval::runs_command(args),
        Command::Compare(args) => eval::compare_command(args),
        Command::Report(args) => eval::report_command(args),
        Command::Calibrate(args) => bridge::calibrate_command(*args),
        Command::Migrate(args) => bridge::migrate_command(*args),
        Command::Cache(args) => cache::cache_command(args),
        Command::View(args) => view::view_command(args),
    }
}

fn new_command(method: Option<&str>, dir: &std::path::Path, force: bool) -> u8 {
    let list = || {
        crate::methods::METHODS
            .iter()
            .map(|m| format!("  {:<20} {} (needs: {})\n", m.name, m.summary, m.needs))
            .collect::<String>()
    };
    let Some(name) = method else {
        let _ = stdout(&format!(
            "Shipped methods (`redraft new NAME`):\n{}",
            list()
        ));
        return EXIT_OK;
    };
    let Some(m) = crate::methods::find(name) else {
        eprintln!("error: no shipped method `{name}`; there are:\n{}", list());
        return EXIT_INVALID;
    };
    match crate::methods::write(m, dir, force) {
        Ok(written) => {
            for p in &written {
                eprintln!("wrote {}", p.display());
            }
            eprintln!(
                "try: redraft run {}   (scripted replies; --model NAME=SPEC for a real model)",
                written[0].display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_INVALID
        }
    }
}

fn validate_command(files: &[PathBuf], format: DiagnosticFormat) -> u8 {
    let mut code = EXIT_OK;
    if format == DiagnosticFormat::Json {
        let reports: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                let (ok, diagnostics) = match workflow::load(f) {
                    Ok(wf) => (
                        true,
                        workflow::diagnostics_json(&f.display().to_string(), &wf.warnings),
                    ),
                    Err(e) => {
                        code = EXIT_INVALID;
                        (false, e.to_json())
                    }
                };
                serde_json::json!({
                    "file": f.display().to_string(),
                    "ok": ok,
                    "diagnostics": diagnostics,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&reports).unwrap_or_default();
        let _ = stdout(&format!("{text}\n"));
        return code;
    }
    for f in files {
        match workflow::load(f) {
            Ok(wf) => {
                eprint!("{}", wf.warnings_rendered);
                if !stdout(&format!("{}: ok\n", f.display())) {
                    break;
                }
            }
            Err(e) => {
                eprint!("{}", e.render());
                code = EXIT_INVALID;
            }
        }
    }
    code
}

fn run_command(args: RunArgs) -> u8 {
    let wf = match workflow::load(&args.file) {
        Ok(wf) => {
            if !args.quiet {
                eprint!("{}", wf.warnings_rendered);
            }
            Arc::new(wf)
        }
        Err(e) => {
            eprint!("{}", e.render());
            if args.json {
                let report = serde_json::json!({"status": "invalid", "diagnostics": e.to_json()});
                let _ = stdout(&format!("{report:#}\n"));
            }
            return EXIT_INVALID;
        }
    };
    let setup = (|| -> anyhow::Result<(Engine, RunOptions, Option<Arc<JsonlRecorder>>)> {
        let opts = RunOptions {
            inputs: collect_inputs(&wf, &args)?,
            budget: parse_budgets(&args.budgets)?,
            review: args.review.as_deref().map(parse_review).transpose()?,
            reviewer: Some(Arc::new(review::TerminalReviewer)),
            log_content: args.log_content,
            ..RunOptions::default()
        };
        let (mut engine, _) = engine_with_models(&wf, &args.models)?;
        // Off unless asked: a single run is usually run to see a fresh
        // reply (an eval, rerun after each change, defaults to on).
        let (mode, cache) = args.cache.open(
            crate::cache::CacheMode::Off,
            None,
            &crate::eval::store::StoreOptions::default(),
        )?;
        let mut opts = RunOptions {
            cache: mode,
            ..opts
        };
        if let Some(cache) = cache {
            engine = engine.with_cache(cache);
        } else {
            opts.cache = crate::cache::CacheMode::Off;
        }
        if let Some(path) = &args.record {
            let cassette = crate::backend::cassette::CassetteWriter::create(path)
                .with_context(|| format!("cannot create cassette {}", path.display()))?;
            engine = engine.with_cassette(Arc::new(cassette));
        }
        let log = match &args.log {
            Some(path) => Some(Arc::new(
                JsonlRecorder::create(path)
                    .with_context(|| format!("cannot create log file {}", path.display()))?,
            )),
            None => None,
        };
        let mut recorders: Vec<Box<dyn Recorder>> = Vec::new();
        if let Some(log) = &log {
            recorders.push(Box::new(log.clone()));
        }
        if !args.quiet {
            recorders.push(Box::new(HumanRecorder));
        }
        Ok((engine.with_recorder(Arc::new(Fanout(recorders))), opts, log))
    })();
    let (engine, opts, log) = match setup {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    let (runtime, flush_traces) = match runtime_with_tracing(args.quiet) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let cancel = opts.cancel.clone();
    let web_review = args.review.as_deref() == Some("web");
    let result = runtime.block_on(async move {
        // Listen before anything is printed (the review URL), so a signal
        // sent once it is seen, or an early Ctrl-C, is never lost.
        let interrupted = interrupt_signal();
        let mut opts = opts;
        // Reviews in the browser: a viewer without a store, for this run.
        let _viewer = if web_review {
            match crate::view::start(crate::view::ViewConfig::default(), None).await {
                Ok(viewer) => {
                    eprintln!("review the edits at {}review", viewer.url());
                    opts.reviewer = Some(Arc::new(viewer.reviewer()));
                    Some(viewer)
                }
                Err(e) => return Err(WebReviewError(e.to_string())),
            }
        } else {
            None
        };
        let watcher = tokio::spawn(async move {
            if interrupted.await {
                eprintln!("stopping; finished work is kept");
                cancel.cancel();
            }
        });
        let r = engine.run(wf.clone(), opts).await;
        watcher.abort();
        Ok(r)
    });
    let result = match result {
        Ok(r) => r,
        Err(WebReviewError(e)) => {
            eprintln!("error: --review web: {e}");
            return EXIT_INVALID;
        }
    };
    if let Some(flush) = flush_traces {
        flush();
    }
    // A review prompt cancelled by Ctrl-C may still be blocked reading the
    // terminal: do not wait for it.
    runtime.shutdown_background();
    if let Some(log) = &log {
        if let Some(e) = log.error() {
            eprintln!("warning: writing the event log failed: {e}");
        }
    }
    match result {
        Ok(summary) => report(&summary, args.json, args.quiet),
        Err(
            e @ (RunError::Input { .. } | RunError::UnknownModel { .. } | RunError::NoSpec { .. }),
        ) => {
            eprintln!("error: {e}");
            EXIT_INVALID
        }
        Err(e @ RunError::Model { .. }) => {
            eprintln!("error: {e}");
            EXIT_BACKEND
        }
    }
}

/// The browser review's viewer could not start.
struct WebReviewError(String);

/// The multi-threaded runtime of `run` and `eval`, with logging (and trace
/// export) set up inside it; the second value flushes the traces.
pub(crate) type FlushTraces = Option<Box<dyn FnOnce()>>;

pub(crate) fn runtime_with_tracing(
    quiet: bool,
) -> Result<(tokio::runtime::Runtime, FlushTraces), u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            EXIT_BACKEND
        })?;
    let flush = {
        let _inside = runtime.enter();
        init_tracing(quiet)
    };
    Ok((runtime, flush))
}

/// An engine that runs `--model NAME=SPEC` overrides (checked against the
/// workflow's models), and the overrides by name.
fn engine_with_models(
    wf: &Workflow,
    models: &[String],
) -> anyhow::Result<(Engine, std::collections::BTreeMap<String, String>)> {
    let mut given = std::collections::BTreeMap::new();
    for m in models {
        let (name, spec) = m
            .split_once('=')
            .with_context(|| format!("--model {:?}: expected NAME=SPEC", crate::redact::text(m)))?;
        given.insert(name.to_string(), spec.to_string());
    }
    Ok((crate::eval::config::engine_for(wf, &given)?, given))
}

/// Resolves (true) when the process is asked to stop: Ctrl-C, SIGTERM or
/// SIGHUP ([`stop_signals`]); false if signals are unavailable. The
/// handlers are installed by this call, not at the first poll, so an early
/// signal is never lost. A second signal exits at once.
pub(crate) fn interrupt_signal() -> impl std::future::Future<Output = bool> {
    let mut stops = stop_signals();
    async move {
        let Some(first) = stops.recv().await else {
            return false;
        };
        STOP_SIGNAL.store(first, std::sync::atomic::Ordering::SeqCst);
        eprint!("\n{}: ", signal_name(first));
        // A second request to stop is not asked twice: exit at once (what
        // is stored stays stored; claims in flight end with their lease).
        tokio::spawn(async move {
            if let Some(again) = stops.recv().await {
                eprintln!("\n{} again: exiting now", signal_name(again));
                std::process::exit(i32::from(exit_code_of_signal(again)));
            }
        });
        true
    }
}

/// The signal that asked this process to stop (0 until one did).
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Every signal by which a person or a scheduler asks a program to stop,
/// as a stream of their numbers: SIGINT (Ctrl-C), SIGTERM (Kubernetes,
/// SLURM, systemd, `docker stop`, `kill`) and SIGHUP (the terminal or
/// session went away). Each stops redraft the same way: no new work
/// starts, claims are released, finished results are kept.
fn stop_signals() -> tokio::sync::mpsc::UnboundedReceiver<i32> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        for (kind, number) in [
            (SignalKind::interrupt(), 2),
            (SignalKind::terminate(), SIGTERM),
            (SignalKind::hangup(), SIGHUP),
        ] {
            let Ok(mut stream) = signal(kind) else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(number).is_err() {
                        break;
                    }
                }
            });
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(2).is_err() {
                break;
            }
        }
    });
    rx
}

/// The signals' POSIX numbers (the same on every Unix redraft runs on).
const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

fn signal_name(number: i32) -> &'static str {
    match number {
        SIGHUP => "hangup (SIGHUP)",
        SIGTERM => "terminated (SIGTERM)",
        _ => "interrupted",
    }
}

/// 128 + the signal's number, as shells report a program a signal ended:
/// 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP.
fn exit_code_of_signal(number: i32) -> u8 {
    u8::try_from(128 + number).unwrap_or(EXIT_INTERRUPTED)
}

/// The exit code of a command that stopped because it was asked to: by the
/// signal that asked (see [`exit_code_of_signal`]), 130 when none did.
pub(crate) fn interrupted_exit() -> u8 {
    match STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => EXIT_INTERRUPTED,
        n => exit_code_of_signal(n),
    }
}

/// Prints the result and maps it to an exit code.
fn report(s: &RunSummary, json: bool, quiet: bool) -> u8 {
    if json {
        match serde_json::to_string_pretty(s) {
            Ok(text) => {
                stdout(&format!("{text}\n"));
            }
            Err(e) => eprintln!("error: cannot serialise the summary: {e}"),
        }
    } else if let Some(out) = &s.output {
        match out {
            serde_json::Value::String(text) => stdout(&format!("{text}\n")),
            other => stdout(&format!("{other}\n")),
        };
    }
    let code = exit_code(s);
    let verdict = match s.verified {
        Some(true) => "verified",
        Some(false) => "not verified",
        None => "no verifier",
    };
    let status = match s.status {
        RunStatus::Finished => "finished",
        RunStatus::BudgetExhausted => "budget exhausted (best output so far)",
        RunStatus::Interrupted => "interrupted (best output so far)",
        RunStatus::Failed => "failed",
    };
    if !quiet {
        eprintln!(
            "{status} · {verdict} · {} calls{} · {} tokens{}{} · ${:.6} · {:.0} ms",
            s.usage.calls,
            if s.usage.cached_calls > 0 {
                format!(
                    " ({} from the cache, {} tokens not spent)",
                    s.usage.cached_calls, s.usage.cached_tokens
                )
            } else {
                String::new()
            },
            s.usage.total_tokens,
            if s.usage.estimated {
                " (estimated)"
            } else {
                ""
            },
            if s.usage.reused_tokens > 0 {
                format!(" ({} prompt tokens reused)", s.usage.reused_tokens)
            } else {
                String::new()
            },
            s.usage.cost_usd,
            s.wall_ms
        );
        if let Some(ex) = &s.exhausted {
            eprintln!("budget: {ex}");
        }
    }
    if let Some(err) = &s.error {
        eprintln!("error: {err}");
    }
    code
}

/// Writes to stdout; a closed pipe (`redraft run ... | head`) is not an
/// error. Returns false once nobody is reading.
pub(crate) fn stdout(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_ok()
}

/// The documented exit code of a finished run.
pub fn exit_code(s: &RunSummary) -> u8 {
    match s.status {
        RunStatus::Finished if s.verified == Some(false) => EXIT_UNVERIFIED,
        RunStatus::Finished => EXIT_OK,
        RunStatus::BudgetExhausted => EXIT_BUDGET,
        RunStatus::Interrupted => interrupted_exit(),
        RunStatus::Failed => match s.failure {
            Some(FailureKind::Backend) => EXIT_BACKEND,
            _ => EXIT_INVALID,
        },
    }
}

fn collect_inputs(
    wf: &Workflow,
    args: &RunArgs,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut inputs = serde_json::Map::new();
    if let Some(path) = &args.input_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read input file {}", path.display()))?;
        let value: serde_json::Value = serde_saphyr::from_str(&text)
            .with_context(|| format!("input file {}", path.display()))?;
        match value {
            serde_json::Value::Object(map) => inputs.extend(map.into_iter().filter(|(name, _)| {
                !args.ignore_unknown_inputs || wf.inputs.iter().any(|i| &i.name == name)
            })),
            other => bail!(
                "input file {}: expected an object of inputs, found {}",
                path.display(),
                type_name(&other)
            ),
        }
    }
    for kv in &args.inputs {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--input {kv:?}: expected NAME=VALUE"))?;
        inputs.insert(k.to_string(), crate::engine::parse_input_value(wf, k, v)?);
    }
    Ok(inputs)
}

fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

pub(crate) fn parse_budgets(items: &[String]) -> anyhow::Result<Limits> {
    Limits::parse(items, "--budget").map_err(anyhow::Error::msg)
}

/// Writes each event as one JSON line, flushed per line, so a killed run
/// leaves a valid prefix.
pub struct JsonlRecorder {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    error: Mutex<Option<String>>,
}

impl JsonlRecorder {
    pub fn create(path: &Path) -> std::io::Result<JsonlRecorder> {
        Ok(JsonlRecorder {
            file: Mutex::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
            error: Mutex::new(None),
        })
    }

    /// The first write error, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Recorder for JsonlRecorder {
    fn record(&self, event: &Event) {
        let line = match serde_json::to_string(event) {
            Ok(l) => l,
            Err(e) => {
                self.error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e.to_string());
                return;
            }
        };
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(f, "{line}").and_then(|_| f.flush()) {
            self.error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e.to_string());
        }
    }
}

/// Progress for people, on stderr.
pub struct HumanRecorder;

impl Recorder for HumanRecorder {
    fn record(&self, event: &Event) {
        if let Some(line) = human_line(event) {
            eprintln!("{line}");
        }
    }
}

/// The start of what a node said, under its progress line: a check's or a
/// critique's feedback, else its text; three lines at most, each cut at
/// 100 characters, tabs as spaces and other control characters (a model's
/// terminal escapes) as `�`. Empty when the node said nothing in words.
fn preview(output: &serde_json::Value) -> String {
    let said = ["feedback", "text"]
        .iter()
        .filter_map(|k| output.get(*k)?.as_str())
        .find(|t| !t.trim().is_empty());
    let Some(said) = said else {
        return String::new();
    };
    let lines: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = String::new();
    for line in lines.iter().take(3) {
        let clean: String = line
            .chars()
            .map(|c| match c {
                '\t' => ' ',
                c if c.is_control() => '\u{FFFD}',
                c => c,
            })
            .collect();
        let (cut, more) = match clean.char_indices().nth(100) {
            Some((i, _)) => (&clean[..i], "…"),
            None => (clean.as_str(), ""),
        };
        out.push_str(&format!("\n      │ {}{more}", cut.trim_end()));
    }
    match lines.len().saturating_sub(3) {
        0 => {}
        1 => out.push_str("\n      │ … (1 more line)"),
        more => out.push_str(&format!("\n      │ … ({more} more lines)")),
    }
    out
}

/// One line of human progress for an event, if it deserves one.
pub fn human_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::RunStarted { workflow, .. } => format!("run {workflow}"),
        Event::NodeStarted { .. } | Event::RunFinished { .. } => return None,
        Event::NodeFinished {
            node,
            round,
            status,
            elapsed_ms,
            error,
            output,
        } => match status {
            NodeStatus::Done => format!(
                "  [{round}] {node} done ({elapsed_ms:.1} ms){}",
                output.as_deref().map(preview).unwrap_or_default()
            ),
            NodeStatus::Skipped => match error {
                Some(e) => format!("  [{round}] {node} skipped: {e}"),
                None => format!("  [{round}] {node} skipped"),
            },
            NodeStatus::Failed => format!(
                "  [{round}] {node} FAILED: {}",
                error.as_deref().unwrap_or("")
            ),
        },
        Event::ModelCall(c) => match (&c.error, c.outcome) {
            (Some(e), CallOutcome::Error) => format!(
                "      {} call failed after {:.0} ms: {e}",
                c.model, c.latency_ms
            ),
            (_, CallOutcome::Cut | CallOutcome::Cancelled) => format!(
                "      {} call {} after {:.0} ms (counted; ~{} prompt tokens estimated)",
                c.model,
                if c.outcome == CallOutcome::Cut {
                    "cut by the wall-time limit"
                } else {
                    "cancelled"
                },
                c.latency_ms,
                c.prompt_tokens
            ),
            _ if c.cached => format!(
                "      {} ({}) from the cache ({} tokens not spent), {:.1} ms",
                c.model, c.model_id, c.cached_tokens, c.latency_ms
            ),
            _ => format!(
                "      {} ({}) {} → {} tokens{}, {:.0} ms",
                c.model,
                c.model_id,
                c.prompt_tokens,
                c.completion_tokens,
                if c.reused_tokens > 0 {
                    format!(" ({} prompt tokens reused)", c.reused_tokens)
                } else {
                    String::new()
                },
                c.latency_ms
            ),
        },
        Event::InvalidOutput {
            node,
            attempt,
            error,
            ..
        } => format!("      {node}: invalid reply (attempt {attempt}): {error}"),
        Event::Review {
            node,
            depth,
            proposed,
            accepted,
            ..
        } => format!("      {node}: review {depth}: accepted {accepted} of {proposed} edits"),
        Event::Verdict {
            node,
            passed,
            score,
            ..
        } => {
            format!(
                "      {node}: {} (score {score:.2})",
                if *passed { "passed" } else { "failed" }
            )
        }
        Event::Revision {
            loop_id,
            node,
            accepted,
            score,
            current_score,
            reason,
            ..
        } => match (accepted, reason) {
            (true, _) => format!(
                "loop {loop_id}: {node}'s revision accepted (score {current_score:.2} → {score:.2})"
            ),
            (false, r) => format!(
                "loop {loop_id}: {node}'s revision rejected, the answer is kept: {}",
                r.as_deref().unwrap_or("-")
            ),
        },
        Event::LoopRound { loop_id, round } if *round > 1 => {
            format!("loop {loop_id}: round {round}")
        }
        Event::LoopRound { .. } => return None,
        Event::LoopFinished {
            loop_id,
            rounds,
            reason,
        } => format!(
            "loop {loop_id}: stopped after {rounds} round{} ({reason})",
            if *rounds == 1 { "" } else { "s" }
        ),
        Event::BudgetWarning(w) => format!(
            "warning: {} has used {:.0} of {:.0} {}",
            w.scope, w.used, w.max, w.limit
        ),
        Event::BudgetExhausted(e) => format!("budget: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(output: serde_json::Value) -> String {
        human_line(&Event::NodeFinished {
            node: "check".into(),
            round: 1,
            status: NodeStatus::Done,
            elapsed_ms: 1.0,
            output: Some(Arc::new(output)),
            error: None,
        })
        .unwrap()
    }

    #[test]
    fn progress_shows_what_a_node_said_briefly_and_without_escapes() {
        // A check's feedback comes before its text.
        assert_eq!(
            finished(serde_json::json!({"feedback": "lines: has 1\ncontains: ok", "text": "x"})),
            "  [1] check done (1.0 ms)\n      │ lines: has 1\n      │ contains: ok"
        );
        // A draft's text: three lines at most, long lines cut, terminal
        // escapes from a model shown as U+FFFD, blank lines skipped.
        let long = "a".repeat(150);
        let line = finished(serde_json::json!({
            "text": format!("\x1b[31mred\tok\n\n{long}\nthree\nfour\nfive")
        }));
        assert!(!line.contains('\x1b'), "{line}");
        assert!(line.contains("│ \u{FFFD}[31mred ok\n"), "{line}");
        assert!(
            line.contains(&format!("│ {}…\n", "a".repeat(100))),
            "{line}"
        );
        assert!(
            line.ends_with("│ three\n      │ … (2 more lines)"),
            "{line}"
        );
        // Nothing in words: the progress line alone.
        assert_eq!(
            finished(serde_json::json!({"passed": true, "text": " "})),
            "  [1] check done (1.0 ms)"
        );
    }

    /// What a subscriber with `filter` prints for a warning and an error
    /// from `target`.
    fn printed(filter: tracing_subscriber::EnvFilter, target: &str) -> (bool, bool) {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || match target {
            "llama-cpp-2" => {
                tracing::warn!(target: "llama-cpp-2", "a-warning");
                tracing::error!(target: "llama-cpp-2", "an-error");
            }
            _ => {
                tracing::warn!("a-warning");
                tracing::error!("an-error");
            }
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (text.contains("a-warning"), text.contains("an-error"))
    }

    #[test]
    fn llama_cpp_notes_stay_quiet_unless_asked_for() {
        assert_eq!(printed(log_filter(None, false), "redraft"), (true, true));
        assert_eq!(
            printed(log_filter(None, false), "llama-cpp-2"),
            (false, true)
        );
        // -q: errors only.
        assert_eq!(printed(log_filter(None, true), "redraft"), (false, true));
        // RUST_LOG wins, also over -q.
        let asked = || Some("llama-cpp-2=warn".to_string());
        assert_eq!(
            printed(log_filter(asked(), true), "llama-cpp-2"),
            (true, true)
        );
    }
}
