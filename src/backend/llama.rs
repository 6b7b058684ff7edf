//! The in-process llama.cpp backend (`llama:PATH.gguf`, feature `llama`).
//!
//! One OS thread per model owns the llama.cpp context and serves requests
//! from a channel, replying on a oneshot: blocking FFI never runs on the
//! async runtime. The model itself (weights, vocabulary) is shared so that
//! prompt tokens can be counted exactly on the caller's side.
//!
//! - Chat template from the GGUF metadata (override: `chat_template`); a
//!   plain "Role: text" fallback for base models without one.
//! - Sampling: temperature (greedy at 0), top-p, top-k, min-p, repetition
//!   penalty, seed, stop strings, max tokens.
//! - Structured output: the JSON Schema becomes a GBNF grammar enforced while
//!   decoding.
//! - Logprobs: top-k log-probabilities of the raw distribution per token.
//! - `n` samples decode together as parallel sequences that share the
//!   prompt's KV cache (copied, not recomputed).
//! - Prefix reuse: the KV cache of the previous prompt is kept; a call that
//!   shares a prefix only decodes the rest (`prompt_cached_tokens`).
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
    /// Parallel sequences per context, the largest `n` decoded at once (default 4).
    pub max_sequences: Option<u32>,
    /// Reuse the KV cache of the prefix a call shares with the previous one
    /// (default true).
    pub prefix_cache: Option<bool>,
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

/// The default model's path (installed by `scripts/fetch-model.sh`).
pub fn default_model_path() -> PathBuf {
    let cache = std::env::var_os("REDRAFT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/redraft")
        });
    cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

enum Job {
    Complete(
        CompletionRequest,
        tokio::sync::oneshot::Sender<Result<Completion, BackendError>>,
    ),
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
}

impl LlamaModel {
    /// Loads the model and starts its worker thread. `path` `default` means
    /// the embedded default model.
    pub fn open(path: &Path, settings: &serde_json::Value) -> Result<LlamaModel, BackendError> {
        let path = if path == Path::new("default") {
            default_model_path()
        } else {
            path.to_path_buf()
        };
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
            let hint = if path == default_model_path() {
                "; install it with scripts/fetch-model.sh"
            } else {
                ""
            };
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
        let sequences = s.max_sequences.unwrap_or(4).clamp(1, 64);
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(s.batch_size.unwrap_or(512).max(1))
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_n_seq_max(sequences)
            // One KV buffer for all sequences: a single-sample call gets the
            // whole context, not `context_size / max_sequences` of it.
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
        })
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
        Box::pin(async move { self.ask(|tx| Job::Complete(req.clone(), tx)).await })
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
}

