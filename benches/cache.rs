//! The response cache: an eval run twice, then rerun after changing one
//! prompt; the cost of a lookup; the size of the database.
//!
//! Run: `cargo bench --bench cache` (`--features llama` adds the local
//! default model). Env: ITEMS (default 100) for the mock, LOCAL_ITEMS
//! (default 10) for the local model, LATENCY_MS (default 50).
//!
//! 1. `eval` of workflows/guarded.yaml over ITEMS GSM8K-like items against
//!    the mock OpenAI server at LATENCY_MS per call, concurrency 8: a first
//!    run (empty cache), a second run (a new eval of the same items), and a
//!    run with only the revise prompt changed. Reported: wall time and the
//!    calls that reached the model, per run and per node.
//! 2. The same on the local default model (SmolLM2 in process), LOCAL_ITEMS.
//! 3. A lookup on a warm cache of 10,000 entries, as the layer makes it
//!    (key: SHA-256 of the request; SQLite read on a blocking thread;
//!    checksum and parse), and the database's size per 10,000 entries.

#[path = "../tests/it/mock_openai.rs"]
mod mock_openai;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redraft::Engine;
use redraft::backend::{
    CallContext, Completion, CompletionRequest, Message, ResponseFormat, SamplingParams, Usage,
};
use redraft::cache::{ModelIdentity, Position, ResponseCache, completion_key};
use redraft::eval::data::{DataSpec, Selection};
use redraft::eval::score::Scorer;
use redraft::eval::{self, EvalOptions, EvalPlan, Quiet};

/// Replies that keep the guarded loop going: the judge says No, the critique
/// gives feedback, the solver answers.
fn reply(req: &serde_json::Value) -> String {
    let last = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    if req.get("response_format").is_some() {
        r#"{"feedback": "Check the arithmetic step by step."}"#.into()
    } else if last.contains("Answer Yes or No") {
        "No".into()
    } else {
        "First add, then double. The answer is: 4".into()
    }
}

