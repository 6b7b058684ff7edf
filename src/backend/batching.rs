//! Continuous batching over one model context: the scheduler the in-process
//! llama.cpp backend runs on its worker thread, written against a small
//! [`Context`] trait so that it is tested without a model.
//!
//! The context has `parallel` sequences (slots) over one unified KV cache.
//! Every [`Scheduler::step`] makes one decode call holding one token for
//! each generating sequence and, in the room left (`n_batch`), the next
//! chunk of prompts being processed, so a newcomer's prompt never stalls
//! the others for longer than a step. Requests are admitted oldest first
//! (a request that does not fit yet holds the ones behind it, so none
//! starves); each sample of a request has a slot of its own.
//!
//! **Prefix reuse.** A slot remembers the tokens its KV cells hold. A new
//! request takes the free slot whose tokens share the longest prefix with
//! its prompt, or copies a longer shared prefix from any other slot
//! (sequence copy: the cells are shared, not recomputed), and decodes only
//! the rest. Round k of an item reuses rounds 1..k−1; items with one system
//! prompt or few-shot block share it.
//!
//! **Room.** A request reserves its prompt plus `max_tokens` per sample.
//! One that could never fit the context is refused at once
//! (`ContextLength`); one that does not fit now waits for room, after the
//! caches of idle slots were dropped, least recently used first.
//!
//! **Invariants:** a slot serves at most one sequence at a time; a caller
//! that went away frees its slots at the next step; a failed decode ends
//! the requests in it with an error and never leaves a slot claiming cells
//! it does not hold.

use std::collections::VecDeque;

use super::{BackendError, Choice, Completion, ErrorKind, FinishReason, TokenLogprob, Usage};

pub(crate) type Token = i32;

/// One token of a decode batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchToken {
    pub token: Token,
    pub pos: usize,
    pub seq: usize,
    /// Whether the logits after this token are wanted (sampled from).
    pub logits: bool,
}

/// Why a decode failed.
#[derive(Debug)]
pub(crate) enum DecodeFailure {
    /// The KV cache has no room for the batch.
    NoRoom,
    Other(String),
}

/// What the scheduler needs of a model context.
pub(crate) trait Context {
    type Sampler;
    fn n_ctx(&self) -> usize;
    fn n_batch(&self) -> usize;
    /// Drops sequence `seq`'s cells from position `from` on.
    fn remove(&mut self, seq: usize, from: usize) -> Result<(), String>;
    /// Makes `dst` share `src`'s cells of positions below `upto`.
    fn copy(&mut self, src: usize, dst: usize, upto: usize) -> Result<(), String>;
    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), DecodeFailure>;
    /// The next token from the logits at batch index `at` of the last decode.
    fn sample(&mut self, sampler: &mut Self::Sampler, at: usize) -> Token;
    /// The chosen token's log-probability and the top `k`, at batch index `at`.
    fn logprob(&self, at: usize, token: Token, k: usize) -> TokenLogprob;
    fn is_eog(&self, token: Token) -> bool;
    fn piece(&self, token: Token) -> Vec<u8>;
}

/// A completion to decode: its prompt, one sampler per sample.
pub(crate) struct Request<S> {
    pub tokens: Vec<Token>,
    pub samplers: Vec<S>,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub logprobs: Option<u32>,
    /// Whether the caller stopped waiting.
    pub gone: Box<dyn Fn() -> bool + Send>,
    /// Where the result goes (called once).
    pub reply: Box<dyn FnOnce(Result<Completion, BackendError>) + Send>,
}

/// What the scheduler did, for benches and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub decodes: u64,
    /// Tokens decoded (prompt and generated).
    pub tokens: u64,
    /// Prompt tokens served from a slot's cache instead of decoded.
    pub reused: u64,
    /// The most sequences generating in one step.
    pub max_active: usize,
    /// The most KV cells reserved at once.
    pub max_cells: usize,
}

struct Slot {
    /// Tokens whose KV cells this sequence holds, from position 0.
    cached: Vec<Token>,
    /// When it was last used (the scheduler's step count).
    used_at: u64,
    busy: bool,
}

