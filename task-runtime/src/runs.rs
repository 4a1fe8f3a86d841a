//! The runs of a runtime, as callers see them: [`RunStatus`], [`RunInfo`], and [`Runs`]
//! (`rt.runs()`), which looks runs up, lists, waits for, cancels and replays them, in the
//! runtime's store or, without one, in the memory index of its background runs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::envelope::{RunError, RunOutput};
use crate::error::{ErrorKind, TaskError};
use crate::exec::seed::lock;
use crate::id::RunId;
use crate::runtime::Runtime;
use crate::store::{CancelOutcome, LogLine, RunFilter, StoreError};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum RunStatus {
    /// Triggered with a delay that has not passed.
    Delayed,
    /// Waiting to start.
    Queued,
    /// An attempt is running.
    Executing,
    /// Waiting for something outside it (a durable wait or child runs).
    Waiting,
    /// Finished successfully.
    Completed,
    /// Finished with an error, retries exhausted.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Not started before its time to live ran out.
    Expired,
}

impl RunStatus {
    /// The name used in JSON, the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Delayed => "delayed",
            RunStatus::Queued => "queued",
            RunStatus::Executing => "executing",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Expired => "expired",
        }
    }

    /// Whether the run has ended (it keeps its envelope).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Expired
        )
    }

    /// The status a finished envelope stands for.
    #[doc(hidden)]
    pub fn of_envelope(envelope: &RunOutput<Value>) -> RunStatus {
        RunStatus::of_error(envelope.job.error_detail.as_ref())
    }

    /// The status of a run that ended with `error` (none: completed).
    pub(crate) fn of_error(error: Option<&TaskError>) -> RunStatus {
        match error.map(TaskError::kind) {
            None => RunStatus::Completed,
            Some(ErrorKind::Cancelled { .. }) => RunStatus::Cancelled,
            Some(ErrorKind::Expired { .. }) => RunStatus::Expired,
            Some(_) => RunStatus::Failed,
        }
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "delayed" => RunStatus::Delayed,
            "queued" => RunStatus::Queued,
            "executing" => RunStatus::Executing,
            "waiting" => RunStatus::Waiting,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "expired" => RunStatus::Expired,
            other => {
                return Err(format!(
                    "unknown status `{other}` (expected delayed, queued, executing, waiting, \
                     completed, failed, cancelled or expired)"
                ));
            }
        })
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RunInfo {
    /// The run's id.
    pub id: RunId,
    /// The task's id.
    pub task: String,
    /// Where it stands.
    pub status: RunStatus,
    /// Its tenant.
    pub tenant_id: Option<String>,
    /// Its project.
    pub project_id: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Its tags.
    pub tags: Vec<String>,
    /// The run this one is a child of.
    pub parent_run_id: Option<RunId>,
    /// The top-level run of its tree.
    pub root_run_id: Option<RunId>,
    /// Where in its parent (`step:1`, `branch:stats`, `item:documents:7`).
    pub position: Option<String>,
    /// The run this one replays.
    pub replay_of: Option<RunId>,
    /// The idempotency key it was triggered with.
    pub idempotency_key: Option<String>,
    /// When it was triggered.
    #[serde(with = "crate::envelope::rfc3339")]
    pub created_at: SystemTime,
    /// When it is due (after its delay).
    #[serde(with = "crate::envelope::rfc3339")]
    pub run_at: SystemTime,
    /// When its first attempt started.
    #[serde(
        with = "crate::envelope::rfc3339_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<SystemTime>,
    /// When it finished.
    #[serde(
        with = "crate::envelope::rfc3339_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<SystemTime>,
    /// Its input.
    pub input: Value,
    /// The envelope, once a top-level run finished.
    pub envelope: Option<RunOutput<Value>>,
    /// A child run's output, once it completed.
    pub output: Option<Value>,
    /// A child run's error, once it failed.
    pub error: Option<TaskError>,
    /// Errors of attempts that were retried (`workerLost` for an attempt whose worker died).
    pub retried: Vec<TaskError>,
}

