//! Concurrency limits: a runtime-wide limit on running tasks and per-task limits
//! (Trigger.dev's queue `concurrencyLimit`). Runs beyond a limit wait in FIFO order.
//!
//! Nesting never deadlocks: a run inherits the slots its ancestors hold, so a task waiting
//! for its children (through `ctx.run`, a track or an orchestrator) never makes them wait
//! for the slot it holds itself. The runtime-wide limit is taken by leaf tasks only; tracks
//! and orchestrators coordinate and hold nothing while they wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::context::{Scope, lock};
use crate::error::TaskError;

/// The semaphores of one runtime.
#[derive(Default)]
pub(crate) struct ConcurrencyLimits {
    pub global: Option<Arc<Semaphore>>,
    per_task: Mutex<HashMap<&'static str, Arc<Semaphore>>>,
}

impl ConcurrencyLimits {
    pub fn new(global: Option<usize>) -> Self {
        ConcurrencyLimits {
            global: global.map(|n| Arc::new(Semaphore::new(n))),
            per_task: Mutex::default(),
        }
    }

    /// The limits a run of `task` is subject to.
    pub fn gate(&self, task: &'static str, leaf: bool, per_task: Option<u32>) -> Gate {
        let task_limit = per_task.map(|n| {
            let mut map = lock(&self.per_task);
            let semaphore = map
                .entry(task)
                .or_insert_with(|| Arc::new(Semaphore::new(n as usize)));
            (task, semaphore.clone())
        });
        let global = if leaf { self.global.clone() } else { None };
        Gate { task_limit, global }
    }
}

/// The semaphores one run must pass.
pub(crate) struct Gate {
    task_limit: Option<(&'static str, Arc<Semaphore>)>,
    global: Option<Arc<Semaphore>>,
}

/// Permits held for one attempt and the scope its children inherit.
pub(crate) struct Slot {
    pub permits: Vec<OwnedSemaphorePermit>,
    pub scope: Scope,
}

impl Gate {
    /// Waits for every slot not already held up the chain; stops waiting on cancellation.
    pub async fn acquire(
        self,
        scope: &Scope,
        cancel: &CancellationToken,
    ) -> Result<Slot, TaskError> {
        let mut scope = scope.clone();
        let mut permits = Vec::new();
        let wanted = [
            self.task_limit.map(|(task, s)| (Some(task), s)),
            self.global.map(|s| (None, s)),
        ];
        for (key, semaphore) in wanted.into_iter().flatten() {
            if scope.holds(key) {
                continue;
            }
            let permit = tokio::select! {
                permit = semaphore.acquire_owned() => permit
                    .map_err(|_| TaskError::rejected("the runtime's concurrency limit was closed"))?,
                _ = cancel.cancelled() => {
                    return Err(TaskError::cancelled("run cancelled while waiting for a concurrency slot"));
                }
            };
            permits.push(permit);
            scope = scope.with_held(key);
        }
        Ok(Slot { permits, scope })
    }
}