struct Sample<S> {
    slot: usize,
    sampler: S,
    bytes: Vec<u8>,
    tokens: usize,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    /// The sampled token to decode next.
    pending: Option<Token>,
    /// Batch index of its logits in the last decode.
    logits_at: Option<usize>,
}

struct Active<S> {
    req: Request<S>,
    samples: Vec<Sample<S>>,
    /// Prompt tokens in the first sample's slot so far.
    prompt_done: usize,
    reused: usize,
    /// Cells reserved: prompt plus `max_tokens` per sample.
    reserved: usize,
}

impl<S> Active<S> {
    fn prompting(&self) -> bool {
        self.prompt_done < self.req.tokens.len()
    }
}

pub(crate) struct Scheduler<S> {
    id: String,
    slots: Vec<Slot>,
    queue: VecDeque<Request<S>>,
    active: Vec<Active<S>>,
    prefix_cache: bool,
    steps: u64,
    pub stats: BatchStats,
}

/// Where a sampled or prompt token's logits land in a batch.
enum Owner {
    /// The last prompt token of active request `a`.
    Prompt(usize),
    /// Sample `s` of active request `a`.
    Sample(usize, usize),
}

impl<S> Scheduler<S> {
    pub fn new(id: &str, parallel: usize, prefix_cache: bool) -> Scheduler<S> {
        Scheduler {
            id: id.to_string(),
            slots: (0..parallel.max(1))
                .map(|_| Slot {
                    cached: Vec::new(),
                    used_at: 0,
                    busy: false,
                })
                .collect(),
            queue: VecDeque::new(),
            active: Vec::new(),
            prefix_cache,
            steps: 0,
            stats: BatchStats::default(),
        }
    }

    /// Nothing waiting and nothing decoding.
    pub fn idle(&self) -> bool {
        self.queue.is_empty() && self.active.is_empty()
    }

    /// Queues a request; it starts at a later step, oldest first.
    pub fn submit(&mut self, req: Request<S>) {
        self.queue.push_back(req);
    }

    fn err(&self, kind: ErrorKind, message: impl Into<String>) -> BackendError {
        BackendError::new(&self.id, kind, message)
    }

    /// Cells held now: active reservations, and the caches of idle slots.
    fn cells_in_use(&self) -> usize {
        let idle: usize = self
            .slots
            .iter()
            .filter(|s| !s.busy)
            .map(|s| s.cached.len())
            .sum();
        idle + self.active.iter().map(|a| a.reserved).sum::<usize>()
    }

    /// One step: admit what fits, decode one batch, sample, reply to what
    /// finished. Does nothing when idle.
    pub fn step<C: Context<Sampler = S>>(&mut self, ctx: &mut C) {
        self.steps += 1;
        self.drop_gone(ctx);
        self.admit(ctx);
        if self.active.is_empty() {
            return;
        }
        let (batch, owners) = self.batch(ctx.n_batch());
        if batch.is_empty() {
            return;
        }
        match ctx.decode(&batch) {
            Ok(()) => {}
            Err(failure) => {
                self.fail_batch(ctx, &batch, failure);
                return;
            }
        }
        self.stats.decodes += 1;
        self.stats.tokens += batch.len() as u64;
        // The decoded tokens are now in their slots' cells.
        for t in &batch {
            let slot = &mut self.slots[t.seq];
            debug_assert_eq!(slot.cached.len(), t.pos);
            slot.cached.push(t.token);
            slot.used_at = self.steps;
        }
        for act in self.active.iter_mut().filter(|a| a.prompting()) {
            act.prompt_done = self.slots[act.samples[0].slot].cached.len();
        }
        for (at, owner) in owners {
            match owner {
                Owner::Prompt(a) => self.prompt_done(ctx, a, at),
                Owner::Sample(a, s) => self.active[a].samples[s].logits_at = Some(at),
            }
        }
        let generating = self
            .active
            .iter()
            .filter(|a| !a.prompting())
            .map(|a| a.samples.iter().filter(|s| s.finish.is_none()).count())
            .sum::<usize>();
        self.stats.max_active = self.stats.max_active.max(generating);
        self.sample_all(ctx);
        self.reply_finished();
    }