/// Background runs of an embedded runtime without a store: the running ones, and the most
/// recent finished ones (at most [`LiveRuns::RETAINED`]; a store keeps every run). Kept
/// lean, since every background run passes through it: no copy of the input, and the
/// envelope only for someone waiting in `runs().wait` (a run's handle returns it anyway).
#[derive(Default)]
pub(crate) struct LiveRuns {
    runs: HashMap<RunId, LiveRun>,
    finished: VecDeque<RunId>,
}

/// One background run: what `runs()` reports of it, kept small (one per run in flight).
struct LiveRun {
    task: &'static str,
    status: RunStatus,
    tags: Vec<String>,
    created_at: SystemTime,
    started_at: Option<SystemTime>,
    finished_at: Option<SystemTime>,
    attempts: u32,
    cancel: CancellationToken,
    waiters: Option<Arc<tokio::sync::Notify>>,
    envelope: Option<Box<RunOutput<Value>>>,
}

impl LiveRun {
    fn info(&self, id: &RunId) -> RunInfo {
        RunInfo {
            id: id.clone(),
            task: self.task.to_owned(),
            status: self.status,
            tenant_id: None,
            project_id: None,
            attempts: self.attempts,
            tags: self.tags.clone(),
            parent_run_id: None,
            root_run_id: None,
            position: None,
            replay_of: None,
            idempotency_key: None,
            created_at: self.created_at,
            run_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            input: self
                .envelope
                .as_ref()
                .map(|e| e.job.input.as_value().clone())
                .unwrap_or_default(),
            envelope: self.envelope.as_deref().cloned(),
            output: None,
            error: None,
            retried: Vec::new(),
        }
    }
}

impl LiveRuns {
    const RETAINED: usize = 1024;

    pub(crate) fn insert(
        &mut self,
        id: &RunId,
        task: &'static str,
        status: RunStatus,
        tags: Vec<String>,
        cancel: CancellationToken,
    ) {
        self.runs.insert(
            id.clone(),
            LiveRun {
                task,
                status,
                tags,
                created_at: SystemTime::now(),
                started_at: None,
                finished_at: None,
                attempts: 0,
                cancel,
                waiters: None,
                envelope: None,
            },
        );
    }

    pub(crate) fn set_status(&mut self, run_id: &RunId, status: RunStatus) {
        if let Some(run) = self.runs.get_mut(run_id) {
            run.status = status;
            if status == RunStatus::Executing {
                run.started_at = Some(SystemTime::now());
                run.attempts = 1;
            }
        }
    }

    pub(crate) fn has_waiters(&self, run_id: &RunId) -> bool {
        self.runs
            .get(run_id)
            .is_some_and(|run| run.waiters.is_some())
    }

    /// A run finished with `status` after `attempts`, nobody waiting for its envelope.
    pub(crate) fn finish_status(&mut self, run_id: &RunId, status: RunStatus, attempts: u32) {
        if let Some(run) = self.runs.get_mut(run_id) {
            run.status = status;
            run.attempts = attempts;
            run.finished_at = Some(SystemTime::now());
            self.retire(run_id);
        }
    }

    fn retire(&mut self, run_id: &RunId) {
        self.finished.push_back(run_id.clone());
        while self.finished.len() > Self::RETAINED {
            if let Some(old) = self.finished.pop_front() {
                self.runs.remove(&old);
            }
        }
    }

    pub(crate) fn finish(&mut self, run_id: &RunId, envelope: &RunOutput<Value>) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        run.status = RunStatus::of_envelope(envelope);
        run.attempts = envelope.metadata.attempts;
        run.finished_at = Some(SystemTime::now());
        if let Some(waiters) = run.waiters.take() {
            run.envelope = Some(Box::new(envelope.clone()));
            waiters.notify_waiters();
        }
        self.retire(run_id);
    }
}

/// The runs of a runtime: look one up, list, wait for, cancel, replay, read logs.
///
/// With a store these are the store's runs, from any process sharing it; without one, the
/// runtime's background runs (`trigger`, `start`) that are running or recently finished.
#[derive(Debug, Clone, Copy)]
pub struct Runs<'a> {
    pub(crate) rt: &'a Runtime,
}

