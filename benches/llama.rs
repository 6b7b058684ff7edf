//! The in-process llama.cpp backend on the embedded default model.
//! Run: `cargo bench --bench llama --features llama`
//! (env: `REDRAFT_MODEL`, `REDRAFT_LLAMA_BENCH` = path of llama.cpp's
//! `llama-bench` from `scripts/build-peers.sh`, `REPS` = repetitions, default 5,
//! `SECTIONS` = a comma list of `speed`, `batch`, `prefix`, `cancel`,
//! `concurrent`, `draft`; default all).
//! Medians of `REPS` runs; for speed, llama-bench and ours alternate round
//! by round and the ratio is the median of per-round ratios, because a
//! shared machine drifts by more than the 5% being measured.
//!
//! 1. Prompt processing (512 tokens) and generation (128 tokens) speed, one
//!    thread, against `llama-bench -p 512 -n 128 -t 1` on the same file.
//!    Ours is timed through the public `complete` call: prefill = a call with
//!    `max_tokens: 1` less one generated token; generation = a 128-token call
//!    less the 1-token call on the same prompt (prefix cache off, so both
//!    prefill the same).
//! 2. `n` = 4 samples in one call (parallel sequences sharing the prompt's
//!    KV cache) against four calls of `n` = 1.
//! 3. The prompts of a recorded self-refine run on this model
//!    (`tests/cassettes/self-refine-smollm2.jsonl`), replayed in order with
//!    the prefix cache on and off: prefill time of rounds 2 and later.
//! 4. Cancellation: a 1,000-token call (a grammar keeps the model from
//!    stopping early) is dropped after 200 ms; the time from the drop to
//!    the answer of a 1-token call sent right then, less that call's own
//!    time when the worker is idle = how long the worker kept working for
//!    nobody.
//! 5. Concurrent calls (continuous batching): 16 distinct prompts, 64
//!    tokens each at temperature 0, with 1, 2, 4 and 8 calls in flight:
//!    wall time, generated tokens/s, decode calls, the most KV cells held,
//!    and how many texts differ from the same call decoded one at a time
//!    (batch invariance). The same against llama.cpp's `llama-server
//!    --parallel 8` (`REDRAFT_LLAMA_SERVER`) through the `openai:` backend.
//! 6. Speculative decoding (`REDRAFT_DRAFT` = a draft GGUF of the model's
//!    vocabulary): 8 coding prompts, 128 tokens each at temperature 0, one
//!    call at a time and 4 in flight, with and without the draft
//!    (`draft_max` from `DRAFT_MAX`, default 3; `INFLIGHT`, default
//!    `1 4`): tokens/s, the share of
//!    proposals kept, and how many texts differ from the draft-less ones.
//!    llama-server with the same draft (`-md`) when `REDRAFT_LLAMA_SERVER`
//!    is set.

use std::path::{Path, PathBuf};
use std::time::Instant;

use redraft::LanguageModel;
use redraft::backend::llama::{LlamaModel, default_model_path};
use redraft::backend::{CallContext, CompletionRequest, Message, ResponseFormat, SamplingParams};

fn reps() -> usize {
    std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
}

fn open(path: &Path, prefix_cache: bool) -> LlamaModel {
    LlamaModel::open(
        path,
        &serde_json::json!({
            "threads": 1, "context_size": 2048, "batch_size": 512,
            "prefix_cache": prefix_cache, "max_sequences": 4,
        }),
    )
    .expect("the model loads")
}

fn request(messages: Vec<Message>, max_tokens: u32, temperature: f32, n: u32) -> CompletionRequest {
    CompletionRequest {
        messages,
        sampling: SamplingParams {
            temperature: Some(temperature),
            max_tokens,
            seed: Some(7),
            ..Default::default()
        },
        n,
        logprobs: None,
        response_format: ResponseFormat::Text,
        context: CallContext::default(),
    }
}

/// The median of some measurements (NaN for none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median wall seconds and the last completion of `reps` calls.
fn time(
    rt: &tokio::runtime::Runtime,
    m: &LlamaModel,
    req: &CompletionRequest,
    reps: usize,
) -> (f64, redraft::backend::Completion) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let c = rt.block_on(m.complete(req)).expect("completion");
        times.push(t.elapsed().as_secs_f64());
        last = Some(c);
    }
    (median(times), last.unwrap())
}

