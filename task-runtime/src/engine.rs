//! The one execution path every run takes, whatever its kind and however it was started
//! (typed `run`, `trigger` by id, a track step, an orchestrator branch, `ctx.run`):
//! validate the input, run attempts under the task's policy (retry, timeout, cancellation,
//! panic isolation, concurrency limits, cleanup), validate the output, build the envelope.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{Records, Scope, TaskContext, panic_message};
use crate::envelope::{Job, Metadata, RunOutput};
use crate::error::{Issue, TaskError};
use crate::hooks::{HookEvent, When, guarded};
use crate::runtime::Runtime;
use crate::task::{Kind, Task};

/// How the input arrives.
pub(crate) enum RunInput<I> {
    /// From Rust code: serialised once for validation and the envelope.
    Typed(I),
    /// From JSON (trigger by id, CLI): validated, then deserialised.
    Json(Value),
}

/// What a run starts from: its id, what it inherits, what cancels it.
pub(crate) struct Seed {
    pub run_id: Option<Arc<str>>,
    pub scope: Scope,
    pub cancel: CancellationToken,
}

impl Seed {
    /// A top-level run started in the background: cancelled by its handle or by runtime
    /// shutdown.
    pub fn root(runtime: &Runtime) -> Self {
        Seed {
            run_id: None,
            scope: Scope::default(),
            cancel: runtime.root_token().child_token(),
        }
    }

    /// A top-level run its caller awaits (`run`, `trigger_and_wait`): there is no handle to
    /// cancel it by, so it shares the runtime's token (only shutdown cancels it) and saves
    /// linking a child token in and out of the root for every run.
    pub fn awaited(runtime: &Runtime) -> Self {
        Seed {
            run_id: None,
            scope: Scope::default(),
            cancel: runtime.root_token().clone(),
        }
    }

    /// A child of the attempt `ctx` is running: inherits its scope and cancellation.
    pub fn child(ctx: &TaskContext) -> Self {
        Seed::within(ctx.scope.clone(), ctx.cancel.clone())
    }

    /// A run inside a parent's scope, cancelled with `cancel`.
    pub fn within(scope: Scope, cancel: CancellationToken) -> Self {
        Seed {
            run_id: None,
            scope,
            cancel,
        }
    }
}

/// A validated output, with its JSON form when the run made one: always for tasks (it is
/// what their output schema checks) and for runs by id; typed runs of tracks and
/// orchestrators skip it (see `Attempts::attempt`).
pub(crate) struct Produced<O> {
    pub typed: O,
    pub json: Option<Value>,
}

/// A fresh run id: `run_` + a ULID. Ids made on one thread sort in creation order, even
/// within one millisecond (a per-thread monotonic generator, so no lock is shared).
pub(crate) fn new_run_id(at: SystemTime) -> Arc<str> {
    thread_local! {
        static GENERATOR: std::cell::RefCell<ulid::Generator> =
            const { std::cell::RefCell::new(ulid::Generator::new()) };
    }
    let ulid = GENERATOR
        .with(|g| g.borrow_mut().generate_from_datetime(at))
        .unwrap_or_else(|_| ulid::Ulid::from_datetime(at));
    let mut text = [0u8; ulid::ULID_LEN];
    let mut buf = [0u8; 4 + ulid::ULID_LEN];
    buf[..4].copy_from_slice(b"run_");
    buf[4..].copy_from_slice(ulid.array_to_str(&mut text).as_bytes());
    Arc::from(std::str::from_utf8(&buf).expect("ULIDs are ASCII"))
}

/// A finished run. Child runs (track steps, branches, `ctx.run`) read what they need from
/// it; only top-level runs pay for a full envelope ([`Finished::into_envelope`]).
pub(crate) struct Finished<O> {
    pub task: &'static str,
    pub run_id: Arc<str>,
    pub result: Result<Produced<O>, TaskError>,
    pub report: Report,
    input: Value,
    tramp_data: Option<Arc<Value>>,
}

impl<O> Finished<O> {
    /// The envelope, with the output in the form `results` picks.
    pub fn into_envelope<R>(self, results: impl FnOnce(Produced<O>) -> R) -> RunOutput<R> {
        let Finished {
            task,
            run_id,
            result,
            report,
            input,
            tramp_data,
        } = self;
        let (results, error) = match result {
            Ok(produced) => (Some(results(produced)), None),
            Err(error) => (None, Some(error)),
        };
        RunOutput {
            job: Job {
                success: error.is_none(),
                task_name: task.to_owned(),
                run_id: run_id.to_string(),
                input,
                error: error.as_ref().map(ToString::to_string),
                error_detail: error,
            },
            results,
            metadata: Metadata {
                started_at: report.started_at,
                finished_at: report.started_at + Duration::from_millis(report.duration_ms),
                duration_ms: report.duration_ms,
                attempts: report.attempts,
                steps: report.records.steps,
                branches: report.records.branches,
                cleanup_errors: report.cleanup_errors,
            },
            // The run's contexts are gone by now: take the value rather than copy it.
            tramp_data: tramp_data
                .map(|data| Arc::try_unwrap(data).unwrap_or_else(|shared| (*shared).clone())),
        }
    }

