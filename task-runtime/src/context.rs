//! `TaskContext`: what a running attempt knows about itself, and what it can do (run child
//! tasks, register cleanup, observe cancellation).

use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::envelope::{BranchRecord, StepRecord};
use crate::error::TaskError;
use crate::runtime::Runtime;
use crate::task::Task;

/// What a run inherits from its parent and passes to its children: tenant, project,
/// trampData, cleanup options and the concurrency permits already held up the chain.
#[derive(Clone, Default)]
pub(crate) struct Scope {
    pub tenant_id: Option<Arc<str>>,
    pub project_id: Option<Arc<str>>,
    pub tramp_data: Option<Arc<Value>>,
    pub cleanup_options: Option<Arc<Value>>,
    /// Limits held by an ancestor; a child never waits for a slot its parent holds.
    pub held: Option<Arc<HeldLimit>>,
}

/// A concurrency limit held up the chain: the runtime-wide one (`task: None`) or a task's.
pub(crate) struct HeldLimit {
    pub task: Option<&'static str>,
    pub parent: Option<Arc<HeldLimit>>,
}

impl Scope {
    pub fn holds(&self, task: Option<&'static str>) -> bool {
        let mut next = self.held.as_deref();
        while let Some(held) = next {
            if held.task == task {
                return true;
            }
            next = held.parent.as_deref();
        }
        false
    }

    pub fn with_held(&self, task: Option<&'static str>) -> Scope {
        let mut scope = self.clone();
        scope.held = Some(Arc::new(HeldLimit {
            task,
            parent: self.held.clone(),
        }));
        scope
    }
}

type Cleanup = BoxFuture<'static, Result<(), String>>;

/// What a cleanup or hook future may return: `()` or `Result<(), E>` with a displayable
/// error.
pub trait CallbackResult {
    fn into_result(self) -> Result<(), String>;
}

impl CallbackResult for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> CallbackResult for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// Records a composite run (track or orchestrator) fills while it runs.
#[derive(Default)]
pub(crate) struct Records {
    pub steps: Vec<StepRecord>,
    pub branches: Vec<BranchRecord>,
}

/// The context of one attempt of one run, passed to the task as `&TaskContext`.
pub struct TaskContext {
    pub(crate) runtime: Runtime,
    pub(crate) run_id: Arc<str>,
    pub(crate) task_id: &'static str,
    pub(crate) attempt: u32,
    pub(crate) scope: Scope,
    pub(crate) cancel: CancellationToken,
    pub(crate) cleanup: Mutex<Vec<Cleanup>>,
    pub(crate) records: Mutex<Records>,
}

impl TaskContext {
    pub(crate) fn new(
        runtime: Runtime,
        run_id: Arc<str>,
        task_id: &'static str,
        attempt: u32,
        scope: Scope,
        cancel: CancellationToken,
    ) -> Self {
        TaskContext {
            runtime,
            run_id,
            task_id,
            attempt,
            scope,
            cancel,
            cleanup: Mutex::new(Vec::new()),
            records: Mutex::new(Records::default()),
        }
    }

    /// A context for calling a task fn directly in a unit test: run id `run_test`, task id
    /// `test`, attempt 1, a fresh embedded runtime for child runs. Adjust with the `with_*`
    /// setters.
    ///
    /// ```
    /// # use task_runtime::prelude::*;
    /// let ctx = TaskContext::for_test().with_tenant("t1").with_attempt(2);
    /// assert_eq!(ctx.tenant_id(), Some("t1"));
    /// assert_eq!(ctx.attempt(), 2);
    /// ```
    pub fn for_test() -> Self {
        TaskContext::new(
            Runtime::new(),
            Arc::from("run_test"),
            "test",
            1,
            Scope::default(),
            CancellationToken::new(),
        )
    }

    /// Sets the tenant id (test contexts).
    pub fn with_tenant(mut self, tenant_id: &str) -> Self {
        self.scope.tenant_id = Some(Arc::from(tenant_id));
        self
    }

    /// Sets the project id (test contexts).
    pub fn with_project(mut self, project_id: &str) -> Self {
        self.scope.project_id = Some(Arc::from(project_id));
        self
    }

    /// Sets the trampData (test contexts).
    pub fn with_tramp_data(mut self, tramp_data: Value) -> Self {
        self.scope.tramp_data = Some(Arc::new(tramp_data));
        self
    }

