//! Concurrency limits: a runtime-wide limit on running tasks and per-task limits
//! (Trigger.dev's queue `concurrencyLimit`). Runs beyond a limit wait in FIFO order.
//!
//! Nesting never deadlocks, because nothing waits while holding a slot another waiter needs:
//!
//! - Leaf tasks take the runtime-wide slot, then their task's slot (always in that order, so
//!   a run holding a task slot never waits for the runtime-wide one). While a leaf waits
//!   for a child run (`ctx.run`) it gives both back, and takes them again when its last
//!   child ends: a child never waits for its parent's slot, and children started at once
//!   share nothing, so a limit of 1 means one at a time however they are nested.
//! - Tracks and orchestrators take no runtime-wide slot: they coordinate, and their
//!   children take slots of their own. A composite with its own `concurrency` holds that
//!   slot for its whole run; a descendant run of the same composite borrows it (one at a
//!   time) rather than wait for its own ancestor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::seed::{Scope, lock};
use crate::error::TaskError;

/// The semaphores of one runtime.
#[derive(Default)]
pub(crate) struct ConcurrencyLimits {
    global: Option<Arc<Semaphore>>,
    per_task: Mutex<HashMap<&'static str, Arc<Semaphore>>>,
}

/// The semaphores a leaf run must pass, runtime-wide first.
#[derive(Clone, Default)]
pub(crate) struct Gate {
    global: Option<Arc<Semaphore>>,
    task: Option<Arc<Semaphore>>,
}

impl ConcurrencyLimits {
    pub(crate) fn new(global: Option<usize>) -> Self {
        ConcurrencyLimits {
            global: global.map(|n| Arc::new(Semaphore::new(n))),
            per_task: Mutex::default(),
        }
    }

    fn task_semaphore(&self, task: &'static str, limit: Option<u32>) -> Option<Arc<Semaphore>> {
        let limit = limit?;
        let mut map = lock(&self.per_task);
        Some(
            map.entry(task)
                .or_insert_with(|| Arc::new(Semaphore::new(limit as usize)))
                .clone(),
        )
    }

    /// The gate of a leaf run of `task`.
    pub(crate) fn leaf_gate(&self, task: &'static str, per_task: Option<u32>) -> Gate {
        Gate {
            global: self.global.clone(),
            task: self.task_semaphore(task, per_task),
        }
    }

    /// Takes a composite's own slot (when it sets `concurrency`), borrowing an ancestor's;
    /// returns the permit and the scope its children inherit.
    pub(crate) async fn acquire_composite(
        &self,
        task: &'static str,
        per_task: Option<u32>,
        scope: &Scope,
        cancel: &CancellationToken,
    ) -> Result<(Option<OwnedSemaphorePermit>, Scope), TaskError> {
        let Some(semaphore) = self.task_semaphore(task, per_task) else {
            return Ok((None, scope.clone()));
        };
        let lend = scope.held(task).map(|held| held.lend.clone());
        let permit = tokio::select! {
            permit = semaphore.acquire_owned() => permit,
            permit = async {
                match lend {
                    Some(lend) => lend.acquire_owned().await,
                    None => std::future::pending().await,
                }
            } => permit,
            _ = cancel.cancelled() => return Err(waiting_cancelled()),
        }
        .map_err(|_| closed())?;
        Ok((Some(permit), scope.with_held(task)))
    }
}

impl Gate {
    /// Whether any limit applies.
    pub(crate) fn is_open(&self) -> bool {
        self.global.is_none() && self.task.is_none()
    }

    /// Waits for every slot, runtime-wide first; stops waiting on cancellation.
    pub(crate) async fn acquire(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<OwnedSemaphorePermit>, TaskError> {
        let mut permits = Vec::with_capacity(2);
        for semaphore in [&self.global, &self.task].into_iter().flatten() {
            let permit = tokio::select! {
                permit = semaphore.clone().acquire_owned() => permit.map_err(|_| closed())?,
                _ = cancel.cancelled() => return Err(waiting_cancelled()),
            };
            permits.push(permit);
        }
        Ok(permits)
    }
}

fn closed() -> TaskError {
    TaskError::rejected("the runtime's concurrency limit was closed")
}

fn waiting_cancelled() -> TaskError {
    TaskError::cancelled("run cancelled while waiting for a concurrency slot")
}