    /// The typed output, or the error.
    pub fn into_typed(self) -> Result<O, TaskError> {
        self.result.map(|produced| produced.typed)
    }
}

/// Runs `T` to completion. Never panics on bad input or a panicking task.
pub(crate) async fn execute<T: Task>(
    runtime: &Runtime,
    input: RunInput<T::Input>,
    seed: Seed,
) -> Finished<T::Output> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let run_id = seed.run_id.unwrap_or_else(|| new_run_id(started_at));

    let json_run = matches!(input, RunInput::Json(_));
    let (input_json, typed) = match input {
        RunInput::Typed(value) => match serde_json::to_value(&value) {
            Ok(json) => (json, Some(value)),
            Err(e) => {
                let error = TaskError::invalid_input(vec![Issue {
                    path: String::new(),
                    message: format!("input does not serialize to JSON: {e}"),
                }]);
                return Finished {
                    task: T::ID,
                    run_id,
                    result: Err(error),
                    report: Report::new(started_at, clock, 0),
                    input: Value::Null,
                    tramp_data: seed.scope.tramp_data,
                };
            }
        },
        RunInput::Json(json) => (json, None),
    };
    let scope = scope_of(&input_json, seed.scope);
    let span = tracing::info_span!(
        "run",
        task = T::ID,
        kind = T::KIND.as_str(),
        run_id = %run_id,
        tenant_id = scope.tenant_id.as_deref(),
        project_id = scope.project_id.as_deref(),
        attempt = tracing::field::Empty,
    );
    let attempt_run = Attempts::<T> {
        runtime,
        run_id: &run_id,
        input_json: &input_json,
        typed,
        json_run,
        scope: &scope,
        cancel: &seed.cancel,
    };
    let (result, report) = attempt_run
        .run(started_at, clock)
        .instrument(span.clone())
        .await;
    {
        let _entered = span.enter();
        let duration_ms = report.duration_ms;
        match &result {
            Ok(_) => tracing::info!(duration_ms, attempts = report.attempts, "run succeeded"),
            Err(error) => tracing::warn!(
                duration_ms,
                attempts = report.attempts,
                kind = error.kind_name(),
                error = %error,
                "run failed"
            ),
        }
    }
    if T::HAS_HOOKS || !runtime.hooks().is_empty() {
        let (when, event) = hook_event::<T>(&run_id, &input_json, &result, report.attempts);
        run_hooks::<T>(runtime, when, event).instrument(span).await;
    }
    Finished {
        task: T::ID,
        run_id,
        result,
        report,
        input: input_json,
        tramp_data: scope.tramp_data,
    }
}

/// Timing, attempts and records of a finished run.
pub(crate) struct Report {
    pub started_at: SystemTime,
    pub duration_ms: u64,
    pub attempts: u32,
    pub records: Records,
    pub cleanup_errors: Vec<String>,
}

