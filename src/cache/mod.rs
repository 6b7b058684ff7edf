//! The response cache: replies of model calls kept by a hash of everything
//! that decides them, so a rerun pays only for the calls that changed.
//!
//! - [`ResponseCache`]: a store ([`sqlite`], or the results store's
//!   PostgreSQL database through `eval::store::open_cache`) behind a small
//!   blocking trait ([`CacheStore`]), used from async code on
//!   blocking threads; size-bounded (LRU by last use); counters of hits,
//!   misses, writes and damaged entries.
//! - [`Cached`] (crate-internal): the layer the engine puts under its
//!   budget layer, `Retry → Metered → Cached → Timeout → backend`, so a hit
//!   skips timeouts, rate limits and the backend, and metering still sees
//!   (and reports) every call.
//! - [`identity`]: what names a model in a key (a GGUF by its file's
//!   SHA-256, remembered by path, size and modification time; a remote
//!   model by its name and base URL; the settings that change replies).
//!
//! **Sampling rule.** A request at temperature 0 or with a seed is keyed by
//! its content alone: the cached reply is the reply. Any other request is
//! a draw, keyed also by its position (the eval unit — item and epoch —,
//! node, round, repair attempt and sample index), so a rerun replays the
//! same draws and a new epoch or sample draws anew, and distinct samples
//! never collapse into one. A model whose replies depend on who asks (the
//! scripted backend) is always keyed by position.
//!
//! **Invariants:** a damaged, truncated or half-written entry (or store) is
//! a miss, never an error and never a wrong reply (every value carries a
//! checksum, checked before it is parsed); API keys, headers and base-URL
//! passwords never enter a key or a value; a store failure is logged once
//! and the call goes to the model.

pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::backend::{
    BackendError, Completion, CompletionRequest, EmbeddingRequest, Embeddings, LanguageModel,
    Message, ModelSpec, ResponseFormat, SamplingParams,
};

/// How a run uses the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Serve hits, store misses.
    #[default]
    On,
    /// Neither read nor write.
    Off,
    /// Serve hits, store nothing.
    ReadOnly,
    /// Read nothing, store every reply (replacing what was there).
    Refresh,
}

impl CacheMode {
    pub fn reads(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::ReadOnly)
    }
    pub fn writes(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::Refresh)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::On => "on",
            CacheMode::Off => "off",
            CacheMode::ReadOnly => "read-only",
            CacheMode::Refresh => "refresh",
        }
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<CacheMode, String> {
        Ok(match s {
            "on" => CacheMode::On,
            "off" => CacheMode::Off,
            "read-only" | "read_only" => CacheMode::ReadOnly,
            "refresh" => CacheMode::Refresh,
            _ => return Err(format!("`{s}`: expected on, off, read-only or refresh")),
        })
    }
}

/// A cache that could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    #[error("response cache {location}: {message}")]
    Db { location: String, message: String },
    /// Not a database, or a damaged one (`redraft cache clear` replaces it).
    #[error("response cache {location}: {message}")]
    Damaged { location: String, message: String },
    #[error(
        "response cache {location}: the file is not a redraft response cache (refusing to change it)"
    )]
    Foreign { location: String },
    #[error("model identity: {0}")]
    Identity(String),
}

/// What a store holds, for `redraft cache stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheStats {
    pub location: String,
    pub entries: u64,
    /// Bytes of the stored values (keys and indexes not counted).
    pub value_bytes: u64,
    /// Bytes the store takes on disk, where it can tell.
    pub disk_bytes: Option<u64>,
    /// Entries per model identity.
    pub models: Vec<(String, u64)>,
}

/// What one process did with its cache, for summaries and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheCounters {
    pub hits: u64,
    pub misses: u64,
    pub writes: u64,
    /// Entries that failed their checksum or did not parse (served as misses).
    pub damaged: u64,
    /// Store operations that failed (each served as a miss or skipped).
    pub errors: u64,
    /// Entries removed to stay under the size bound.
    pub evicted: u64,
}

