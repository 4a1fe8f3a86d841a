//! `execute`: one run from its input to its finish. The input becomes JSON (typed runs) and
//! is validated, attempts run under the task's retry policy ([`super::attempt`]), the run's
//! span gets its outcome, the hooks fire, and a [`Finished`] says what happened.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::time::Instant;
use tracing::Instrument;

use super::attempt::Attempts;
use super::hooks::{HookEvent, When, guarded};
use super::seed::{Records, Scope, Seed};
use super::{Executor, in_span};
use crate::envelope::{Head, JobInput, RunError, RunOutput};
use crate::error::{Issue, TaskError};
use crate::id::RunId;
use crate::input::{TrampData, capture_tramp, sharing_tramp, without_inherited};
use crate::json::{self, CompactJson};
use crate::runs::RunStatus;
use crate::store::journal::Recorded;
use crate::task::Task;
use crate::telemetry;

/// How the input arrives.
pub(crate) enum RunInput<I> {
    /// From Rust code: serialised once for validation and the envelope.
    Typed(I),
    /// From JSON (trigger by id, CLI, API, a stored run): validated, then deserialised.
    Json(Value),
}

/// A validated output, with its JSON form when the run made one: always for tasks (it is
/// what their output schema checks) and for runs by id; typed runs of tracks and
/// orchestrators skip it (see `Attempts::attempt`).
pub(crate) struct Produced<O> {
    pub typed: O,
    pub json: Option<Value>,
}

/// Timing, attempts and records of a finished run.
#[derive(Default)]
pub(crate) struct Report {
    pub duration_ms: u64,
    pub attempts: u32,
    pub records: Records,
    pub cleanup_errors: Vec<String>,
}

/// A finished run. Child runs (track steps, branches, `ctx.run`) read what they need from
/// it; only top-level runs pay for an envelope.
pub(crate) struct Finished<O> {
    pub task: &'static str,
    pub run_id: RunId,
    pub started_at: SystemTime,
    pub result: Result<Produced<O>, TaskError>,
    pub report: Report,
    pub input: Value,
    /// The input's `trampData` when `input` leaves it out: the envelope shares it.
    pub tramp: Option<TrampData>,
    /// The output came from the journal: an earlier attempt of the root completed it.
    pub replayed: bool,
    /// A durable attempt that failed with retries left: reschedule after this long (the
    /// error is `result`'s).
    pub retry_in: Option<Duration>,
}

impl<O> Finished<O> {
    fn head(self) -> (Head, Result<Produced<O>, TaskError>) {
        let Finished {
            task,
            run_id,
            started_at,
            result,
            report,
            input,
            tramp,
            ..
        } = self;
        let head = Head {
            task: std::borrow::Cow::Borrowed(task),
            run_id,
            input,
            tramp,
            started_at,
            duration_ms: report.duration_ms,
            attempts: report.attempts,
            steps: report.records.steps,
            branches: report.records.branches,
            cleanup_errors: report.cleanup_errors,
        };
        (head, result)
    }

    /// The envelope of a run by id: the output as JSON, `null` when it failed.
    pub(crate) fn into_json_envelope(self) -> RunOutput<Value>
    where
        O: serde::Serialize,
    {
        let (head, result) = self.head();
        match result {
            Ok(produced) => {
                let json = match produced.json {
                    Some(json) => json,
                    None => serde_json::to_value(&produced.typed).unwrap_or_default(),
                };
                RunOutput::build(head, json, None)
            }
            Err(error) => RunOutput::build(head, Value::Null, Some(error)),
        }
    }

    /// The envelope of a typed run, or the error with the failed envelope.
    pub(crate) fn into_typed_envelope(self) -> Result<RunOutput<O>, RunError> {
        let (head, result) = self.head();
        match result {
            Ok(produced) => Ok(RunOutput::build(head, produced.typed, None)),
            Err(error) => Err(RunError {
                envelope: Box::new(RunOutput::build(head, Value::Null, Some(error.clone()))),
                error,
            }),
        }
    }

    /// The typed output, or the error.
    pub(crate) fn into_typed(self) -> Result<O, TaskError> {
        self.result.map(|produced| produced.typed)
    }

    fn refused(task: &'static str, run_id: RunId, error: TaskError, input: Value) -> Self {
        Finished {
            task,
            run_id,
            started_at: SystemTime::now(),
            result: Err(error),
            report: Report::default(),
            input,
            tramp: None,
            replayed: false,
            retry_in: None,
        }
    }
}

