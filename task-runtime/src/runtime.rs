//! `Runtime`: the embedded, in-process executor. Runs tasks with types (`run`) or by id with
//! JSON (`trigger`, `trigger_and_wait`), and owns what runs share: the registry, payload
//! limits, default policies, concurrency limits, idempotency keys and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::concurrency::{ConcurrencyLimits, Gate};
use crate::context::CallbackResult;
use crate::context::lock;
use crate::engine::{self, RunInput, Seed};
use crate::envelope::{RunError, RunOutput};
use crate::error::TaskError;
use crate::hooks::{HookEvent, RuntimeHook, When};
use crate::limits::{InputError, Limits, drop_deep};
use crate::policy::RetryPolicy;
use crate::registry::{Registry, RegistryError, TaskDescriptor};
use crate::task::Task;

/// The embedded runtime. Cheap to clone; clones share everything.
///
/// ```
/// # use task_runtime::prelude::*;
/// # async fn demo() {
/// let rt = Runtime::new();
/// let env = rt.trigger_and_wait("no_such_task", serde_json::json!({})).await;
/// assert_eq!(env.job.error_detail.unwrap().kind_name(), "notFound");
/// # }
/// ```
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    limits: Limits,
    default_retry: RetryPolicy,
    default_timeout: Option<Duration>,
    max_fan_out: usize,
    concurrency: ConcurrencyLimits,
    accepting: AtomicBool,
    root: CancellationToken,
    tracker: TaskTracker,
    idempotency: Mutex<HashMap<String, Remembered>>,
    hooks: Vec<RuntimeHook>,
}

type SharedRun = Shared<BoxFuture<'static, RunOutput<Value>>>;

/// What an idempotency key remembers.
struct Remembered {
    run_id: Arc<str>,
    cancel: CancellationToken,
    run: SharedRun,
    /// Set when the run succeeded: the key holds until then.
    expires_at: Option<Instant>,
}

/// Options of one trigger.
#[derive(Debug, Clone, Default)]
pub struct TriggerOptions {
    /// Runs with the same key share one execution while it runs and after it succeeded
    /// (for `idempotency_ttl`); a failed run releases the key.
    pub idempotency_key: Option<String>,
    /// How long a succeeded run is remembered under its key. Default 24 hours.
    pub idempotency_ttl: Option<Duration>,
}

impl TriggerOptions {
    /// Options with an idempotency key.
    pub fn idempotency_key(key: impl Into<String>) -> Self {
        TriggerOptions {
            idempotency_key: Some(key.into()),
            idempotency_ttl: None,
        }
    }

    /// Sets how long a succeeded run is remembered under its key.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = Some(ttl);
        self
    }
}

/// A run started in the background by [`Runtime::trigger`].
#[derive(Clone)]
pub struct RunHandle {
    run_id: Arc<str>,
    cancel: CancellationToken,
    run: SharedRun,
}

impl RunHandle {
    /// The run's id, known before it finishes.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Cancels the run: the running attempt and every child run end with `cancelled`,
    /// their cleanup runs, the remaining steps are skipped.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the envelope.
    pub async fn wait(self) -> RunOutput<Value> {
        self.run.await
    }
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    extra: Vec<&'static TaskDescriptor>,
    limits: Limits,
    default_retry: RetryPolicy,
    default_timeout: Option<Duration>,
    max_concurrency: Option<usize>,
    max_fan_out: usize,
    hooks: Vec<RuntimeHook>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            extra: Vec::new(),
            limits: Limits::default(),
            default_retry: RetryPolicy::NONE,
            default_timeout: None,
            max_concurrency: None,
            max_fan_out: 1024,
            hooks: Vec::new(),
        }
    }
}

impl RuntimeBuilder {
    /// Registers a handle explicitly: the fallback for tasks in a crate the binary does not
    /// otherwise reference (which `inventory` cannot see).
    pub fn register<T: Registered>(mut self) -> Self {
        self.extra.push(T::descriptor());
        self
    }

