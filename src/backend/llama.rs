//! The in-process llama.cpp backend (`llama:PATH.gguf`, feature `llama`).
//!
//! One OS thread per model owns the llama.cpp context and serves requests
//! from a channel, replying on a oneshot: blocking FFI never runs on the
//! async runtime. Requests are decoded together by continuous batching
//! (`batching.rs`): up to `parallel` sequences per decode call, prompts
//! chunked in beside the generating ones, each slot keeping its KV cells
//! for the next call that shares their prefix. The model itself (weights,
//! vocabulary) is shared so that prompt tokens can be counted exactly on
//! the caller's side.
//!
//! - Chat template from the GGUF metadata (override: `chat_template`); a
//!   plain "Role: text" fallback for base models without one.
//! - Sampling: temperature (greedy at 0), top-p, top-k, min-p, repetition
//!   penalty, seed, stop strings, max tokens.
//! - Structured output: the JSON Schema becomes a GBNF grammar enforced while
//!   decoding.
//! - Logprobs: top-k log-probabilities of the raw distribution per token.
//! - `n` samples decode together as parallel sequences that share the
//!   prompt's KV cells (copied, not recomputed).
//! - Prefix reuse: each slot keeps the KV cells of its last call; a call
//!   that shares a prefix with any slot only decodes the rest
//!   (`cached_tokens`).
//!
//! **Invariants:** nothing here panics on bad input: a missing, non-GGUF or
//! truncated file is a `Config` error before llama.cpp sees it, a prompt that
//! does not fit is a `ContextLength` error.

use std::io::Read as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use futures_util::future::BoxFuture;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel as Weights};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde::Deserialize;

pub use super::batching::BatchStats;
use super::batching::{self, DecodeFailure, Draft, Scheduler};
use super::*;

/// Backend-specific settings (`models.NAME.settings`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlamaSettings {
    /// Context size in tokens (default 4096, at most the model's training context).
    pub context_size: Option<u32>,
    /// Threads for generation and prompt processing (default 1).
    pub threads: Option<i32>,
    /// Batch size for prompt processing (default 512).
    pub batch_size: Option<u32>,
    /// Layers offloaded to the GPU (default: all with feature `cuda`, else 0).
    pub gpu_layers: Option<u32>,
    /// Default sampling seed when a request gives none.
    pub seed: Option<u32>,
    /// A chat template (llama.cpp's built-in names, e.g. `chatml`, or a Jinja source).
    pub chat_template: Option<String>,
    /// Top-k for sampling (default 40; 0 disables).
    pub top_k: Option<i32>,
    /// Min-p for sampling (default 0.05; 0 disables).
    pub min_p: Option<f32>,
    /// Repetition penalty (default 1.0 = off).
    pub repeat_penalty: Option<f32>,
    /// Sequences decoded together (slots): concurrent calls and the `n`
    /// samples of a call each take one (default: a slot per 512 tokens of
    /// context, 4 to 16; 8 at the default context).
    pub parallel: Option<u32>,
    /// The older name of `parallel`.
    pub max_sequences: Option<u32>,
    /// Reuse the KV cells of the longest prefix a call shares with what a
    /// slot holds (default true).
    pub prefix_cache: Option<bool>,
    /// A small GGUF model of the same vocabulary that proposes tokens for
    /// this one to verify (speculative decoding): a path, relative to the
    /// workflow, or a model name such as `qwen-coder-0.5b`.
    pub draft: Option<PathBuf>,
    /// The most tokens the draft proposes per sequence and step (default 3,
    /// the best measured on CPU; see docs/benchmarks.md).
    pub draft_max: Option<u32>,
}

/// Resolves the paths in llama settings (`draft`) against `base_dir`.
pub(crate) fn resolve_settings(settings: &serde_json::Value, base_dir: &Path) -> serde_json::Value {
    let mut s = settings.clone();
    if let Some(draft) = s.get_mut("draft") {
        if let Some(p) = draft.as_str().map(PathBuf::from) {
            if p.is_relative() && super::named_model(&p).is_none() {
                *draft = serde_json::Value::String(base_dir.join(p).to_string_lossy().into_owned());
            }
        }
    }
    s
}

