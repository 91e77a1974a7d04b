//! The worker's side of rate limiting: one lease per bucket the job is bound to, kept fresh by
//! a background loop, and a handler decorator that takes each item's tokens before the call,
//! charges what the answer reports as `usage` after it, and tells the bucket when the API
//! refused for rate. docs/rate-limits.md describes the model.
//!
//! Why a loop per bucket and not a store call per item: the bucket is shared by every worker
//! of every job on the storage, so it is written only when this worker's share changes or its
//! lease runs low (about once per 100 tokens); items are paced locally in between.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use orch_core::backend::{RateLimitStore, update_bucket};
use orch_core::model::{LimitBinding, Millis, now_ms};
use orch_core::ratelimit::{
    DECREASE_COOLDOWN_MS, LeaseRequest, Pacer, RENEW_WHEN_LEFT, Terms, Wait,
};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::handler::{Answer, Handler, Outcome};
use orch_core::model::ErrorKind;

/// How often a worker reads its buckets (reads are cheap; writes happen only on change).
const POLL: Duration = Duration::from_millis(1_000);
/// A share that changed by more than this fraction is written (a lower one at once).
const CHANGE: f64 = 0.05;
/// A higher share is taken once it has been there this long.
const RAISE_AFTER_MS: Millis = 2_500;

/// The leases of one worker process, one per bucket the job names.
pub struct Limiter {
    limits: Vec<Arc<Limit>>,
    stop: Arc<Stop>,
    figures: Arc<LimiterFigures>,
}

/// What a limiter gave: published in the task row, from which the driver's metrics read it.
#[derive(Debug, Default)]
pub struct LimiterFigures {
    /// Tokens taken from every bucket together (per item, and charged from answers).
    pub tokens: AtomicU64,
    /// Time items waited for tokens, added up over items, in milliseconds.
    pub waited_ms: AtomicU64,
}