impl Report {
    fn new(started_at: SystemTime, clock: Instant, attempts: u32) -> Self {
        Report {
            started_at,
            duration_ms: millis(clock.elapsed()),
            attempts,
            records: Records::default(),
            cleanup_errors: Vec::new(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// The attempts of one run.
struct Attempts<'a, T: Task> {
    runtime: &'a Runtime,
    run_id: &'a Arc<str>,
    input_json: &'a Value,
    typed: Option<T::Input>,
    /// Run by id: the caller wants the output as JSON.
    json_run: bool,
    scope: &'a Scope,
    cancel: &'a CancellationToken,
}

impl<T: Task> Attempts<'_, T> {
    async fn run(
        mut self,
        started_at: SystemTime,
        clock: Instant,
    ) -> (Result<Produced<T::Output>, TaskError>, Report) {
        tracing::info!("run started");
        let schemas = T::schemas();
        let issues = schemas.input_issues(self.input_json);
        if !issues.is_empty() {
            return (
                Err(TaskError::invalid_input(issues)),
                Report::new(started_at, clock, 0),
            );
        }
        let retry = T::POLICY.retry.unwrap_or(self.runtime.default_retry());
        let timeout = T::POLICY.timeout.or(self.runtime.default_timeout());
        let mut report = Report::new(started_at, clock, 0);
        let result = loop {
            report.attempts += 1;
            let attempt = report.attempts;
            tracing::Span::current().record("attempt", attempt);
            let outcome = self.attempt(attempt, timeout, &mut report).await;
            match outcome {
                Err(error)
                    if error.is_retryable()
                        && attempt < retry.max_attempts
                        && !self.cancel.is_cancelled() =>
                {
                    let delay = retry.delay_before(attempt + 1);
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
                }
                other => break other,
            }
        };
        report.duration_ms = millis(clock.elapsed());
        (result, report)
    }

    /// One attempt: take a concurrency slot, run the task under timeout / cancellation /
    /// panic isolation, run its cleanup, validate its output.
    async fn attempt(
        &mut self,
        attempt: u32,
        timeout: Option<Duration>,
        report: &mut Report,
    ) -> Result<Produced<T::Output>, TaskError> {
        let input = match self.typed.take() {
            Some(input) => input,
            // Later attempts (and JSON runs) rebuild the input from the validated JSON.
            None => T::Input::deserialize(self.input_json).map_err(|e| {
                TaskError::invalid_input(vec![Issue {
                    path: String::new(),
                    message: format!("input does not deserialize: {e}"),
                }])
            })?,
        };
        if self.cancel.is_cancelled() {
            return Err(TaskError::cancelled("run cancelled before it started"));
        }
        let slot = self
            .runtime
            .limits_for(T::ID, T::KIND == Kind::Task, T::POLICY.concurrency)
            .acquire(self.scope, self.cancel)
            .await?;
        let ctx = TaskContext::new(
            self.runtime.clone(),
            self.run_id.clone(),
            T::ID,
            attempt,
            slot.scope,
            self.cancel.clone(),
        );
        let span = tracing::info_span!("attempt", attempt);
        let outcome = run_guarded::<T>(&ctx, input, timeout, T::KIND == Kind::Task)
            .instrument(span)
            .await;
        report.cleanup_errors.extend(ctx.run_cleanup().await);
        report.records = ctx.take_records();
        drop(slot.permits);
        let output = outcome?;
        // A track's output is its last step's, an orchestrator's is made of its branches'
        // outputs: each was validated by its own run, so checking the whole again (and, on
        // a typed run, serialising it at all) would only repeat work. On a 100 000-item
        // fan-out that repeat was a third of the run and most of its memory.
        let leaf = T::KIND == Kind::Task;
        if !leaf && !self.json_run {
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
            let issues = T::schemas().output_issues(&json);
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
/// A leaf task is dropped at its next await point when cancelled. Tracks and orchestrators
/// are not: their children see the same cancellation, end with `cancelled` after running
/// their cleanup, and the composite returns that error itself.
async fn run_guarded<T: Task>(
    ctx: &TaskContext,
    input: T::Input,
    timeout: Option<Duration>,
    drop_on_cancel: bool,
) -> Result<T::Output, TaskError> {
    let body = AssertUnwindSafe(T::run(ctx, input)).catch_unwind();
    let bounded = async {
        match timeout {
            Some(limit) => tokio::time::timeout(limit, body)
                .await
                .unwrap_or_else(|_| Ok(Err(TaskError::timeout(limit)))),
            None => body.await,
        }
    };
    // The body is polled first: a task that finishes without waiting never touches the
    // cancellation token.
    let outcome = if drop_on_cancel {
        tokio::select! {
            biased;
            outcome = bounded => outcome,
            _ = ctx.cancel.cancelled() => {
                return Err(TaskError::cancelled("run cancelled while running"));
            }
        }
    } else {
        bounded.await
    };
    outcome.unwrap_or_else(|panic| Err(TaskError::panicked(panic_message(&*panic))))
}

/// What the hooks of a finished run are told.
fn hook_event<T: Task>(
    run_id: &str,
    input: &Value,
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
        run_id: run_id.to_owned(),
        input: input.clone(),
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

/// Calls the task's own hook, then the runtime-wide ones, for a finished run.
async fn run_hooks<T: Task>(runtime: &Runtime, when: When, event: HookEvent) {
    if T::HAS_HOOKS {
        match when {
            When::Success => T::on_success(&event).await,
            When::Failure => T::on_failure(&event).await,
        }
    }
    for hook in runtime.hooks().iter().filter(|hook| hook.when == when) {
        guarded("runtime", T::ID, (hook.call)(event.clone())).await;
    }
}

/// Tenant, project, trampData and cleanup options from the input, else from the parent.
fn scope_of(input: &Value, inherited: Scope) -> Scope {
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
    let value = |key: &str, inherited: Option<Arc<Value>>| match map.get(key) {
        Some(Value::Null) | None => inherited,
        Some(v) => match inherited {
            Some(same) if *same == *v => Some(same),
            _ => Some(Arc::new(v.clone())),
        },
    };
    Scope {
        tenant_id: text("tenantId", inherited.tenant_id),
        project_id: text("projectId", inherited.project_id),
        tramp_data: value("trampData", inherited.tramp_data),
        cleanup_options: value("cleanup", inherited.cleanup_options),
        held: inherited.held,
    }
}

/// The envelope of a run that was refused before it started (unknown id, payload limits,
/// shutdown).
pub(crate) fn refused(task: &str, input: Value, error: TaskError) -> RunOutput<Value> {
    let started_at = SystemTime::now();
    let tramp_data = match &input {
        Value::Object(map) => map.get("trampData").filter(|v| !v.is_null()).cloned(),
        _ => None,
    };
    RunOutput {
        job: Job {
            success: false,
            task_name: task.to_owned(),
            run_id: new_run_id(started_at).to_string(),
            input,
            error: Some(error.to_string()),
            error_detail: Some(error),
        },
        results: None,
        metadata: Metadata {
            started_at,
            finished_at: started_at,
            duration_ms: 0,
            attempts: 0,
            steps: Vec::new(),
            branches: Vec::new(),
            cleanup_errors: Vec::new(),
        },
        tramp_data,
    }
}
