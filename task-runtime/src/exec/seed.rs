//! Where a run starts from and what it shares with its parent:
//!
//! - [`Seed`]: the run's id (when the caller fixed it), its [`Scope`] and its cancellation;
//! - [`Scope`]: tenant, project, trampData and cleanup options inherited from the parent, the
//!   nesting depth, the parent's run id, the composite concurrency permits held up the chain,
//!   and the parent attempt that adopts the cleanup of a child dropped mid-flight;
//! - [`AttemptState`]: what one attempt accumulates and must settle before it ends (cleanup,
//!   step and branch records, the tasks it spawned, the concurrency permits it holds).

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::concurrency::Gate;
use crate::envelope::{BranchRecord, StepRecord};
use crate::id::RunId;
use crate::input::TrampData;
use crate::store::journal::Journal;

/// What a run inherits from its parent and passes to its children.
#[derive(Clone, Default)]
pub(crate) struct Scope {
    pub tenant_id: Option<Arc<str>>,
    pub project_id: Option<Arc<str>>,
    pub tramp_data: Option<TrampData>,
    pub cleanup_options: Option<Arc<Value>>,
    /// Per-task permits held by composite ancestors; a descendant of the same composite
    /// borrows one (one at a time) instead of waiting for a permit its ancestor holds.
    pub held: Option<Arc<HeldLimit>>,
    /// 0 for a top-level run, its parent's depth + 1 for a child.
    pub depth: u32,
    pub parent_run_id: Option<RunId>,
    /// The attempt this run is a child of: a child dropped mid-flight (its parent timed out
    /// or was cancelled while inside it) hands it its cleanup, so the parent's attempt runs
    /// it before it ends.
    pub adopt: Option<Arc<AttemptState>>,
    /// The journal of the durable run this one is part of: children record themselves in it
    /// and replay what an earlier attempt completed.
    pub journal: Option<Arc<Journal>>,
}

/// A composite's per-task permit, held up the chain.
pub(crate) struct HeldLimit {
    pub task: &'static str,
    /// One permit: lent to one descendant at a time.
    pub lend: Arc<tokio::sync::Semaphore>,
    pub parent: Option<Arc<HeldLimit>>,
}

impl Scope {
    /// The nearest ancestor's permit for `task`, if an ancestor holds one.
    pub(crate) fn held(&self, task: &'static str) -> Option<&HeldLimit> {
        let mut next = self.held.as_deref();
        while let Some(held) = next {
            if held.task == task {
                return Some(held);
            }
            next = held.parent.as_deref();
        }
        None
    }

    pub(crate) fn with_held(&self, task: &'static str) -> Scope {
        let mut scope = self.clone();
        scope.held = Some(Arc::new(HeldLimit {
            task,
            lend: Arc::new(tokio::sync::Semaphore::new(1)),
            parent: self.held.clone(),
        }));
        scope
    }
}

/// What a run starts from.
pub(crate) struct Seed {
    /// Fixed by the caller (a background trigger returns the id before the run starts).
    pub(crate) run_id: Option<RunId>,
    pub(crate) scope: Scope,
    pub(crate) cancel: CancellationToken,
    /// Where in its parent the run sits (`step:1`, `branch:stats`, `item:documents:7`):
    /// its key in the journal.
    pub(crate) position: Option<String>,
    /// A durable run claimed by a worker: run this one attempt (1 for the first), and
    /// reschedule instead of sleeping before a retry.
    pub(crate) attempt: Option<u32>,
    /// The trace a claimed run continues (zero-sized without feature `otel`).
    pub(crate) trace: crate::telemetry::Remote,
}

impl Seed {
    /// A top-level run, cancelled with `cancel`.
    pub(crate) fn root(cancel: CancellationToken) -> Self {
        Seed {
            run_id: None,
            scope: Scope::default(),
            cancel,
            position: None,
            attempt: None,
            trace: crate::telemetry::Remote::default(),
        }
    }

