//! The attempts of one run: validate the input once, then attempt after attempt under the
//! task's retry policy ([`next_delay`]), each one taking its concurrency slots, running the
//! body under timeout, cancellation and panic isolation, and settling everything it started
//! (spawned branches, registered cleanup) before it ends, however it ends.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::execute::{Produced, Report, millis};
use super::seed::{AttemptState, Scope, Slots};
use super::{Executor, in_span};
use crate::context::{TaskContext, panic_message};
use crate::error::{Issue, TaskError};
use crate::id::RunId;
use crate::input::capture_tramp;
use crate::json;
use crate::policy::next_delay;
use crate::task::{Kind, Task};

/// The attempts of one run.
pub(super) struct Attempts<'a, T: Task> {
    pub exec: &'a Executor,
    pub run_id: &'a RunId,
    pub input_json: &'a Value,
    pub typed: Option<T::Input>,
    /// Run by id: the caller wants the output as JSON.
    pub json_run: bool,
    pub scope: &'a Scope,
    pub cancel: &'a CancellationToken,
    /// A durable run: the one attempt to make (the store reschedules a retry).
    pub durable: Option<u32>,
}

impl<T: Task> Attempts<'_, T> {
    /// The outcome, the report, and for a durable attempt that failed with retries left,
    /// how long until the retry.
    pub(crate) async fn run(
        mut self,
    ) -> (
        Result<Produced<T::Output>, TaskError>,
        Report,
        Option<Duration>,
    ) {
        tracing::info!("run started");
        let mut report = Report::default();
        let schemas = T::schemas();
        // A typed input whose schema asserts nothing its type does not guarantee cannot fail
        // validation (`schema::asserts`); a JSON input always could.
        let issues = if self.typed.is_some() && !schemas.input_asserts {
            Vec::new()
        } else {
            schemas.input_issues(self.input_json)
        };
        if !issues.is_empty() {
            return (Err(TaskError::invalid_input(issues)), report, None);
        }
        if let Some(attempt) = self.durable {
            report.attempts = attempt.saturating_sub(1);
        }
        // A run resumed after a durable wait started before.
        let resumed = self
            .scope
            .journal
            .as_ref()
            .is_some_and(|j| j.resumed() && j.root() == self.run_id);
        if report.attempts == 0 && !resumed {
            crate::metrics::run_started(T::ID);
        }
        let retry = T::POLICY.retry.unwrap_or(self.exec.default_retry);
        let timeout = T::POLICY.timeout.or(self.exec.default_timeout);
        let result = loop {
            report.attempts += 1;
            let attempt = report.attempts;
            tracing::Span::current().record("attempt", attempt);
            let clock = crate::metrics::AttemptClock::start();
            let outcome = self.attempt(attempt, timeout, &mut report).await;
            clock.ended(T::ID, outcome.is_ok());
            let error = match outcome {
                Ok(produced) => break Ok(produced),
                Err(error) => error,
            };
            let Some(delay) =
                next_delay(&retry, attempt, &error).filter(|_| !self.cancel.is_cancelled())
            else {
                break Err(error);
            };
            if self.durable.is_some() {
                // Durable: a retry is a reschedule, no sleep; any worker takes it up then.
                return (Err(error), report, Some(delay));
            }
            tracing::warn!(
                attempt,
                kind = error.kind_name(),
                error = %error,
                retry_in_ms = millis(delay),
                "attempt failed, retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancel.cancelled() => {
                    break Err(TaskError::cancelled("run cancelled while waiting to retry"));
                }
            }
        };
        (result, report, None)
    }

    /// One attempt.
    async fn attempt(
        &mut self,
        attempt: u32,
        timeout: Option<Duration>,
        report: &mut Report,
    ) -> Result<Produced<T::Output>, TaskError> {
        let leaf = T::KIND == Kind::Task;
        let (input, captured) = match self.typed.take() {
            Some(input) => (input, None),
            // Later attempts (and JSON runs) rebuild the input from the validated JSON.
            None => {
                let (input, captured) = capture_tramp(|| T::Input::deserialize(self.input_json));
                let input = input.map_err(|e| {
                    TaskError::invalid_input(vec![Issue {
                        path: String::new(),
                        message: format!("input does not deserialize: {e}"),
                    }])
                })?;
                (input, captured)
            }
        };
        if self.cancel.is_cancelled() {
            return Err(TaskError::cancelled("run cancelled before it started"));
        }
        let mut scope = self.scope.clone();
        // The deserialized input holds its own copy of the trampData: share that one with
        // children, whose inputs are usually built from this input.
        if let Some(captured) = captured {
            scope.tramp_data = Some(captured);
        }
        let (slots, composite_permit) = if leaf {
            let gate = self
                .exec
                .concurrency
                .leaf_gate(T::ID, T::POLICY.concurrency);
            if gate.is_open() {
                (None, None)
            } else {
                let permits = gate.acquire(self.cancel).await?;
                let slots = Slots {
                    gate,
                    permits,
                    children_running: 0,
                };
                (Some(slots), None)
            }
        } else {
            let (permit, with_held) = self
                .exec
                .concurrency
                .acquire_composite(T::ID, T::POLICY.concurrency, &scope, self.cancel)
                .await?;
            scope = with_held;
            (None, permit)
        };
        // A composite under a timeout gets a token of its own, cancelled when the timeout
        // passes: its children wind down (and clean up) before the attempt ends.
        let cancel = match (leaf, timeout) {
            (false, Some(_)) => self.cancel.child_token(),
            _ => self.cancel.clone(),
        };
        let ctx = TaskContext::new(
            self.exec.clone(),
            self.run_id.clone(),
            T::ID,
            attempt,
            scope,
            cancel,
            Arc::new(AttemptState::new(slots)),
        );
        let span = tracing::info_span!(
            "attempt",
            attempt,
            status = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        crate::telemetry::attempt_of(&span, T::ID, self.run_id, self.scope);
        let outcome = in_span!(span, run_guarded::<T>(&ctx, input, timeout, leaf));
        // A durable wait ends the attempt by cancelling it: the run waits, nothing failed.
        if self
            .scope
            .journal
            .as_ref()
            .is_some_and(|j| j.is_suspended())
        {
            crate::telemetry::ended(&span, "waiting", None);
        } else {
            let error = outcome.as_ref().err();
            crate::telemetry::ended(&span, crate::telemetry::status_of(error), error);
        }
        report.cleanup_errors.extend(ctx.settle().await);
        report.records = ctx.take_records();
        drop(composite_permit);
        let output = outcome?;
        // A track's output is its last step's, an orchestrator's is made of its branches'
        // outputs: each was validated by its own run, so checking the whole again (and, on
        // a typed run, serialising it at all) would only repeat work. On a 100 000-item
        // fan-out that repeat was a third of the run and most of its memory.
        if !leaf && !self.json_run {
            return Ok(Produced {
                typed: output,
                json: None,
            });
        }
        let schemas = T::schemas();
        if leaf
            && schemas.output_has_floats
            && let Some((path, what)) = json::non_finite(&output)
        {
            return Err(TaskError::invalid_output(vec![Issue {
                path,
                message: format!("{what} is not a JSON number"),
            }]));
        }
        // Likewise an output whose schema asserts nothing beyond its type: a typed caller
        // needs no JSON of it (hooks and the journal serialize it if they need it).
        if !self.json_run && !schemas.output_asserts {
            return Ok(Produced {
                typed: output,
                json: None,
            });
        }
        let json = serde_json::to_value(&output).map_err(|e| {
            TaskError::invalid_output(vec![Issue {
                path: String::new(),
                message: format!("output does not serialize to JSON: {e}"),
            }])
        })?;
        if leaf {
            let issues = schemas.output_issues(&json);
            if !issues.is_empty() {
                return Err(TaskError::invalid_output(issues));
            }
        }
        Ok(Produced {
            typed: output,
            json: Some(json),
        })
    }
}

