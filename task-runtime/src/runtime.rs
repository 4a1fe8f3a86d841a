//! `Runtime`: the facade users hold. Runs tasks with types (`run`, `start`) or by id with
//! JSON (`trigger`, `trigger_and_wait`), keeps idempotency keys and the index of background
//! runs (`runs()`), and shuts down gracefully. Every run it starts goes through the engine
//! (`exec`), which knows nothing of this facade.
//!
//! With a store (`Runtime::builder().store(..)`), `trigger`, `start` and the `*_with` forms
//! commit the run to the store and return once it is committed; a worker (`rt.worker()`, in
//! this or any process sharing the store) executes it. `run` always executes in-process.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::builder::RuntimeBuilder;
use crate::envelope::{RunError, RunOutput};
use crate::error::{Issue, TaskError};
use crate::exec::seed::lock;
use crate::exec::{Ended, Executor, RunInput, Seed, execute};
use crate::handle::{Done, RunHandle, SharedRun, TypedRunHandle};
use crate::id::RunId;
use crate::input::{InputError, Limits};
use crate::json::{CompactJson, drop_deep};
use crate::registry::{Registry, TaskDescriptor};
use crate::runs::{LiveRuns, RunStatus, Runs};
use crate::store::{NewRun, RunStore, Store, later};
use crate::task::Task;

/// A refused input of a batch: its envelope's sentence names the item.
fn in_batch(mut envelope: RunOutput<Value>, index: usize) -> RunError {
    envelope.job.error = envelope
        .job
        .error
        .map(|error| format!("batch item {index}: {error}"));
    RunError::from_envelope(envelope)
}

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
    exec: Executor,
    accepting: AtomicBool,
    idempotency: Mutex<HashMap<KeyScope, Remembered>>,
    live: Mutex<LiveRuns>,
    store: Option<Store>,
    /// Runs this process's workers execute, for a cancel that need not wait for a heartbeat.
    executing: Mutex<HashMap<RunId, CancellationToken>>,
}

/// What an idempotency key is unique within: one task and one tenant. The same key used
/// for another task, or by another tenant, names another run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct KeyScope {
    task: &'static str,
    tenant: Option<String>,
    key: String,
}

/// What an idempotency key remembers.
struct Remembered {
    run_id: RunId,
    cancel: CancellationToken,
    run: SharedRun,
    holds: Holds,
}

/// How long a key holds its run.
#[derive(Debug, Clone, Copy)]
enum Holds {
    /// While the run runs.
    Running,
    /// It succeeded: until then.
    Until(Instant),
    /// It succeeded, and the TTL reaches past what the clock can represent.
    Forever,
}

/// When a background run may start: after its delay, and not past its time to live,
/// counted from the trigger.
#[derive(Debug, Clone, Copy)]
struct Start {
    delay: Option<Duration>,
    /// The time to live, and the instant it ends (`None`: too far to represent, never).
    ttl: Option<(Duration, Option<Instant>)>,
}

impl Start {
    /// `None` for a run that starts at once, with nothing to wait for or check (boxed
    /// otherwise, so a queued run's task stays small).
    fn of(options: &TriggerOptions) -> Option<Box<Start>> {
        if options.delay.is_none() && options.ttl.is_none() {
            return None;
        }
        Some(Box::new(Start {
            delay: options.delay,
            ttl: options
                .ttl
                .map(|ttl| (ttl, Instant::now().checked_add(ttl))),
        }))
    }
}

/// Options of one trigger, built with chained setters.
///
/// ```
/// # use std::time::Duration;
/// # use task_runtime::TriggerOptions;
/// let options = TriggerOptions::new()
///     .idempotency_key("order-42")
///     .idempotency_ttl(Duration::from_secs(3600))
///     .delay(Duration::from_secs(10))
///     .tags(["billing", "eu"])
///     .concurrency_key("tenant-7"); // one run of the task at a time for this tenant
/// assert_eq!(options.get_idempotency_key(), Some("order-42"));
/// assert_eq!(options.get_concurrency_key(), Some(("tenant-7", 1)));
/// ```
#[derive(Debug, Clone, Default)]
pub struct TriggerOptions {
    idempotency_key: Option<String>,
    idempotency_ttl: Option<Duration>,
    delay: Option<Duration>,
    ttl: Option<Duration>,
    tags: Vec<String>,
    concurrency_key: Option<String>,
    concurrency_key_limit: Option<u32>,
    /// The trace the run continues (a W3C `traceparent`): the current span's when the
    /// trigger is made, else what the HTTP trigger received.
    trace_context: Option<String>,
}

