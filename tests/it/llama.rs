//! The in-process llama.cpp backend on the test model (SmolLM2-135M-Instruct,
//! `llama:smollm2`, installed by `scripts/fetch-model.sh`).
//! Assert properties, not exact text, so a llama.cpp update does not break
//! these for no reason.

use std::sync::{Arc, OnceLock};

use redraft::LanguageModel;
use redraft::backend::llama::{LlamaModel, test_model_path};
use redraft::backend::{
    CallContext, CompletionRequest, ErrorKind, FinishReason, Message, ResponseFormat,
    SamplingParams,
};

/// The test model's file (`REDRAFT_MODEL`, else where
/// `scripts/fetch-model.sh` puts it); `None`, saying so, when it is not
/// there, unless `REDRAFT_REQUIRE_PEERS=1` (CI), where that fails.
fn model_path() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("REDRAFT_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(test_model_path);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("REDRAFT_REQUIRE_PEERS").as_deref() != Ok("1"),
        "REDRAFT_REQUIRE_PEERS=1 but the model {} is missing",
        path.display()
    );
    eprintln!(
        "skipped: the test model {} is missing (scripts/fetch-model.sh)",
        path.display()
    );
    None
}

/// The model's path, or the test returns (skipped) when it is missing.
macro_rules! model_path {
    () => {
        match model_path() {
            Some(p) => p,
            None => return,
        }
    };
}

/// One loaded model shared by the tests (loading takes a moment).
fn model() -> Option<Arc<LlamaModel>> {
    static MODEL: OnceLock<Arc<LlamaModel>> = OnceLock::new();
    let path = model_path()?;
    Some(
        MODEL
            .get_or_init(|| {
                Arc::new(
                    LlamaModel::open(
                        &path,
                        &serde_json::json!({ "threads": 1, "context_size": 2048 }),
                    )
                    .expect("the default model loads"),
                )
            })
            .clone(),
    )
}

fn request(prompt: &str, max_tokens: u32) -> CompletionRequest {
    CompletionRequest {
        messages: vec![
            Message::system("You are a concise assistant."),
            Message::user(prompt),
        ],
        sampling: SamplingParams {
            temperature: Some(0.0),
            max_tokens,
            ..Default::default()
        },
        n: 1,
        logprobs: None,
        response_format: ResponseFormat::Text,
        context: CallContext::default(),
    }
}

#[tokio::test]
async fn greedy_generation_is_deterministic() {
    let Some(m) = model() else { return };
    let req = request("Name three colours.", 24);
    let a = m.complete(&req).await.unwrap();
    let b = m.complete(&req).await.unwrap();
    assert_eq!(a.choices[0].text, b.choices[0].text);
    assert!(!a.choices[0].text.trim().is_empty());
    assert!(a.usage.completion_tokens > 0 && a.usage.completion_tokens <= 24);
    // The prompt count matches the exact estimate the budget uses.
    assert_eq!(a.usage.prompt_tokens, m.estimate_prompt_tokens(&req));
}

#[tokio::test]
async fn max_tokens_and_stop_strings_end_generation() {
    let Some(m) = model() else { return };
    let c = m
        .complete(&request(
            "Count from one to fifty in words, separated by commas.",
            5,
        ))
        .await
        .unwrap();
    assert_eq!(c.choices[0].finish, FinishReason::Length);
    assert_eq!(c.usage.completion_tokens, 5);
    let mut req = request("Count from one to fifty in words, separated by commas.", 64);
    req.sampling.stop = vec![",".into()];
    let c = m.complete(&req).await.unwrap();
    assert!(!c.choices[0].text.contains(','), "{}", c.choices[0].text);
}

#[tokio::test]
async fn a_schema_constrained_critique_parses_and_validates() {
    let Some(m) = model() else { return };
    let schema = serde_json::json!({
        "type": "object", "required": ["score", "feedback"],
        "properties": { "score": { "type": "integer", "minimum": 1, "maximum": 10 }, "feedback": { "type": "string", "maxLength": 120 } }
    });
    let mut req = request(
        "Grade this answer from 1 to 10: 'The capital of France is Berlin.'",
        96,
    );
    req.response_format = ResponseFormat::JsonSchema {
        name: "critique".into(),
        schema: schema.clone(),
    };
    let c = m.complete(&req).await.unwrap();
    let value: serde_json::Value = serde_json::from_str(&c.choices[0].text).expect("valid JSON");
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&value), "{value}");
}

