//! Durable waits inside a task: `ctx.sleep(d)`, `ctx.sleep_until(t)` and
//! `ctx.wait_for_token(&token, timeout)`.
//!
//! In a durable run, a wait is journaled at its position like a step (`do:N`, counted with
//! the steps), its wake time or deadline fixed when it first begins. A wait that is not
//! over ends the attempt with a suspension instead of an outcome: the worker settles the
//! run as `waiting` (no lease, no worker slot, no concurrency slot, the attempt not
//! counted) until its wake time, or until its token is completed. Any worker then claims
//! it, and the task runs again from the top: recorded steps and waits replay (a passed
//! sleep returns at once, a completed token returns its data), and it goes on from there.
//! Everything is in the store, so a wait survives restarts.
//!
//! Without a store, a sleep is a plain tokio sleep and a token wait waits in this process.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::context::TaskContext;
use crate::error::TaskError;
use crate::id::RunId;
use crate::step::{millis, reordered};
use crate::store::journal::{Journal, Recorded, Suspension};
use crate::store::{self, later};
use crate::tokens::{TokenStatus, WaitToken};

/// The journal names of waits (a step named so would be taken for one on replay).
const SLEEP: &str = "wait:sleep";
const TOKEN: &str = "wait:token";

impl AsRef<str> for WaitToken {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

/// Where a durable wait stands after looking at the journal.
enum Begun {
    /// An earlier attempt saw it end: its recorded outcome.
    Over(Value),
    /// Not over: its journal row, position and recorded input (`Null` for a new wait whose
    /// caller records it).
    Pending {
        id: RunId,
        position: String,
        input: Value,
        fresh: bool,
    },
}

impl TaskContext {
    /// Waits for `duration` (Trigger.dev's `wait.for`).
    ///
    /// In a durable run the run is `waiting` meanwhile and holds no worker, no concurrency
    /// slot and no lease: the attempt ends here, and when the time comes any worker resumes
    /// the run from the top, its completed steps replaying from the journal (so code before
    /// a sleep runs again unless it is in a `ctx.step`). The wake time is fixed when the
    /// sleep first begins. Without a store this is a plain `tokio::time::sleep`. An error
    /// only when the run is cancelled or its journal does not match.
    ///
    /// ```no_run
    /// # use task_runtime::prelude::*;
    /// # use std::time::Duration;
    /// # async fn demo(ctx: &TaskContext) -> Result<(), TaskError> {
    /// let sent: String = ctx.step("send", async { Ok::<_, TaskError>("mail_1".to_owned()) }).await?;
    /// ctx.sleep(Duration::from_secs(24 * 3600)).await?; // a day later, on any worker
    /// ctx.step("remind", async move { remind(&sent).await }).await?;
    /// # Ok(()) }
    /// # async fn remind(_: &str) -> Result<(), TaskError> { Ok(()) }
    /// ```
    pub async fn sleep(&self, duration: Duration) -> Result<(), TaskError> {
        let wake_at = later(self.exec.clock.now(), duration);
        self.sleep_to(wake_at, duration).await
    }

    /// Waits until `at` (Trigger.dev's `wait.until`); a time in the past returns at once.
    /// Same semantics as [`sleep`](Self::sleep).
    pub async fn sleep_until(&self, at: SystemTime) -> Result<(), TaskError> {
        let left = at.duration_since(self.exec.clock.now()).unwrap_or_default();
        self.sleep_to(at, left).await
    }

    async fn sleep_to(&self, wake_at: SystemTime, left: Duration) -> Result<(), TaskError> {
        let clock = Instant::now();
        let Some(journal) = self.scope.journal.clone() else {
            self.state.steps_begun.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(left) => {}
                _ = self.cancel.cancelled() => {
                    return Err(TaskError::cancelled("run cancelled while sleeping"));
                }
            }
            self.record_step(
                SLEEP,
                RunId::new(SystemTime::now()),
                true,
                millis(clock),
                1,
                false,
            );
            return Ok(());
        };
        let (id, input) = match self.begin_wait(
            &journal,
            SLEEP,
            || json!({ "wakeAt": store::millis(wake_at) }),
        )? {
            Begun::Over(_) => return Ok(()),
            Begun::Pending { id, input, .. } => (id, input),
        };
        let wake_at = input["wakeAt"].as_i64().map_or(wake_at, store::time);
        if self.exec.clock.now() >= wake_at {
            journal.finish(&id, Ok(json!({ "slept": true })), 1);
            sync(&journal, SLEEP).await;
            self.record_step(SLEEP, id, true, millis(clock), 1, false);
            return Ok(());
        }
        tracing::info!(run_id = %self.run_id, wake_at = %humantime::format_rfc3339_millis(wake_at), "sleeping: the run waits without a worker");
        self.suspend(
            &journal,
            Suspension {
                wake_at,
                token: None,
                children: None,
            },
        )
        .await
    }

