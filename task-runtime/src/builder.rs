//! `RuntimeBuilder`: every setting of a [`Runtime`], checked when it is built (a setting the
//! `#[task]` attribute would refuse at compile time is refused here too, never adjusted).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exec::concurrency::ConcurrencyLimits;
use crate::exec::hooks::{HookFn, RuntimeHook, When};
use crate::exec::{Executor, Settings};
use crate::input::{Limits, MAX_DEPTH_LIMIT};
use crate::policy::{PolicyError, RetryPolicy};
use crate::registry::{Registry, RegistryError, TaskDescriptor};
use crate::runtime::Runtime;
use crate::store::Store;
use crate::task::Task;

/// Configures a [`Runtime`].
///
/// ```
/// # use std::time::Duration;
/// # use task_runtime::{Runtime, RetryPolicy};
/// let rt = Runtime::builder()
///     .max_concurrency(8)
///     .default_retry(RetryPolicy::attempts(3))
///     .default_timeout(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// # drop(rt);
/// assert!(Runtime::builder().max_input_depth(500).build().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    extra: Vec<&'static TaskDescriptor>,
    limits: Limits,
    default_retry: RetryPolicy,
    default_timeout: Option<Duration>,
    max_concurrency: Option<usize>,
    max_fan_out: usize,
    max_nesting: u32,
    hook_timeout: Duration,
    hooks: Vec<RuntimeHook>,
    store: Option<Store>,
    clock: crate::clock::Clock,
}

/// Why a [`Runtime`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two definitions share an id.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The default retry policy or timeout is unusable.
    #[error("invalid default policy: {0}")]
    Policy(#[from] PolicyError),
    /// A limit is out of its range.
    #[error("invalid setting `{setting}`: {reason}")]
    Setting {
        /// The builder method.
        setting: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            extra: Vec::new(),
            limits: Limits::default(),
            default_retry: RetryPolicy::NONE,
            default_timeout: None,
            max_concurrency: None,
            max_fan_out: 1024,
            max_nesting: 32,
            hook_timeout: Duration::from_secs(30),
            hooks: Vec::new(),
            store: None,
            clock: crate::clock::Clock::default(),
        }
    }
}

/// Handles with a registry entry (every generated handle).
pub trait Registered: Task {
    /// The registry entry.
    fn descriptor() -> &'static TaskDescriptor;
}

impl RuntimeBuilder {
    /// Registers a handle explicitly: the fallback for tasks in a crate the binary does not
    /// otherwise reference (which `inventory` cannot see).
    pub fn register<T: Registered>(mut self) -> Self {
        self.extra.push(T::descriptor());
        self
    }