    /// Sets the attempt number (test contexts).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Uses this runtime for child runs (test contexts).
    pub fn with_runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    /// This run's id (`run_...`).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The id of the running task.
    pub fn task_id(&self) -> &'static str {
        self.task_id
    }

    /// 1 for the first attempt, 2 for the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// `tenantId` of the input (or of the parent run's input).
    pub fn tenant_id(&self) -> Option<&str> {
        self.scope.tenant_id.as_deref()
    }

    /// `projectId` of the input (or of the parent run's input).
    pub fn project_id(&self) -> Option<&str> {
        self.scope.project_id.as_deref()
    }

    /// `trampData` of the input (or of the parent run's input).
    pub fn tramp_data(&self) -> Option<&Value> {
        self.scope.tramp_data.as_deref()
    }

    /// `cleanup` options of the input (or of the parent run's input), for cleanup code.
    pub fn cleanup_options(&self) -> Option<&Value> {
        self.scope.cleanup_options.as_deref()
    }

    /// The runtime this run executes on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Whether the run has been cancelled. Long CPU-bound loops should check it.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the run is cancelled; use in `tokio::select!` to stop early.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// A token that is cancelled with this run, for handing to spawned work.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Registers cleanup that runs exactly once when this attempt ends, however it ends
    /// (success, error, timeout, cancellation, panic), after everything registered later.
    /// A failing or panicking cleanup is logged and listed in `metadata.cleanupErrors`; it
    /// never replaces the task's own result.
    ///
    /// ```
    /// # use task_runtime::prelude::*;
    /// # async fn body(ctx: &TaskContext) {
    /// let tmp = std::env::temp_dir().join("scratch.txt");
    /// ctx.defer(async move { tokio::fs::remove_file(tmp).await });
    /// # }
    /// ```
    pub fn defer<F>(&self, cleanup: F)
    where
        F: Future + Send + 'static,
        F::Output: CallbackResult,
    {
        let cleanup = async move {
            match AssertUnwindSafe(cleanup).catch_unwind().await {
                Ok(outcome) => outcome.into_result(),
                Err(panic) => Err(format!("cleanup panicked: {}", panic_message(&*panic))),
            }
        };
        lock(&self.cleanup).push(Box::pin(cleanup));
    }

    /// Runs another task as a child run (the seed's `triggerAndWait`): validated, with its own
    /// run id, inheriting tenant, project, trampData and cancellation.
    pub async fn run<T: Task>(&self, _task: T, input: T::Input) -> Result<T::Output, TaskError> {
        self.run_child::<T>(input).await.into_typed()
    }

    pub(crate) async fn run_child<T: Task>(
        &self,
        input: T::Input,
    ) -> crate::engine::Finished<T::Output> {
        crate::engine::execute::<T>(
            &self.runtime,
            crate::engine::RunInput::Typed(input),
            crate::engine::Seed::child(self),
        )
        .await
    }

    /// Runs the registered cleanup in reverse order; returns the failures.
    pub(crate) async fn run_cleanup(&self) -> Vec<String> {
        let cleanups = std::mem::take(&mut *lock(&self.cleanup));
        run_cleanups(cleanups, self.task_id, &self.run_id).await
    }

    pub(crate) fn push_step(&self, step: StepRecord) {
        lock(&self.records).steps.push(step);
    }

    pub(crate) fn push_branch(&self, branch: BranchRecord) {
        lock(&self.records).branches.push(branch);
    }

    pub(crate) fn take_records(&self) -> Records {
        std::mem::take(&mut *lock(&self.records))
    }
}

/// Runs cleanups last-registered first, logging and returning the failures.
async fn run_cleanups(cleanups: Vec<Cleanup>, task: &str, run_id: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for cleanup in cleanups.into_iter().rev() {
        if let Err(error) = cleanup.await {
            tracing::warn!(task, run_id, %error, "cleanup failed");
            errors.push(error);
        }
    }
    errors
}

impl Drop for TaskContext {
    /// Cleanup still registered here means the attempt was dropped mid-flight (its parent
    /// was cancelled or timed out while this run was inside it): run it on the runtime
    /// rather than lose it.
    fn drop(&mut self) {
        let cleanups = std::mem::take(&mut *lock(&self.cleanup));
        if cleanups.is_empty() {
            return;
        }
        let (task, run_id) = (self.task_id, self.run_id.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { run_cleanups(cleanups, task, &run_id).await });
            }
            Err(_) => {
                tracing::error!(task, run_id = %run_id, "cleanup lost: attempt dropped outside a tokio runtime");
            }
        }
    }
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("run_id", &self.run_id)
            .field("task_id", &self.task_id)
            .field("attempt", &self.attempt)
            .field("tenant_id", &self.tenant_id())
            .field("project_id", &self.project_id())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, recovering the data if a panicking holder poisoned it: every critical
/// section here is a single push or take, so the data is never half-updated.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