#[tokio::test]
async fn logprobs_are_finite_and_normalised() {
    let Some(m) = model() else { return };
    let mut req = request("Is the sky blue? Answer Yes or No.", 4);
    req.logprobs = Some(5);
    let c = m.complete(&req).await.unwrap();
    let lps = c.choices[0].logprobs.as_ref().unwrap();
    assert!(!lps.is_empty());
    for t in lps {
        assert!(t.logprob.is_finite() && t.logprob <= 0.0);
        assert_eq!(t.top.len(), 5);
        let mass: f32 = t.top.iter().map(|(_, lp)| lp.exp()).sum();
        assert!(mass > 0.0 && mass <= 1.0 + 1e-4, "{mass}");
        assert!(t.top.windows(2).all(|w| w[0].1 >= w[1].1), "sorted");
        // Greedy: the chosen token is the most likely one.
        assert!((t.logprob - t.top[0].1).abs() < 1e-4);
    }
}

#[tokio::test]
async fn a_shared_prefix_is_reused() {
    let Some(m) = model() else { return };
    let mut req = request("Write one sentence about rivers.", 8);
    let first = m.complete(&req).await.unwrap();
    req.messages
        .push(Message::assistant(first.choices[0].text.clone()));
    req.messages.push(Message::user("Now make it shorter."));
    let second = m.complete(&req).await.unwrap();
    assert!(second.usage.cached_tokens > 0, "{:?}", second.usage);
    assert!(second.usage.cached_tokens < second.usage.prompt_tokens);
}

#[tokio::test]
async fn n_samples_decode_as_parallel_sequences() {
    let Some(m) = model() else { return };
    let mut req = request("Invent a name for a cat.", 8);
    req.sampling.temperature = Some(1.0);
    req.sampling.seed = Some(7);
    req.n = 4;
    let c = m.complete(&req).await.unwrap();
    assert_eq!(c.choices.len(), 4);
    assert!(c.choices.iter().all(|ch| !ch.text.is_empty()));
    // Seeds differ per sequence, so the samples are not all the same.
    let distinct: std::collections::HashSet<_> =
        c.choices.iter().map(|ch| ch.text.clone()).collect();
    assert!(distinct.len() > 1, "{:?}", c.choices);
}

/// More samples than slots: the call runs in groups of `parallel`, and
/// every sample is there (none is dropped for lack of a slot).
#[tokio::test]
async fn more_samples_than_slots_run_in_groups() {
    let m = LlamaModel::open(
        &model_path!(),
        &serde_json::json!({ "threads": 1, "context_size": 1024, "parallel": 2 }),
    )
    .unwrap();
    let mut req = request("Invent a name for a cat.", 6);
    req.sampling.temperature = Some(1.0);
    req.sampling.seed = Some(7);
    req.n = 5;
    let c = m.complete(&req).await.unwrap();
    assert_eq!(c.choices.len(), 5);
    assert!(c.choices.iter().all(|ch| !ch.text.is_empty()));
    let distinct: std::collections::HashSet<_> = c.choices.iter().map(|ch| &ch.text).collect();
    assert!(distinct.len() > 1, "{:?}", c.choices);
    assert!(m.batch_stats().max_active <= 2);
    assert!(c.usage.completion_tokens >= 5);
}

