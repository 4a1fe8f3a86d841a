//! `PostgresStore`: many workers on many machines sharing one PostgreSQL database.
//!
//! Everything lives in a schema of its own, `task_runtime` (tables `runs`, `run_logs`, the
//! migrations table `_migrations`, and the `claim` function), so it sits beside an
//! application's own tables, and its own sqlx migrations, without colliding. Migrations are
//! embedded and run on connect under sqlx's advisory lock, so workers starting at once
//! apply each migration once.
//!
//! Where the round trips go (each statement below is one, and commits on its own):
//!
//! - **Triggers** from one process are batched: a task takes every trigger waiting and
//!   inserts them with one `INSERT .. SELECT FROM unnest(..)` that also `NOTIFY`s idle
//!   workers (a trigger with an idempotency key adds two statements, in one transaction).
//!   [`trigger_in`](crate::Runtime::trigger_in) does the same inside the caller's own
//!   transaction: the run exists if and only if that transaction commits.
//! - **Claims** are one call of `task_runtime.claim(..)`: an `UPDATE .. FROM (SELECT ..
//!   FOR UPDATE SKIP LOCKED LIMIT n) RETURNING ..` over the partial index of due runs,
//!   plus, for tasks with a concurrency limit and runs with a concurrency key, advisory
//!   locks that serialize the claimers of one queue (see the migration for why that needs a
//!   function), and when the next queued run is due. A claim alone commits without waiting
//!   for the disk (`synchronous_commit = off`): one lost to a server crash only makes its
//!   runs claimable again, and its token, at least the server's clock in milliseconds, is
//!   never handed out twice. Triggers, settles, heartbeats and journal writes wait.
//! - **Settles** of a worker's finished attempts are one statement for the whole batch
//!   (`UPDATE .. FROM unnest(..)`, one per kind of ending, joined in one `WITH`), each row
//!   fenced by its lease token. Journal writes recorded before a settle are committed
//!   before it, batched the same way.
//! - **Wake-ups**: a `LISTEN` connection of its own turns the `NOTIFY`s of triggers,
//!   settles and cancels into [`changed`](RunStore::changed), except those sent by the
//!   store's own connections (the write that sent one woke this process when it returned);
//!   when it is down, `changed` falls back to polling. A cancel of an executing run reaches
//!   its worker at once through `NOTIFY` (and, as on SQLite, through the next heartbeat's
//!   reply).
//! - **Reconnects**: connections are kept by the store itself (no ping before or after each
//!   use, which would double the round trips). A statement that fails because its
//!   connection died drops every idle connection (a restarted server or a killed backend
//!   leaves them all dead) and is retried on a new one for up to [`RECONNECT_FOR`]; the
//!   listener reconnects on its own.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr};
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

#[cfg(feature = "http")]
use super::ApiKeyRow;
use super::{
    CancelOutcome, ChildWait, ClaimRequest, Claimed, ClaimedRun, Enqueued, ExpiredLease,
    ExpiredRun, HeartbeatReply, JournalEntry, JournalOp, Lease, LogLine, NewChild, NewRun,
    RunFilter, RunInfo, RunStore, ScheduleFire, Settle, StoreError, journal_outcome, later, millis,
    time,
};
use crate::envelope::RunOutput;
use crate::exec::seed::lock;
use crate::id::RunId;
use crate::runs::RunStatus;
use crate::schedules::Schedule;
use crate::tokens::{TokenCompletion, TokenStatus, WaitToken};

/// The migrations, embedded: version, description and SQL.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "runs", include_str!("postgres/0001_runs.sql")),
    (2, "schedules", include_str!("postgres/0002_schedules.sql")),
    (3, "api keys", include_str!("postgres/0003_api_keys.sql")),
    (4, "waits", include_str!("postgres/0004_waits.sql")),
    (5, "children", include_str!("postgres/0005_children.sql")),
    (
        6,
        "trace context",
        include_str!("postgres/0006_trace_context.sql"),
    ),
    (
        7,
        "generic plans",
        include_str!("postgres/0007_generic_plans.sql"),
    ),
];

/// The schema everything lives in.
const SCHEMA: &str = "task_runtime";

/// The channel of `NOTIFY`: an empty payload says "runs changed", `cancel:<id>` asks the
/// worker executing a run to stop it.
const CHANNEL: &str = "task_runtime";

/// The `application_name` of the store's connections (`pg_stat_activity` shows it).
const APPLICATION_NAME: &str = "task-runtime";

/// How long a statement whose connection died is retried on new connections (a
/// `pg_ctl restart` takes a second or two on this kind of machine).
pub(crate) const RECONNECT_FOR: Duration = Duration::from_secs(5);

/// How often `changed` looks by itself while the `LISTEN` connection is down.
const POLL_FALLBACK: Duration = Duration::from_millis(100);

/// Log lines waiting to be written; beyond this they are dropped and counted.
const LOG_BUFFER: usize = 16_384;

/// Triggers, and log lines, written by one statement at most.
const BATCH: usize = 1024;

pub(crate) struct PostgresStore {
    shared: Arc<Shared>,
    triggers: mpsc::UnboundedSender<Trigger>,
    logs: mpsc::Sender<LogLine>,
    dropped: Arc<AtomicU64>,
    journal: Arc<JournalQueue>,
    cancels: broadcast::Sender<RunId>,
    /// Stops the background tasks when the store is dropped.
    _stop: DropGuard,
}

/// What the store and its background tasks share.
struct Shared {
    /// The URL without its password, for messages.
    url: String,
    conns: Conns,
    changes: Changes,
}

type Trigger = (
    Vec<NewRun>,
    oneshot::Sender<Result<Vec<Enqueued>, StoreError>>,
);

/// The parts of a `postgres://` URL this store reads itself; the rest goes to sqlx.
struct Url {
    options: PgConnectOptions,
    max_connections: usize,
    redacted: String,
}

fn parse_url(url: &str) -> Result<Url, StoreError> {
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: redact(url),
        reason,
    };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut max_connections = 8;
    let mut passed = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "max_connections" => {
                max_connections = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        invalid(format!(
                            "max_connections must be a number from 1 to 1000, got `{value}`"
                        ))
                    })?;
            }
            _ => passed.push(pair),
        }
    }
    let rest = if passed.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", passed.join("&"))
    };
    let options = PgConnectOptions::from_str(&rest)
        .map_err(|e| invalid(e.to_string()))?
        .application_name(APPLICATION_NAME);
    Ok(Url {
        options,
        max_connections,
        redacted: redact(url),
    })
}

/// `url` with its password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Whether `error` means the connection (or the server) is gone, so that the statement may
/// succeed on a new connection.
fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // admin_shutdown, crash_shutdown, cannot_connect_now, connection exceptions
            matches!(&*code, "57P01" | "57P02" | "57P03") || code.starts_with("08")
        }
        _ => false,
    }
}

/// What a database error means for the user.
pub(crate) fn classify(url: &str, error: &sqlx::Error) -> StoreError {
    let url = url.to_owned();
    if let sqlx::Error::Database(db) = error {
        let code = db.code().unwrap_or_default();
        let reason = format!("{} (SQLSTATE {code})", db.message());
        return match &*code {
            // disk_full, out_of_memory, program_limit_exceeded
            "53100" | "53200" | "54000" => StoreError::Full { path: url, reason },
            // too_many_connections, admin or crash shutdown, starting up
            "53300" | "57P01" | "57P02" | "57P03" => StoreError::Unavailable { url, reason },
            code if code.starts_with("08") => StoreError::Unavailable { url, reason },
            // bad password, no such role or database, no privilege
            "28P01" | "28000" | "3D000" | "42501" => StoreError::Open { path: url, reason },
            // lock_not_available
            "55P03" => StoreError::Locked {
                path: url,
                waited_ms: 0,
            },
            // undefined_table, invalid_schema_name, or our function missing: not migrated
            "42P01" | "3F000" | "42883" if code != "42883" || db.message().contains(SCHEMA) => {
                StoreError::NotAStore {
                    path: url,
                    reason: format!(
                        "{reason}: the database has no run store (connect a Store to it once, \
                     which creates it)"
                    ),
                }
            }
            _ => StoreError::Backend { reason },
        };
    }
    match error {
        sqlx::Error::Io(io) => StoreError::Unavailable {
            url,
            reason: io.to_string(),
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable {
                url,
                reason: error.to_string(),
            }
        }
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => StoreError::Open {
            path: url,
            reason: error.to_string(),
        },
        other => StoreError::Backend {
            reason: other.to_string(),
        },
    }
}

