//! Many concurrent self-refine runs on one multi-threaded runtime: wall time,
//! throughput and peak memory (VmHWM). Run: `cargo bench --bench concurrent`.
//! Arguments: `RUNS` (default 10000) and `LATENCY_MS` per model call (default 0).

use std::sync::Arc;
use std::time::Instant;

use redraft::backend::ScriptedModel;
use redraft::{Engine, RunOptions};

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with('-')).collect();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let latency: u64 = std::env::var("LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = args;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let wf = Arc::new(redraft::workflow::load(&root.join("workflows/self-refine.yaml")).unwrap());
    let mut script =
        std::fs::read_to_string(root.join("workflows/replies/self-refine.yaml")).unwrap();
    if latency > 0 {
        script = script.replace(
            "  - node:",
            &format!("  - latency_ms: {latency}\n    node:"),
        );
    }
    let model = Arc::new(ScriptedModel::from_yaml(&script, "bench").unwrap());
    let engine = Arc::new(Engine::new().with_model("writer", model));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = peak_rss_mib().unwrap_or(0.0);
    let start = Instant::now();
    let verified = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..runs {
            let (engine, wf) = (engine.clone(), wf.clone());
            set.spawn(async move {
                engine
                    .run(wf, RunOptions::default())
                    .await
                    .unwrap()
                    .verified
                    == Some(true)
            });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            ok += r.unwrap() as usize;
        }
        ok
    });
    let wall = start.elapsed();
    assert_eq!(verified, runs);
    // 5 sequential model calls per run: the ideal wall time is 5 × latency.
    let ideal_ms = 5.0 * latency as f64;
    println!(
        "runs={runs} latency_ms={latency} wall_ms={:.1} ideal_ms={ideal_ms:.0} runs_per_s={:.0} node_steps_per_s={:.0} peak_rss_mib={:.1} (before runs: {before:.1})",
        wall.as_secs_f64() * 1000.0,
        runs as f64 / wall.as_secs_f64(),
        10.0 * runs as f64 / wall.as_secs_f64(),
        peak_rss_mib().unwrap_or(f64::NAN),
    );
}