/// The llama.cpp backend is process-global: initialise it once.
fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Checks that a file is a GGUF file before llama.cpp opens it.
fn check_gguf(path: &Path) -> Result<(), String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut magic = [0u8; 8];
    let n = f
        .read(&mut magic)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if n < 8 || &magic[..4] != b"GGUF" {
        return Err(format!("{} is not a GGUF model file", path.display()));
    }
    let version = u32::from_le_bytes([magic[4], magic[5], magic[6], magic[7]]);
    if !(1..=3).contains(&version) {
        return Err(format!(
            "{} has unsupported GGUF version {version}",
            path.display()
        ));
    }
    Ok(())
}

/// The embedded default model's path (`llama:default`, installed by
/// `scripts/fetch-qwen.sh 1.5b`).
pub fn default_model_path() -> PathBuf {
    model_file(Path::new("default")).0
}

/// The test suite's model (`llama:smollm2`, installed by
/// `scripts/fetch-model.sh`): small enough for real-model tests in CI.
pub fn test_model_path() -> PathBuf {
    model_file(Path::new("smollm2")).0
}

/// A model's file: a name of [`super::NAMED_MODELS`] is the file in the
/// model cache, with the command that installs it; else the path itself.
fn model_file(path: &Path) -> (PathBuf, Option<&'static str>) {
    match super::named_model(path) {
        Some((file, fetch)) => (file, Some(fetch)),
        None => (path.to_path_buf(), None),
    }
}

enum Job {
    /// A completion's samples from the given index on (`n` of them).
    Complete(CompletionRequest, u32, Reply),
    Embed(
        Vec<String>,
        tokio::sync::oneshot::Sender<Result<Embeddings, BackendError>>,
    ),
}

/// A GGUF model run in-process.
pub struct LlamaModel {
    id: String,
    weights: Arc<Weights>,
    template: Option<LlamaChatTemplate>,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Parallel sequences of the context (the most samples of one job).
    sequences: u32,
    stats: Arc<Mutex<BatchStats>>,
}