/// A user message of exactly `target` prompt tokens (chat template included).
fn prompt_of(m: &LlamaModel, target: u64) -> Vec<Message> {
    let words = [
        "river", "stone", "lantern", "orbit", "meadow", "copper", "signal", "harbor",
    ];
    let mut text = String::new();
    let mut i = 0;
    loop {
        let msgs = vec![Message::user(text.clone())];
        let n = m.estimate_prompt_tokens(&request(msgs.clone(), 1, 0.0, 1));
        if n >= target {
            return msgs;
        }
        text.push_str(words[i % words.len()]);
        text.push(' ');
        i += 1;
    }
}

struct LlamaBench {
    pp: f64,
    tg: f64,
}

fn llama_bench(model: &Path, reps: usize) -> Option<LlamaBench> {
    let bin = std::env::var_os("REDRAFT_LLAMA_BENCH")?;
    let out = std::process::Command::new(bin)
        .args(["-m", model.to_str()?, "-p", "512", "-n", "128", "-t", "1"])
        .args(["-r", &reps.to_string(), "-o", "json"])
        .output()
        .ok()?;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut bench = LlamaBench { pp: 0.0, tg: 0.0 };
    for row in rows.as_array()? {
        let ts = row["avg_ts"].as_f64()?;
        if row["n_gen"].as_u64()? > 0 {
            bench.tg = ts;
        } else {
            bench.pp = ts;
        }
    }
    Some(bench)
}

