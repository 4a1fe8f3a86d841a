//! The runtime side of `orchestrator!`: branches run as child runs on their own tokio tasks
//! (real parallelism on the worker threads), `each` fans out over a collection with a
//! concurrency window, and the failure policy decides what a failing branch does to the
//! others.

use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::{Scope, TaskContext, lock};
use crate::engine::{self, RunInput, Seed};
use crate::envelope::{BranchRecord, ItemCounts};
use crate::error::{ErrorKind, TaskError};
use crate::runtime::Runtime;
use crate::task::Task;

/// What a failing branch does to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// The first failure cancels the other branches (their cleanup runs) and fails the
    /// orchestrator, naming the branch and item.
    #[default]
    FailFast,
    /// Every branch runs to its end; each output field is an [`Outcome`], and the
    /// orchestrator succeeds with partial results.
    Settle,
}

/// The result of one branch (or one item) under [`FailurePolicy::Settle`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Outcome<T> {
    /// The branch's output.
    Ok(T),
    /// Why the branch failed.
    Error(TaskError),
}

impl<T> Outcome<T> {
    /// The output as a `Result`.
    pub fn into_result(self) -> Result<T, TaskError> {
        match self {
            Outcome::Ok(value) => Ok(value),
            Outcome::Error(error) => Err(error),
        }
    }

    /// Whether the branch succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}

impl<T> From<Result<T, TaskError>> for Outcome<T> {
    fn from(result: Result<T, TaskError>) -> Self {
        match result {
            Ok(value) => Outcome::Ok(value),
            Err(error) => Outcome::Error(error),
        }
    }
}

/// The branches of one orchestrator attempt.
pub struct Branches<'a> {
    ctx: &'a TaskContext,
    policy: FailurePolicy,
    /// Cancels every branch of this attempt (fail-fast), and follows the parent's cancel.
    group: CancellationToken,
    first_error: Arc<Mutex<Option<TaskError>>>,
}

/// A single branch started by [`Branches::one`].
pub struct One<O> {
    name: &'static str,
    task: &'static str,
    started: Instant,
    handle: JoinHandle<(String, u32, Result<O, TaskError>)>,
}

/// An `each` branch started by [`Branches::each`].
pub struct Each<O> {
    name: &'static str,
    task: &'static str,
    started: Instant,
    handle: JoinHandle<(ItemCounts, Vec<Result<O, TaskError>>)>,
}

impl<'a> Branches<'a> {
    /// The branches of the orchestrator attempt running in `ctx`.
    pub fn new(ctx: &'a TaskContext, policy: FailurePolicy) -> Self {
        Branches {
            ctx,
            policy,
            group: ctx.cancel.child_token(),
            first_error: Arc::default(),
        }
    }

    fn seed(&self) -> (Runtime, Scope, CancellationToken) {
        (
            self.ctx.runtime.clone(),
            self.ctx.scope.clone(),
            self.group.clone(),
        )
    }

    /// Starts a branch running `T` on its own tokio task.
    pub fn one<T: Task>(&self, name: &'static str, input: T::Input) -> One<T::Output> {
        let (runtime, scope, cancel) = self.seed();
        let failure = self.failure_slot();
        let handle = tokio::spawn(async move {
            let out = engine::execute::<T>(
                &runtime,
                RunInput::Typed(input),
                Seed::within(scope, cancel),
            )
            .await;
            let run_id = out.run_id.to_string();
            let attempts = out.report.attempts;
            let result = out.into_typed().map_err(|error| {
                let error = error.in_branch(name, None, T::ID, &run_id);
                failure.record(&error);
                error
            });
            (run_id, attempts, result)
        });
        One {
            name,
            task: T::ID,
            started: Instant::now(),
            handle,
        }
    }

