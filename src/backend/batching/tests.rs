//! The scheduler on a fake context: the next token is the last one plus
//! one, `EOG` ends a sequence, and the context checks that every sequence's
//! cells stay contiguous and within the context size.

use std::sync::{Arc, Mutex};

use super::*;

const EOG: Token = 99;

#[derive(Default)]
struct Fake {
    n_ctx: usize,
    n_batch: usize,
    /// Each sequence's cells (tokens by position).
    cells: Vec<Vec<Token>>,
    batches: Vec<Vec<BatchToken>>,
    fail_next: Option<DecodeFailure>,
}

impl Fake {
    fn new(n_ctx: usize, n_batch: usize, parallel: usize) -> Fake {
        Fake {
            n_ctx,
            n_batch,
            cells: vec![Vec::new(); parallel],
            ..Fake::default()
        }
    }
}

impl Context for Fake {
    type Sampler = Token;
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn n_batch(&self) -> usize {
        self.n_batch
    }
    fn remove(&mut self, seq: usize, from: usize) -> Result<(), String> {
        self.cells[seq].truncate(from);
        Ok(())
    }
    fn copy(&mut self, src: usize, dst: usize, upto: usize) -> Result<(), String> {
        assert!(
            self.cells[dst].is_empty(),
            "copy into a sequence that holds cells"
        );
        self.cells[dst] = self.cells[src][..upto].to_vec();
        Ok(())
    }
    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), DecodeFailure> {
        if let Some(f) = self.fail_next.take() {
            return Err(f);
        }
        assert!(batch.len() <= self.n_batch, "a batch over n_batch");
        for t in batch {
            assert_eq!(
                self.cells[t.seq].len(),
                t.pos,
                "a gap in sequence {}",
                t.seq
            );
            self.cells[t.seq].push(t.token);
        }
        let used: usize = self.cells.iter().map(Vec::len).sum();
        assert!(
            used <= self.n_ctx,
            "{used} cells in a context of {}",
            self.n_ctx
        );
        self.batches.push(batch.to_vec());
        Ok(())
    }
    /// The sampler is an offset added to the last token (0: greedy "+1").
    fn sample(&mut self, offset: &mut Token, at: usize) -> Token {
        let last = self.batches.last().expect("a decode")[at].token;
        if last + 1 == 50 {
            EOG
        } else {
            last + 1 + *offset
        }
    }
    fn logprob(&self, _at: usize, token: Token, _k: usize) -> TokenLogprob {
        TokenLogprob {
            token: token.to_string(),
            logprob: -0.5,
            top: Vec::new(),
        }
    }
    fn is_eog(&self, token: Token) -> bool {
        token == EOG
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        format!("{token},").into_bytes()
    }
}

type Replies = Arc<Mutex<Vec<(String, Result<Completion, BackendError>)>>>;

fn request(
    name: &str,
    tokens: &[Token],
    samples: usize,
    max_tokens: usize,
    replies: &Replies,
    gone: Arc<std::sync::atomic::AtomicBool>,
) -> Request<Token> {
    let (name, replies) = (name.to_string(), replies.clone());
    Request {
        tokens: tokens.to_vec(),
        samplers: (0..samples as Token).map(|i| i * 100).collect(),
        max_tokens,
        stop: Vec::new(),
        logprobs: None,
        gone: Box::new(move || gone.load(std::sync::atomic::Ordering::SeqCst)),
        reply: Box::new(move |r| replies.lock().unwrap().push((name, r))),
    }
}

fn simple(name: &str, tokens: &[Token], max_tokens: usize, replies: &Replies) -> Request<Token> {
    request(name, tokens, 1, max_tokens, replies, Default::default())
}

fn run(s: &mut Scheduler<Token>, ctx: &mut Fake) -> usize {
    let mut steps = 0;
    while !s.idle() {
        s.step(ctx);
        steps += 1;
        assert!(steps < 1000, "the scheduler does not finish");
    }
    steps
}

