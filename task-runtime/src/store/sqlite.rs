//! `SqliteStore`: the embedded default. One file in WAL mode, shared by every process that
//! opens it (a `trigger` in one while a `worker` runs in another).
//!
//! Writes go through one connection owned by a writer thread ([`writer`]), which takes
//! whatever writes are waiting (triggers, claims, settles, journal entries, log lines) and
//! commits them in one `BEGIN IMMEDIATE` transaction: concurrent triggers share a commit, a
//! worker's finished runs are settled by one statement, and journal writes are ordered before
//! the root's settle. Other processes wait for the write lock up to the busy timeout. Reads
//! use a pool of sqlx connections of their own, which WAL lets run beside the writer.
//!
//! Durability: `synchronous=normal` (the default) commits to the WAL without a disk flush:
//! a committed run survives the process being killed (`kill -9`), and a power cut can lose
//! the last commits. `synchronous=full` flushes at every commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

#[cfg(feature = "http")]
use super::ApiKeyRow;
use super::{
    CancelOutcome, ClaimRequest, Claimed, Enqueued, ExpiredLease, ExpiredRun, HeartbeatReply,
    JournalEntry, JournalOp, Lease, LogLine, NewChild, NewRun, RunFilter, RunInfo, RunStore,
    ScheduleFire, Settle, StoreError, journal_outcome, millis, time,
};
use crate::envelope::RunOutput;
use crate::id::RunId;
use crate::runs::RunStatus;
use crate::schedules::Schedule;
use crate::tokens::{TokenCompletion, TokenStatus, WaitToken};

mod writer;

/// The migrations, embedded: version and SQL.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "runs", include_str!("sqlite/0001_runs.sql")),
    (
        2,
        "concurrency keys",
        include_str!("sqlite/0002_concurrency_keys.sql"),
    ),
    (3, "schedules", include_str!("sqlite/0003_schedules.sql")),
    (4, "api keys", include_str!("sqlite/0004_api_keys.sql")),
    (5, "waits", include_str!("sqlite/0005_waits.sql")),
    (6, "children", include_str!("sqlite/0006_children.sql")),
    (
        7,
        "trace context",
        include_str!("sqlite/0007_trace_context.sql"),
    ),
];

/// Log lines waiting for the writer; beyond this they are dropped and counted.
const LOG_BUFFER: usize = 16_384;

/// Rows per multi-row statement (SQLite allows 32 766 parameters).
const CHUNK: usize = 256;

pub(crate) struct SqliteStore {
    path: String,
    writes: mpsc::UnboundedSender<Write>,
    logs: mpsc::Sender<LogLine>,
    dropped: Arc<AtomicU64>,
    reads: SqlitePool,
    /// A connection of its own for `PRAGMA data_version`, which counts commits by other
    /// connections (this process's writer included), and the version its last look saw.
    watch: Mutex<(SqliteConnection, i64)>,
    local: Arc<LocalChanges>,
    poll: Duration,
}

/// The writer's commits that may concern a waiter (see [`RunStore::change_mark`]).
#[derive(Default)]
struct LocalChanges {
    /// Bumped by each such commit.
    generation: AtomicU64,
    notify: Notify,
}

/// A write for the writer thread, with where its result goes.
enum Write {
    Enqueue(
        Encoded<Vec<NewRun>>,
        oneshot::Sender<Result<Vec<Enqueued>, StoreError>>,
    ),
    Claim(
        ClaimRequest,
        oneshot::Sender<Result<RawClaimed, StoreError>>,
    ),
    Heartbeat(
        String,
        Vec<Lease>,
        Duration,
        oneshot::Sender<Result<HeartbeatReply, StoreError>>,
    ),
    Settle(
        Encoded<Arc<Vec<Settle>>>,
        oneshot::Sender<Result<Vec<bool>, StoreError>>,
    ),
    EndQueued(
        Vec<(RunId, Box<RunOutput<Value>>)>,
        oneshot::Sender<Result<Vec<bool>, StoreError>>,
    ),
    Cancel(
        RunId,
        Box<RunOutput<Value>>,
        oneshot::Sender<Result<CancelOutcome, StoreError>>,
    ),
    Spawn(Box<Spawn>, oneshot::Sender<Result<usize, StoreError>>),
    Journal(JournalOp),
    Logs(Vec<LogLine>),
    /// Answered once the journal writes queued before it are committed.
    Sync(oneshot::Sender<Result<(), StoreError>>),
    Schedule(
        Box<ScheduleWrite>,
        oneshot::Sender<Result<ScheduleReply, StoreError>>,
    ),
    Token(
        Box<TokenWrite>,
        oneshot::Sender<Result<TokenReply, StoreError>>,
    ),
}