    /// Callers that went away: their slots are free from this step on (the
    /// cells decoded so far stay as a cache).
    fn drop_gone<C: Context<Sampler = S>>(&mut self, _ctx: &mut C) {
        self.queue.retain(|r| !(r.gone)());
        let mut i = 0;
        while i < self.active.len() {
            if (self.active[i].req.gone)() {
                let a = self.active.remove(i);
                for s in &a.samples {
                    self.slots[s.slot].busy = false;
                }
                let err = self.err(ErrorKind::Transient, "the caller stopped waiting");
                (a.req.reply)(Err(err));
            } else {
                i += 1;
            }
        }
    }

    /// Starts queued requests, oldest first, while slots and room allow.
    fn admit<C: Context<Sampler = S>>(&mut self, ctx: &mut C) {
        let n_ctx = ctx.n_ctx();
        while let Some(req) = self.queue.front() {
            let n = req.samplers.len().max(1);
            let need = req.tokens.len() + n * req.max_tokens;
            if req.tokens.is_empty() || n > self.slots.len() || need > n_ctx {
                let req = self.queue.pop_front().expect("front exists");
                let err = if req.tokens.is_empty() {
                    self.err(ErrorKind::Permanent, "the prompt is empty")
                } else if n > self.slots.len() {
                    self.err(
                        ErrorKind::Permanent,
                        format!(
                            "{n} samples at once, more than the model's {} parallel sequences; raise `parallel`",
                            self.slots.len()
                        ),
                    )
                } else {
                    let samples = if n > 1 {
                        format!(" × {n} samples")
                    } else {
                        String::new()
                    };
                    self.err(
                        ErrorKind::ContextLength,
                        format!(
                            "the prompt ({} tokens) plus max_tokens ({}){samples} needs {need} tokens of context, more than the context size ({n_ctx}); lower max_tokens or raise the model's `context_size`",
                            req.tokens.len(),
                            req.max_tokens
                        ),
                    )
                };
                (req.reply)(Err(err));
                continue;
            }
            let free: Vec<usize> = (0..self.slots.len())
                .filter(|&i| !self.slots[i].busy)
                .collect();
            if free.len() < n {
                return;
            }
            // The free slot sharing the longest prefix (least recently used
            // among equals), and the longest prefix held by any other slot.
            let lcp = |slot: &Slot| {
                slot.cached
                    .iter()
                    .zip(&req.tokens)
                    .take_while(|(a, b)| a == b)
                    .count()
            };
            let first = *free
                .iter()
                .max_by_key(|&&i| {
                    (
                        lcp(&self.slots[i]),
                        std::cmp::Reverse(self.slots[i].used_at),
                    )
                })
                .expect("a free slot");
            let own = lcp(&self.slots[first]);
            let donor = (0..self.slots.len())
                .filter(|&i| i != first)
                .map(|i| (lcp(&self.slots[i]), i))
                .max()
                .filter(|(l, _)| *l > own);
            let limit = req.tokens.len() - 1;
            let reuse = if self.prefix_cache {
                donor.map_or(own, |(l, _)| l).min(limit)
            } else {
                0
            };
            // Room: drop idle caches (never the chosen slot's or the
            // donor's) until the request fits, or wait.
            let fits = |s: &Self| s.cells_in_use() - s.slots[first].cached.len() + need <= n_ctx;
            if !fits(self) {
                let mut idle: Vec<usize> = (0..self.slots.len())
                    .filter(|&i| {
                        !self.slots[i].busy
                            && i != first
                            && Some(i) != donor.map(|d| d.1)
                            && !self.slots[i].cached.is_empty()
                    })
                    .collect();
                idle.sort_by_key(|&i| self.slots[i].used_at);
                for i in idle {
                    if fits(self) {
                        break;
                    }
                    if ctx.remove(i, 0).is_ok() {
                        self.slots[i].cached.clear();
                    }
                }
                if !fits(self) {
                    return;
                }
            }
            let req = self.queue.pop_front().expect("front exists");
            // Place the prompt's reused prefix in the first slot.
            let placed = match donor.filter(|_| reuse > own.min(limit)) {
                Some((_, src)) => ctx
                    .remove(first, 0)
                    .and_then(|()| ctx.copy(src, first, reuse))
                    .map(|()| {
                        self.slots[first].cached = req.tokens[..reuse].to_vec();
                        reuse
                    }),
                None => ctx.remove(first, reuse).map(|()| {
                    self.slots[first].cached.truncate(reuse);
                    reuse
                }),
            };
            let reuse = match placed {
                Ok(r) => r,
                Err(e) => {
                    // The slot's cells are unknown: hold nothing there.
                    let _ = ctx.remove(first, 0);
                    self.slots[first].cached.clear();
                    (req.reply)(Err(self.err(ErrorKind::Permanent, e)));
                    continue;
                }
            };
            let mut slots = vec![first];
            slots.extend(free.iter().copied().filter(|&i| i != first).take(n - 1));
            // The other samples' slots get the prompt's cells once it is in.
            for &s in &slots[1..] {
                let _ = ctx.remove(s, 0);
                self.slots[s].cached.clear();
            }
            let Request {
                tokens,
                samplers,
                max_tokens,
                stop,
                logprobs,
                gone,
                reply,
            } = req;
            let samples = samplers
                .into_iter()
                .zip(&slots)
                .map(|(sampler, &slot)| Sample {
                    slot,
                    sampler,
                    bytes: Vec::new(),
                    tokens: 0,
                    logprobs: Vec::new(),
                    finish: None,
                    pending: None,
                    logits_at: None,
                })
                .collect();
            for &s in &slots {
                self.slots[s].busy = true;
                self.slots[s].used_at = self.steps;
            }
            self.stats.reused += reuse as u64;
            self.active.push(Active {
                req: Request {
                    tokens,
                    samplers: Vec::new(),
                    max_tokens,
                    stop,
                    logprobs,
                    gone,
                    reply,
                },
                samples,
                prompt_done: reuse,
                reused: reuse,
                reserved: need,
            });
            self.stats.max_cells = self.stats.max_cells.max(self.cells_in_use());
        }
    }