impl LlamaModel {
    /// Loads the model and starts its worker thread. `path` may be a name
    /// of [`super::NAMED_MODELS`] (`default`: the embedded default model).
    pub fn open(path: &Path, settings: &serde_json::Value) -> Result<LlamaModel, BackendError> {
        let (path, fetch) = model_file(path);
        let id = format!(
            "llama:{}",
            path.file_name().map_or_else(
                || path.display().to_string(),
                |f| f.to_string_lossy().into_owned()
            )
        );
        let config = |m: String| BackendError::new(&id, ErrorKind::Config, m);
        let s: LlamaSettings = if settings.is_null() {
            LlamaSettings::default()
        } else {
            serde_json::from_value(settings.clone())
                .map_err(|e| config(format!("settings: {e}")))?
        };
        if !path.exists() {
            let hint = fetch.map_or_else(String::new, |f| format!("; install it with {f}"));
            return Err(config(format!(
                "model file {} does not exist{hint}",
                path.display()
            )));
        }
        check_gguf(&path).map_err(config)?;
        let backend = backend().map_err(config)?;
        let gpu_layers = s
            .gpu_layers
            .unwrap_or(if cfg!(feature = "cuda") { u32::MAX } else { 0 });
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let weights = Arc::new(
            Weights::load_from_file(backend, &path, &params).map_err(|e| {
                config(format!(
                    "cannot load {} (corrupt or truncated GGUF?): {e}",
                    path.display()
                ))
            })?,
        );
        let draft = match &s.draft {
            Some(p) => Some(open_draft(p, &weights, &params).map_err(config)?),
            None => None,
        };
        let draft_max = s.draft_max.unwrap_or(3).min(64) as usize;
        let template = match &s.chat_template {
            Some(t) => {
                Some(LlamaChatTemplate::new(t).map_err(|e| config(format!("chat_template: {e}")))?)
            }
            None => weights.chat_template(None).ok(),
        };
        let n_ctx = s
            .context_size
            .unwrap_or(4096)
            .min(weights.n_ctx_train().max(512));
        let threads = s.threads.unwrap_or(1).max(1);
        let sequences = s
            .parallel
            .or(s.max_sequences)
            .unwrap_or((n_ctx / 512).clamp(4, 16))
            .clamp(1, 64);
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(s.batch_size.unwrap_or(512).max(1))
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_n_seq_max(sequences)
            // One KV buffer for all sequences: a single-sample call gets the
            // whole context, not `context_size / max_sequences` of it.
            .with_kv_unified(true);
        let stats = Arc::new(Mutex::new(BatchStats::default()));
        let draft_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx + sequences * (draft_max as u32 + 1)))
            .with_n_batch(s.batch_size.unwrap_or(512).max(1))
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_n_seq_max(sequences)
            .with_kv_unified(true);
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let embed_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_ubatch(n_ctx)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_embeddings(true)
            .with_pooling_type(llama_cpp_2::context::params::LlamaPoolingType::Mean);
        let worker = Worker {
            id: id.clone(),
            weights: weights.clone(),
            template: template.clone(),
            embed_params,
            sampling: SamplerDefaults {
                seed: s.seed.unwrap_or(0x5eed),
                top_k: s.top_k.unwrap_or(40),
                min_p: s.min_p.unwrap_or(0.05),
                repeat_penalty: s.repeat_penalty.unwrap_or(1.0),
            },
            sequences,
            prefix_cache: s.prefix_cache.unwrap_or(true),
            stats: stats.clone(),
            draft: draft.map(|w| (w, draft_params, draft_max)),
        };
        std::thread::Builder::new()
            .name(format!("redraft-{id}"))
            .spawn(move || worker.run(backend, ctx_params, rx, ready_tx))
            .map_err(|e| config(format!("cannot start the model thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| config("the model thread stopped while starting".into()))?
            .map_err(config)?;
        Ok(LlamaModel {
            id,
            weights,
            template,
            jobs: Mutex::new(tx),
            sequences,
            stats,
        })
    }

    /// What the batching scheduler has done so far (decode calls, tokens
    /// decoded and reused, the most sequences and KV cells at once).
    pub fn batch_stats(&self) -> BatchStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LlamaModel {
    /// Sends a job to the model thread and waits for its reply.
    async fn ask<T>(
        &self,
        job: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, BackendError>>) -> Job,
    ) -> Result<T, BackendError> {
        let stopped = || {
            BackendError::new(
                &self.id,
                ErrorKind::Permanent,
                "the model thread has stopped",
            )
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job(tx));
        if sent.is_err() {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl LanguageModel for LlamaModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            let n = req.n.max(1);
            if n <= self.sequences {
                return self.ask(|tx| Job::Complete(req.clone(), 0, tx)).await;
            }
            // More samples than slots: groups of `parallel`, queued together
            // (each group starts when the slots are free), each sample
            // seeded by its index as if decoded at once.
            let groups = (0..n).step_by(self.sequences as usize).map(|first| {
                let mut part = req.clone();
                part.n = self.sequences.min(n - first);
                async move { self.ask(|tx| Job::Complete(part, first, tx)).await }
            });
            let mut all = Completion {
                choices: Vec::with_capacity(n as usize),
                usage: Usage::default(),
                usage_estimated: false,
            };
            for part in futures_util::future::join_all(groups).await {
                let part = part?;
                all.choices.extend(part.choices);
                all.usage.prompt_tokens += part.usage.prompt_tokens;
                all.usage.completion_tokens += part.usage.completion_tokens;
                all.usage.cached_tokens += part.usage.cached_tokens;
            }
            Ok(all)
        })
    }

    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        Box::pin(async move { self.ask(|tx| Job::Embed(req.texts.clone(), tx)).await })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            logprobs: true,
            structured_output: true,
            embeddings: true,
            native_n: true,
        }
    }

    fn estimate_prompt_tokens(&self, req: &CompletionRequest) -> u64 {
        match render_prompt(&self.weights, self.template.as_ref(), &self.id, req) {
            Ok(tokens) => tokens.len() as u64,
            Err(_) => req
                .messages
                .iter()
                .map(|m| m.content.len() as u64 / 3 + 4)
                .sum(),
        }
    }
}

#[derive(Clone, Copy)]
struct SamplerDefaults {
    seed: u32,
    top_k: i32,
    min_p: f32,
    repeat_penalty: f32,
}

