//! The runtime side of `orchestrator!`: branches run as child runs on their own tokio tasks
//! (real parallelism on the worker threads), `each` fans out over a collection with a
//! concurrency window, and the failure policy decides what a failing branch does to the
//! others.
//!
//! Every task a branch spawns belongs to the orchestrator's attempt (its `children`
//! tracker): the attempt waits for all of them before it ends, whether it returns, fails,
//! times out or panics, so no branch outlives its orchestrator.
//!
//! `each` does not spawn a tokio task per item: it runs the items on a few *lanes*, one
//! tokio task per worker thread (at most the window), each keeping its share of the window
//! in flight. CPU-bound items still use every core, and the per-item cost is a future in a
//! `FuturesUnordered` instead of a spawn (about 450 ns each on this kind of machine).
//!
//! In a durable run on a store that spawns children (SQLite), an orchestrator that is the
//! claimed run itself does not execute its branches and items: it enqueues them as runs of
//! their own ([`spawned`]), which any worker claims, and waits for them suspended, holding
//! no worker or concurrency slot; resumed, it reads their results from its journal.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::TaskContext;
use crate::envelope::{BranchRecord, ItemCounts, ItemRun};
use crate::error::{ErrorKind, TaskError};
use crate::exec::seed::lock;
use crate::exec::{Executor, RunInput, Scope, Seed, execute};
use crate::id::RunId;
use crate::task::Task;

mod spawned;
use spawned::Spawner;

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
    /// Cancels every branch of this attempt (fail-fast, or the attempt ending early), and
    /// follows the parent's cancellation.
    group: CancellationToken,
    first_error: Arc<Mutex<Option<TaskError>>>,
    /// Set when the branches run as runs of their own, on any worker.
    spawner: Option<Spawner>,
}

impl std::fmt::Debug for Branches<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Branches")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Drop for Branches<'_> {
    /// Dropped before its branches were joined (a mapper panicked, the attempt was dropped):
    /// stop them. After a normal finish every branch has ended and this changes nothing.
    fn drop(&mut self) {
        self.group.cancel();
    }
}

/// A single branch started by [`Branches::one`].
#[derive(Debug)]
pub struct One<O> {
    name: &'static str,
    task: &'static str,
    started: Instant,
    /// `None` when the branch is a spawned run (its result comes from the journal).
    handle: Option<JoinHandle<BranchDone<O>>>,
}

/// A finished branch: its run, whether it replayed, its result.
type BranchDone<O> = (RunId, bool, Result<O, TaskError>);

/// An `each` branch started by [`Branches::each`].
#[derive(Debug)]
pub struct Each<O> {
    name: &'static str,
    task: &'static str,
    started: Instant,
    total: usize,
    lanes: Vec<JoinHandle<Vec<ItemDone<O>>>>,
    /// The items are spawned runs (their results come from the journal).
    spawned: bool,
}

/// One finished item.
type ItemDone<O> = (usize, RunId, Result<O, TaskError>);

/// What every run of one orchestrator attempt's branches shares.
#[derive(Clone)]
struct BranchSeed {
    exec: Executor,
    scope: Scope,
    cancel: CancellationToken,
}

impl BranchSeed {
    /// The seed of the run at `position` (its journal key, in a durable run).
    fn seed(&self, position: impl FnOnce() -> String) -> Seed {
        let position = self.scope.journal.is_some().then(position);
        Seed::within(self.scope.clone(), self.cancel.clone()).at(position)
    }
}

impl<'a> Branches<'a> {
    /// The branches of the orchestrator attempt running in `ctx`.
    pub fn new(ctx: &'a TaskContext, policy: FailurePolicy) -> Self {
        Branches {
            ctx,
            policy,
            group: ctx.cancel.child_token(),
            first_error: Arc::default(),
            spawner: Spawner::of(ctx, policy),
        }
    }

    fn branch_seed(&self) -> BranchSeed {
        BranchSeed {
            exec: self.ctx.executor().clone(),
            scope: self.ctx.child_scope(),
            cancel: self.group.clone(),
        }
    }

