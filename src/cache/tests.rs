use std::sync::Arc;

use super::*;
use crate::backend::{CallContext, Completion, Usage};

fn model() -> ModelIdentity {
    ModelIdentity {
        key: "gguf:abc {}".into(),
        contextual: false,
    }
}

fn request(temperature: Option<f32>, seed: Option<u64>) -> CompletionRequest {
    CompletionRequest {
        messages: vec![Message::user("What is 2 + 2?")],
        sampling: SamplingParams {
            temperature,
            top_p: None,
            seed,
            max_tokens: 64,
            stop: vec![],
        },
        n: 1,
        logprobs: None,
        response_format: ResponseFormat::Text,
        context: CallContext {
            node: "draft".into(),
            round: 1,
            attempt: 0,
            retry: 0,
        },
    }
}

fn at<'a>(unit: Option<&'a str>, node: &'a str, round: u32, sample: u32) -> Position<'a> {
    Position {
        unit,
        node,
        round,
        attempt: 0,
        sample,
    }
}

fn key(req: &CompletionRequest, pos: Position<'_>) -> String {
    completion_key(&model(), req, pos)
}

#[test]
fn a_key_is_stable_and_names_what_decides_the_reply() {
    let base = request(Some(0.0), None);
    let k = key(&base, at(None, "draft", 1, 0));
    // Pinned: the same request has the same key in every process, build
    // and machine (a changed layout bumps KEY_VERSION instead).
    assert_eq!(
        k, "82263a7d4febd65ca6802c41d18a0277909a9379b8dec43ea140e600ad16c52c",
        "the key of a request changed: bump KEY_VERSION if that was meant"
    );
    assert_eq!(k, key(&base.clone(), at(None, "draft", 1, 0)));
    // Every field that decides the reply changes the key.
    let mut variants: Vec<CompletionRequest> = Vec::new();
    let mut v = base.clone();
    v.messages[0].content.push('!');
    variants.push(v);
    let mut v = base.clone();
    v.messages.insert(0, Message::system("Be brief."));
    variants.push(v);
    let mut v = base.clone();
    v.sampling.max_tokens = 65;
    variants.push(v);
    let mut v = base.clone();
    v.sampling.top_p = Some(0.9);
    variants.push(v);
    let mut v = base.clone();
    v.sampling.stop = vec!["\n".into()];
    variants.push(v);
    let mut v = base.clone();
    v.sampling.seed = Some(7);
    variants.push(v);
    let mut v = base.clone();
    v.n = 2;
    variants.push(v);
    let mut v = base.clone();
    v.logprobs = Some(5);
    variants.push(v);
    let mut v = base.clone();
    v.response_format = ResponseFormat::JsonSchema {
        name: "x".into(),
        schema: serde_json::json!({"type": "object"}),
    };
    variants.push(v);
    let mut keys: Vec<String> = variants
        .iter()
        .map(|r| key(r, at(None, "draft", 1, 0)))
        .collect();
    keys.push(k.clone());
    let other_model = ModelIdentity {
        key: "gguf:abd {}".into(),
        contextual: false,
    };
    keys.push(completion_key(&other_model, &base, at(None, "draft", 1, 0)));
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "every field must change the key"
    );
    // Who asks does not, for a request whose reply is a function of it;
    // nor does a transport retry.
    let mut retried = base.clone();
    retried.context.retry = 2;
    assert_eq!(key(&retried, at(Some("item 9"), "check", 3, 0)), k);
}

#[test]
fn draws_are_keyed_by_their_position() {
    let draw = request(Some(0.7), None);
    let here = key(&draw, at(Some("a\u{1f}0"), "draft", 1, 0));
    assert_eq!(
        here,
        key(&draw, at(Some("a\u{1f}0"), "draft", 1, 0)),
        "a rerun replays"
    );
    for elsewhere in [
        at(Some("a\u{1f}1"), "draft", 1, 0), // another epoch
        at(Some("b\u{1f}0"), "draft", 1, 0), // another item
        at(Some("a\u{1f}0"), "revise", 1, 0),
        at(Some("a\u{1f}0"), "draft", 2, 0),
        at(Some("a\u{1f}0"), "draft", 1, 1), // another sample
    ] {
        assert_ne!(here, key(&draw, elsewhere));
    }
    // A seed, or temperature 0, makes the reply a function of the request.
    for exact in [request(Some(0.7), Some(3)), request(Some(0.0), None)] {
        assert_eq!(
            key(&exact, at(Some("a\u{1f}0"), "draft", 1, 0)),
            key(&exact, at(Some("b\u{1f}5"), "revise", 4, 2))
        );
    }
    // No temperature is the backend's default: a draw.
    let default = request(None, None);
    assert_ne!(
        key(&default, at(None, "draft", 1, 0)),
        key(&default, at(None, "draft", 1, 1))
    );
    // A contextual model (scripted) is always keyed by position.
    let scripted = ModelIdentity {
        key: "scripted:x".into(),
        contextual: true,
    };
    let exact = request(Some(0.0), None);
    assert_ne!(
        completion_key(&scripted, &exact, at(None, "draft", 1, 0)),
        completion_key(&scripted, &exact, at(None, "draft", 2, 0))
    );
}

