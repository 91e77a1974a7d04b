//! Exponential backoff, the one implementation every retry loop of orch uses: task retries
//! (`retry.backoff` of the job spec), item retries in the worker, handler restarts, store
//! outages of the driver, the operator's supervisor, and the AWS and Slurm clients.
//!
//! Waits are `initial · factor^(n-1)`, capped at `max`. With jitter, a wait is drawn between
//! half and all of that step ("equal jitter"): waits still grow, but workers that failed
//! together do not retry together. The draw is the caller's (`unit` in `[0, 1)`), so the
//! engine can derive it from the task and stay a pure function.

use std::time::Duration;

/// The shape of one retry loop's waits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub initial: Duration,
    /// Each further wait is this many times the one before (at least 1).
    pub factor: f64,
    /// No wait is longer.
    pub max: Duration,
}

impl Backoff {
    /// Doubling from `initial` up to `max`.
    pub const fn doubling(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            factor: 2.0,
            max,
        }
    }

    /// The wait before retry `n` (1 = the first retry; 0 is treated as 1), without jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let exponent = n.saturating_sub(1).min(1024) as i32;
        let step = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        // `min` on f64 first: an overflowing step must become `max`, not a panic.
        Duration::from_secs_f64(step.min(self.max.as_secs_f64()).max(0.0))
    }

    /// [`Backoff::delay`] with equal jitter: between half and all of the step, placed by
    /// `unit` (clamped to `[0, 1]`).
    pub fn delay_jittered(&self, n: u32, unit: f64) -> Duration {
        let step = self.delay(n);
        step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_by_the_factor_up_to_the_cap() {
        let b = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(2));
        let ms = |n| b.delay(n).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(5)],
            [100, 100, 200, 400, 1600]
        );
        assert_eq!(b.delay(6), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
        let slow = Backoff {
            initial: Duration::from_secs(10),
            factor: 1.5,
            max: Duration::from_secs(600),
        };
        assert_eq!(slow.delay(3), Duration::from_millis(22_500));
        // A factor below one would shrink waits: it counts as one.
        let flat = Backoff {
            factor: 0.5,
            ..slow
        };
        assert_eq!(flat.delay(9), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_step() {
        let b = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.delay_jittered(3, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay_jittered(3, 1.0), Duration::from_secs(4));
        assert_eq!(b.delay_jittered(3, 7.0), Duration::from_secs(4));
        let mid = b.delay_jittered(3, 0.5);
        assert!(mid > Duration::from_secs(2) && mid < Duration::from_secs(4));
    }
}