fn migrator() -> Migrator {
    let mut migrator = Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    (*description).into(),
                    MigrationType::Simple,
                    (*sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    migrator.create_schema(SCHEMA);
    migrator.dangerous_set_table_name(format!("{SCHEMA}._migrations"));
    migrator
}

/// Runs the migrations. sqlx holds an advisory lock (`pg_advisory_lock`) while it checks and
/// applies them, so several workers starting at once apply each migration once, in order.
async fn migrate(conn: &mut PgConnection, url: &str) -> Result<(), StoreError> {
    let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    match migrator().run(&mut *conn).await {
        Ok(()) => Ok(()),
        Err(sqlx::migrate::MigrateError::VersionMissing(found)) => Err(StoreError::NewerSchema {
            path: url.to_owned(),
            found,
            known,
        }),
        Err(sqlx::migrate::MigrateError::Execute(e)) => Err(classify(url, &e)),
        Err(other) => Err(StoreError::Backend {
            reason: format!("migrating the store: {other}"),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Connections

/// The store's own connections: at most `slots` in use, idle ones kept for the next
/// statement. Unlike sqlx's pool it pings neither before nor after a use; a connection that
/// failed is dropped instead of being returned.
struct Conns {
    options: PgConnectOptions,
    idle: Mutex<Vec<Conn>>,
    slots: Semaphore,
    own: Arc<OwnBackends>,
}

/// The server processes (`pg_backend_pid()`) behind this store's open connections. A
/// `NOTIFY` one of them sent is a write of this process, which woke this process's waiters
/// when it returned: the listener skips its wake-up instead of having every waiter look a
/// second time (measured: a worker claimed five times per run, four of them empty).
#[derive(Default)]
struct OwnBackends(Mutex<Vec<u32>>);

impl OwnBackends {
    fn contains(&self, pid: u32) -> bool {
        lock(&self.0).contains(&pid)
    }
}

/// One of the store's connections, with its server process id (forgotten when it closes:
/// after a server restart, another process's connection may get the same id).
struct Conn {
    conn: PgConnection,
    pid: u32,
    own: Arc<OwnBackends>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut pids = lock(&self.own.0);
        if let Some(at) = pids.iter().position(|p| *p == self.pid) {
            pids.swap_remove(at);
        }
    }
}

/// A connection in use; back to the idle ones on drop only if it is known to be healthy.
struct Held<'a> {
    conns: &'a Conns,
    conn: Option<Conn>,
    healthy: bool,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.healthy
            && let Some(conn) = self.conn.take()
        {
            lock(&self.conns.idle).push(conn);
        }
    }
}

impl Conns {
    fn new(options: PgConnectOptions, max: usize) -> Self {
        Conns {
            options,
            idle: Mutex::default(),
            slots: Semaphore::new(max),
            own: Arc::default(),
        }
    }

    /// Takes a connection opened elsewhere (the one that migrated) as one of its own.
    async fn adopt(&self, mut conn: PgConnection) -> Result<Conn, sqlx::Error> {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        let pid = u32::try_from(pid).unwrap_or_default();
        lock(&self.own.0).push(pid);
        Ok(Conn {
            conn,
            pid,
            own: self.own.clone(),
        })
    }

    async fn get(&self) -> Result<Held<'_>, sqlx::Error> {
        let slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = lock(&self.idle).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                self.adopt(PgConnection::connect_with(&self.options).await?)
                    .await?
            }
        };
        Ok(Held {
            conns: self,
            conn: Some(conn),
            healthy: false,
            _slot: slot,
        })
    }

    /// Drops every idle connection (after one died, the others likely did too).
    fn forget_idle(&self) {
        lock(&self.idle).clear();
    }
}

impl Shared {
    fn fail(&self, error: &sqlx::Error) -> StoreError {
        classify(&self.url, error)
    }

