//! The OpenAI-compatible backend end to end against the mock server, which
//! runs in a separate process so that its CPU is not counted as ours.
//! Run: `cargo bench --bench openai`.
//!
//! The workflow is self-refine with replies that never pass the checks, so
//! every run makes 7 model calls (a draft and three critique/revise rounds).
//! Reported: client CPU per workflow and workflows per second at 0 ms mock
//! latency; wall time against the ideal (7 × latency) and peak memory for
//! 256 and 10,000 concurrent workflows at 50 ms latency (and 256 with the
//! default per-endpoint concurrency); and the CLI's own cost, one
//! `redraft run` process per workflow: time from spawn to its first request
//! and CPU per process.

#[path = "../tests/it/mock_openai.rs"]
mod mock_openai;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redraft::{Engine, RunOptions};

/// Replies that never satisfy the checks: JSON for the critique, one line otherwise.
fn never_passes(req: &serde_json::Value) -> String {
    if req.get("response_format").is_some() {
        r#"{"score": 3, "feedback": "Use three lines and mention tests."}"#.into()
    } else {
        "one line about code".into()
    }
}

/// Process CPU time (user + system) from /proc, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(f64::NAN, |k| k / 1024.0)
}

/// Starts the mock in a child process (this binary, in server mode).
fn spawn_mock(latency_ms: u64) -> (std::process::Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("REDRAFT_MOCK_SERVER", latency_ms.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("mock process starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_string())
}

fn serve_mock(latency_ms: u64) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mock = mock_openai::MockServer::start_with(
            vec![],
            Duration::from_millis(latency_ms),
            Box::new(never_passes),
            false,
        )
        .await;
        println!("{}", mock.url);
        std::future::pending::<()>().await;
    });
    unreachable!()
}

fn open_engine(url: &str, settings: serde_json::Value) -> Arc<Engine> {
    let model = redraft::backend::open(
        &format!("openai:mock@{url}"),
        &settings,
        std::path::Path::new("."),
    )
    .unwrap();
    Arc::new(Engine::new().with_model("writer", model))
}

fn unthrottled() -> serde_json::Value {
    serde_json::json!({ "concurrency_per_endpoint": 20000, "request_timeout": "600s" })
}