#[test]
fn damaged_values_are_misses() {
    let c = Completion::from_texts(["four"], Usage::default());
    let text = encode(&c).unwrap();
    assert_eq!(decode::<Completion>(&text), Some(c));
    for cut in [0, 5, 16, 17, text.len() / 2, text.len() - 1] {
        assert_eq!(decode::<Completion>(&text[..cut]), None, "cut at {cut}");
    }
    let flipped = text.replace("four", "five");
    assert_eq!(decode::<Completion>(&flipped), None);
    // A whole value of another shape is not this type.
    assert_eq!(
        decode::<Completion>(&encode(&serde_json::json!([1, 2])).unwrap()),
        None
    );
}

#[test]
fn identities_leave_out_secrets_and_speed_settings() {
    let dir = tempfile::tempdir().unwrap();
    let hash = |p: &Path| -> Result<String, CacheError> {
        Ok(format!("sha({})", p.file_name().unwrap().to_string_lossy()))
    };
    let id = |spec: &str, settings: serde_json::Value| {
        identity(spec, &settings, dir.path(), &hash).unwrap()
    };
    let remote = id(
        "openai:gpt-x@https://user:hunter2@api.example/v1?api_key=sk-123",
        serde_json::json!({"headers": {"Authorization": "Bearer sk-999"}, "api_key_env": "K"}),
    )
    .unwrap();
    assert!(
        !remote.key.contains("hunter2") && !remote.key.contains("sk-"),
        "{}",
        remote.key
    );
    assert!(remote.key.starts_with("openai:gpt-x@"));
    let fast = id(
        "llama:m.gguf",
        serde_json::json!({"threads": 8, "parallel": 4}),
    );
    let slow = id("llama:m.gguf", serde_json::json!({"threads": 1}));
    assert_eq!(fast, slow, "threads and slots do not change replies");
    let templated = id(
        "llama:m.gguf",
        serde_json::json!({"chat_template": "chatml"}),
    );
    assert_ne!(fast, templated, "a chat template does");
    assert!(id("replay:c.jsonl", serde_json::Value::Null).is_none());
    assert!(
        id("scripted:r.yaml", serde_json::Value::Null)
            .unwrap()
            .contextual
    );
}

fn cache_in(dir: &Path, max: u64) -> ResponseCache {
    ResponseCache::open_sqlite(&dir.join("responses.db"), max).unwrap()
}

#[test]
fn sqlite_stores_serves_and_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let value = |i: usize| {
        Completion::from_texts([format!("reply {i} {}", "x".repeat(200))], Usage::default())
    };
    let one = encode(&value(0)).unwrap().len() as u64;
    // Room for about ten entries.
    let cache = cache_in(dir.path(), one * 10 + one / 2);
    for i in 0..8 {
        cache.store_value(&format!("k{i}"), "m", &value(i));
    }
    assert_eq!(cache.lookup::<Completion>("k0", true), Some(value(0)));
    assert_eq!(cache.lookup::<Completion>("nope", true), None);
    // Mark k0 as used later than the rest: the oldest go first.
    std::thread::sleep(std::time::Duration::from_millis(5));
    cache.flush();
    for i in 8..14 {
        cache.store_value(&format!("k{i}"), "m", &value(i));
    }
    let stats = cache.store().stats().unwrap();
    assert!(stats.value_bytes <= one * 10 + one / 2, "{stats:?}");
    assert!(cache.counters().evicted > 0);
    assert!(
        cache.lookup::<Completion>("k0", true).is_some(),
        "recently used stays"
    );
    assert!(
        cache.lookup::<Completion>("k1", true).is_none(),
        "least recently used goes"
    );
    assert!(cache.lookup::<Completion>("k13", true).is_some());
    let c = cache.counters();
    assert_eq!((c.hits, c.writes), (3, 14));
    assert_eq!(cache.store().clear().unwrap(), stats.entries);
    assert_eq!(cache.store().stats().unwrap().entries, 0);
}