    /// Waits until the wait token `token` (from `rt.tokens().create(..)`) is completed and
    /// returns the JSON it was completed with, read as `T` (Trigger.dev's `wait.forToken`).
    ///
    /// The wait ends with a `timeout` error (not retried: a retry would replay it) when
    /// `timeout` passes first, or the token's own timeout; the task can handle it like any
    /// error. In a durable run the run is `waiting` meanwhile, holds no worker, and resumes
    /// at once when the token is completed (from any process sharing the store), as
    /// [`sleep`](Self::sleep) describes. An unknown token is a fatal error.
    ///
    /// ```no_run
    /// # use task_runtime::prelude::*;
    /// # use std::time::Duration;
    /// # #[derive(serde::Deserialize)] struct Approval { approved: bool }
    /// # async fn demo(ctx: &TaskContext, token_id: String) -> Result<bool, TaskError> {
    /// match ctx.wait_for_token::<Approval>(&token_id, Duration::from_secs(3600)).await {
    ///     Ok(approval) => Ok(approval.approved),
    ///     Err(e) if e.kind_name() == "timeout" => Ok(false), // nobody answered within the hour
    ///     Err(e) => Err(e),
    /// }
    /// # }
    /// ```
    pub async fn wait_for_token<T: DeserializeOwned>(
        &self,
        token: &(impl AsRef<str> + ?Sized),
        timeout: Duration,
    ) -> Result<T, TaskError> {
        let token = token.as_ref();
        let clock = Instant::now();
        let now = self.exec.clock.now();
        let Some(journal) = self.scope.journal.clone() else {
            self.state.steps_begun.fetch_add(1, Ordering::Relaxed);
            let result = self.wait_in_memory(token, now, timeout).await;
            let id = RunId::new(SystemTime::now());
            self.record_step(TOKEN, id, result.is_ok(), millis(clock), 1, false);
            return read_data(token, result?);
        };
        let (id, position, mut input, fresh) =
            match self.begin_wait(&journal, TOKEN, || Value::Null)? {
                Begun::Over(outcome) => return outcome_of(token, outcome),
                Begun::Pending {
                    id,
                    position,
                    input,
                    fresh,
                } => (id, position, input, fresh),
            };
        let stored = journal
            .store()
            .get_token(token.to_owned())
            .await
            .map_err(|e| TaskError::failed(format!("reading wait token {token}: {e}")))?;
        let Some(stored) = stored else {
            return Err(TaskError::fatal(format!(
                "there is no wait token `{token}`"
            )));
        };
        if fresh {
            // First time here: fix the deadline and record it.
            let deadline = stored
                .timeout_at
                .map_or(later(now, timeout), |t| t.min(later(now, timeout)));
            input = json!({
                "token": token,
                "since": store::millis(now),
                "deadline": store::millis(deadline),
            });
            journal.start(
                &id,
                &self.run_id,
                Some(&position),
                TOKEN,
                self.tenant_id(),
                self.project_id(),
                &input,
            );
        }
        if input["token"].as_str() != Some(token) {
            return Err(TaskError::fatal(format!(
                "this wait is for token `{token}`, but the run recorded a wait for `{}` at \
                 its position: the task's waits changed since the run started",
                input["token"].as_str().unwrap_or("?")
            )));
        }
        let deadline = input["deadline"].as_i64().map_or(now, store::time);
        let since = input["since"].as_i64().map_or(now, store::time);
        let outcome = match stored.status {
            TokenStatus::Completed => Some(json!({ "data": stored.data.unwrap_or(Value::Null) })),
            _ if self.exec.clock.now() >= deadline => Some(json!({
                "timedOut": true,
                "afterMs": store::millis(deadline) - store::millis(since),
            })),
            _ => None,
        };
        if let Some(outcome) = outcome {
            journal.finish(&id, Ok(outcome.clone()), 1);
            sync(&journal, TOKEN).await;
            let result = outcome_of::<T>(token, outcome);
            self.record_step(TOKEN, id, result.is_ok(), millis(clock), 1, false);
            return result;
        }
        tracing::info!(run_id = %self.run_id, token, deadline = %humantime::format_rfc3339_millis(deadline), "waiting for a token: the run waits without a worker");
        self.suspend(
            &journal,
            Suspension {
                wake_at: deadline,
                token: Some(token.to_owned()),
                children: None,
            },
        )
        .await
    }