    /// Largest accepted input in bytes (default 3 MiB).
    pub fn max_input_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_input_bytes = bytes;
        self
    }

    /// Deepest accepted nesting of the input (default 64; 1 to 128, serde_json's own
    /// recursion limit, so the CLI, the API and runs by id all honour the same limit).
    pub fn max_input_depth(mut self, depth: usize) -> Self {
        self.limits.max_depth = depth;
        self
    }

    /// Retry policy of tasks that set none.
    pub fn default_retry(mut self, retry: RetryPolicy) -> Self {
        self.default_retry = retry;
        self
    }

    /// Per-attempt timeout of tasks that set none.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// At most this many tasks run at once, runtime-wide (default: unlimited). A task
    /// waiting for a child run (`ctx.run`) does not count while it waits.
    pub fn max_concurrency(mut self, runs: usize) -> Self {
        self.max_concurrency = Some(runs);
        self
    }

    /// Items of an `each` branch in flight at once when it sets no `concurrency`
    /// (default 1024): bounds memory on huge fan-outs.
    pub fn max_fan_out(mut self, items: usize) -> Self {
        self.max_fan_out = items;
        self
    }

    /// Deepest nesting of child runs (default 32): a task that runs itself through
    /// `ctx.run` fails with `rejected` at this depth instead of exhausting the stack.
    pub fn max_nesting_depth(mut self, levels: u32) -> Self {
        self.max_nesting = levels;
        self
    }

    /// Longest a lifecycle hook may run (default 30 s); one that takes longer is abandoned
    /// and logged, and the run's caller is not held up.
    pub fn hook_timeout(mut self, limit: Duration) -> Self {
        self.hook_timeout = limit;
        self
    }

    /// Runs `hook` after every run (of any task, nested runs included) that succeeded.
    /// Its error, panic or overrun is logged and never changes the run's outcome.
    ///
    /// ```
    /// # use task_runtime::{HookEvent, Runtime};
    /// async fn audit(event: &HookEvent) -> Result<(), std::io::Error> {
    ///     tracing::info!(run_id = %event.run_id, task = event.task_name, "done");
    ///     Ok(())
    /// }
    /// let rt = Runtime::builder()
    ///     .on_success(audit)
    ///     .on_failure(|event: &HookEvent| {
    ///         let run_id = event.run_id.clone(); // copy what the future needs
    ///         async move { tracing::warn!(%run_id, "failed") }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(rt);
    /// ```
    pub fn on_success<F: for<'a> HookFn<'a>>(mut self, hook: F) -> Self {
        self.hooks.push(RuntimeHook::new(When::Success, hook));
        self
    }

    /// Runs `hook` after every run (of any task, nested runs included) that failed, retries
    /// exhausted, refused inputs included. Same rules as [`on_success`](Self::on_success).
    pub fn on_failure<F: for<'a> HookFn<'a>>(mut self, hook: F) -> Self {
        self.hooks.push(RuntimeHook::new(When::Failure, hook));
        self
    }

    /// Keeps runs in `store`: `trigger` and `start` commit runs there, and workers
    /// (`rt.worker()`, in any process sharing the store) execute them. Without a store,
    /// everything runs in this process's memory.
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Gives the runtime a test's clock for durable waits (`ctx.sleep`, token timeouts, the
    /// waking of waiting runs), so a test makes an hour pass with
    /// [`TestClock::advance`](crate::TestClock::advance) instead of waiting for it.
    #[cfg(feature = "test-util")]
    pub fn clock(mut self, clock: std::sync::Arc<crate::TestClock>) -> Self {
        self.clock = crate::clock::Clock::test(clock);
        self
    }

    fn check(&self) -> Result<(), BuildError> {
        self.default_retry.check()?;
        if self.default_timeout == Some(Duration::ZERO) {
            return Err(PolicyError::ZeroTimeout.into());
        }
        let setting = |setting, reason: &str| {
            Err(BuildError::Setting {
                setting,
                reason: reason.to_owned(),
            })
        };
        if !(1..=MAX_DEPTH_LIMIT).contains(&self.limits.max_depth) {
            return setting(
                "max_input_depth",
                &format!(
                    "{} is outside 1..=128 (serde_json's recursion limit)",
                    self.limits.max_depth
                ),
            );
        }
        if self.limits.max_input_bytes == 0 {
            return setting("max_input_bytes", "must be at least 1");
        }
        if self.max_concurrency == Some(0) {
            return setting("max_concurrency", "0 would never run anything");
        }
        if self.max_fan_out == 0 {
            return setting("max_fan_out", "0 would never run an item");
        }
        if self.hook_timeout.is_zero() {
            return setting("hook_timeout", "must be longer than zero");
        }
        Ok(())
    }

    /// Builds the runtime; fails when two definitions share an id or a setting is out of
    /// range.
    pub fn build(self) -> Result<Runtime, BuildError> {
        self.check()?;
        let mut registry = Registry::global()?.clone();
        for entry in self.extra {
            registry.insert(entry)?;
        }
        let exec = Executor::new(Settings {
            registry,
            limits: self.limits,
            default_retry: self.default_retry,
            default_timeout: self.default_timeout,
            max_fan_out: self.max_fan_out,
            max_nesting: self.max_nesting,
            hook_timeout: self.hook_timeout,
            concurrency: ConcurrencyLimits::new(self.max_concurrency),
            hooks: self.hooks,
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
            clock: self.clock,
            tokens: crate::tokens::MemoryTokens::default(),
        });
        Ok(Runtime::from_executor(exec, self.store))
    }
}
