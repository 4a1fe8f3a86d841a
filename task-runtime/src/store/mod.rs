//! Where durable runs live: the [`RunStore`] seam between the engine and a database, and
//! [`Store`], the handle users connect and give to a `Runtime`.
//!
//! A run is a row: its task, tenant, status, input, the envelope once finished, attempts,
//! lease (owner, expiry, a fencing token that grows on every claim), run-at (delay),
//! expire-at (TTL), idempotency key, tags, and its place in a tree of runs (parent, root,
//! position). Every state change names the state it expects (`WHERE id = ? AND lease_token =
//! ?`), so a worker that lost its lease changes nothing; such a write is a lost race, logged,
//! never an overwrite.
//!
//! Child runs (track steps, orchestrator branches and items, `ctx.run`) are rows too, owned
//! by their root's lease. A child at a position of its parent (`step:1`, `branch:stats`,
//! `item:documents:7`) is the journal: when the root is attempted again, a child that had
//! completed there returns its recorded output instead of executing again.
//!
//! SQL lives next to its backend (`sqlite.rs`, `postgres.rs`); nothing above this module
//! names a database.

// A build without a backend (`default-features = false`) keeps the seam, which nothing
// implements then: `Store::connect` refuses every URL.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unreachable_code, unused_variables)
)]

pub(crate) mod journal;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod log_layer;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::envelope::RunOutput;
use crate::error::TaskError;
use crate::id::RunId;
use crate::runs::{RunInfo, RunStatus};
use crate::schedules::Schedule;
use crate::tokens::{TokenCompletion, WaitToken};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use log_layer::StoreLogLayer;

/// A durable store of runs, connected by URL.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use task_runtime::{Runtime, Store};
/// let store = Store::connect("sqlite://.tasks/runs.db").await?; // runs migrations
/// let rt = Runtime::builder().store(store).build()?;
/// let worker = rt.worker().concurrency(16).start();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<dyn RunStore>,
    url: Arc<str>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating when missing) the store at `url` and brings its schema up to date.
    ///
    /// `sqlite://PATH` (relative to the working directory; `sqlite:///abs/path` for an
    /// absolute one) with optional parameters `synchronous=normal|full` (default `normal`: a
    /// committed run survives the process being killed, a power cut may lose the last
    /// commits; `full` survives both, at one disk flush per commit), `busy_timeout_ms`
    /// (default 5000: how long to wait for another process's write lock) and `max_pages`
    /// (cap the file at this many pages of 4 KiB; writes beyond fail with
    /// [`StoreError::Full`], and what was committed before stays intact).
    ///
    /// `postgres://user:password@host:port/database` (or `postgresql://`; feature
    /// `postgres`), with libpq's parameters (`sslmode`, `host=/socket/dir`, ...) and
    /// `max_connections` (default 8: connections this process opens at most). Everything
    /// lives in the schema `task_runtime`, created on first connect; see
    /// [`Runtime::trigger_in`](crate::Runtime::trigger_in) to trigger inside your own
    /// transaction. A server that cannot be reached is [`StoreError::Unavailable`]; while
    /// connected, a statement whose connection died is retried on new connections for a few
    /// seconds (a server restart, a killed backend) before that error is returned.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        let inner: Arc<dyn RunStore> = match scheme {
            #[cfg(feature = "sqlite")]
            Some("sqlite") => Arc::new(sqlite::SqliteStore::connect(url).await?),
            #[cfg(feature = "postgres")]
            Some("postgres" | "postgresql") => {
                Arc::new(postgres::PostgresStore::connect(url).await?)
            }
            Some(other) => {
                return Err(StoreError::InvalidUrl {
                    url: url.to_owned(),
                    reason: format!(
                        "unknown scheme `{other}://` (this build knows: {})",
                        KNOWN_SCHEMES.join(", ")
                    ),
                });
            }
            None => {
                return Err(StoreError::InvalidUrl {
                    url: url.to_owned(),
                    reason: "expected a URL such as sqlite://.tasks/runs.db".to_owned(),
                });
            }
        };
        Ok(Store {
            inner,
            url: Arc::from(url),
        })
    }

    /// The URL it was connected with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Log lines of runs dropped because the store could not keep up (the buffer between
    /// `tracing` and the store is bounded; a full buffer drops, it never blocks a task).
    pub fn dropped_log_lines(&self) -> u64 {
        self.inner.dropped_logs()
    }

    /// A `tracing` layer that writes the events inside each run's span to this store
    /// (`runs logs <id>`, `GET /api/v1/runs/{id}/logs`). Add it to your subscriber:
    /// `tracing_subscriber::registry().with(store.log_layer()).with(fmt::layer())`.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn log_layer(&self) -> StoreLogLayer {
        StoreLogLayer::new(self.inner.clone())
    }
}

