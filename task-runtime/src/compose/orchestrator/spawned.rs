//! Branches and items as runs of their own ("children on any worker").
//!
//! An orchestrator that is the claimed run itself, on a store that spawns children, plans
//! its branches and items instead of executing them. At its first `join` it looks each one
//! up in its journal (loaded when it was claimed): completed and failed ones are results,
//! unfinished ones are waited for, and missing ones are enqueued, in one multi-row write,
//! as queued runs at their position (`branch:stats`, `item:documents:7`) that any worker
//! may claim; an `each` keeps at most its `concurrency` unfinished at once. If any is
//! unfinished, the attempt suspends (the run is `waiting`, holding no worker, concurrency
//! slot or lease) until the settle of its children wakes it: when all have ended, or when
//! half of them have and more items wait to be enqueued, or, under fail-fast, when one
//! failed. Resumed, it runs again from the top and reads the results from its journal.
//! Under fail-fast, a failed child cancels the siblings still queued or executing.
//!
//! A position is enqueued once: a re-attempted parent finds its children in its journal,
//! and the store's unique (parent, position) index refuses a second one regardless. A
//! retried parent (a new attempt, not a resume) queues the same row again for a child that
//! failed or was cancelled in an earlier attempt of its own, as an in-attempt retry would
//! run that branch again; completed children replay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{FailurePolicy, FailureSlot};
use crate::context::TaskContext;
use crate::envelope::RunOutput;
use crate::error::{Issue, TaskError};
use crate::exec::seed::lock;
use crate::id::RunId;
use crate::input::{TrampData, without_inherited};
use crate::store::journal::{Journal, Suspension};
use crate::store::{ChildWait, NewChild, SpawnedEnd, later};

/// How long a parent waits at most before it looks at its children again by itself (the
/// settles of its children wake it long before; this only bounds a wake that never comes).
const RECHECK: Duration = Duration::from_secs(300);

/// The planned children of one orchestrator attempt.
pub(super) struct Spawner {
    journal: Arc<Journal>,
    parent: RunId,
    tenant_id: Option<String>,
    project_id: Option<String>,
    policy: FailurePolicy,
    now: SystemTime,
    /// The parent's attempt: children that failed in an earlier one are queued again.
    attempt: u32,
    /// The attempt's cancellation: a suspension cancels it.
    cancel: tokio_util::sync::CancellationToken,
    /// The trampData this run shares with its children.
    tramp: Option<TrampData>,
    plan: Mutex<Vec<Planned>>,
    resolved: tokio::sync::OnceCell<Resolved>,
}

/// One branch: a single child (`window: None`) or an `each`'s items.
struct Planned {
    name: &'static str,
    task: &'static str,
    window: Option<usize>,
    inputs: Vec<Result<Value, TaskError>>,
}

/// What the journal and this attempt's enqueue say of every position.
#[derive(Default)]
struct Resolved {
    results: HashMap<String, (RunId, Result<Value, TaskError>)>,
    /// The children could not be enqueued: the attempt fails (and is retried).
    store_failure: Option<TaskError>,
}

/// An unfinished child.
struct Open {
    position: String,
    id: RunId,
    task: &'static str,
}

impl Spawner {
    /// A spawner when the orchestrator running in `ctx` spawns its children: it is the
    /// claimed run itself (its journal's root) and its store runs children on any worker.
    pub(super) fn of(ctx: &TaskContext, policy: FailurePolicy) -> Option<Spawner> {
        let journal = ctx.scope.journal.as_ref()?;
        if !journal.store().spawns_children() || journal.root() != &ctx.run_id {
            return None;
        }
        Some(Spawner {
            journal: journal.clone(),
            parent: ctx.run_id.clone(),
            tenant_id: ctx.tenant_id().map(str::to_owned),
            project_id: ctx.project_id().map(str::to_owned),
            policy,
            now: ctx.exec.clock.now(),
            attempt: ctx.attempt(),
            cancel: ctx.cancel.clone(),
            tramp: ctx.scope.tramp_data.clone(),
            plan: Mutex::default(),
            resolved: tokio::sync::OnceCell::new(),
        })
    }