/// A background run that ended, kept until someone waits for it (`RunHandle::wait`). A
/// finished run keeps its typed output, not the output's JSON, which is built on `wait`: a
/// small object's JSON is a 632-byte map, and 100 000 runs triggered before any is awaited
/// would hold 100 000 of them.
pub(crate) trait Ended: Send {
    /// The status it ended with.
    fn status(&self) -> RunStatus;
    /// Attempts it took.
    fn attempts(&self) -> u32;
    /// Its envelope, the output as JSON.
    fn envelope(self: Box<Self>) -> RunOutput<Value>;
}

impl<O: serde::Serialize + Send> Ended for Finished<O> {
    fn status(&self) -> RunStatus {
        RunStatus::of_error(self.result.as_ref().err())
    }

    fn attempts(&self) -> u32 {
        self.report.attempts
    }

    fn envelope(self: Box<Self>) -> RunOutput<Value> {
        self.into_json_envelope()
    }
}

/// A finished background run, its input kept as compact JSON text until its envelope is
/// built (`finished.input` is null meanwhile).
pub(crate) struct Compact<O> {
    pub finished: Finished<O>,
    pub input: CompactJson,
}

impl<O: serde::Serialize + Send> Ended for Compact<O> {
    fn status(&self) -> RunStatus {
        self.finished.status()
    }

    fn attempts(&self) -> u32 {
        self.finished.attempts()
    }

    fn envelope(self: Box<Self>) -> RunOutput<Value> {
        let Compact {
            mut finished,
            input,
        } = *self;
        finished.input = input.value();
        finished.into_json_envelope()
    }
}

impl Ended for RunOutput<Value> {
    fn status(&self) -> RunStatus {
        RunStatus::of_envelope(self)
    }

    fn attempts(&self) -> u32 {
        self.metadata.attempts
    }

    fn envelope(self: Box<Self>) -> RunOutput<Value> {
        *self
    }
}

