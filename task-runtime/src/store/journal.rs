//! The engine's side of the journal: what a durable run's children recorded in earlier
//! attempts (loaded once when the run is claimed), and the writes that record them now.
//!
//! A child at a position of its parent (`step:1`, `branch:stats`, `item:documents:7`) that
//! completed returns its recorded output without executing; one that had started runs
//! again under the same run id; a new one gets a row. Writes are queued to the store, which
//! commits them before the root's settle, fenced by the root's lease token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{JournalEntry, JournalOp, RunStore};
use crate::error::TaskError;
use crate::id::RunId;
use crate::runs::RunStatus;

/// The journal of one claimed root run.
pub(crate) struct Journal {
    store: Arc<dyn RunStore>,
    root: RunId,
    token: i64,
    recorded: HashMap<(RunId, String), JournalEntry>,
    /// The root attempt's token: a durable wait stops the attempt through it.
    cancel: CancellationToken,
    /// Set by a durable wait that suspends the run.
    suspended: Mutex<Option<Suspension>>,
    /// The root's first attempt resumes after a durable wait.
    resumed: bool,
}

/// Why and until when a durable run waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suspension {
    /// When it is due again at the latest (a sleep's end, a token wait's deadline).
    pub wake_at: SystemTime,
    /// The token whose completion wakes it earlier.
    pub token: Option<String>,
    /// The spawned children whose settles wake it (an orchestrator waiting for them).
    pub children: Option<super::ChildWait>,
}

/// What the journal knows of a position.
pub(crate) enum Recorded<'a> {
    /// Completed earlier: replay this.
    Done(&'a JournalEntry),
    /// Started earlier: run again under this id.
    Started(&'a RunId),
    /// Never reached.
    New,
}

impl Journal {
    pub(crate) fn new(
        store: Arc<dyn RunStore>,
        root: RunId,
        token: i64,
        entries: Vec<JournalEntry>,
        cancel: CancellationToken,
        resumed: bool,
    ) -> Self {
        let recorded = entries
            .into_iter()
            .map(|entry| ((entry.parent.clone(), entry.position.clone()), entry))
            .collect();
        Journal {
            store,
            root,
            token,
            recorded,
            cancel,
            suspended: Mutex::default(),
            resumed,
        }
    }

    /// Whether this attempt resumes the root's first attempt after a durable wait (the
    /// same attempt continued, not a new one). A later attempt says `false`: it started
    /// anew, whatever it waited for.
    pub(crate) fn resumed(&self) -> bool {
        self.resumed
    }

    /// What was recorded at a position, whatever its state.
    pub(crate) fn entry(&self, parent: &RunId, position: &str) -> Option<&JournalEntry> {
        self.recorded.get(&(parent.clone(), position.to_owned()))
    }

    /// Ends the root's attempt to wait: the worker settles it as `waiting` (see
    /// [`Suspension`]). With several waits at once (branches of an orchestrator), the run
    /// wakes at the earliest wake time, and the first token registered wakes it earlier.
    pub(crate) fn suspend(&self, suspension: Suspension) {
        {
            let mut slot = crate::exec::seed::lock(&self.suspended);
            match slot.as_mut() {
                Some(held) => {
                    held.wake_at = held.wake_at.min(suspension.wake_at);
                    if held.token.is_none() {
                        held.token = suspension.token;
                    }
                    if held.children.is_none() {
                        held.children = suspension.children;
                    }
                }
                None => *slot = Some(suspension),
            }
        }
        self.cancel.cancel();
    }

    /// Why the attempt stopped to wait, if it did.
    pub(crate) fn suspension(&self) -> Option<Suspension> {
        crate::exec::seed::lock(&self.suspended).clone()
    }

    /// Whether a wait suspended the run (its attempt is winding down, not failing).
    pub(crate) fn is_suspended(&self) -> bool {
        crate::exec::seed::lock(&self.suspended).is_some()
    }

    /// The run this journal belongs to (the claimed root).
    pub(crate) fn root(&self) -> &RunId {
        &self.root
    }

    /// The root's lease token.
    pub(crate) fn token(&self) -> i64 {
        self.token
    }

    /// The store, for waits that look a token up.
    pub(crate) fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    pub(crate) fn lookup(&self, parent: &RunId, position: &str) -> Recorded<'_> {
        match self.recorded.get(&(parent.clone(), position.to_owned())) {
            Some(entry) if entry.output.is_some() => Recorded::Done(entry),
            Some(entry) => Recorded::Started(&entry.id),
            None => Recorded::New,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        &self,
        id: &RunId,
        parent: &RunId,
        position: Option<&str>,
        task: &str,
        tenant_id: Option<&str>,
        project_id: Option<&str>,
        input: &Value,
    ) {
        self.store.record(JournalOp::Start {
            root: self.root.clone(),
            token: self.token,
            id: id.clone(),
            parent: parent.clone(),
            position: position.map(str::to_owned),
            task: task.to_owned(),
            tenant_id: tenant_id.map(str::to_owned),
            project_id: project_id.map(str::to_owned),
            input: input.clone(),
            at: SystemTime::now(),
        });
    }

    /// Waits until the writes recorded so far are committed.
    pub(crate) async fn sync(&self) -> Result<(), super::StoreError> {
        self.store.sync_journal().await
    }

    pub(crate) fn finish(&self, id: &RunId, result: Result<Value, &TaskError>, attempts: u32) {
        let (status, output, error) = match result {
            Ok(output) => (RunStatus::Completed, Some(output), None),
            Err(error) => {
                let status = if matches!(error.kind(), crate::error::ErrorKind::Cancelled { .. }) {
                    RunStatus::Cancelled
                } else {
                    RunStatus::Failed
                };
                (status, None, Some(error.clone()))
            }
        };
        self.store.record(JournalOp::Finish {
            root: self.root.clone(),
            token: self.token,
            id: id.clone(),
            status,
            output,
            error,
            attempts,
            at: SystemTime::now(),
        });
    }
}