/// User plus system CPU of the reaped children of this process, in seconds.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage with a valid pointer.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One `redraft run` process per workflow against an in-process mock.
fn cli_process_per_workflow(rt: &tokio::runtime::Runtime) {
    let mock = rt.block_on(mock_openai::MockServer::start_with(
        vec![],
        Duration::ZERO,
        Box::new(never_passes),
        true,
    ));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let wf = root.join("workflows/self-refine.yaml");
    let spec = format!("writer=openai:mock@{}", mock.url);
    // `REDRAFT_BIN` measures another build (e.g. an older commit's) the same way.
    let bin = std::env::var("REDRAFT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_redraft").into());
    let (mut first, mut cpu, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..31 {
        let before = mock.arrivals().len();
        let cpu0 = children_cpu_seconds();
        let t0 = Instant::now();
        let status = Command::new(&bin)
            .args(["run", wf.to_str().unwrap(), "--model", &spec, "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let wall = t0.elapsed();
        assert_eq!(status.code(), Some(1), "never-passing replies: unverified");
        let arrivals = mock.arrivals();
        assert_eq!(arrivals.len() - before, 7);
        if i == 0 {
            continue; // warm-up: page cache, first exec
        }
        first.push(arrivals[before].duration_since(t0).as_secs_f64() * 1000.0);
        cpu.push((children_cpu_seconds() - cpu0) * 1000.0);
        total.push(wall.as_secs_f64() * 1000.0);
    }
    println!(
        "cli {bin}: one process per 7-call workflow (median of {}): first_request={:.1}ms cpu={:.1}ms wall={:.1}ms",
        first.len(),
        median(&mut first),
        median(&mut cpu),
        median(&mut total)
    );
}

fn workflow() -> Arc<redraft::Workflow> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    Arc::new(redraft::workflow::load(&root.join("workflows/self-refine.yaml")).unwrap())
}

async fn run_many(
    engine: &Arc<Engine>,
    wf: &Arc<redraft::Workflow>,
    runs: usize,
    in_flight: usize,
) {
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..runs {
        let (engine, wf, sem) = (engine.clone(), wf.clone(), sem.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            let s = engine.run(wf, RunOptions::default()).await.unwrap();
            assert_eq!(s.usage.calls, 7, "{:?}", s.error);
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

fn main() {
    if let Ok(latency) = std::env::var("REDRAFT_MOCK_SERVER") {
        serve_mock(latency.parse().unwrap_or(0));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os("REDRAFT_BENCH_CLI_ONLY").is_some() {
        cli_process_per_workflow(&rt);
        return;
    }
    let wf = workflow();
    let me = std::process::id().to_string();

    // 1. CPU per workflow and throughput at 0 ms latency.
    let (mut mock, url) = spawn_mock(0);
    let mock_pid = mock.id().to_string();
    let engine = open_engine(&url, unthrottled());
    rt.block_on(run_many(&engine, &wf, 200, 32)); // warm up connections
    for in_flight in [1, 32] {
        let runs = 2000;
        let (cpu0, mock0, t0) = (cpu_seconds(&me), cpu_seconds(&mock_pid), Instant::now());
        rt.block_on(run_many(&engine, &wf, runs, in_flight));
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(&me) - cpu0;
        let mock_cpu = cpu_seconds(&mock_pid) - mock0;
        println!(
            "latency=0ms in_flight={in_flight} runs={runs}: client_cpu_per_workflow={:.3}ms per_call={:.1}us workflows_per_s={:.0} (mock cpu {:.0}% of client)",
            cpu / runs as f64 * 1000.0,
            cpu / (runs * 7) as f64 * 1e6,
            runs as f64 / wall,
            mock_cpu / cpu.max(1e-9) * 100.0
        );
    }
    let _ = mock.kill();

    // 2. Many concurrent workflows at 50 ms latency.
    let (mut mock, url) = spawn_mock(50);
    let mock_pid = mock.id().to_string();
    // 256 concurrent workflows under the former default per-endpoint
    // concurrency (64), the current default, and none to speak of; each
    // engine warmed up (connections open) first.
    for (label, settings) in [
        (
            "64 (former default)",
            serde_json::json!({ "concurrency_per_endpoint": 64, "request_timeout": "600s" }),
        ),
        ("default", serde_json::json!({ "request_timeout": "600s" })),
    ] {
        let engine = open_engine(&url, settings);
        rt.block_on(run_many(&engine, &wf, 256, 256));
        let t0 = Instant::now();
        rt.block_on(run_many(&engine, &wf, 256, 256));
        let wall = t0.elapsed().as_secs_f64() * 1000.0;
        println!(
            "latency=50ms concurrent=256 concurrency_per_endpoint={label} (default is {}): wall={wall:.0}ms ideal=350ms ratio={:.2}",
            redraft::backend::openai::DEFAULT_CONCURRENCY_PER_ENDPOINT,
            wall / 350.0
        );
    }
    let engine = open_engine(&url, unthrottled());
    for runs in [256usize, 10_000] {
        let (cpu0, mock0, t0) = (cpu_seconds(&me), cpu_seconds(&mock_pid), Instant::now());
        rt.block_on(run_many(&engine, &wf, runs, runs));
        let wall = t0.elapsed().as_secs_f64() * 1000.0;
        println!(
            "latency=50ms concurrent={runs}: wall={wall:.0}ms ideal=350ms ratio={:.2} client_cpu={:.2}s mock_cpu={:.2}s peak_rss={:.0}MiB",
            wall / 350.0,
            cpu_seconds(&me) - cpu0,
            cpu_seconds(&mock_pid) - mock0,
            peak_rss_mib()
        );
    }
    let _ = mock.kill();

    // 3. The CLI: one process per workflow.
    cli_process_per_workflow(&rt);
}