    /// Plans a branch's children (`window: Some(n)` for an `each` with at most `n`
    /// unfinished at once).
    pub(super) fn plan<I: Serialize>(
        &self,
        name: &'static str,
        task: &'static str,
        window: Option<usize>,
        inputs: Vec<I>,
    ) {
        // Without the trampData shared with this run (a cloned `BaseInput`): the child
        // inherits it from here when a worker claims it, as an in-attempt child does.
        let inputs = inputs
            .iter()
            .map(|input| {
                without_inherited(self.tramp.as_ref(), || serde_json::to_value(input)).map_err(
                    |e| {
                        TaskError::invalid_input(vec![Issue {
                            path: String::new(),
                            message: format!("input does not serialize to JSON: {e}"),
                        }])
                    },
                )
            })
            .collect();
        lock(&self.plan).push(Planned {
            name,
            task,
            window,
            inputs,
        });
    }

    /// The enqueue failure that fails the attempt, once resolved.
    pub(super) fn store_failure(&self) -> Option<TaskError> {
        self.resolved.get().and_then(|r| r.store_failure.clone())
    }

    /// The result at `position`: `None` when it never started (fail-fast cancelled the
    /// branch first, or the attempt suspended). The first call resolves every planned
    /// child, and suspends the attempt while any is unfinished: the suspension cancels the
    /// attempt, every result is then `None`, and the run waits (what the orchestrator
    /// returns from this attempt is not recorded).
    pub(super) async fn result<O: DeserializeOwned>(
        &self,
        position: &str,
        name: &'static str,
        index: Option<usize>,
        task: &'static str,
        failure: &FailureSlot,
    ) -> Option<(RunId, Result<O, TaskError>)> {
        let resolved = self.resolved.get_or_init(|| self.resolve()).await;
        let (id, result) = resolved.results.get(position)?;
        let result = result.clone().and_then(|value| {
            serde_json::from_value::<O>(value).map_err(|e| {
                TaskError::fatal(format!(
                    "the output recorded for {position} does not read as `{}`: {e}",
                    std::any::type_name::<O>()
                ))
            })
        });
        let result = result.map_err(|error| {
            let error = error.in_branch(name, index, task, id.as_str());
            failure.record(&error);
            error
        });
        Some((id.clone(), result))
    }

