//! Lifecycle hooks: `on_success` / `on_failure`, per task (`#[task(on_success = path)]`) and
//! runtime-wide (`Runtime::builder().on_failure(..)`), both taking `&HookEvent`. They run once
//! per run, after retries are exhausted (refused inputs included: an `invalidInput` run is a
//! failed run), inside the run's span. A hook's error, panic or overrun of the hook timeout
//! is logged and never changes the run's outcome or holds up its caller for longer.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::context::{CallbackResult, panic_message};
use crate::error::TaskError;
use crate::id::RunId;

/// What a hook is told about a finished run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HookEvent {
    /// The task's id.
    pub task_name: &'static str,
    /// The run's id.
    pub run_id: RunId,
    /// The run's input as JSON.
    pub input: Value,
    /// The output, when the run succeeded.
    pub output: Option<Value>,
    /// The error, when the run failed.
    pub error: Option<TaskError>,
    /// Attempts made.
    pub attempts: u32,
}

/// When a runtime-wide hook fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    Success,
    Failure,
}

/// A function usable as a runtime-wide hook: `async fn hook(event: &HookEvent)` returning
/// `()` or `Result<(), E: Display>`, or a closure `|event: &HookEvent| ..` returning such a
/// future (one that does not borrow `event`: copy what it needs first, or write an
/// `async fn`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a hook",
    label = "a hook takes `event: &HookEvent` and returns a future of `()` or `Result<(), E>`",
    note = "write `async fn my_hook(event: &HookEvent) -> Result<(), MyError>`, or a closure `|event: &HookEvent| async move {{ .. }}` that copies what it needs from `event`"
)]
pub trait HookFn<'a>: Send + Sync + 'static {
    /// The hook's future.
    type Future: Future<Output = Self::Output> + Send + 'a;
    /// What the future gives.
    type Output: CallbackResult;
    /// Calls the hook.
    fn call(&self, event: &'a HookEvent) -> Self::Future;
}

impl<'a, F, Fut> HookFn<'a> for F
where
    F: Fn(&'a HookEvent) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'a,
    Fut::Output: CallbackResult,
{
    type Future = Fut;
    type Output = Fut::Output;

    fn call(&self, event: &'a HookEvent) -> Fut {
        self(event)
    }
}

type DynHook = dyn for<'a> Fn(&'a HookEvent) -> BoxFuture<'a, Result<(), String>> + Send + Sync;

/// A runtime-wide hook.
#[derive(Clone)]
pub(crate) struct RuntimeHook {
    pub when: When,
    pub call: Arc<DynHook>,
}

impl RuntimeHook {
    pub(crate) fn new<F: for<'a> HookFn<'a>>(when: When, hook: F) -> Self {
        RuntimeHook {
            when,
            call: Arc::new(move |event| {
                let fut = hook.call(event);
                Box::pin(async move { fut.await.into_result() })
            }),
        }
    }
}

impl std::fmt::Debug for RuntimeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHook")
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}

/// Awaits one hook for at most `limit`: its error, panic (while polled or while the hook
/// builds its future: `make` runs inside the guard) or overrun becomes a log line.
pub(crate) async fn guarded<F, Fut>(name: &str, task: &str, limit: Duration, make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: CallbackResult,
{
    let run = AssertUnwindSafe(async move { make().await }).catch_unwind();
    let outcome = match tokio::time::timeout(limit, run).await {
        Ok(Ok(outcome)) => outcome.into_result(),
        Ok(Err(panic)) => Err(format!("hook panicked: {}", panic_message(&*panic))),
        Err(_) => Err(format!(
            "hook did not finish within {} and was abandoned",
            humantime::format_duration(limit)
        )),
    };
    if let Err(error) = outcome {
        log_failure(name, task, &error);
    }
}

pub(crate) fn log_failure(name: &str, task: &str, error: &str) {
    tracing::warn!(hook = name, task, %error, "hook failed; the run's outcome is unchanged");
}