impl TriggerOptions {
    /// No options.
    pub fn new() -> Self {
        TriggerOptions::default()
    }

    /// Runs of one task and one tenant with the same key share one execution while it runs
    /// and after it succeeded (for the idempotency TTL); a failed run releases the key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// How long a succeeded run is remembered under its key. Default 24 hours.
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = Some(ttl);
        self
    }

    /// Starts the run this much later (status `delayed` until then).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// A run not started within this time of its trigger ends `expired` without running.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Adds tags (listed with the run; filterable in `runs().list`).
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Puts the run in the queue of `key` (Trigger.dev's `concurrencyKey`, e.g. a tenant
    /// id): at most [`concurrency_key_limit`](Self::concurrency_key_limit) runs of this task
    /// with this key execute at once (default 1), across every worker of the store, while
    /// runs with other keys proceed. Claims take keys in turn, so one key's backlog does not
    /// starve another's. The task's own `concurrency` still bounds all its runs together.
    /// Honoured by stored runs (a runtime with a store); an empty key is no key.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into()).filter(|k: &String| !k.is_empty());
        self
    }

    /// How many runs with the same [`concurrency_key`](Self::concurrency_key) may execute at
    /// once (default 1; at least 1).
    pub fn concurrency_key_limit(mut self, runs: u32) -> Self {
        self.concurrency_key_limit = Some(runs.max(1));
        self
    }

    /// The concurrency key and its limit, if a key is set.
    pub fn get_concurrency_key(&self) -> Option<(&str, u32)> {
        self.concurrency_key
            .as_deref()
            .map(|key| (key, self.concurrency_key_limit.unwrap_or(1)))
    }

    /// The trace to continue when the trigger is made outside any exported span (the HTTP
    /// trigger's `traceparent` header).
    #[cfg(feature = "http")]
    pub(crate) fn trace_context(mut self, traceparent: &str) -> Self {
        self.trace_context = Some(traceparent.to_owned());
        self
    }

    /// The idempotency key, if set.
    pub fn get_idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// The idempotency TTL, if set.
    pub fn get_idempotency_ttl(&self) -> Option<Duration> {
        self.idempotency_ttl
    }

    /// The delay, if set.
    pub fn get_delay(&self) -> Option<Duration> {
        self.delay
    }

    /// The time to live, if set.
    pub fn get_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The tags.
    pub fn get_tags(&self) -> &[String] {
        &self.tags
    }

    fn starts_later(&self) -> bool {
        self.delay.is_some() || self.ttl.is_some()
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new()
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("tasks", &self.inner.exec.registry.entries().len())
            .field("limits", &self.inner.exec.limits)
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

    pub(crate) fn from_executor(exec: Executor, store: Option<Store>) -> Self {
        Runtime {
            inner: Arc::new(Inner {
                exec,
                accepting: AtomicBool::new(true),
                idempotency: Mutex::default(),
                live: Mutex::default(),
                store,
                executing: Mutex::default(),
            }),
        }
    }

    pub(crate) fn executor(&self) -> &Executor {
        &self.inner.exec
    }

    /// The store runs are kept in, when the runtime has one.
    pub(crate) fn store(&self) -> Option<&Arc<dyn RunStore>> {
        self.inner.store.as_ref().map(|store| &store.inner)
    }

    /// The store handle, when the runtime has one.
    pub fn store_handle(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    pub(crate) fn live(&self) -> &Mutex<LiveRuns> {
        &self.inner.live
    }

    /// Registers a run a worker of this process executes.
    pub(crate) fn executing(&self, run_id: &RunId, cancel: &CancellationToken) {
        lock(&self.inner.executing).insert(run_id.clone(), cancel.clone());
    }

    pub(crate) fn executed(&self, run_id: &RunId) {
        lock(&self.inner.executing).remove(run_id);
    }

    /// Cancels a run at once when a worker of this process executes it.
    pub(crate) fn cancel_local(&self, run_id: &RunId) {
        if let Some(cancel) = lock(&self.inner.executing).get(run_id) {
            cancel.cancel();
        }
    }

    /// The tasks this runtime can run.
    pub fn registry(&self) -> &Registry {
        &self.inner.exec.registry
    }

    /// The payload limits.
    pub fn limits(&self) -> Limits {
        self.inner.exec.limits
    }

    /// The cron schedules of this runtime's store: create, list, delete, fire.
    pub fn schedules(&self) -> crate::schedules::Schedules<'_> {
        crate::schedules::Schedules { rt: self }
    }

    /// The runs started in the background (`trigger`, `start`).
    pub fn runs(&self) -> Runs<'_> {
        Runs { rt: self }
    }

    fn shutting_down() -> TaskError {
        TaskError::rejected("the runtime is shutting down and accepts no new runs")
    }

    fn accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire)
    }

    fn new_run_id() -> RunId {
        RunId::new(SystemTime::now())
    }

    /// Runs a task with types and waits for it. Input and output are validated against the
    /// schemas like any other run.
    ///
    /// Returns the envelope on success (its `results` is the task's output), and on failure
    /// a [`RunError`] holding the error and the failed envelope.
    pub async fn run<T: Task>(
        &self,
        task: T,
        input: T::Input,
    ) -> Result<RunOutput<T::Output>, RunError> {
        let _ = task;
        if !self.accepting() {
            let envelope = RunOutput::refused(
                T::ID,
                Runtime::new_run_id(),
                Value::Null,
                Runtime::shutting_down(),
            );
            return Err(RunError::from_envelope(envelope));
        }
        let exec = &self.inner.exec;
        // Counted by the tracker (shutdown waits for it) without wrapping the run's future.
        let _running = exec.tracker.token();
        execute::<T>(exec, RunInput::Typed(input), Seed::root(exec.root.clone()))
            .await
            .into_typed_envelope()
    }

    /// [`run`](Self::run) with options: an idempotency key (a second call with the key gets
    /// the first run's envelope and executes nothing), a delay, a time to live.
    pub async fn run_with<T: Task>(
        &self,
        task: T,
        input: T::Input,
        options: TriggerOptions,
    ) -> Result<RunOutput<T::Output>, RunError> {
        if options.idempotency_key.is_none() && !options.starts_later() && self.store().is_none() {
            return self.run(task, input).await;
        }
        self.start_with(task, input, options).await?.wait().await
    }

    /// Starts a task with types in the background; the handle's `wait()` gives the typed
    /// envelope.
    pub async fn start<T: Task>(
        &self,
        task: T,
        input: T::Input,
    ) -> Result<TypedRunHandle<T::Output>, RunError> {
        self.start_with(task, input, TriggerOptions::default())
            .await
    }

    /// [`start`](Self::start) with options (idempotency key, delay, TTL, tags).
    pub async fn start_with<T: Task>(
        &self,
        task: T,
        input: T::Input,
        options: TriggerOptions,
    ) -> Result<TypedRunHandle<T::Output>, RunError> {
        let _ = task;
        if !self.accepting() {
            let envelope = RunOutput::refused(
                T::ID,
                Runtime::new_run_id(),
                Value::Null,
                Runtime::shutting_down(),
            );
            return Err(RunError::from_envelope(envelope));
        }
        if options.idempotency_key.is_some() || self.store().is_some() {
            // Every trigger with the key shares one run, whose output is kept as JSON; a
            // stored run's input and output are JSON in the store anyway.
            let json = serde_json::to_value(&input).map_err(|e| {
                let error = TaskError::invalid_input(vec![Issue {
                    path: String::new(),
                    message: format!("input does not serialize to JSON: {e}"),
                }]);
                RunError::from_envelope(RunOutput::refused(
                    T::ID,
                    Runtime::new_run_id(),
                    Value::Null,
                    error,
                ))
            })?;
            let shared = self.trigger_with(T::ID, json, options).await?;
            return Ok(TypedRunHandle {
                run_id: shared.run_id,
                task: T::ID,
                cancel: shared.cancel,
                done: match shared.done {
                    Done::Shared(run) => Done::Shared(run),
                    Done::Stored(rt) => Done::Stored(rt),
                    Done::Task(task) => Done::Shared(
                        async move {
                            task.await.map_or_else(
                                |e| crate::handle::ended(T::ID, Runtime::new_run_id(), &e),
                                Ended::envelope,
                            )
                        }
                        .boxed()
                        .shared(),
                    ),
                },
                output: PhantomData,
            });
        }
        let exec = self.inner.exec.clone();
        let run_id = Runtime::new_run_id();
        let cancel = exec.root.child_token();
        self.register_live(&run_id, T::ID, &options, &cancel);
        let (rt, id, seed_cancel) = (self.clone(), run_id.clone(), cancel.clone());
        let start = Start::of(&options);
        let task = self.inner.exec.tracker.spawn(async move {
            let refused = match rt.start_or_wait(T::ID, &id, start, &seed_cancel) {
                Some(wait) => wait.await,
                None => None,
            };
            if let Some(refused) = refused {
                rt.finish_live(&id, &refused);
                return Err(RunError::from_envelope(refused));
            }
            let seed = Seed {
                run_id: Some(id.clone()),
                ..Seed::root(seed_cancel)
            };
            let out = Box::pin(execute::<T>(&exec, RunInput::Typed(input), seed)).await;
            let out = out.into_typed_envelope();
            match &out {
                Ok(ok) => rt.finish_live_with(&id, ok.metadata.attempts, || ok.to_json()),
                Err(failed) => rt.finish_live(&id, &failed.envelope),
            }
            out
        });
        Ok(TypedRunHandle {
            run_id,
            task: T::ID,
            cancel,
            done: Done::Task(task),
            output: PhantomData,
        })
    }

    /// Runs the task registered under `id` with a JSON input and waits for its envelope.
    /// Every input gets an envelope: unknown id, oversized or too deep payloads, schema
    /// violations, failures. Never panics.
    pub async fn trigger_and_wait(&self, id: &str, input: Value) -> RunOutput<Value> {
        self.trigger_and_wait_with(id, input, TriggerOptions::default())
            .await
    }

    /// [`trigger_and_wait`](Self::trigger_and_wait) with options (idempotency key, delay,
    /// TTL, tags).
    pub async fn trigger_and_wait_with(
        &self,
        id: &str,
        input: Value,
        options: TriggerOptions,
    ) -> RunOutput<Value> {
        if options.idempotency_key.is_some() || options.starts_later() {
            return match self.trigger_with(id, input, options).await {
                Ok(handle) => handle.wait().await,
                Err(refused) => *refused.envelope,
            };
        }
        match self.admit(id, input) {
            Ok((descriptor, input)) => {
                let exec = &self.inner.exec;
                let _running = exec.tracker.token();
                descriptor
                    .run_json(exec, input, Seed::root(exec.root.clone()))
                    .await
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

    /// [`trigger`](Self::trigger) with options (idempotency key, delay, TTL, tags).
    pub async fn trigger_with(
        &self,
        id: &str,
        input: Value,
        options: TriggerOptions,
    ) -> Result<RunHandle, RunError> {
        let (descriptor, input) = self
            .admit(id, input)
            .map_err(|envelope| RunError::from_envelope(*envelope))?;
        if self.store().is_some() {
            return self.enqueue(descriptor, input, options, None).await;
        }
        let Some(key) = options.idempotency_key.clone() else {
            return Ok(self.spawn(descriptor, input, options, None));
        };
        let scope = KeyScope {
            task: descriptor.id,
            tenant: input
                .get("tenantId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            key,
        };
        let mut remembered = lock(&self.inner.idempotency);
        let now = Instant::now();
        remembered.retain(|_, r| match r.holds {
            Holds::Until(at) => at > now,
            Holds::Running | Holds::Forever => true,
        });
        if let Some(existing) = remembered.get(&scope) {
            tracing::info!(task = id, run_id = %existing.run_id, idempotency_key = %scope.key, "idempotency key matched an existing run");
            return Ok(RunHandle {
                run_id: existing.run_id.clone(),
                task: descriptor.id,
                cancel: existing.cancel.clone(),
                done: Done::Shared(existing.run.clone()),
            });
        }
        let ttl = options
            .idempotency_ttl
            .unwrap_or(Duration::from_secs(24 * 3600));
        let handle = self.spawn(descriptor, input, options, Some((scope.clone(), ttl)));
        let Done::Task(task) = handle.done else {
            unreachable!("spawn gives the run's own task")
        };
        let (task_name, id_for_error) = (descriptor.id, handle.run_id.clone());
        let run: SharedRun = async move {
            task.await.map_or_else(
                |e| crate::handle::ended(task_name, id_for_error, &e),
                Ended::envelope,
            )
        }
        .boxed()
        .shared();
        remembered.insert(
            scope,
            Remembered {
                run_id: handle.run_id.clone(),
                cancel: handle.cancel.clone(),
                run: run.clone(),
                holds: Holds::Running,
            },
        );
        Ok(RunHandle {
            done: Done::Shared(run),
            ..handle
        })
    }

    /// Keeps a succeeded run under its key until the TTL passes; releases it on failure.
    fn settle_key(&self, scope: &KeyScope, ttl: Duration, run_id: &RunId, success: bool) {
        let mut remembered = lock(&self.inner.idempotency);
        match remembered.get_mut(scope) {
            Some(r) if r.run_id == *run_id => {
                if success {
                    r.holds = match Instant::now().checked_add(ttl) {
                        Some(at) => Holds::Until(at),
                        None => Holds::Forever,
                    };
                } else {
                    remembered.remove(scope);
                }
            }
            _ => {}
        }
    }

    fn register_live(
        &self,
        run_id: &RunId,
        task: &'static str,
        options: &TriggerOptions,
        cancel: &CancellationToken,
    ) {
        let status = if options.delay.is_some() {
            RunStatus::Delayed
        } else {
            RunStatus::Queued
        };
        lock(&self.inner.live).insert(run_id, task, status, options.tags.clone(), cancel.clone());
    }

    fn set_live_status(&self, run_id: &RunId, status: RunStatus) {
        lock(&self.inner.live).set_status(run_id, status);
    }

    fn finish_live(&self, run_id: &RunId, envelope: &RunOutput<Value>) {
        lock(&self.inner.live).finish(run_id, envelope);
    }

    /// `finish_live` of a completed run, with an envelope built only if someone waits for it.
    fn finish_live_with(
        &self,
        run_id: &RunId,
        attempts: u32,
        envelope: impl FnOnce() -> RunOutput<Value>,
    ) {
        let mut live = lock(&self.inner.live);
        if live.has_waiters(run_id) {
            live.finish(run_id, &envelope());
        } else {
            live.finish_status(run_id, RunStatus::Completed, attempts);
        }
    }

    /// `finish_live` of a background run: its envelope is built now only if someone waits
    /// in `runs().wait`, otherwise when its handle is awaited.
    fn finish_live_ended(&self, run_id: &RunId, ended: Box<dyn Ended>) -> Box<dyn Ended> {
        let mut live = lock(&self.inner.live);
        if live.has_waiters(run_id) {
            let envelope = ended.envelope();
            live.finish(run_id, &envelope);
            Box::new(envelope)
        } else {
            live.finish_status(run_id, ended.status(), ended.attempts());
            ended
        }
    }

    /// The row of a run to commit: refused if its input breaks the schema (nothing is
    /// stored then).
    #[allow(clippy::result_large_err)]
    pub(crate) fn new_run(
        descriptor: &'static TaskDescriptor,
        input: Value,
        options: &TriggerOptions,
        replay_of: Option<RunId>,
    ) -> Result<NewRun, RunError> {
        let run_id = Runtime::new_run_id();
        let issues = descriptor.schemas().input_issues(&input);
        if !issues.is_empty() {
            let error = TaskError::invalid_input(issues);
            return Err(RunError::from_envelope(RunOutput::refused(
                descriptor.id,
                run_id,
                input,
                error,
            )));
        }
        let now = SystemTime::now();
        let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_owned);
        Ok(NewRun {
            id: run_id,
            task: descriptor.id.to_owned(),
            tenant_id: text("tenantId"),
            project_id: text("projectId"),
            run_at: later(now, options.delay.unwrap_or_default()),
            expire_at: options.ttl.map(|ttl| later(now, ttl)),
            idempotency: options.idempotency_key.clone().map(|key| {
                (
                    key,
                    options
                        .idempotency_ttl
                        .unwrap_or(Duration::from_secs(24 * 3600)),
                )
            }),
            tags: options.tags.clone(),
            replay_of,
            concurrency_key: options
                .get_concurrency_key()
                .map(|(key, limit)| (key.to_owned(), limit)),
            trace_context: crate::telemetry::current().or_else(|| options.trace_context.clone()),
            input,
        })
    }

    /// Commits runs to the store in one transaction; returns their handles once committed.
    async fn commit(
        &self,
        task: &'static str,
        runs: Vec<NewRun>,
    ) -> Result<Vec<RunHandle>, RunError> {
        let Some(store) = self.store() else {
            unreachable!("commit is only called with a store")
        };
        let first = runs.first().map(|r| r.id.clone());
        match store.enqueue(runs).await {
            Ok(enqueued) => Ok(enqueued
                .into_iter()
                .map(|enqueued| {
                    if enqueued.existing {
                        tracing::info!(task, run_id = %enqueued.id, "idempotency key matched an existing run");
                    }
                    RunHandle {
                        run_id: enqueued.id,
                        task,
                        cancel: CancellationToken::new(),
                        done: Done::Stored(self.clone()),
                    }
                })
                .collect()),
            Err(error) => {
                tracing::warn!(task, %error, "trigger not committed");
                let error = TaskError::rejected(format!("the run was not stored: {error}"));
                let id = first.unwrap_or_else(Runtime::new_run_id);
                Err(RunError::from_envelope(RunOutput::refused(task, id, Value::Null, error)))
            }
        }
    }

    async fn enqueue(
        &self,
        descriptor: &'static TaskDescriptor,
        input: Value,
        options: TriggerOptions,
        replay_of: Option<RunId>,
    ) -> Result<RunHandle, RunError> {
        let new = Runtime::new_run(descriptor, input, &options, replay_of)?;
        let mut handles = self.commit(descriptor.id, vec![new]).await?;
        Ok(handles.pop().expect("one run in, one out"))
    }

    /// Triggers many runs of the task registered under `id` at once (Trigger.dev's
    /// `batchTrigger`), all with `options`: with a store, committed in one transaction, so
    /// 10 000 runs cost one commit, not 10 000. All or nothing: an input that is refused
    /// (unknown id, limits, schema) refuses the batch, and the error names its index.
    pub async fn trigger_batch(
        &self,
        id: &str,
        inputs: Vec<Value>,
        options: TriggerOptions,
    ) -> Result<Vec<RunHandle>, RunError> {
        let mut admitted = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.into_iter().enumerate() {
            let (descriptor, input) = self
                .admit(id, input)
                .map_err(|envelope| in_batch(*envelope, index))?;
            admitted.push((descriptor, input));
        }
        let Some((descriptor, _)) = admitted.first() else {
            return Ok(Vec::new());
        };
        let descriptor = *descriptor;
        if self.store().is_none() {
            return Ok(admitted
                .into_iter()
                .map(|(descriptor, input)| self.spawn(descriptor, input, options.clone(), None))
                .collect());
        }
        let mut runs = Vec::with_capacity(admitted.len());
        for (index, (descriptor, input)) in admitted.into_iter().enumerate() {
            let run = Runtime::new_run(descriptor, input, &options, None)
                .map_err(|e| in_batch(*e.envelope, index))?;
            runs.push(run);
        }
        self.commit(descriptor.id, runs).await
    }

    /// `runs().replay`: the original's task and input as a new run.
    pub(crate) async fn trigger_replay(
        &self,
        task: &str,
        input: Value,
        options: TriggerOptions,
        replay_of: RunId,
    ) -> Result<RunId, RunError> {
        let (descriptor, input) = self
            .admit(task, input)
            .map_err(|envelope| RunError::from_envelope(*envelope))?;
        if self.store().is_some() {
            return Ok(self
                .enqueue(descriptor, input, options, Some(replay_of))
                .await?
                .run_id);
        }
        Ok(self.spawn(descriptor, input, options, None).run_id)
    }

    /// Marks a background run executing, unless it has a delay to wait out or a time to
    /// live to check first: then the wait (boxed, so a run that starts at once carries no
    /// timer state), whose envelope says why the run may not start.
    fn start_or_wait<'a>(
        &'a self,
        task: &'static str,
        run_id: &'a RunId,
        start: Option<Box<Start>>,
        cancel: &'a CancellationToken,
    ) -> Option<std::pin::Pin<Box<impl Future<Output = Option<RunOutput<Value>>> + 'a>>> {
        match start {
            None => {
                self.set_live_status(run_id, RunStatus::Executing);
                None
            }
            Some(start) => Some(Box::pin(self.wait_to_start(task, run_id, *start, cancel))),
        }
    }

    /// Waits out the delay; refuses a run cancelled meanwhile or past its TTL.
    async fn wait_to_start(
        &self,
        task: &'static str,
        run_id: &RunId,
        start: Start,
        cancel: &CancellationToken,
    ) -> Option<RunOutput<Value>> {
        if let Some(delay) = start.delay {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => {
                    let error = TaskError::cancelled("run cancelled before it started");
                    return Some(RunOutput::refused(task, run_id.clone(), Value::Null, error));
                }
            }
        }
        if let Some((ttl, deadline)) = start.ttl
            && deadline.is_some_and(|deadline| Instant::now() > deadline)
        {
            let error = TaskError::expired(format!(
                "not started within its time to live of {}",
                humantime::format_duration(ttl)
            ));
            return Some(RunOutput::refused(task, run_id.clone(), Value::Null, error));
        }
        self.set_live_status(run_id, RunStatus::Executing);
        None
    }

    fn spawn(
        &self,
        descriptor: &'static TaskDescriptor,
        input: Value,
        options: TriggerOptions,
        key: Option<(KeyScope, Duration)>,
    ) -> RunHandle {
        let cancel = self.inner.exec.root.child_token();
        let run_id = Runtime::new_run_id();
        self.register_live(&run_id, descriptor.id, &options, &cancel);
        let (rt, id, seed_cancel) = (self.clone(), run_id.clone(), cancel.clone());
        let start = Start::of(&options);
        let key = key.map(Box::new);
        // The input waits as text (see `CompactJson`): a tenth of its size as a `Value`.
        let input = CompactJson::new(&input);
        // Until it first runs (100 000 triggers queue up faster than they run) a task holds
        // only these captures: the run's own state is boxed by `run_background`, and a
        // delayed start's by its own box.
        let task = self.inner.exec.tracker.spawn(async move {
            // The refusal is boxed: the task holds no envelope-sized slot across the run.
            let refused = match rt.start_or_wait(descriptor.id, &id, start, &seed_cancel) {
                Some(wait) => wait.await.map(Box::new),
                None => None,
            };
            let ended: Box<dyn Ended> = match refused {
                Some(refused) => refused,
                None => {
                    let seed = Seed {
                        run_id: Some(id.clone()),
                        ..Seed::root(seed_cancel)
                    };
                    descriptor.run_background(&rt.inner.exec, input, seed).await
                }
            };
            if let Some(key) = key {
                let (scope, ttl) = *key;
                rt.settle_key(&scope, ttl, &id, ended.status() == RunStatus::Completed);
            }
            rt.finish_live_ended(&id, ended)
        });
        RunHandle {
            run_id,
            task: descriptor.id,
            cancel,
            done: Done::Task(task),
        }
    }

    /// The envelope of an input refused before it could be parsed into JSON (too large, too
    /// deep, malformed, a duplicate key): `invalidInput` with the reason, or `notFound` for
    /// an unknown id.
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    pub(crate) fn refuse(&self, id: &str, error: InputError) -> RunOutput<Value> {
        let error = match self.inner.exec.registry.get(id) {
            Some(_) => error.into(),
            None => TaskError::not_found(id, self.inner.exec.registry.suggest(id)),
        };
        RunOutput::refused(id, Runtime::new_run_id(), Value::Null, error)
    }

    /// Checks everything that must hold before a run by id starts.
    #[allow(clippy::result_large_err)]
    pub(crate) fn admit(
        &self,
        id: &str,
        input: Value,
    ) -> Result<(&'static TaskDescriptor, Value), Box<RunOutput<Value>>> {
        let refused =
            |input, error| Box::new(RunOutput::refused(id, Runtime::new_run_id(), input, error));
        if !self.accepting() {
            return Err(refused(input, Runtime::shutting_down()));
        }
        let registry = &self.inner.exec.registry;
        let Some(descriptor) = registry.get(id) else {
            let error = TaskError::not_found(id, registry.suggest(id));
            return Err(refused(input, error));
        };
        match self.inner.exec.limits.check_value(&input) {
            Ok(()) => Ok((descriptor, input)),
            Err(error @ InputError::TooDeep { .. }) => {
                // Never keep, echo or recursively drop a document this deep.
                drop_deep(input);
                Err(refused(Value::Null, error.into()))
            }
            Err(error) => Err(refused(input, error.into())),
        }
    }

    /// Stops accepting runs (new ones are `rejected`), waits up to `grace` for running
    /// ones, then cancels the rest and waits for their cleanup. Returns whether every run
    /// finished within the grace period.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let exec = &self.inner.exec;
        self.inner.accepting.store(false, Ordering::Release);
        exec.tracker.close();
        tracing::info!(
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            running = exec.tracker.len(),
            "runtime shutting down"
        );
        let finished = tokio::time::timeout(grace, exec.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                running = exec.tracker.len(),
                "grace period over, cancelling running runs"
            );
            exec.root.cancel();
            exec.tracker.wait().await;
        }
        finished
    }
}