fn main() {
    let path = std::env::var_os("REDRAFT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(default_model_path);
    let reps = reps();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("model: {}  threads: 1  reps: {reps}", path.display());

    let sections = std::env::var("SECTIONS")
        .unwrap_or_else(|_| "speed,batch,prefix,cancel,concurrent,draft".into());
    if sections.contains("speed") {
        speed(&rt, &path, reps);
    }
    if sections.contains("batch") {
        batch(&rt, &path, reps);
    }
    if sections.contains("prefix") {
        prefix(&rt, &path, reps);
    }
    if sections.contains("cancel") {
        cancel(&rt, &path, reps);
    }
    if sections.contains("concurrent") {
        concurrent(&rt, &path);
    }
    if sections.contains("draft") {
        match std::env::var_os("REDRAFT_DRAFT") {
            Some(d) => draft(&rt, &path, Path::new(&d)),
            None => println!("\n## Speculative decoding: not run (set REDRAFT_DRAFT)"),
        }
    }
}

/// A llama-server child on 127.0.0.1 with one thread, killed on drop.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `REDRAFT_LLAMA_SERVER` on `model` with `args`; None when unset
/// or not healthy within 120 s.
fn server(rt: &tokio::runtime::Runtime, model: &Path, args: &[&str]) -> Option<Server> {
    let bin = std::env::var_os("REDRAFT_LLAMA_SERVER")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let child = std::process::Command::new(bin)
        .args(["-m", model.to_str()?, "--host", "127.0.0.1"])
        .args([
            "--port",
            &port.to_string(),
            "--threads",
            "1",
            "--threads-batch",
            "1",
        ])
        .args(["--no-webui"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let s = Server {
        child,
        url: format!("http://127.0.0.1:{port}/v1"),
    };
    let healthy = rt.block_on(async {
        for _ in 0..600 {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/health")).await {
                if r.status().is_success() {
                    return true;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        false
    });
    if !healthy {
        println!("llama-server did not become healthy in 120 s");
    }
    healthy.then_some(s)
}

fn openai(url: &str) -> std::sync::Arc<dyn LanguageModel> {
    redraft::backend::open(
        &format!("openai:local@{url}"),
        &serde_json::json!({ "request_timeout": "600s", "concurrency_per_endpoint": 64 }),
        Path::new("."),
    )
    .expect("the openai backend opens")
}

/// Section 6: speculative decoding against plain decoding, ours and
/// llama-server's.
fn draft(rt: &tokio::runtime::Runtime, path: &Path, draft: &Path) {
    let max: u32 = std::env::var("DRAFT_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tasks = [
        "Write a Python function that returns the n-th Fibonacci number iteratively.",
        "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
        "Write a Python function that merges two sorted lists into one sorted list.",
        "Write a Python function that counts the words in a text and returns a dict of counts.",
        "Write a Python function that returns the prime numbers below n with a sieve.",
        "Write a Python function that flattens a nested list of any depth.",
        "Write a Python function that converts a Roman numeral to an integer.",
        "Write a Python function that returns the longest common prefix of a list of strings.",
    ];
    let prompts: Vec<CompletionRequest> = tasks
        .iter()
        .map(|t| request(vec![Message::user(t.to_string())], 128, 0.0, 1))
        .collect();
    println!(
        "\n## Speculative decoding: {} drafting for {}, draft_max {max}, 8 prompts, 128 tokens each, temperature 0",
        draft.display(),
        path.display()
    );
    println!("| decoder | in flight | wall s | tokens/s | proposals kept | texts unlike plain |");
    println!("|---|---:|---:|---:|---:|---:|");
    let inflights: Vec<usize> = std::env::var("INFLIGHT")
        .unwrap_or_else(|_| "1 4".into())
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    for inflight in inflights {
        let mut plain_texts = None;
        for with_draft in [false, true] {
            let mut settings =
                serde_json::json!({ "threads": 1, "context_size": 4096, "parallel": 4 });
            if with_draft {
                settings["draft"] = serde_json::json!(draft);
                settings["draft_max"] = serde_json::json!(max);
            }
            let m = LlamaModel::open(path, &settings).expect("the model loads");
            let (secs, tokens, texts) = pass(rt, &m, &prompts, inflight);
            let base = plain_texts.get_or_insert_with(|| texts.clone());
            let (differ, _) = unlike(&texts, base);
            let st = m.batch_stats();
            let kept = if st.drafted > 0 {
                format!(
                    "{:.0}% of {}",
                    100.0 * st.accepted as f64 / st.drafted as f64,
                    st.drafted
                )
            } else {
                "-".into()
            };
            println!(
                "| redraft{} | {inflight} | {secs:.2} | {:.1} | {kept} | {differ}/8 |",
                if with_draft { " + draft" } else { "" },
                tokens as f64 / secs
            );
        }
    }
    let draft_path = draft.to_str().expect("a UTF-8 path");
    let n_max = max.to_string();
    for (label, args) in [
        (
            "llama-server",
            vec!["--ctx-size", "4096", "--parallel", "1"],
        ),
        (
            "llama-server + draft",
            vec![
                "--ctx-size",
                "4096",
                "--parallel",
                "1",
                "-md",
                draft_path,
                "--spec-draft-n-max",
                &n_max,
                "-td",
                "1",
                "-tbd",
                "1",
            ],
        ),
    ] {
        let Some(srv) = server(rt, path, &args) else {
            println!("{label}: not run");
            continue;
        };
        let m = openai(&srv.url);
        let (secs, tokens, _) = pass(rt, m.as_ref(), &prompts, 1);
        println!(
            "| {label} | 1 | {secs:.2} | {:.1} | | |",
            tokens as f64 / secs
        );
    }
}

/// One pass of the concurrency section: every prompt, `inflight` calls at a
/// time; wall seconds, generated tokens and the texts in prompt order.
fn pass(
    rt: &tokio::runtime::Runtime,
    m: &dyn LanguageModel,
    prompts: &[CompletionRequest],
    inflight: usize,
) -> (f64, u64, Vec<String>) {
    use futures_util::StreamExt as _;
    let t = Instant::now();
    let done: Vec<redraft::backend::Completion> = rt.block_on(
        futures_util::stream::iter(prompts.iter().map(|r| m.complete(r)))
            .buffered(inflight)
            .map(|c| c.expect("completion"))
            .collect(),
    );
    let secs = t.elapsed().as_secs_f64();
    let tokens = done.iter().map(|c| c.usage.completion_tokens).sum();
    let texts = done
        .into_iter()
        .map(|c| c.choices[0].text.clone())
        .collect();
    (secs, tokens, texts)
}

/// How many texts differ from the one-at-a-time texts, and the mean share
/// of the one-at-a-time text (in bytes) that a differing text repeats
/// before it parts from it.
fn unlike(texts: &[String], alone: &[String]) -> (usize, f64) {
    let parts: Vec<f64> = texts
        .iter()
        .zip(alone)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| {
            let same = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
            100.0 * same as f64 / b.len().max(1) as f64
        })
        .collect();
    let mean = if parts.is_empty() {
        100.0
    } else {
        parts.iter().sum::<f64>() / parts.len() as f64
    };
    (parts.len(), mean)
}

/// Section 5, concurrent calls: throughput and batch invariance, ours
/// and llama-server's.
fn concurrent(rt: &tokio::runtime::Runtime, path: &Path) {
    let topics = [
        "a lighthouse",
        "a river",
        "the moon",
        "a train",
        "a garden",
        "an old clock",
        "the sea",
        "a mountain",
        "a library",
        "winter",
        "a market",
        "a violin",
        "a desert",
        "the rain",
        "a bridge",
        "a fox",
    ];
    let prompts: Vec<CompletionRequest> = topics
        .iter()
        .map(|t| {
            request(
                vec![Message::user(format!("Write a short story about {t}."))],
                64,
                0.0,
                1,
            )
        })
        .collect();
    println!("\n## Concurrent calls: 16 prompts, 64 tokens each, temperature 0");
    println!(
        "| backend | in flight | wall s | tokens/s | decode calls | max KV cells | texts unlike one-at-a-time | text shared before they part |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut alone: Option<Vec<String>> = None;
    for inflight in [1, 2, 4, 8] {
        // A fresh model per pass: no pass reuses another's cache.
        let m = LlamaModel::open(
            path,
            &serde_json::json!({ "threads": 1, "context_size": 4096, "parallel": 8 }),
        )
        .expect("the model loads");
        let (secs, tokens, texts) = pass(rt, &m, &prompts, inflight);
        let base = alone.get_or_insert_with(|| texts.clone());
        let (differ, shared) = unlike(&texts, base);
        let st = m.batch_stats();
        println!(
            "| redraft (in-process) | {inflight} | {secs:.2} | {:.1} | {} | {} | {differ}/16 | {shared:.0}% |",
            tokens as f64 / secs,
            st.decodes,
            st.max_cells
        );
        if std::env::var_os("SHOW_TEXTS").is_some() {
            for (a, b) in texts.iter().zip(base.iter()).filter(|(a, b)| a != b) {
                println!("  alone:   {b:?}\n  batched: {a:?}");
            }
        }
    }
    let args = ["--ctx-size", "4096", "--parallel", "8", "--kv-unified"];
    let Some(srv) = server(rt, path, &args) else {
        println!("llama-server: not run (set REDRAFT_LLAMA_SERVER)");
        return;
    };
    let m = openai(&srv.url);
    let mut alone: Option<Vec<String>> = None;
    for inflight in [1, 2, 4, 8] {
        let (secs, tokens, texts) = pass(rt, m.as_ref(), &prompts, inflight);
        let base = alone.get_or_insert_with(|| texts.clone());
        let (differ, shared) = unlike(&texts, base);
        println!(
            "| llama-server --parallel 8 | {inflight} | {secs:.2} | {:.1} | | | {differ}/16 | {shared:.0}% |",
            tokens as f64 / secs
        );
    }
}

/// 4. Time from dropping a call to the worker serving the next one.
fn cancel(rt: &tokio::runtime::Runtime, path: &Path, reps: usize) {
    let m = open(path, false);
    let mut long = request(
        vec![Message::user("Write a very long story.")],
        1000,
        0.0,
        1,
    );
    long.response_format = ResponseFormat::JsonSchema {
        name: "story".into(),
        schema: serde_json::json!({ "type": "string", "minLength": 1500 }),
    };
    let short = request(vec![Message::user("Hi")], 1, 0.0, 1);
    let (idle, _) = time(rt, &m, &short, reps);
    let mut waits = Vec::new();
    for _ in 0..reps {
        let wait = rt.block_on(async {
            let dropped =
                tokio::time::timeout(std::time::Duration::from_millis(200), m.complete(&long))
                    .await;
            assert!(dropped.is_err(), "the long call ended within 200 ms");
            let t = Instant::now();
            m.complete(&short).await.unwrap();
            t.elapsed().as_secs_f64()
        });
        waits.push(wait);
    }
    let wait = median(waits);
    println!("\n## cancellation (1,000-token call dropped after 200 ms)");
    println!(
        "next 1-token call: {:.1} ms after the drop, {:.1} ms when idle: the worker stopped within {:.1} ms",
        wait * 1e3,
        idle * 1e3,
        (wait - idle).max(0.0) * 1e3
    );
}

/// 1. Speed against llama-bench.
fn speed(rt: &tokio::runtime::Runtime, path: &Path, reps: usize) {
    let cold = open(path, false);
    let long = prompt_of(&cold, 512);
    let pp_tokens = cold.estimate_prompt_tokens(&request(long.clone(), 1, 0.0, 1));
    let count = vec![Message::user(
        "Count from 1 to 1000 in digits, separated by spaces.".to_string(),
    )];
    // Interleaved rounds (llama-bench once, then ours once), so that both
    // see the same machine; the ratio is taken per round, then the median.
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let peer = llama_bench(path, 1);
        let (t1, _) = time(rt, &cold, &request(count.clone(), 1, 0.0, 1), 1);
        let (t128, c) = time(rt, &cold, &request(count.clone(), 128, 0.0, 1), 1);
        let generated = c.usage.completion_tokens as f64;
        let tg = (generated - 1.0) / (t128 - t1);
        let (tpp, _) = time(rt, &cold, &request(long.clone(), 1, 0.0, 1), 1);
        let pp = pp_tokens as f64 / (tpp - 1.0 / tg);
        if let Some(b) = &peer {
            ratios.push((pp / b.pp, tg / b.tg));
        }
        ours.push((pp, tg));
        theirs.extend(peer.map(|b| (b.pp, b.tg)));
    }
    let pick = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(v.iter().map(f).collect());
    let (pp, tg) = (pick(&ours, |x| x.0), pick(&ours, |x| x.1));
    println!("\n## Speed (tokens/s, medians of {reps} interleaved rounds)");
    println!("redraft: pp{pp_tokens} {pp:.1}  tg128 {tg:.1}");
    if theirs.is_empty() {
        println!("llama-bench: not run (set REDRAFT_LLAMA_BENCH)");
        return;
    }
    println!(
        "llama-bench: pp512 {:.1}  tg128 {:.1}",
        pick(&theirs, |x| x.0),
        pick(&theirs, |x| x.1)
    );
    println!(
        "redraft/llama-bench, median of per-round ratios: pp {:.1}%  tg {:.1}%  (rounds: {})",
        100.0 * pick(&ratios, |x| x.0),
        100.0 * pick(&ratios, |x| x.1),
        ratios
            .iter()
            .map(|(p, t)| format!("{:.0}/{:.0}", 100.0 * p, 100.0 * t))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// 2. n = 4 in one call (parallel sequences) against four calls of n = 1.
fn batch(rt: &tokio::runtime::Runtime, path: &Path, reps: usize) {
    let warm = open(path, true);
    let poem = vec![Message::user(
        "Write a long story about a lighthouse keeper and a storm.".to_string(),
    )];
    let (t_batched, c) = time(rt, &warm, &request(poem.clone(), 64, 0.8, 4), reps);
    let batched_tokens = c.usage.completion_tokens;
    let mut t_seq = Vec::new();
    let mut seq_tokens = 0;
    for _ in 0..reps {
        let t = Instant::now();
        seq_tokens = 0;
        for _ in 0..4 {
            let c = rt
                .block_on(warm.complete(&request(poem.clone(), 64, 0.8, 1)))
                .unwrap();
            seq_tokens += c.usage.completion_tokens;
        }
        t_seq.push(t.elapsed().as_secs_f64());
    }
    let t_seq = median(t_seq);
    println!("\n## n = 4 samples, 64 tokens each at most");
    println!(
        "one call, 4 parallel sequences: {:.0} ms, {batched_tokens} tokens ({:.1} tokens/s)",
        t_batched * 1e3,
        batched_tokens as f64 / t_batched
    );
    println!(
        "four calls of n = 1: {:.0} ms, {seq_tokens} tokens ({:.1} tokens/s)",
        t_seq * 1e3,
        seq_tokens as f64 / t_seq
    );
    println!(
        "speed-up: {:.2}x wall, {:.2}x tokens/s",
        t_seq / t_batched,
        (batched_tokens as f64 / t_batched) / (seq_tokens as f64 / t_seq)
    );
}

/// 3. Prefix reuse over the prompts of a real self-refine run.
fn prefix(rt: &tokio::runtime::Runtime, path: &Path, reps: usize) {
    let cassette = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cassettes/self-refine-smollm2.jsonl"),
    )
    .unwrap();
    let calls: Vec<(u64, String, Vec<Message>)> = cassette
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["round"].as_u64().unwrap(),
                v["node"].as_str().unwrap().to_string(),
                serde_json::from_value(v["request"]["messages"].clone()).unwrap(),
            )
        })
        .collect();
    println!("\n## Prefill of self-refine rounds 2+ (recorded prompts, max_tokens 1)");
    let mut totals = Vec::new();
    for prefix_cache in [false, true] {
        let mut runs: Vec<(f64, u64, u64)> = Vec::new();
        for _ in 0..reps {
            let m = open(path, prefix_cache);
            let (mut secs, mut prompt, mut reused) = (0.0, 0, 0);
            for (round, _node, messages) in &calls {
                let t = Instant::now();
                let c = rt
                    .block_on(m.complete(&request(messages.clone(), 1, 0.0, 1)))
                    .unwrap();
                if *round >= 2 {
                    secs += t.elapsed().as_secs_f64();
                    prompt += c.usage.prompt_tokens;
                    reused += c.usage.cached_tokens;
                }
            }
            runs.push((secs, prompt, reused));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (secs, prompt, reused) = runs[runs.len() / 2];
        println!(
            "prefix cache {}: {:.1} ms (median) for {prompt} prompt tokens, {reused} reused ({:.0}%)",
            if prefix_cache { "on " } else { "off" },
            secs * 1e3,
            100.0 * reused as f64 / prompt as f64
        );
        totals.push(secs);
    }
    println!("saved: {:.0}%", 100.0 * (1.0 - totals[1] / totals[0]));
}