    /// The next batch: a token for every generating sample, then prompt
    /// chunks, oldest request first, up to `n_batch` tokens.
    fn batch(&self, n_batch: usize) -> (Vec<BatchToken>, Vec<(usize, Owner)>) {
        let mut batch = Vec::new();
        let mut owners = Vec::new();
        for (a, act) in self.active.iter().enumerate() {
            for (s, sample) in act.samples.iter().enumerate() {
                if let (Some(token), None) = (sample.pending, sample.finish) {
                    if batch.len() >= n_batch {
                        break;
                    }
                    owners.push((batch.len(), Owner::Sample(a, s)));
                    batch.push(BatchToken {
                        token,
                        pos: self.slots[sample.slot].cached.len(),
                        seq: sample.slot,
                        logits: true,
                    });
                }
            }
        }
        for (a, act) in self.active.iter().enumerate() {
            if !act.prompting() {
                continue;
            }
            let room = n_batch.saturating_sub(batch.len());
            if room == 0 {
                break;
            }
            let slot = act.samples[0].slot;
            let end = (act.prompt_done + room).min(act.req.tokens.len());
            for pos in act.prompt_done..end {
                let last = pos + 1 == act.req.tokens.len();
                if last {
                    owners.push((batch.len(), Owner::Prompt(a)));
                }
                batch.push(BatchToken {
                    token: act.req.tokens[pos],
                    pos,
                    seq: slot,
                    logits: last,
                });
            }
        }
        (batch, owners)
    }

    /// A request's prompt is in: its other samples' slots share the cells,
    /// and every sample samples from the prompt's logits.
    fn prompt_done<C: Context<Sampler = S>>(&mut self, ctx: &mut C, a: usize, at: usize) {
        let act = &mut self.active[a];
        act.prompt_done = act.req.tokens.len();
        let first = act.samples[0].slot;
        let len = act.req.tokens.len();
        for s in 1..act.samples.len() {
            let slot = act.samples[s].slot;
            let copied = ctx
                .remove(slot, 0)
                .and_then(|()| ctx.copy(first, slot, len));
            match copied {
                Ok(()) => self.slots[slot].cached = act.req.tokens.clone(),
                Err(e) => {
                    let _ = ctx.remove(slot, 0);
                    self.slots[slot].cached.clear();
                    act.samples[s].finish = Some(FinishReason::Stop);
                    tracing::warn!(error = %e, "a sample could not share its prompt's cells");
                }
            }
        }
        for s in act.samples.iter_mut() {
            s.logits_at = Some(at);
        }
    }

