//! Cross-cutting concerns as wrappers around any [`LanguageModel`]: retry,
//! timeout and rate limiting. Each wrapper is itself a `LanguageModel`, so
//! they stack (tower style) and no backend carries flags for them.
//!
//! The engine stacks them per call as
//! `Retry → Metered (budget, events) → [Cached →] Timeout → RateLimit → backend`,
//! so every attempt, retries included, passes the budget check and is
//! recorded as its own model-call event.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::backend::{
    BackendError, Completion, CompletionRequest, EmbeddingRequest, Embeddings, ErrorKind,
    LanguageModel,
};

/// When and how long to wait before trying again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retrying).
    pub max_retries: u32,
    /// Delay before the first retry; doubles each time.
    pub base_delay: Duration,
    /// Upper bound of one delay (a `Retry-After` above it is honoured anyway).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with "equal jitter": half fixed, half random, so
    /// clients that failed together do not retry together.
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << retry.min(16));
        let capped = exp.min(self.max_delay);
        capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// Retries transient failures. A server's `Retry-After` wins over backoff.
pub struct Retry<M> {
    inner: M,
    policy: RetryPolicy,
}

impl<M: LanguageModel> Retry<M> {
    pub fn new(inner: M, policy: RetryPolicy) -> Self {
        Retry { inner, policy }
    }
}

/// A cheap random number in [0, 1) for jitter (no need for a crypto RNG).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl<M: LanguageModel> Retry<M> {
    /// Calls, then retries transient failures with backoff (or the server's
    /// `Retry-After`), numbering each try in the request's context.
    async fn retrying<'a, R, T>(
        &'a self,
        req: &'a R,
        number: fn(&mut R, u32),
        call: impl for<'r> Fn(&'r M, &'r R) -> BoxFuture<'r, Result<T, BackendError>>,
    ) -> Result<T, BackendError>
    where
        R: Clone,
    {
        let mut err = match call(&self.inner, req).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        for retry in 1..=self.policy.max_retries {
            if !err.is_transient() {
                break;
            }
            let wait = err
                .retry_after
                .unwrap_or_else(|| self.policy.delay(retry - 1, jitter()));
            tracing::debug!(model = self.inner.id(), retry, ?wait, error = %err, "retrying");
            tokio::time::sleep(wait).await;
            let mut again = req.clone();
            number(&mut again, retry);
            match call(&self.inner, &again).await {
                Ok(v) => return Ok(v),
                Err(e) => err = e,
            }
        }
        Err(err)
    }
}

impl<M: LanguageModel> LanguageModel for Retry<M> {
    crate::backend::forward_to_inner!(id, capabilities, estimate);

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(self.retrying(req, |r, n| r.context.retry = n, M::complete))
    }

    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        Box::pin(self.retrying(req, |r, n| r.context.retry = n, M::embed))
    }
}

/// Fails a call that takes longer than `limit` with a transient error.
pub struct Timeout<M> {
    inner: M,
    limit: Option<Duration>,
}

impl<M: LanguageModel> Timeout<M> {
    pub fn new(inner: M, limit: Duration) -> Self {
        Timeout {
            inner,
            limit: Some(limit),
        }
    }

    /// No limit when `limit` is `None` (the layer passes calls through).
    pub fn optional(inner: M, limit: Option<Duration>) -> Self {
        Timeout { inner, limit }
    }
}

impl<M: LanguageModel> Timeout<M> {
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let Some(limit) = self.limit else {
            return call.await;
        };
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(BackendError::new(
                self.inner.id(),
                ErrorKind::Transient,
                format!("no reply within {limit:?}"),
            ))
        })
    }
}

impl<M: LanguageModel> LanguageModel for Timeout<M> {
    crate::backend::forward_to_inner!(id, capabilities, estimate);

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(self.bounded(self.inner.complete(req)))
    }

    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        Box::pin(self.bounded(self.inner.embed(req)))
    }
}

/// Requests and tokens per minute.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

/// Two token buckets (requests, tokens) refilled continuously.
#[derive(Debug)]
struct Buckets {
    requests: f64,
    tokens: f64,
    updated: tokio::time::Instant,
}

/// Waits before a call until both buckets allow it. A call's token cost is
/// its worst case (prompt estimate + `n` × max tokens), taken up front.
pub struct RateLimit<M> {
    inner: M,
    limits: RateLimits,
    buckets: Mutex<Buckets>,
}

impl<M: LanguageModel> RateLimit<M> {
    pub fn new(inner: M, limits: RateLimits) -> Self {
        let buckets = Buckets {
            requests: limits.requests_per_minute.unwrap_or(0) as f64,
            tokens: limits.tokens_per_minute.unwrap_or(0) as f64,
            updated: tokio::time::Instant::now(),
        };
        RateLimit {
            inner,
            limits,
            buckets: Mutex::new(buckets),
        }
    }

