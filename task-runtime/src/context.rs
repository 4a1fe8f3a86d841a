//! `TaskContext`: what a running attempt knows about itself, and what it can do (run child
//! tasks, register cleanup, observe cancellation).

use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::envelope::{BranchRecord, StepRecord};
use crate::error::TaskError;
use crate::exec::{self, AttemptState, Executor, Finished, RunInput, Scope, Seed};
use crate::exec::{seed::Records, seed::lock};
use crate::id::RunId;
use crate::task::Task;

/// Every this many levels of nesting, a child run hops onto a tokio task of its own (see
/// `TaskContext::run_child`).
const STACK_HOP: u32 = 4;

/// What a cleanup or hook future may return: `()` or `Result<(), E>` with a displayable
/// error.
pub trait CallbackResult {
    /// The outcome, with the error as text.
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

/// The context of one attempt of one run, passed to the task as `&TaskContext`.
pub struct TaskContext {
    pub(crate) exec: Executor,
    pub(crate) run_id: RunId,
    pub(crate) task_id: &'static str,
    pub(crate) attempt: u32,
    pub(crate) scope: Scope,
    pub(crate) cancel: CancellationToken,
    pub(crate) state: Arc<AttemptState>,
}

impl TaskContext {
    pub(crate) fn new(
        exec: Executor,
        run_id: RunId,
        task_id: &'static str,
        attempt: u32,
        scope: Scope,
        cancel: CancellationToken,
        state: Arc<AttemptState>,
    ) -> Self {
        TaskContext {
            exec,
            run_id,
            task_id,
            attempt,
            scope,
            cancel,
            state,
        }
    }

    /// This run's id (`run_...`).
    pub fn run_id(&self) -> &RunId {
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

    /// The run this one is a child of (a track step's track, a branch's orchestrator, the
    /// task that called `ctx.run`).
    pub fn parent_run_id(&self) -> Option<&RunId> {
        self.scope.parent_run_id.as_ref()
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

    /// Whether the run has been cancelled. Long CPU-bound loops should check it.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the run is cancelled; use in `tokio::select!` to stop early.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// A token that is cancelled with this run, for handing to spawned work. Cancelling it
    /// stops only what watches it, never the run itself or anything else.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.child_token()
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
        self.state.push_cleanup(Box::pin(cleanup));
    }

    /// Runs another task as a child run (the seed's `triggerAndWait`): validated, with its own
    /// run id, inheriting tenant, project, trampData and cancellation. While it runs, this
    /// task gives its concurrency slots back (see `Runtime::builder().max_concurrency`).
    /// Boxed, so a task may run itself (up to the runtime's nesting limit).
    pub async fn run<T: Task>(&self, _task: T, input: T::Input) -> Result<T::Output, TaskError> {
        let lent = self.lend_slots();
        let child = Box::pin(self.run_child::<T>(input, None)).await;
        if let Some(lent) = lent {
            lent.reclaim(&self.cancel).await;
        }
        child.into_typed()
    }

    /// A child run without giving slots back: for tracks and orchestrators, which hold none.
    ///
    /// A child runs inline, inside its parent's future, except at every
    /// [`STACK_HOP`]th level of nesting, where it runs on a tokio task of its own (owned by
    /// this attempt like a branch): polling nested runs is recursive, and each level of a
    /// run's poll takes about 80 KiB of stack in a release build (170 in a debug one), so
    /// without the hop a few dozen levels would exhaust a worker thread's 2 MiB.
    /// `position` is the child's key in a durable run's journal (`step:1`).
    pub(crate) async fn run_child<T: Task>(
        &self,
        input: T::Input,
        position: Option<String>,
    ) -> Finished<T::Output> {
        let seed = Seed::child(self).at(position);
        if !seed.scope.depth.is_multiple_of(STACK_HOP) {
            return exec::execute::<T>(&self.exec, RunInput::Typed(input), seed).await;
        }
        let exec = self.exec.clone();
        // Dropping this future (its parent was dropped) must stop the hopped child too.
        let cancel = seed.cancel.child_token();
        let guard = cancel.clone().drop_guard();
        let seed = Seed { cancel, ..seed };
        let task = self.state.children().spawn(
            async move { exec::execute::<T>(&exec, RunInput::Typed(input), seed).await }
                .in_current_span(),
        );
        let joined = task.await;
        drop(guard.disarm());
        match joined {
            Ok(finished) => finished,
            // The engine catches the task's panics; this is the tokio runtime going away.
            Err(join_error) => std::panic::resume_unwind(
                join_error
                    .try_into_panic()
                    .unwrap_or_else(|e| Box::new(format!("child run's task ended: {e}"))),
            ),
        }
    }

    /// Whether this run is part of a durable run, whose children are journaled.
    pub(crate) fn journaled(&self) -> bool {
        self.scope.journal.is_some()
    }

    /// The scope a child of this attempt inherits.
    pub(crate) fn child_scope(&self) -> Scope {
        Scope {
            depth: self.scope.depth + 1,
            parent_run_id: Some(self.run_id.clone()),
            adopt: Some(self.state.clone()),
            ..self.scope.clone()
        }
    }

    /// Gives the attempt's slots back for the time a child runs.
    fn lend_slots(&self) -> Option<Lent<'_>> {
        let slots = self.state.slots.as_ref()?;
        let mut held = lock(slots);
        held.children_running += 1;
        held.permits.clear();
        Some(Lent {
            ctx: self,
            done: false,
        })
    }