/// The URL schemes of the stores this build has (cargo features `sqlite`, `postgres`).
const KNOWN_SCHEMES: &[&str] = &[
    #[cfg(feature = "sqlite")]
    "sqlite://",
    #[cfg(feature = "postgres")]
    "postgres://",
    #[cfg(feature = "postgres")]
    "postgresql://",
];

/// Why the store could not do what was asked. Its `Display` says what and where; the serde
/// form is `{ "kind": "...", ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL cannot name a store.
    #[error("invalid store URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file or its directory cannot be opened or created (permissions, a read-only
    /// directory, a missing parent).
    #[error("cannot open the store at '{path}': {reason}")]
    Open {
        /// The file.
        path: String,
        /// The operating system's or database's reason.
        reason: String,
    },
    /// The file exists but is not a store (not SQLite, or corrupt).
    #[error("'{path}' is not a run store: {reason}")]
    NotAStore {
        /// The file.
        path: String,
        /// What the database said.
        reason: String,
    },
    /// Another process holds the store's write lock for longer than the busy timeout.
    #[error("the store at '{path}' is locked by another process (waited {waited_ms} ms)")]
    Locked {
        /// The file.
        path: String,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The store was migrated by a newer version of this library.
    #[error(
        "the store at '{path}' has schema version {found}, newer than this binary knows \
         (up to {known}): upgrade the binary"
    )]
    NewerSchema {
        /// The file.
        path: String,
        /// The store's schema version.
        found: i64,
        /// The newest this binary knows.
        known: i64,
    },
    /// The disk (or the store's size limit) is full; nothing of the failed write was kept,
    /// everything committed before is intact.
    #[error("the store at '{path}' is full: {reason}")]
    Full {
        /// The file.
        path: String,
        /// What the database said.
        reason: String,
    },
    /// The store's data is not what this library wrote (a row edited by hand?).
    #[error("the store holds a run it cannot read ({id}): {reason}")]
    Corrupt {
        /// The run.
        id: String,
        /// What could not be read.
        reason: String,
    },
    /// The database server cannot be reached, or went away and did not come back within a
    /// few seconds (it is restarting, the network is down, it has no connection to spare).
    /// Nothing of the failed call was committed, unless the server went away between
    /// committing and answering: a trigger that got this error may still have been stored.
    #[error("the store at '{url}' is unavailable: {reason}")]
    Unavailable {
        /// The store's URL, without its password.
        url: String,
        /// What the connection or the server said.
        reason: String,
    },
    /// Any other failure of the database.
    #[error("the store failed: {reason}")]
    Backend {
        /// What the database said.
        reason: String,
    },
}

/// A schedule's fire: move its next fire time from `expected` to `next` and commit `run`,
/// together; nothing when another worker moved it first.
#[derive(Debug, Clone)]
pub(crate) struct ScheduleFire {
    pub id: String,
    pub expected: SystemTime,
    pub next: Option<SystemTime>,
    pub slot: SystemTime,
    /// `None` when the task refused the schedule's input (the fire is skipped, logged).
    pub run: Option<NewRun>,
}

/// A run to commit.
#[derive(Debug, Clone)]
pub(crate) struct NewRun {
    pub id: RunId,
    pub task: String,
    pub tenant_id: Option<String>,
    pub project_id: Option<String>,
    pub input: Value,
    pub run_at: SystemTime,
    pub expire_at: Option<SystemTime>,
    pub idempotency: Option<(String, Duration)>,
    pub tags: Vec<String>,
    pub replay_of: Option<RunId>,
    /// At most this many runs of the task with this key execute at once.
    pub concurrency_key: Option<(String, u32)>,
    /// The W3C `traceparent` of the trace the run continues (`telemetry`).
    pub trace_context: Option<String>,
}

/// What `enqueue` did with one run: committed it, or found a live run with its idempotency
/// key (whose id it gives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Enqueued {
    pub id: RunId,
    pub existing: bool,
}

/// What a worker asks for.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRequest {
    pub owner: String,
    pub limit: usize,
    pub lease: Duration,
    /// Tasks with a concurrency limit: runs beyond it (across every worker of the store)
    /// are not claimed.
    pub task_limits: Vec<(String, u32)>,
}