fn text(replies: &Replies, name: &str) -> String {
    let r = replies.lock().unwrap();
    let (_, r) = r.iter().find(|(n, _)| n == name).expect("a reply");
    r.as_ref().expect("a completion").choices[0].text.clone()
}

fn order(replies: &Replies) -> Vec<String> {
    replies
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| n.clone())
        .collect()
}

#[test]
fn concurrent_requests_share_every_decode_and_get_their_own_text() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 4, true);
    let mut ctx = Fake::new(100, 16, 4);
    s.submit(simple("a", &[1, 2, 3], 3, &replies));
    s.submit(simple("b", &[10, 11], 2, &replies));
    let steps = run(&mut s, &mut ctx);
    assert_eq!(text(&replies, "a"), "4,5,6,");
    assert_eq!(text(&replies, "b"), "12,13,");
    // Both prompts in the first batch, then one token of each per step.
    assert_eq!(ctx.batches[0].len(), 5);
    assert_eq!(ctx.batches[1].len(), 2, "{:?}", ctx.batches[1]);
    assert_eq!(steps, 3);
    assert_eq!(s.stats.max_active, 2);
}

#[test]
fn a_newcomers_prompt_is_chunked_into_the_running_batches() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 2, true);
    let mut ctx = Fake::new(100, 4, 2);
    s.submit(simple("a", &[1], 6, &replies));
    s.step(&mut ctx);
    s.submit(simple("b", &[20, 21, 22, 23, 24, 25, 26, 27], 1, &replies));
    run(&mut s, &mut ctx);
    // While `a` generates, every batch holds its token and 3 of b's prompt.
    for b in &ctx.batches[1..3] {
        assert_eq!(b.len(), 4);
        assert_eq!(b.iter().filter(|t| t.seq == b[0].seq).count(), 1);
    }
    assert_eq!(text(&replies, "a"), "2,3,4,5,6,7,");
    assert_eq!(text(&replies, "b"), "28,");
}

#[test]
fn requests_that_do_not_fit_wait_in_order_and_never_starve() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 4, true);
    // Room for one request of 3 + 4 at a time.
    let mut ctx = Fake::new(10, 16, 4);
    s.submit(simple("a", &[1, 2, 3], 4, &replies));
    s.submit(simple("b", &[5, 6, 7], 4, &replies));
    // Small enough to fit beside `a`, but behind `b`: it waits its turn.
    s.submit(simple("c", &[30], 1, &replies));
    run(&mut s, &mut ctx);
    assert_eq!(order(&replies)[0], "a");
    assert_eq!(text(&replies, "b"), "8,9,10,11,");
    assert_eq!(text(&replies, "c"), "31,");
    let first = |token: Token| {
        ctx.batches
            .iter()
            .position(|b| b.iter().any(|t| t.token == token && t.pos == 0))
            .unwrap()
    };
    let a_done = ctx
        .batches
        .iter()
        .rposition(|b| b.iter().any(|t| t.token == 6 && t.pos == 5))
        .unwrap();
    // b started after a ended, and c, behind b, not before b.
    assert!(first(5) > a_done);
    assert!(first(30) >= first(5));
}

#[test]
fn a_request_that_could_never_fit_fails_at_once_and_the_next_goes_on() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 2, true);
    let mut ctx = Fake::new(10, 16, 2);
    s.submit(simple("big", &[1, 2, 3, 4, 5, 6], 5, &replies));
    s.submit(request("many", &[1], 3, 1, &replies, Default::default()));
    s.submit(simple("empty", &[], 1, &replies));
    s.submit(simple("ok", &[1], 1, &replies));
    run(&mut s, &mut ctx);
    let r = replies.lock().unwrap();
    let kind = |n: &str| {
        r.iter()
            .find(|(x, _)| x == n)
            .unwrap()
            .1
            .as_ref()
            .err()
            .map(|e| e.kind)
    };
    assert_eq!(kind("big"), Some(ErrorKind::ContextLength));
    let e = r[1].1.as_ref().unwrap_err();
    assert!(e.message.contains("raise `parallel`"), "{e}");
    assert_eq!(kind("empty"), Some(ErrorKind::Permanent));
    assert_eq!(kind("ok"), None);
}