/// Writes with their JSON already written out by the caller, on its own thread: the writer
/// thread is the store's one serial part, and it gets the text to store.
struct Encoded<T> {
    items: T,
    /// One text an item: a new run's input; a settle's envelope or error (empty for the
    /// others).
    json: Vec<String>,
}

impl Encoded<Vec<NewRun>> {
    fn runs(runs: Vec<NewRun>) -> Self {
        let json = runs.iter().map(|run| json_text(&run.input)).collect();
        Encoded { items: runs, json }
    }
}

impl Encoded<Arc<Vec<Settle>>> {
    fn settles(outcomes: Arc<Vec<Settle>>) -> Self {
        let json = outcomes
            .iter()
            .map(|outcome| match outcome {
                Settle::Finish { envelope, .. } => envelope.stored_json(),
                Settle::Retry { error, .. } => json_text(error),
                Settle::Release { .. } | Settle::Suspend { .. } => String::new(),
            })
            .collect();
        Encoded {
            items: outcomes,
            json,
        }
    }
}

/// A claim as the writer answers it: the runs' inputs still as stored text, parsed by the
/// caller (off the writer's thread) in [`RawClaimed::decode`].
struct RawClaimed {
    /// Each run's `input` is `null` until decoded.
    claimed: Claimed,
    inputs: Vec<String>,
}

impl RawClaimed {
    fn decode(self) -> Result<Claimed, StoreError> {
        let RawClaimed {
            mut claimed,
            inputs,
        } = self;
        for (run, input) in claimed.runs.iter_mut().zip(inputs) {
            run.input = serde_json::from_str(&input).map_err(|e| StoreError::Corrupt {
                id: run.id.to_string(),
                reason: format!("input: {e}"),
            })?;
        }
        Ok(claimed)
    }
}

/// The text stored for a JSON value.
fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Children a parent enqueues (see [`RunStore::spawn`]).
struct Spawn {
    parent: RunId,
    token: i64,
    children: Vec<NewChild>,
}

/// A write of wait tokens and waiting runs.
enum TokenWrite {
    Create(WaitToken),
    Complete(String, Value, SystemTime),
    Wake(SystemTime),
}

enum TokenReply {
    Done,
    Completed(TokenCompletion),
    Woken(usize),
}

/// A write to the schedules (created and fired only with the `cron` feature).
#[cfg_attr(not(feature = "cron"), allow(dead_code))]
enum ScheduleWrite {
    Sync(Vec<Schedule>, Vec<String>),
    Create(Schedule),
    Delete(String),
    Fire(ScheduleFire),
}

#[cfg_attr(not(feature = "cron"), allow(dead_code))]
enum ScheduleReply {
    Done,
    Deleted(bool),
    Fired(Option<RunId>),
}

/// The parts of a `sqlite://` URL.
struct Url {
    path: String,
    synchronous: SqliteSynchronous,
    busy: Duration,
    max_pages: Option<u64>,
}

fn parse_url(url: &str) -> Result<Url, StoreError> {
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| invalid("expected sqlite://PATH".to_owned()))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err(invalid("no file path after sqlite://".to_owned()));
    }
    let mut parsed = Url {
        path: path.to_owned(),
        synchronous: SqliteSynchronous::Normal,
        busy: Duration::from_secs(5),
        max_pages: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "synchronous" => {
                parsed.synchronous = match value {
                    "normal" => SqliteSynchronous::Normal,
                    "full" => SqliteSynchronous::Full,
                    other => {
                        return Err(invalid(format!(
                            "synchronous must be normal or full, got `{other}`"
                        )));
                    }
                }
            }
            "busy_timeout_ms" => {
                let ms: u64 = value.parse().map_err(|_| {
                    invalid(format!(
                        "busy_timeout_ms must be a number of milliseconds, got `{value}`"
                    ))
                })?;
                parsed.busy = Duration::from_millis(ms);
            }
            "max_pages" => {
                let pages: u64 = value.parse().map_err(|_| {
                    invalid(format!(
                        "max_pages must be a number of pages, got `{value}`"
                    ))
                })?;
                parsed.max_pages = Some(pages);
            }
            other => {
                return Err(invalid(format!(
                    "unknown parameter `{other}` (known: synchronous, busy_timeout_ms, max_pages)"
                )));
            }
        }
    }
    Ok(parsed)
}