    /// A child of the attempt running in `ctx`: inherits its scope and cancellation.
    pub(crate) fn child(ctx: &crate::context::TaskContext) -> Self {
        Seed::within(ctx.child_scope(), ctx.cancel.clone())
    }

    /// A run inside a parent's scope, cancelled with `cancel`.
    pub(crate) fn at(mut self, position: Option<String>) -> Self {
        self.position = position;
        self
    }

    pub(crate) fn within(scope: Scope, cancel: CancellationToken) -> Self {
        Seed {
            run_id: None,
            scope,
            cancel,
            position: None,
            attempt: None,
            trace: crate::telemetry::Remote::default(),
        }
    }
}

pub(crate) type Cleanup = BoxFuture<'static, Result<(), String>>;

/// Records a composite run (track or orchestrator) fills while it runs.
#[derive(Default)]
pub(crate) struct Records {
    pub steps: Vec<StepRecord>,
    pub branches: Vec<BranchRecord>,
}

/// The concurrency permits of a leaf attempt. While the attempt waits for a child run it
/// holds none (so nothing nested can deadlock on them, and children fanned out at once do
/// not share one slot); it takes them again, in the same order, when its last child ends.
pub(crate) struct Slots {
    pub gate: Gate,
    pub permits: Vec<OwnedSemaphorePermit>,
    pub children_running: usize,
}

/// What one attempt accumulates and settles before it ends.
#[derive(Default)]
pub(crate) struct AttemptState {
    pub cleanup: Mutex<Vec<Cleanup>>,
    pub records: Mutex<Records>,
    /// Tokio tasks the attempt spawned (orchestrator branches and fan-out lanes). The attempt
    /// waits for all of them before it ends, however it ends.
    pub children: OnceLock<TaskTracker>,
    /// `None` when no concurrency limit applies to the attempt.
    pub slots: Option<Mutex<Slots>>,
    /// `ctx.step`s begun so far: the next one's position in the journal.
    pub steps_begun: std::sync::atomic::AtomicU32,
}

impl AttemptState {
    pub(crate) fn new(slots: Option<Slots>) -> Self {
        AttemptState {
            slots: slots.map(Mutex::new),
            ..AttemptState::default()
        }
    }

    pub(crate) fn push_cleanup(&self, cleanup: Cleanup) {
        lock(&self.cleanup).push(cleanup);
    }

    pub(crate) fn children(&self) -> &TaskTracker {
        self.children.get_or_init(TaskTracker::new)
    }

    /// Everything still to settle, as one future: wait for the spawned tasks (whose own
    /// dropped children may still hand cleanup here), then run the cleanup last-registered
    /// first. `None` when there is nothing.
    pub(crate) fn pending(
        state: &Arc<AttemptState>,
        task: &'static str,
        run_id: &RunId,
    ) -> Option<impl Future<Output = Vec<String>> + Send + 'static> {
        if state.children.get().is_none() && lock(&state.cleanup).is_empty() {
            return None;
        }
        let (state, run_id) = (state.clone(), run_id.clone());
        Some(async move {
            if let Some(children) = state.children.get() {
                children.close();
                children.wait().await;
            }
            let cleanups = std::mem::take(&mut *lock(&state.cleanup));
            run_cleanups(cleanups, task, &run_id).await
        })
    }
}

/// Runs cleanups last-registered first, logging and returning the failures.
async fn run_cleanups(cleanups: Vec<Cleanup>, task: &str, run_id: &RunId) -> Vec<String> {
    let mut errors = Vec::new();
    for cleanup in cleanups.into_iter().rev() {
        if let Err(error) = cleanup.await {
            tracing::warn!(task, run_id = %run_id, %error, "cleanup failed");
            errors.push(error);
        }
    }
    errors
}

/// Locks a mutex, recovering the data if a panicking holder poisoned it: every critical
/// section here is a short push, take or count, so the data is never half-updated.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