#[cfg(any(test, feature = "test-util"))]
impl crate::context::TaskContext {
    /// A context for calling a task fn directly in a unit test (feature `test-util`): a run
    /// id of its own, task id `test`, attempt 1, a fresh embedded runtime for child runs.
    /// Adjust with the `with_*` setters.
    ///
    /// ```
    /// # use task_runtime::prelude::*;
    /// let ctx = TaskContext::for_test().with_tenant("t1").with_attempt(2);
    /// assert_eq!(ctx.tenant_id(), Some("t1"));
    /// assert_eq!(ctx.attempt(), 2);
    /// assert_ne!(TaskContext::for_test().run_id(), ctx.run_id());
    /// ```
    pub fn for_test() -> Self {
        let rt = Runtime::new();
        crate::context::TaskContext::new(
            rt.inner.exec.clone(),
            Runtime::new_run_id(),
            "test",
            1,
            crate::exec::Scope::default(),
            CancellationToken::new(),
            Arc::default(),
        )
    }

    /// Sets the tenant id (test contexts).
    pub fn with_tenant(mut self, tenant_id: &str) -> Self {
        self.scope.tenant_id = Some(Arc::from(tenant_id));
        self
    }

    /// Sets the project id (test contexts).
    pub fn with_project(mut self, project_id: &str) -> Self {
        self.scope.project_id = Some(Arc::from(project_id));
        self
    }

    /// Sets the trampData (test contexts).
    pub fn with_tramp_data(mut self, tramp_data: Value) -> Self {
        self.scope.tramp_data = Some(tramp_data.into());
        self
    }

    /// Sets the attempt number (test contexts).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Runs child runs on this runtime (test contexts).
    pub fn with_runtime(mut self, runtime: &Runtime) -> Self {
        self.exec = runtime.inner.exec.clone();
        self
    }
}