    /// Starts an `each` branch: `T` once per item, at most `concurrency` at once (default:
    /// the runtime's `max_fan_out`), results in item order.
    pub fn each<T: Task>(
        &self,
        name: &'static str,
        items: impl IntoIterator<Item = T::Input>,
        concurrency: Option<usize>,
    ) -> Each<T::Output> {
        let items: Vec<T::Input> = items.into_iter().collect();
        let (runtime, scope, cancel) = self.seed();
        let window = concurrency.unwrap_or_else(|| runtime.max_fan_out()).max(1);
        let failure = self.failure_slot();
        let handle = tokio::spawn(async move {
            let total = items.len();
            let mut results: Vec<Option<Result<T::Output, TaskError>>> =
                std::iter::repeat_with(|| None).take(total).collect();
            let mut pending = items.into_iter().enumerate();
            let mut running = JoinSet::new();
            loop {
                while running.len() < window && !cancel.is_cancelled() {
                    let Some((index, input)) = pending.next() else {
                        break;
                    };
                    let (runtime, scope, cancel) = (runtime.clone(), scope.clone(), cancel.clone());
                    running.spawn(async move {
                        let out = engine::execute::<T>(
                            &runtime,
                            RunInput::Typed(input),
                            Seed::within(scope, cancel),
                        )
                        .await;
                        let run_id = out.run_id.clone();
                        let result = out
                            .into_typed()
                            .map_err(|error| error.in_branch(name, Some(index), T::ID, &run_id));
                        (index, result)
                    });
                }
                let Some(joined) = running.join_next().await else {
                    break;
                };
                let (index, result) = joined.unwrap_or_else(|e| join_failed(e));
                if let Err(error) = &result {
                    failure.record(error);
                }
                results[index] = Some(result);
            }
            let mut counts = ItemCounts {
                total,
                ..ItemCounts::default()
            };
            let results: Vec<Result<T::Output, TaskError>> = results
                .into_iter()
                .enumerate()
                .map(|(index, result)| {
                    let result = result.unwrap_or_else(|| {
                        Err(
                            TaskError::cancelled("item not started: the branch was cancelled")
                                .in_branch(name, Some(index), T::ID, ""),
                        )
                    });
                    match &result {
                        Ok(_) => counts.succeeded += 1,
                        Err(e) if matches!(e.kind(), ErrorKind::Cancelled { .. }) => {
                            counts.cancelled += 1
                        }
                        Err(_) => counts.failed += 1,
                    }
                    result
                })
                .collect();
            (counts, results)
        });
        Each {
            name,
            task: T::ID,
            started: Instant::now(),
            handle,
        }
    }

    fn failure_slot(&self) -> FailureSlot {
        FailureSlot {
            policy: self.policy,
            group: self.group.clone(),
            first_error: self.first_error.clone(),
        }
    }

    /// Under fail-fast, the first real failure (a sibling's cancellation never displaces it).
    pub fn finish(self) -> Result<(), TaskError> {
        match lock(&self.first_error).take() {
            Some(error) if self.policy == FailurePolicy::FailFast => Err(error),
            _ => Ok(()),
        }
    }
}

/// Where a branch reports its failure; under fail-fast the first one cancels the group.
struct FailureSlot {
    policy: FailurePolicy,
    group: CancellationToken,
    first_error: Arc<Mutex<Option<TaskError>>>,
}

impl FailureSlot {
    fn record(&self, error: &TaskError) {
        if self.policy == FailurePolicy::Settle {
            return;
        }
        let cancelled = matches!(error.kind(), ErrorKind::Cancelled { .. });
        let mut first = lock(&self.first_error);
        let replace = match &*first {
            None => true,
            Some(existing) => !cancelled && matches!(existing.kind(), ErrorKind::Cancelled { .. }),
        };
        if replace {
            *first = Some(error.clone());
        }
        drop(first);
        if !cancelled {
            self.group.cancel();
        }
    }
}

/// Runs catch their own panics, so a join error means the branch's own task panicked (the
/// panic goes on to the orchestrator's attempt, which reports it as `panicked`) or the tokio
/// runtime is going away.
fn join_failed(join_error: tokio::task::JoinError) -> ! {
    if join_error.is_panic() {
        std::panic::resume_unwind(join_error.into_panic())
    }
    panic!("branch task stopped: {join_error}")
}

impl<O> One<O> {
    /// Waits for the branch and records it in `metadata.branches`.
    pub async fn join(self, branches: &Branches<'_>) -> Result<O, TaskError> {
        let (run_id, _attempts, result) = self.handle.await.unwrap_or_else(|e| join_failed(e));
        branches.ctx.push_branch(BranchRecord {
            name: self.name.to_owned(),
            task_name: self.task.to_owned(),
            success: result.is_ok(),
            duration_ms: millis(self.started),
            run_id: Some(run_id),
            items: None,
        });
        result
    }
}

impl<O> Each<O> {
    /// Waits for every item and records the branch in `metadata.branches`. Under fail-fast
    /// the first failing item is the error; under settle every item keeps its outcome.
    pub async fn join(self, branches: &Branches<'_>) -> Vec<Result<O, TaskError>> {
        let (counts, results) = self.handle.await.unwrap_or_else(|e| join_failed(e));
        branches.ctx.push_branch(BranchRecord {
            name: self.name.to_owned(),
            task_name: self.task.to_owned(),
            success: counts.failed == 0 && counts.cancelled == 0,
            duration_ms: millis(self.started),
            run_id: None,
            items: Some(counts),
        });
        results
    }
}

fn millis(started: Instant) -> u64 {
    started.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
}
