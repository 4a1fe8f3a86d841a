//! Durable steps inside a task: `ctx.step("name", async { .. })`.
//!
//! In a durable run, a step's output is recorded in the run's journal (a child row at
//! position `do:N` of the run, `N` counting the task's steps in the order it begins them)
//! and committed before the task goes on. When the run is attempted again (a retry, a
//! worker that died, a restart), a step recorded as completed returns its recorded output
//! without executing; the first step that has none executes, and so does everything after
//! it. A replay whose step at a position has another name than the recorded one fails the
//! run (not retried): the task's steps changed order, and returning the output recorded
//! there would hand one step another's result.
//!
//! In-process (no store) a step simply runs, on every attempt.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::TaskContext;
use crate::envelope::StepRecord;
use crate::error::TaskError;
use crate::id::RunId;
use crate::store::journal::Recorded;

impl TaskContext {
    /// Runs `body` as a durable step named `name` and returns its output.
    ///
    /// In a durable run (the runtime has a store), the output is committed to the run's
    /// journal before this returns, and a later attempt of the run gets it back without
    /// executing `body` again. Each step is listed in `metadata.steps` (`replayed: true`
    /// when its output came from the journal). Steps are matched by position: a task must
    /// begin its steps in the same order on every attempt (a different name at a recorded
    /// position is a fatal error naming both), so keep a step's name stable and do not
    /// skip steps on a condition that can change between attempts.
    ///
    /// Delivery is at-least-once: a step that was executing when its worker died runs
    /// again. Its error (`E`, any `std::error::Error`, or a [`TaskError`]) ends the step
    /// and is returned as a [`TaskError`], which `?` passes on to the task's own result.
    ///
    /// ```no_run
    /// # use task_runtime::prelude::*;
    /// # async fn demo(ctx: &TaskContext) -> Result<(), TaskError> {
    /// let charge: String = ctx.step("charge", async { Ok::<_, TaskError>("ch_42".to_owned()) }).await?;
    /// ctx.step("email", async move { send_receipt(&charge).await }).await?;
    /// # Ok(()) }
    /// # async fn send_receipt(_: &str) -> Result<(), TaskError> { Ok(()) }
    /// ```
    pub async fn step<T, E, F>(&self, name: &str, body: F) -> Result<T, TaskError>
    where
        T: Serialize + DeserializeOwned,
        E: StdError + Send + Sync + 'static,
        F: Future<Output = Result<T, E>>,
    {
        let index = self.state.steps_begun.fetch_add(1, Ordering::Relaxed);
        let clock = Instant::now();
        let Some(journal) = self.scope.journal.clone() else {
            let run_id = RunId::new(SystemTime::now());
            let result = body.await.map_err(TaskError::from_error);
            self.record_step(name, run_id, result.is_ok(), millis(clock), 1, false);
            return result;
        };
        let position = format!("do:{index}");
        let mut run_id = None;
        match journal.lookup(&self.run_id, &position) {
            Recorded::Done(entry) if entry.task != name => {
                return Err(reordered(index, name, &entry.task));
            }
            Recorded::Done(entry) => {
                let output = entry.output.clone().unwrap_or(Value::Null);
                return match serde_json::from_value::<T>(output) {
                    Ok(output) => {
                        tracing::info!(step = name, run_id = %entry.id, "step replayed from the journal");
                        let id = entry.id.clone();
                        self.record_step(name, id, true, entry.duration_ms, entry.attempts, true);
                        Ok(output)
                    }
                    Err(error) => Err(TaskError::fatal(format!(
                        "the output recorded for step {index} `{name}` does not read as `{}`: \
                         {error}",
                        std::any::type_name::<T>()
                    ))),
                };
            }
            Recorded::Started(id) => run_id = Some(id.clone()),
            Recorded::New => {}
        }
        let run_id = run_id.unwrap_or_else(|| RunId::new(SystemTime::now()));
        journal.start(
            &run_id,
            &self.run_id,
            Some(&position),
            name,
            self.tenant_id(),
            self.project_id(),
            &Value::Null,
        );
        let result = body
            .await
            .map_err(TaskError::from_error)
            .and_then(|output| {
                let json = serde_json::to_value(&output).map_err(|e| {
                    TaskError::fatal(format!(
                        "the output of step {index} `{name}` does not serialize to JSON: {e}"
                    ))
                })?;
                Ok((output, json))
            });
        match result {
            Ok((output, json)) => {
                journal.finish(&run_id, Ok(json), 1);
                // On disk before the task goes on: a crash from here on replays this step.
                if let Err(error) = journal.sync().await {
                    tracing::warn!(step = name, %error, "recording the step failed; it runs again if the run is retried");
                }
                self.record_step(name, run_id, true, millis(clock), 1, false);
                Ok(output)
            }
            Err(error) => {
                journal.finish(&run_id, Err(&error), 1);
                self.record_step(name, run_id, false, millis(clock), 1, false);
                Err(error)
            }
        }
    }

    /// Lists the step in `metadata.steps`.
    pub(crate) fn record_step(
        &self,
        name: &str,
        run_id: RunId,
        success: bool,
        duration_ms: u64,
        attempts: u32,
        replayed: bool,
    ) {
        self.push_step(StepRecord {
            task_name: name.to_owned(),
            run_id,
            success,
            duration_ms,
            attempts,
            replayed,
            steps: Vec::new(),
        });
    }
}

/// The fatal error of a replay that finds another step (or wait) than `name` recorded at
/// position `index`.
pub(crate) fn reordered(index: u32, name: &str, recorded: &str) -> TaskError {
    TaskError::fatal(format!(
        "step {index} is `{name}` in this attempt, but the run recorded `{recorded}` at that \
         position: the task's steps changed order (or one is skipped on a condition) since \
         the run started, and replaying would return another step's output"
    ))
}

pub(crate) fn millis(clock: Instant) -> u64 {
    clock.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
}