#[test]
fn a_caller_that_goes_away_frees_its_slot_at_the_next_step() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 1, true);
    let mut ctx = Fake::new(100, 16, 1);
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    s.submit(request("a", &[1], 1, 40, &replies, gone.clone()));
    s.submit(simple("b", &[60], 2, &replies));
    s.step(&mut ctx);
    s.step(&mut ctx);
    gone.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = ctx.batches.len();
    s.step(&mut ctx);
    // That very step decoded b's prompt in a's slot.
    assert!(ctx.batches[before].iter().any(|t| t.token == 60));
    assert_eq!(
        replies.lock().unwrap()[0].1.as_ref().unwrap_err().kind,
        ErrorKind::Transient
    );
    run(&mut s, &mut ctx);
    assert_eq!(text(&replies, "b"), "61,62,");
}

#[test]
fn a_prompt_reuses_the_longest_prefix_a_slot_holds_or_copies_it_from_a_busy_one() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 2, true);
    let mut ctx = Fake::new(100, 16, 2);
    // Round 1 of an item, then round 2 with round 1's conversation.
    s.submit(simple("r1", &[1, 2, 3, 4], 1, &replies));
    run(&mut s, &mut ctx);
    s.submit(simple("r2", &[1, 2, 3, 4, 5, 6], 1, &replies));
    run(&mut s, &mut ctx);
    let usage = |n: &str| {
        let r = replies.lock().unwrap();
        r.iter()
            .find(|(x, _)| x == n)
            .unwrap()
            .1
            .as_ref()
            .unwrap()
            .usage
    };
    assert_eq!(usage("r2").cached_tokens, 4);
    assert_eq!(ctx.batches.last().unwrap().len(), 2, "only the new tokens");
    // A long request runs; a newcomer sharing its first 6 tokens copies them.
    s.submit(simple("long", &[1, 2, 3, 4, 5, 6, 7, 8], 5, &replies));
    s.step(&mut ctx);
    s.submit(simple("shared", &[1, 2, 3, 4, 5, 6, 40], 1, &replies));
    run(&mut s, &mut ctx);
    assert_eq!(usage("long").cached_tokens, 6);
    assert_eq!(usage("shared").cached_tokens, 6);
    assert_eq!(text(&replies, "shared"), "41,");
    assert_eq!(s.stats.reused, 4 + 6 + 6);
}

#[test]
fn without_the_prefix_cache_every_prompt_is_decoded_whole() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 1, false);
    let mut ctx = Fake::new(100, 16, 1);
    s.submit(simple("r1", &[1, 2, 3, 4], 1, &replies));
    s.submit(simple("r2", &[1, 2, 3, 4, 5], 1, &replies));
    run(&mut s, &mut ctx);
    assert_eq!(s.stats.reused, 0);
    assert_eq!(ctx.batches.last().unwrap().len(), 5);
}

#[test]
fn samples_share_the_prompt_and_draw_in_slots_of_their_own() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 3, true);
    let mut ctx = Fake::new(100, 16, 3);
    s.submit(request("n", &[1, 2], 3, 2, &replies, Default::default()));
    run(&mut s, &mut ctx);
    let r = replies.lock().unwrap();
    let c = r[0].1.as_ref().unwrap();
    let texts: Vec<&str> = c.choices.iter().map(|c| c.text.as_str()).collect();
    // Offsets 0, 100, 200 added at each draw: each sample its own sequence.
    assert_eq!(texts, ["3,4,", "103,204,", "203,404,"]);
    assert_eq!(c.usage.completion_tokens, 6);
    // The prompt was decoded once.
    assert_eq!(ctx.batches[0].len(), 2);
}

