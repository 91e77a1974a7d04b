//! Distributed rate limiting without I/O: the shared bucket that every worker of every job
//! naming a `RateLimit` leases its share of the rate from, and the pacer through which a worker
//! spends its lease. docs/rate-limits.md explains the model to users.
//!
//! Why leases of *rate* rather than blocks of tokens: a block handed to a worker that is then
//! killed either overshoots (someone hands it out again) or must be tracked token by token.
//! A lease gives one worker a share of the rate and of the burst until it expires; the worker
//! paces itself, so the bucket is written when shares change (a worker joins or leaves, the
//! API pushes back) and on renewal, about once per [`TOKENS_PER_LEASE`] tokens — never per
//! token. A killed worker's lease runs out and its share returns: the rate can only undershoot.
//!
//! Fairness: the rate is split max-min fairly between jobs by weight, then evenly between a
//! job's workers; a worker that uses less than its share leaves the rest to the others.
//! Adaptive: a refusal by the API lowers the shared rate multiplicatively (stored in the
//! bucket, so every worker follows), and it recovers additively up to the spec rate.

use serde::{Deserialize, Serialize};

use crate::model::Millis;

/// A lease lasts about as long as its holder needs to spend this many tokens; holders renew
/// when [`RENEW_WHEN_LEFT`] of it is left, so a steady holder writes once per ~100 tokens.
pub const TOKENS_PER_LEASE: f64 = 150.0;
/// The fraction of a lease left when its holder renews it.
pub const RENEW_WHEN_LEFT: f64 = 1.0 / 3.0;
/// Bounds of a lease's length: short enough that a dead worker's share returns soon, long
/// enough that slow workers do not write the bucket all the time.
pub const MIN_LEASE_MS: Millis = 2_000;
pub const MAX_LEASE_MS: Millis = 60_000;
/// A refusal by the API multiplies the shared rate by this.
pub const DECREASE_FACTOR: f64 = 0.7;
/// Refusals within this time of the last decrease are the same congestion: no new decrease.
pub const DECREASE_COOLDOWN_MS: Millis = 2_000;
/// The shared rate recovers by this fraction of the spec rate per second.
pub const RECOVERY_PER_SEC: f64 = 0.02;
/// The shared rate never drops below this fraction of the spec rate.
pub const FLOOR_FRACTION: f64 = 0.02;

/// Parses a rate as written in a `RateLimit`: a number, `/`, and `s`, `m` or `h` (`10/s`,
/// `600/m`, `0.5/s`). Returns tokens per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let bad =
        || format!("`{text}` is not a rate: write a number, `/` and s, m or h (`10/s`, `600/m`)");
    let (number, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let n: f64 = number.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("`{text}`: the rate must be more than 0"));
    }
    Ok(n / per)
}

/// One worker's share of a bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The worker process holding it.
    pub holder: String,
    /// The job it works for (shares are fair between jobs first).
    pub job: String,
    /// The job's weight on this bucket (default 1).
    pub weight: u32,
    /// Tokens per second the holder may spend (0: registered, waiting for a share).
    pub rate: f64,
    /// Tokens the holder may spend at once after a quiet spell.
    pub burst: f64,
    /// Tokens per second the holder would spend if it could; `None`: as many as it gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<f64>,
    pub expires: Millis,
}

/// A bucket as stored: its configuration, the adaptive state, and the live leases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Who shares it (docs/rate-limits.md, "Scope"), e.g. `ns/default/openai`.
    pub key: String,
    /// The spec rate, tokens per second.
    pub rate: f64,
    pub burst: u32,
    /// The shared rate after the API's last push-back, as of `adjusted_at`; recovers from there.
    pub effective_rate: f64,
    pub adjusted_at: Millis,
    /// No tokens before this (the API's `Retry-After`).
    pub paused_until: Millis,
    pub leases: Vec<Lease>,
    /// Jobs paused (`spec.suspend`): their workers get no share. Set by each job's driver when
    /// it sees the pause, so workers learn of it from the bucket they read anyway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paused_jobs: Vec<String>,
    /// Tokens spent, as reported by holders when they renew or leave.
    pub used: u64,
    /// When a holder last reported waiting for tokens.
    pub throttled_at: Millis,
    /// Writes of this bucket (every store write increments it: how the tests count them).
    pub writes: u64,
    /// Optimistic-locking version, owned by the store (0: not stored yet).
    pub version: u64,
}

