//! Run policies: how many attempts, how long to wait between them, how long one may take,
//! how many may run at once. Set per task in `#[task(..)]`, defaulted on the `Runtime`.
//!
//! [`next_delay`] is the one place that decides whether and when a failed attempt is tried
//! again: the in-process engine sleeps for it, a durable store reschedules the run by it.

use std::time::Duration;

use crate::error::TaskError;

/// Retries with exponential backoff (Trigger.dev's `retry` options).
///
/// The delay before attempt `n + 1` is `min_delay * factor^(n - 1)`, capped at `max_delay`;
/// with `jitter`, it is scaled by a random factor in `[0.5, 1.0]` so retries of many runs
/// spread out.
///
/// ```
/// # use std::time::Duration;
/// # use task_runtime::RetryPolicy;
/// let policy = RetryPolicy::attempts(5)
///     .factor(2.0)
///     .min_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(10));
/// assert!(policy.check().is_ok());
/// assert!(RetryPolicy::attempts(3).factor(0.5).check().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, counting the first. `1` means no retry.
    pub max_attempts: u32,
    /// Growth of the delay per retry; at least 1.
    pub factor: f64,
    /// Delay before the first retry.
    pub min_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
    /// Scale each delay by a random factor in `[0.5, 1.0]`.
    pub jitter: bool,
}

/// Why a [`RetryPolicy`] or another run setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_attempts` is 0.
    #[error("retry max_attempts must be at least 1 (it counts the first attempt)")]
    NoAttempts,
    /// `factor` is below 1 or not a number.
    #[error("retry factor must be a number of at least 1.0, got {0}")]
    Factor(String),
    /// `min_delay` is longer than `max_delay`.
    #[error("retry min_delay ({min_ms} ms) is longer than max_delay ({max_ms} ms)")]
    DelayOrder {
        /// `min_delay` in milliseconds.
        min_ms: u128,
        /// `max_delay` in milliseconds.
        max_ms: u128,
    },
    /// A timeout of zero would fail every attempt before it starts.
    #[error("a timeout must be longer than zero")]
    ZeroTimeout,
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

    /// `max_attempts` attempts with the default backoff (1 s, doubling, capped at 60 s).
    pub const fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::NONE
        }
    }

    /// Sets the growth factor of the delay.
    pub const fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Sets the delay before the first retry.
    pub const fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// Sets the longest delay.
    pub const fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Turns jitter on or off.
    pub const fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Refuses settings the `#[task(retry(..))]` attribute refuses at compile time.
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.max_attempts == 0 {
            return Err(PolicyError::NoAttempts);
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(PolicyError::Factor(self.factor.to_string()));
        }
        if self.min_delay > self.max_delay {
            return Err(PolicyError::DelayOrder {
                min_ms: self.min_delay.as_millis(),
                max_ms: self.max_delay.as_millis(),
            });
        }
        Ok(())
    }

    /// The wait before attempt `next_attempt` (2 for the first retry). Never panics: the
    /// exponential is computed in floating point and capped at `max_delay`.
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let retries_before = next_attempt.saturating_sub(2);
        let exponent = i32::try_from(retries_before).unwrap_or(i32::MAX);
        let max = self.max_delay.as_secs_f64();
        let base = self.min_delay.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        let capped = if base.is_finite() { base.min(max) } else { max }.max(0.0);
        let scaled = if self.jitter {
            capped * (0.5 + rand::random::<f64>() * 0.5)
        } else {
            capped
        };
        Duration::try_from_secs_f64(scaled).unwrap_or(self.max_delay)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::NONE
    }
}

/// Whether attempt `attempt` (1 for the first), which failed with `error`, is tried again,
/// and after how long: `None` when the error is not retryable or no attempts are left.
///
/// ```
/// # use std::time::Duration;
/// # use task_runtime::{RetryPolicy, TaskError, next_delay};
/// let policy = RetryPolicy::attempts(3).min_delay(Duration::from_millis(100));
/// let failed = TaskError::failed("flaky");
/// assert_eq!(next_delay(&policy, 1, &failed), Some(Duration::from_millis(100)));
/// assert_eq!(next_delay(&policy, 3, &failed), None); // no attempts left
/// assert_eq!(next_delay(&policy, 1, &TaskError::fatal("bad")), None);
/// ```
pub fn next_delay(policy: &RetryPolicy, attempt: u32, error: &TaskError) -> Option<Duration> {
    (error.is_retryable() && attempt < policy.max_attempts)
        .then(|| policy.delay_before(attempt.saturating_add(1)))
}

/// Per-task settings; `None` fields fall back to the runtime's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunPolicy {
    /// Retries; the runtime's default when unset.
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
        let policy = RetryPolicy::attempts(5)
            .min_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(300));
        assert_eq!(policy.delay_before(2), Duration::from_millis(100));
        assert_eq!(policy.delay_before(3), Duration::from_millis(200));
        assert_eq!(policy.delay_before(4), Duration::from_millis(300));
        assert_eq!(policy.delay_before(5), Duration::from_millis(300));
    }

    #[test]
    fn jitter_stays_within_half_to_full_delay() {
        let policy = RetryPolicy::NONE.jitter(true);
        for _ in 0..100 {
            let d = policy.delay_before(2);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn huge_delays_never_panic() {
        let policy = RetryPolicy::attempts(u32::MAX)
            .factor(1e300)
            .min_delay(Duration::MAX)
            .max_delay(Duration::MAX);
        assert_eq!(policy.check(), Ok(()));
        for attempt in [2, 3, 1000, u32::MAX] {
            assert!(policy.delay_before(attempt) > Duration::from_secs(1 << 40));
        }
        let failed = TaskError::failed("x");
        assert!(next_delay(&policy, u32::MAX - 1, &failed).is_some());
        assert!(next_delay(&policy, u32::MAX, &failed).is_none());
    }

    #[test]
    fn nonsense_settings_are_refused() {
        assert_eq!(
            RetryPolicy::attempts(0).check(),
            Err(PolicyError::NoAttempts)
        );
        assert!(matches!(
            RetryPolicy::attempts(2).factor(f64::NAN).check(),
            Err(PolicyError::Factor(_))
        ));
        assert!(matches!(
            RetryPolicy::attempts(2)
                .min_delay(Duration::from_secs(9))
                .max_delay(Duration::from_secs(1))
                .check(),
            Err(PolicyError::DelayOrder {
                min_ms: 9000,
                max_ms: 1000
            })
        ));
    }
}
