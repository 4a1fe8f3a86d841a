//! Run policies: how many attempts, how long to wait between them, how long one may take,
//! how many may run at once. Set per task in `#[task(..)]`, defaulted on the `Runtime`.

use std::time::Duration;

/// Retries with exponential backoff (Trigger.dev's `retry` options).
///
/// The delay before attempt `n + 1` is `min_delay * factor^(n - 1)`, capped at `max_delay`;
/// with `jitter`, it is scaled by a random factor in `[0.5, 1.0]` so retries of many runs
/// spread out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, counting the first. `1` means no retry.
    pub max_attempts: u32,
    pub factor: f64,
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub jitter: bool,
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        factor: 2.0,
        min_delay: Duration::from_millis(1000),
        max_delay: Duration::from_secs(60),
        jitter: false,
    };

    /// The wait before attempt `next_attempt` (2 for the first retry).
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let retries_before = next_attempt.saturating_sub(2);
        let exponent = i32::try_from(retries_before).unwrap_or(i32::MAX);
        let base = self.min_delay.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64()).max(0.0);
        let scaled = if self.jitter {
            capped * (0.5 + rand::random::<f64>() * 0.5)
        } else {
            capped
        };
        Duration::from_secs_f64(scaled)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::NONE
    }
}

/// Per-task settings; `None` fields fall back to the runtime's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunPolicy {
    pub retry: Option<RetryPolicy>,
    /// Longest one attempt may run (Trigger.dev's `maxDuration`).
    pub timeout: Option<Duration>,
    /// At most this many runs of the task at once (Trigger.dev's queue `concurrencyLimit`).
    pub concurrency: Option<u32>,
}

impl RunPolicy {
    /// Everything from the runtime's defaults.
    pub const DEFAULT: RunPolicy = RunPolicy {
        retry: None,
        timeout: None,
        concurrency: None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_factor_and_caps() {
        let policy = RetryPolicy {
            max_attempts: 5,
            factor: 2.0,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            jitter: false,
        };
        assert_eq!(policy.delay_before(2), Duration::from_millis(100));
        assert_eq!(policy.delay_before(3), Duration::from_millis(200));
        assert_eq!(policy.delay_before(4), Duration::from_millis(300));
        assert_eq!(policy.delay_before(5), Duration::from_millis(300));
    }

    #[test]
    fn jitter_stays_within_half_to_full_delay() {
        let policy = RetryPolicy {
            jitter: true,
            min_delay: Duration::from_millis(1000),
            ..RetryPolicy::NONE
        };
        for _ in 0..100 {
            let d = policy.delay_before(2);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
    }
}