    async fn resolve(&self) -> Resolved {
        let plan = std::mem::take(&mut *lock(&self.plan));
        let mut resolved = Resolved::default();
        let mut open: Vec<Open> = Vec::new();
        let mut fresh: Vec<NewChild> = Vec::new();
        let mut more_later = false;
        let mut failed = false;
        // The children continue this attempt's trace.
        let trace_context = crate::telemetry::current();
        for branch in plan {
            let mut open_here = 0usize;
            let mut missing = Vec::new();
            for (index, input) in branch.inputs.into_iter().enumerate() {
                let position = match branch.window {
                    Some(_) => format!("item:{}:{index}", branch.name),
                    None => format!("branch:{}", branch.name),
                };
                let Some(entry) = self.journal.entry(&self.parent, &position) else {
                    missing.push((position, input, None));
                    continue;
                };
                match &entry.spawned {
                    Some(SpawnedEnd::Completed) => {
                        let output = entry.output.clone().unwrap_or_default();
                        resolved
                            .results
                            .insert(position, (entry.id.clone(), Ok(output)));
                    }
                    // Failed in an earlier attempt of this (retried) parent: run it again.
                    Some(SpawnedEnd::Failed(_, at)) if *at < self.attempt => {
                        missing.push((position, input, Some(entry.id.clone())));
                    }
                    Some(SpawnedEnd::Failed(error, _)) => {
                        failed = true;
                        resolved
                            .results
                            .insert(position, (entry.id.clone(), Err(error.clone())));
                    }
                    Some(SpawnedEnd::Open) | None => {
                        open_here += 1;
                        open.push(Open {
                            position,
                            id: entry.id.clone(),
                            task: branch.task,
                        });
                    }
                }
            }
            let room = branch
                .window
                .unwrap_or(usize::MAX)
                .saturating_sub(open_here);
            if missing.len() > room {
                more_later = true;
                missing.truncate(room);
            }
            for (position, input, existing) in missing {
                match input {
                    Ok(input) => {
                        let again = existing.is_some();
                        let id = existing.unwrap_or_else(|| RunId::new(SystemTime::now()));
                        let text = |key: &str, parent: &Option<String>| {
                            input
                                .get(key)
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .or_else(|| parent.clone())
                        };
                        fresh.push(NewChild {
                            id: id.clone(),
                            position: position.clone(),
                            task: branch.task.to_owned(),
                            tenant_id: text("tenantId", &self.tenant_id),
                            project_id: text("projectId", &self.project_id),
                            input,
                            parent_attempt: self.attempt,
                            again,
                            trace_context: trace_context.clone(),
                        });
                        open.push(Open {
                            position,
                            id,
                            task: branch.task,
                        });
                    }
                    Err(error) => {
                        failed = true;
                        let id = RunId::new(SystemTime::now());
                        resolved.results.insert(position, (id, Err(error)));
                    }
                }
            }
        }
        if failed && self.policy == FailurePolicy::FailFast {
            // Nothing new is enqueued; what is unfinished is cancelled.
            let open: Vec<Open> = open
                .into_iter()
                .filter(|o| !fresh.iter().any(|f| f.id == o.id))
                .collect();
            self.cancel(&open).await;
            for o in open {
                let error = TaskError::cancelled("cancelled: another branch or item failed");
                resolved.results.insert(o.position, (o.id, Err(error)));
            }
            return resolved;
        }
        if !fresh.is_empty() {
            let count = fresh.len();
            let store = self.journal.store();
            let clock = std::time::Instant::now();
            match store
                .spawn(self.parent.clone(), self.journal.token(), fresh)
                .await
            {
                Ok(added) => {
                    let enqueue_us = u64::try_from(clock.elapsed().as_micros()).unwrap_or(u64::MAX);
                    tracing::info!(run_id = %self.parent, planned = count, added, enqueue_us, "children enqueued for any worker");
                }
                Err(error) => {
                    tracing::warn!(run_id = %self.parent, %error, "enqueueing the children failed");
                    resolved.store_failure = Some(TaskError::failed(format!(
                        "enqueueing the orchestrator's children failed: {error}"
                    )));
                    return resolved;
                }
            }
        }
        if open.is_empty() {
            return resolved;
        }
        let open_at_most = if more_later { open.len() / 2 } else { 0 };
        tracing::info!(
            run_id = %self.parent,
            unfinished = open.len(),
            open_at_most,
            "waiting for children: the run waits without a worker"
        );
        self.journal.suspend(Suspension {
            wake_at: later(self.now, RECHECK),
            token: None,
            children: Some(ChildWait {
                open_at_most: u32::try_from(open_at_most).unwrap_or(u32::MAX),
                on_failure: self.policy == FailurePolicy::FailFast,
            }),
        });
        // The suspension cancelled the attempt: the orchestrator returns without results,
        // and the worker settles the run as waiting.
        self.cancel.cancelled().await;
        Resolved::default()
    }

    /// Cancels unfinished children: queued ones end at once, executing ones are asked to
    /// stop (their worker does within a heartbeat).
    async fn cancel(&self, open: &[Open]) {
        if open.is_empty() {
            return;
        }
        let store = self.journal.store();
        let envelope = |o: &Open| {
            Box::new(RunOutput::refused(
                o.task,
                o.id.clone(),
                Value::Null,
                TaskError::cancelled("cancelled: another branch or item failed"),
            ))
        };
        let ends = open.iter().map(|o| (o.id.clone(), envelope(o))).collect();
        let ended = match store.end_queued(ends).await {
            Ok(ended) => ended,
            Err(error) => {
                tracing::warn!(run_id = %self.parent, %error, "cancelling the unfinished children failed");
                return;
            }
        };
        for (o, ended) in open.iter().zip(ended) {
            let outcome = match ended {
                true => Ok(crate::store::CancelOutcome::Cancelled),
                false => store.cancel(o.id.clone(), envelope(o)).await,
            };
            match outcome {
                Ok(crate::store::CancelOutcome::Cancelled) => {
                    crate::metrics::run_ended(o.task, "cancelled");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(run_id = %o.id, %error, "cancelling a child failed"),
            }
        }
        tracing::info!(run_id = %self.parent, children = open.len(), "fail-fast: unfinished children cancelled");
    }
}