    /// Runs `op` on a connection; a connection error is retried on new connections for up
    /// to [`RECONNECT_FOR`]. `op` may run more than once, so it clones what it binds.
    async fn run<T>(
        &self,
        op: impl Fn(&mut PgConnection) -> BoxFuture<'_, Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + RECONNECT_FOR;
        let mut backoff = Duration::ZERO;
        loop {
            let error = match self.conns.get().await {
                Ok(mut held) => {
                    let outcome = match held.conn.as_mut() {
                        Some(conn) => op(&mut conn.conn).await,
                        None => Err(sqlx::Error::PoolClosed),
                    };
                    match outcome {
                        Ok(value) => {
                            held.healthy = true;
                            return Ok(value);
                        }
                        Err(error) => {
                            // A statement the server refused leaves the connection usable
                            // (sqlx rolls back an unfinished transaction on its next use).
                            held.healthy = !is_connection_error(&error);
                            error
                        }
                    }
                }
                Err(error) => error,
            };
            if !is_connection_error(&error) || Instant::now() + backoff >= deadline {
                return Err(self.fail(&error));
            }
            self.conns.forget_idle();
            tracing::debug!(error = %self.fail(&error), retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(0), "store connection lost, retrying on a new one");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).clamp(Duration::from_millis(25), Duration::from_millis(400));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Wake-ups

/// Notifications seen so far (each caller compares its own mark, see
/// [`RunStore::change_mark`]), and who waits for the next one.
#[derive(Default)]
struct Changes {
    generation: AtomicU64,
    notify: Notify,
    listening: AtomicBool,
}

impl Changes {
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }
}

async fn connect_listener(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Turns `NOTIFY`s into wake-ups and cancel requests; reconnects when the connection or the
/// server goes away.
async fn listen(shared: Arc<Shared>, cancels: broadcast::Sender<RunId>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = tokio::select! {
            connected = connect_listener(&shared.conns.options) => connected,
            _ = stop.cancelled() => return,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(error = %shared.fail(&error), "LISTEN connection failed; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        shared.changes.listening.store(true, Ordering::Release);
        // Whatever happened while nobody listened: look again.
        shared.changes.bump();
        loop {
            let next = tokio::select! {
                next = listener.try_recv() => next,
                _ = stop.cancelled() => return,
            };
            match next {
                Ok(Some(notification)) => {
                    if let Some(id) = notification.payload().strip_prefix("cancel:")
                        && let Ok(id) = id.parse::<RunId>()
                    {
                        let _ = cancels.send(id);
                    }
                    // A write of this process woke its waiters already.
                    if !shared.conns.own.contains(notification.process_id()) {
                        shared.changes.bump();
                    }
                }
                // The connection was lost and made again: notifications may have been missed.
                Ok(None) => shared.changes.bump(),
                Err(error) => {
                    tracing::debug!(error = %shared.fail(&error), "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
        shared.changes.listening.store(false, Ordering::Release);
        shared.changes.bump();
    }
}

// ---------------------------------------------------------------------------------------
// Connect

impl PostgresStore {
    pub(crate) async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let Url {
            options,
            max_connections,
            redacted,
        } = parse_url(url)?;
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(|e| classify(&redacted, &e))?;
        migrate(&mut conn, &redacted).await?;
        let shared = Arc::new(Shared {
            url: redacted,
            conns: Conns::new(options, max_connections),
            changes: Changes::default(),
        });
        let conn = shared
            .conns
            .adopt(conn)
            .await
            .map_err(|e| shared.fail(&e))?;
        lock(&shared.conns.idle).push(conn);
        let stop = CancellationToken::new();
        let (triggers, trigger_queue) = mpsc::unbounded_channel();
        let (logs, log_queue) = mpsc::channel(LOG_BUFFER);
        let (cancels, _) = broadcast::channel(1024);
        let journal = Arc::new(JournalQueue::default());
        tokio::spawn(trigger_task(shared.clone(), trigger_queue));
        tokio::spawn(log_task(shared.clone(), log_queue));
        tokio::spawn(journal_task(shared.clone(), journal.clone(), stop.clone()));
        tokio::spawn(listen(shared.clone(), cancels.clone(), stop.clone()));
        Ok(PostgresStore {
            shared,
            triggers,
            logs,
            dropped: Arc::default(),
            journal,
            cancels,
            _stop: stop.drop_guard(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Triggers

/// Takes every trigger waiting and commits them together.
async fn trigger_task(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Trigger>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let waiting = std::mem::take(&mut batch);
        let mut sizes = Vec::with_capacity(waiting.len());
        let mut replies = Vec::with_capacity(waiting.len());
        let mut runs = Vec::new();
        for (these, reply) in waiting {
            sizes.push(these.len());
            replies.push(reply);
            runs.extend(these);
        }
        let runs = Arc::new(runs);
        let keyed = runs.iter().any(|r| r.idempotency.is_some());
        let result = shared
            .run(|conn| {
                let runs = runs.clone();
                Box::pin(async move {
                    if keyed {
                        let mut tx = conn.begin().await?;
                        let out = insert_runs(&mut tx, &runs).await?;
                        tx.commit().await?;
                        Ok(out)
                    } else {
                        insert_runs(conn, &runs).await
                    }
                })
            })
            .await;
        if result.is_ok() {
            shared.changes.bump();
        }
        match result {
            Ok(enqueued) => {
                let mut enqueued = enqueued.into_iter();
                for (size, reply) in sizes.into_iter().zip(replies) {
                    let _ = reply.send(Ok(enqueued.by_ref().take(size).collect()));
                }
            }
            Err(error) => {
                tracing::warn!(%error, runs = runs.len(), "storing triggered runs failed");
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn to_i64(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Inserts `runs` on `conn` (in the caller's transaction, if it has one; one with
/// idempotency keys needs one) and notifies idle workers when that commits. A run holding
/// a live run's idempotency key is not inserted: that run's id is the answer.
const SCHEDULE_COLUMNS: &str = "id, task, cron, timezone, tenant_id, project_id, external_id,
     declared, next_fire_at, last_fired_at, created_at";

fn schedule_of(row: &PgRow) -> Result<Schedule, sqlx::Error> {
    Ok(Schedule {
        id: row.try_get("id")?,
        task: row.try_get("task")?,
        cron: row.try_get("cron")?,
        timezone: row.try_get("timezone")?,
        tenant_id: row.try_get("tenant_id")?,
        project_id: row.try_get("project_id")?,
        external_id: row.try_get("external_id")?,
        declared: row.try_get("declared")?,
        next_fire_at: row.try_get::<Option<i64>, _>("next_fire_at")?.map(time),
        last_fired_at: row.try_get::<Option<i64>, _>("last_fired_at")?.map(time),
        created_at: time(row.try_get("created_at")?),
    })
}

async fn insert_schedule(
    conn: &mut PgConnection,
    s: &Schedule,
    on_conflict: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO task_runtime.schedules ({SCHEDULE_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) {on_conflict}"
    )))
    .bind(&s.id)
    .bind(&s.task)
    .bind(&s.cron)
    .bind(&s.timezone)
    .bind(&s.tenant_id)
    .bind(&s.project_id)
    .bind(&s.external_id)
    .bind(s.declared)
    .bind(s.next_fire_at.map(millis))
    .bind(s.last_fired_at.map(millis))
    .bind(millis(s.created_at))
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

pub(crate) async fn insert_runs(
    conn: &mut PgConnection,
    runs: &[NewRun],
) -> Result<Vec<Enqueued>, sqlx::Error> {
    let now = millis(SystemTime::now());
    let keyed: Vec<usize> = (0..runs.len())
        .filter(|&i| runs[i].idempotency.is_some())
        .collect();
    let key_of = |i: &usize| {
        let run = &runs[*i];
        let key = run.idempotency.as_ref().map(|(k, _)| k.clone());
        (run.task.clone(), run.tenant_id.clone(), key)
    };
    if !keyed.is_empty() {
        // A failed, cancelled or expired holder, or one past its key's TTL, gives the key up.
        let (tasks, tenants, keys): (Vec<_>, Vec<_>, Vec<_>) = keyed.iter().map(key_of).collect();
        sqlx::query(
            "UPDATE task_runtime.runs r SET idempotency_key = NULL
               FROM unnest($1::text[], $2::text[], $3::text[]) AS k(task, tenant_id, key)
              WHERE r.task = k.task AND coalesce(r.tenant_id, '') = coalesce(k.tenant_id, '')
                AND r.idempotency_key = k.key
                AND (r.status IN ('failed', 'cancelled', 'expired')
                     OR (r.idempotency_expires_at IS NOT NULL AND r.idempotency_expires_at <= $4))",
        )
        .bind(tasks)
        .bind(tenants)
        .bind(keys)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    let inserted: Vec<Option<String>> = sqlx::query_scalar(
        "WITH ins AS (
            INSERT INTO task_runtime.runs (id, task, tenant_id, project_id, status, input, run_at,
                expire_at, idempotency_key, idempotency_ttl_ms, tags, replay_of, concurrency_key,
                concurrency_limit, trace_context, created_at)
            SELECT u.id, u.task, u.tenant_id, u.project_id,
                   CASE WHEN u.run_at > $1 THEN 'delayed' ELSE 'queued' END,
                   u.input, u.run_at, u.expire_at, u.key, u.key_ttl, u.tags::jsonb, u.replay_of,
                   u.ckey, u.climit, u.trace, $1
              FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
                          $8::int8[], $9::text[], $10::int8[], $11::text[], $12::text[],
                          $13::text[], $14::int4[], $15::text[])
                   AS u(id, task, tenant_id, project_id, input, run_at, expire_at, key, key_ttl,
                        tags, replay_of, ckey, climit, trace)
            ON CONFLICT DO NOTHING
            RETURNING id)
         SELECT ins.id FROM ins
         UNION ALL SELECT NULL FROM pg_notify('task_runtime', '')",
    )
    .bind(now)
    .bind(runs.iter().map(|r| r.id.to_string()).collect::<Vec<_>>())
    .bind(runs.iter().map(|r| r.task.clone()).collect::<Vec<_>>())
    .bind(runs.iter().map(|r| r.tenant_id.clone()).collect::<Vec<_>>())
    .bind(
        runs.iter()
            .map(|r| r.project_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(runs.iter().map(|r| json_text(&r.input)).collect::<Vec<_>>())
    .bind(runs.iter().map(|r| millis(r.run_at)).collect::<Vec<_>>())
    .bind(
        runs.iter()
            .map(|r| r.expire_at.map(millis))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| r.idempotency.as_ref().map(|(k, _)| k.clone()))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| r.idempotency.as_ref().map(|(_, ttl)| to_i64(*ttl)))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| (!r.tags.is_empty()).then(|| json_text(&r.tags)))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| r.replay_of.as_ref().map(RunId::to_string))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| r.concurrency_key.as_ref().map(|(k, _)| k.clone()))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| {
                r.concurrency_key
                    .as_ref()
                    .map(|(_, n)| i32::try_from(*n).unwrap_or(i32::MAX))
            })
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| r.trace_context.clone())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let inserted: std::collections::HashSet<String> = inserted.into_iter().flatten().collect();
    let mut out: Vec<Enqueued> = runs
        .iter()
        .map(|r| Enqueued {
            id: r.id.clone(),
            existing: false,
        })
        .collect();
    // A keyed run not inserted found its key held: by which run? (A run without a key that
    // was not inserted already existed: an earlier try of this very statement committed.)
    let lost: Vec<usize> = keyed
        .into_iter()
        .filter(|&i| !inserted.contains(runs[i].id.as_str()))
        .collect();
    if !lost.is_empty() {
        let (tasks, tenants, keys): (Vec<_>, Vec<_>, Vec<_>) = lost.iter().map(key_of).collect();
        let slots: Vec<i32> = (0..lost.len())
            .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect();
        let holders: Vec<(i32, String)> = sqlx::query_as(
            "SELECT k.slot, r.id
               FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]) AS k(task, tenant_id, key, slot)
               JOIN task_runtime.runs r
                 ON r.task = k.task AND coalesce(r.tenant_id, '') = coalesce(k.tenant_id, '')
                AND r.idempotency_key = k.key",
        )
        .bind(tasks)
        .bind(tenants)
        .bind(keys)
        .bind(slots)
        .fetch_all(&mut *conn)
        .await?;
        for (slot, holder) in holders {
            let Some(&i) = usize::try_from(slot).ok().and_then(|s| lost.get(s)) else {
                continue;
            };
            let holder = parse_id(&holder)?;
            out[i].existing = holder != runs[i].id;
            out[i].id = holder;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Journal and logs

/// Journal writes waiting to be committed. A settle takes `flushing` and writes what waits
/// before its own statement, so a root's journal is committed before its settle.
#[derive(Default)]
struct JournalQueue {
    ops: Mutex<Vec<JournalOp>>,
    wake: Notify,
    flushing: tokio::sync::Mutex<()>,
}

impl JournalQueue {
    async fn flush(&self, shared: &Shared) {
        let _flushing = self.flushing.lock().await;
        let ops = std::mem::take(&mut *lock(&self.ops));
        if ops.is_empty() {
            return;
        }
        if let Err(error) = write_journal(shared, ops).await {
            tracing::warn!(%error, "journal write failed; the steps may run again on a retry");
        }
    }
}

async fn journal_task(shared: Arc<Shared>, queue: Arc<JournalQueue>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = queue.wake.notified() => {}
            _ = stop.cancelled() => return,
        }
        queue.flush(&shared).await;
    }
}

/// One child's row as the journal leaves it after these writes.
#[derive(Default)]
struct ChildRow {
    root: String,
    token: i64,
    id: String,
    /// Started in this batch: inserted (or started again).
    start: Option<StartRow>,
    status: String,
    output: Option<String>,
    error: Option<String>,
    attempts: i32,
    finished_at: Option<i64>,
}

struct StartRow {
    parent: String,
    position: Option<String>,
    task: String,
    tenant_id: Option<String>,
    project_id: Option<String>,
    input: String,
    at: i64,
}

/// Folds the writes into one row per child (a start and a finish of the same child in one
/// batch become one insert) and writes them with two statements in one.
async fn write_journal(shared: &Shared, ops: Vec<JournalOp>) -> Result<(), StoreError> {
    let mut rows: Vec<ChildRow> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for op in ops {
        match op {
            JournalOp::Start {
                root,
                token,
                id,
                parent,
                position,
                task,
                tenant_id,
                project_id,
                input,
                at: started,
            } => {
                let row = ChildRow {
                    root: root.to_string(),
                    token,
                    id: id.to_string(),
                    start: Some(StartRow {
                        parent: parent.to_string(),
                        position,
                        task,
                        tenant_id,
                        project_id,
                        input: json_text(&input),
                        at: millis(started),
                    }),
                    status: RunStatus::Executing.as_str().to_owned(),
                    ..ChildRow::default()
                };
                match at.get(id.as_str()) {
                    Some(&i) => rows[i] = row,
                    None => {
                        at.insert(id.to_string(), rows.len());
                        rows.push(row);
                    }
                }
            }
            JournalOp::Finish {
                root,
                token,
                id,
                status,
                output,
                error,
                attempts,
                at: finished,
            } => {
                let i = match at.get(id.as_str()) {
                    Some(&i) => i,
                    None => {
                        at.insert(id.to_string(), rows.len());
                        rows.push(ChildRow {
                            root: root.to_string(),
                            token,
                            id: id.to_string(),
                            ..ChildRow::default()
                        });
                        rows.len() - 1
                    }
                };
                let row = &mut rows[i];
                row.token = token;
                row.status = status.as_str().to_owned();
                row.output = output.as_ref().map(json_text);
                row.error = error.as_ref().map(json_text);
                row.attempts += i32::try_from(attempts).unwrap_or(i32::MAX);
                row.finished_at = Some(millis(finished));
            }
        }
    }
    let (starts, finishes): (Vec<&ChildRow>, Vec<&ChildRow>) =
        rows.iter().partition(|r| r.start.is_some());
    let start = |f: fn(&StartRow) -> Option<String>| -> Vec<Option<String>> {
        starts
            .iter()
            .map(|r| r.start.as_ref().and_then(f))
            .collect()
    };
    let s_root: Vec<String> = starts.iter().map(|r| r.root.clone()).collect();
    let s_token: Vec<i64> = starts.iter().map(|r| r.token).collect();
    let s_id: Vec<String> = starts.iter().map(|r| r.id.clone()).collect();
    let s_parent = start(|s| Some(s.parent.clone()));
    let s_position = start(|s| s.position.clone());
    let s_task = start(|s| Some(s.task.clone()));
    let s_tenant = start(|s| s.tenant_id.clone());
    let s_project = start(|s| s.project_id.clone());
    let s_input = start(|s| Some(s.input.clone()));
    let s_at: Vec<i64> = starts
        .iter()
        .map(|r| r.start.as_ref().map_or(0, |s| s.at))
        .collect();
    let s_status: Vec<String> = starts.iter().map(|r| r.status.clone()).collect();
    let s_output: Vec<Option<String>> = starts.iter().map(|r| r.output.clone()).collect();
    let s_error: Vec<Option<String>> = starts.iter().map(|r| r.error.clone()).collect();
    let s_attempts: Vec<i32> = starts.iter().map(|r| r.attempts).collect();
    let s_finished: Vec<Option<i64>> = starts.iter().map(|r| r.finished_at).collect();
    let f_root: Vec<String> = finishes.iter().map(|r| r.root.clone()).collect();
    let f_token: Vec<i64> = finishes.iter().map(|r| r.token).collect();
    let f_id: Vec<String> = finishes.iter().map(|r| r.id.clone()).collect();
    let f_status: Vec<String> = finishes.iter().map(|r| r.status.clone()).collect();
    let f_output: Vec<Option<String>> = finishes.iter().map(|r| r.output.clone()).collect();
    let f_error: Vec<Option<String>> = finishes.iter().map(|r| r.error.clone()).collect();
    let f_attempts: Vec<i32> = finishes.iter().map(|r| r.attempts).collect();
    let f_finished: Vec<Option<i64>> = finishes.iter().map(|r| r.finished_at).collect();
    shared
        .run(|conn| {
            // Every write names its root's lease: a worker that lost it records nothing. A
            // start at a position another child holds (possible only when an earlier read
            // of the journal failed) is skipped, as the unique index would refuse it.
            let query = sqlx::query(
                "WITH started AS (
                    INSERT INTO task_runtime.runs AS c (id, task, tenant_id, project_id, status,
                        input, attempts, run_at, created_at, started_at, parent_run_id,
                        root_run_id, position, output, error, finished_at)
                    SELECT s.id, s.task, s.tenant_id, s.project_id, s.status, s.input, s.attempts,
                           s.at, s.at, s.at, s.parent, s.root, s.position, s.output, s.error,
                           s.finished
                      FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::int8[], $10::text[],
                                  $11::text[], $12::text[], $13::int4[], $14::int8[], $23::text[])
                           AS s(root, token, id, parent, position, task, tenant_id, project_id,
                                at, status, output, error, attempts, finished, input)
                     WHERE EXISTS (SELECT 1 FROM task_runtime.runs root
                                    WHERE root.id = s.root AND root.lease_token = s.token
                                      AND root.status = 'executing')
                       AND NOT EXISTS (SELECT 1 FROM task_runtime.runs p
                                        WHERE p.parent_run_id = s.parent AND p.position = s.position
                                          AND p.id <> s.id)
                    ON CONFLICT (id) DO UPDATE
                       SET status = EXCLUDED.status, output = EXCLUDED.output,
                           error = EXCLUDED.error, attempts = c.attempts + EXCLUDED.attempts,
                           finished_at = EXCLUDED.finished_at
                    RETURNING 1)
                 UPDATE task_runtime.runs c
                    SET status = f.status, output = f.output, error = f.error,
                        attempts = c.attempts + f.attempts, finished_at = f.finished
                   FROM unnest($15::text[], $16::int8[], $17::text[], $18::text[], $19::text[],
                               $20::text[], $21::int4[], $22::int8[])
                        AS f(root, token, id, status, output, error, attempts, finished)
                  WHERE c.id = f.id
                    AND EXISTS (SELECT 1 FROM task_runtime.runs root
                                 WHERE root.id = f.root AND root.lease_token = f.token
                                   AND root.status = 'executing')",
            )
            .bind(s_root.clone())
            .bind(s_token.clone())
            .bind(s_id.clone())
            .bind(s_parent.clone())
            .bind(s_position.clone())
            .bind(s_task.clone())
            .bind(s_tenant.clone())
            .bind(s_project.clone())
            .bind(s_at.clone())
            .bind(s_status.clone())
            .bind(s_output.clone())
            .bind(s_error.clone())
            .bind(s_attempts.clone())
            .bind(s_finished.clone())
            .bind(f_root.clone())
            .bind(f_token.clone())
            .bind(f_id.clone())
            .bind(f_status.clone())
            .bind(f_output.clone())
            .bind(f_error.clone())
            .bind(f_attempts.clone())
            .bind(f_finished.clone())
            .bind(s_input.clone());
            Box::pin(async move { query.execute(conn).await.map(|_| ()) })
        })
        .await
}

/// Writes buffered log lines in batches.
async fn log_task(shared: Arc<Shared>, mut queue: mpsc::Receiver<LogLine>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let lines = std::mem::take(&mut batch);
        let run_ids: Vec<String> = lines.iter().map(|l| l.run_id.to_string()).collect();
        let ats: Vec<i64> = lines.iter().map(|l| millis(l.at)).collect();
        let levels: Vec<String> = lines.iter().map(|l| l.level.clone()).collect();
        let messages: Vec<String> = lines.iter().map(|l| l.message.clone()).collect();
        let fields: Vec<String> = lines.iter().map(|l| json_text(&l.fields)).collect();
        let written = shared
            .run(|conn| {
                let query = sqlx::query(
                    "INSERT INTO task_runtime.run_logs (run_id, at, level, message, fields)
                     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[])",
                )
                .bind(run_ids.clone())
                .bind(ats.clone())
                .bind(levels.clone())
                .bind(messages.clone())
                .bind(fields.clone());
                Box::pin(async move { query.execute(conn).await.map(|_| ()) })
            })
            .await;
        if let Err(error) = written {
            tracing::warn!(%error, lines = lines.len(), "storing log lines failed");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading rows

fn decode(what: &str, error: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(format!("{what}: {error}").into())
}

fn parse_id(text: &str) -> Result<RunId, sqlx::Error> {
    text.parse().map_err(|e| decode("id", e))
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &PgRow,
    column: &str,
) -> Result<Option<T>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| decode(column, e)))
        .transpose()
}

fn attempts(row: &PgRow) -> Result<u32, sqlx::Error> {
    Ok(u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0))
}

fn run_info(row: &PgRow) -> Result<RunInfo, sqlx::Error> {
    let id = |column: &str| -> Result<Option<RunId>, sqlx::Error> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|t| parse_id(&t)).transpose()
    };
    let status: String = row.try_get("status")?;
    let input: Value = json_column(row, "input")?.unwrap_or_default();
    Ok(RunInfo {
        id: id("id")?.ok_or_else(|| decode("id", "missing"))?,
        task: row.try_get("task")?,
        status: status.parse().map_err(|e| decode("status", e))?,
        tenant_id: row.try_get("tenant_id")?,
        project_id: row.try_get("project_id")?,
        attempts: attempts(row)?,
        tags: json_column(row, "tags")?.unwrap_or_default(),
        parent_run_id: id("parent_run_id")?,
        root_run_id: id("root_run_id")?,
        position: row.try_get("position")?,
        replay_of: id("replay_of")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: time(row.try_get("created_at")?),
        run_at: time(row.try_get("run_at")?),
        started_at: row.try_get::<Option<i64>, _>("started_at")?.map(time),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(time),
        // A settled envelope is stored without its input (see `RunOutput::stored_json`).
        envelope: json_column::<RunOutput<Value>>(row, "envelope")?
            .map(|envelope| envelope.with_input(&input)),
        input,
        output: json_column(row, "output")?,
        error: json_column(row, "error")?,
        retried: json_column(row, "retried")?.unwrap_or_default(),
    })
}

const RUN_COLUMNS: &str = "id, task, status, tenant_id, project_id, attempts, tags::text AS tags,
     coalesce(parent_run_id, spawned_by) AS parent_run_id, root_run_id, position, replay_of, idempotency_key, created_at, run_at,
     started_at, finished_at, input, envelope, output, error, retried::text AS retried";

fn corrupt(id: &RunId, error: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        reason: error.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Writes of workers

/// The three kinds of settle, as columns.
#[derive(Default, Clone)]
struct SettleColumns {
    f_id: Vec<String>,
    f_token: Vec<i64>,
    f_status: Vec<String>,
    f_envelope: Vec<String>,
    f_before: Vec<Option<i64>>,
    r_id: Vec<String>,
    r_token: Vec<i64>,
    r_run_at: Vec<i64>,
    r_error: Vec<String>,
    r_before: Vec<Option<i64>>,
    l_id: Vec<String>,
    l_token: Vec<i64>,
}

impl SettleColumns {
    fn of(outcomes: &[Settle]) -> Self {
        let mut c = SettleColumns::default();
        for outcome in outcomes {
            match outcome {
                Settle::Finish {
                    id,
                    token,
                    envelope,
                    expired_before,
                } => {
                    c.f_id.push(id.to_string());
                    c.f_token.push(*token);
                    c.f_status
                        .push(RunStatus::of_envelope(envelope).as_str().to_owned());
                    // Without its input, which the row holds already (see `stored_json`).
                    c.f_envelope.push(envelope.stored_json());
                    c.f_before.push(expired_before.map(millis));
                }
                Settle::Retry {
                    id,
                    token,
                    run_at,
                    error,
                    expired_before,
                } => {
                    c.r_id.push(id.to_string());
                    c.r_token.push(*token);
                    c.r_run_at.push(millis(*run_at));
                    c.r_error.push(json_text(error));
                    c.r_before.push(expired_before.map(millis));
                }
                Settle::Release { id, token } => {
                    c.l_id.push(id.to_string());
                    c.l_token.push(*token);
                }
                // Written by `suspend`, each in a transaction of its own.
                Settle::Suspend { .. } => {}
            }
        }
        c
    }
}

/// Every settle of a batch in one call (see `task_runtime.settle` in `0005_children.sql`);
/// returns the ids it applied to.
const SETTLE: &str = "SELECT id FROM task_runtime.settle($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) AS s(id)";

impl RunStore for PostgresStore {
    fn enqueue(&self, runs: Vec<NewRun>) -> BoxFuture<'_, Result<Vec<Enqueued>, StoreError>> {
        Box::pin(async move {
            let (reply, result) = oneshot::channel();
            if self.triggers.send((runs, reply)).is_err() {
                return Err(StoreError::Backend {
                    reason: "the store's trigger writer has stopped".to_owned(),
                });
            }
            result.await.unwrap_or_else(|_| {
                Err(StoreError::Backend {
                    reason: "the store's trigger writer stopped before answering".to_owned(),
                })
            })
        })
    }

    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claimed, StoreError>> {
        Box::pin(async move {
            let now = SystemTime::now();
            let until = millis(later(now, request.lease));
            let now = millis(now);
            let limit = i32::try_from(request.limit).unwrap_or(i32::MAX);
            let (tasks, limits): (Vec<String>, Vec<i32>) = request
                .task_limits
                .iter()
                .map(|(t, n)| (t.clone(), i32::try_from(*n).unwrap_or(i32::MAX)))
                .unzip();
            let owner = request.owner;
            let rows = self
                .shared
                .run(|conn| {
                    let query = sqlx::query(
                        "SELECT c.id, c.task, c.input, c.attempts, c.lease_token, c.next_due,
                                coalesce(r.waits, 0) AS waits, r.spawned_by, r.trace_context,
                                r.id AS seen
                           FROM task_runtime.claim($1, $2, $3, $4, $5, $6) c
                           -- The row as it was before the claim: `waits` is not changed by it.
                           -- LATERAL, by primary key per claimed row: a plain join let the
                           -- planner hash the whole table (a sequential scan per claim, which
                           -- cut the drain to a tenth on 10 000 rows, and grew with the table;
                           -- the LIMIT keeps the planner from flattening it back into one).
                           LEFT JOIN LATERAL (SELECT x.id, x.waits, x.spawned_by, x.trace_context
                                                FROM task_runtime.runs x WHERE x.id = c.id LIMIT 1) r ON true",
                    )
                    .bind(owner.clone())
                    .bind(until)
                    .bind(now)
                    .bind(limit)
                    .bind(tasks.clone())
                    .bind(limits.clone());
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            let mut claimed = Claimed::default();
            // Rows committed after this statement's snapshot, which the claim function's own
            // statements (each with a fresh snapshot) still took: the join saw nothing of
            // them. Such a run was just inserted (it never waited), but its parent (a
            // spawned child's) and its trace context must be read again.
            let mut unseen = Vec::new();
            for row in &rows {
                let read = || -> Result<Option<ClaimedRun>, sqlx::Error> {
                    let Some(id) = row.try_get::<Option<String>, _>("id")? else {
                        return Ok(None);
                    };
                    let input: String = row.try_get("input")?;
                    Ok(Some(ClaimedRun {
                        id: parse_id(&id)?,
                        task: row.try_get("task")?,
                        input: serde_json::from_str(&input).map_err(|e| decode("input", e))?,
                        attempt: attempts(row)?,
                        token: row.try_get("lease_token")?,
                        resumed: row.try_get::<i32, _>("waits")? > 0,
                        spawned_by: row
                            .try_get::<Option<String>, _>("spawned_by")?
                            .map(|id| parse_id(&id))
                            .transpose()?,
                        trace_context: row.try_get("trace_context")?,
                    }))
                };
                match read() {
                    Ok(Some(run)) => {
                        if row
                            .try_get::<Option<String>, _>("seen")
                            .ok()
                            .flatten()
                            .is_none()
                        {
                            unseen.push(run.id.to_string());
                        }
                        claimed.runs.push(run);
                    }
                    Ok(None) => {
                        claimed.next_due = row
                            .try_get::<Option<i64>, _>("next_due")
                            .ok()
                            .flatten()
                            .map(time);
                    }
                    Err(error) => return Err(self.shared.fail(&error)),
                }
            }
            if !unseen.is_empty() {
                let rows: Vec<(String, Option<String>, Option<String>)> = self
                    .shared
                    .run(|conn| {
                        let query = sqlx::query_as(
                            "SELECT id, spawned_by, trace_context FROM task_runtime.runs
                              WHERE id = ANY ($1)",
                        )
                        .bind(unseen.clone());
                        Box::pin(async move { query.fetch_all(conn).await })
                    })
                    .await?;
                for (id, spawned_by, trace) in rows {
                    if let Some(run) = claimed.runs.iter_mut().find(|r| r.id.as_str() == id) {
                        run.spawned_by = spawned_by.and_then(|p| p.parse().ok());
                        run.trace_context = trace;
                    }
                }
            }
            Ok(claimed)
        })
    }

    fn heartbeat(
        &self,
        owner: String,
        leases: Vec<Lease>,
        extend: Duration,
    ) -> BoxFuture<'_, Result<HeartbeatReply, StoreError>> {
        Box::pin(async move {
            let until = millis(later(SystemTime::now(), extend));
            let ids: Vec<String> = leases.iter().map(|l| l.id.to_string()).collect();
            let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
            let kept: Vec<(String, bool)> = self
                .shared
                .run(|conn| {
                    // A lease row another transaction has locked (this worker's settle of
                    // it, another's settle of a child updating it as a parent) is skipped,
                    // not waited for: a heartbeat waiting there, while the settle waits for
                    // a row this heartbeat locked, is a deadlock that PostgreSQL breaks only
                    // after `deadlock_timeout` (1 s), long enough for short leases to run
                    // out. A skipped run is still reported held (the snapshot says whose it
                    // is) and extended by the next heartbeat, two more before it expires.
                    // (PostgreSQL runs `extended` whether or not the query reads it.)
                    let query = sqlx::query_as(
                        "WITH l AS (SELECT * FROM unnest($3::text[], $4::int8[]) AS l(id, token)),
                         locked AS (
                             SELECT r.id FROM task_runtime.runs r JOIN l ON r.id = l.id
                              WHERE r.lease_token = l.token AND r.lease_owner = $2
                                AND r.status = 'executing'
                                FOR UPDATE OF r SKIP LOCKED),
                         extended AS (
                             UPDATE task_runtime.runs r SET lease_expires_at = $1
                               FROM locked WHERE r.id = locked.id)
                         SELECT r.id, r.cancel_requested
                           FROM task_runtime.runs r JOIN l ON r.id = l.id
                          WHERE r.lease_token = l.token AND r.lease_owner = $2
                            AND r.status = 'executing'",
                    )
                    .bind(until)
                    .bind(owner.clone())
                    .bind(ids.clone())
                    .bind(tokens.clone());
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            let mut reply = HeartbeatReply::default();
            let mut seen = std::collections::HashSet::new();
            for (id, cancel) in kept {
                if cancel {
                    reply
                        .cancel
                        .push(parse_id(&id).map_err(|e| self.shared.fail(&e))?);
                }
                seen.insert(id);
            }
            reply.lost = leases
                .into_iter()
                .filter(|l| !seen.contains(l.id.as_str()))
                .map(|l| l.id)
                .collect();
            Ok(reply)
        })
    }

    fn settle(&self, outcomes: Arc<Vec<Settle>>) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        Box::pin(async move {
            // The journal of these runs first.
            self.journal.flush(&self.shared).await;
            let columns = SettleColumns::of(&outcomes);
            let now = millis(SystemTime::now());
            let applied: Vec<Option<String>> = self
                .shared
                .run(|conn| {
                    let c = columns.clone();
                    let query = sqlx::query_scalar(SETTLE)
                        .bind(now)
                        .bind(c.f_id)
                        .bind(c.f_token)
                        .bind(c.f_status)
                        .bind(c.f_envelope)
                        .bind(c.f_before)
                        .bind(c.r_id)
                        .bind(c.r_token)
                        .bind(c.r_run_at)
                        .bind(c.r_error)
                        .bind(c.r_before)
                        .bind(c.l_id)
                        .bind(c.l_token);
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            let mut applied: std::collections::HashSet<String> =
                applied.into_iter().flatten().collect();
            for outcome in outcomes.iter() {
                if let Settle::Suspend {
                    id,
                    token,
                    wake_at,
                    wait_token,
                    children,
                } = outcome
                    && self
                        .suspend(id, *token, *wake_at, wait_token.as_deref(), *children)
                        .await?
                {
                    applied.insert(id.to_string());
                }
            }
            self.shared.changes.bump();
            Ok(outcomes
                .iter()
                .map(|o| applied.contains(o.id().as_str()))
                .collect())
        })
    }

    fn expired_leases(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ExpiredLease>, StoreError>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .shared
                .run(|conn| {
                    let query = sqlx::query(
                        "SELECT id, task, input, lease_token, attempts, lease_owner
                           FROM task_runtime.runs
                          WHERE status = 'executing' AND parent_run_id IS NULL
                            AND lease_expires_at < $1
                          LIMIT $2",
                    )
                    .bind(millis(now))
                    .bind(limit);
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            rows.iter()
                .map(|row| {
                    let id: String = row.try_get("id")?;
                    let input: String = row.try_get("input")?;
                    Ok(ExpiredLease {
                        id: parse_id(&id)?,
                        task: row.try_get("task")?,
                        input: serde_json::from_str(&input).map_err(|e| decode("input", e))?,
                        token: row.try_get("lease_token")?,
                        attempt: attempts(row)?,
                        owner: row
                            .try_get::<Option<String>, _>("lease_owner")?
                            .unwrap_or_default(),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| self.shared.fail(&e))
        })
    }

    fn expired_runs(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ExpiredRun>, StoreError>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .shared
                .run(|conn| {
                    let query = sqlx::query(
                        "SELECT id, task, input, expire_at FROM task_runtime.runs
                          WHERE expire_at IS NOT NULL AND status IN ('queued', 'delayed')
                            AND parent_run_id IS NULL AND expire_at <= $1
                          LIMIT $2",
                    )
                    .bind(millis(now))
                    .bind(limit);
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            rows.iter()
                .map(|row| {
                    let id: String = row.try_get("id")?;
                    let input: String = row.try_get("input")?;
                    Ok(ExpiredRun {
                        id: parse_id(&id)?,
                        task: row.try_get("task")?,
                        input: serde_json::from_str(&input).map_err(|e| decode("input", e))?,
                        expire_at: time(row.try_get("expire_at")?),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| self.shared.fail(&e))
        })
    }

    fn end_queued(
        &self,
        ends: Vec<(RunId, Box<RunOutput<Value>>)>,
    ) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        Box::pin(async move {
            let ids: Vec<String> = ends.iter().map(|(id, _)| id.to_string()).collect();
            let statuses: Vec<String> = ends
                .iter()
                .map(|(_, e)| RunStatus::of_envelope(e).as_str().to_owned())
                .collect();
            let envelopes: Vec<String> = ends.iter().map(|(_, e)| json_text(e)).collect();
            let ended: Vec<Option<String>> = self
                .shared
                .run(|conn| {
                    let query = sqlx::query_scalar(END_QUEUED)
                        .bind(ids.clone())
                        .bind(statuses.clone())
                        .bind(envelopes.clone());
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            self.shared.changes.bump();
            Ok(ends
                .iter()
                .map(|(id, _)| ended.iter().flatten().any(|e| e == id.as_str()))
                .collect())
        })
    }

    fn get(&self, id: RunId) -> BoxFuture<'_, Result<Option<RunInfo>, StoreError>> {
        Box::pin(async move {
            let key = id.to_string();
            let row = self
                .shared
                .run(|conn| {
                    let query = sqlx::query(AssertSqlSafe(format!(
                        "SELECT {RUN_COLUMNS} FROM task_runtime.runs WHERE id = $1"
                    )))
                    .bind(key.clone());
                    Box::pin(async move { query.fetch_optional(conn).await })
                })
                .await?;
            row.as_ref()
                .map(run_info)
                .transpose()
                .map_err(|e| corrupt(&id, e))
        })
    }

    fn list(&self, filter: RunFilter) -> BoxFuture<'_, Result<Vec<RunInfo>, StoreError>> {
        Box::pin(async move {
            let mut clauses = vec!["parent_run_id IS NULL AND spawned_by IS NULL".to_owned()];
            let mut binds: Vec<String> = Vec::new();
            let mut bind = |clause: &str, value: String| {
                binds.push(value);
                clauses.push(clause.replace('?', &format!("${}", binds.len())));
            };
            if let Some(status) = filter.status {
                bind("status = ?", status.as_str().to_owned());
            }
            if let Some(task) = &filter.task {
                bind("task = ?", task.clone());
            }
            if let Some(tenant) = &filter.tenant {
                bind("tenant_id = ?", tenant.clone());
            }
            if let Some(tag) = &filter.tag {
                bind("tags @> jsonb_build_array(?::text)", tag.clone());
            }
            if let Some(before) = &filter.before {
                bind("id < ?", before.to_string());
            }
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM task_runtime.runs WHERE {} ORDER BY id DESC LIMIT {}",
                clauses.join(" AND "),
                filter.page_size()
            );
            let rows = self
                .shared
                .run(|conn| {
                    let mut query = sqlx::query(AssertSqlSafe(sql.clone()));
                    for value in &binds {
                        query = query.bind(value.clone());
                    }
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            rows.iter()
                .map(run_info)
                .collect::<Result<_, _>>()
                .map_err(|e| self.shared.fail(&e))
        })
    }

    fn children(&self, parent: RunId) -> BoxFuture<'_, Result<Vec<RunInfo>, StoreError>> {
        Box::pin(async move {
            let key = parent.to_string();
            let rows = self
                .shared
                .run(|conn| {
                    // Journaled children, the others and spawned ones are in three
                    // partial indexes.
                    let query = sqlx::query(AssertSqlSafe(format!(
                        "SELECT * FROM (
                             SELECT {RUN_COLUMNS} FROM task_runtime.runs
                              WHERE parent_run_id = $1 AND position IS NOT NULL
                             UNION ALL
                             SELECT {RUN_COLUMNS} FROM task_runtime.runs
                              WHERE parent_run_id = $1 AND position IS NULL
                             UNION ALL
                             SELECT {RUN_COLUMNS} FROM task_runtime.runs
                              WHERE spawned_by = $1) AS c
                         ORDER BY id"
                    )))
                    .bind(key.clone());
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            rows.iter()
                .map(run_info)
                .collect::<Result<_, _>>()
                .map_err(|e| corrupt(&parent, e))
        })
    }

    fn cancel(
        &self,
        id: RunId,
        envelope: Box<RunOutput<Value>>,
    ) -> BoxFuture<'_, Result<CancelOutcome, StoreError>> {
        Box::pin(async move {
            let key = id.to_string();
            let status = RunStatus::of_envelope(&envelope).as_str().to_owned();
            let text = json_text(&envelope);
            let outcome = self
                .shared
                .run(|conn| {
                    let (key, status, text) = (key.clone(), status.clone(), text.clone());
                    Box::pin(async move {
                        let mut tx = conn.begin().await?;
                        let current: Option<String> = sqlx::query_scalar(
                            "SELECT status FROM task_runtime.runs WHERE id = $1 FOR UPDATE",
                        )
                        .bind(&key)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some(current) = current else {
                            return Ok(CancelOutcome::NotFound);
                        };
                        let current: RunStatus =
                            current.parse().map_err(|e| decode("status", e))?;
                        let outcome = match current {
                            // A waiting run holds no worker: it ends at once, like a
                            // queued one.
                            RunStatus::Queued | RunStatus::Delayed | RunStatus::Waiting => {
                                sqlx::query(END_QUEUED)
                                    .bind(vec![key.clone()])
                                    .bind(vec![status])
                                    .bind(vec![text])
                                    .execute(&mut *tx)
                                    .await?;
                                CancelOutcome::Cancelled
                            }
                            RunStatus::Executing => {
                                sqlx::query(
                                    "UPDATE task_runtime.runs SET cancel_requested = true
                                      WHERE id = $1",
                                )
                                .bind(&key)
                                .execute(&mut *tx)
                                .await?;
                                sqlx::query("SELECT pg_notify('task_runtime', $1)")
                                    .bind(format!("cancel:{key}"))
                                    .execute(&mut *tx)
                                    .await?;
                                CancelOutcome::Requested
                            }
                            finished => CancelOutcome::AlreadyFinished(finished),
                        };
                        tx.commit().await?;
                        Ok(outcome)
                    })
                })
                .await?;
            self.shared.changes.bump();
            Ok(outcome)
        })
    }

    fn journal(&self, root: RunId) -> BoxFuture<'_, Result<Vec<JournalEntry>, StoreError>> {
        Box::pin(async move {
            let key = root.to_string();
            let rows = self
                .shared
                .run(|conn| {
                    let query = sqlx::query(
                        "SELECT id, coalesce(parent_run_id, spawned_by) AS parent_run_id, position,
                                task, status, output, attempts, started_at, finished_at,
                                spawned_by IS NOT NULL AS spawned, spawn_attempt,
                                CASE WHEN spawned_by IS NOT NULL
                                      AND status IN ('completed', 'failed', 'cancelled', 'expired')
                                     THEN envelope END AS envelope,
                                CASE WHEN task LIKE 'wait:%' THEN input END AS input
                           FROM task_runtime.runs WHERE root_run_id = $1 AND position IS NOT NULL",
                    )
                    .bind(key.clone());
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            rows.iter()
                .map(|row| {
                    let id: String = row.try_get("id")?;
                    let parent: String = row.try_get("parent_run_id")?;
                    let status: String = row.try_get("status")?;
                    let completed = match status.as_str() {
                        "completed" => {
                            Some(json_column::<Value>(row, "output")?.unwrap_or_default())
                        }
                        _ => None,
                    };
                    let (output, spawned) = journal_outcome(
                        row.try_get("spawned")?,
                        json_column(row, "envelope")?,
                        completed,
                        u32::try_from(row.try_get::<i32, _>("spawn_attempt")?).unwrap_or(0),
                    );
                    let started: Option<i64> = row.try_get("started_at")?;
                    let finished: Option<i64> = row.try_get("finished_at")?;
                    Ok(JournalEntry {
                        spawned,
                        parent: parse_id(&parent)?,
                        position: row.try_get("position")?,
                        id: parse_id(&id)?,
                        task: row.try_get("task")?,
                        output,
                        attempts: attempts(row)?,
                        duration_ms: match (started, finished) {
                            (Some(s), Some(f)) => u64::try_from(f - s).unwrap_or(0),
                            _ => 0,
                        },
                        input: json_column(row, "input")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| corrupt(&root, e))
        })
    }

    fn spawns_children(&self) -> bool {
        true
    }

    fn spawn(
        &self,
        parent: RunId,
        token: i64,
        children: Vec<NewChild>,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            // The journal the parent recorded before it spawned is written first, as a
            // settle would (the order its replay relies on).
            self.journal.flush(&self.shared).await;
            let (again, new): (Vec<&NewChild>, Vec<&NewChild>) =
                children.iter().partition(|child| child.again);
            let parent = parent.to_string();
            let new = SpawnColumns::of(&new);
            let again = SpawnColumns::of(&again);
            let added = self
                .shared
                .run(|conn| {
                    let (parent, new, again) = (parent.clone(), new.clone(), again.clone());
                    Box::pin(
                        async move { spawn_children(conn, &parent, token, &new, &again).await },
                    )
                })
                .await?;
            self.shared.changes.bump();
            Ok(added)
        })
    }

    fn record(&self, op: JournalOp) {
        lock(&self.journal.ops).push(op);
        self.journal.wake.notify_one();
    }

    fn sync_schedules(
        &self,
        declared: Vec<Schedule>,
        known_tasks: Vec<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.shared
                .run(|conn| {
                    let (declared, known) = (declared.clone(), known_tasks.clone());
                    Box::pin(async move {
                        let mut tx = conn.begin().await?;
                        // Workers starting at once: one at a time.
                        sqlx::query(
                            "LOCK TABLE task_runtime.schedules IN SHARE ROW EXCLUSIVE MODE",
                        )
                        .execute(&mut *tx)
                        .await?;
                        // A changed pattern starts again from its own next fire time.
                        let update = "ON CONFLICT (id) DO UPDATE SET task = excluded.task,
                             cron = excluded.cron, timezone = excluded.timezone,
                             next_fire_at = CASE WHEN schedules.cron = excluded.cron
                                                  AND schedules.timezone = excluded.timezone
                                                 THEN schedules.next_fire_at
                                                 ELSE excluded.next_fire_at END";
                        for schedule in &declared {
                            insert_schedule(&mut tx, schedule, update).await?;
                        }
                        let keep: Vec<String> = declared.iter().map(|s| s.id.clone()).collect();
                        sqlx::query(
                            "DELETE FROM task_runtime.schedules
                              WHERE declared AND task = ANY($1) AND NOT (id = ANY($2))",
                        )
                        .bind(&known)
                        .bind(&keep)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await
                    })
                })
                .await
        })
    }

    fn create_schedule(&self, schedule: Schedule) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.shared
                .run(|conn| {
                    let schedule = schedule.clone();
                    Box::pin(async move { insert_schedule(conn, &schedule, "").await })
                })
                .await
        })
    }

    fn list_schedules(&self) -> BoxFuture<'_, Result<Vec<Schedule>, StoreError>> {
        Box::pin(async move {
            self.shared
                .run(|conn| {
                    Box::pin(async move {
                        let rows = sqlx::query(AssertSqlSafe(format!(
                            "SELECT {SCHEDULE_COLUMNS} FROM task_runtime.schedules ORDER BY id"
                        )))
                        .fetch_all(&mut *conn)
                        .await?;
                        rows.iter().map(schedule_of).collect()
                    })
                })
                .await
        })
    }

    fn delete_schedule(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            self.shared
                .run(|conn| {
                    let id = id.clone();
                    Box::pin(async move {
                        let deleted = sqlx::query(
                            "DELETE FROM task_runtime.schedules WHERE id = $1 AND NOT declared",
                        )
                        .bind(&id)
                        .execute(&mut *conn)
                        .await?;
                        Ok(deleted.rows_affected() == 1)
                    })
                })
                .await
        })
    }

    fn due_schedules(&self, now: SystemTime) -> BoxFuture<'_, Result<Vec<Schedule>, StoreError>> {
        Box::pin(async move {
            let now = millis(now);
            self.shared
                .run(|conn| {
                    Box::pin(async move {
                        let rows = sqlx::query(AssertSqlSafe(format!(
                            "SELECT {SCHEDULE_COLUMNS} FROM task_runtime.schedules
                              WHERE next_fire_at IS NOT NULL AND next_fire_at <= $1
                              ORDER BY next_fire_at"
                        )))
                        .bind(now)
                        .fetch_all(&mut *conn)
                        .await?;
                        rows.iter().map(schedule_of).collect()
                    })
                })
                .await
        })
    }

    fn fire_schedule(
        &self,
        fire: ScheduleFire,
    ) -> BoxFuture<'_, Result<Option<RunId>, StoreError>> {
        Box::pin(async move {
            let fired = self
                .shared
                .run(|conn| {
                    let fire = fire.clone();
                    Box::pin(async move {
                        let mut tx = conn.begin().await?;
                        let moved = sqlx::query(
                            "UPDATE task_runtime.schedules SET next_fire_at = $1, last_fired_at = $2
                              WHERE id = $3 AND next_fire_at = $4",
                        )
                        .bind(fire.next.map(millis))
                        .bind(millis(fire.slot))
                        .bind(&fire.id)
                        .bind(millis(fire.expected))
                        .execute(&mut *tx)
                        .await?;
                        if moved.rows_affected() == 0 {
                            return Ok(None);
                        }
                        let id = match &fire.run {
                            Some(run) => insert_runs(&mut tx, std::slice::from_ref(run))
                                .await?
                                .into_iter()
                                .next()
                                .map(|e| e.id),
                            None => None,
                        };
                        tx.commit().await?;
                        Ok(id)
                    })
                })
                .await?;
            self.shared.changes.bump();
            Ok(fired)
        })
    }

    fn sync_journal(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Waits for a flush under way (which may hold our writes), then flushes the rest.
            self.journal.flush(&self.shared).await;
            Ok(())
        })
    }

    fn log(&self, line: LogLine) {
        if self.logs.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[cfg(feature = "http")]
    fn insert_api_key(&self, key: ApiKeyRow) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let created_at = millis(key.created_at);
            self.shared
                .run(|conn| {
                    let query = sqlx::query(
                        "INSERT INTO task_runtime.api_keys
                         (id, tenant_id, hash, last_four, created_at, revoked_at)
                         VALUES ($1, $2, $3, $4, $5, NULL)",
                    )
                    .bind(key.id.clone())
                    .bind(key.tenant_id.clone())
                    .bind(key.hash.clone())
                    .bind(key.last_four.clone())
                    .bind(created_at);
                    Box::pin(async move { query.execute(conn).await })
                })
                .await?;
            Ok(())
        })
    }

    #[cfg(feature = "http")]
    fn api_keys(&self, id: Option<String>) -> BoxFuture<'_, Result<Vec<ApiKeyRow>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .shared
                .run(|conn| {
                    let query = sqlx::query(
                        "SELECT id, tenant_id, hash, last_four, created_at, revoked_at
                         FROM task_runtime.api_keys
                         WHERE $1::text IS NULL OR id = $1 ORDER BY created_at, id",
                    )
                    .bind(id.clone());
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(ApiKeyRow {
                        id: row.try_get("id")?,
                        tenant_id: row.try_get("tenant_id")?,
                        hash: row.try_get("hash")?,
                        last_four: row.try_get("last_four")?,
                        created_at: time(row.try_get("created_at")?),
                        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(time),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(|e| self.shared.fail(&e))
        })
    }

    #[cfg(feature = "http")]
    fn revoke_api_key(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let now = millis(SystemTime::now());
            let done = self
                .shared
                .run(|conn| {
                    let query = sqlx::query(
                        "UPDATE task_runtime.api_keys SET revoked_at = $2
                         WHERE id = $1 AND revoked_at IS NULL",
                    )
                    .bind(id.clone())
                    .bind(now);
                    Box::pin(async move { query.execute(conn).await })
                })
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn dropped_logs(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    #[cfg(feature = "metrics")]
    fn queue_stats(
        &self,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<crate::metrics::QueueStats, StoreError>> {
        Box::pin(async move {
            let at = millis(now);
            let (depth, oldest): (i64, Option<i64>) = self
                .shared
                .run(|conn| {
                    Box::pin(async move {
                        // Reads the claims' partial index (`runs_due`): only unfinished rows.
                        sqlx::query_as(
                            "SELECT COUNT(*), MIN(run_at) FROM task_runtime.runs
                              WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL
                                AND (status = 'queued' OR run_at <= $1)",
                        )
                        .bind(at)
                        .fetch_one(&mut *conn)
                        .await
                    })
                })
                .await?;
            Ok(crate::metrics::QueueStats::new(
                depth,
                oldest.map(time),
                now,
            ))
        })
    }

    fn logs(&self, id: RunId) -> BoxFuture<'_, Result<Vec<LogLine>, StoreError>> {
        Box::pin(async move {
            let key = id.to_string();
            let rows = self
                .shared
                .run(|conn| {
                    // The run's own lines and those of every run below it.
                    let query = sqlx::query(
                        "SELECT run_id, at, level, message, fields FROM task_runtime.run_logs
                          WHERE run_id = $1
                             OR run_id IN (SELECT id FROM task_runtime.runs WHERE root_run_id = $1)
                          ORDER BY seq",
                    )
                    .bind(key.clone());
                    Box::pin(async move { query.fetch_all(conn).await })
                })
                .await?;
            rows.iter()
                .map(|row| {
                    let run_id: String = row.try_get("run_id")?;
                    Ok(LogLine {
                        run_id: parse_id(&run_id)?,
                        at: time(row.try_get("at")?),
                        level: row.try_get("level")?,
                        message: row.try_get("message")?,
                        fields: json_column(row, "fields")?.unwrap_or_default(),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| corrupt(&id, e))
        })
    }

    fn create_token(&self, token: WaitToken) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.shared
                .run(|conn| {
                    let query = sqlx::query(
                        "INSERT INTO task_runtime.wait_tokens
                         (id, tenant_id, tags, status, timeout_at, created_at)
                         VALUES ($1, $2, $3::jsonb, 'waiting', $4, $5)",
                    )
                    .bind(token.id.clone())
                    .bind(token.tenant_id.clone())
                    .bind((!token.tags.is_empty()).then(|| json_text(&token.tags)))
                    .bind(token.timeout_at.map(millis))
                    .bind(millis(token.created_at));
                    Box::pin(async move { query.execute(conn).await })
                })
                .await?;
            Ok(())
        })
    }

    fn get_token(&self, id: String) -> BoxFuture<'_, Result<Option<WaitToken>, StoreError>> {
        Box::pin(async move {
            let row = self
                .shared
                .run(|conn| {
                    let query = sqlx::query(
                        "SELECT id, tenant_id, tags::text AS tags, status, data, timeout_at,
                                created_at, completed_at, run_id
                           FROM task_runtime.wait_tokens WHERE id = $1",
                    )
                    .bind(id.clone());
                    Box::pin(async move { query.fetch_optional(conn).await })
                })
                .await?;
            row.map(|row| token_of(&row))
                .transpose()
                .map_err(|e| StoreError::Corrupt {
                    id: id.clone(),
                    reason: e.to_string(),
                })
        })
    }

    fn complete_token(
        &self,
        id: String,
        data: Value,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<TokenCompletion, StoreError>> {
        Box::pin(async move {
            let data = json_text(&data);
            let outcome = self
                .shared
                .run(|conn| {
                    let (id, data) = (id.clone(), data.clone());
                    Box::pin(async move { complete_token(conn, &id, &data, millis(now)).await })
                })
                .await?;
            if outcome == TokenCompletion::Completed {
                self.shared.changes.bump();
            }
            Ok(outcome)
        })
    }

    fn wake_waiting(
        &self,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<(usize, Option<SystemTime>), StoreError>> {
        Box::pin(async move {
            let now = millis(now);
            let next: Option<i64> = self
                .shared
                .run(|conn| {
                    let query = sqlx::query_scalar(
                        "SELECT min(run_at) FROM task_runtime.runs
                          WHERE status = 'waiting' AND parent_run_id IS NULL",
                    );
                    Box::pin(async move { query.fetch_one(conn).await })
                })
                .await?;
            if next.is_none_or(|next| next > now) {
                return Ok((0, next.map(time)));
            }
            // Due now on the server's clock, which claims read (`now` may be a test's).
            let woken: i64 = self
                .shared
                .run(|conn| {
                    let query = sqlx::query_scalar(
                        "WITH woken AS (
                            UPDATE task_runtime.runs SET status = 'queued', run_at = task_runtime.now_ms()
                             WHERE status = 'waiting' AND parent_run_id IS NULL AND run_at <= $1
                            RETURNING id)
                         SELECT count(*) FROM woken, (SELECT pg_notify('task_runtime', '')) AS n",
                    )
                    .bind(now);
                    Box::pin(async move { query.fetch_one(conn).await })
                })
                .await?;
            self.shared.changes.bump();
            Ok((usize::try_from(woken).unwrap_or(0), None))
        })
    }

    fn change_mark(&self) -> u64 {
        self.shared.changes.generation.load(Ordering::Acquire)
    }

    fn mark_counts_every_change(&self) -> bool {
        self.shared.changes.listening.load(Ordering::Acquire)
    }

    fn changed(&self, since: u64, within: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let changes = &self.shared.changes;
            let notified = changes.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if changes.generation.load(Ordering::Acquire) != since {
                return;
            }
            let within = if changes.listening.load(Ordering::Acquire) {
                within
            } else {
                within.min(POLL_FALLBACK)
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(within) => {}
            }
        })
    }

    fn cancel_requests(&self) -> Option<broadcast::Receiver<RunId>> {
        Some(self.cancels.subscribe())
    }
}