/// A store of cache entries: blocking calls, made on blocking threads.
pub trait CacheStore: Send + Sync {
    /// Where it is (never with a password).
    fn location(&self) -> String;
    /// The stored text of `key`, if any.
    fn get(&self, key: &str) -> Result<Option<String>, CacheError>;
    /// Stores (or replaces) an entry.
    fn put(&self, key: &str, model: &str, value: &str, now_ms: i64) -> Result<(), CacheError>;
    /// Marks entries as used now (LRU order).
    fn touch(&self, keys: &[String], now_ms: i64) -> Result<(), CacheError>;
    /// Removes an entry (a damaged one).
    fn remove(&self, key: &str) -> Result<(), CacheError>;
    fn stats(&self) -> Result<CacheStats, CacheError>;
    /// Bytes of the stored values.
    fn value_bytes(&self) -> Result<u64, CacheError>;
    /// Removes every entry; returns how many there were.
    fn clear(&self) -> Result<u64, CacheError>;
    /// Removes the least recently used entries until the values take at
    /// most `max_bytes`; returns how many were removed.
    fn prune(&self, max_bytes: u64) -> Result<u64, CacheError>;
    /// A file's remembered SHA-256, if its path, size and mtime still match.
    fn file_hash(&self, file: &FileStamp) -> Result<Option<String>, CacheError>;
    fn remember_file_hash(&self, file: &FileStamp, sha256: &str) -> Result<(), CacheError>;
}