impl LimiterFigures {
    /// Puts the figures in `row`.
    pub fn publish_in(&self, row: &mut orch_core::model::TaskRecord) {
        row.rate_limit_tokens = self.tokens.load(Ordering::Relaxed);
        row.rate_limit_wait_ms = self.waited_ms.load(Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    wake: Notify,
}

struct Limit {
    binding: LimitBinding,
    store: Arc<dyn RateLimitStore>,
    holder: String,
    job: String,
    origin: Instant,
    state: Mutex<LimitState>,
    wake: Notify,
}

struct LimitState {
    pacer: Pacer,
    terms: Terms,
    /// Tokens spent since this worker last wrote the bucket.
    used: u64,
    throttled: bool,
    written_at: Millis,
    /// When the bucket as last read was last lowered (a push-back within the cooldown is
    /// not written again).
    adjusted_at: Millis,
    paused: bool,
    /// Since when a higher share has been there for the taking.
    more_since: Option<Millis>,
}

impl Limit {
    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn state(&self) -> MutexGuard<'_, LimitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self, st: &LimitState, now: Millis) -> LeaseRequest {
        // A worker that used well under its share without waiting wants about what it used;
        // one that waited wants as much as it can get.
        let secs = now.saturating_sub(st.written_at) as f64 / 1000.0;
        let observed = if secs > 0.0 {
            st.used as f64 / secs
        } else {
            0.0
        };
        let demand = (!st.throttled && secs >= 5.0 && observed < st.terms.rate * 0.8)
            .then(|| (observed * 1.25).max(0.1));
        LeaseRequest {
            holder: self.holder.clone(),
            job: self.job.clone(),
            weight: self.binding.weight,
            demand,
            used: st.used,
            throttled: st.throttled,
        }
    }

    fn apply(&self, st: &mut LimitState, terms: Terms, now: Millis) {
        let mono = self.now();
        let secs = |at: Millis| at.saturating_sub(now) as f64 / 1000.0;
        st.pacer.set_terms(
            terms.rate,
            terms.burst,
            secs(terms.expires),
            secs(terms.paused_until),
            mono,
        );
        st.terms = terms;
        self.wake.notify_waiters();
    }

    /// One pass: read the bucket, and write it when this worker's lease must change.
    async fn refresh(&self) -> orch_core::backend::BackendResult<()> {
        let Some(bucket) = self.store.get_bucket(&self.binding.key).await? else {
            warn!(bucket = %self.binding.key, "the rate limit bucket is gone; no new tokens");
            return Ok(());
        };
        // The job's driver marks a pause in the bucket: no share, no tokens until it resumes.
        let paused = bucket.is_paused(&self.job);
        let now = now_ms();
        let (req, write) = {
            let mut st = self.state();
            st.adjusted_at = bucket.adjusted_at;
            if paused != st.paused {
                st.paused = paused;
                if paused {
                    self.apply(&mut st, Terms::NONE, now);
                }
            }
            let req = self.request(&st, now);
            let mine = bucket.lease_of(&self.holder, now);
            let write = if paused {
                mine.is_some()
            } else {
                let would = bucket.would_grant(&req, now);
                match mine {
                    None => true,
                    Some(l) => {
                        let length = (l.expires.saturating_sub(st.written_at)) as f64;
                        let left = l.expires.saturating_sub(now) as f64;
                        let lower = would.rate < l.rate * (1.0 - CHANGE);
                        // A share freed by a worker that ended is usually taken by the next
                        // task's worker within a second or two: raise only when it stays free,
                        // or every turnover would cost each worker two writes.
                        let higher = would.rate > l.rate * (1.0 + CHANGE) + 1e-9;
                        let since = *st.more_since.get_or_insert(now);
                        if !higher {
                            st.more_since = None;
                        }
                        left < length * RENEW_WHEN_LEFT
                            || lower
                            || (higher && now.saturating_sub(since) >= RAISE_AFTER_MS)
                    }
                }
            };
            if !write && !paused {
                // Nothing to write; a pause set by another worker still applies here.
                let terms = Terms {
                    paused_until: bucket.paused_until,
                    ..st.terms
                };
                self.apply(&mut st, terms, now);
            }
            (req, write)
        };
        if !write {
            return Ok(());
        }
        let (stored, terms) = update_bucket(self.store.as_ref(), &self.binding.key, None, |b| {
            if paused {
                b.release(&req.holder, req.used);
                Terms::NONE
            } else {
                b.grant(&req, now)
            }
        })
        .await?;
        let mut st = self.state();
        st.used = st.used.saturating_sub(req.used);
        st.throttled = false;
        st.more_since = None;
        st.written_at = now;
        st.adjusted_at = stored.adjusted_at;
        debug!(bucket = %self.binding.key, rate = terms.rate, burst = terms.burst, "lease");
        self.apply(&mut st, terms, now);
        Ok(())
    }

    async fn take(&self, tokens: f64) {
        loop {
            let wait = {
                let mut st = self.state();
                match st.pacer.take(tokens, self.now()) {
                    Ok(()) => {
                        st.used += tokens as u64;
                        return;
                    }
                    Err(w) => {
                        st.throttled = true;
                        w
                    }
                }
            };
            let woken = self.wake.notified();
            match wait {
                Wait::Until(at) => {
                    let secs = (at - self.now()).clamp(0.0, POLL.as_secs_f64());
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                        _ = woken => {}
                    }
                }
                Wait::ForLease => {
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = woken => {}
                    }
                }
            }
        }
    }

    fn charge(&self, tokens: u64) {
        let mut st = self.state();
        let now = self.now();
        st.pacer.charge(tokens as f64, now);
        st.used += tokens;
    }

    /// The API refused for rate: stop here at once, and lower the shared rate for everyone
    /// (one write per congestion episode, whoever sees it first).
    async fn push_back(&self, retry_after: Option<Duration>) {
        let now = now_ms();
        {
            let mut st = self.state();
            let mono = self.now();
            if let Some(wait) = retry_after {
                st.pacer.pause(wait.as_secs_f64(), mono);
            }
            if now.saturating_sub(st.adjusted_at) < DECREASE_COOLDOWN_MS && retry_after.is_none() {
                return;
            }
            st.adjusted_at = now;
        }
        let wait_ms = retry_after.map(|d| d.as_millis() as Millis);
        let result = update_bucket(self.store.as_ref(), &self.binding.key, None, |b| {
            b.push_back(now, wait_ms)
        })
        .await;
        match result {
            Ok((b, ())) => info!(
                bucket = %self.binding.key,
                rate = b.current_rate(now),
                "the API refused for rate: the shared rate is lowered"
            ),
            Err(e) => warn!(bucket = %self.binding.key, error = %e, "cannot lower the shared rate"),
        }
    }

    async fn release(&self) {
        let used = self.state().used;
        let holder = self.holder.clone();
        if let Err(e) = update_bucket(self.store.as_ref(), &self.binding.key, None, |b| {
            b.release(&holder, used)
        })
        .await
        {
            debug!(bucket = %self.binding.key, error = %e, "lease not released; it expires");
        }
    }
}

