//! Handles of runs started in the background: [`RunHandle`] (by id, JSON) and
//! [`TypedRunHandle`] (typed, from `Runtime::start`). Each knows its run id before the run
//! finishes, can cancel it, and waits for its envelope.

use std::marker::PhantomData;

use futures_util::future::{BoxFuture, Shared};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::envelope::{RunError, RunOutput};
use crate::error::TaskError;
use crate::exec::Ended;
use crate::id::RunId;

/// A run shared by every trigger with its idempotency key.
pub(crate) type SharedRun = Shared<BoxFuture<'static, RunOutput<Value>>>;

/// Where the envelope comes from.
pub(crate) enum Done<T> {
    /// The run's own tokio task.
    Task(JoinHandle<T>),
    /// A run started by an earlier trigger with the same idempotency key.
    Shared(SharedRun),
    /// A run in the runtime's store, executed by a worker anywhere.
    Stored(crate::runtime::Runtime),
}

/// A run started in the background by [`Runtime::trigger`](crate::Runtime::trigger).
pub struct RunHandle {
    pub(crate) run_id: RunId,
    pub(crate) task: &'static str,
    pub(crate) cancel: CancellationToken,
    pub(crate) done: Done<Box<dyn Ended>>,
}

impl RunHandle {
    /// The run's id, known before it finishes.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Cancels the run: the running attempt and every child run end with `cancelled`,
    /// their cleanup runs, the remaining steps are skipped. A stored run is cancelled through
    /// the store (`rt.runs().cancel(id)`, which says what happened).
    pub fn cancel(&self) {
        self.cancel.cancel();
        if let Done::Stored(rt) = &self.done {
            let (rt, id) = (rt.clone(), self.run_id.clone());
            tokio::spawn(async move {
                if let Err(error) = rt.runs().cancel(&id).await {
                    tracing::warn!(run_id = %id, %error, "cancel not stored");
                }
            });
        }
    }

    /// Waits for the envelope.
    pub async fn wait(self) -> RunOutput<Value> {
        match self.done {
            Done::Task(task) => match task.await {
                Ok(out) => out.envelope(),
                Err(join_error) => ended(self.task, self.run_id, &join_error),
            },
            Done::Shared(run) => run.await,
            Done::Stored(rt) => wait_stored(&rt, self.task, self.run_id).await,
        }
    }
}

/// Waits for a stored run; a store that fails is the envelope's error.
async fn wait_stored(rt: &crate::runtime::Runtime, task: &str, run_id: RunId) -> RunOutput<Value> {
    match rt.runs().wait(&run_id).await {
        Ok(Some(envelope)) => envelope,
        Ok(None) => RunOutput::refused(
            task,
            run_id,
            Value::Null,
            TaskError::rejected("the run is not in the store"),
        ),
        Err(error) => RunOutput::refused(
            task,
            run_id,
            Value::Null,
            TaskError::rejected(format!("waiting for the run failed: {error}")),
        ),
    }
}

/// The envelope of a run whose tokio task ended without one: the engine catches panics, so
/// this is the tokio runtime going away.
pub(crate) fn ended(
    task: &str,
    run_id: RunId,
    join_error: &tokio::task::JoinError,
) -> RunOutput<Value> {
    let error = TaskError::cancelled(format!("the run's task ended: {join_error}"));
    RunOutput::refused(task, run_id, Value::Null, error)
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle")
            .field("run_id", &self.run_id)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

/// A typed run started in the background by [`Runtime::start`](crate::Runtime::start):
/// `wait()` gives the task's output type.
pub struct TypedRunHandle<O> {
    pub(crate) run_id: RunId,
    pub(crate) task: &'static str,
    pub(crate) cancel: CancellationToken,
    pub(crate) done: Done<Result<RunOutput<O>, RunError>>,
    pub(crate) output: PhantomData<fn() -> O>,
}

impl<O: DeserializeOwned> TypedRunHandle<O> {
    /// The run's id, known before it finishes.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Cancels the run (see [`RunHandle::cancel`]).
    pub fn cancel(&self) {
        self.cancel.cancel();
        if let Done::Stored(rt) = &self.done {
            let (rt, id) = (rt.clone(), self.run_id.clone());
            tokio::spawn(async move {
                if let Err(error) = rt.runs().cancel(&id).await {
                    tracing::warn!(run_id = %id, %error, "cancel not stored");
                }
            });
        }
    }

    /// Waits for the envelope; a failed run is an `Err` holding the failed envelope.
    pub async fn wait(self) -> Result<RunOutput<O>, RunError> {
        match self.done {
            Done::Task(task) => match task.await {
                Ok(out) => out,
                Err(join_error) => Err(RunError::from_envelope(ended(
                    self.task,
                    self.run_id,
                    &join_error,
                ))),
            },
            // A run shared through an idempotency key, or a stored one, keeps its output as
            // JSON: read it back as `O`.
            Done::Shared(_) | Done::Stored(_) => {
                let out = match self.done {
                    Done::Shared(run) => run.await,
                    Done::Stored(rt) => wait_stored(&rt, self.task, self.run_id.clone()).await,
                    Done::Task(_) => unreachable!(),
                };
                if !out.job.success {
                    return Err(RunError::from_envelope(out));
                }
                let results = serde_json::from_value::<O>(out.results.clone());
                match results {
                    Ok(results) => Ok(out.map(|_| results)),
                    Err(e) => {
                        let mut failed = out;
                        let error = TaskError::invalid_output(vec![crate::error::Issue {
                            path: String::new(),
                            message: format!(
                                "the shared run's output does not read back as this task's output: {e}"
                            ),
                        }]);
                        failed.job.success = false;
                        failed.job.error = Some(error.to_string());
                        failed.job.error_detail = Some(error);
                        failed.results = Value::Null;
                        Err(RunError::from_envelope(failed))
                    }
                }
            }
        }
    }
}

impl<O> std::fmt::Debug for TypedRunHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedRunHandle")
            .field("run_id", &self.run_id)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}