#[test]
fn a_damaged_entry_is_a_miss_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(dir.path(), DEFAULT_MAX_BYTES);
    let good = Completion::from_texts(["4"], Usage::default());
    cache.store_value("k", "m", &good);
    // A writer that died half-way, or a bit flipped on disk.
    let text = cache.store().get("k").unwrap().unwrap();
    cache
        .store()
        .put("k", "m", &text[..text.len() - 3], 0)
        .unwrap();
    assert_eq!(cache.lookup::<Completion>("k", true), None);
    assert_eq!(cache.counters().damaged, 1);
    assert_eq!(
        cache.store().get("k").unwrap(),
        None,
        "removed when writing is allowed"
    );
}

#[test]
fn a_foreign_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        ResponseCache::open_sqlite(&path, DEFAULT_MAX_BYTES),
        Err(CacheError::Foreign { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_truncated_database_serves_misses_never_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("responses.db");
    let reply = |i: usize| {
        Completion::from_texts([format!("reply {i} {}", "y".repeat(300))], Usage::default())
    };
    {
        let cache = cache_in(dir.path(), DEFAULT_MAX_BYTES);
        for i in 0..400 {
            cache.store_value(&format!("k{i}"), "m", &reply(i));
        }
    }
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 64 * 1024, "{len}");
    // A file cut short before it is opened is refused as damaged: the CLI
    // then warns and runs without the cache, and `cache clear` replaces it.
    for keep in [len / 3, len / 2, len - 4096, 100] {
        let copy = dir.path().join(format!("cut-{keep}.db"));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&copy, &bytes[..keep as usize]).unwrap();
        match ResponseCache::open_sqlite(&copy, DEFAULT_MAX_BYTES) {
            Err(CacheError::Damaged { .. }) => {}
            Err(e) => panic!("a cut copy ({keep} bytes) is damaged, not: {e}"),
            // One that opens serves only whole entries.
            Ok(cache) => {
                for i in 0..400 {
                    if let Some(c) = cache.lookup::<Completion>(&format!("k{i}"), true) {
                        assert_eq!(c, reply(i));
                    }
                }
            }
        }
    }
    // A file cut short while a cache has it open: every lookup is a whole
    // entry or a miss, never an error or a panic, and writes go on failing
    // quietly (counted).
    let cache = cache_in(dir.path(), DEFAULT_MAX_BYTES);
    assert_eq!(cache.lookup::<Completion>("k399", true), Some(reply(399)));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let mut served = 0;
    for i in 0..400 {
        if let Some(c) = cache.lookup::<Completion>(&format!("k{i}"), true) {
            assert_eq!(c, reply(i));
            served += 1;
        }
    }
    assert!(served < 400, "the cut lost entries");
    assert!(cache.counters().misses > 0);
    cache.store_value("new", "m", &reply(0));
}

#[test]
fn concurrent_writers_of_one_key_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("responses.db");
    // Separate connections, as separate processes have.
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let path = path.clone();
            std::thread::spawn(move || {
                let cache = ResponseCache::open_sqlite(&path, DEFAULT_MAX_BYTES).unwrap();
                for i in 0..50 {
                    let c = Completion::from_texts([format!("same {i}")], Usage::default());
                    cache.store_value(&format!("k{i}"), "m", &c);
                    cache.store_value(&format!("w{w}-{i}"), "m", &c);
                }
                cache.counters()
            })
        })
        .collect();
    for h in handles {
        let c = h.join().unwrap();
        assert_eq!((c.writes, c.errors), (100, 0));
    }
    let cache = ResponseCache::open_sqlite(&path, DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(cache.store().stats().unwrap().entries, 50 + 4 * 50);
    for i in 0..50 {
        let c: Completion = cache.lookup(&format!("k{i}"), false).unwrap();
        assert_eq!(c.choices[0].text, format!("same {i}"));
    }
}

#[test]
fn file_hashes_are_remembered_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(cache_in(dir.path(), DEFAULT_MAX_BYTES));
    let file = dir.path().join("w.gguf");
    std::fs::write(&file, b"weights v1").unwrap();
    let h1 = cache.file_sha256(&file).unwrap();
    assert_eq!(h1.len(), 64);
    let stamp = FileStamp::of(&file).unwrap();
    assert_eq!(cache.store().file_hash(&stamp).unwrap(), Some(h1.clone()));
    std::fs::write(&file, b"weights v2, longer").unwrap();
    let h2 = cache.file_sha256(&file).unwrap();
    assert_ne!(h1, h2);
}