impl Limiter {
    /// Starts keeping a lease on each bucket of `bindings` for worker `holder` of `job`. A job
    /// its driver marked paused in a bucket holds no lease there.
    pub fn start(
        bindings: &[LimitBinding],
        store: Arc<dyn RateLimitStore>,
        job: &str,
        holder: &str,
    ) -> Limiter {
        let origin = Instant::now();
        let limits: Vec<Arc<Limit>> = bindings
            .iter()
            .map(|b| {
                Arc::new(Limit {
                    binding: b.clone(),
                    store: store.clone(),
                    holder: holder.to_string(),
                    job: job.to_string(),
                    origin,
                    state: Mutex::new(LimitState {
                        pacer: Pacer::new(0.0),
                        terms: Terms::NONE,
                        used: 0,
                        throttled: false,
                        written_at: now_ms(),
                        adjusted_at: 0,
                        paused: false,
                        more_since: None,
                    }),
                    wake: Notify::new(),
                })
            })
            .collect();
        let stop = Arc::new(Stop::default());
        let (loop_limits, loop_stop) = (limits.clone(), stop.clone());
        tokio::spawn(async move {
            while !loop_stop.stopped.load(Ordering::SeqCst) {
                for limit in &loop_limits {
                    if let Err(e) = limit.refresh().await {
                        warn!(bucket = %limit.binding.key, error = %e, "cannot renew the rate limit lease");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = loop_stop.wake.notified() => {}
                }
            }
        });
        Limiter {
            limits,
            stop,
            figures: Arc::default(),
        }
    }

    /// What this limiter gave so far.
    pub fn figures(&self) -> Arc<LimiterFigures> {
        self.figures.clone()
    }

    /// Takes one item's tokens from every bucket, waiting as long as it takes.
    pub async fn acquire(&self) {
        let started = Instant::now();
        for limit in &self.limits {
            limit.take(f64::from(limit.binding.tokens_per_item)).await;
            self.figures
                .tokens
                .fetch_add(u64::from(limit.binding.tokens_per_item), Ordering::Relaxed);
        }
        self.figures
            .waited_ms
            .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Charges tokens an answer reported it used (`usage`), by `RateLimit` name.
    pub fn charge(&self, name: &str, tokens: u64) {
        if let Some(limit) = self.limits.iter().find(|l| l.binding.name == name) {
            limit.charge(tokens);
            self.figures.tokens.fetch_add(tokens, Ordering::Relaxed);
        }
    }

    /// The API refused an item for rate.
    pub async fn push_back(&self, retry_after: Option<Duration>) {
        for limit in &self.limits {
            limit.push_back(retry_after).await;
        }
    }

    /// Ends the leases, so their shares go to other workers at once (a worker that dies
    /// without this leaves them to expire).
    pub async fn stop(&self) {
        if self.stop.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.stop.wake.notify_waiters();
        for limit in &self.limits {
            limit.release().await;
        }
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.stop.stopped.store(true, Ordering::SeqCst);
        self.stop.wake.notify_waiters();
    }
}

/// A handler whose calls go through a [`Limiter`].
pub struct Throttled {
    pub inner: Arc<dyn Handler>,
    pub limiter: Arc<Limiter>,
}

#[async_trait::async_trait]
impl Handler for Throttled {
    async fn call(&self, item: &RawValue) -> Answer {
        self.limiter.acquire().await;
        let answer = self.inner.call(item).await;
        for (name, tokens) in &answer.usage {
            self.limiter.charge(name, *tokens);
        }
        if let Outcome::Err(f) = &answer.outcome
            && f.kind == ErrorKind::RateLimited
        {
            self.limiter.push_back(f.retry_after).await;
        }
        answer
    }

    async fn shutdown(&self) {
        self.limiter.stop().await;
        self.inner.shutdown().await;
    }
}