    /// Takes one request and `tokens` from the buckets, or says how long to
    /// wait before they hold enough.
    fn take(&self, tokens: f64) -> Option<Duration> {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        let minutes = now.duration_since(b.updated).as_secs_f64() / 60.0;
        b.updated = now;
        let mut wait: f64 = 0.0;
        if let Some(rpm) = self.limits.requests_per_minute {
            let cap = rpm as f64;
            b.requests = (b.requests + minutes * cap).min(cap);
            if b.requests < 1.0 {
                wait = wait.max((1.0 - b.requests) / cap * 60.0);
            }
        }
        if let Some(tpm) = self.limits.tokens_per_minute {
            let cap = tpm as f64;
            // A call larger than the whole bucket waits for a full bucket.
            let need = tokens.min(cap);
            b.tokens = (b.tokens + minutes * cap).min(cap);
            if b.tokens < need {
                wait = wait.max((need - b.tokens) / cap * 60.0);
            }
        }
        // Float refills can leave a deficit of a few ulps: forgive it, and
        // never ask for a wait too short to move the clock.
        if wait > 1e-6 {
            return Some(Duration::from_secs_f64(wait).max(Duration::from_millis(1)));
        }
        if self.limits.requests_per_minute.is_some() {
            b.requests = (b.requests - 1.0).max(0.0);
        }
        if let Some(tpm) = self.limits.tokens_per_minute {
            b.tokens = (b.tokens - tokens.min(tpm as f64)).max(0.0);
        }
        None
    }
}

impl<M: LanguageModel> LanguageModel for RateLimit<M> {
    crate::backend::forward_to_inner!(id, capabilities, estimate);