#[test]
fn a_failed_decode_ends_the_requests_in_it_and_the_next_starts_clean() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 2, true);
    let mut ctx = Fake::new(100, 16, 2);
    s.submit(simple("a", &[1, 2], 3, &replies));
    s.step(&mut ctx);
    ctx.fail_next = Some(DecodeFailure::Other("boom".into()));
    s.step(&mut ctx);
    {
        let r = replies.lock().unwrap();
        let e = r[0].1.as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert_eq!(e.usage.map(|u| u.completion_tokens), Some(1));
    }
    assert!(ctx.cells.iter().all(Vec::is_empty));
    s.submit(simple("b", &[1, 2], 1, &replies));
    run(&mut s, &mut ctx);
    assert_eq!(text(&replies, "b"), "3,");
    assert_eq!(s.stats.reused, 0, "nothing is reused from unknown cells");
}

#[test]
fn idle_caches_make_room_for_a_newcomer_oldest_first() {
    let replies = Replies::default();
    let mut s = Scheduler::new("m", 3, true);
    let mut ctx = Fake::new(12, 16, 3);
    s.submit(simple("a", &[1, 2, 3, 4], 1, &replies));
    run(&mut s, &mut ctx);
    s.submit(simple("b", &[20, 21, 22, 23], 1, &replies));
    run(&mut s, &mut ctx);
    // 8 cells cached in two idle slots; c needs 6 + 2 of 12: a's goes.
    s.submit(simple("c", &[30, 31, 32, 33, 34, 35], 2, &replies));
    run(&mut s, &mut ctx);
    assert_eq!(text(&replies, "c"), "36,37,");
    let held: Vec<usize> = ctx.cells.iter().map(Vec::len).collect();
    assert!(held.contains(&4) && held.contains(&7), "{held:?}");
}

/// A draft that proposes what the fake model's greedy sampler picks (the
/// last token plus one), except after multiples of `miss`, where it
/// proposes 0; it checks its sequences stay contiguous like [`Fake`].
struct FakeDraft {
    n_batch: usize,
    cells: Vec<Vec<Token>>,
    last: Vec<BatchToken>,
    miss: Token,
    fail: bool,
    decodes: usize,
}

impl FakeDraft {
    fn new(parallel: usize, miss: Token) -> FakeDraft {
        FakeDraft {
            n_batch: 16,
            cells: vec![Vec::new(); parallel],
            last: Vec::new(),
            miss,
            fail: false,
            decodes: 0,
        }
    }
}

impl Draft for FakeDraft {
    fn n_batch(&self) -> usize {
        self.n_batch
    }
    fn remove(&mut self, seq: usize, from: usize) -> Result<(), String> {
        self.cells[seq].truncate(from);
        Ok(())
    }
    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), DecodeFailure> {
        if self.fail {
            return Err(DecodeFailure::Other("draft broken".into()));
        }
        assert!(batch.len() <= self.n_batch, "a draft batch over n_batch");
        for t in batch {
            assert_eq!(
                self.cells[t.seq].len(),
                t.pos,
                "a gap in draft sequence {}",
                t.seq
            );
            self.cells[t.seq].push(t.token);
        }
        self.last = batch.to_vec();
        self.decodes += 1;
        Ok(())
    }
    fn argmax(&self, at: usize) -> Token {
        assert!(
            self.last[at].logits,
            "logits of a token decoded without them"
        );
        let t = self.last[at].token;
        if t % self.miss == 0 { 0 } else { t + 1 }
    }
}