/// What a database error means for the user.
fn classify(path: &str, busy: Duration, error: &sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(db) => classify_code(
            path,
            busy,
            db.code().and_then(|c| c.parse().ok()).unwrap_or(0),
            db.message().to_owned(),
        ),
        sqlx::Error::Io(io) => StoreError::Open {
            path: path.to_owned(),
            reason: io.to_string(),
        },
        other => StoreError::Backend {
            reason: other.to_string(),
        },
    }
}

/// What SQLite's (extended) result `code` with its message means for the user.
fn classify_code(path: &str, busy: Duration, code: i32, reason: String) -> StoreError {
    match code & 0xff {
        5 | 6 => StoreError::Locked {
            path: path.to_owned(),
            waited_ms: u64::try_from(busy.as_millis()).unwrap_or(u64::MAX),
        },
        13 => StoreError::Full {
            path: path.to_owned(),
            reason,
        },
        11 | 26 => StoreError::NotAStore {
            path: path.to_owned(),
            reason,
        },
        8 | 14 | 23 => StoreError::Open {
            path: path.to_owned(),
            reason,
        },
        _ => StoreError::Backend { reason },
    }
}

/// Pauses between tries of a busy file (5 ms, doubling up to 50), until the busy timeout.
/// SQLite answers some lock conflicts at once, without its busy handler: several processes
/// switching a new file to WAL at once, or a transaction whose snapshot another process's
/// commit made stale.
struct BusyBackoff {
    deadline: std::time::Instant,
    pause: Duration,
}

impl BusyBackoff {
    fn new(busy: Duration) -> Self {
        BusyBackoff {
            deadline: std::time::Instant::now() + busy,
            pause: Duration::from_millis(5),
        }
    }

    /// Waits before the next try; `false` (at once) once the busy timeout has passed.
    async fn pause(&mut self) -> bool {
        if std::time::Instant::now() >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(50));
        true
    }
}

/// Runs `open` again while the file is busy, for up to `busy` (see [`BusyBackoff`]).
async fn while_busy<T, F, Fut>(busy: Duration, mut open: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = BusyBackoff::new(busy);
    loop {
        match open().await {
            Err(e) if is_busy(&e) && backoff.pause().await => {}
            other => return other,
        }
    }
}

/// SQLite's "busy" or "locked" (any extended code of either).
fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let code: i32 = db.code().and_then(|c| c.parse().ok()).unwrap_or(0);
            matches!(code & 0xff, 5 | 6)
        }
        _ => false,
    }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(
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
    )
}

impl SqliteStore {
    pub(crate) async fn connect(url: &str) -> Result<SqliteStore, StoreError> {
        let Url {
            path,
            synchronous,
            busy,
            max_pages,
        } = parse_url(url)?;
        let fail = |e: &sqlx::Error| classify(&path, busy, e);
        if let Some(parent) = std::path::Path::new(&path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: format!("cannot create its directory: {e}"),
            })?;
        }
        let mut options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(busy)
            .foreign_keys(false);
        if let Some(pages) = max_pages {
            options = options.pragma("max_page_count", pages.to_string());
        }
        let mut migrating = while_busy(busy, || SqliteConnection::connect_with(&options))
            .await
            .map_err(|e| fail(&e))?;
        migrate(&mut migrating, &path, busy).await?;
        // Best effort: the file is migrated, and dropping the connection closes it too.
        let _ = migrating.close().await;
        let read_options = options.clone().create_if_missing(false);
        let reads = while_busy(busy, || {
            SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(read_options.clone())
        })
        .await
        .map_err(|e| fail(&e))?;
        let mut watch = while_busy(busy, || SqliteConnection::connect_with(&options))
            .await
            .map_err(|e| fail(&e))?;
        let version = data_version(&mut watch).await.map_err(|e| fail(&e))?;
        let local = Arc::new(LocalChanges::default());
        let (writes, write_queue) = mpsc::unbounded_channel();
        let (logs, log_queue) = mpsc::channel(LOG_BUFFER);
        writer::start(
            &writer::Open {
                path: &path,
                synchronous: match synchronous {
                    SqliteSynchronous::Full => "FULL",
                    _ => "NORMAL",
                },
                busy,
                max_pages,
            },
            write_queue,
            local.clone(),
        )?;
        tokio::spawn(log_task(log_queue, writes.clone()));
        Ok(SqliteStore {
            path,
            writes,
            logs,
            dropped: Arc::default(),
            reads,
            watch: Mutex::new((watch, version)),
            local,
            poll: Duration::from_millis(2),
        })
    }

    fn fail(&self, error: &sqlx::Error) -> StoreError {
        classify(&self.path, Duration::from_secs(5), error)
    }

    /// Hands a write to the writer thread and waits for its result.
    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let (reply, result) = oneshot::channel();
        if self.writes.send(make(reply)).is_err() {
            return Err(StoreError::Backend {
                reason: "the store's writer has stopped".to_owned(),
            });
        }
        result.await.unwrap_or_else(|_| {
            Err(StoreError::Backend {
                reason: "the store's writer stopped before answering".to_owned(),
            })
        })
    }
}