/// A run a worker now holds.
#[derive(Debug, Clone)]
pub(crate) struct ClaimedRun {
    pub id: RunId,
    pub task: String,
    pub input: Value,
    /// The attempt this claim is (1 for the first).
    pub attempt: u32,
    pub token: i64,
    /// It waited before (a durable wait suspended it): its journal has entries to replay
    /// even on its first attempt.
    pub resumed: bool,
    /// The orchestrator that spawned it (a branch or item run on any worker): it inherits
    /// what its input leaves out (trampData, cleanup options) from there, as a child
    /// executed inside its parent's attempt does.
    pub spawned_by: Option<RunId>,
    /// The `traceparent` stored with it: its spans continue that trace.
    pub trace_context: Option<String>,
}

/// What a claim took, and when the next queued run is due (`None`: nothing queued).
#[derive(Debug, Clone, Default)]
pub(crate) struct Claimed {
    pub runs: Vec<ClaimedRun>,
    pub next_due: Option<SystemTime>,
}

/// A lease a worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub id: RunId,
    pub token: i64,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeartbeatReply {
    /// Leases that are no longer ours (reclaimed after expiring): stop those runs.
    pub lost: Vec<RunId>,
    /// Runs someone asked to cancel.
    pub cancel: Vec<RunId>,
}

/// How an attempt ends, as written to the store (each fenced by the lease token).
#[derive(Debug, Clone)]
pub(crate) enum Settle {
    /// Finished: completed, failed or cancelled, with its envelope.
    Finish {
        id: RunId,
        token: i64,
        envelope: Box<RunOutput<Value>>,
        /// Reclaiming another worker's lease: only if it still expired before this (a
        /// stalled worker that heartbeats again keeps its run).
        expired_before: Option<SystemTime>,
    },
    /// Failed with retries left: queued again for `run_at`.
    Retry {
        id: RunId,
        token: i64,
        run_at: SystemTime,
        error: TaskError,
        /// See `Finish`.
        expired_before: Option<SystemTime>,
    },
    /// The worker stops before the run finished: back to the queue, the attempt not
    /// counted.
    Release { id: RunId, token: i64 },
    /// The run waits (a durable sleep or token wait): `waiting` until `wake_at`, or until
    /// `wait_token` is completed (at once if it already is), holding no lease, the attempt
    /// not counted.
    Suspend {
        id: RunId,
        token: i64,
        wake_at: SystemTime,
        wait_token: Option<String>,
        /// Waiting for its spawned children (an orchestrator's branches and items run as
        /// runs of their own): woken at once when the condition already holds, else by the
        /// settle of the child that makes it hold.
        children: Option<ChildWait>,
    },
}

/// When a parent waiting for its spawned children is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildWait {
    /// When at most this many of its children are unfinished (0: all of them ended).
    pub open_at_most: u32,
    /// Or when one of them failed (fail-fast: the parent cancels the others).
    pub on_failure: bool,
}

/// A child run an orchestrator enqueues for any worker to claim: a row of its own, queued,
/// at `position` of its parent (unique there: enqueued again, it is not enqueued twice).
#[derive(Debug, Clone)]
pub(crate) struct NewChild {
    pub id: RunId,
    pub position: String,
    pub task: String,
    pub tenant_id: Option<String>,
    pub project_id: Option<String>,
    pub input: Value,
    /// The parent's attempt that queues it.
    pub parent_attempt: u32,
    /// The child exists at its position already and failed in an earlier attempt of the
    /// parent: queue that row again (fresh attempts, its journal kept) instead of a new one.
    pub again: bool,
    /// The `traceparent` of the parent's attempt: the child's spans continue its trace.
    pub trace_context: Option<String>,
}

impl Settle {
    pub(crate) fn id(&self) -> &RunId {
        match self {
            Settle::Finish { id, .. }
            | Settle::Retry { id, .. }
            | Settle::Release { id, .. }
            | Settle::Suspend { id, .. } => id,
        }
    }

    /// The fencing token of the attempt this settles.
    pub(crate) fn token(&self) -> i64 {
        match self {
            Settle::Finish { token, .. }
            | Settle::Retry { token, .. }
            | Settle::Release { token, .. }
            | Settle::Suspend { token, .. } => *token,
        }
    }
}

/// An executing run whose lease expired (its worker is gone).
#[derive(Debug, Clone)]
pub(crate) struct ExpiredLease {
    pub id: RunId,
    pub task: String,
    pub input: Value,
    pub token: i64,
    pub attempt: u32,
    pub owner: String,
}

