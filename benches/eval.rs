//! The eval runner's overhead per item beyond the workflow itself, on the
//! scripted backend (no latency): the same units run once through
//! `eval::run` (claims, event capture, scoring, results in SQLite) and once
//! through `Engine::run` alone, at the same concurrency. Also peak memory at
//! ITEMS/10 and ITEMS (flat means the runner holds no per-item state), and the
//! cost of resuming a finished eval of ITEMS items (what `redraft eval` does
//! before running anything: load the data, add missing units, count, read the
//! results back for the metrics).
//!
//! Run: `cargo bench --bench eval` (ITEMS, default 10000; CONCURRENCY, default 4).

use std::sync::Arc;
use std::time::Instant;

use redraft::eval::data::{DataSpec, Selection};
use redraft::eval::score::Scorer;
use redraft::eval::{self, EvalOptions, EvalPlan, Quiet};
use redraft::{Engine, RunOptions};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

const WORKFLOW: &str = "version: 1
name: bench-answer
models:
  m: { spec: scripted:replies.yaml }
inputs:
  task: string
nodes:
  - { id: answer, kind: generate, template: '{{ task }}' }
output: { from: [answer] }
";

fn plan(dir: &std::path::Path, items: usize) -> EvalPlan {
    let data = dir.join(format!("items-{items}.jsonl"));
    let rows: String = (0..items)
        .map(|i| {
            format!("{{\"id\": \"i{i}\", \"task\": \"What is 2+2? ({i})\", \"answer\": \"4\"}}\n")
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let wf = redraft::workflow::load(&dir.join("bench.yaml")).unwrap();
    EvalPlan {
        workflow: Arc::new(wf),
        workflow_source: WORKFLOW.into(),
        models: Default::default(),
        data: DataSpec {
            source: data.display().to_string(),
            answer: Some("answer".into()),
            ..DataSpec::default()
        },
        selection: Selection::default(),
        scorer: "numeric".into(),
        extract: None,
        epochs: 1,
        name: None,
        command: vec![],
        review: None,
    }
}

fn main() {
    let items: usize = std::env::var("ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let concurrency: usize = std::env::var("CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = std::env::temp_dir().join(format!("redraft-bench-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bench.yaml"), WORKFLOW).unwrap();
    std::fs::write(
        dir.join("replies.yaml"),
        "replies:\n  - { text: 'The answer is 4.' }\n",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::new();
    let scorer =
        Arc::new(Scorer::parse("numeric", None, redraft::sandbox::Isolation::None).unwrap());

    // The workflow alone, same units, same concurrency.
    let p = plan(&dir, items);
    let inputs: Vec<_> = eval::load_items(&p)
        .unwrap()
        .into_iter()
        .map(|i| i.inputs)
        .collect();
    let t = Instant::now();
    rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut set = tokio::task::JoinSet::new();
        for inputs in inputs {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let (engine, wf) = (engine.clone(), p.workflow.clone());
            set.spawn(async move {
                let s = engine
                    .run(
                        wf,
                        RunOptions {
                            inputs,
                            ..RunOptions::default()
                        },
                    )
                    .await
                    .unwrap();
                drop(permit);
                s
            });
        }
        while set.join_next().await.is_some() {}
    });
    let engine_s = t.elapsed().as_secs_f64();

    let run_eval = |items: usize, store: &str| {
        let p = plan(&dir, items);
        let store = eval::store::open(dir.join(store).to_str().unwrap()).unwrap();
        let opts = EvalOptions {
            concurrency,
            ..EvalOptions::default()
        };
        let t = Instant::now();
        let out = rt
            .block_on(eval::run(&engine, &p, scorer.clone(), store, opts, &Quiet))
            .unwrap();
        assert_eq!(out.counts.done as usize, items);
        t.elapsed().as_secs_f64()
    };
    let small = run_eval(items / 10, "small.db");
    let rss_small = peak_rss_mib();
    let eval_s = run_eval(items, "big.db");
    let rss_big = peak_rss_mib();
    let resume_s = run_eval(items, "big.db");
    let per = |s: f64| s / items as f64 * 1e6;
    println!("eval bench: {items} items, concurrency {concurrency}, scripted backend");
    println!(
        "  engine alone:      {:8.1} µs/item ({engine_s:.2} s)",
        per(engine_s)
    );
    println!(
        "  eval (SQLite):     {:8.1} µs/item ({eval_s:.2} s)",
        per(eval_s)
    );
    println!(
        "  overhead:          {:8.1} µs/item",
        per(eval_s - engine_s)
    );
    println!(
        "  peak RSS:          {rss_small:.1} MiB after {} items, {rss_big:.1} MiB after {items}",
        items / 10
    );
    println!(
        "  resume (finished): {resume_s:.3} s ({:.1} µs/item; {small:.2} s for the small eval)",
        per(resume_s)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