/// A sequence being decoded.
struct Seq {
    sampler: LlamaSampler,
    bytes: Vec<u8>,
    tokens: u64,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    /// Batch index of this sequence's latest logits.
    logits_at: i32,
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
        let mut ctx = match weights.new_context(backend, params) {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot create a context: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        // Tokens whose KV entries sequence 0 holds, for prefix reuse.
        let mut cached: Vec<LlamaToken> = Vec::new();
        let mut embed_ctx: Option<LlamaContext<'_>> = None;
        while let Ok(job) = jobs.recv() {
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
                    let ctx = embed_ctx.as_mut().expect("created above");
                    let result = self.embed(ctx, &texts, &|| reply.is_closed());
                    let _ = reply.send(result);
                }
                Job::Complete(req, reply) => {
                    // A caller that went away (timeout, cancelled run) before
                    // or during its job stops it: the next request waits for
                    // at most one decode step, not for `max_tokens`.
                    if reply.is_closed() {
                        continue;
                    }
                    let gone = || reply.is_closed();
                    let result = self.complete(&mut ctx, &mut cached, &req, &gone);
                    if result.is_err() {
                        // After a failed decode the cache contents are unknown.
                        ctx.clear_kv_cache();
                        cached.clear();
                    }
                    let _ = reply.send(result);
                }
            }
        }
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

    /// `gone` says whether the caller stopped waiting; it is checked before
    /// each decode, and the job ends early when it did.
    fn complete(
        &self,
        ctx: &mut LlamaContext<'_>,
        cached: &mut Vec<LlamaToken>,
        req: &CompletionRequest,
        gone: &dyn Fn() -> bool,
    ) -> Result<Completion, BackendError> {
        let tokens = render_prompt(&self.weights, self.template.as_ref(), &self.id, req)?;
        let n_ctx = ctx.n_ctx() as usize;
        let max_tokens = req.sampling.max_tokens as usize;
        if tokens.is_empty() {
            return Err(self.err(ErrorKind::Permanent, "the prompt is empty"));
        }
        // The room a call needs: its prompt once (parallel samples share its
        // cache cells), then up to max_tokens per sample.
        // Parallel sequences decoded at once.
        let n = req.n.max(1).min(self.sequences);
        let n_samples = n as usize;
        let needed = tokens.len() + n_samples * max_tokens;
        if needed > n_ctx {
            let samples = if n_samples > 1 {
                format!(" × {n_samples} samples")
            } else {
                String::new()
            };
            return Err(self.err(
                ErrorKind::ContextLength,
                format!(
                    "the prompt ({} tokens) plus max_tokens ({max_tokens}){samples} needs {needed} tokens of context, more than the context size ({n_ctx}); lower max_tokens or raise the model's `context_size`",
                    tokens.len()
                ),
            ));
        }
        let grammar = match &req.response_format {
            ResponseFormat::JsonSchema { schema, .. } => Some(
                llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
                    self.err(ErrorKind::Permanent, format!("JSON Schema to grammar: {e}"))
                })?,
            ),
            ResponseFormat::Text => None,
        };

        // Reuse the KV cache of the longest common prefix; decode at least one token.
        let mut reuse = cached
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count();
        reuse = if self.prefix_cache {
            reuse.min(tokens.len() - 1)
        } else {
            0
        };
        let n = n as i32;
        for s in 1..self.sequences as i32 {
            ctx.clear_kv_cache_seq(Some(s as u32), None, None)
                .map_err(|e| self.err(ErrorKind::Permanent, e.to_string()))?;
        }
        ctx.clear_kv_cache_seq(Some(0), Some(reuse as u32), None)
            .map_err(|e| self.err(ErrorKind::Permanent, e.to_string()))?;
        cached.truncate(reuse);
        let batch_size = ctx.n_batch() as usize;
        let mut batch = LlamaBatch::new(batch_size.max(n as usize), self.sequences as i32);
        let last = tokens.len() - 1;
        // What a call that fails midway had used: reported with the error.
        let used = |completion_tokens: u64| Usage {
            prompt_tokens: tokens.len() as u64,
            completion_tokens,
            cached_tokens: reuse as u64,
        };
        for (chunk_start, chunk) in tokens[reuse..]
            .chunks(batch_size)
            .enumerate()
            .map(|(i, c)| (reuse + i * batch_size, c))
        {
            if gone() {
                return Err(self.abandoned());
            }
            batch.clear();
            for (i, t) in chunk.iter().enumerate() {
                let pos = chunk_start + i;
                batch
                    .add(*t, pos as i32, &[0], pos == last)
                    .map_err(|e| self.err(ErrorKind::Permanent, e.to_string()))?;
            }
            self.decode(ctx, &mut batch)
                .map_err(|e| e.with_usage(used(0)))?;
        }
        cached.extend_from_slice(&tokens[reuse..]);
        // Parallel sequences share the prompt's cache.
        for s in 1..n {
            ctx.copy_kv_cache_seq(0, s, None, None)
                .map_err(|e| self.err(ErrorKind::Permanent, e.to_string()))?;
        }
        let first_logits = batch.n_tokens() - 1;
        let mut seqs: Vec<Seq> = (0..n as u32)
            .map(|i| {
                Ok(Seq {
                    sampler: self.sampler(req, grammar.as_deref(), i)?,
                    bytes: Vec::new(),
                    tokens: 0,
                    logprobs: Vec::new(),
                    finish: None,
                    logits_at: first_logits,
                })
            })
            .collect::<Result<_, BackendError>>()?;
        let vocab = self.weights.vocab();
        let mut pos = tokens.len() as i32;
        while seqs.iter().any(|s| s.finish.is_none()) {
            if gone() {
                return Err(self.abandoned());
            }
            batch.clear();
            for (i, seq) in seqs.iter_mut().enumerate() {
                if seq.finish.is_some() {
                    continue;
                }
                let token = seq.sampler.sample(ctx, seq.logits_at);
                if let Some(k) = req.logprobs {
                    seq.logprobs
                        .push(logprob(ctx, &vocab, seq.logits_at, token, k as usize));
                }
                if vocab.is_eog(token) {
                    seq.finish = Some(FinishReason::Stop);
                    continue;
                }
                seq.bytes.extend(vocab.token_to_piece(token, false, None));
                seq.tokens += 1;
                if stop_at(&mut seq.bytes, &req.sampling.stop) {
                    seq.finish = Some(FinishReason::Stop);
                    continue;
                }
                if seq.tokens as usize >= max_tokens {
                    seq.finish = Some(FinishReason::Length);
                    continue;
                }
                seq.logits_at = batch.n_tokens();
                batch
                    .add(token, pos, &[i as i32], true)
                    .map_err(|e| self.err(ErrorKind::Permanent, e.to_string()))?;
                if i == 0 {
                    cached.push(token);
                }
            }
            if batch.n_tokens() == 0 {
                break;
            }
            self.decode(ctx, &mut batch)
                .map_err(|e| e.with_usage(used(seqs.iter().map(|s| s.tokens).sum())))?;
            pos += 1;
        }
        let completion_tokens = seqs.iter().map(|s| s.tokens).sum();
        let choices = seqs
            .into_iter()
            .map(|s| Choice {
                text: String::from_utf8_lossy(&s.bytes).into_owned(),
                finish: s.finish.unwrap_or(FinishReason::Stop),
                logprobs: req.logprobs.map(|_| s.logprobs),
            })
            .collect();
        Ok(Completion {
            choices,
            usage: Usage {
                prompt_tokens: tokens.len() as u64,
                completion_tokens,
                cached_tokens: reuse as u64,
            },
            usage_estimated: false,
        })
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

/// Truncates at the first stop string, if one occurs; says whether it did.
fn stop_at(bytes: &mut Vec<u8>, stops: &[String]) -> bool {
    for s in stops.iter().filter(|s| !s.is_empty()) {
        if let Some(i) = bytes.windows(s.len()).position(|w| w == s.as_bytes()) {
            bytes.truncate(i);
            return true;
        }
    }
    false
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