async fn data_version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(&mut *conn)
        .await
}

/// Runs the migrations. Two processes starting at once may race to apply the same one; the
/// loser's attempt fails, and its second pass finds it applied.
async fn migrate(
    conn: &mut SqliteConnection,
    path: &str,
    busy: Duration,
) -> Result<(), StoreError> {
    let migrator = migrator();
    let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    // Processes opening a new file at once race migration by migration. A loser's failed
    // attempt means another process applied that migration: it tries again, at most once
    // per migration (each such failure is another one applied). A busy file (another
    // process holds the write lock, or committed under this one's read: SQLite then answers
    // at once, without its busy handler) is tried again until the busy timeout.
    let mut backoff = BusyBackoff::new(busy);
    let mut raced = 0;
    let mut outcome = migrator.run(&mut *conn).await;
    loop {
        use sqlx::migrate::MigrateError::{Execute, ExecuteMigration};
        let again = match &outcome {
            Err(Execute(e) | ExecuteMigration(e, _)) if is_busy(e) => backoff.pause().await,
            Err(Execute(_) | ExecuteMigration(..)) if raced < MIGRATIONS.len() as u64 => {
                raced += 1;
                tokio::time::sleep(Duration::from_millis(5 * raced)).await;
                true
            }
            _ => false,
        };
        if !again {
            break;
        }
        outcome = migrator.run(&mut *conn).await;
    }
    match outcome {
        Ok(()) => Ok(()),
        Err(sqlx::migrate::MigrateError::VersionMissing(found)) => Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found,
            known,
        }),
        Err(sqlx::migrate::MigrateError::Execute(e)) => Err(classify(path, busy, &e)),
        Err(other) => Err(StoreError::Backend {
            reason: format!("migrating the store: {other}"),
        }),
    }
}

/// Forwards buffered log lines to the writer in batches.
async fn log_task(mut queue: mpsc::Receiver<LogLine>, writes: mpsc::UnboundedSender<Write>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, CHUNK).await > 0 {
        if writes
            .send(Write::Logs(std::mem::take(&mut batch)))
            .is_err()
        {
            return;
        }
    }
}

const SCHEDULE_COLUMNS: &str = "id, task, cron, timezone, tenant_id, project_id, external_id,
     declared, next_fire_at, last_fired_at, created_at";

fn schedule_of(row: &SqliteRow) -> Result<Schedule, sqlx::Error> {
    Ok(Schedule {
        id: row.try_get("id")?,
        task: row.try_get("task")?,
        cron: row.try_get("cron")?,
        timezone: row.try_get("timezone")?,
        tenant_id: row.try_get("tenant_id")?,
        project_id: row.try_get("project_id")?,
        external_id: row.try_get("external_id")?,
        declared: row.try_get::<i64, _>("declared")? != 0,
        next_fire_at: row.try_get::<Option<i64>, _>("next_fire_at")?.map(time),
        last_fired_at: row.try_get::<Option<i64>, _>("last_fired_at")?.map(time),
        created_at: time(row.try_get("created_at")?),
    })
}

fn placeholders(count: usize, first: usize) -> String {
    (first..first + count)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn decode(what: &str, error: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(format!("{what}: {error}").into())
}

fn parse_id(text: &str) -> Result<RunId, sqlx::Error> {
    text.parse().map_err(|e| decode("id", e))
}

fn parse_status(text: &str) -> Result<RunStatus, sqlx::Error> {
    text.parse::<RunStatus>().map_err(|e| decode("status", e))
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &SqliteRow,
    column: &str,
) -> Result<Option<T>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| decode(column, e)))
        .transpose()
}