/// Runs requests with and without a draft; returns both schedulers'
/// replies, contexts and decode counts.
fn with_and_without_draft(
    draft: &mut FakeDraft,
    draft_max: usize,
    requests: &[(&str, &[Token], usize, usize)],
) -> [(Replies, Fake, BatchStats); 2] {
    let mut out = Vec::new();
    for use_draft in [false, true] {
        let replies = Replies::default();
        let mut s = Scheduler::new("m", 4, true).with_draft_max(draft_max);
        let mut ctx = Fake::new(200, 16, 4);
        for &(name, tokens, samples, max) in requests {
            s.submit(request(
                name,
                tokens,
                samples,
                max,
                &replies,
                Default::default(),
            ));
        }
        let mut steps = 0;
        while !s.idle() {
            s.step_with(&mut ctx, use_draft.then_some(&mut *draft));
            steps += 1;
            assert!(steps < 1000, "the scheduler does not finish");
        }
        out.push((replies, ctx, s.stats));
    }
    out.try_into().unwrap_or_else(|_| unreachable!())
}

fn texts(replies: &Replies) -> Vec<(String, Vec<String>)> {
    let mut all: Vec<(String, Vec<String>)> = replies
        .lock()
        .unwrap()
        .iter()
        .map(|(n, r)| {
            let c = r.as_ref().expect("a completion");
            (
                n.clone(),
                c.choices.iter().map(|c| c.text.clone()).collect(),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn speculation_gives_the_same_text_and_cells_in_fewer_target_decodes() {
    let mut draft = FakeDraft::new(4, 7);
    // "a" greedy (the draft is right but after multiples of 7), "b" two
    // samples, the second drawing +100 (the draft is always wrong there).
    let [
        (plain, plain_ctx, plain_stats),
        (spec, spec_ctx, spec_stats),
    ] = with_and_without_draft(
        &mut draft,
        4,
        &[("a", &[1, 2, 3], 1, 20), ("b", &[30], 2, 5)],
    );
    assert_eq!(texts(&spec), texts(&plain));
    assert_eq!(
        texts(&plain)[0].1,
        ["4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,"]
    );
    // The KV cells left behind are the same: rejected proposals left.
    assert_eq!(spec_ctx.cells, plain_ctx.cells);
    assert!(
        spec_stats.decodes < plain_stats.decodes,
        "{spec_stats:?} vs {plain_stats:?}"
    );
    assert!(spec_stats.accepted > 0 && spec_stats.accepted < spec_stats.drafted);
    // Never more proposals than a step's room or the tokens left.
    for b in &spec_ctx.batches {
        for seq in 0..4 {
            assert!(
                b.iter().filter(|t| t.seq == seq && t.logits).count() <= 5,
                "{b:?}"
            );
        }
    }
}

#[test]
fn a_failing_draft_turns_speculation_off_and_fails_no_request() {
    let mut draft = FakeDraft::new(4, 7);
    draft.fail = true;
    let [(plain, plain_ctx, _), (spec, spec_ctx, stats)] =
        with_and_without_draft(&mut draft, 4, &[("a", &[1, 2, 3], 1, 8)]);
    assert_eq!(texts(&spec), texts(&plain));
    assert_eq!(spec_ctx.cells, plain_ctx.cells);
    assert_eq!((stats.drafted, stats.accepted), (0, 0));
}

#[test]
fn proposals_stop_at_max_tokens_and_a_long_catch_up_is_chunked() {
    // The draft's batch is smaller than the prompt: its catch-up takes
    // several decodes, and the pending token is decoded again for logits.
    let mut draft = FakeDraft::new(4, 1000);
    draft.n_batch = 4;
    let prompt: Vec<Token> = (1..=10).collect();
    let [(plain, _, _), (spec, spec_ctx, stats)] =
        with_and_without_draft(&mut draft, 8, &[("a", &prompt, 1, 3)]);
    assert_eq!(texts(&spec), texts(&plain));
    assert_eq!(texts(&spec)[0].1, ["11,12,13,"]);
    // Three tokens: the first from the prompt's logits, then one step
    // with one proposal (kept) and the token after it; max_tokens leaves
    // no room for more.
    assert_eq!((stats.drafted, stats.accepted), (1, 1));
    assert_eq!(spec_ctx.batches.len(), 2);
    assert!(draft.decodes >= 3, "{}", draft.decodes);
}