fn plan(dir: &std::path::Path, items: usize, wf: redraft::Workflow, source: &str) -> EvalPlan {
    let data = dir.join(format!("items-{items}.jsonl"));
    let rows: String = (0..items)
        .map(|i| {
            format!(
                "{{\"id\": \"q{i}\", \"task\": \"What is {i} + {i}?\", \"answer\": \"{}\"}}\n",
                2 * i
            )
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    EvalPlan {
        workflow: Arc::new(wf),
        workflow_source: source.into(),
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

struct Run {
    wall: f64,
    calls: u64,
    made: u64,
    /// (node, calls made) where any was made.
    made_by_node: Vec<(String, u64)>,
}

fn run_eval(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    plan: &EvalPlan,
    store: &std::path::Path,
) -> Run {
    let scorer =
        Arc::new(Scorer::parse("numeric", None, redraft::sandbox::Isolation::None).unwrap());
    let store = eval::store::open(store.to_str().unwrap()).unwrap();
    let opts = EvalOptions {
        concurrency: 8,
        ..EvalOptions::default()
    };
    let t = Instant::now();
    let out = rt
        .block_on(eval::run(engine, plan, scorer, store, opts, &Quiet))
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    let m = &out.metrics;
    let calls: u64 = m.cache_by_node.iter().map(|n| n.calls).sum();
    Run {
        wall,
        calls,
        made: calls - m.total_cached_calls,
        made_by_node: m
            .cache_by_node
            .iter()
            .filter(|n| n.calls > n.cached)
            .map(|n| (n.node.clone(), n.calls - n.cached))
            .collect(),
    }
}

/// First run, second run, revise prompt changed.
fn three_runs(
    rt: &tokio::runtime::Runtime,
    label: &str,
    items: usize,
    engine_for: impl Fn() -> Engine,
    dir: &std::path::Path,
) {
    let path = std::path::Path::new("workflows/guarded.yaml");
    let source = std::fs::read_to_string(path).unwrap();
    let wf = redraft::workflow::load(path).unwrap();
    let revise = std::fs::read_to_string("prompts/guarded/revise.j2").unwrap();
    let changed_prompt = format!("Read the feedback carefully.\n\n{revise}");
    let changed = redraft::workflow::load_with_prompts(
        path,
        &[("revise.j2".to_string(), changed_prompt)]
            .into_iter()
            .collect(),
    )
    .unwrap();
    let engine = engine_for();
    let p = plan(dir, items, wf, &source);
    let first = run_eval(rt, &engine, &p, &dir.join(format!("{label}-1.db")));
    let second = run_eval(rt, &engine, &p, &dir.join(format!("{label}-2.db")));
    let p3 = plan(dir, items, changed, &(source.clone() + "#changed"));
    let third = run_eval(rt, &engine, &p3, &dir.join(format!("{label}-3.db")));
    println!("{label}: {items} items, concurrency 8");
    for (name, r) in [
        ("first run", &first),
        ("second run", &second),
        ("revise prompt changed", &third),
    ] {
        println!(
            "  {name:<22} {:8.2} s  {:5} calls, {:5} made  {:?}",
            r.wall, r.calls, r.made, r.made_by_node
        );
    }
    println!(
        "  second run: {:.1}x faster, {} model calls",
        first.wall / second.wall,
        second.made
    );
    let revise_calls = first
        .made_by_node
        .iter()
        .find(|(n, _)| n == "revise")
        .map_or(0, |(_, c)| *c);
    println!(
        "  changed revise prompt: {} calls made of the first run's {} ({} revise calls then)",
        third.made, first.made, revise_calls
    );
}

fn lookup_cost(rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let cache = Arc::new(ResponseCache::open_sqlite(&dir.join("lookup.db"), 1 << 40).unwrap());
    let model = ModelIdentity {
        key: "gguf:0123456789abcdef {}".into(),
        contextual: false,
    };
    let request = |i: usize| CompletionRequest {
        messages: vec![
            Message::system("You are a careful assistant who solves grade-school math problems."),
            Message::user(format!(
                "Question {i}: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?\n\nLet's think step by step. Put your final answer at the end with 'The answer is: .'"
            )),
        ],
        sampling: SamplingParams {
            temperature: Some(0.0),
            top_p: None,
            seed: None,
            max_tokens: 320,
            stop: vec![],
        },
        n: 1,
        logprobs: None,
        response_format: ResponseFormat::Text,
        context: CallContext::default(),
    };
    let reply = |i: usize| {
        Completion::from_texts(
            [format!(
                "Natalia sold 48 clips in April and 48 / 2 = 24 in May, so 48 + 24 = 72 clips in total. The answer is: 72 ({i})"
            )],
            Usage {
                prompt_tokens: 80,
                completion_tokens: 40,
                ..Default::default()
            },
        )
    };
    let n = 10_000;
    let t = Instant::now();
    for i in 0..n {
        let key = completion_key(&model, &request(i), position());
        cache.store_value(&key, &model.key, &reply(i));
    }
    let write_us = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    cache.flush();
    let stats = cache.store().stats().unwrap();
    // Warm: every entry read once, then timed.
    let lookups = |rounds: usize| {
        rt.block_on(async {
            let t = Instant::now();
            for r in 0..rounds {
                let req = request(r % n);
                let key = completion_key(&model, &req, position());
                let c = cache.clone();
                let hit = tokio::task::spawn_blocking(move || c.lookup::<Completion>(&key, true))
                    .await
                    .unwrap();
                assert!(hit.is_some());
            }
            t.elapsed()
        })
    };
    lookups(n);
    let rounds = 20_000;
    let took = lookups(rounds);
    let key_only = {
        let t = Instant::now();
        for r in 0..rounds {
            std::hint::black_box(completion_key(&model, &request(r % n), position()));
        }
        t.elapsed()
    };
    println!("lookup on a warm cache of {n} entries (SQLite, WAL):");
    println!(
        "  {:.1} µs per hit (key {:.1} µs; read, checksum and parse on a blocking thread the rest); write {write_us:.1} µs per entry",
        took.as_secs_f64() / rounds as f64 * 1e6,
        key_only.as_secs_f64() / rounds as f64 * 1e6,
    );
    println!(
        "  database: {:.2} MiB per 10,000 entries ({:.0} bytes of value each)",
        stats.disk_bytes.unwrap_or(0) as f64 / (1 << 20) as f64 * 10_000.0 / stats.entries as f64,
        stats.value_bytes as f64 / stats.entries as f64
    );
}

fn position() -> Position<'static> {
    Position {
        unit: None,
        node: "solve",
        round: 1,
        attempt: 0,
        sample: 0,
    }
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let items = env("ITEMS", 100);
    let latency = env("LATENCY_MS", 50) as u64;
    let dir = std::env::temp_dir().join(format!("redraft-bench-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mock = rt.block_on(mock_openai::MockServer::start_with(
        vec![],
        Duration::from_millis(latency),
        Box::new(reply),
        false,
    ));
    let spec = format!("openai:mock@{}", mock.url);
    let cache = Arc::new(ResponseCache::open_sqlite(&dir.join("mock.db"), 1 << 40).unwrap());
    three_runs(
        &rt,
        &format!("mock OpenAI server at {latency} ms per call"),
        items,
        || {
            Engine::new()
                .with_model_spec("solver", &spec)
                .with_cache(cache.clone())
        },
        &dir,
    );
    #[cfg(feature = "llama")]
    {
        let local = Arc::new(ResponseCache::open_sqlite(&dir.join("local.db"), 1 << 40).unwrap());
        three_runs(
            &rt,
            "local default model (SmolLM2-135M, in process, 1 thread)",
            env("LOCAL_ITEMS", 10),
            || {
                Engine::new()
                    .with_model_spec("solver", "llama:smollm2")
                    .with_cache(local.clone())
            },
            &dir,
        );
    }
    lookup_cost(&rt, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}
