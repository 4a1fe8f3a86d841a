//! What "now" is for durable waits: when a `ctx.sleep` ends, when a wait token times out,
//! and which waiting runs a worker wakes.
//!
//! The clock is the system's, except in tests (feature `test-util`), which may give a
//! runtime a [`TestClock`]: the system clock plus an offset the test moves forward with
//! [`TestClock::advance`], so "an hour later" happens at once.
//!
//! Why an offset and not tokio's paused clock: waits are stored as wall-clock milliseconds
//! that other processes (a CLI completing a token, a second worker) compare too, and a
//! paused tokio clock moves neither `SystemTime` nor the database's timers. An offset keeps
//! time flowing for everything else (store timeouts, heartbeats) while waits jump. Only
//! waits read this clock: leases, heartbeats and reclaims stay on the system clock, so a
//! jump of an hour does not make every live lease look expired.

use std::time::SystemTime;

#[cfg(feature = "test-util")]
use std::sync::{Arc, Mutex};
#[cfg(feature = "test-util")]
use std::time::Duration;

/// The runtime's clock for waits (cheap to clone).
#[derive(Debug, Clone, Default)]
pub(crate) struct Clock {
    #[cfg(feature = "test-util")]
    test: Option<Arc<TestClock>>,
}

impl Clock {
    /// Now, for waits.
    pub(crate) fn now(&self) -> SystemTime {
        #[cfg(feature = "test-util")]
        if let Some(test) = &self.test {
            return test.now();
        }
        SystemTime::now()
    }

    #[cfg(feature = "test-util")]
    pub(crate) fn test(clock: Arc<TestClock>) -> Self {
        Clock { test: Some(clock) }
    }
}

/// A clock for tests: the system clock, plus an offset that only grows
/// ([`advance`](Self::advance)). Give it to `Runtime::builder().clock(..)`; give the same
/// one to a runtime built again after a "restart", so time does not go back.
#[cfg(feature = "test-util")]
#[derive(Debug, Default)]
pub struct TestClock {
    ahead: Mutex<Duration>,
}

#[cfg(feature = "test-util")]
impl TestClock {
    /// A clock at the system's time.
    pub fn new() -> Arc<TestClock> {
        Arc::new(TestClock::default())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut ahead = self.ahead.lock().unwrap_or_else(|e| e.into_inner());
        *ahead += by;
    }

    /// How far ahead of the system clock it is.
    pub fn ahead(&self) -> Duration {
        *self.ahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The clock's time.
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + self.ahead()
    }
}