    /// Largest accepted input in bytes (default 3 MiB).
    pub fn max_input_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_input_bytes = bytes;
        self
    }

    /// Deepest accepted nesting of the input (default 64, at most 128).
    pub fn max_input_depth(mut self, depth: usize) -> Self {
        self.limits.max_depth = depth.min(128);
        self
    }

    /// Retry policy of tasks that set none.
    pub fn default_retry(mut self, retry: RetryPolicy) -> Self {
        self.default_retry = retry;
        self
    }

    /// Per-attempt timeout of tasks that set none.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// At most this many tasks run at once, runtime-wide (default: unlimited).
    pub fn max_concurrency(mut self, runs: usize) -> Self {
        self.max_concurrency = Some(runs);
        self
    }

    /// Items of an `each` branch in flight at once when it sets no `concurrency`
    /// (default 1024): bounds memory on huge fan-outs.
    pub fn max_fan_out(mut self, items: usize) -> Self {
        self.max_fan_out = items.max(1);
        self
    }

    /// Runs `hook` after every run (of any task, nested runs included) that succeeded.
    /// Its error or panic is logged and never changes the run's outcome.
    pub fn on_success<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(HookEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: CallbackResult,
    {
        self.hooks.push(RuntimeHook::new(When::Success, hook));
        self
    }

    /// Runs `hook` after every run (of any task, nested runs included) that failed, retries
    /// exhausted. Its error or panic is logged and never changes the run's outcome.
    pub fn on_failure<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(HookEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: CallbackResult,
    {
        self.hooks.push(RuntimeHook::new(When::Failure, hook));
        self
    }

    /// Builds the runtime; fails when two definitions share an id.
    pub fn build(self) -> Result<Runtime, RegistryError> {
        let mut registry = Registry::global()?.clone();
        for entry in self.extra {
            registry.insert(entry)?;
        }
        Ok(Runtime {
            inner: Arc::new(Inner {
                registry,
                limits: self.limits,
                default_retry: self.default_retry,
                default_timeout: self.default_timeout,
                max_fan_out: self.max_fan_out,
                concurrency: ConcurrencyLimits::new(self.max_concurrency),
                accepting: AtomicBool::new(true),
                root: CancellationToken::new(),
                tracker: TaskTracker::new(),
                idempotency: Mutex::default(),
                hooks: self.hooks,
            }),
        })
    }
}

/// Handles with a registry entry (every generated handle).
pub trait Registered: Task {
    fn descriptor() -> &'static TaskDescriptor;
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new()
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("tasks", &self.inner.registry.entries().len())
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// An embedded runtime with every registered task and default settings.
    ///
    /// # Panics
    /// When two definitions share an id (the message names both); use
    /// [`Runtime::builder`]`().build()` to get that as an error instead.
    pub fn new() -> Self {
        match Runtime::builder().build() {
            Ok(runtime) => runtime,
            Err(error) => panic!("{error}"),
        }
    }

    /// Configures a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The tasks this runtime can run.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The payload limits.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    pub(crate) fn default_retry(&self) -> RetryPolicy {
        self.inner.default_retry
    }

    pub(crate) fn default_timeout(&self) -> Option<Duration> {
        self.inner.default_timeout
    }

    pub(crate) fn max_fan_out(&self) -> usize {
        self.inner.max_fan_out
    }

    pub(crate) fn hooks(&self) -> &[RuntimeHook] {
        &self.inner.hooks
    }

    pub(crate) fn root_token(&self) -> &CancellationToken {
        &self.inner.root
    }

    pub(crate) fn limits_for(&self, task: &'static str, leaf: bool, per_task: Option<u32>) -> Gate {
        self.inner.concurrency.gate(task, leaf, per_task)
    }

    fn shutting_down() -> TaskError {
        TaskError::rejected("the runtime is shutting down and accepts no new runs")
    }

    fn accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire)
    }

    /// Runs a task with types and waits for it. Input and output are validated against the
    /// schemas like any other run.
    ///
    /// Returns the envelope on success, and on failure a [`RunError`] holding the error and
    /// the failed envelope.
    pub async fn run<T: Task>(
        &self,
        _task: T,
        input: T::Input,
    ) -> Result<RunOutput<T::Output>, RunError> {
        if !self.accepting() {
            let error = Runtime::shutting_down();
            let envelope = engine::refused(T::ID, Value::Null, error.clone());
            return Err(RunError {
                envelope: Box::new(envelope),
                error,
            });
        }
        let run = engine::execute::<T>(self, RunInput::Typed(input), Seed::awaited(self));
        let out = self.inner.tracker.track_future(run).await;
        match &out.result {
            Ok(_) => Ok(out.into_envelope(|produced| produced.typed)),
            Err(error) => Err(RunError {
                error: error.clone(),
                // Failed: no results to convert.
                envelope: Box::new(out.into_envelope(|_| Value::Null)),
            }),
        }
    }

    /// Runs the task registered under `id` with a JSON input and waits for its envelope.
    /// Every input gets an envelope: unknown id, oversized or too deep payloads, schema
    /// violations, failures. Never panics.
    pub async fn trigger_and_wait(&self, id: &str, input: Value) -> RunOutput<Value> {
        self.trigger_and_wait_with(id, input, TriggerOptions::default())
            .await
    }

    /// [`trigger_and_wait`](Self::trigger_and_wait) with options (idempotency key).
    pub async fn trigger_and_wait_with(
        &self,
        id: &str,
        input: Value,
        options: TriggerOptions,
    ) -> RunOutput<Value> {
        if options.idempotency_key.is_some() {
            return match self.trigger_with(id, input, options).await {
                Ok(handle) => handle.wait().await,
                Err(refused) => *refused.envelope,
            };
        }
        match self.admit(id, input) {
            Ok((descriptor, input)) => {
                let run = descriptor.run_json(self, input, Seed::awaited(self));
                self.inner.tracker.track_future(run).await
            }
            Err(refused) => *refused,
        }
    }

    /// Starts the task registered under `id` in the background and returns its handle.
    /// Refused with a [`RunError`] (holding the envelope that says why) for an unknown id, an
    /// oversized or too deep payload, or a runtime that is shutting down; schema violations
    /// are reported by the run's envelope.
    pub async fn trigger(&self, id: &str, input: Value) -> Result<RunHandle, RunError> {
        self.trigger_with(id, input, TriggerOptions::default())
            .await
    }

    /// [`trigger`](Self::trigger) with options (idempotency key).
    pub async fn trigger_with(
        &self,
        id: &str,
        input: Value,
        options: TriggerOptions,
    ) -> Result<RunHandle, RunError> {
        let (descriptor, input) = self.admit(id, input).map_err(|envelope| RunError {
            error: envelope
                .job
                .error_detail
                .clone()
                .unwrap_or_else(|| TaskError::rejected("refused")),
            envelope,
        })?;
        let Some(key) = options.idempotency_key else {
            return Ok(self.spawn(descriptor, input, None));
        };
        let mut remembered = lock(&self.inner.idempotency);
        let now = Instant::now();
        remembered.retain(|_, r| r.expires_at.is_none_or(|at| at > now));
        if let Some(existing) = remembered.get(&key) {
            tracing::info!(task = id, run_id = %existing.run_id, idempotency_key = %key, "idempotency key matched an existing run");
            return Ok(RunHandle {
                run_id: existing.run_id.clone(),
                cancel: existing.cancel.clone(),
                run: existing.run.clone(),
            });
        }
        let ttl = options
            .idempotency_ttl
            .unwrap_or(Duration::from_secs(24 * 3600));
        let handle = self.spawn(descriptor, input, Some((key.clone(), ttl)));
        remembered.insert(
            key,
            Remembered {
                run_id: handle.run_id.clone(),
                cancel: handle.cancel.clone(),
                run: handle.run.clone(),
                expires_at: None,
            },
        );
        Ok(handle)
    }

    /// Keeps a succeeded run under its key until the TTL passes; releases it on failure.
    fn settle_key(&self, key: &str, ttl: Duration, out: &RunOutput<Value>) {
        let mut remembered = lock(&self.inner.idempotency);
        match remembered.get_mut(key) {
            Some(r) if *r.run_id == *out.job.run_id => {
                if out.job.success {
                    r.expires_at = Some(Instant::now() + ttl);
                } else {
                    remembered.remove(key);
                }
            }
            _ => {}
        }
    }

    fn spawn(
        &self,
        descriptor: &'static TaskDescriptor,
        input: Value,
        key: Option<(String, Duration)>,
    ) -> RunHandle {
        let mut seed = Seed::root(self);
        let run_id = engine::new_run_id(std::time::SystemTime::now());
        seed.run_id = Some(run_id.clone());
        let cancel = seed.cancel.clone();
        let runtime = self.clone();
        let task = self.inner.tracker.spawn(async move {
            let out = descriptor.run_json(&runtime, input, seed).await;
            if let Some((key, ttl)) = key {
                runtime.settle_key(&key, ttl, &out);
            }
            out
        });
        let task_name = descriptor.id;
        let id_for_error = run_id.clone();
        let run = async move {
            match task.await {
                Ok(out) => out,
                // The engine catches panics; this is the tokio runtime going away.
                Err(join_error) => {
                    let mut out = engine::refused(
                        task_name,
                        Value::Null,
                        TaskError::cancelled(format!("the run's task ended: {join_error}")),
                    );
                    out.job.run_id = id_for_error.to_string();
                    out
                }
            }
        }
        .boxed()
        .shared();
        RunHandle {
            run_id,
            cancel,
            run,
        }
    }

    /// The envelope of an input refused before it could be parsed into JSON (too large, too
    /// deep, malformed): `invalidInput` with the reason, or `notFound` for an unknown id.
    pub fn refuse(&self, id: &str, error: InputError) -> RunOutput<Value> {
        let error = match self.inner.registry.get(id) {
            Some(_) => error.into(),
            None => TaskError::not_found(id, self.inner.registry.suggest(id)),
        };
        engine::refused(id, Value::Null, error)
    }

    /// Checks everything that must hold before a run by id starts.
    #[allow(clippy::result_large_err)]
    fn admit(
        &self,
        id: &str,
        input: Value,
    ) -> Result<(&'static TaskDescriptor, Value), Box<RunOutput<Value>>> {
        if !self.accepting() {
            return Err(Box::new(engine::refused(
                id,
                input,
                Runtime::shutting_down(),
            )));
        }
        let Some(descriptor) = self.inner.registry.get(id) else {
            let error = TaskError::not_found(id, self.inner.registry.suggest(id));
            return Err(Box::new(engine::refused(id, input, error)));
        };
        match self.inner.limits.check_value(&input) {
            Ok(()) => Ok((descriptor, input)),
            Err(error @ InputError::TooDeep { .. }) => {
                // Never keep, echo or recursively drop a document this deep.
                drop_deep(input);
                Err(Box::new(engine::refused(id, Value::Null, error.into())))
            }
            Err(error) => Err(Box::new(engine::refused(id, input, error.into()))),
        }
    }

    /// Stops accepting runs (new ones are `rejected`), waits up to `grace` for running
    /// ones, then cancels the rest and waits for their cleanup. Returns whether every run
    /// finished within the grace period.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.accepting.store(false, Ordering::Release);
        self.inner.tracker.close();
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            running = self.inner.tracker.len(),
            "runtime shutting down"
        );
        let finished = tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                running = self.inner.tracker.len(),
                "grace period over, cancelling running runs"
            );
            self.inner.root.cancel();
            self.inner.tracker.wait().await;
        }
        finished
    }
}

/// The registry's entry point for runs by id: JSON in, JSON envelope out.
pub(crate) fn run_json<T: Task>(
    runtime: &Runtime,
    input: Value,
    seed: Seed,
) -> BoxFuture<'_, RunOutput<Value>> {
    Box::pin(async move {
        engine::execute::<T>(runtime, RunInput::Json(input), seed)
            .await
            // Runs by id always carry the JSON form (`json_run`).
            .into_envelope(|produced| produced.json.unwrap_or_default())
    })
}