impl<O> Finished<O> {
    /// Drops the output's JSON (kept for a finished background run, see [`Ended`]).
    pub(crate) fn without_json(mut self) -> Self {
        if let Ok(produced) = &mut self.result {
            produced.json = None;
        }
        self
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

fn invalid_input(message: String) -> TaskError {
    TaskError::invalid_input(vec![Issue {
        path: String::new(),
        message,
    }])
}

/// Runs `T` to completion. Never panics on bad input or a panicking task.
pub(crate) async fn execute<T: Task>(
    exec: &Executor,
    input: RunInput<T::Input>,
    seed: Seed,
) -> Finished<T::Output> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let mut run_id = seed.run_id;
    // A durable run's child at a position: replay what an earlier attempt completed there,
    // or run again under the id it had.
    let journal = match (&seed.scope.journal, &seed.scope.parent_run_id) {
        (Some(journal), Some(parent)) => Some((journal.clone(), parent.clone())),
        _ => None,
    };
    if let (Some((journal, parent)), Some(position)) = (&journal, &seed.position) {
        match journal.lookup(parent, position) {
            Recorded::Done(entry) => {
                match serde_json::from_value::<T::Output>(entry.output.clone().unwrap_or_default())
                {
                    Ok(typed) => {
                        tracing::info!(task = T::ID, run_id = %entry.id, position = %position, "step replayed from the journal");
                        return Finished {
                            task: T::ID,
                            run_id: entry.id.clone(),
                            started_at,
                            result: Ok(Produced {
                                typed,
                                json: entry.output.clone(),
                            }),
                            report: Report {
                                duration_ms: entry.duration_ms,
                                attempts: entry.attempts,
                                ..Report::default()
                            },
                            input: Value::Null,
                            tramp: None,
                            replayed: true,
                            retry_in: None,
                        };
                    }
                    Err(error) => {
                        tracing::warn!(task = T::ID, run_id = %entry.id, %error, "the journal's output no longer reads as this task's output; running the step again");
                        run_id = Some(entry.id.clone());
                    }
                }
            }
            Recorded::Started(id) => run_id = Some(id.clone()),
            Recorded::New => {}
        }
    }
    let run_id = run_id.unwrap_or_else(|| RunId::new(started_at));
    let schemas = T::schemas();

    if seed.scope.depth > exec.max_nesting {
        let error = TaskError::rejected(format!(
            "runs nest deeper than the limit of {} levels (a task that runs itself through \
             `ctx.run` without end?)",
            exec.max_nesting
        ));
        tracing::warn!(task = T::ID, run_id = %run_id, depth = seed.scope.depth, "run refused: nested too deep");
        return Finished::refused(T::ID, run_id, error, Value::Null);
    }

    let json_run = matches!(input, RunInput::Json(_));
    let (input_json, typed, captured, shared) = match input {
        RunInput::Typed(value) => {
            if schemas.input_has_floats
                && let Some((path, what)) = json::non_finite(&value)
            {
                let error = TaskError::invalid_input(vec![Issue {
                    path,
                    message: format!("{what} is not a JSON number"),
                }]);
                return Finished::refused(T::ID, run_id, error, Value::Null);
            }
            // A child's input leaves out the trampData it shares with its parent (see
            // `input::capture_tramp`); its scope inherits the parent's copy instead. A
            // top-level run's leaves out its own when the envelope can put it back (see
            // `JobInput`): the envelope then shares the input's copy.
            let share = seed.scope.parent_run_id.is_none() && schemas.input_tramp_at_top;
            let (json, captured) = if share {
                sharing_tramp(|| serde_json::to_value(&value))
            } else {
                capture_tramp(|| {
                    without_inherited(seed.scope.tramp_data.as_ref(), || {
                        serde_json::to_value(&value)
                    })
                })
            };
            match json {
                Ok(json) if share && captured.is_some() && json.get("trampData").is_some() => {
                    // Not the top-level field after all (a type whose schema hides a nested
                    // `BaseInput`): write the input whole.
                    let (json, captured) = capture_tramp(|| serde_json::to_value(&value));
                    match json {
                        Ok(json) => (json, Some(value), captured, false),
                        Err(e) => {
                            let error =
                                invalid_input(format!("input does not serialize to JSON: {e}"));
                            return Finished::refused(T::ID, run_id, error, Value::Null);
                        }
                    }
                }
                Ok(json) => (json, Some(value), captured, share),
                Err(e) => {
                    let error = invalid_input(format!("input does not serialize to JSON: {e}"));
                    return Finished::refused(T::ID, run_id, error, Value::Null);
                }
            }
        }
        RunInput::Json(json) => (json, None, None, false),
    };
    // The trampData left out of `input_json`, which the envelope shares.
    let shared_tramp = if shared { captured.clone() } else { None };
    let scope = scope_of(&input_json, seed.scope, captured);
    if let Some((journal, parent)) = &journal {
        journal.start(
            &run_id,
            parent,
            seed.position.as_deref(),
            T::ID,
            scope.tenant_id.as_deref(),
            scope.project_id.as_deref(),
            &input_json,
        );
    }
    let span = tracing::info_span!(
        "run",
        task = T::ID,
        kind = T::KIND.as_str(),
        run_id = %run_id,
        tenant_id = scope.tenant_id.as_deref(),
        project_id = scope.project_id.as_deref(),
        parent_run_id = scope.parent_run_id.as_ref().map(RunId::as_str),
        attempt = tracing::field::Empty,
        position = tracing::field::Empty,
        status = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        otel.name = tracing::field::Empty,
    );
    if let Some(position) = seed.position.as_deref().filter(|_| !span.is_disabled()) {
        span.record("position", position);
    }
    telemetry::name_run(&span, T::ID);
    // A claimed run continues the trace its trigger stored.
    seed.trace.adopt(&span);
    let attempts = Attempts::<T> {
        exec,
        run_id: &run_id,
        input_json: &input_json,
        typed,
        json_run,
        scope: &scope,
        cancel: &seed.cancel,
        durable: seed.attempt,
    };
    let (result, mut report, retry_in) = in_span!(span, attempts.run());
    report.duration_ms = millis(clock.elapsed());
    // A durable wait stopped the attempt: the run is not over, it waits in the store. Its
    // children stay unfinished in the journal (they run again under their ids on resume),
    // and no hook fires.
    let suspended = scope.journal.as_ref().is_some_and(|j| j.is_suspended());
    if suspended {
        telemetry::ended(&span, "waiting", None);
        let _entered = span.enter();
        tracing::info!(
            duration_ms = report.duration_ms,
            "attempt suspended: the run waits"
        );
    } else {
        let _entered = span.enter();
        let duration_ms = report.duration_ms;
        match &result {
            Ok(_) => tracing::info!(duration_ms, attempts = report.attempts, "run succeeded"),
            Err(error) if retry_in.is_some() => tracing::warn!(
                duration_ms,
                attempt = report.attempts,
                kind = error.kind_name(),
                error = %error,
                retry_in_ms = retry_in.map(millis),
                "attempt failed, rescheduled"
            ),
            Err(error) => tracing::warn!(
                duration_ms,
                attempts = report.attempts,
                kind = error.kind_name(),
                error = %error,
                "run failed"
            ),
        }
        let status = telemetry::status_of(result.as_ref().err());
        if retry_in.is_none() {
            crate::metrics::run_finished(T::ID, status);
        }
        let status = if retry_in.is_some() {
            "retrying"
        } else {
            status
        };
        telemetry::ended(&span, status, result.as_ref().err());
    }
    if let Some((journal, _)) = journal.as_ref().filter(|_| !suspended) {
        let output = result.as_ref().map(|produced| match &produced.json {
            Some(json) => json.clone(),
            None => serde_json::to_value(&produced.typed).unwrap_or_default(),
        });
        journal.finish(&run_id, output, report.attempts);
    }
    // Hooks fire once a run is over: not for an attempt that is rescheduled.
    if retry_in.is_none() && !suspended && (T::HAS_HOOKS || !exec.hooks.is_empty()) {
        // The input whole, with the trampData it shares put back.
        let input = JobInput::shared(input_json.clone(), shared_tramp.clone()).into_value();
        let (when, event) = hook_event::<T>(&run_id, input, &result, report.attempts);
        // Boxed: a run without hooks does not carry the hooks' state in its own.
        Box::pin(run_hooks::<T>(exec, when, &event).instrument(span)).await;
    }
    Finished {
        task: T::ID,
        run_id,
        started_at,
        result,
        report,
        input: input_json,
        tramp: shared_tramp,
        replayed: false,
        retry_in,
    }
}

/// What the hooks of a finished run are told.
fn hook_event<T: Task>(
    run_id: &RunId,
    input: Value,
    result: &Result<Produced<T::Output>, TaskError>,
    attempts: u32,
) -> (When, HookEvent) {
    let when = if result.is_ok() {
        When::Success
    } else {
        When::Failure
    };
    let event = HookEvent {
        task_name: T::ID,
        run_id: run_id.clone(),
        input,
        output: result
            .as_ref()
            .ok()
            .and_then(|produced| match &produced.json {
                Some(json) => Some(json.clone()),
                None => serde_json::to_value(&produced.typed).ok(),
            }),
        error: result.as_ref().err().cloned(),
        attempts,
    };
    (when, event)
}

/// Calls the task's own hook, then the runtime-wide ones, each bounded by the hook timeout.
async fn run_hooks<T: Task>(exec: &Executor, when: When, event: &HookEvent) {
    let limit = exec.hook_timeout;
    if T::HAS_HOOKS {
        match when {
            When::Success => guarded("on_success", T::ID, limit, || T::on_success(event)).await,
            When::Failure => guarded("on_failure", T::ID, limit, || T::on_failure(event)).await,
        }
    }
    for hook in exec.hooks.iter().filter(|hook| hook.when == when) {
        guarded("runtime", T::ID, limit, || (hook.call)(event)).await;
    }
}

/// Tenant, project, trampData and cleanup options from the input, else from the parent.
pub(crate) fn scope_of(input: &Value, inherited: Scope, captured: Option<TrampData>) -> Scope {
    let Value::Object(map) = input else {
        return inherited;
    };
    // A child's input usually repeats its parent's values: share the parent's copy then,
    // rather than allocate another per step or item.
    let text = |key: &str, inherited: Option<Arc<str>>| match map.get(key) {
        Some(Value::String(s)) => match inherited {
            Some(same) if *same == **s => Some(same),
            _ => Some(Arc::from(s.as_str())),
        },
        _ => inherited,
    };
    let cleanup_options = match map.get("cleanup") {
        Some(Value::Null) | None => inherited.cleanup_options,
        Some(v) => match inherited.cleanup_options {
            Some(same) if *same == *v => Some(same),
            _ => Some(Arc::new(v.clone())),
        },
    };
    let tramp_data = match (captured, map.get("trampData")) {
        (Some(captured), _) => Some(captured),
        (None, Some(Value::Null) | None) => inherited.tramp_data,
        (None, Some(v)) => match inherited.tramp_data {
            Some(same) if *same == *v => Some(same),
            _ => Some(TrampData::from(v.clone())),
        },
    };
    Scope {
        tenant_id: text("tenantId", inherited.tenant_id),
        project_id: text("projectId", inherited.project_id),
        tramp_data,
        cleanup_options,
        ..inherited
    }
}
