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
//! **Speculative decoding.** With a [`Draft`] model (a small model of the
//! same vocabulary), each step first lets the draft propose up to
//! `draft_max` tokens for every generating sequence (greedy, one draft
//! decode per proposed token, all sequences in one batch), then the target
//! decodes each sequence's pending token and its proposals in the same
//! batch. The target samples at each position in turn with the request's
//! own sampler and keeps proposals while they equal what it sampled; the
//! first that differs is replaced by the sampled token and the rest is
//! dropped from the KV cache. Every emitted token is sampled by the target
//! exactly once, in order, from the logits of its true prefix, so the
//! output is the target's own (the same at temperature 0 and for a seed),
//! up to the kernels' batch-shape noise; the draft only decides how many
//! tokens a step yields. A failing draft turns speculation off for the
//! step, never fails a request.
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

/// What the scheduler needs of a draft model's context: as many sequences
/// as the target's, one per slot.
pub(crate) trait Draft {
    fn n_batch(&self) -> usize;
    /// Drops sequence `seq`'s cells from position `from` on.
    fn remove(&mut self, seq: usize, from: usize) -> Result<(), String>;
    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), DecodeFailure>;
    /// The most likely next token after batch index `at` of the last decode.
    fn argmax(&self, at: usize) -> Token;
}

/// No draft model.
#[cfg(test)]
pub(crate) enum NoDraft {}

#[cfg(test)]
impl Draft for NoDraft {
    fn n_batch(&self) -> usize {
        match *self {}
    }
    fn remove(&mut self, _: usize, _: usize) -> Result<(), String> {
        match *self {}
    }
    fn decode(&mut self, _: &[BatchToken]) -> Result<(), DecodeFailure> {
        match *self {}
    }
    fn argmax(&self, _: usize) -> Token {
        match *self {}
    }
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
    pub reply: Reply,
}