/// The thread that owns the context.
struct Worker {
    id: String,
    weights: Arc<Weights>,
    template: Option<LlamaChatTemplate>,
    /// Parameters of the embedding context, created on first use.
    embed_params: LlamaContextParams,
    sampling: SamplerDefaults,
    sequences: u32,
    prefix_cache: bool,
    stats: Arc<Mutex<BatchStats>>,
    /// The draft model, its context's parameters and `draft_max`.
    draft: Option<(Arc<Weights>, LlamaContextParams, usize)>,
}

impl Worker {
    fn run(
        self,
        backend: &'static LlamaBackend,
        params: LlamaContextParams,
        jobs: mpsc::Receiver<Job>,
        ready: mpsc::Sender<Result<(), String>>,
    ) {
        let weights = self.weights.clone();
        let ctx = match weights.new_context(backend, params) {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot create a context: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let n_batch = ctx.n_batch() as usize;
        let mut slots = Slots {
            batch: LlamaBatch::new(n_batch.max(self.sequences as usize), self.sequences as i32),
            ctx,
            weights: &weights,
        };
        let mut scheduler = Scheduler::new(&self.id, self.sequences as usize, self.prefix_cache)
            .publish_to(self.stats.clone());
        // The draft's context; one that cannot be made leaves speculation off.
        let draft_weights = self.draft.as_ref().map(|(w, _, _)| w.clone());
        let mut draft = match (&self.draft, &draft_weights) {
            (Some((_, params, max)), Some(w)) => match w.new_context(backend, params.clone()) {
                Ok(ctx) => {
                    scheduler = scheduler.with_draft_max(*max);
                    Some(DraftSlots {
                        batch: LlamaBatch::new(
                            (ctx.n_batch() as usize).max(self.sequences as usize),
                            self.sequences as i32,
                        ),
                        ctx,
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the draft model's context; decoding without it");
                    None
                }
            },
            _ => None,
        };
        let mut embed_ctx: Option<LlamaContext<'_>> = None;
        loop {
            // Wait for work when there is none; else take what arrived and
            // decode one step (new requests join the next batch).
            let first = if scheduler.idle() {
                match jobs.recv() {
                    Ok(job) => Some(job),
                    Err(_) => break,
                }
            } else {
                None
            };
            for job in first
                .into_iter()
                .chain(std::iter::from_fn(|| jobs.try_recv().ok()))
            {
                match job {
                    Job::Embed(texts, reply) => {
                        if embed_ctx.is_none() {
                            match weights.new_context(backend, self.embed_params.clone()) {
                                Ok(c) => embed_ctx = Some(c),
                                Err(e) => {
                                    let _ = reply.send(Err(self.err(
                                        ErrorKind::Config,
                                        format!("cannot create an embedding context: {e}"),
                                    )));
                                    continue;
                                }
                            }
                        }
                        if let Some(ctx) = embed_ctx.as_mut() {
                            let result = self.embed(ctx, &texts, &|| reply.is_closed());
                            let _ = reply.send(result);
                        }
                    }
                    Job::Complete(req, first, reply) => {
                        // A caller that went away before its job starts it not.
                        if reply.is_closed() {
                            continue;
                        }
                        match self.request(&req, first, reply) {
                            Ok(r) => scheduler.submit(r),
                            Err((reply, e)) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                }
            }
            scheduler.step_with(&mut slots, draft.as_mut());
        }
    }

    /// A completion request as the scheduler takes it: the prompt's
    /// tokens, a sampler per sample, and the caller's channel (whose
    /// closing stops the request at the next step).
    #[allow(clippy::result_large_err)]
    fn request(
        &self,
        req: &CompletionRequest,
        first_sample: u32,
        reply: Reply,
    ) -> Result<batching::Request<LlamaSampler>, (Reply, BackendError)> {
        let tokens = match render_prompt(&self.weights, self.template.as_ref(), &self.id, req) {
            Ok(t) => t,
            Err(e) => return Err((reply, e)),
        };
        let grammar = match &req.response_format {
            ResponseFormat::JsonSchema { schema, .. } => {
                match llama_cpp_2::json_schema_to_grammar(&schema.to_string()) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        let e =
                            self.err(ErrorKind::Permanent, format!("JSON Schema to grammar: {e}"));
                        return Err((reply, e));
                    }
                }
            }
            ResponseFormat::Text => None,
        };
        // Parallel samples each take a slot (`complete` sends at most
        // `parallel` at once).
        let samplers = match (0..req.n.max(1))
            .map(|i| self.sampler(req, grammar.as_deref(), first_sample + i))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(s) => s,
            Err(e) => return Err((reply, e)),
        };
        let reply = Arc::new(Mutex::new(Some(reply)));
        let watched = reply.clone();
        Ok(batching::Request {
            tokens: tokens.iter().map(|t| t.0).collect(),
            samplers,
            max_tokens: req.sampling.max_tokens as usize,
            stop: req.sampling.stop.clone(),
            logprobs: req.logprobs.map(u32::from),
            gone: Box::new(move || {
                watched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_none_or(|r| r.is_closed())
            }),
            reply: Box::new(move |result| {
                if let Some(r) = reply.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = r.send(result);
                }
            }),
        })
    }

    fn err(&self, kind: ErrorKind, message: impl Into<String>) -> BackendError {
        BackendError::new(&self.id, kind, message)
    }

    fn sampler(
        &self,
        req: &CompletionRequest,
        grammar: Option<&str>,
        index: u32,
    ) -> Result<LlamaSampler, BackendError> {
        let d = self.sampling;
        let mut chain = Vec::new();
        if let Some(g) = grammar {
            chain.push(
                LlamaSampler::grammar(&self.weights, g, "root").map_err(|e| {
                    self.err(ErrorKind::Permanent, format!("JSON Schema grammar: {e}"))
                })?,
            );
        }
        if d.repeat_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(
                self.weights.vocab().n_tokens(),
                64,
                d.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        let temperature = req.sampling.temperature.unwrap_or(0.8);
        if temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if d.top_k > 0 {
                chain.push(LlamaSampler::top_k(d.top_k));
            }
            if let Some(p) = req.sampling.top_p.filter(|p| *p < 1.0) {
                chain.push(LlamaSampler::top_p(p, 1));
            }
            if d.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(d.min_p, 1));
            }
            chain.push(LlamaSampler::temp(temperature));
            let seed = req
                .sampling
                .seed
                .map_or(d.seed, |s| s as u32)
                .wrapping_add(index);
            chain.push(LlamaSampler::dist(seed));
        }
        Ok(LlamaSampler::chain_simple(chain))
    }

    /// The error of a job whose caller stopped waiting (nobody reads it).
    fn abandoned(&self) -> BackendError {
        self.err(ErrorKind::Transient, "the caller stopped waiting")
    }

    /// Mean-pooled, L2-normalised embeddings, one text at a time.
    fn embed(
        &self,
        ctx: &mut LlamaContext<'_>,
        texts: &[String],
        gone: &dyn Fn() -> bool,
    ) -> Result<Embeddings, BackendError> {
        let vocab = self.weights.vocab();
        let n_ctx = ctx.n_ctx() as usize;
        let mut vectors = Vec::with_capacity(texts.len());
        let mut prompt_tokens = 0;
        for text in texts {
            if gone() {
                return Err(self.abandoned());
            }
            let tokens = vocab.tokenize(text.as_bytes(), true, false);
            if tokens.is_empty() {
                return Err(self.err(ErrorKind::Permanent, "cannot embed an empty text"));
            }
            if tokens.len() > n_ctx {
                return Err(self.err(
                    ErrorKind::ContextLength,
                    format!(
                        "a text of {} tokens exceeds the context size ({n_ctx})",
                        tokens.len()
                    ),
                ));
            }
            prompt_tokens += tokens.len() as u64;
            ctx.clear_kv_cache();
            let mut batch = LlamaBatch::new(tokens.len(), 1);
            for (i, t) in tokens.iter().enumerate() {
                batch
                    .add(*t, i as i32, &[0], true)
                    .map_err(|e| self.err(ErrorKind::Permanent, e.to_string()))?;
            }
            self.decode(ctx, &mut batch)?;
            let v = ctx
                .embeddings_seq_ith(0)
                .map_err(|e| self.err(ErrorKind::Permanent, format!("no embedding: {e}")))?;
            let norm = v
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(f32::EPSILON);
            vectors.push(v.iter().map(|x| x / norm).collect());
        }
        Ok(Embeddings {
            vectors,
            usage: Usage {
                prompt_tokens,
                ..Default::default()
            },
        })
    }

    fn decode(
        &self,
        ctx: &mut LlamaContext<'_>,
        batch: &mut LlamaBatch,
    ) -> Result<(), BackendError> {
        ctx.decode(batch).map_err(|e| match e {
            llama_cpp_2::DecodeError::NoKvCacheSlot => {
                self.err(ErrorKind::ContextLength, "no room left in the KV cache")
            }
            other => self.err(ErrorKind::Permanent, format!("decode failed: {other}")),
        })
    }
}