/// What a worker asks a bucket for.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRequest {
    pub holder: String,
    pub job: String,
    pub weight: u32,
    pub demand: Option<f64>,
    /// Tokens spent since the holder last wrote the bucket.
    pub used: u64,
    /// Whether the holder waited for tokens since then.
    pub throttled: bool,
}

/// What a lease allows, as the pacer needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Terms {
    pub rate: f64,
    pub burst: f64,
    pub expires: Millis,
    /// No tokens before this, whatever the lease says.
    pub paused_until: Millis,
}

impl Terms {
    /// Nothing granted (no lease yet, or the job is paused).
    pub const NONE: Terms = Terms {
        rate: 0.0,
        burst: 0.0,
        expires: 0,
        paused_until: 0,
    };
}

impl Bucket {
    pub fn new(key: impl Into<String>, rate: f64, burst: u32, now: Millis) -> Bucket {
        Bucket {
            key: key.into(),
            rate,
            burst: burst.max(1),
            effective_rate: rate,
            adjusted_at: now,
            paused_until: 0,
            leases: Vec::new(),
            paused_jobs: Vec::new(),
            used: 0,
            throttled_at: 0,
            writes: 0,
            version: 0,
        }
    }

    /// Takes a new spec rate and burst; the shared rate never exceeds the new spec rate.
    pub fn configure(&mut self, rate: f64, burst: u32, now: Millis) {
        let current = self.current_rate(now);
        // Recovering from a push-back: go on from where the recovery is; else the new rate.
        self.effective_rate = if current < self.rate {
            current.min(rate)
        } else {
            rate
        };
        self.rate = rate;
        self.burst = burst.max(1);
        self.adjusted_at = now;
    }

    /// The shared rate now: the spec rate, or less while recovering from a push-back.
    pub fn current_rate(&self, now: Millis) -> f64 {
        let secs = now.saturating_sub(self.adjusted_at) as f64 / 1000.0;
        (self.effective_rate + RECOVERY_PER_SEC * self.rate * secs).min(self.rate)
    }

    /// Leases that have not expired.
    pub fn live(&self, now: Millis) -> impl Iterator<Item = &Lease> {
        self.leases.iter().filter(move |l| l.expires > now)
    }

    /// The rate the requester's fair share comes to: water-filling over the live holders (of
    /// jobs not paused) and the requester, by job weight split evenly within a job, capped by each one's demand.
    pub fn fair_share(&self, req: &LeaseRequest, now: Millis) -> f64 {
        let capacity = self.current_rate(now);
        let mut holders: Vec<(&str, u32, Option<f64>)> = self
            .live(now)
            .filter(|l| l.holder != req.holder && !self.is_paused(&l.job))
            .map(|l| (l.job.as_str(), l.weight, l.demand))
            .collect();
        holders.push((req.job.as_str(), req.weight, req.demand));
        let per_job = |job: &str| holders.iter().filter(|h| h.0 == job).count() as f64;
        // (weight, demand) of every holder; the requester is the last.
        let parts: Vec<(f64, f64)> = holders
            .iter()
            .map(|&(job, weight, demand)| {
                (
                    f64::from(weight.max(1)) / per_job(job),
                    demand.unwrap_or(f64::INFINITY).max(0.0),
                )
            })
            .collect();
        let level = water_level(capacity, &parts);
        let (w, d) = parts[parts.len() - 1];
        (level * w).min(d)
    }