    /// Samples every sequence that has fresh logits.
    fn sample_all<C: Context<Sampler = S>>(&mut self, ctx: &mut C) {
        for act in &mut self.active {
            for s in act.samples.iter_mut() {
                let Some(at) = s.logits_at.take() else {
                    continue;
                };
                s.pending = None;
                if s.finish.is_some() {
                    continue;
                }
                let token = ctx.sample(&mut s.sampler, at);
                if let Some(k) = act.req.logprobs {
                    s.logprobs.push(ctx.logprob(at, token, k as usize));
                }
                if ctx.is_eog(token) {
                    s.finish = Some(FinishReason::Stop);
                    continue;
                }
                s.bytes.extend(ctx.piece(token));
                s.tokens += 1;
                if stop_at(&mut s.bytes, &act.req.stop) {
                    s.finish = Some(FinishReason::Stop);
                } else if s.tokens >= act.req.max_tokens {
                    s.finish = Some(FinishReason::Length);
                } else {
                    s.pending = Some(token);
                }
            }
        }
    }

    fn reply_finished(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            let done = !self.active[i].prompting()
                && self.active[i].samples.iter().all(|s| s.finish.is_some());
            if !done {
                i += 1;
                continue;
            }
            let a = self.active.remove(i);
            for s in &a.samples {
                self.slots[s.slot].busy = false;
            }
            let completion_tokens = a.samples.iter().map(|s| s.tokens as u64).sum();
            let want_logprobs = a.req.logprobs.is_some();
            let choices = a
                .samples
                .into_iter()
                .map(|s| Choice {
                    text: String::from_utf8_lossy(&s.bytes).into_owned(),
                    finish: s.finish.unwrap_or(FinishReason::Stop),
                    logprobs: want_logprobs.then_some(s.logprobs),
                })
                .collect();
            (a.req.reply)(Ok(Completion {
                choices,
                usage: Usage {
                    prompt_tokens: a.req.tokens.len() as u64,
                    completion_tokens,
                    cached_tokens: a.reused as u64,
                },
                usage_estimated: false,
            }));
        }
    }

    /// A decode failed: the requests with tokens in it end with the error;
    /// the cells of their slots are unknown, so they are dropped. After any
    /// other failure than a full cache, every slot starts over empty.
    fn fail_batch<C: Context<Sampler = S>>(
        &mut self,
        ctx: &mut C,
        batch: &[BatchToken],
        failure: DecodeFailure,
    ) {
        let (kind, message, all) = match failure {
            DecodeFailure::NoRoom => (
                ErrorKind::ContextLength,
                "no room left in the KV cache".to_string(),
                false,
            ),
            DecodeFailure::Other(m) => (ErrorKind::Permanent, format!("decode failed: {m}"), true),
        };
        let in_batch = |act: &Active<S>| {
            act.samples
                .iter()
                .any(|s| batch.iter().any(|t| t.seq == s.slot))
        };
        let mut i = 0;
        while i < self.active.len() {
            if all || in_batch(&self.active[i]) {
                let a = self.active.remove(i);
                let used = Usage {
                    prompt_tokens: a.req.tokens.len() as u64,
                    completion_tokens: a.samples.iter().map(|s| s.tokens as u64).sum(),
                    cached_tokens: a.reused as u64,
                };
                for s in &a.samples {
                    let _ = ctx.remove(s.slot, 0);
                    self.slots[s.slot].cached.clear();
                    self.slots[s.slot].busy = false;
                }
                (a.req.reply)(Err(self.err(kind, message.clone()).with_usage(used)));
            } else {
                i += 1;
            }
        }
        if all {
            for (i, slot) in self.slots.iter_mut().enumerate() {
                let _ = ctx.remove(i, 0);
                slot.cached.clear();
            }
        }
    }
}

/// Truncates at the first stop string, if one occurs; says whether it did.
pub(crate) fn stop_at(bytes: &mut Vec<u8>, stops: &[String]) -> bool {
    for s in stops.iter().filter(|s| !s.is_empty()) {
        if let Some(i) = bytes.windows(s.len()).position(|w| w == s.as_bytes()) {
            bytes.truncate(i);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;