#[test]
fn a_corrupt_or_missing_gguf_is_a_typed_error() {
    let dir = std::env::temp_dir().join(format!("redraft-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("not.gguf", b"this is not a model".to_vec()),
        ("short.gguf", b"GGUF".to_vec()),
    ];
    for (name, bytes) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = LlamaModel::open(&p, &serde_json::Value::Null)
            .err()
            .expect("rejected");
        assert_eq!(e.kind, ErrorKind::Config, "{e}");
    }
    // A truncated copy of the real model.
    let real = std::fs::read(model_path!()).unwrap();
    let p = dir.join("truncated.gguf");
    std::fs::write(&p, &real[..real.len() / 3]).unwrap();
    let e = LlamaModel::open(&p, &serde_json::Value::Null)
        .err()
        .expect("rejected");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    let e = LlamaModel::open(&dir.join("missing.gguf"), &serde_json::Value::Null)
        .err()
        .unwrap();
    assert!(e.message.contains("does not exist"));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn embeddings_have_the_model_dimension_and_rank_similar_texts_closer() {
    let Some(m) = model() else { return };
    let texts = [
        "The cat sat on the mat.",
        "A kitten was sitting on the rug.",
        "Quarterly tax filing deadlines for corporations.",
    ];
    let req = redraft::backend::EmbeddingRequest {
        texts: texts.iter().map(|t| t.to_string()).collect(),
        context: CallContext::default(),
    };
    let e = m.embed(&req).await.unwrap();
    assert_eq!(e.vectors.len(), 3);
    // SmolLM2-135M has 576-dimensional hidden states.
    assert!(
        e.vectors.iter().all(|v| v.len() == 576),
        "{}",
        e.vectors[0].len()
    );
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let (similar, different) = (
        cos(&e.vectors[0], &e.vectors[1]),
        cos(&e.vectors[0], &e.vectors[2]),
    );
    assert!(
        similar > different,
        "similar {similar} vs different {different}"
    );
    assert!(e.usage.prompt_tokens > 0);
}

/// `hf:` specs resolve through the Hub cache: the first use downloads from
/// the endpoint, later uses need no network; a missing file is a typed error.
#[test]
fn hub_files_download_once_then_come_from_the_cache() {
    use redraft::backend::hf::{HubConfig, HubFile, resolve};
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hub = crate::mock_hub::MockHub::start(
        "acme/tiny",
        [("gguf/tiny.gguf".to_string(), Arc::new(bytes.clone()))].into(),
    );
    let dir = std::env::temp_dir().join(format!("redraft-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = HubConfig {
        endpoint: hub.endpoint.clone(),
        cache_dir: dir.join("hub"),
    };
    let file = HubFile::parse("acme/tiny/gguf/tiny.gguf").unwrap();
    let path = resolve(&file, &config).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // The layout of the Hub cache (shared with the Python client).
    let expected = dir.join(format!(
        "hub/models--acme--tiny/snapshots/{}/gguf/tiny.gguf",
        crate::mock_hub::COMMIT
    ));
    assert_eq!(
        path.canonicalize().unwrap(),
        expected.canonicalize().unwrap()
    );
    let served = hub.requests.lock().unwrap().len();
    assert!(served >= 1);

    // Offline: the endpoint is gone, the cache answers.
    hub.shutdown();
    drop(hub);
    let again = resolve(&file, &config).unwrap();
    assert_eq!(again, path);

    let hub = crate::mock_hub::MockHub::start("acme/tiny", Default::default());
    let config = HubConfig {
        endpoint: hub.endpoint.clone(),
        ..config
    };
    let missing = HubFile::parse("acme/tiny/nope.gguf").unwrap();
    let err = resolve(&missing, &config).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config);
    assert!(
        err.message.contains("nope.gguf") && err.message.contains("404"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// End to end through the CLI: `HF_ENDPOINT` and `HF_HOME` are honoured, and
/// the downloaded GGUF runs.
#[test]
fn cli_runs_a_hub_model_from_hf_endpoint() {
    let gguf = model_path!();
    let hub = crate::mock_hub::MockHub::start(
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        [(
            "smollm2.gguf".to_string(),
            Arc::new(std::fs::read(gguf).unwrap()),
        )]
        .into(),
    );
    let dir = std::env::temp_dir().join(format!("redraft-hub-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wf = dir.join("hello.yaml");
    std::fs::write(
        &wf,
        "version: 1\nmodels:\n  m: { spec: 'hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2.gguf', settings: { threads: 1, context_size: 512 } }\nnodes:\n  - { id: hello, kind: generate, model: m, sampling: { max_tokens: 8, temperature: 0 }, template: 'Say hello.' }\noutput: hello\n",
    )
    .unwrap();
    let out = crate::support::redraft_command()
        .args(["run", wf.to_str().unwrap(), "--json", "-q"])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", dir.join("hf"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        dir.join("hf/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF")
            .is_dir(),
        "downloaded into HF_HOME"
    );
    assert!(!hub.requests.lock().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_single_sample_gets_the_whole_context_and_too_long_calls_fail_up_front() {
    // 512 tokens of context shared by up to 4 sequences.
    let path = model_path!();
    let m = LlamaModel::open(
        &path,
        &serde_json::json!({ "threads": 1, "context_size": 512, "max_sequences": 4 }),
    )
    .unwrap();
    // One sample may use far more than 512 / 4 = 128 tokens: a schema with
    // a long minimum length keeps the model from stopping early.
    let mut req = request("Describe the sea at length.", 300);
    req.response_format = ResponseFormat::JsonSchema {
        name: "long".into(),
        schema: serde_json::json!({
            "type": "object",
            "properties": { "text": { "type": "string", "minLength": 700 } },
            "required": ["text"]
        }),
    };
    let c = m.complete(&req).await.unwrap();
    assert!(
        c.usage.prompt_tokens + c.usage.completion_tokens > 128,
        "the reply must pass a quarter of the context to show anything: {:?}",
        c.usage
    );
    // Four samples of 300 cannot fit in 512: refused before any decoding.
    let mut four = req.clone();
    four.n = 4;
    four.sampling.temperature = Some(0.8);
    let e = m.complete(&four).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ContextLength, "{e}");
    assert!(e.message.contains("× 4 samples"), "{}", e.message);
    assert!(e.usage.is_none(), "nothing was decoded");
}

/// A call whose caller stops waiting (a timeout, a cancelled run) stops
/// decoding: the worker frees its slot at the next step and, with nothing
/// else to do, makes no more decode calls. Decoding it to the end would
/// take 600 forced tokens, seconds of work. The cells decoded so far stay
/// as the slot's cache, which the next call sharing the prompt reuses.
/// (How fast it stops is measured in `benches/llama.rs`.)
#[tokio::test]
async fn a_dropped_call_stops_decoding() {
    let m = Arc::new(
        LlamaModel::open(
            &model_path!(),
            &serde_json::json!({ "threads": 1, "context_size": 1024 }),
        )
        .unwrap(),
    );
    let mut long = request("Write a very long story.", 600);
    long.response_format = ResponseFormat::JsonSchema {
        name: "story".into(),
        schema: serde_json::json!({ "type": "string", "minLength": 1500 }),
    };
    let prompt = m.estimate_prompt_tokens(&long);
    let before = m.batch_stats();
    let dropped =
        tokio::time::timeout(std::time::Duration::from_millis(50), m.complete(&long)).await;
    assert!(dropped.is_err(), "600 forced tokens in 50 ms");
    // Wait until the worker is quiet: its counters hold still.
    let started = std::time::Instant::now();
    let mut last = m.batch_stats();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = m.batch_stats();
        if now == last {
            break;
        }
        last = now;
        assert!(
            started.elapsed().as_secs() < 60,
            "the worker never went quiet"
        );
    }
    let decoded = last.tokens - before.tokens;
    assert!(
        decoded < prompt + 100,
        "the abandoned job was decoded on: {decoded} tokens for a {prompt}-token prompt"
    );
    let next = request("Write a very long story. Then stop.", 1);
    let c = m.complete(&next).await.unwrap();
    assert!(c.usage.cached_tokens > 0, "{:?}", c.usage);
}

/// Concurrent calls decode together (one batch per step), and what a call
/// computes inside a busy batch is what it computes alone, up to float
/// noise: llama.cpp's kernels are not batch-invariant (sums run in another
/// order when the batch's shape changes), so at temperature 0 two texts can
/// part where two tokens are nearly tied, and only there. For each of four
/// prompts decoded alone and then all four at once: every token up to the
/// first difference has the same log-probability within 0.5 nats (seen:
/// at most 0.24), and where the texts part, each run's choice is within
/// 0.5 nats of the other run's in both distributions (seen: 0.005 to
/// 0.15). A mixed-up sequence or logits row would give another
/// distribution, nats away. (How often texts part on this model, and on
/// llama-server, is measured in `benches/llama.rs`.)
#[tokio::test]
async fn a_call_inside_a_busy_batch_computes_what_it_computes_alone() {
    let path = model_path!();
    let open = || {
        LlamaModel::open(
            &path,
            &serde_json::json!({ "threads": 1, "context_size": 2048, "parallel": 4 }),
        )
        .unwrap()
    };
    let prompts = [
        "Name three colours.",
        "Write a haiku about rain.",
        "What is the capital of France?",
        "Count from one to five in words.",
    ];
    let requests: Vec<CompletionRequest> = prompts
        .iter()
        .map(|p| {
            let mut r = request(p, 24);
            r.logprobs = Some(5);
            r
        })
        .collect();
    let solo = open();
    let mut alone = Vec::new();
    for r in &requests {
        alone.push(solo.complete(r).await.unwrap());
    }
    let busy = open();
    let together = futures_util::future::join_all(requests.iter().map(|r| busy.complete(r))).await;
    let stats = busy.batch_stats();
    assert_eq!(
        stats.max_active, 4,
        "the four calls decoded together: {stats:?}"
    );
    for ((p, a), b) in prompts.iter().zip(&alone).zip(together) {
        same_up_to_noise(p, a, &b.unwrap());
    }
}

/// Two temperature-0 completions of one prompt agree up to float noise:
/// every token up to the first difference has the same log-probability
/// within 0.5 nats, and where the texts part, each run's choice is within
/// 0.5 nats of the other's in both distributions (a near tie). Returns
/// whether the texts are equal.
fn same_up_to_noise(
    p: &str,
    a: &redraft::backend::Completion,
    b: &redraft::backend::Completion,
) -> bool {
    let (a, b) = (
        a.choices[0].logprobs.as_ref().unwrap(),
        b.choices[0].logprobs.as_ref().unwrap(),
    );
    let n = a.len().min(b.len());
    let parted = (0..n).find(|&i| a[i].token != b[i].token);
    for i in 0..parted.unwrap_or(n) {
        let d = (a[i].logprob - b[i].logprob).abs();
        assert!(
            d < 0.5,
            "{p}: token {i} {:?}: {} in one run, {} in the other",
            a[i].token,
            a[i].logprob,
            b[i].logprob
        );
    }
    if let Some(i) = parted {
        for (x, y) in [(&a[i], &b[i]), (&b[i], &a[i])] {
            let other = x.top.iter().find(|(t, _)| *t == y.token);
            let gap = other.map_or(f32::INFINITY, |(_, l)| x.logprob - l);
            assert!(
                gap < 0.5,
                "{p}: the texts part at token {i} ({:?} vs {:?}) with a gap of {gap} nats",
                x.token,
                y.token
            );
        }
    }
    parted.is_none() && a.len() == b.len()
}

/// Speculative decoding: a draft model (here the model itself, the only
/// GGUF the suite has; tests/benches measure Qwen 0.5B drafting for 1.5B)
/// proposes tokens that the model verifies in one batch. The text is the
/// model's own, up to batch-shape noise, and a self-draft is nearly
/// always right, so most steps yield several tokens.
#[tokio::test]
async fn a_draft_model_proposes_and_the_model_keeps_its_own_text() {
    let path = model_path!();
    let plain = LlamaModel::open(
        &path,
        &serde_json::json!({ "threads": 1, "context_size": 1024 }),
    )
    .unwrap();
    let spec = LlamaModel::open(
        &path,
        &serde_json::json!({ "threads": 1, "context_size": 1024, "draft": path, "draft_max": 4 }),
    )
    .unwrap();
    let mut req = request("List the days of the week, one per line.", 48);
    req.logprobs = Some(5);
    let a = plain.complete(&req).await.unwrap();
    let b = spec.complete(&req).await.unwrap();
    assert!(a.usage.completion_tokens > 10, "{:?}", a.choices[0].text);
    same_up_to_noise("count", &a, &b);
    assert_eq!(a.usage.prompt_tokens, b.usage.prompt_tokens);
    let (pa, sb) = (plain.batch_stats(), spec.batch_stats());
    assert!(sb.drafted > 0 && sb.accepted * 2 > sb.drafted, "{sb:?}");
    assert!(sb.decodes < pa.decodes, "{sb:?} vs {pa:?}");
    // Sampled with a seed: the same draws (one per token, in order).
    req.sampling.temperature = Some(0.9);
    req.sampling.seed = Some(11);
    let a = plain.complete(&req).await.unwrap();
    let b = spec.complete(&req).await.unwrap();
    same_up_to_noise("count, sampled", &a, &b);
    // A draft that is no model is a config error naming it.
    let e = LlamaModel::open(
        &path,
        &serde_json::json!({ "draft": "/nonexistent/draft.gguf" }),
    )
    .err()
    .expect("refused");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("/nonexistent/draft.gguf"), "{e}");
}

/// An eval on the real model counts what its calls reused: round 2 (the
/// critique, then the revision) re-sends round 1's conversation, so its
/// prompt starts with cells a slot holds. Per item and in the eval's stats,
/// prompt and reused tokens agree with the items' run summaries; two items
/// run at once, decoded side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eval_counts_prompt_tokens_reused_across_rounds() {
    use redraft::eval::data::{DataSpec, Selection};
    use redraft::eval::score::Scorer;
    use redraft::eval::{self, EvalOptions, EvalPlan, Quiet};
    let path = model_path!();
    let dir = std::env::temp_dir().join(format!("redraft-llama-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wf_path = crate::support::fixtures().join("eval/arith.yaml");
    let spec = format!("llama:{}", path.display());
    let plan = EvalPlan {
        workflow: Arc::new(redraft::workflow::load(&wf_path).unwrap()),
        workflow_source: std::fs::read_to_string(&wf_path).unwrap(),
        models: [("solver".to_string(), spec.clone())].into(),
        data: DataSpec {
            source: crate::support::fixtures()
                .join("eval/arith.jsonl")
                .display()
                .to_string(),
            map: [("task".to_string(), "question".to_string())].into(),
            answer: Some("answer".into()),
            ..DataSpec::default()
        },
        selection: Selection {
            limit: Some(2),
            ..Selection::default()
        },
        scorer: "numeric".into(),
        extract: None,
        epochs: 1,
        name: None,
        command: vec![],
        review: None,
    };
    let scorer =
        Arc::new(Scorer::parse("numeric", None, redraft::sandbox::Isolation::None).unwrap());
    let db = dir.join("r.db");
    let store = eval::store::open(db.to_str().unwrap()).unwrap();
    let engine = redraft::Engine::new().with_model_spec("solver", &spec);
    let options = EvalOptions {
        concurrency: 2,
        ..EvalOptions::default()
    };
    let out = eval::run(&engine, &plan, scorer, store, options, &Quiet)
        .await
        .unwrap();
    let m = &out.metrics;
    assert_eq!((m.done, m.failed), (2, 0), "{m:?}");
    let mut store = eval::store::open(db.to_str().unwrap()).unwrap();
    let (mut prompt, mut reused) = (0, 0);
    for u in store.units(&out.eval.id, true).unwrap() {
        let r = u.result.unwrap();
        let usage = &r.summary.as_ref().unwrap()["usage"];
        assert_eq!(r.prompt_tokens, usage["prompt_tokens"].as_u64().unwrap());
        assert_eq!(r.reused_tokens, usage["reused_tokens"].as_u64().unwrap());
        assert!(r.reused_tokens > 0, "round 2 reused nothing: {usage}");
        assert!(r.prompt_tokens < r.tokens);
        prompt += r.prompt_tokens;
        reused += r.reused_tokens;
    }
    assert_eq!(
        (m.total_prompt_tokens, m.total_reused_tokens),
        (prompt, reused)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
