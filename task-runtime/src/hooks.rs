//! Lifecycle hooks: `on_success` / `on_failure`, per task (`#[task(on_success = path)]`) and
//! runtime-wide (`Runtime::builder().on_failure(..)`). They run once per run, after retries
//! are exhausted, inside the run's span. A hook's error or panic is logged and never changes
//! the run's outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::context::{CallbackResult, panic_message};
use crate::error::TaskError;

/// What a hook is told about a finished run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookEvent {
    pub task_name: &'static str,
    pub run_id: String,
    pub input: Value,
    /// The output, when the run succeeded.
    pub output: Option<Value>,
    /// The error, when the run failed.
    pub error: Option<TaskError>,
    pub attempts: u32,
}

/// When a runtime-wide hook fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    Success,
    Failure,
}

type HookFn = dyn Fn(HookEvent) -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// A runtime-wide hook.
#[derive(Clone)]
pub(crate) struct RuntimeHook {
    pub when: When,
    pub call: Arc<HookFn>,
}

impl RuntimeHook {
    pub fn new<F, Fut>(when: When, hook: F) -> Self
    where
        F: Fn(HookEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: CallbackResult,
    {
        RuntimeHook {
            when,
            call: Arc::new(move |event| {
                let fut = hook(event);
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

/// Awaits one hook, turning its error or panic into a log line.
pub(crate) async fn guarded<F>(name: &str, task: &str, hook: F)
where
    F: std::future::Future,
    F::Output: CallbackResult,
{
    let outcome = match AssertUnwindSafe(hook).catch_unwind().await {
        Ok(outcome) => outcome.into_result(),
        Err(panic) => Err(format!("hook panicked: {}", panic_message(&*panic))),
    };
    if let Err(error) = outcome {
        tracing::warn!(hook = name, task, %error, "hook failed; the run's outcome is unchanged");
    }
}
