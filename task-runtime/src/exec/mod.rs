//! The engine: every run, whatever its kind and however it was started (typed `run`,
//! `trigger` by id, a track step, an orchestrator branch or item, `ctx.run`, a worker's
//! claim), goes through [`execute`]: validate the input, run attempts under the task's policy,
//! validate the output, finish.
//!
//! The engine knows nothing of the `Runtime` facade: it is given an [`Executor`], the
//! settings and shared state runs need, and a [`Seed`] saying where the run sits.

mod attempt;
pub(crate) mod concurrency;
mod execute;
pub(crate) mod hooks;
pub(crate) mod seed;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use execute::{Compact, Ended, Finished, RunInput, execute, scope_of};
pub(crate) use seed::{AttemptState, Scope, Seed};

use crate::input::Limits;
use crate::policy::RetryPolicy;
use crate::registry::Registry;
use concurrency::ConcurrencyLimits;
use hooks::RuntimeHook;

/// Awaits a future inside a span, pinning it where it is built instead of moving it into
/// a wrapper (as `Instrument` does): the run's futures are a few KiB, and each move is a
/// copy of all of it.
macro_rules! in_span {
    ($span:expr, $future:expr) => {{
        let span = &$span;
        let mut future = std::pin::pin!($future);
        std::future::poll_fn(|cx| {
            let _entered = span.enter();
            future.as_mut().poll(cx)
        })
        .await
    }};
}
pub(crate) use in_span;

/// What the engine needs to run anything. Cheap to clone; clones share everything.
#[derive(Clone)]
pub(crate) struct Executor {
    inner: Arc<Settings>,
}

/// The settings and shared state of one runtime's runs.
pub(crate) struct Settings {
    pub registry: Registry,
    pub limits: Limits,
    pub default_retry: RetryPolicy,
    pub default_timeout: Option<Duration>,
    /// Items of an `each` branch in flight at once when it sets no `concurrency`.
    pub max_fan_out: usize,
    /// Deepest nesting of child runs (a task running itself through `ctx.run` ends here).
    pub max_nesting: u32,
    /// Longest a lifecycle hook may take before it is abandoned (and logged).
    pub hook_timeout: Duration,
    pub concurrency: ConcurrencyLimits,
    pub hooks: Vec<RuntimeHook>,
    /// Cancelled by shutdown once its grace period is over.
    pub root: CancellationToken,
    /// Every run and every piece of work a run leaves behind (the cleanup of a dropped
    /// attempt), so shutdown can wait for all of it.
    pub tracker: TaskTracker,
    /// What "now" is for durable waits (the system clock, or a test's).
    pub clock: crate::clock::Clock,
    /// Wait tokens of a runtime without a store (in this process's memory).
    pub tokens: crate::tokens::MemoryTokens,
}

impl Executor {
    pub(crate) fn new(settings: Settings) -> Self {
        Executor {
            inner: Arc::new(settings),
        }
    }
}

impl std::ops::Deref for Executor {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.inner
    }
}