/// Where a completion's reply goes.
type Reply = tokio::sync::oneshot::Sender<Result<Completion, BackendError>>;

/// The generation context as the batching scheduler drives it.
struct Slots<'w> {
    ctx: LlamaContext<'w>,
    batch: LlamaBatch<'w>,
    weights: &'w Weights,
}

impl batching::Context for Slots<'_> {
    type Sampler = LlamaSampler;

    fn n_ctx(&self) -> usize {
        self.ctx.n_ctx() as usize
    }

    fn n_batch(&self) -> usize {
        self.ctx.n_batch() as usize
    }

    fn remove(&mut self, seq: usize, from: usize) -> Result<(), String> {
        remove_cells(&mut self.ctx, seq, from)
    }

    fn copy(&mut self, src: usize, dst: usize, upto: usize) -> Result<(), String> {
        self.ctx
            .copy_kv_cache_seq(src as i32, dst as i32, None, Some(upto as u32))
            .map_err(|e| e.to_string())
    }

    fn decode(&mut self, tokens: &[batching::BatchToken]) -> Result<(), DecodeFailure> {
        fill_and_decode(&mut self.ctx, &mut self.batch, tokens)
    }

    fn sample(&mut self, sampler: &mut LlamaSampler, at: usize) -> batching::Token {
        sampler.sample(&self.ctx, at as i32).0
    }

    fn logprob(&self, at: usize, token: batching::Token, k: usize) -> TokenLogprob {
        logprob(
            &self.ctx,
            &self.weights.vocab(),
            at as i32,
            LlamaToken(token),
            k,
        )
    }

    fn is_eog(&self, token: batching::Token) -> bool {
        self.weights.vocab().is_eog(LlamaToken(token))
    }

    fn piece(&self, token: batching::Token) -> Vec<u8> {
        self.weights
            .vocab()
            .token_to_piece(LlamaToken(token), false, None)
            .into_iter()
            .collect()
    }
}