/// A run not started before its time to live ran out.
#[derive(Debug, Clone)]
pub(crate) struct ExpiredRun {
    pub id: RunId,
    pub task: String,
    pub input: Value,
    pub expire_at: SystemTime,
}

/// What the journal recorded at one position of one parent.
#[derive(Debug, Clone)]
pub(crate) struct JournalEntry {
    pub parent: RunId,
    pub position: String,
    pub id: RunId,
    /// The task (or, for `ctx.step`, the step's name) recorded at the position.
    pub task: String,
    /// The recorded output, when the child completed.
    pub output: Option<Value>,
    pub attempts: u32,
    pub duration_ms: u64,
    /// The recorded input of a durable wait (`wait:*` entries only): its wake time or
    /// deadline, fixed when the wait began.
    pub input: Option<Value>,
    /// A child spawned as a run of its own (see [`NewChild`]): whether it ended, and its
    /// error when it ended without an output.
    pub spawned: Option<SpawnedEnd>,
}

/// What a journal row says of its position: the output to replay (a journaled child's
/// `completed` output, or a spawned child's results), and where a spawned child stands.
/// `completed` is the row's output column when its status is `completed`; `envelope` is a
/// spawned child's once it ended; `spawn_attempt` the parent's attempt that queued it.
pub(crate) fn journal_outcome(
    spawned: bool,
    envelope: Option<RunOutput<Value>>,
    completed: Option<Value>,
    spawn_attempt: u32,
) -> (Option<Value>, Option<SpawnedEnd>) {
    match (spawned, envelope) {
        (false, _) => (completed, None),
        (true, None) => (None, Some(SpawnedEnd::Open)),
        (true, Some(envelope)) => match envelope.job.error_detail {
            None => (Some(envelope.results), Some(SpawnedEnd::Completed)),
            Some(error) => (None, Some(SpawnedEnd::Failed(error, spawn_attempt))),
        },
    }
}

/// Where a spawned child stands, as its parent's journal sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SpawnedEnd {
    /// Queued, executing or waiting.
    Open,
    /// Completed: its output is the entry's `output`.
    Completed,
    /// Failed, cancelled or expired, with the error of its envelope, in this attempt of
    /// the parent (the one that queued it last).
    Failed(TaskError, u32),
}

/// A write of the journal, fenced by the root's lease token.
#[derive(Debug, Clone)]
pub(crate) enum JournalOp {
    /// A child starts (or starts again, with the same id).
    Start {
        root: RunId,
        token: i64,
        id: RunId,
        parent: RunId,
        position: Option<String>,
        task: String,
        tenant_id: Option<String>,
        project_id: Option<String>,
        input: Value,
        at: SystemTime,
    },
    /// A child ended.
    Finish {
        root: RunId,
        token: i64,
        id: RunId,
        status: RunStatus,
        output: Option<Value>,
        error: Option<TaskError>,
        attempts: u32,
        at: SystemTime,
    },
}

/// One log line of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LogLine {
    /// The run the event happened in.
    pub run_id: RunId,
    /// When.
    #[serde(with = "crate::envelope::rfc3339")]
    pub at: SystemTime,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The event's message.
    pub message: String,
    /// The event's other fields.
    pub fields: Value,
}

/// An API key as stored: never the key itself, only its SHA-256 hash (hex).
#[cfg(feature = "http")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiKeyRow {
    pub id: String,
    pub tenant_id: String,
    pub hash: String,
    pub last_four: String,
    pub created_at: SystemTime,
    pub revoked_at: Option<SystemTime>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunFilter {
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Only runs of this task.
    pub task: Option<String>,
    /// Only runs of this tenant.
    pub tenant: Option<String>,
    /// Only runs carrying this tag.
    pub tag: Option<String>,
    /// Only runs older than this one (the cursor of the previous page).
    pub before: Option<RunId>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<usize>,
}

impl RunFilter {
    /// Every top-level run, newest first.
    pub fn new() -> Self {
        RunFilter::default()
    }

    /// Only runs in `status`.
    pub fn status(mut self, status: RunStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only runs of `task`.
    pub fn task(mut self, task: impl Into<String>) -> Self {
        self.task = Some(task.into());
        self
    }

    /// Only runs of `tenant`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Only runs tagged `tag`.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Only runs older than `cursor`.
    pub fn before(mut self, cursor: RunId) -> Self {
        self.before = Some(cursor);
        self
    }

    /// At most `limit` runs.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn page_size(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 1000)
    }
}