    /// Grants (or renews) the requester's lease: its fair share, as far as the other live
    /// leases leave room (a holder above its share gives the excess back when it next
    /// renews), and a share of the burst in proportion. Expired leases are dropped.
    pub fn grant(&mut self, req: &LeaseRequest, now: Millis) -> Terms {
        let target = self.fair_share(req, now);
        self.leases
            .retain(|l| l.expires > now && l.holder != req.holder);
        self.used += req.used;
        if req.throttled {
            self.throttled_at = now;
        }
        let capacity = self.current_rate(now);
        let others: f64 = self.leases.iter().map(|l| l.rate).sum();
        let others_burst: f64 = self.leases.iter().map(|l| l.burst).sum();
        let rate = if now < self.paused_until || self.is_paused(&req.job) {
            0.0
        } else {
            target.min((capacity - others).max(0.0))
        };
        let burst = if capacity > 0.0 {
            (f64::from(self.burst) * rate / capacity)
                .min((f64::from(self.burst) - others_burst).max(0.0))
        } else {
            0.0
        };
        let length = if rate > 0.0 {
            ((TOKENS_PER_LEASE / rate * 1000.0) as Millis).clamp(MIN_LEASE_MS, MAX_LEASE_MS)
        } else {
            MIN_LEASE_MS
        };
        let expires = now + length;
        self.leases.push(Lease {
            holder: req.holder.clone(),
            job: req.job.clone(),
            weight: req.weight,
            rate,
            burst,
            demand: req.demand,
            expires,
        });
        Terms {
            rate,
            burst,
            expires,
            paused_until: self.paused_until,
        }
    }

    /// Whether `job` is paused on this bucket.
    pub fn is_paused(&self, job: &str) -> bool {
        self.paused_jobs.iter().any(|j| j == job)
    }

    /// Pauses or resumes `job` on this bucket; returns whether that changed anything.
    pub fn set_paused(&mut self, job: &str, paused: bool) -> bool {
        if self.is_paused(job) == paused {
            return false;
        }
        if paused {
            self.paused_jobs.push(job.to_string());
        } else {
            self.paused_jobs.retain(|j| j != job);
        }
        true
    }

    /// What [`Bucket::grant`] would give now, without changing the bucket.
    pub fn would_grant(&self, req: &LeaseRequest, now: Millis) -> Terms {
        self.clone().grant(req, now)
    }

    /// The holder's current lease, if live.
    pub fn lease_of(&self, holder: &str, now: Millis) -> Option<&Lease> {
        self.live(now).find(|l| l.holder == holder)
    }

    /// Ends a holder's lease (it finished, or its job paused), so its share goes to others now.
    pub fn release(&mut self, holder: &str, used: u64) {
        self.leases.retain(|l| l.holder != holder);
        self.used += used;
    }

    /// The API refused for rate: lower the shared rate for everyone (once per congestion
    /// episode) and, with a `Retry-After`, pause the bucket until then.
    pub fn push_back(&mut self, now: Millis, retry_after_ms: Option<Millis>) {
        if now.saturating_sub(self.adjusted_at) >= DECREASE_COOLDOWN_MS
            || self.effective_rate >= self.rate
        {
            let lowered = self.current_rate(now) * DECREASE_FACTOR;
            self.effective_rate = lowered.max(self.rate * FLOOR_FRACTION);
            self.adjusted_at = now;
        }
        if let Some(wait) = retry_after_ms {
            self.paused_until = self.paused_until.max(now + wait);
        }
    }
}

/// The level λ at which `Σ min(demand_i, λ·weight_i)` reaches `capacity` (max-min fairness);
/// infinite when every demand is met below capacity.
fn water_level(capacity: f64, parts: &[(f64, f64)]) -> f64 {
    // Holders in the order their demand is met as the level rises.
    let mut order: Vec<&(f64, f64)> = parts.iter().filter(|p| p.0 > 0.0).collect();
    order.sort_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)));
    let mut left = capacity;
    let mut weight: f64 = order.iter().map(|p| p.0).sum();
    for (w, d) in order {
        let level = left / weight;
        if d / w > level {
            return level;
        }
        left -= d;
        weight -= w;
    }
    f64::INFINITY
}