type Reply = Box<dyn FnOnce(Result<Completion, BackendError>) + Send>;

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
    /// Tokens a draft model proposed, and how many of them the model kept.
    pub drafted: u64,
    pub accepted: u64,
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
    /// The draft's proposals to follow `pending` in the next decode.
    drafts: Vec<Token>,
    /// Batch indices of its logits in the last decode: the pending token's,
    /// then each proposal's.
    logits_at: Vec<usize>,
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
    /// The most tokens a draft proposes per sequence and step (0: off).
    draft_max: usize,
    /// What each slot's sequence of the draft context holds.
    draft_cached: Vec<Vec<Token>>,
    /// Replies of this step, sent at its end, after `stats` is published.
    outbox: Vec<(Reply, Result<Completion, BackendError>)>,
    pub stats: BatchStats,
    /// Where `stats` is copied at the end of every step.
    published: Option<std::sync::Arc<std::sync::Mutex<BatchStats>>>,
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
            draft_max: 0,
            draft_cached: vec![Vec::new(); parallel.max(1)],
            outbox: Vec::new(),
            stats: BatchStats::default(),
            published: None,
        }
    }

    /// Copies `stats` to `to` at the end of every step, before the step's
    /// replies go out (so a caller reading it after its reply sees its call).
    pub fn publish_to(mut self, to: std::sync::Arc<std::sync::Mutex<BatchStats>>) -> Self {
        self.published = Some(to);
        self
    }

    /// Proposes up to `n` tokens per step with the draft model given to
    /// [`Scheduler::step_with`].
    pub fn with_draft_max(mut self, n: usize) -> Self {
        self.draft_max = n;
        self
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

    /// [`Scheduler::step_with`] without a draft model.
    #[cfg(test)]
    pub fn step<C: Context<Sampler = S>>(&mut self, ctx: &mut C) {
        self.step_with::<C, NoDraft>(ctx, None);
    }

    /// One step: admit what fits, let the draft propose (when there is one
    /// and `draft_max` > 0), decode one batch, sample, reply to what
    /// finished. Does nothing when idle.
    pub fn step_with<C: Context<Sampler = S>, D: Draft>(
        &mut self,
        ctx: &mut C,
        draft: Option<&mut D>,
    ) {
        self.advance(ctx, draft);
        if let Some(to) = &self.published {
            *to.lock().unwrap_or_else(|e| e.into_inner()) = self.stats;
        }
        for (reply, result) in self.outbox.drain(..) {
            reply(result);
        }
    }

    fn advance<C: Context<Sampler = S>, D: Draft>(&mut self, ctx: &mut C, draft: Option<&mut D>) {
        self.steps += 1;
        self.drop_gone();
        self.admit(ctx);
        if self.active.is_empty() {
            return;
        }
        if let Some(draft) = draft.filter(|_| self.draft_max > 0) {
            if let Err(e) = self.propose(draft, ctx.n_batch()) {
                tracing::warn!(error = %e, "the draft model failed; this step decodes without it");
                self.forget_draft(draft);
            }
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
                Owner::Sample(a, s) => self.active[a].samples[s].logits_at.push(at),
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
    fn drop_gone(&mut self) {
        self.queue.retain(|r| !(r.gone)());
        let mut i = 0;
        while i < self.active.len() {
            if (self.active[i].req.gone)() {
                let a = self.active.remove(i);
                for s in &a.samples {
                    self.slots[s.slot].busy = false;
                }
                let err = self.err(ErrorKind::Transient, "the caller stopped waiting");
                self.outbox.push((a.req.reply, Err(err)));
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
                self.outbox.push((req.reply, Err(err)));
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
            let mut req = self.queue.pop_front().expect("front exists");
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
                    let err = self.err(ErrorKind::Permanent, e);
                    self.outbox.push((req.reply, Err(err)));
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
            // The samplers move into the samples; the request keeps the rest.
            let samplers = std::mem::take(&mut req.samplers);
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
                    drafts: Vec::new(),
                    logits_at: Vec::new(),
                })
                .collect();
            for &s in &slots {
                self.slots[s].busy = true;
                self.slots[s].used_at = self.steps;
            }
            self.stats.reused += reuse as u64;
            self.active.push(Active {
                req,
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
                    // The pending token and its proposals, all or nothing
                    // (proposals were only made while the batch had room).
                    if batch.len() + 1 + sample.drafts.len() > n_batch {
                        break;
                    }
                    let pos = self.slots[sample.slot].cached.len();
                    for (i, &token) in std::iter::once(&token).chain(&sample.drafts).enumerate() {
                        owners.push((batch.len(), Owner::Sample(a, s)));
                        batch.push(BatchToken {
                            token,
                            pos: pos + i,
                            seq: sample.slot,
                            logits: true,
                        });
                    }
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
            s.logits_at = vec![at];
        }
    }

    /// Samples every sequence that has fresh logits: at the pending
    /// token's, then at each proposal's while the proposal equals what was
    /// sampled before it. Cells of proposals not kept leave the KV cache.
    fn sample_all<C: Context<Sampler = S>>(&mut self, ctx: &mut C) {
        for act in &mut self.active {
            for s in act.samples.iter_mut() {
                let logits = std::mem::take(&mut s.logits_at);
                if logits.is_empty() {
                    continue;
                }
                let drafts = std::mem::take(&mut s.drafts);
                s.pending = None;
                if s.finish.is_some() {
                    continue;
                }
                // The pending token's cell is the first of `logits`.
                let first = self.slots[s.slot].cached.len() - logits.len();
                let mut kept = 0;
                for (i, &at) in logits.iter().enumerate() {
                    let token = ctx.sample(&mut s.sampler, at);
                    if let Some(k) = act.req.logprobs {
                        s.logprobs.push(ctx.logprob(at, token, k as usize));
                    }
                    if ctx.is_eog(token) {
                        s.finish = Some(FinishReason::Stop);
                        break;
                    }
                    s.bytes.extend(ctx.piece(token));
                    s.tokens += 1;
                    if stop_at(&mut s.bytes, &act.req.stop) {
                        s.finish = Some(FinishReason::Stop);
                        break;
                    }
                    if s.tokens >= act.req.max_tokens {
                        s.finish = Some(FinishReason::Length);
                        break;
                    }
                    if drafts.get(i) == Some(&token) {
                        kept += 1;
                    } else {
                        s.pending = Some(token);
                        break;
                    }
                }
                if !drafts.is_empty() {
                    self.stats.drafted += drafts.len() as u64;
                    self.stats.accepted += kept as u64;
                    // Keep the pending token's cell and the kept proposals'.
                    let keep = first + 1 + kept;
                    let slot = &mut self.slots[s.slot];
                    if keep < slot.cached.len() {
                        if ctx.remove(s.slot, keep).is_ok() {
                            slot.cached.truncate(keep);
                        } else {
                            // Cells of unknown content: none of them are kept.
                            let _ = ctx.remove(s.slot, 0);
                            slot.cached.clear();
                            s.finish.get_or_insert(FinishReason::Stop);
                            tracing::warn!("rejected proposals could not leave the KV cache");
                        }
                    }
                    // The draft's cells past `keep` leave at its next
                    // proposal (`propose` syncs it with the slots).
                }
            }
        }
    }

    /// Lets the draft propose tokens for every generating sequence: first
    /// it catches up with what the slot holds, then it decodes greedily, one
    /// token per sequence and draft decode, as many as the batch's room,
    /// `draft_max` and the sequence's `max_tokens` allow.
    fn propose<D: Draft>(&mut self, draft: &mut D, n_batch: usize) -> Result<(), String> {
        // The draft's sequences drop what their slots no longer hold.
        for (i, slot) in self.slots.iter().enumerate() {
            let d = &mut self.draft_cached[i];
            let same = d
                .iter()
                .zip(&slot.cached)
                .take_while(|(a, b)| a == b)
                .count();
            if same < d.len() {
                draft.remove(i, same)?;
                d.truncate(same);
            }
        }
        // Who proposes, and how many: the room in the target's batch after
        // every generating sequence's pending token and the prompts' first
        // token is shared out in order.
        let generating: Vec<(usize, usize)> = self
            .active
            .iter()
            .enumerate()
            .flat_map(|(a, act)| {
                act.samples
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.pending.is_some() && s.finish.is_none())
                    .map(move |(s, _)| (a, s))
            })
            .collect();
        let mut room = n_batch.saturating_sub(generating.len());
        let mut want: Vec<(usize, usize, usize)> = Vec::new();
        for &(a, s) in &generating {
            let act = &self.active[a];
            let left = act.req.max_tokens - act.samples[s].tokens;
            let k = self.draft_max.min(left.saturating_sub(1)).min(room);
            if k > 0 {
                room -= k;
                want.push((a, s, k));
            }
        }
        if want.is_empty() {
            return Ok(());
        }
        // Catch up: the slot's cells, then the pending token (with logits).
        let mut todo: Vec<BatchToken> = Vec::new();
        for &(a, s, _) in &want {
            let sample = &self.active[a].samples[s];
            let slot = sample.slot;
            let held = &self.slots[slot].cached;
            for (pos, &token) in held.iter().enumerate().skip(self.draft_cached[slot].len()) {
                todo.push(BatchToken {
                    token,
                    pos,
                    seq: slot,
                    logits: false,
                });
            }
            todo.push(BatchToken {
                token: sample.pending.expect("generating"),
                pos: held.len(),
                seq: slot,
                logits: true,
            });
        }
        let chunk = draft.n_batch().max(1);
        let mut last = Vec::new();
        for part in todo.chunks(chunk) {
            draft.decode(part).map_err(|e| format!("{e:?}"))?;
            for t in part {
                self.draft_cached[t.seq].push(t.token);
            }
            last = part.to_vec();
        }
        // The batch indices of the pending tokens' logits: the catch-up
        // ended with them, so they are in the last chunk (or, chunked
        // apart, decoded again below).
        let mut at: Vec<Option<usize>> = want
            .iter()
            .map(|&(a, s, _)| {
                let slot = self.active[a].samples[s].slot;
                let pos = self.slots[slot].cached.len();
                last.iter()
                    .position(|t| t.seq == slot && t.pos == pos && t.logits)
            })
            .collect();
        if at.iter().any(Option::is_none) {
            // Rare (a catch-up longer than the draft's batch): decode the
            // pending tokens again, alone, for their logits.
            let mut batch = Vec::new();
            for &(a, s, _) in &want {
                let slot = self.active[a].samples[s].slot;
                let pos = self.slots[slot].cached.len();
                draft.remove(slot, pos)?;
                self.draft_cached[slot].truncate(pos);
                batch.push(BatchToken {
                    token: self.active[a].samples[s].pending.expect("generating"),
                    pos,
                    seq: slot,
                    logits: true,
                });
            }
            draft.decode(&batch).map_err(|e| format!("{e:?}"))?;
            for t in &batch {
                self.draft_cached[t.seq].push(t.token);
            }
            at = (0..batch.len()).map(Some).collect();
        }
        // Greedy proposals, one draft decode per round.
        let mut proposals: Vec<Vec<Token>> = vec![Vec::new(); want.len()];
        let rounds = want.iter().map(|w| w.2).max().unwrap_or(0);
        for round in 0..rounds {
            let mut batch = Vec::new();
            let mut whose = Vec::new();
            for (w, &(a, s, k)) in want.iter().enumerate() {
                let Some(i) = at[w] else { continue };
                let token = draft.argmax(i);
                proposals[w].push(token);
                at[w] = None;
                // Decode it for the next proposal, unless it was the last.
                if round + 1 < k {
                    let slot = self.active[a].samples[s].slot;
                    whose.push(w);
                    batch.push(BatchToken {
                        token,
                        pos: self.draft_cached[slot].len(),
                        seq: slot,
                        logits: true,
                    });
                }
            }
            if batch.is_empty() {
                break;
            }
            draft.decode(&batch).map_err(|e| format!("{e:?}"))?;
            for (i, (t, w)) in batch.iter().zip(whose).enumerate() {
                self.draft_cached[t.seq].push(t.token);
                at[w] = Some(i);
            }
        }
        for ((a, s, _), p) in want.into_iter().zip(proposals) {
            self.active[a].samples[s].drafts = p;
        }
        Ok(())
    }

    /// The draft failed: its cells are unknown, so it starts over empty.
    fn forget_draft<D: Draft>(&mut self, draft: &mut D) {
        for (i, d) in self.draft_cached.iter_mut().enumerate() {
            let _ = draft.remove(i, 0);
            d.clear();
        }
        for act in &mut self.active {
            for s in &mut act.samples {
                s.drafts.clear();
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
            self.outbox.push((
                a.req.reply,
                Ok(Completion {
                    choices,
                    usage: Usage {
                        prompt_tokens: a.req.tokens.len() as u64,
                        completion_tokens,
                        cached_tokens: a.reused as u64,
                    },
                    usage_estimated: false,
                }),
            ));
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
                let err = self.err(kind, message.clone()).with_usage(used);
                self.outbox.push((a.req.reply, Err(err)));
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