    /// Waits for spawned work, runs the registered cleanup in reverse order and gives the
    /// slots back; returns the cleanup failures.
    pub(crate) async fn settle(&self) -> Vec<String> {
        let errors = match AttemptState::pending(&self.state, self.task_id, &self.run_id) {
            Some(pending) => pending.await,
            None => Vec::new(),
        };
        if let Some(slots) = &self.state.slots {
            lock(slots).permits.clear();
        }
        errors
    }

    pub(crate) fn push_step(&self, step: StepRecord) {
        lock(&self.state.records).steps.push(step);
    }

    pub(crate) fn push_branch(&self, branch: BranchRecord) {
        lock(&self.state.records).branches.push(branch);
    }

    pub(crate) fn take_records(&self) -> Records {
        std::mem::take(&mut *lock(&self.state.records))
    }

    pub(crate) fn executor(&self) -> &Executor {
        &self.exec
    }
}

/// The slots an attempt gave back while a child runs.
struct Lent<'a> {
    ctx: &'a TaskContext,
    done: bool,
}

impl Lent<'_> {
    /// Takes the slots again once the last running child has ended.
    async fn reclaim(mut self, cancel: &CancellationToken) {
        self.done = true;
        let Some(slots) = &self.ctx.state.slots else {
            return;
        };
        let gate = {
            let mut held = lock(slots);
            held.children_running -= 1;
            if held.children_running > 0 {
                return;
            }
            held.gate.clone()
        };
        // Cancelled while waiting: the attempt goes on without its slots and is stopped at
        // its next await point anyway.
        if let Ok(permits) = gate.acquire(cancel).await {
            let mut held = lock(slots);
            if held.children_running == 0 {
                held.permits = permits;
            }
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Some(slots) = &self.ctx.state.slots
        {
            lock(slots).children_running -= 1;
        }
    }
}

impl Drop for TaskContext {
    /// Work still pending here means the attempt was dropped mid-flight (its parent timed out
    /// or was cancelled while this run was inside it, or the caller dropped the run's future):
    /// hand it to the parent attempt, which settles it before it ends, or else to the runtime,
    /// whose shutdown waits for it.
    fn drop(&mut self) {
        if let Some(slots) = &self.state.slots {
            lock(slots).permits.clear();
        }
        let Some(pending) = AttemptState::pending(&self.state, self.task_id, &self.run_id) else {
            return;
        };
        match &self.scope.adopt {
            Some(parent) => parent.push_cleanup(Box::pin(async move {
                let errors = pending.await;
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors.join("; "))
                }
            })),
            None => match tokio::runtime::Handle::try_current() {
                Ok(_) => {
                    self.exec.tracker.spawn(pending);
                }
                Err(_) => {
                    tracing::error!(task = self.task_id, run_id = %self.run_id, "cleanup lost: attempt dropped outside a tokio runtime");
                }
            },
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