/// The draft model's context as the scheduler drives it.
struct DraftSlots<'w> {
    ctx: LlamaContext<'w>,
    batch: LlamaBatch<'w>,
}

impl Draft for DraftSlots<'_> {
    fn n_batch(&self) -> usize {
        self.ctx.n_batch() as usize
    }

    fn remove(&mut self, seq: usize, from: usize) -> Result<(), String> {
        remove_cells(&mut self.ctx, seq, from)
    }

    fn decode(&mut self, tokens: &[batching::BatchToken]) -> Result<(), DecodeFailure> {
        fill_and_decode(&mut self.ctx, &mut self.batch, tokens)
    }

    fn argmax(&self, at: usize) -> batching::Token {
        let logits = self.ctx.get_logits_ith(at as i32);
        let mut best = 0;
        for (i, l) in logits.iter().enumerate() {
            if *l > logits[best] {
                best = i;
            }
        }
        best as batching::Token
    }
}

/// Drops sequence `seq`'s cells from position `from` on.
fn remove_cells(ctx: &mut LlamaContext<'_>, seq: usize, from: usize) -> Result<(), String> {
    ctx.clear_kv_cache_seq(Some(seq as u32), Some(from as u32), None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Puts the tokens in the batch and decodes it.
fn fill_and_decode(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'_>,
    tokens: &[batching::BatchToken],
) -> Result<(), DecodeFailure> {
    batch.clear();
    for t in tokens {
        batch
            .add(LlamaToken(t.token), t.pos as i32, &[t.seq as i32], t.logits)
            .map_err(|e| DecodeFailure::Other(e.to_string()))?;
    }
    ctx.decode(batch).map_err(|e| match e {
        llama_cpp_2::DecodeError::NoKvCacheSlot => DecodeFailure::NoRoom,
        other => DecodeFailure::Other(other.to_string()),
    })
}

/// Loads a draft model and checks that it speaks the model's vocabulary:
/// the same number of tokens (within 128, llama.cpp's own rule) and the
/// same text for every token both have.
fn open_draft(
    path: &Path,
    weights: &Weights,
    params: &LlamaModelParams,
) -> Result<Arc<Weights>, String> {
    let (file, fetch) = model_file(path);
    let path = file.as_path();
    if !path.exists() {
        let hint = fetch.map_or_else(String::new, |f| format!("; install it with {f}"));
        return Err(format!(
            "draft model file {} does not exist{hint}",
            path.display()
        ));
    }
    check_gguf(path)?;
    let draft = Weights::load_from_file(backend()?, path, params).map_err(|e| {
        format!(
            "cannot load the draft model {} (corrupt or truncated GGUF?): {e}",
            path.display()
        )
    })?;
    let (a, b) = (weights.vocab(), draft.vocab());
    let (na, nb) = (a.n_tokens(), b.n_tokens());
    if (na - nb).abs() > 128 {
        return Err(format!(
            "the draft model {} has {nb} tokens in its vocabulary, the model {na}: a draft must share the model's tokenizer",
            path.display()
        ));
    }
    if let Some(t) = (0..na.min(nb)).find(|&t| {
        a.token_to_piece(LlamaToken(t), true, None) != b.token_to_piece(LlamaToken(t), true, None)
    }) {
        return Err(format!(
            "the draft model {} reads token {t} as {:?}, the model as {:?}: a draft must share the model's tokenizer",
            path.display(),
            String::from_utf8_lossy(&b.token_to_piece(LlamaToken(t), true, None)),
            String::from_utf8_lossy(&a.token_to_piece(LlamaToken(t), true, None)),
        ));
    }
    Ok(Arc::new(draft))
}

/// The templated, tokenized prompt: the chat template (the model's, or the
/// override), or a plain "role: text" transcript for models without one.
fn render_prompt(
    weights: &Weights,
    template: Option<&LlamaChatTemplate>,
    id: &str,
    req: &CompletionRequest,
) -> Result<Vec<LlamaToken>, BackendError> {
    let role = |r: Role| match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    let chat: Result<Vec<LlamaChatMessage>, _> = req
        .messages
        .iter()
        .map(|m| LlamaChatMessage::new(role(m.role).to_string(), m.content.clone()))
        .collect();
    let chat =
        chat.map_err(|e| BackendError::new(id, ErrorKind::Permanent, format!("message: {e}")))?;
    let text = match template.and_then(|t| weights.apply_chat_template(t, &chat, true).ok()) {
        Some(p) => p,
        None => {
            let mut p = String::new();
            for m in &req.messages {
                p.push_str(&format!("{}: {}\n", role(m.role), m.content));
            }
            p.push_str("assistant:");
            p
        }
    };
    let vocab = weights.vocab();
    Ok(vocab.tokenize(text.as_bytes(), vocab.should_add_bos(), true))
}

/// The chosen token's log-probability and the top `k` alternatives, from the
/// raw (pre-sampling) distribution.
fn logprob(
    ctx: &LlamaContext<'_>,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    idx: i32,
    chosen: LlamaToken,
    k: usize,
) -> TokenLogprob {
    let logits = ctx.get_logits_ith(idx);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let piece =
        |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, false, None)).into_owned();
    let mut top: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    let k = k.min(top.len());
    if k > 0 {
        top.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        top.truncate(k);
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
    } else {
        top.clear();
    }
    TokenLogprob {
        token: piece(chosen),
        logprob: logits
            .get(chosen.0 as usize)
            .map_or(f32::NEG_INFINITY, |l| l - log_sum),
        top: top
            .into_iter()
            .map(|(t, l)| (piece(LlamaToken(t as i32)), l - log_sum))
            .collect(),
    }
}