/// Runs the task body; a timeout, a cancellation or a panic each become a `TaskError`.
///
/// A leaf task is dropped at its next await point when cancelled or out of time (its
/// cleanup runs after, from the context). A track or orchestrator is never dropped: its
/// children see the cancellation, end with `cancelled` after their cleanup, and the
/// composite returns; on a timeout the composite's own token is cancelled the same way and
/// the attempt then reports `timeout`.
///
/// One `poll_fn` over futures pinned in place, rather than `timeout`, `select!` and
/// `catch_unwind` wrappers: each wrapper would move the task's future (a copy of its whole
/// state) on every run. The body is polled first: a task that finishes without waiting
/// never touches the timer or the cancellation token.
async fn run_guarded<T: Task>(
    ctx: &TaskContext,
    input: T::Input,
    timeout: Option<Duration>,
    leaf: bool,
) -> Result<T::Output, TaskError> {
    let mut body = std::pin::pin!(T::run(ctx, input));
    // Created on the first pending poll only.
    let mut timer: std::pin::Pin<&mut Option<tokio::time::Sleep>> = std::pin::pin!(None);
    let mut cancelled = std::pin::pin!(ctx.cancel.cancelled());
    let mut timed_out = None;
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx))) {
            Ok(Poll::Ready(outcome)) => {
                // A composite out of time reports the timeout, whatever its children said.
                return Poll::Ready(match timed_out {
                    Some(limit) => Err(TaskError::timeout(limit)),
                    None => outcome,
                });
            }
            Err(panic) => return Poll::Ready(Err(TaskError::panicked(panic_message(&*panic)))),
            Ok(Poll::Pending) => {}
        }
        if let (Some(limit), None) = (timeout, timed_out) {
            if timer.is_none() {
                timer.set(Some(tokio::time::sleep(limit)));
            }
            let fired = timer
                .as_mut()
                .as_pin_mut()
                .is_some_and(|sleep| sleep.poll(cx).is_ready());
            if fired {
                if leaf {
                    return Poll::Ready(Err(TaskError::timeout(limit)));
                }
                // The children end now; what they return is superseded by the timeout.
                timed_out = Some(limit);
                ctx.cancel.cancel();
                cx.waker().wake_by_ref();
            }
        }
        if leaf && cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(TaskError::cancelled("run cancelled while running")));
        }
        Poll::Pending
    })
    .await
}