/// A file as it is now: what a remembered hash must still match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let path = std::fs::canonicalize(path)?;
        let meta = std::fs::metadata(&path)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        Ok(FileStamp {
            path: path.display().to_string(),
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// The default size bound (`--cache-max-size`): 2 GiB of values.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// The default SQLite cache: `$REDRAFT_CACHE/responses.db`, default
/// `~/.cache/redraft/responses.db`.
pub fn default_path() -> PathBuf {
    crate::backend::cache_dir().join("responses.db")
}

/// Touches are written in batches of this many (or at the next write).
const TOUCH_BATCH: usize = 256;

/// A response cache: a store, its size bound and this process's counters.
pub struct ResponseCache {
    store: Arc<dyn CacheStore>,
    max_bytes: u64,
    /// Bytes of values, as last counted plus what this process wrote.
    bytes: AtomicU64,
    touched: Mutex<Vec<String>>,
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    damaged: AtomicU64,
    errors: AtomicU64,
    evicted: AtomicU64,
    warned: AtomicBool,
}

impl ResponseCache {
    /// A cache over `store`, holding at most `max_bytes` of values.
    pub fn new(store: Arc<dyn CacheStore>, max_bytes: u64) -> ResponseCache {
        let bytes = store.value_bytes().unwrap_or(0);
        ResponseCache {
            store,
            max_bytes,
            bytes: AtomicU64::new(bytes),
            touched: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            damaged: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }

    /// Opens (or creates) the SQLite cache file at `path`.
    pub fn open_sqlite(path: &Path, max_bytes: u64) -> Result<ResponseCache, CacheError> {
        Ok(ResponseCache::new(
            Arc::new(sqlite::SqliteCache::open(path)?),
            max_bytes,
        ))
    }

    pub fn location(&self) -> String {
        self.store.location()
    }

    pub fn store(&self) -> &dyn CacheStore {
        &*self.store
    }

    pub fn counters(&self) -> CacheCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheCounters {
            hits: get(&self.hits),
            misses: get(&self.misses),
            writes: get(&self.writes),
            damaged: get(&self.damaged),
            errors: get(&self.errors),
            evicted: get(&self.evicted),
        }
    }

    /// A store failure: counted, logged once, never passed on.
    fn failed(&self, e: &CacheError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("{e}; calls it cannot serve go to the model");
        }
    }

    /// The entry of `key`, if present and intact. A damaged one counts as
    /// `damaged` and is removed where `repair` allows.
    pub fn lookup<T: serde::de::DeserializeOwned>(&self, key: &str, repair: bool) -> Option<T> {
        let text = match self.store.get(key) {
            Ok(Some(t)) => t,
            Ok(None) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(e) => {
                self.failed(&e);
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        match decode(&text) {
            Some(v) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                let full = {
                    let mut t = self.touched.lock().unwrap_or_else(|e| e.into_inner());
                    t.push(key.to_string());
                    t.len() >= TOUCH_BATCH
                };
                if full {
                    self.flush();
                }
                Some(v)
            }
            None => {
                self.damaged.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                if repair {
                    let _ = self.store.remove(key);
                }
                None
            }
        }
    }

    /// Stores `value` under `key`, then keeps the cache under its bound.
    pub fn store_value<T: Serialize>(&self, key: &str, model: &str, value: &T) {
        let Some(text) = encode(value) else {
            return;
        };
        self.flush();
        match self.store.put(key, model, &text, now_ms()) {
            Ok(()) => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                let bytes = self.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                if bytes + text.len() as u64 > self.max_bytes {
                    self.shrink();
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Removes least recently used entries down to 90% of the bound, so
    /// that eviction runs once per many writes, not on every one.
    fn shrink(&self) {
        let target = self.max_bytes / 10 * 9;
        match self.store.prune(target) {
            Ok(n) => {
                self.evicted.fetch_add(n, Ordering::Relaxed);
                if let Ok(b) = self.store.value_bytes() {
                    self.bytes.store(b, Ordering::Relaxed);
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Writes pending last-use times.
    pub fn flush(&self) {
        let keys = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|e| e.into_inner()));
        if !keys.is_empty() {
            if let Err(e) = self.store.touch(&keys, now_ms()) {
                self.failed(&e);
            }
        }
    }

    /// The identity of a model opened from `spec` (see [`identity`]).
    pub fn identity(
        &self,
        spec: &str,
        settings: &serde_json::Value,
        base: &Path,
    ) -> Result<Option<ModelIdentity>, CacheError> {
        identity(spec, settings, base, &|path| self.file_sha256(path))
    }

    /// A file's SHA-256: remembered by path, size and mtime, computed once.
    pub fn file_sha256(&self, path: &Path) -> Result<String, CacheError> {
        let stamp = FileStamp::of(path)
            .map_err(|e| CacheError::Identity(format!("{}: {e}", path.display())))?;
        if let Ok(Some(h)) = self.store.file_hash(&stamp) {
            return Ok(h);
        }
        let hash = sha256_file(path)
            .map_err(|e| CacheError::Identity(format!("{}: {e}", path.display())))?;
        if let Err(e) = self.store.remember_file_hash(&stamp, &hash) {
            self.failed(&e);
        }
        Ok(hash)
    }
}

impl Drop for ResponseCache {
    fn drop(&mut self) {
        self.flush();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A value as stored: `FNV-1a of the JSON (16 hex digits) ':' JSON`
/// (`None` for a value JSON cannot hold: it is not stored).
fn encode<T: Serialize>(value: &T) -> Option<String> {
    let json = serde_json::to_string(value).ok()?;
    Some(format!(
        "{:016x}:{json}",
        crate::hash::fnv1a(json.as_bytes())
    ))
}

/// The value, if the text is whole: its checksum matches and it parses.
fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    let (sum, json) = text.split_at_checked(16)?;
    let json = json.strip_prefix(':')?;
    let sum = u64::from_str_radix(sum, 16).ok()?;
    (sum == crate::hash::fnv1a(json.as_bytes()))
        .then(|| serde_json::from_str(json).ok())
        .flatten()
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What names a model in cache keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// E.g. `gguf:SHA256 {settings}` or `openai:MODEL@URL`.
    pub key: String,
    /// Replies depend on who asks (node, round), not only on the request:
    /// every call is keyed by its position.
    pub contextual: bool,
}

/// Settings of a llama model that do not change what it replies (how
/// fast, on what, with how many slots), left out of its identity.
const LLAMA_SPEED_SETTINGS: &[&str] = &[
    "context_size",
    "threads",
    "batch_size",
    "gpu_layers",
    "parallel",
    "max_sequences",
    "prefix_cache",
    "draft",
    "draft_max",
];

/// The identity of the model `spec` opens with `settings`, or `None` for a
/// model that must not be cached (`replay:`, itself a recording).
///
/// A GGUF (`llama:`, `hf:`) is its file's SHA-256 (`file_hash`, which the
/// cache remembers) plus the settings that change replies; an
/// OpenAI-compatible model is its name, base URL (password and key query
/// values masked) and `strict_schema`, never its headers or key; a
/// scripted model is its replies file's SHA-256 and is contextual.
pub fn identity(
    spec: &str,
    settings: &serde_json::Value,
    base: &Path,
    file_hash: &dyn Fn(&Path) -> Result<String, CacheError>,
) -> Result<Option<ModelIdentity>, CacheError> {
    let parsed = ModelSpec::parse(spec).map_err(|e| CacheError::Identity(e.to_string()))?;
    let plain = |key: String| {
        Ok(Some(ModelIdentity {
            key,
            contextual: false,
        }))
    };
    match parsed {
        ModelSpec::Replay { .. } => Ok(None),
        ModelSpec::Scripted { path } => Ok(Some(ModelIdentity {
            key: format!("scripted:{}", file_hash(&base.join(path))?),
            contextual: true,
        })),
        ModelSpec::OpenAi { model, base_url } => {
            let url = base_url.as_deref().unwrap_or("https://api.openai.com/v1");
            let strict = settings.get("strict_schema").cloned().unwrap_or_default();
            plain(format!(
                "openai:{model}@{} strict={strict}",
                crate::redact::url(url.trim_end_matches('/'))
            ))
        }
        ModelSpec::Llama { path } => {
            let file = match crate::backend::named_model(&path) {
                Some((file, _)) => file,
                None => base.join(path),
            };
            plain(gguf_identity(&file_hash(&file)?, settings))
        }
        #[cfg(feature = "llama")]
        ModelSpec::Hub { file } => {
            let path =
                crate::backend::hf::resolve(&file, &crate::backend::hf::HubConfig::from_env())
                    .map_err(|e| CacheError::Identity(e.to_string()))?;
            plain(gguf_identity(&file_hash(&path)?, settings))
        }
        // Without the llama backend such a model cannot be opened at all.
        #[cfg(not(feature = "llama"))]
        ModelSpec::Hub { .. } => Ok(None),
    }
}

fn gguf_identity(sha256: &str, settings: &serde_json::Value) -> String {
    let mut kept = serde_json::Map::new();
    if let Some(map) = settings.as_object() {
        for (k, v) in map {
            if !LLAMA_SPEED_SETTINGS.contains(&k.as_str()) {
                kept.insert(k.clone(), v.clone());
            }
        }
    }
    format!("gguf:{sha256} {}", serde_json::Value::Object(kept))
}

/// Where a call sits in a run: what keys a draw (see the module docs).
#[derive(Debug, Clone, Serialize)]
pub struct Position<'a> {
    /// The eval unit (item and epoch), if the run is one.
    pub unit: Option<&'a str>,
    pub node: &'a str,
    pub round: u32,
    pub attempt: u32,
    pub sample: u32,
}

/// Version of the key's layout: bump to orphan every old entry.
const KEY_VERSION: u32 = 1;

#[derive(Serialize)]
struct CompletionKey<'a> {
    v: u32,
    model: &'a str,
    messages: &'a [Message],
    sampling: &'a SamplingParams,
    n: u32,
    logprobs: Option<u8>,
    response_format: &'a ResponseFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<Position<'a>>,
}

#[derive(Serialize)]
struct EmbeddingKey<'a> {
    v: u32,
    model: &'a str,
    embed: &'a [String],
}

/// Whether a request's reply is a function of the request: temperature 0,
/// or a seed.
pub fn replays_exactly(s: &SamplingParams) -> bool {
    s.seed.is_some() || s.temperature == Some(0.0)
}

/// The key of a completion request: SHA-256 (hex) of its canonical JSON.
pub fn completion_key(
    model: &ModelIdentity,
    req: &CompletionRequest,
    position: Position<'_>,
) -> String {
    let keyed_by_position = model.contextual || !replays_exactly(&req.sampling);
    sha256_json(&CompletionKey {
        v: KEY_VERSION,
        model: &model.key,
        messages: &req.messages,
        sampling: &req.sampling,
        n: req.n,
        logprobs: req.logprobs,
        response_format: &req.response_format,
        position: keyed_by_position.then_some(position),
    })
}

/// The key of an embedding request (embeddings do not sample).
pub fn embedding_key(model: &ModelIdentity, req: &EmbeddingRequest) -> String {
    sha256_json(&EmbeddingKey {
        v: KEY_VERSION,
        model: &model.key,
        embed: &req.texts,
    })
}

fn sha256_json<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).expect("keys serialise");
    hex(&Sha256::digest(&json))
}

/// The cache as a layer around one call's model (built per call by the
/// engine, under its budget layer). Sets `hit` when it served the call.
pub(crate) struct Cached<'a> {
    pub inner: &'a dyn LanguageModel,
    pub cache: &'a Arc<ResponseCache>,
    pub mode: CacheMode,
    pub model: &'a ModelIdentity,
    pub unit: Option<&'a str>,
    /// The sample's index among a fanned-out `n`.
    pub sample: u32,
    pub hit: &'a AtomicBool,
}

impl Cached<'_> {
    /// Serves `key` from the cache, else makes the call (only then: a
    /// model's future may do work as soon as it is made) and stores it.
    async fn through<'s, T>(
        &'s self,
        key: String,
        call: impl FnOnce() -> BoxFuture<'s, Result<T, BackendError>>,
        usable: impl Fn(&T) -> bool,
    ) -> Result<T, BackendError>
    where
        T: Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        let cache = self.cache.clone();
        if self.mode.reads() {
            let (k, repair) = (key.clone(), self.mode.writes());
            let found = tokio::task::spawn_blocking(move || cache.lookup::<T>(&k, repair))
                .await
                .ok()
                .flatten();
            if let Some(v) = found.filter(|v| usable(v)) {
                self.hit.store(true, Ordering::Relaxed);
                return Ok(v);
            }
        }
        let value = call().await?;
        if let (true, Ok(json)) = (self.mode.writes(), serde_json::to_value(&value)) {
            let cache = self.cache.clone();
            let model = self.model.key.clone();
            let _ =
                tokio::task::spawn_blocking(move || cache.store_value(&key, &model, &json)).await;
        }
        Ok(value)
    }
}

impl LanguageModel for Cached<'_> {
    crate::backend::forward_to_inner!(id, capabilities, estimate);

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        let key = completion_key(
            self.model,
            req,
            Position {
                unit: self.unit,
                node: &req.context.node,
                round: req.context.round,
                attempt: req.context.attempt,
                sample: self.sample,
            },
        );
        let n = req.n as usize;
        Box::pin(self.through(
            key,
            || self.inner.complete(req),
            move |c: &Completion| c.choices.len() == n,
        ))
    }

    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        let key = embedding_key(self.model, req);
        let n = req.texts.len();
        Box::pin(self.through(
            key,
            || self.inner.embed(req),
            move |e: &Embeddings| e.vectors.len() == n,
        ))
    }
}

#[cfg(test)]
mod tests;