fn run_info(row: &SqliteRow) -> Result<RunInfo, sqlx::Error> {
    let id = |column: &str| -> Result<Option<RunId>, sqlx::Error> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|t| parse_id(&t)).transpose()
    };
    let status: String = row.try_get("status")?;
    let input: Value = json_column(row, "input")?.unwrap_or_default();
    // Stored without its input (see `RunOutput::stored_json`).
    let envelope = json_column::<RunOutput<Value>>(row, "envelope")?
        .map(|envelope| envelope.with_input(&input));
    Ok(RunInfo {
        id: id("id")?.ok_or_else(|| decode("id", "missing"))?,
        task: row.try_get("task")?,
        status: parse_status(&status)?,
        tenant_id: row.try_get("tenant_id")?,
        project_id: row.try_get("project_id")?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
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
        input,
        envelope,
        output: json_column(row, "output")?,
        error: json_column(row, "error")?,
        retried: json_column(row, "retried")?.unwrap_or_default(),
    })
}

const RUN_COLUMNS: &str = "id, task, status, tenant_id, project_id, attempts, tags,
     coalesce(parent_run_id, spawned_by) AS parent_run_id, root_run_id,
     position, replay_of, idempotency_key, created_at, run_at, started_at, finished_at, input,
     envelope, output, error, retried";