/// Spends a lease in one worker: a token bucket of the lease's rate and burst (at least one
/// token, so a holder whose share of the burst is below one can still send), with post-paid
/// charges that put it in debt. Time is in seconds on the caller's monotonic clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Pacer {
    rate: f64,
    capacity: f64,
    level: f64,
    at: f64,
    /// Seconds on the same clock after which the lease no longer holds.
    valid_until: f64,
    /// Seconds on the same clock before which nothing is spent (`Retry-After`).
    paused_until: f64,
}

/// Why a pacer cannot spend now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// Tokens come at this time (seconds on the caller's clock).
    Until(f64),
    /// No lease holds: wait for a new one.
    ForLease,
}

impl Pacer {
    /// An empty pacer with no lease. A new lease starts empty too: a worker's first token
    /// comes one interval after its grant, which staggers workers that start together.
    pub fn new(now: f64) -> Pacer {
        Pacer {
            rate: 0.0,
            capacity: 1.0,
            level: 0.0,
            at: now,
            valid_until: now,
            paused_until: now,
        }
    }

    fn refill(&mut self, now: f64) {
        if now > self.at {
            self.level = (self.level + (now - self.at) * self.rate).min(self.capacity);
            self.at = now;
        }
    }

    /// Takes new terms. Tokens saved and debt carry over (capped by the new burst).
    /// `valid_for` and `paused_for` are seconds from `now`.
    pub fn set_terms(&mut self, rate: f64, burst: f64, valid_for: f64, paused_for: f64, now: f64) {
        self.refill(now);
        self.rate = rate.max(0.0);
        self.capacity = burst.max(1.0);
        self.level = self.level.min(self.capacity);
        self.valid_until = now + valid_for.max(0.0);
        self.paused_until = self.paused_until.max(now + paused_for.max(0.0));
    }

    /// Pauses spending until `now + secs` (the API said `Retry-After`).
    pub fn pause(&mut self, secs: f64, now: f64) {
        self.paused_until = self.paused_until.max(now + secs);
    }

    /// The lease's rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes `n` tokens now, or says how long to wait. A request larger than the burst waits
    /// for a full bucket and leaves the rest as debt, so it is never refused for ever.
    pub fn take(&mut self, n: f64, now: f64) -> Result<(), Wait> {
        if now < self.paused_until {
            return Err(Wait::Until(self.paused_until));
        }
        if self.rate <= 0.0 || now >= self.valid_until {
            return Err(Wait::ForLease);
        }
        self.refill(now);
        let need = n.min(self.capacity);
        if self.level + 1e-9 >= need {
            self.level -= n;
            return Ok(());
        }
        let at = now + (need - self.level) / self.rate;
        if at >= self.valid_until {
            return Err(Wait::ForLease);
        }
        Err(Wait::Until(at))
    }