fn token_of(row: &PgRow) -> Result<WaitToken, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let run_id: Option<String> = row.try_get("run_id")?;
    Ok(WaitToken {
        id: row.try_get("id")?,
        status: if status == "completed" {
            TokenStatus::Completed
        } else {
            TokenStatus::Waiting
        },
        tenant_id: row.try_get("tenant_id")?,
        tags: json_column(row, "tags")?.unwrap_or_default(),
        created_at: time(row.try_get("created_at")?),
        timeout_at: row.try_get::<Option<i64>, _>("timeout_at")?.map(time),
        completed_at: row.try_get::<Option<i64>, _>("completed_at")?.map(time),
        data: json_column(row, "data")?,
        run_id: run_id.as_deref().map(parse_id).transpose()?,
    })
}

/// Completes a token in one transaction with waking its run. The token's row is locked
/// first, as `suspend` locks it: a run suspending while its token is completed is either
/// seen waiting here, or sees the token completed there.
async fn complete_token(
    conn: &mut PgConnection,
    id: &str,
    data: &str,
    now: i64,
) -> Result<TokenCompletion, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let row: Option<(String, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT status, timeout_at, run_id FROM task_runtime.wait_tokens WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, timeout_at, run_id)) = row else {
        return Ok(TokenCompletion::NotFound);
    };
    if status == "completed" {
        return Ok(TokenCompletion::AlreadyCompleted);
    }
    if timeout_at.is_some_and(|t| t <= now) {
        return Ok(TokenCompletion::TimedOut);
    }
    if let Some(run_id) = &run_id {
        let run_status: Option<String> =
            sqlx::query_scalar("SELECT status FROM task_runtime.runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
        if run_status.as_deref() == Some("cancelled") {
            return Ok(TokenCompletion::RunCancelled);
        }
    }
    sqlx::query(
        "UPDATE task_runtime.wait_tokens SET status = 'completed', data = $2, completed_at = $3
          WHERE id = $1",
    )
    .bind(id)
    .bind(data)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if let Some(run_id) = &run_id {
        sqlx::query(
            "UPDATE task_runtime.runs SET status = 'queued', run_at = task_runtime.now_ms()
              WHERE id = $1 AND status = 'waiting'",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("SELECT pg_notify('task_runtime', '')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(TokenCompletion::Completed)
}

impl PostgresStore {
    /// Settles an attempt that suspended for a wait: `waiting` until `wake_at`, or queued at
    /// once when its token was completed meanwhile (see `complete_token`); `false` when the
    /// lease was no longer ours.
    async fn suspend(
        &self,
        id: &RunId,
        token: i64,
        wake_at: SystemTime,
        wait_token: Option<&str>,
        children: Option<ChildWait>,
    ) -> Result<bool, StoreError> {
        let (id, wait_token, wake_at) = (
            id.to_string(),
            wait_token.map(str::to_owned),
            millis(wake_at),
        );
        self.shared
            .run(|conn| {
                let (id, wait_token) = (id.clone(), wait_token.clone());
                Box::pin(async move {
                    let mut tx = conn.begin().await?;
                    let completed = match &wait_token {
                        Some(wait_token) => {
                            let status: Option<String> = sqlx::query_scalar(
                                "SELECT status FROM task_runtime.wait_tokens WHERE id = $1 FOR UPDATE",
                            )
                            .bind(wait_token)
                            .fetch_optional(&mut *tx)
                            .await?;
                            status.as_deref() == Some("completed")
                        }
                        None => false,
                    };
                    // Waiting for spawned children: the row is locked before they are
                    // counted, so a child that ends meanwhile is either counted here or
                    // updates the counts once this commits (`task_runtime.children_ended`).
                    let (open, failed) = match children {
                        Some(_) => {
                            sqlx::query(
                                "SELECT 1 FROM task_runtime.runs WHERE id = $1 FOR UPDATE",
                            )
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query_as::<_, (i64, i64)>(
                                "SELECT count(*) FILTER (WHERE c.status IN ('queued', 'delayed', 'executing', 'waiting')),
                                        count(*) FILTER (WHERE c.status IN ('failed', 'cancelled', 'expired')
                                                           AND c.spawn_attempt >= p.attempts)
                                   FROM task_runtime.runs p
                                   JOIN task_runtime.runs c ON c.spawned_by = p.id
                                  WHERE p.id = $1",
                            )
                            .bind(&id)
                            .fetch_one(&mut *tx)
                            .await?
                        }
                        None => (0, 0),
                    };
                    let woken = completed
                        || children.is_some_and(|c| {
                            open <= i64::from(c.open_at_most) || (c.on_failure && failed > 0)
                        });
                    let applied = sqlx::query(
                        "UPDATE task_runtime.runs
                            SET status = CASE WHEN $3 THEN 'queued' ELSE 'waiting' END,
                                run_at = CASE WHEN $3 AND $5::integer IS NOT NULL
                                                   THEN least(created_at, task_runtime.now_ms())
                                              WHEN $3 THEN task_runtime.now_ms() ELSE $4 END,
                                attempts = attempts - 1, waits = waits + 1, expire_at = NULL,
                                lease_owner = NULL, lease_expires_at = NULL,
                                wait_children = CASE WHEN $3 THEN NULL ELSE $5 END,
                                wait_children_fail = $6,
                                open_children = $7, failed_children = $8
                          WHERE id = $1 AND lease_token = $2 AND status = 'executing'",
                    )
                    .bind(&id)
                    .bind(token)
                    .bind(woken)
                    .bind(wake_at)
                    .bind(children.map(|c| i32::try_from(c.open_at_most).unwrap_or(i32::MAX)))
                    .bind(children.is_some_and(|c| c.on_failure))
                    .bind(i32::try_from(open).unwrap_or(i32::MAX))
                    .bind(i32::try_from(failed).unwrap_or(i32::MAX))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if applied && let Some(wait_token) = &wait_token {
                        sqlx::query("UPDATE task_runtime.wait_tokens SET run_id = $2 WHERE id = $1")
                            .bind(wait_token)
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    if applied && woken {
                        sqlx::query("SELECT pg_notify('task_runtime', '')")
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(applied)
                })
            })
            .await
    }
}

/// Ends queued runs without running them (only while still queued); returns their ids.
const END_QUEUED: &str = "SELECT id FROM task_runtime.end_queued($1, $2, $3) AS e(id)";

/// Children of one spawn, as columns.
#[derive(Default, Clone)]
struct SpawnColumns {
    id: Vec<String>,
    task: Vec<String>,
    tenant: Vec<Option<String>>,
    project: Vec<Option<String>>,
    input: Vec<String>,
    position: Vec<String>,
    trace: Vec<Option<String>>,
    attempt: i32,
}

impl SpawnColumns {
    fn of(children: &[&NewChild]) -> Self {
        let mut c = SpawnColumns {
            attempt: 1,
            ..SpawnColumns::default()
        };
        for child in children {
            c.id.push(child.id.to_string());
            c.task.push(child.task.clone());
            c.tenant.push(child.tenant_id.clone());
            c.project.push(child.project_id.clone());
            c.input.push(json_text(&child.input));
            c.position.push(child.position.clone());
            c.trace.push(child.trace_context.clone());
            c.attempt = c
                .attempt
                .max(i32::try_from(child.parent_attempt).unwrap_or(i32::MAX));
        }
        c
    }
}

/// Enqueues a parent's children in one statement (arrays, however many), fenced by the
/// parent's lease; a position that has a child already keeps it. Children that failed in an
/// earlier attempt of the parent are queued again at their row, with fresh attempts (and
/// `waits`, so their claim loads the journal they keep).
async fn spawn_children(
    conn: &mut PgConnection,
    parent: &str,
    token: i64,
    new: &SpawnColumns,
    again: &SpawnColumns,
) -> Result<usize, sqlx::Error> {
    const HELD: &str = "EXISTS (SELECT 1 FROM task_runtime.runs p
                                 WHERE p.id = $1 AND p.lease_token = $2 AND p.status = 'executing')";
    let now = millis(SystemTime::now());
    let mut tx = conn.begin().await?;
    let mut added = 0;
    if !new.id.is_empty() {
        let result = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO task_runtime.runs (id, task, tenant_id, project_id, input, position,
                                            spawn_attempt, status, run_at, created_at,
                                            spawned_by, root_run_id, trace_context)
             SELECT c.id, c.task, c.tenant, c.project, c.input, c.position, $4, 'queued', $3, $3,
                    $1, $1, c.trace
               FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                           $11::text[])
                    AS c(id, task, tenant, project, input, position, trace)
              WHERE {HELD}
             ON CONFLICT DO NOTHING"
        )))
        .bind(parent)
        .bind(token)
        .bind(now)
        .bind(new.attempt)
        .bind(&new.id)
        .bind(&new.task)
        .bind(&new.tenant)
        .bind(&new.project)
        .bind(&new.input)
        .bind(&new.position)
        .bind(&new.trace)
        .execute(&mut *tx)
        .await?;
        added += usize::try_from(result.rows_affected()).unwrap_or(0);
    }
    if !again.id.is_empty() {
        let result = sqlx::query(AssertSqlSafe(format!(
            "UPDATE task_runtime.runs
                SET status = 'queued', run_at = $3, attempts = 0, retried = NULL,
                    envelope = NULL, output = NULL, error = NULL, finished_at = NULL,
                    cancel_requested = false, lease_owner = NULL, lease_expires_at = NULL,
                    waits = waits + 1, spawn_attempt = $4,
                    trace_context = $6
              WHERE spawned_by = $1 AND status IN ('failed', 'cancelled', 'expired')
                AND id = ANY ($5) AND {HELD}"
        )))
        .bind(parent)
        .bind(token)
        .bind(now)
        .bind(again.attempt)
        .bind(&again.id)
        // One attempt of the parent queues them all: one trace context.
        .bind(again.trace.iter().flatten().next())
        .execute(&mut *tx)
        .await?;
        added += usize::try_from(result.rows_affected()).unwrap_or(0);
    }
    sqlx::query("SELECT pg_notify('task_runtime', '')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(added)
}