    fn complete<'a>(
        &'a self,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            let worst = self.inner.estimate_prompt_tokens(req)
                + req.n as u64 * req.sampling.max_tokens as u64;
            while let Some(wait) = self.take(worst as f64) {
                tokio::time::sleep(wait).await;
            }
            self.inner.complete(req).await
        })
    }

    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        Box::pin(async move {
            let worst: u64 = req.texts.iter().map(|t| t.len() as u64 / 3 + 1).sum();
            while let Some(wait) = self.take(worst as f64) {
                tokio::time::sleep(wait).await;
            }
            self.inner.embed(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::backend::{
        CallContext, Choice, FinishReason, Message, ResponseFormat, SamplingParams, Usage,
    };

    /// Fails with the given errors, then succeeds; records each try's retry number.
    struct Flaky {
        failures: Mutex<Vec<BackendError>>,
        tries: AtomicU32,
        retries_seen: Mutex<Vec<u32>>,
    }

    impl Flaky {
        fn new(failures: Vec<BackendError>) -> Arc<Self> {
            Arc::new(Flaky {
                failures: Mutex::new(failures),
                tries: AtomicU32::new(0),
                retries_seen: Mutex::new(Vec::new()),
            })
        }

        /// Records a try; fails with the next scripted error, if any.
        fn attempt(&self, retry: u32) -> Result<(), BackendError> {
            self.tries.fetch_add(1, Ordering::SeqCst);
            self.retries_seen.lock().unwrap().push(retry);
            let mut f = self.failures.lock().unwrap();
            if f.is_empty() {
                Ok(())
            } else {
                Err(f.remove(0))
            }
        }
    }

    impl LanguageModel for Flaky {
        fn id(&self) -> &str {
            "flaky"
        }
        fn complete<'a>(
            &'a self,
            req: &'a CompletionRequest,
        ) -> BoxFuture<'a, Result<Completion, BackendError>> {
            Box::pin(async move {
                self.attempt(req.context.retry)?;
                Ok(Completion {
                    choices: vec![Choice {
                        text: "ok".into(),
                        finish: FinishReason::Stop,
                        logprobs: None,
                    }],
                    usage: Usage {
                        prompt_tokens: 1,
                        completion_tokens: 1,
                        ..Default::default()
                    },
                    usage_estimated: false,
                })
            })
        }

        fn embed<'a>(
            &'a self,
            req: &'a EmbeddingRequest,
        ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
            Box::pin(async move {
                self.attempt(req.context.retry)?;
                Ok(Embeddings {
                    vectors: vec![vec![1.0]; req.texts.len()],
                    usage: Usage::default(),
                })
            })
        }
    }

    fn req() -> CompletionRequest {
        CompletionRequest {
            messages: vec![Message::user("hi")],
            sampling: SamplingParams {
                max_tokens: 10,
                ..Default::default()
            },
            n: 1,
            logprobs: None,
            response_format: ResponseFormat::Text,
            context: CallContext::default(),
        }
    }

    fn transient() -> BackendError {
        BackendError::new("flaky", ErrorKind::Transient, "503")
    }

    #[tokio::test(start_paused = true)]
    async fn embeddings_are_retried_like_completions() {
        let model = Flaky::new(vec![transient(), transient()]);
        let req = EmbeddingRequest {
            texts: vec!["a".into(), "b".into()],
            context: CallContext::default(),
        };
        let e = Retry::new(model.clone(), RetryPolicy::default())
            .embed(&req)
            .await
            .unwrap();
        assert_eq!(e.vectors.len(), 2);
        assert_eq!(*model.retries_seen.lock().unwrap(), [0, 1, 2]);
        // Permanent errors are not retried.
        let model = Flaky::new(vec![BackendError::new(
            "flaky",
            ErrorKind::Permanent,
            "400",
        )]);
        assert!(
            Retry::new(model.clone(), RetryPolicy::default())
                .embed(&req)
                .await
                .is_err()
        );
        assert_eq!(model.tries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_with_backoff_and_honours_retry_after() {
        let model = Flaky::new(vec![
            transient(),
            transient().with_retry_after(Some(Duration::from_secs(7))),
        ]);
        let policy = RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let start = tokio::time::Instant::now();
        let c = Retry::new(model.clone(), policy)
            .complete(&req())
            .await
            .unwrap();
        assert_eq!(c.choices[0].text, "ok");
        assert_eq!(model.tries.load(Ordering::SeqCst), 3);
        assert_eq!(*model.retries_seen.lock().unwrap(), vec![0, 1, 2]);
        // First wait: 50..100 ms of backoff; second: exactly the 7 s asked for.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(7050) && waited <= Duration::from_millis(7100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_retries_are_bounded() {
        let model = Flaky::new(vec![BackendError::new(
            "flaky",
            ErrorKind::Permanent,
            "401",
        )]);
        let e = Retry::new(model.clone(), RetryPolicy::default())
            .complete(&req())
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert_eq!(model.tries.load(Ordering::SeqCst), 1);

        let model = Flaky::new((0..10).map(|_| transient()).collect());
        let policy = RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        };
        let e = Retry::new(model.clone(), policy)
            .complete(&req())
            .await
            .unwrap_err();
        assert!(e.is_transient());
        assert_eq!(model.tries.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        };
        assert_eq!(p.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(p.delay(2, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay(9, 1.0), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_turns_a_stall_into_a_transient_error() {
        struct Stall;
        impl LanguageModel for Stall {
            fn id(&self) -> &str {
                "stall"
            }
            fn complete<'a>(
                &'a self,
                _: &'a CompletionRequest,
            ) -> BoxFuture<'a, Result<Completion, BackendError>> {
                Box::pin(std::future::pending())
            }
        }
        let e = Timeout::new(Stall, Duration::from_secs(3))
            .complete(&req())
            .await
            .unwrap_err();
        assert!(e.is_transient());
        assert!(e.message.contains("3s"));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spaces_requests() {
        let model = Flaky::new(vec![]);
        let limits = RateLimits {
            requests_per_minute: Some(60),
            tokens_per_minute: None,
        };
        let limited = RateLimit::new(model.clone(), limits);
        let start = tokio::time::Instant::now();
        // The bucket starts full (60); the 61st..63rd calls wait a second each.
        for _ in 0..63 {
            limited.complete(&req()).await.unwrap();
        }
        let t = start.elapsed();
        assert!(
            t >= Duration::from_secs(3) && t < Duration::from_millis(3100),
            "{t:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn token_rate_limit_counts_the_worst_case() {
        let model = Flaky::new(vec![]);
        // 600 tokens per minute = 10 per second; each call may use 2 + 10 = 12 ("hi" is 1/3+4 = 4? see estimate).
        let limits = RateLimits {
            requests_per_minute: None,
            tokens_per_minute: Some(600),
        };
        let limited = RateLimit::new(model.clone(), limits);
        let per_call = (model.estimate_prompt_tokens(&req()) + 10) as f64;
        let calls = (600.0 / per_call).floor() as u32 + 2;
        let start = tokio::time::Instant::now();
        for _ in 0..calls {
            limited.complete(&req()).await.unwrap();
        }
        // Two calls beyond the full bucket need about 2 × per_call / 10 seconds.
        let expected = Duration::from_secs_f64((2.0 * per_call - (600.0 % per_call)) / 10.0);
        let t = start.elapsed();
        assert!(
            t + Duration::from_millis(50) >= expected && t <= expected + Duration::from_millis(100),
            "{t:?} vs {expected:?}"
        );
    }
}