/// What cancelling a run did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// It had not started: it is `cancelled` now.
    Cancelled,
    /// It is executing: its worker stops it within a heartbeat.
    Requested,
    /// It had already finished, with this status.
    AlreadyFinished(RunStatus),
    /// No run has this id.
    NotFound,
}

/// The seam between the engine and a database: every read and write of durable runs.
/// Implemented next to its backend.
pub(crate) trait RunStore: Send + Sync + 'static {
    /// Commits `runs` in one transaction; a live run holding the same idempotency key (task,
    /// tenant, key) is returned instead of committing a second one.
    fn enqueue(&self, runs: Vec<NewRun>) -> BoxFuture<'_, Result<Vec<Enqueued>, StoreError>>;

    /// Claims due runs (queued, run-at passed, not expired), oldest first, in one statement;
    /// says when the next queued run is due.
    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claimed, StoreError>>;

    /// Extends the leases still ours; says which are lost and which are asked to cancel.
    fn heartbeat(
        &self,
        owner: String,
        leases: Vec<Lease>,
        extend: Duration,
    ) -> BoxFuture<'_, Result<HeartbeatReply, StoreError>>;

    /// Writes how attempts ended; `false` for a write whose lease token no longer matches.
    /// Shared, so a caller can try again without copying the envelopes.
    fn settle(&self, outcomes: Arc<Vec<Settle>>) -> BoxFuture<'_, Result<Vec<bool>, StoreError>>;

    /// Executing runs whose lease expired before `now`.
    fn expired_leases(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ExpiredLease>, StoreError>>;

    /// Queued runs whose time to live ran out before `now`.
    fn expired_runs(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ExpiredRun>, StoreError>>;

    /// Ends queued runs that expired, or were cancelled, without running (only while they
    /// are still queued); `false` for one that started meanwhile.
    fn end_queued(
        &self,
        ends: Vec<(RunId, Box<RunOutput<Value>>)>,
    ) -> BoxFuture<'_, Result<Vec<bool>, StoreError>>;

    /// One run.
    fn get(&self, id: RunId) -> BoxFuture<'_, Result<Option<RunInfo>, StoreError>>;

    /// Top-level runs, newest first.
    fn list(&self, filter: RunFilter) -> BoxFuture<'_, Result<Vec<RunInfo>, StoreError>>;

    /// The child runs of `parent`, in the order they started.
    fn children(&self, parent: RunId) -> BoxFuture<'_, Result<Vec<RunInfo>, StoreError>>;

    /// Asks for a run to be cancelled: one still queued is ended at once with `envelope`.
    fn cancel(
        &self,
        id: RunId,
        envelope: Box<RunOutput<Value>>,
    ) -> BoxFuture<'_, Result<CancelOutcome, StoreError>>;

    /// Every journal entry under `root`.
    fn journal(&self, root: RunId) -> BoxFuture<'_, Result<Vec<JournalEntry>, StoreError>>;

    /// Whether this store runs an orchestrator's children as runs of their own, claimed by
    /// any worker ([`spawn`](Self::spawn)); otherwise they execute inside the parent's
    /// attempt.
    fn spawns_children(&self) -> bool {
        false
    }

    /// Enqueues the children of `parent` (a root run whose lease `token` holds) in chunks
    /// of multi-row statements; a position that already has a child keeps it. Says how many
    /// were new. Only called when [`spawns_children`](Self::spawns_children) says so.
    fn spawn(
        &self,
        parent: RunId,
        token: i64,
        children: Vec<NewChild>,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        let _ = (parent, token, children);
        Box::pin(async {
            Err(StoreError::Backend {
                reason: "this store does not run children as runs of their own".to_owned(),
            })
        })
    }

    /// Queues journal writes; they are committed in order with the store's other writes,
    /// before any later settle of the root.
    fn record(&self, op: JournalOp);

    /// Resolves once every journal write recorded before the call is committed (a durable
    /// step's output is on disk before the task goes on).
    fn sync_journal(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Queues log lines (bounded: beyond the buffer they are dropped and counted).
    fn log(&self, line: LogLine);

    /// Log lines dropped so far.
    fn dropped_logs(&self) -> u64;

    /// Top-level runs waiting for a worker: queued ones and delayed ones whose time has come,
    /// and the earliest time one of the due ones became due (metrics' queue depth and age).
    #[cfg(feature = "metrics")]
    fn queue_stats(
        &self,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<crate::metrics::QueueStats, StoreError>>;

    /// Stores a new API key (its hash).
    #[cfg(feature = "http")]
    fn insert_api_key(&self, key: ApiKeyRow) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The API key with this id (`Some`), or every key, oldest first (`None`).
    #[cfg(feature = "http")]
    fn api_keys(&self, id: Option<String>) -> BoxFuture<'_, Result<Vec<ApiKeyRow>, StoreError>>;

    /// Revokes a key; `false` when no live key has this id.
    #[cfg(feature = "http")]
    fn revoke_api_key(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// A run's log lines, in order.
    fn logs(&self, id: RunId) -> BoxFuture<'_, Result<Vec<LogLine>, StoreError>>;

    /// Brings the declared schedules in step with `declared` (the code's): adds new ones,
    /// updates changed patterns (their next fire time with them), and deletes the declared
    /// schedules of `known_tasks` that no longer declare one.
    #[cfg_attr(not(feature = "cron"), allow(dead_code))]
    fn sync_schedules(
        &self,
        declared: Vec<Schedule>,
        known_tasks: Vec<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Stores a created schedule.
    #[cfg_attr(not(feature = "cron"), allow(dead_code))]
    fn create_schedule(&self, schedule: Schedule) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every schedule, by id.
    fn list_schedules(&self) -> BoxFuture<'_, Result<Vec<Schedule>, StoreError>>;

    /// Deletes a created schedule; `false` when there is none with this id.
    fn delete_schedule(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Schedules whose next fire time is at or before `now`.
    #[cfg_attr(not(feature = "cron"), allow(dead_code))]
    fn due_schedules(&self, now: SystemTime) -> BoxFuture<'_, Result<Vec<Schedule>, StoreError>>;

    /// Fires a schedule (see [`ScheduleFire`]): the run's id, `None` when another worker
    /// fired it first.
    #[cfg_attr(not(feature = "cron"), allow(dead_code))]
    fn fire_schedule(&self, fire: ScheduleFire)
    -> BoxFuture<'_, Result<Option<RunId>, StoreError>>;

    /// Stores a new wait token.
    fn create_token(&self, token: WaitToken) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The token with this id (its stored status: `waiting` or `completed`).
    fn get_token(&self, id: String) -> BoxFuture<'_, Result<Option<WaitToken>, StoreError>>;

    /// Completes a token, in one transaction with waking the run waiting for it, unless it
    /// was completed before, its timeout passed (at `now`), or its run was cancelled.
    fn complete_token(
        &self,
        id: String,
        data: Value,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<TokenCompletion, StoreError>>;

    /// Queues the waiting runs whose wake time is at or before `now`; says how many, and
    /// when the next waiting run is due.
    fn wake_waiting(
        &self,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<(usize, Option<SystemTime>), StoreError>>;

    /// A mark of the changes seen so far: take it before reading (a claim, a get), then
    /// pass it to [`changed`](Self::changed), so a change that lands between the read and
    /// the wait is not slept through. Each caller holds its own mark: one caller noticing
    /// a change hides it from no other.
    fn change_mark(&self) -> u64;

    /// Resolves when the store may have changed since `since` (a write by this process, or
    /// by another one seen through polling or a notification), or after `within`.
    fn changed(&self, since: u64, within: Duration) -> BoxFuture<'_, ()>;

    /// Whether [`change_mark`](Self::change_mark) moves for every change, other processes'
    /// included (PostgreSQL while its `LISTEN` connection is up): an unchanged mark then
    /// means nothing became claimable. `false` (the default): other processes' changes are
    /// only found by [`changed`](Self::changed) looking (SQLite polls).
    fn mark_counts_every_change(&self) -> bool {
        false
    }

    /// Runs someone asked to cancel, as the store hears of them (PostgreSQL's `NOTIFY`), so
    /// that the worker executing one stops it at once instead of at its next heartbeat.
    /// `None`: the store has no such channel (heartbeats carry the requests).
    fn cancel_requests(&self) -> Option<tokio::sync::broadcast::Receiver<RunId>> {
        None
    }
}

/// Milliseconds since the epoch, as stored.
pub(crate) fn millis(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time of stored milliseconds.
pub(crate) fn time(millis: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// `at + by`, saturating far in the future (a TTL of `Duration::MAX` never expires).
pub(crate) fn later(at: SystemTime, by: Duration) -> SystemTime {
    at.checked_add(by)
        .unwrap_or_else(|| SystemTime::UNIX_EPOCH + Duration::from_millis(i64::MAX as u64))
}