impl RunStore for SqliteStore {
    fn enqueue(&self, runs: Vec<NewRun>) -> BoxFuture<'_, Result<Vec<Enqueued>, StoreError>> {
        Box::pin(async move {
            let runs = Encoded::runs(runs);
            self.write(|tx| Write::Enqueue(runs, tx)).await
        })
    }

    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claimed, StoreError>> {
        Box::pin(async move { self.write(|tx| Write::Claim(request, tx)).await?.decode() })
    }

    fn heartbeat(
        &self,
        owner: String,
        leases: Vec<Lease>,
        extend: Duration,
    ) -> BoxFuture<'_, Result<HeartbeatReply, StoreError>> {
        Box::pin(self.write(move |tx| Write::Heartbeat(owner, leases, extend, tx)))
    }

    fn settle(&self, outcomes: Arc<Vec<Settle>>) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        Box::pin(async move {
            let outcomes = Encoded::settles(outcomes);
            self.write(|tx| Write::Settle(outcomes, tx)).await
        })
    }

    fn expired_leases(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ExpiredLease>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, task, input, lease_token, attempts, lease_owner FROM runs INDEXED BY runs_executing
                 WHERE status = 'executing' AND parent_run_id IS NULL AND lease_expires_at < ?1
                 LIMIT ?2",
            )
            .bind(millis(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
            rows.iter()
                .map(|row| {
                    let id: String = row.try_get("id")?;
                    let input: String = row.try_get("input")?;
                    Ok(ExpiredLease {
                        id: parse_id(&id)?,
                        task: row.try_get("task")?,
                        input: serde_json::from_str(&input).map_err(|e| decode("input", e))?,
                        token: row.try_get("lease_token")?,
                        attempt: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                        owner: row
                            .try_get::<Option<String>, _>("lease_owner")?
                            .unwrap_or_default(),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| self.fail(&e))
        })
    }

    fn expired_runs(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ExpiredRun>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, task, input, expire_at FROM runs INDEXED BY runs_due
                 WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL
                   AND expire_at IS NOT NULL AND expire_at <= ?1
                 LIMIT ?2",
            )
            .bind(millis(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
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
                .map_err(|e| self.fail(&e))
        })
    }

    fn end_queued(
        &self,
        ends: Vec<(RunId, Box<RunOutput<Value>>)>,
    ) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        Box::pin(self.write(|tx| Write::EndQueued(ends, tx)))
    }

    fn get(&self, id: RunId) -> BoxFuture<'_, Result<Option<RunInfo>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"
            )))
            .bind(id.as_str())
            .fetch_optional(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
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
                clauses.push(clause.replace('?', &format!("?{}", binds.len())));
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
                bind(
                    "EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE json_each.value = ?)",
                    tag.clone(),
                );
            }
            if let Some(before) = &filter.before {
                bind("id < ?", before.to_string());
            }
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE {} ORDER BY id DESC LIMIT {}",
                clauses.join(" AND "),
                filter.page_size()
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for value in binds {
                query = query.bind(value);
            }
            let rows = query
                .fetch_all(&self.reads)
                .await
                .map_err(|e| self.fail(&e))?;
            rows.iter()
                .map(run_info)
                .collect::<Result<_, _>>()
                .map_err(|e| self.fail(&e))
        })
    }

    fn children(&self, parent: RunId) -> BoxFuture<'_, Result<Vec<RunInfo>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = ?1 OR spawned_by = ?1 ORDER BY id"
            )))
            .bind(parent.as_str())
            .fetch_all(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
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
        Box::pin(self.write(|tx| Write::Cancel(id, envelope, tx)))
    }

    fn journal(&self, root: RunId) -> BoxFuture<'_, Result<Vec<JournalEntry>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, coalesce(parent_run_id, spawned_by) AS parent_run_id, position, task, status,
                        output, attempts, started_at, finished_at, spawned_by IS NOT NULL AS spawned,
                        spawn_attempt,
                        CASE WHEN spawned_by IS NOT NULL AND status IN ('completed', 'failed', 'cancelled', 'expired')
                             THEN envelope END AS envelope,
                        CASE WHEN task LIKE 'wait:%' THEN input END AS input
                 FROM runs WHERE root_run_id = ?1 AND position IS NOT NULL",
            )
            .bind(root.as_str())
            .fetch_all(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
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
                        u32::try_from(row.try_get::<i64, _>("spawn_attempt")?).unwrap_or(0),
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
                        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
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
        let spawn = Box::new(Spawn {
            parent,
            token,
            children,
        });
        Box::pin(self.write(|tx| Write::Spawn(spawn, tx)))
    }

    fn record(&self, op: JournalOp) {
        let _ = self.writes.send(Write::Journal(op));
    }

    fn sync_journal(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.write(Write::Sync))
    }

    fn sync_schedules(
        &self,
        declared: Vec<Schedule>,
        known_tasks: Vec<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.write(|tx| {
                Write::Schedule(Box::new(ScheduleWrite::Sync(declared, known_tasks)), tx)
            })
            .await
            .map(|_| ())
        })
    }

    fn create_schedule(&self, schedule: Schedule) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.write(|tx| Write::Schedule(Box::new(ScheduleWrite::Create(schedule)), tx))
                .await
                .map(|_| ())
        })
    }

    fn list_schedules(&self) -> BoxFuture<'_, Result<Vec<Schedule>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY id"
            )))
            .fetch_all(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
            rows.iter()
                .map(schedule_of)
                .collect::<Result<_, _>>()
                .map_err(|e| self.fail(&e))
        })
    }

    fn delete_schedule(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            match self
                .write(|tx| Write::Schedule(Box::new(ScheduleWrite::Delete(id)), tx))
                .await?
            {
                ScheduleReply::Deleted(deleted) => Ok(deleted),
                _ => Ok(false),
            }
        })
    }

    fn due_schedules(&self, now: SystemTime) -> BoxFuture<'_, Result<Vec<Schedule>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules
                 WHERE next_fire_at IS NOT NULL AND next_fire_at <= ?1 ORDER BY next_fire_at"
            )))
            .bind(millis(now))
            .fetch_all(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
            rows.iter()
                .map(schedule_of)
                .collect::<Result<_, _>>()
                .map_err(|e| self.fail(&e))
        })
    }

    fn fire_schedule(
        &self,
        fire: ScheduleFire,
    ) -> BoxFuture<'_, Result<Option<RunId>, StoreError>> {
        Box::pin(async move {
            match self
                .write(|tx| Write::Schedule(Box::new(ScheduleWrite::Fire(fire)), tx))
                .await?
            {
                ScheduleReply::Fired(id) => Ok(id),
                _ => Ok(None),
            }
        })
    }

    fn create_token(&self, token: WaitToken) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.write(|tx| Write::Token(Box::new(TokenWrite::Create(token)), tx))
                .await
                .map(|_| ())
        })
    }

    fn get_token(&self, id: String) -> BoxFuture<'_, Result<Option<WaitToken>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, tenant_id, tags, status, data, timeout_at, created_at, completed_at, run_id
                 FROM wait_tokens WHERE id = ?1",
            )
            .bind(&id)
            .fetch_optional(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
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
            match self
                .write(|tx| Write::Token(Box::new(TokenWrite::Complete(id, data, now)), tx))
                .await?
            {
                TokenReply::Completed(outcome) => Ok(outcome),
                _ => Ok(TokenCompletion::NotFound),
            }
        })
    }

    fn wake_waiting(
        &self,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<(usize, Option<SystemTime>), StoreError>> {
        Box::pin(async move {
            // A read first: the writer (and the other processes' claim loops) is disturbed
            // only when a waiting run is due.
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT min(run_at) FROM runs INDEXED BY runs_waiting
                 WHERE status = 'waiting' AND parent_run_id IS NULL",
            )
            .fetch_one(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
            match next {
                Some(next) if next <= millis(now) => {
                    let woken = match self
                        .write(|tx| Write::Token(Box::new(TokenWrite::Wake(now)), tx))
                        .await?
                    {
                        TokenReply::Woken(n) => n,
                        _ => 0,
                    };
                    Ok((woken, None))
                }
                next => Ok((0, next.map(time))),
            }
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
            // Rare writes: a pooled connection, waiting for the writer's lock up to the busy
            // timeout.
            sqlx::query(
                "INSERT INTO api_keys (id, tenant_id, hash, last_four, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
            )
            .bind(&key.id)
            .bind(&key.tenant_id)
            .bind(&key.hash)
            .bind(&key.last_four)
            .bind(millis(key.created_at))
            .execute(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
            Ok(())
        })
    }

    #[cfg(feature = "http")]
    fn api_keys(&self, id: Option<String>) -> BoxFuture<'_, Result<Vec<ApiKeyRow>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, tenant_id, hash, last_four, created_at, revoked_at FROM api_keys
                 WHERE ?1 IS NULL OR id = ?1 ORDER BY created_at, id",
            )
            .bind(id)
            .fetch_all(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
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
                .map_err(|e| self.fail(&e))
        })
    }

    #[cfg(feature = "http")]
    fn revoke_api_key(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )
            .bind(&id)
            .bind(millis(SystemTime::now()))
            .execute(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
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
            // Reads the claims' partial index (`runs_due`): only unfinished rows.
            let (depth, oldest): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(run_at) FROM runs
                  WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL
                    AND (status = 'queued' OR run_at <= ?1)",
            )
            .bind(millis(now))
            .fetch_one(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
            Ok(crate::metrics::QueueStats::new(
                depth,
                oldest.map(time),
                now,
            ))
        })
    }

    fn logs(&self, id: RunId) -> BoxFuture<'_, Result<Vec<LogLine>, StoreError>> {
        Box::pin(async move {
            // The run's own lines and those of every run below it.
            let rows = sqlx::query(
                "SELECT run_id, at, level, message, fields FROM run_logs
                 WHERE run_id = ?1 OR run_id IN (SELECT id FROM runs WHERE root_run_id = ?1)
                 ORDER BY seq",
            )
            .bind(id.as_str())
            .fetch_all(&self.reads)
            .await
            .map_err(|e| self.fail(&e))?;
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

    fn change_mark(&self) -> u64 {
        self.local.generation.load(Ordering::Acquire)
    }

    fn changed(&self, since: u64, within: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let local = self.local.notify.notified();
            tokio::pin!(local);
            local.as_mut().enable();
            if self.local.generation.load(Ordering::Acquire) != since {
                return;
            }
            let others = async {
                // This call's own baseline: the version the last look (by any caller) saw.
                // A shared "seen" that the first caller to notice a commit moves on would
                // hide that commit from every other caller waiting at the same time (a
                // worker waiting beside `runs().wait` then slept its whole idle poll).
                let mut baseline = None;
                loop {
                    {
                        let mut watch = self.watch.lock().await;
                        let (conn, last) = &mut *watch;
                        match data_version(conn).await {
                            Ok(version) => {
                                let since = *baseline.get_or_insert(*last);
                                *last = version;
                                if version != since {
                                    return;
                                }
                            }
                            Err(error) => {
                                tracing::debug!(error = %self.fail(&error), "polling the store for changes failed");
                            }
                        }
                    }
                    tokio::time::sleep(self.poll).await;
                }
            };
            tokio::select! {
                _ = local => {}
                _ = others => {}
                _ = tokio::time::sleep(within) => {}
            }
        })
    }
}

fn token_of(row: &SqliteRow) -> Result<WaitToken, sqlx::Error> {
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

fn corrupt(id: &RunId, error: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        reason: error.to_string(),
    }
}