impl Runs<'_> {
    /// One run, by id.
    pub async fn get(&self, run_id: &RunId) -> Result<Option<RunInfo>, StoreError> {
        match self.rt.store() {
            Some(store) => store.get(run_id.clone()).await,
            None => Ok(lock(self.rt.live())
                .runs
                .get(run_id)
                .map(|run| run.info(run_id))),
        }
    }

    /// Top-level runs matching `filter`, newest first; pass the last id as
    /// `filter.before(..)` for the next page.
    pub async fn list(&self, filter: RunFilter) -> Result<Vec<RunInfo>, StoreError> {
        if let Some(store) = self.rt.store() {
            return store.list(filter).await;
        }
        let live = lock(self.rt.live());
        let mut runs: Vec<RunInfo> = live
            .runs
            .iter()
            .map(|(id, run)| run.info(id))
            .filter(|info| filter.status.is_none_or(|s| info.status == s))
            .filter(|info| filter.task.as_ref().is_none_or(|t| &info.task == t))
            .filter(|info| {
                filter
                    .tenant
                    .as_ref()
                    .is_none_or(|t| info.tenant_id.as_ref() == Some(t))
            })
            .filter(|info| filter.tag.as_ref().is_none_or(|t| info.tags.contains(t)))
            .filter(|info| filter.before.as_ref().is_none_or(|b| info.id < *b))
            .collect();
        runs.sort_by(|a, b| b.id.cmp(&a.id));
        runs.truncate(filter.page_size());
        Ok(runs)
    }

    /// The child runs of a run (its steps, branches and items), in the order they started.
    /// Only a store keeps them.
    pub async fn children(&self, run_id: &RunId) -> Result<Vec<RunInfo>, StoreError> {
        match self.rt.store() {
            Some(store) => store.children(run_id.clone()).await,
            None => Ok(Vec::new()),
        }
    }

    /// Cancels a run: a delayed or queued one at once (`cancelled`, never started), an
    /// executing one cooperatively (its worker stops it within a heartbeat; its cleanup
    /// runs).
    pub async fn cancel(&self, run_id: &RunId) -> Result<CancelOutcome, StoreError> {
        if let Some(store) = self.rt.store() {
            let envelope = RunOutput::refused(
                "",
                run_id.clone(),
                Value::Null,
                TaskError::cancelled("run cancelled before it started"),
            );
            let current = store.get(run_id.clone()).await?;
            let envelope = match current {
                Some(info) => {
                    let mut envelope = envelope;
                    if info.status == RunStatus::Waiting {
                        envelope.job.error_detail =
                            Some(TaskError::cancelled("run cancelled while waiting"));
                        envelope.job.error =
                            envelope.job.error_detail.as_ref().map(|e| e.to_string());
                    }
                    envelope.job.task_name = info.task.into();
                    envelope.job.input = info.input.into();
                    Box::new(envelope)
                }
                None => return Ok(CancelOutcome::NotFound),
            };
            let task = envelope.job.task_name.to_string();
            let outcome = store.cancel(run_id.clone(), envelope).await?;
            match outcome {
                CancelOutcome::Requested => self.rt.cancel_local(run_id),
                // Ended here, queued or waiting (an executing one ends in its attempt).
                CancelOutcome::Cancelled => crate::metrics::run_ended(&task, "cancelled"),
                _ => {}
            }
            if matches!(outcome, CancelOutcome::Cancelled | CancelOutcome::Requested)
                && store.spawns_children()
            {
                self.cancel_spawned(run_id).await?;
            }
            return Ok(outcome);
        }
        let live = lock(self.rt.live());
        Ok(match live.runs.get(run_id) {
            None => CancelOutcome::NotFound,
            Some(run) if run.status.is_finished() => CancelOutcome::AlreadyFinished(run.status),
            Some(run) => {
                run.cancel.cancel();
                match run.status {
                    RunStatus::Executing => CancelOutcome::Requested,
                    _ => CancelOutcome::Cancelled,
                }
            }
        })
    }

    /// Cancels what a cancelled run left unfinished of its children that are runs of their
    /// own (an orchestrator's branches and items, queued for any worker), and theirs: queued
    /// and waiting ones end at once, executing ones are asked to stop.
    async fn cancel_spawned(&self, run_id: &RunId) -> Result<(), StoreError> {
        let Some(store) = self.rt.store() else {
            return Ok(());
        };
        let mut parents = vec![run_id.clone()];
        while let Some(parent) = parents.pop() {
            let open: Vec<RunInfo> = store
                .children(parent.clone())
                .await?
                .into_iter()
                .filter(|child| !child.status.is_finished())
                .collect();
            if open.is_empty() {
                continue;
            }
            let envelope = |child: &RunInfo| {
                Box::new(RunOutput::refused(
                    &child.task,
                    child.id.clone(),
                    child.input.clone(),
                    TaskError::cancelled(format!(
                        "cancelled: its parent run {parent} was cancelled"
                    )),
                ))
            };
            // The queued and waiting ones in one write, before a worker claims more of them;
            // then the executing ones, one by one.
            let ends = open.iter().map(|c| (c.id.clone(), envelope(c))).collect();
            let ended = store.end_queued(ends).await?;
            for (child, ended) in open.iter().zip(ended) {
                let outcome = match ended {
                    true => CancelOutcome::Cancelled,
                    false => store.cancel(child.id.clone(), envelope(child)).await?,
                };
                match outcome {
                    CancelOutcome::Requested => self.rt.cancel_local(&child.id),
                    CancelOutcome::Cancelled => crate::metrics::run_ended(&child.task, "cancelled"),
                    _ => {}
                }
            }
            tracing::debug!(run_id = %parent, children = open.len(), "the unfinished children of a cancelled run cancelled");
            parents.extend(open.into_iter().map(|c| c.id));
        }
        Ok(())
    }

    /// Waits for a run's envelope; `None` for an unknown id (or, without a store, a run that
    /// had already finished: its handle returned its envelope).
    pub async fn wait(&self, run_id: &RunId) -> Result<Option<RunOutput<Value>>, StoreError> {
        if let Some(store) = self.rt.store() {
            loop {
                let mark = store.change_mark();
                match store.get(run_id.clone()).await? {
                    None => return Ok(None),
                    Some(info) if info.status.is_finished() => {
                        return Ok(Some(info.envelope.unwrap_or_else(|| {
                            let error = TaskError::failed("the run finished without an envelope");
                            RunOutput::refused(&info.task, info.id.clone(), info.input, error)
                        })));
                    }
                    Some(_) => store.changed(mark, Duration::from_millis(250)).await,
                }
            }
        }
        loop {
            let notify = {
                let mut live = lock(self.rt.live());
                let Some(run) = live.runs.get_mut(run_id) else {
                    return Ok(None);
                };
                if let Some(envelope) = &run.envelope {
                    return Ok(Some((**envelope).clone()));
                }
                if run.status.is_finished() {
                    return Ok(None);
                }
                run.waiters.get_or_insert_with(Default::default).clone()
            };
            let notified = notify.notified();
            // Finished between the check and here: the envelope is in place now.
            if lock(self.rt.live())
                .runs
                .get(run_id)
                .is_some_and(|run| run.envelope.is_some() || run.status.is_finished())
            {
                continue;
            }
            notified.await;
        }
    }

    /// Starts a new run of the same task with the same input and tags, linked to the
    /// original (`replayOf`); returns its id. Needs a store (the memory index keeps no
    /// inputs).
    pub async fn replay(&self, run_id: &RunId) -> Result<RunId, RunError> {
        let missing = || {
            RunError::from_envelope(RunOutput::refused(
                "",
                run_id.clone(),
                Value::Null,
                TaskError::rejected(format!("no run {run_id} to replay")),
            ))
        };
        let store_error = |e: StoreError| {
            RunError::from_envelope(RunOutput::refused(
                "",
                run_id.clone(),
                Value::Null,
                TaskError::rejected(e.to_string()),
            ))
        };
        let original = self
            .get(run_id)
            .await
            .map_err(store_error)?
            .ok_or_else(missing)?;
        let options = crate::runtime::TriggerOptions::new().tags(original.tags.clone());
        self.rt
            .trigger_replay(&original.task, original.input, options, run_id.clone())
            .await
    }

    /// A run's log lines (and those of the runs below it), in order. Only a store keeps
    /// them; add [`Store::log_layer`](crate::Store::log_layer) to your subscriber (the CLI
    /// does).
    pub async fn logs(&self, run_id: &RunId) -> Result<Vec<LogLine>, StoreError> {
        match self.rt.store() {
            Some(store) => store.logs(run_id.clone()).await,
            None => Ok(Vec::new()),
        }
    }
}