    /// Charges `n` tokens after the fact (usage an answer reported): the pacer goes into debt
    /// and the next grant waits until it is paid.
    pub fn charge(&mut self, n: f64, now: f64) {
        self.refill(now);
        self.level -= n;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    fn req(holder: &str, job: &str) -> LeaseRequest {
        LeaseRequest {
            holder: holder.into(),
            job: job.into(),
            weight: 1,
            demand: None,
            used: 0,
            throttled: false,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        assert_eq!(parse_rate("10/s").unwrap(), 10.0);
        assert_eq!(parse_rate("600/m").unwrap(), 10.0);
        assert_eq!(parse_rate("0.5/s").unwrap(), 0.5);
        assert_eq!(parse_rate("3600/h").unwrap(), 1.0);
        for bad in ["10", "10/d", "/s", "x/s", "0/s", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn water_filling_gives_unused_share_to_others() {
        // Three equal holders, one wanting only 2 of 30: the others split the remaining 28.
        let parts = [(1.0, 2.0), (1.0, f64::INFINITY), (1.0, f64::INFINITY)];
        assert!(close(water_level(30.0, &parts), 14.0));
        // Everyone satisfied: no level binds.
        assert!(water_level(30.0, &[(1.0, 5.0), (1.0, 5.0)]).is_infinite());
        // Weights: 2:1.
        assert!(close(
            water_level(30.0, &[(2.0, f64::INFINITY), (1.0, f64::INFINITY)]),
            10.0
        ));
    }

    #[test]
    fn shares_are_fair_between_jobs_before_workers() {
        let mut b = Bucket::new("k", 30.0, 10, 0);
        // Job a has three workers, job b one: b's worker gets half, a's workers a sixth each.
        for h in ["a1", "a2", "a3"] {
            b.grant(&req(h, "a"), 0);
        }
        let share_b = b.fair_share(&req("b1", "b"), 0);
        assert!(close(share_b, 15.0), "{share_b}");
        b.grant(&req("b1", "b"), 0);
        let share_a = b.fair_share(&req("a1", "a"), 0);
        assert!(close(share_a, 5.0), "{share_a}");
    }

    #[test]
    fn grants_never_exceed_the_rate_or_the_burst_and_converge_to_fair_shares() {
        let mut b = Bucket::new("k", 40.0, 20, 0);
        let holders: Vec<String> = (0..16).map(|i| format!("w{i}")).collect();
        // Several rounds of renewals, in order: the first takes everything, the others wait,
        // then each renewal gives back the excess.
        let mut now = 0;
        for _ in 0..4 {
            for h in &holders {
                b.grant(&req(h, "j"), now);
                let total: f64 = b.live(now).map(|l| l.rate).sum();
                let bursts: f64 = b.live(now).map(|l| l.burst).sum();
                assert!(total <= 40.0 + 1e-9, "{total}");
                assert!(bursts <= 20.0 + 1e-9, "{bursts}");
                now += 10;
            }
        }
        for l in b.live(now) {
            assert!(close(l.rate, 2.5), "{l:?}");
            assert!(close(l.burst, 1.25), "{l:?}");
        }
        // A lease lasts 150 tokens of its rate, at most a minute: 60 s at 2.5/s.
        let l = b.lease_of("w0", now).unwrap();
        assert!(
            l.expires - now > 59_000 && l.expires - now <= 60_000,
            "{l:?}"
        );
    }

    #[test]
    fn an_expired_lease_returns_its_share() {
        let mut b = Bucket::new("k", 10.0, 5, 0);
        let t = b.grant(&req("dead", "j"), 0);
        assert_eq!(t.rate, 10.0);
        // Before it expires nobody else gets anything ...
        assert_eq!(b.grant(&req("alive", "j"), 1_000).rate, 0.0);
        // ... after, all of it.
        assert_eq!(b.grant(&req("alive", "j"), t.expires).rate, 10.0);
        assert!(b.lease_of("dead", t.expires).is_none());
    }

    #[test]
    fn push_back_lowers_the_rate_once_per_episode_and_recovers() {
        let mut b = Bucket::new("k", 100.0, 5, 0);
        b.push_back(1_000, None);
        assert!(close(b.current_rate(1_000), 70.0));
        // A second refusal of the same episode changes nothing.
        b.push_back(1_500, None);
        assert!(close(b.current_rate(1_500), 71.0));
        // A later one lowers again.
        b.push_back(4_000, None);
        assert!(close(b.current_rate(4_000), 0.7 * 76.0));
        // Recovery is additive and stops at the spec rate.
        assert!(close(b.current_rate(14_000), 0.7 * 76.0 + 20.0));
        assert_eq!(b.current_rate(1_000_000), 100.0);
    }

    #[test]
    fn a_new_spec_rate_applies_at_once_unless_recovering() {
        let mut b = Bucket::new("k", 10.0, 5, 0);
        b.configure(20.0, 5, 1_000);
        assert_eq!(b.current_rate(1_000), 20.0);
        b.push_back(2_000, None);
        b.configure(40.0, 5, 2_000);
        assert!(
            close(b.current_rate(2_000), 14.0),
            "{}",
            b.current_rate(2_000)
        );
        b.configure(5.0, 5, 3_000);
        assert_eq!(b.current_rate(3_000), 5.0);
    }

    #[test]
    fn retry_after_pauses_every_grant() {
        let mut b = Bucket::new("k", 10.0, 5, 0);
        b.push_back(1_000, Some(3_000));
        let t = b.grant(&req("w", "j"), 2_000);
        assert_eq!(t.rate, 0.0);
        assert_eq!(t.paused_until, 4_000);
        assert!(b.grant(&req("w", "j"), 4_000).rate > 0.0);
    }

    #[test]
    fn a_paused_job_gets_no_share_until_resumed() {
        let mut b = Bucket::new("k", 10.0, 5, 0);
        assert!(b.set_paused("j1", true));
        assert!(!b.set_paused("j1", true));
        assert_eq!(b.grant(&req("a", "j1"), 0).rate, 0.0);
        assert_eq!(b.grant(&req("b", "j2"), 0).rate, 10.0);
        assert!(b.set_paused("j1", false));
        assert!(b.paused_jobs.is_empty());
    }

    #[test]
    fn a_released_lease_frees_its_share_at_once() {
        let mut b = Bucket::new("k", 10.0, 5, 0);
        b.grant(&req("a", "j1"), 0);
        b.release("a", 7);
        assert_eq!(b.used, 7);
        assert_eq!(b.grant(&req("b", "j2"), 1).rate, 10.0);
    }

    #[test]
    fn a_pacer_spends_its_rate_and_no_more() {
        let mut p = Pacer::new(0.0);
        assert_eq!(p.take(1.0, 0.0), Err(Wait::ForLease));
        p.set_terms(10.0, 2.0, 60.0, 0.0, 0.0);
        // Starts empty: the first token after one interval.
        assert_eq!(p.take(1.0, 0.0), Err(Wait::Until(0.1)));
        // Count tokens over 10 s, taking whenever allowed.
        let (mut now, mut taken) = (0.0, 0);
        while now < 10.0 {
            match p.take(1.0, now) {
                Ok(()) => taken += 1,
                Err(Wait::Until(at)) => now = at,
                Err(Wait::ForLease) => panic!("lease ended"),
            }
        }
        assert!((99..=100).contains(&taken), "{taken}");
        // After a quiet spell, at most the burst at once.
        let mut burst = 0;
        while p.take(1.0, 20.0).is_ok() {
            burst += 1;
        }
        assert_eq!(burst, 2);
    }

    #[test]
    fn debt_delays_the_next_token_and_big_requests_still_pass() {
        let mut p = Pacer::new(0.0);
        p.set_terms(10.0, 1.0, 60.0, 0.0, 0.0);
        p.take(1.0, 0.1).unwrap();
        // 20 tokens of usage reported after the call: 2 s of debt.
        p.charge(20.0, 0.1);
        assert!(matches!(p.take(1.0, 0.2), Err(Wait::Until(at)) if close(at, 2.2)));
        // A request of 5 tokens with a burst of 1 waits for one token, then owes 4.
        p.take(5.0, 2.2).unwrap();
        assert!(matches!(p.take(1.0, 2.2), Err(Wait::Until(at)) if close(at, 2.7)));
    }

    #[test]
    fn a_pacer_stops_at_its_lease_end_and_when_paused() {
        let mut p = Pacer::new(0.0);
        p.set_terms(10.0, 1.0, 1.0, 0.0, 0.0);
        assert_eq!(p.take(1.0, 1.0), Err(Wait::ForLease));
        p.set_terms(10.0, 1.0, 10.0, 0.0, 1.0);
        p.pause(3.0, 1.5);
        assert_eq!(p.take(1.0, 2.0), Err(Wait::Until(4.5)));
        p.take(1.0, 4.5).unwrap();
    }
}