    /// Starts a branch running `T` on its own tokio task.
    pub fn one<T: Task>(&self, name: &'static str, input: T::Input) -> One<T::Output> {
        if let Some(spawner) = &self.spawner {
            spawner.plan(name, T::ID, None, vec![input]);
            return One {
                name,
                task: T::ID,
                started: Instant::now(),
                handle: None,
            };
        }
        let seed = self.branch_seed();
        let failure = self.failure_slot();
        let handle = self.ctx.state.children().spawn(
            async move {
                let branch = seed.seed(|| format!("branch:{name}"));
                let out = execute::<T>(&seed.exec, RunInput::Typed(input), branch).await;
                let (run_id, replayed) = (out.run_id.clone(), out.replayed);
                let result = out.into_typed().map_err(|error| {
                    let error = error.in_branch(name, None, T::ID, run_id.as_str());
                    failure.record(&error);
                    error
                });
                (run_id, replayed, result)
            }
            .in_current_span(),
        );
        One {
            name,
            task: T::ID,
            started: Instant::now(),
            handle: Some(handle),
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
        let total = items.len();
        // Read back by the CLI's progress display (`cli::progress`): an `each` branch's size.
        tracing::info!(branch = name, items = total, "fan-out started");
        if let Some(spawner) = &self.spawner {
            let window = concurrency
                .unwrap_or(self.ctx.executor().max_fan_out)
                .max(1);
            spawner.plan(name, T::ID, Some(window), items);
            return Each {
                name,
                task: T::ID,
                started: Instant::now(),
                total,
                lanes: Vec::new(),
                spawned: true,
            };
        }
        let seed = self.branch_seed();
        let window = concurrency.unwrap_or(seed.exec.max_fan_out).max(1);
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let lane_count = window.min(workers).min(total).max(1);
        let per_lane = window.div_ceil(lane_count);
        let queue = Arc::new(Mutex::new(items.into_iter().enumerate()));
        let lanes = (0..lane_count)
            .map(|_| {
                let (seed, queue, failure) = (seed.clone(), queue.clone(), self.failure_slot());
                self.ctx
                    .state
                    .children()
                    .spawn(lane::<T>(seed, queue, per_lane, name, failure).in_current_span())
            })
            .collect();
        Each {
            name,
            task: T::ID,
            started: Instant::now(),
            total,
            lanes,
            spawned: false,
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
    pub fn finish(&self) -> Result<(), TaskError> {
        if let Some(error) = self.spawner.as_ref().and_then(Spawner::store_failure) {
            return Err(error);
        }
        match lock(&self.first_error).take() {
            Some(error) if self.policy == FailurePolicy::FailFast => Err(error),
            _ => Ok(()),
        }
    }
}

/// One lane of an `each` branch: pulls items from the shared queue and keeps up to
/// `in_flight` of them running until the queue is empty or the branch is cancelled.
async fn lane<T: Task>(
    seed: BranchSeed,
    queue: Arc<Mutex<std::iter::Enumerate<std::vec::IntoIter<T::Input>>>>,
    in_flight: usize,
    name: &'static str,
    failure: FailureSlot,
) -> Vec<ItemDone<T::Output>> {
    let mut running = FuturesUnordered::new();
    let mut done = Vec::new();
    loop {
        while running.len() < in_flight && !seed.cancel.is_cancelled() {
            let Some((index, input)) = lock(&queue).next() else {
                break;
            };
            let item = seed.seed(|| format!("item:{name}:{index}"));
            let run = execute::<T>(&seed.exec, RunInput::Typed(input), item);
            running.push(async move { (index, run.await) });
        }
        let Some((index, out)) = running.next().await else {
            break;
        };
        let run_id = out.run_id.clone();
        let result = out
            .into_typed()
            .map_err(|error| error.in_branch(name, Some(index), T::ID, run_id.as_str()));
        if let Err(error) = &result {
            failure.record(error);
        }
        done.push((index, run_id, result));
    }
    done
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

impl<O: serde::de::DeserializeOwned> One<O> {
    /// Waits for the branch and records it in `metadata.branches`.
    pub async fn join(self, branches: &Branches<'_>) -> Result<O, TaskError> {
        let (run_id, replayed, result) = match (self.handle, &branches.spawner) {
            (Some(handle), _) => handle.await.unwrap_or_else(|e| join_failed(e)),
            (None, Some(spawner)) => {
                let position = format!("branch:{}", self.name);
                let (run_id, result) = spawner
                    .result(
                        &position,
                        self.name,
                        None,
                        self.task,
                        &branches.failure_slot(),
                    )
                    .await
                    .unwrap_or_else(|| {
                        (
                            RunId::new(std::time::SystemTime::now()),
                            Err(not_started(self.name, None, self.task)),
                        )
                    });
                (run_id, false, result)
            }
            (None, None) => unreachable!("a branch without a task is a spawned run"),
        };
        branches.ctx.push_branch(BranchRecord {
            name: self.name.to_owned(),
            task_name: self.task.to_owned(),
            success: result.is_ok(),
            duration_ms: millis(self.started),
            run_id: Some(run_id),
            replayed,
            items: None,
        });
        result
    }
}

impl<O: serde::de::DeserializeOwned> Each<O> {
    /// Waits for every item and records the branch in `metadata.branches`. Under fail-fast
    /// the first failing item is the error; under settle every item keeps its outcome.
    pub async fn join(self, branches: &Branches<'_>) -> Vec<Result<O, TaskError>> {
        let mut slots: Vec<Option<(RunId, Result<O, TaskError>)>> =
            std::iter::repeat_with(|| None).take(self.total).collect();
        if let (true, Some(spawner)) = (self.spawned, &branches.spawner) {
            let failure = branches.failure_slot();
            for (index, slot) in slots.iter_mut().enumerate() {
                let position = format!("item:{}:{index}", self.name);
                *slot = spawner
                    .result(&position, self.name, Some(index), self.task, &failure)
                    .await;
            }
        }
        for lane in self.lanes {
            for (index, run_id, result) in lane.await.unwrap_or_else(|e| join_failed(e)) {
                slots[index] = Some((run_id, result));
            }
        }
        let mut counts = ItemCounts {
            total: self.total,
            ..ItemCounts::default()
        };
        let mut succeeded_runs = Vec::new();
        let mut results = Vec::with_capacity(self.total);
        for (index, slot) in slots.into_iter().enumerate() {
            let result = match slot {
                Some((run_id, result)) => {
                    let run = ItemRun {
                        index,
                        run_id,
                        success: result.is_ok(),
                    };
                    if result.is_ok() {
                        if succeeded_runs.len() < ItemCounts::MAX_RUNS {
                            succeeded_runs.push(run);
                        }
                    } else if counts.runs.len() < ItemCounts::MAX_RUNS {
                        counts.runs.push(run);
                    }
                    result
                }
                None => Err(not_started(self.name, Some(index), self.task)),
            };
            match &result {
                Ok(_) => counts.succeeded += 1,
                Err(e) if matches!(e.kind(), ErrorKind::Cancelled { .. }) => counts.cancelled += 1,
                Err(_) => counts.failed += 1,
            }
            results.push(result);
        }
        // Every failed run first (they are what a reader looks for), then succeeded ones up
        // to the cap, back in item order.
        let room = ItemCounts::MAX_RUNS - counts.runs.len();
        counts.runs.extend(succeeded_runs.into_iter().take(room));
        counts.runs.sort_by_key(|run| run.index);
        branches.ctx.push_branch(BranchRecord {
            name: self.name.to_owned(),
            task_name: self.task.to_owned(),
            success: counts.failed == 0 && counts.cancelled == 0,
            duration_ms: millis(self.started),
            run_id: None,
            replayed: false,
            items: Some(counts),
        });
        results
    }
}

/// An item (or branch) that never started: the branch was cancelled first.
fn not_started(name: &'static str, index: Option<usize>, task: &'static str) -> TaskError {
    TaskError::cancelled("item not started: the branch was cancelled")
        .in_branch(name, index, task, "")
}

fn millis(started: Instant) -> u64 {
    started.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
}