    /// Looks the wait up at the next position. A new wait gets a row there, started with
    /// `input()`, unless `input` is `Null` (the caller starts it once it knows its input).
    fn begin_wait(
        &self,
        journal: &Journal,
        name: &str,
        input: impl FnOnce() -> Value,
    ) -> Result<Begun, TaskError> {
        let index = self.state.steps_begun.fetch_add(1, Ordering::Relaxed);
        let position = format!("do:{index}");
        match journal.lookup(&self.run_id, &position) {
            Recorded::Done(entry) if entry.task != name => Err(reordered(index, name, &entry.task)),
            Recorded::Done(entry) => {
                tracing::info!(wait = name, run_id = %entry.id, "wait replayed from the journal");
                self.record_step(name, entry.id.clone(), true, entry.duration_ms, 1, true);
                Ok(Begun::Over(entry.output.clone().unwrap_or_default()))
            }
            Recorded::Started(_) => {
                let entry = journal
                    .entry(&self.run_id, &position)
                    .expect("a started entry is recorded");
                if entry.task != name {
                    return Err(reordered(index, name, &entry.task));
                }
                Ok(Begun::Pending {
                    id: entry.id.clone(),
                    position,
                    input: entry.input.clone().unwrap_or_default(),
                    fresh: false,
                })
            }
            Recorded::New => {
                let id = RunId::new(SystemTime::now());
                let input = input();
                if !input.is_null() {
                    journal.start(
                        &id,
                        &self.run_id,
                        Some(&position),
                        name,
                        self.tenant_id(),
                        self.project_id(),
                        &input,
                    );
                }
                Ok(Begun::Pending {
                    id,
                    position,
                    input,
                    fresh: true,
                })
            }
        }
    }

    /// Ends the attempt so the run waits in the store; never returns (the attempt is
    /// stopped at this await point).
    async fn suspend<T>(&self, journal: &Journal, suspension: Suspension) -> Result<T, TaskError> {
        journal.suspend(suspension);
        std::future::pending().await
    }

    /// A token wait without a store: waits for the token in this process's memory.
    async fn wait_in_memory(
        &self,
        token: &str,
        now: SystemTime,
        timeout: Duration,
    ) -> Result<Value, TaskError> {
        let tokens = &self.exec.tokens;
        let Some(found) = tokens.get(token) else {
            return Err(TaskError::fatal(format!(
                "there is no wait token `{token}`"
            )));
        };
        tokens.waited_by(token, &self.run_id);
        let deadline = found
            .timeout_at
            .map_or(later(now, timeout), |t| t.min(later(now, timeout)));
        let mut completed = tokens.subscribe();
        loop {
            let current = tokens.get(token).unwrap_or_else(|| found.clone());
            if let (TokenStatus::Completed, Some(data)) = (current.status, current.data) {
                return Ok(data);
            }
            let left = deadline
                .duration_since(self.exec.clock.now())
                .unwrap_or_default();
            if left.is_zero() {
                return Err(wait_timed_out(
                    token,
                    deadline.duration_since(now).unwrap_or_default(),
                ));
            }
            tokio::select! {
                _ = completed.changed() => {}
                _ = tokio::time::sleep(left) => {}
                _ = self.cancel.cancelled() => {
                    return Err(TaskError::cancelled("run cancelled while waiting for a token"));
                }
            }
        }
    }
}

/// Waits for the journal's writes, logging a failure (the wait then replays on a retry).
async fn sync(journal: &Journal, name: &str) {
    if let Err(error) = journal.sync().await {
        tracing::warn!(wait = name, %error, "recording the wait failed; it is waited again if the run is retried");
    }
}

/// A token wait's recorded outcome, as its result.
fn outcome_of<T: DeserializeOwned>(token: &str, outcome: Value) -> Result<T, TaskError> {
    if outcome["timedOut"].as_bool() == Some(true) {
        let after = Duration::from_millis(outcome["afterMs"].as_u64().unwrap_or(0));
        return Err(wait_timed_out(token, after));
    }
    read_data(token, outcome.get("data").cloned().unwrap_or(Value::Null))
}

fn read_data<T: DeserializeOwned>(token: &str, data: Value) -> Result<T, TaskError> {
    serde_json::from_value(data).map_err(|e| {
        TaskError::fatal(format!(
            "the data token `{token}` was completed with does not read as `{}`: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// The error of a token wait whose deadline passed: `timeout`, not retried (a retry would
/// replay the same outcome).
fn wait_timed_out(token: &str, after: Duration) -> TaskError {
    tracing::info!(
        token,
        after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        "wait for token timed out"
    );
    TaskError::timeout(after).into_fatal()
}
