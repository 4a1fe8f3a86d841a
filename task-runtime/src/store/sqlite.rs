//! `SqliteStore`: the embedded default. One file in WAL mode, shared by every process that
//! opens it (a `trigger` in one while a `worker` runs in another).
//!
//! Writes go through one connection owned by a writer task, which takes whatever writes are
//! waiting (triggers, claims, settles, journal entries, log lines) and commits them in one
//! `BEGIN IMMEDIATE` transaction: concurrent triggers share a commit, a worker's finished
//! runs are settled by one statement, and journal writes are ordered before the root's
//! settle. Other processes wait for the write lock up to the busy timeout. Reads use a pool
//! of their own connections, which WAL lets run beside the writer.
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
    CancelOutcome, ClaimRequest, Claimed, ClaimedRun, Enqueued, ExpiredLease, ExpiredRun,
    HeartbeatReply, JournalEntry, JournalOp, Lease, LogLine, NewChild, NewRun, RunFilter, RunInfo,
    RunStore, ScheduleFire, Settle, StoreError, journal_outcome, later, millis, time,
};
use crate::envelope::RunOutput;
use crate::id::RunId;
use crate::runs::RunStatus;
use crate::schedules::Schedule;
use crate::tokens::{TokenCompletion, TokenStatus, WaitToken};

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

/// A write for the writer task, with where its result goes.
enum Write {
    Enqueue(
        Vec<NewRun>,
        oneshot::Sender<Result<Vec<Enqueued>, StoreError>>,
    ),
    Claim(ClaimRequest, oneshot::Sender<Result<Claimed, StoreError>>),
    Heartbeat(
        String,
        Vec<Lease>,
        Duration,
        oneshot::Sender<Result<HeartbeatReply, StoreError>>,
    ),
    Settle(
        Arc<Vec<Settle>>,
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
    if let sqlx::Error::Database(db) = error {
        let code: i32 = db.code().and_then(|c| c.parse().ok()).unwrap_or(0);
        let reason = db.message().to_owned();
        if is_busy(error) {
            return StoreError::Locked {
                path: path.to_owned(),
                waited_ms: u64::try_from(busy.as_millis()).unwrap_or(u64::MAX),
            };
        }
        return match code & 0xff {
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
        };
    }
    match error {
        sqlx::Error::Io(io) => StoreError::Open {
            path: path.to_owned(),
            reason: io.to_string(),
        },
        other => StoreError::Backend {
            reason: other.to_string(),
        },
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
        let mut writer = while_busy(busy, || SqliteConnection::connect_with(&options))
            .await
            .map_err(|e| fail(&e))?;
        migrate(&mut writer, &path, busy).await?;
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
        tokio::spawn(writer_task(
            writer,
            write_queue,
            local.clone(),
            path.clone(),
            busy,
        ));
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

    /// Hands a write to the writer task and waits for its result.
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

/// The writer: takes every waiting write and commits them in one transaction.
async fn writer_task(
    mut conn: SqliteConnection,
    mut queue: mpsc::UnboundedReceiver<Write>,
    local: Arc<LocalChanges>,
    path: String,
    busy: Duration,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 512).await > 0 {
        let writes = std::mem::take(&mut batch);
        // A batch of claims and heartbeats only changes nothing a waiter waits for (a claim
        // loop would otherwise wake itself with its own claim); any other write (a new run,
        // a settle, a token, a cancel, log lines a stream follows) is a change.
        let change = writes
            .iter()
            .any(|write| !matches!(write, Write::Claim(..) | Write::Heartbeat(..)));
        apply_batch(&mut conn, writes, &path, busy).await;
        if change {
            local.generation.fetch_add(1, Ordering::AcqRel);
            local.notify.notify_waiters();
        }
    }
}

async fn exec(conn: &mut Conn, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut *conn).await.map(|_| ())
}

/// `sql` inside its own transaction, as one call: sqlx-sqlite runs a connection on a thread
/// of its own and hands it every call and the answer back (two thread switches a call), so
/// a write that is one statement alone in its batch (the common claim, a worker's finished
/// runs, a trigger one by one) sends `BEGIN IMMEDIATE; ..; COMMIT` at once, not in three
/// calls. Its parameters are numbered (`?N`), which sqlx binds across the statements.
fn framed(sql: &str) -> String {
    format!("BEGIN IMMEDIATE;\n{sql};\nCOMMIT")
}

/// Applies a write alone in its batch as one framed call when it is one statement, and
/// answers it; hands back any other write (or a claim that found a keyed run queued). A
/// framed call that fails is rolled back (a failed `BEGIN` leaves nothing to roll back)
/// and answered with its error, as in a batch.
async fn apply_framed(
    conn: &mut Conn,
    write: Write,
    fail: &impl Fn(&sqlx::Error) -> StoreError,
) -> Option<Write> {
    let failed = async |conn: &mut Conn, error: &sqlx::Error| {
        let error = fail(error);
        tracing::warn!(%error, "store write failed");
        let _ = exec(conn, "ROLLBACK").await;
        error
    };
    match write {
        Write::Claim(request, tx) if request.task_limits.is_empty() => {
            match claim_framed(conn, &request).await {
                Ok(Some(claimed)) => drop(tx.send(Ok(claimed))),
                Ok(None) => return Some(Write::Claim(request, tx)),
                Err(e) => drop(tx.send(Err(failed(conn, &e).await))),
            }
        }
        Write::Settle(outcomes, tx) => match settle_framed(conn, &outcomes).await {
            Some(Ok(applied)) => drop(tx.send(Ok(applied))),
            Some(Err(e)) => drop(tx.send(Err(failed(conn, &e).await))),
            None => return Some(Write::Settle(outcomes, tx)),
        },
        Write::Enqueue(runs, tx) => match enqueue_framed(conn, &runs).await {
            Some(Ok(enqueued)) => drop(tx.send(Ok(enqueued))),
            Some(Err(e)) => drop(tx.send(Err(failed(conn, &e).await))),
            None => return Some(Write::Enqueue(runs, tx)),
        },
        other => return Some(other),
    }
    None
}

/// Applies `writes` in one transaction (one commit for everything waiting: concurrent
/// triggers, a worker's settles and its next claim). When a write fails (a constraint, a
/// full disk), the transaction is rolled back, that write is answered with its error, and
/// the others are applied again in a new transaction: each write is all or nothing, and
/// none is answered before its transaction committed.
async fn apply_batch(
    conn: &mut SqliteConnection,
    mut writes: Vec<Write>,
    path: &str,
    busy: Duration,
) {
    let fail = |e: &sqlx::Error| classify(path, busy, e);
    if let [_] = writes.as_slice()
        && let Some(write) = writes.pop()
    {
        match apply_framed(conn, write, &fail).await {
            None => return,
            Some(write) => writes.push(write),
        }
    }
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
        let error = fail(&e);
        tracing::warn!(%error, "store write failed");
        for write in writes {
            reject(write, &error);
        }
        return;
    }
    let mut done = Vec::new();
    let mut journal = Vec::new();
    let mut logs = Vec::new();
    let mut writes = writes.into_iter();
    while let Some(write) = writes.next() {
        // Journal and log writes are queued fire-and-forget; they keep their order relative
        // to the writes around them by being flushed before the next write that answers.
        match write {
            Write::Journal(op) => {
                journal.push(op);
                continue;
            }
            Write::Logs(lines) => {
                logs.extend(lines);
                continue;
            }
            _ => {}
        }
        if !journal.is_empty() {
            flush_journal(conn, std::mem::take(&mut journal), &fail).await;
        }
        match apply_one(conn, write).await {
            Ok(d) => done.push(d),
            Err((failed, error)) => {
                let error = fail(&error);
                tracing::warn!(%error, "a store write failed; applying the others again without it");
                let _ = exec(conn, "ROLLBACK").await;
                reject(failed, &error);
                // Everything before it was rolled back too: apply it again, with the rest.
                let rest: Vec<Write> = done
                    .into_iter()
                    .map(Done::into_write)
                    .chain(journal.into_iter().map(Write::Journal))
                    .chain((!logs.is_empty()).then(|| Write::Logs(logs)))
                    .chain(writes)
                    .collect();
                if !rest.is_empty() {
                    Box::pin(apply_batch(conn, rest, path, busy)).await;
                }
                return;
            }
        }
    }
    if !journal.is_empty() {
        flush_journal(conn, journal, &fail).await;
    }
    if !logs.is_empty() {
        flush_logs(conn, logs, &fail).await;
    }
    let commit = exec(conn, "COMMIT").await.map_err(|e| fail(&e));
    if let Err(error) = &commit {
        tracing::warn!(%error, "store commit failed; nothing of this batch was kept");
        let _ = exec(conn, "ROLLBACK").await;
    }
    for d in done {
        d.send(commit.clone());
    }
}

/// A write applied in the open transaction, waiting for the commit to be answered.
enum Done {
    Enqueue(
        Vec<NewRun>,
        oneshot::Sender<Result<Vec<Enqueued>, StoreError>>,
        Vec<Enqueued>,
    ),
    Claim(
        ClaimRequest,
        oneshot::Sender<Result<Claimed, StoreError>>,
        Claimed,
    ),
    Heartbeat(
        String,
        Vec<Lease>,
        Duration,
        oneshot::Sender<Result<HeartbeatReply, StoreError>>,
        HeartbeatReply,
    ),
    Settle(
        Arc<Vec<Settle>>,
        oneshot::Sender<Result<Vec<bool>, StoreError>>,
        Vec<bool>,
    ),
    EndQueued(
        Vec<(RunId, Box<RunOutput<Value>>)>,
        oneshot::Sender<Result<Vec<bool>, StoreError>>,
        Vec<bool>,
    ),
    Cancel(
        RunId,
        Box<RunOutput<Value>>,
        oneshot::Sender<Result<CancelOutcome, StoreError>>,
        CancelOutcome,
    ),
    Sync(oneshot::Sender<Result<(), StoreError>>),
    Spawn(
        Box<Spawn>,
        oneshot::Sender<Result<usize, StoreError>>,
        usize,
    ),
    Schedule(
        Box<ScheduleWrite>,
        oneshot::Sender<Result<ScheduleReply, StoreError>>,
        ScheduleReply,
    ),
    Token(
        Box<TokenWrite>,
        oneshot::Sender<Result<TokenReply, StoreError>>,
        TokenReply,
    ),
}

impl Done {
    /// Answers once the transaction committed (or failed to).
    fn send(self, commit: Result<(), StoreError>) {
        match self {
            Done::Enqueue(_, tx, r) => drop(tx.send(commit.map(|()| r))),
            Done::Claim(_, tx, r) => drop(tx.send(commit.map(|()| r))),
            Done::Heartbeat(_, _, _, tx, r) => drop(tx.send(commit.map(|()| r))),
            Done::Settle(_, tx, r) | Done::EndQueued(_, tx, r) => drop(tx.send(commit.map(|()| r))),
            Done::Cancel(_, _, tx, r) => drop(tx.send(commit.map(|()| r))),
            Done::Sync(tx) => drop(tx.send(commit)),
            Done::Spawn(_, tx, r) => drop(tx.send(commit.map(|()| r))),
            Done::Schedule(_, tx, r) => drop(tx.send(commit.map(|()| r))),
            Done::Token(_, tx, r) => drop(tx.send(commit.map(|()| r))),
        }
    }

    /// The write again, its effects rolled back.
    fn into_write(self) -> Write {
        match self {
            Done::Enqueue(runs, tx, _) => Write::Enqueue(runs, tx),
            Done::Claim(request, tx, _) => Write::Claim(request, tx),
            Done::Heartbeat(owner, leases, extend, tx, _) => {
                Write::Heartbeat(owner, leases, extend, tx)
            }
            Done::Settle(outcomes, tx, _) => Write::Settle(outcomes, tx),
            Done::EndQueued(ends, tx, _) => Write::EndQueued(ends, tx),
            Done::Cancel(id, envelope, tx, _) => Write::Cancel(id, envelope, tx),
            Done::Sync(tx) => Write::Sync(tx),
            Done::Spawn(spawn, tx, _) => Write::Spawn(spawn, tx),
            Done::Schedule(write, tx, _) => Write::Schedule(write, tx),
            Done::Token(write, tx, _) => Write::Token(write, tx),
        }
    }
}

fn reject(write: Write, error: &StoreError) {
    match write {
        Write::Enqueue(_, tx) => drop(tx.send(Err(error.clone()))),
        Write::Claim(_, tx) => drop(tx.send(Err(error.clone()))),
        Write::Heartbeat(_, _, _, tx) => drop(tx.send(Err(error.clone()))),
        Write::Settle(_, tx) | Write::EndQueued(_, tx) => drop(tx.send(Err(error.clone()))),
        Write::Cancel(_, _, tx) => drop(tx.send(Err(error.clone()))),
        Write::Sync(tx) => drop(tx.send(Err(error.clone()))),
        Write::Spawn(_, tx) => drop(tx.send(Err(error.clone()))),
        Write::Schedule(_, tx) => drop(tx.send(Err(error.clone()))),
        Write::Token(_, tx) => drop(tx.send(Err(error.clone()))),
        Write::Journal(_) | Write::Logs(_) => {}
    }
}

type Conn = SqliteConnection;

/// Applies one answered write in the open transaction; on failure, hands the write back
/// with its error.
async fn apply_one(conn: &mut Conn, write: Write) -> Result<Done, (Write, sqlx::Error)> {
    match write {
        Write::Enqueue(runs, tx) => match enqueue(conn, &runs).await {
            Ok(r) => Ok(Done::Enqueue(runs, tx, r)),
            Err(e) => Err((Write::Enqueue(runs, tx), e)),
        },
        Write::Claim(request, tx) => match claim(conn, &request).await {
            Ok(r) => Ok(Done::Claim(request, tx, r)),
            Err(e) => Err((Write::Claim(request, tx), e)),
        },
        Write::Heartbeat(owner, leases, extend, tx) => {
            match heartbeat(conn, &owner, &leases, extend).await {
                Ok(r) => Ok(Done::Heartbeat(owner, leases, extend, tx, r)),
                Err(e) => Err((Write::Heartbeat(owner, leases, extend, tx), e)),
            }
        }
        Write::Settle(outcomes, tx) => match settle(conn, &outcomes).await {
            Ok(r) => Ok(Done::Settle(outcomes, tx, r)),
            Err(e) => Err((Write::Settle(outcomes, tx), e)),
        },
        Write::EndQueued(ends, tx) => match end_queued(conn, &ends).await {
            Ok(r) => Ok(Done::EndQueued(ends, tx, r)),
            Err(e) => Err((Write::EndQueued(ends, tx), e)),
        },
        Write::Cancel(id, envelope, tx) => match cancel(conn, &id, &envelope).await {
            Ok(r) => Ok(Done::Cancel(id, envelope, tx, r)),
            Err(e) => Err((Write::Cancel(id, envelope, tx), e)),
        },
        // The journal queued before it is flushed first, in this transaction.
        Write::Sync(tx) => Ok(Done::Sync(tx)),
        Write::Spawn(spawn, tx) => match spawn_children(conn, &spawn).await {
            Ok(r) => Ok(Done::Spawn(spawn, tx, r)),
            Err(e) => Err((Write::Spawn(spawn, tx), e)),
        },
        Write::Schedule(write, tx) => match write_schedule(conn, &write).await {
            Ok(r) => Ok(Done::Schedule(write, tx, r)),
            Err(e) => Err((Write::Schedule(write, tx), e)),
        },
        Write::Token(write, tx) => match write_token(conn, &write).await {
            Ok(r) => Ok(Done::Token(write, tx, r)),
            Err(e) => Err((Write::Token(write, tx), e)),
        },
        Write::Journal(_) | Write::Logs(_) => unreachable!("handled by the batch"),
    }
}

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// A new run's row; its parameters are bound by [`bind_run`].
const INSERT_RUN: &str =
    "INSERT INTO runs (id, task, tenant_id, project_id, status, input, run_at, expire_at,
                   idempotency_key, idempotency_ttl_ms, tags, replay_of, created_at,
                   concurrency_key, concurrency_limit, trace_context)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

fn bind_run<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    run: &'q NewRun,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    let delayed = millis(run.run_at) > now;
    let (key, key_ttl) = match &run.idempotency {
        Some((key, ttl)) => (
            Some(key.as_str()),
            Some(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        ),
        None => (None, None),
    };
    query
        .bind(run.id.as_str())
        .bind(&run.task)
        .bind(&run.tenant_id)
        .bind(&run.project_id)
        .bind(if delayed { "delayed" } else { "queued" })
        .bind(json_text(&run.input))
        .bind(millis(run.run_at))
        .bind(run.expire_at.map(millis))
        .bind(key)
        .bind(key_ttl)
        .bind((!run.tags.is_empty()).then(|| json_text(&run.tags)))
        .bind(run.replay_of.as_ref().map(RunId::as_str))
        .bind(now)
        .bind(run.concurrency_key.as_ref().map(|(key, _)| key.as_str()))
        .bind(
            run.concurrency_key
                .as_ref()
                .map(|(_, limit)| i64::from(*limit)),
        )
        .bind(&run.trace_context)
}

/// One new run without an idempotency key alone in its batch (a trigger one by one), as
/// one framed call (see [`apply_framed`]). `None` for anything else.
async fn enqueue_framed(
    conn: &mut Conn,
    runs: &[NewRun],
) -> Option<Result<Vec<Enqueued>, sqlx::Error>> {
    let [run] = runs else { return None };
    if run.idempotency.is_some() {
        return None;
    }
    let now = millis(SystemTime::now());
    let sql = framed(INSERT_RUN);
    let inserted = bind_run(sqlx::query(AssertSqlSafe(sql)), run, now)
        .execute(&mut *conn)
        .await;
    Some(inserted.map(|_| {
        vec![Enqueued {
            id: run.id.clone(),
            existing: false,
        }]
    }))
}

async fn enqueue(conn: &mut Conn, runs: &[NewRun]) -> Result<Vec<Enqueued>, sqlx::Error> {
    let now = millis(SystemTime::now());
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        if let Some((key, _)) = &run.idempotency {
            // A failed, cancelled or expired holder, or one past its key's TTL, gives the
            // key up; a live one is the answer.
            sqlx::query(
                "UPDATE runs SET idempotency_key = NULL
                 WHERE task = ?1 AND coalesce(tenant_id, '') = coalesce(?2, '') AND idempotency_key = ?3
                   AND (status IN ('failed', 'cancelled', 'expired')
                        OR (idempotency_expires_at IS NOT NULL AND idempotency_expires_at <= ?4))",
            )
            .bind(&run.task)
            .bind(&run.tenant_id)
            .bind(key)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT id FROM runs
                 WHERE task = ?1 AND coalesce(tenant_id, '') = coalesce(?2, '') AND idempotency_key = ?3",
            )
            .bind(&run.task)
            .bind(&run.tenant_id)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(id) = existing.and_then(|id| id.parse().ok()) {
                out.push(Enqueued { id, existing: true });
                continue;
            }
        }
        bind_run(sqlx::query(INSERT_RUN), run, now)
            .execute(&mut *conn)
            .await?;
        out.push(Enqueued {
            id: run.id.clone(),
            existing: false,
        });
    }
    Ok(out)
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

async fn insert_schedule(
    conn: &mut Conn,
    s: &Schedule,
    on_conflict: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO schedules ({SCHEDULE_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) {on_conflict}"
    )))
    .bind(&s.id)
    .bind(&s.task)
    .bind(&s.cron)
    .bind(&s.timezone)
    .bind(&s.tenant_id)
    .bind(&s.project_id)
    .bind(&s.external_id)
    .bind(i64::from(s.declared))
    .bind(s.next_fire_at.map(millis))
    .bind(s.last_fired_at.map(millis))
    .bind(millis(s.created_at))
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

async fn write_schedule(
    conn: &mut Conn,
    write: &ScheduleWrite,
) -> Result<ScheduleReply, sqlx::Error> {
    match write {
        ScheduleWrite::Sync(declared, known) => {
            // A changed pattern starts again from its own next fire time.
            let update = "ON CONFLICT (id) DO UPDATE SET task = excluded.task,
                 cron = excluded.cron, timezone = excluded.timezone,
                 next_fire_at = CASE WHEN schedules.cron = excluded.cron
                                      AND schedules.timezone = excluded.timezone
                                     THEN schedules.next_fire_at ELSE excluded.next_fire_at END";
            for schedule in declared {
                insert_schedule(conn, schedule, update).await?;
            }
            let keep: Vec<&str> = declared.iter().map(|s| s.id.as_str()).collect();
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM schedules WHERE declared = 1 AND task IN ({}) AND id NOT IN ({})",
                placeholders(known.len(), 1),
                placeholders(keep.len(), known.len() + 1)
            )))
            .bind_all(known)
            .bind_all(&keep)
            .execute(&mut *conn)
            .await?;
            Ok(ScheduleReply::Done)
        }
        ScheduleWrite::Create(schedule) => {
            insert_schedule(conn, schedule, "").await?;
            Ok(ScheduleReply::Done)
        }
        ScheduleWrite::Delete(id) => {
            let deleted = sqlx::query("DELETE FROM schedules WHERE id = ?1 AND declared = 0")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(ScheduleReply::Deleted(deleted.rows_affected() == 1))
        }
        ScheduleWrite::Fire(fire) => {
            let moved = sqlx::query(
                "UPDATE schedules SET next_fire_at = ?1, last_fired_at = ?2
                 WHERE id = ?3 AND next_fire_at = ?4",
            )
            .bind(fire.next.map(millis))
            .bind(millis(fire.slot))
            .bind(&fire.id)
            .bind(millis(fire.expected))
            .execute(&mut *conn)
            .await?;
            if moved.rows_affected() == 0 {
                return Ok(ScheduleReply::Fired(None));
            }
            let Some(run) = &fire.run else {
                return Ok(ScheduleReply::Fired(None));
            };
            let enqueued = enqueue(conn, std::slice::from_ref(run)).await?;
            Ok(ScheduleReply::Fired(
                enqueued.into_iter().next().map(|e| e.id),
            ))
        }
    }
}

fn placeholders(count: usize, first: usize) -> String {
    (first..first + count)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn claim(conn: &mut Conn, request: &ClaimRequest) -> Result<Claimed, sqlx::Error> {
    let limit = request.limit;
    let runs = claim_runs(conn, request).await?;
    let next_due = if runs.len() < limit {
        let due: Option<i64> = sqlx::query_scalar(NEXT_DUE).fetch_one(&mut *conn).await?;
        due.map(time)
    } else {
        None
    };
    Ok(Claimed { runs, next_due })
}

/// What a claim returns of each run it claimed (see [`claimed_run`]).
const CLAIM_RETURNING: &str =
    "RETURNING id, task, input, attempts, lease_token, waits, spawned_by, trace_context";

/// Whether a run with a concurrency key is queued: then a claim must count what executes
/// with its key. On its partial index: the planner would pick `runs_by_status` and read
/// every queued row on every claim.
const KEYED_QUEUED: &str = "EXISTS (SELECT 1 FROM runs INDEXED BY runs_keyed_due
     WHERE concurrency_key IS NOT NULL AND status IN ('queued', 'delayed')
       AND parent_run_id IS NULL)";

/// When the next queued or delayed top-level run is due (a worker sleeps until then).
const NEXT_DUE: &str = "SELECT min(run_at) FROM runs INDEXED BY runs_due
     WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL";

/// The common claim, one statement: due runs, oldest first, unless a keyed run is queued
/// (then it updates nothing, and the claim that counts keys runs). Parameters: `?1` the
/// owner, `?2` the lease's end, `?3` now, `?4` how many.
fn claim_due_sql() -> String {
    format!(
        "UPDATE runs SET status = 'executing', lease_owner = ?1, lease_expires_at = ?2,
                lease_token = lease_token + 1, attempts = attempts + 1,
                started_at = coalesce(started_at, ?3)
         WHERE id IN (SELECT id FROM runs INDEXED BY runs_due
                      WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL
                        AND run_at <= (SELECT ?3) AND (expire_at IS NULL OR expire_at > ?3)
                      ORDER BY run_at, id LIMIT ?4)
           AND NOT {KEYED_QUEUED}
         {CLAIM_RETURNING}"
    )
}

/// The parameters of a claim: owner, lease end, now, limit.
fn claim_args(request: &ClaimRequest) -> (&str, i64, i64, i64) {
    let now = SystemTime::now();
    let lease_until = millis(later(now, request.lease));
    let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
    (&request.owner, lease_until, millis(now), limit)
}

/// [`claim_due_sql`]'s parameters bound: owner, lease end, now, limit.
fn bind_claim<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    request: &'q ClaimRequest,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    let (owner, lease_until, now, limit) = claim_args(request);
    query.bind(owner).bind(lease_until).bind(now).bind(limit)
}

/// The common claim (no task limits) alone in its batch, as one framed call (see
/// [`apply_framed`]) that also reads when the next run is due and whether a keyed run is
/// queued. `None` when it claimed nothing and a keyed run is queued: then the claim that
/// counts keys runs, in a transaction of its own.
async fn claim_framed(
    conn: &mut Conn,
    request: &ClaimRequest,
) -> Result<Option<Claimed>, sqlx::Error> {
    let sql = framed(&format!(
        "{};\nSELECT ({NEXT_DUE}) AS next_due, {KEYED_QUEUED} AS keyed",
        claim_due_sql()
    ));
    let mut rows = bind_claim(sqlx::query(AssertSqlSafe(sql)), request)
        .fetch_all(&mut *conn)
        .await?;
    let Some(last) = rows.pop() else {
        return Err(sqlx::Error::RowNotFound);
    };
    let keyed: bool = last.try_get("keyed")?;
    if rows.is_empty() && keyed {
        return Ok(None);
    }
    let runs = rows
        .iter()
        .map(claimed_run)
        .collect::<Result<Vec<_>, _>>()?;
    let next_due = if runs.len() < request.limit {
        last.try_get::<Option<i64>, _>("next_due")?.map(time)
    } else {
        None
    };
    Ok(Some(Claimed { runs, next_due }))
}

async fn claim_runs(
    conn: &mut Conn,
    request: &ClaimRequest,
) -> Result<Vec<ClaimedRun>, sqlx::Error> {
    let (owner, lease_until, now, limit) = claim_args(request);
    let mut plain = Vec::new();
    let simple = request.task_limits.is_empty() && {
        plain = bind_claim(sqlx::query(AssertSqlSafe(claim_due_sql())), request)
            .fetch_all(&mut *conn)
            .await?;
        // Nothing claimed: nothing was due, or a keyed run was queued.
        !plain.is_empty()
            || !sqlx::query_scalar::<_, bool>(AssertSqlSafe(format!("SELECT {KEYED_QUEUED}")))
                .fetch_one(&mut *conn)
                .await?
    };
    let rows: Vec<SqliteRow> = if simple {
        plain
    } else {
        // Tasks with a concurrency limit: count what executes now (in every process), leave
        // out the tasks at their limit, and take no more of each than its room.
        let tasks: Vec<&str> = request
            .task_limits
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        let counts: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT task, count(*) FROM runs INDEXED BY runs_executing
             WHERE status = 'executing' AND parent_run_id IS NULL AND task IN ({})
             GROUP BY task",
            placeholders(tasks.len(), 1)
        )))
        .bind_all(&tasks)
        .fetch_all(&mut *conn)
        .await?;
        let mut room: std::collections::HashMap<&str, i64> = request
            .task_limits
            .iter()
            .map(|(task, limit)| {
                let running = counts
                    .iter()
                    .find(|(t, _)| t == task)
                    .map_or(0, |(_, n)| *n);
                (task.as_str(), i64::from(*limit) - running)
            })
            .collect();
        let full: Vec<&str> = room
            .iter()
            .filter(|(_, r)| **r <= 0)
            .map(|(t, _)| *t)
            .collect();
        let exclude = if full.is_empty() {
            String::new()
        } else {
            format!("AND task NOT IN ({})", placeholders(full.len(), 3))
        };
        // A keyed run counts the runs executing with its key; a key at its limit is left
        // out, so its backlog does not hide other keys' runs.
        let key_running = "(SELECT count(*) FROM runs AS e
             WHERE e.concurrency_key = runs.concurrency_key AND e.task = runs.task
               AND e.status = 'executing' AND e.parent_run_id IS NULL)";
        // (id, task, concurrency key, its limit, runs executing with it)
        type Candidate = (String, String, Option<String>, Option<i64>, i64);
        let candidates: Vec<Candidate> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, task, concurrency_key, concurrency_limit,
                    CASE WHEN concurrency_key IS NULL THEN 0 ELSE {key_running} END
             FROM runs INDEXED BY runs_due
             WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL
               AND run_at <= ?1 AND (expire_at IS NULL OR expire_at > ?1) {exclude}
               AND (concurrency_key IS NULL OR {key_running} < concurrency_limit)
             ORDER BY run_at, id LIMIT ?2"
        )))
        .bind(now)
        .bind(limit.saturating_mul(4))
        .bind_all(&full)
        .fetch_all(&mut *conn)
        .await?;
        let mut chosen = Vec::new();
        let mut key_room: std::collections::HashMap<(String, String), i64> = Default::default();
        for (id, task, key, key_limit, key_running) in candidates {
            if chosen.len() >= request.limit {
                break;
            }
            if room.get(task.as_str()).is_some_and(|left| *left <= 0) {
                continue;
            }
            if let Some(key) = key {
                let left = key_room
                    .entry((task.clone(), key))
                    .or_insert(key_limit.unwrap_or(1) - key_running);
                if *left <= 0 {
                    continue;
                }
                *left -= 1;
            }
            if let Some(left) = room.get_mut(task.as_str()) {
                *left -= 1;
            }
            chosen.push(id);
        }
        if chosen.is_empty() {
            return Ok(Vec::new());
        }

        sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET status = 'executing', lease_owner = ?1, lease_expires_at = ?2,
                    lease_token = lease_token + 1, attempts = attempts + 1,
                    started_at = coalesce(started_at, ?3)
             WHERE status IN ('queued', 'delayed') AND id IN ({})
             {CLAIM_RETURNING}",
            placeholders(chosen.len(), 4)
        )))
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind_all(&chosen)
        .fetch_all(&mut *conn)
        .await?
    };
    rows.iter().map(claimed_run).collect()
}

/// A claimed run from a row of [`CLAIM_RETURNING`].
fn claimed_run(row: &SqliteRow) -> Result<ClaimedRun, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let input: String = row.try_get("input")?;
    Ok(ClaimedRun {
        id: parse_id(&id)?,
        task: row.try_get("task")?,
        input: serde_json::from_str(&input).map_err(|e| decode("input", e))?,
        attempt: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        token: row.try_get("lease_token")?,
        resumed: row.try_get::<i64, _>("waits")? > 0,
        spawned_by: row
            .try_get::<Option<String>, _>("spawned_by")?
            .map(|id| parse_id(&id))
            .transpose()?,
        trace_context: row.try_get("trace_context")?,
    })
}

async fn heartbeat(
    conn: &mut Conn,
    owner: &str,
    leases: &[Lease],
    extend: Duration,
) -> Result<HeartbeatReply, sqlx::Error> {
    let until = millis(later(SystemTime::now(), extend));
    let mut reply = HeartbeatReply::default();
    for chunk in leases.chunks(CHUNK) {
        // By primary key (a row-value `IN (VALUES ..)` would scan the table); a lease is
        // ours when the owner and the token still match.
        let ids: Vec<&str> = chunk.iter().map(|l| l.id.as_str()).collect();
        let kept = sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET lease_expires_at = ?1
             WHERE id IN ({}) AND lease_owner = ?2 AND status = 'executing'
             RETURNING id, lease_token, cancel_requested",
            placeholders(ids.len(), 3)
        )))
        .bind(until)
        .bind(owner)
        .bind_all(&ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut seen = std::collections::HashMap::new();
        for row in kept {
            let id: String = row.try_get("id")?;
            let token: i64 = row.try_get("lease_token")?;
            if row.try_get::<i64, _>("cancel_requested")? != 0 {
                reply.cancel.push(parse_id(&id)?);
            }
            seen.insert(id, token);
        }
        reply.lost.extend(
            chunk
                .iter()
                .filter(|l| seen.get(l.id.as_str()) != Some(&l.token))
                .map(|l| l.id.clone()),
        );
    }
    Ok(reply)
}

/// A finished run of a settle, written with the others of its batch: its place in the
/// batch, id, lease token and envelope.
type Finish<'a> = (usize, &'a RunId, i64, &'a RunOutput<Value>);

/// A settle that is a plain finish (its lease was not found expired first).
fn finish_of((i, outcome): (usize, &Settle)) -> Option<Finish<'_>> {
    match outcome {
        Settle::Finish {
            id,
            token,
            envelope,
            expired_before: None,
        } => Some((i, id, *token, &**envelope)),
        _ => None,
    }
}

/// One statement for `rows` finished runs, fenced by their lease tokens: `?1` is the time,
/// then four parameters a run ([`bind_finishes`]). Returns the runs it finished.
fn finish_sql(rows: usize) -> String {
    let values = (0..rows)
        .map(|i| {
            let b = 2 + 4 * i;
            format!("(?{b}, ?{}, ?{}, ?{})", b + 1, b + 2, b + 3)
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH v(id, token, status, envelope) AS (VALUES {values})
         UPDATE runs SET status = v.status, envelope = v.envelope, finished_at = ?1,
                lease_owner = NULL, lease_expires_at = NULL,
                idempotency_key = CASE WHEN v.status = 'completed' THEN runs.idempotency_key END,
                idempotency_expires_at = CASE WHEN v.status = 'completed' AND runs.idempotency_ttl_ms IS NOT NULL
                    THEN min(?1 + runs.idempotency_ttl_ms, 9000000000000000000) END
         FROM v
         WHERE runs.id = v.id AND runs.lease_token = v.token AND runs.status = 'executing'
         RETURNING runs.id, runs.spawned_by IS NOT NULL AS spawned"
    )
}

fn bind_finishes<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    now: i64,
    chunk: &[Finish<'q>],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    let mut query = query.bind(now);
    for (_, id, token, envelope) in chunk {
        query = query
            .bind(id.as_str())
            .bind(*token)
            .bind(RunStatus::of_envelope(envelope).as_str())
            .bind(json_text(envelope));
    }
    query
}

/// Marks which runs of `chunk` the statement finished (the others' leases were no longer
/// theirs); whether one of them was a spawned child (its parent may wake).
fn mark_finished(
    rows: &[SqliteRow],
    chunk: &[Finish<'_>],
    applied: &mut [bool],
) -> Result<bool, sqlx::Error> {
    let mut wake = false;
    let mut done: Vec<String> = Vec::with_capacity(rows.len());
    for row in rows {
        done.push(row.try_get("id")?);
        wake |= row.try_get::<bool, _>("spawned")?;
    }
    for (i, id, _, _) in chunk {
        applied[*i] = done.iter().any(|d| d == id.as_str());
    }
    Ok(wake)
}

/// A worker's finished runs alone in their batch, as one framed call (see
/// [`apply_framed`]), with the wake of their parents (a no-op when none waits: its
/// partial index is empty). `None` when the settle is not only plain finishes.
async fn settle_framed(
    conn: &mut Conn,
    outcomes: &[Settle],
) -> Option<Result<Vec<bool>, sqlx::Error>> {
    let finished: Vec<Finish<'_>> = outcomes.iter().enumerate().filter_map(finish_of).collect();
    if finished.len() != outcomes.len() || finished.len() > CHUNK {
        return None;
    }
    let now = millis(SystemTime::now());
    let sql = framed(&format!("{};\n{WAKE_PARENTS}", finish_sql(finished.len())));
    let rows = match bind_finishes(sqlx::query(AssertSqlSafe(sql)), now, &finished)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => rows,
        Err(error) => return Some(Err(error)),
    };
    let mut applied = vec![false; outcomes.len()];
    Some(mark_finished(&rows, &finished, &mut applied).map(|_| applied))
}

async fn settle(conn: &mut Conn, outcomes: &[Settle]) -> Result<Vec<bool>, sqlx::Error> {
    let now = millis(SystemTime::now());
    let mut applied = vec![false; outcomes.len()];
    // Whether a parent may have to wake: a spawned child ended, a parent suspended to wait
    // for its children, or a reclaimed run ended (rare, not looked at closer).
    let mut wake = false;
    // A worker's finished runs: one statement for all of them.
    let finished: Vec<Finish<'_>> = outcomes.iter().enumerate().filter_map(finish_of).collect();
    for chunk in finished.chunks(CHUNK) {
        let rows = bind_finishes(
            sqlx::query(AssertSqlSafe(finish_sql(chunk.len()))),
            now,
            chunk,
        )
        .fetch_all(&mut *conn)
        .await?;
        wake |= mark_finished(&rows, chunk, &mut applied)?;
    }
    for (i, outcome) in outcomes.iter().enumerate() {
        let result = match outcome {
            Settle::Finish {
                expired_before: None,
                ..
            } => continue,
            Settle::Finish {
                id,
                token,
                envelope,
                expired_before,
            } => {
                wake = true;
                let status = RunStatus::of_envelope(envelope);
                let completed = status == RunStatus::Completed;
                sqlx::query(
                    "UPDATE runs SET status = ?1, envelope = ?2, finished_at = ?3,
                            lease_owner = NULL, lease_expires_at = NULL,
                            idempotency_key = CASE WHEN ?4 THEN idempotency_key END,
                            idempotency_expires_at = CASE WHEN ?4 AND idempotency_ttl_ms IS NOT NULL
                                THEN min(?3 + idempotency_ttl_ms, 9000000000000000000) END
                     WHERE id = ?5 AND lease_token = ?6 AND status = 'executing'
                       AND (?7 IS NULL OR lease_expires_at < ?7)",
                )
                .bind(status.as_str())
                .bind(json_text(envelope))
                .bind(now)
                .bind(completed)
                .bind(id.as_str())
                .bind(token)
                .bind(expired_before.map(millis))
                .execute(&mut *conn)
                .await?
            }
            Settle::Retry {
                id,
                token,
                run_at,
                error,
                expired_before,
            } => {
                sqlx::query(
                    "UPDATE runs SET status = 'queued', run_at = ?1, lease_owner = NULL, lease_expires_at = NULL,
                            retried = json_insert(coalesce(retried, '[]'), '$[#]', json(?2))
                     WHERE id = ?3 AND lease_token = ?4 AND status = 'executing'
                       AND (?5 IS NULL OR lease_expires_at < ?5)",
                )
                .bind(millis(*run_at))
                .bind(json_text(error))
                .bind(id.as_str())
                .bind(token)
                .bind(expired_before.map(millis))
                .execute(&mut *conn)
                .await?
            }
            Settle::Release { id, token } => {
                sqlx::query(
                    "UPDATE runs SET status = 'queued', attempts = attempts - 1,
                            lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = ?1 AND lease_token = ?2 AND status = 'executing'",
                )
                .bind(id.as_str())
                .bind(token)
                .execute(&mut *conn)
                .await?
            }
            Settle::Suspend {
                id,
                token,
                wake_at,
                wait_token,
                children,
            } => {
                wake |= children.is_some();
                // A token completed before this settle (while the attempt wound down) wakes
                // the run at once: the writer orders this against `complete_token`.
                let result = sqlx::query(
                    "UPDATE runs SET
                            status = CASE WHEN ?3 IS NOT NULL AND EXISTS (SELECT 1 FROM wait_tokens
                                        WHERE wait_tokens.id = ?3 AND wait_tokens.status = 'completed')
                                     THEN 'queued' ELSE 'waiting' END,
                            run_at = CASE WHEN ?3 IS NOT NULL AND EXISTS (SELECT 1 FROM wait_tokens
                                        WHERE wait_tokens.id = ?3 AND wait_tokens.status = 'completed')
                                     THEN ?4 ELSE ?5 END,
                            attempts = attempts - 1, waits = waits + 1, expire_at = NULL,
                            lease_owner = NULL, lease_expires_at = NULL,
                            wait_children = ?6, wait_children_fail = ?7
                     WHERE id = ?1 AND lease_token = ?2 AND status = 'executing'",
                )
                .bind(id.as_str())
                .bind(token)
                .bind(wait_token)
                .bind(now)
                .bind(millis(*wake_at))
                .bind(children.map(|c| i64::from(c.open_at_most)))
                .bind(children.is_some_and(|c| c.on_failure))
                .execute(&mut *conn)
                .await?;
                if result.rows_affected() == 1
                    && let Some(wait_token) = wait_token
                {
                    sqlx::query("UPDATE wait_tokens SET run_id = ?2 WHERE id = ?1")
                        .bind(wait_token)
                        .bind(id.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
                result
            }
        };
        applied[i] = result.rows_affected() == 1;
    }
    // The settle of a parent's last child (or the one that leaves room) wakes the parent;
    // so does a parent's own suspension when its children already ended meanwhile. One
    // writer orders both, so no wake is missed. (Only then: a drain of top-level runs
    // pays no statement for it.)
    if wake {
        wake_parents(conn, now).await?;
    }
    Ok(applied)
}

/// Queues the parents waiting for spawned children whose wake condition holds.
async fn wake_parents(conn: &mut Conn, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(WAKE_PARENTS)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Queues the parents waiting for spawned children whose wake condition holds; `?1` is the
/// time. A parent goes back at its creation time: ahead of its own queued children, so a
/// fail-fast parent cancels them before they run.
const WAKE_PARENTS: &str = "UPDATE runs SET status = 'queued', run_at = min(created_at, ?1), wait_children = NULL, wait_children_fail = 0
     WHERE id IN (SELECT p.id FROM runs AS p INDEXED BY runs_waiting_children
                  WHERE p.status = 'waiting' AND p.wait_children IS NOT NULL
                    AND ((SELECT count(*) FROM runs AS c WHERE c.spawned_by = p.id
                            AND c.status IN ('queued', 'delayed', 'executing', 'waiting')) <= p.wait_children
                         OR (p.wait_children_fail = 1 AND EXISTS (SELECT 1 FROM runs AS c
                             WHERE c.spawned_by = p.id AND c.status IN ('failed', 'cancelled', 'expired')))))";

/// Enqueues a parent's children, a multi-row statement per chunk, fenced by the parent's
/// lease; a position that has a child already keeps it.
async fn spawn_children(conn: &mut Conn, spawn: &Spawn) -> Result<usize, sqlx::Error> {
    let now = millis(SystemTime::now());
    let mut added = 0;
    let (again, new): (Vec<&NewChild>, Vec<&NewChild>) =
        spawn.children.iter().partition(|child| child.again);
    // Eight parameters a row, three before them.
    for chunk in new.chunks(CHUNK * 4) {
        let rows = (0..chunk.len())
            .map(|i| {
                let b = 4 + 8 * i;
                format!(
                    "(?{b}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO runs (id, task, tenant_id, project_id, input, position, spawn_attempt,
                               trace_context, status, run_at, created_at, spawned_by, root_run_id)
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7,
                    v.column8, 'queued', ?3, ?3, ?1, ?1
             FROM (VALUES {rows}) AS v WHERE {ROOT_HELD}
             ON CONFLICT DO NOTHING"
        )))
        .bind(spawn.parent.as_str())
        .bind(spawn.token)
        .bind(now);
        for child in chunk {
            query = query
                .bind(child.id.as_str())
                .bind(&child.task)
                .bind(&child.tenant_id)
                .bind(&child.project_id)
                .bind(json_text(&child.input))
                .bind(&child.position)
                .bind(i64::from(child.parent_attempt))
                .bind(&child.trace_context);
        }
        let result = query.execute(&mut *conn).await?;
        added += usize::try_from(result.rows_affected()).unwrap_or(0);
    }
    // Children that failed in an earlier attempt of the parent: queued again with fresh
    // attempts; `waits` makes their claim load the journal they keep.
    for chunk in again.chunks(CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|c| c.id.as_str()).collect();
        let attempt = chunk.iter().map(|c| c.parent_attempt).max().unwrap_or(1);
        // One attempt of the parent queues them all: one trace context.
        let trace = chunk.iter().find_map(|c| c.trace_context.as_deref());
        let result = sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET status = 'queued', run_at = ?3, attempts = 0, retried = NULL,
                    envelope = NULL, output = NULL, error = NULL, finished_at = NULL,
                    cancel_requested = 0, lease_owner = NULL, lease_expires_at = NULL,
                    waits = waits + 1, spawn_attempt = ?4, trace_context = ?5
             WHERE spawned_by = ?1 AND status IN ('failed', 'cancelled', 'expired')
               AND {ROOT_HELD} AND id IN ({})",
            placeholders(ids.len(), 6)
        )))
        .bind(spawn.parent.as_str())
        .bind(spawn.token)
        .bind(now)
        .bind(i64::from(attempt))
        .bind(trace)
        .bind_all(&ids)
        .execute(&mut *conn)
        .await?;
        added += usize::try_from(result.rows_affected()).unwrap_or(0);
    }
    Ok(added)
}

async fn end_queued(
    conn: &mut Conn,
    ends: &[(RunId, Box<RunOutput<Value>>)],
) -> Result<Vec<bool>, sqlx::Error> {
    let now = millis(SystemTime::now());
    let mut applied = Vec::with_capacity(ends.len());
    for (id, envelope) in ends {
        let result = sqlx::query(
            "UPDATE runs SET status = ?1, envelope = ?2, finished_at = ?3, idempotency_key = NULL
             WHERE id = ?4 AND status IN ('queued', 'delayed', 'waiting')",
        )
        .bind(RunStatus::of_envelope(envelope).as_str())
        .bind(json_text(&envelope))
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
        applied.push(result.rows_affected() == 1);
    }
    wake_parents(conn, now).await?;
    Ok(applied)
}

async fn cancel(
    conn: &mut Conn,
    id: &RunId,
    envelope: &RunOutput<Value>,
) -> Result<CancelOutcome, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = ?1")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(status) = status else {
        return Ok(CancelOutcome::NotFound);
    };
    let status = parse_status(&status)?;
    match status {
        // A waiting run holds no worker: it ends at once, like a queued one.
        RunStatus::Queued | RunStatus::Delayed | RunStatus::Waiting => {
            end_queued(conn, &[(id.clone(), Box::new(envelope.clone()))]).await?;
            Ok(CancelOutcome::Cancelled)
        }
        RunStatus::Executing => {
            sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = ?1")
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(CancelOutcome::Requested)
        }
        finished => Ok(CancelOutcome::AlreadyFinished(finished)),
    }
}

/// The root's lease still holds (the writer of a journal entry is its root's owner).
const ROOT_HELD: &str = "EXISTS (SELECT 1 FROM runs AS root WHERE root.id = ?1 AND root.lease_token = ?2 AND root.status = 'executing')";

async fn flush_journal(
    conn: &mut Conn,
    ops: Vec<JournalOp>,
    fail: &impl Fn(&sqlx::Error) -> StoreError,
) {
    for op in ops {
        let result = match op {
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
                at,
            } => {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO runs (id, task, tenant_id, project_id, status, input, attempts, run_at,
                                       created_at, started_at, parent_run_id, root_run_id, position)
                     SELECT ?3, ?4, ?5, ?6, 'executing', ?7, 0, ?8, ?8, ?8, ?9, ?1, ?10 WHERE {ROOT_HELD}
                     ON CONFLICT (id) DO UPDATE SET status = 'executing', output = NULL, error = NULL,
                                                    finished_at = NULL"
                )))
                .bind(root.as_str())
                .bind(token)
                .bind(id.as_str())
                .bind(task)
                .bind(tenant_id)
                .bind(project_id)
                .bind(json_text(&input))
                .bind(millis(at))
                .bind(parent.as_str())
                .bind(position)
                .execute(&mut *conn)
                .await
            }
            JournalOp::Finish {
                root,
                token,
                id,
                status,
                output,
                error,
                attempts,
                at,
            } => {
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE runs SET status = ?3, output = ?4, error = ?5, attempts = attempts + ?6, finished_at = ?7
                     WHERE id = ?8 AND {ROOT_HELD}"
                )))
                .bind(root.as_str())
                .bind(token)
                .bind(status.as_str())
                .bind(output.as_ref().map(json_text))
                .bind(error.as_ref().map(json_text))
                .bind(i64::from(attempts))
                .bind(millis(at))
                .bind(id.as_str())
                .execute(&mut *conn)
                .await
            }
        };
        if let Err(e) = result {
            let error = fail(&e);
            tracing::warn!(%error, "journal write failed; the step may run again on a retry");
        }
    }
}

async fn flush_logs(
    conn: &mut Conn,
    lines: Vec<LogLine>,
    fail: &impl Fn(&sqlx::Error) -> StoreError,
) {
    for chunk in lines.chunks(CHUNK) {
        let rows = (0..chunk.len())
            .map(|i| {
                let b = 1 + 5 * i;
                format!("(?{b}, ?{}, ?{}, ?{}, ?{})", b + 1, b + 2, b + 3, b + 4)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO run_logs (run_id, at, level, message, fields) VALUES {rows}"
        )));
        for line in chunk {
            query = query
                .bind(line.run_id.as_str())
                .bind(millis(line.at))
                .bind(&line.level)
                .bind(&line.message)
                .bind(json_text(&line.fields));
        }
        if let Err(e) = query.execute(&mut *conn).await {
            let error = fail(&e);
            tracing::warn!(%error, lines = chunk.len(), "storing log lines failed");
        }
    }
}

trait BindAll<'q> {
    fn bind_all<T: AsRef<str>>(self, values: &[T]) -> Self;
}

impl<'q, O> BindAll<'q>
    for sqlx::query::QueryAs<'q, sqlx::Sqlite, O, sqlx::sqlite::SqliteArguments>
{
    fn bind_all<T: AsRef<str>>(mut self, values: &[T]) -> Self {
        for value in values {
            self = self.bind(value.as_ref().to_owned());
        }
        self
    }
}

impl<'q> BindAll<'q> for sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    fn bind_all<T: AsRef<str>>(mut self, values: &[T]) -> Self {
        for value in values {
            self = self.bind(value.as_ref().to_owned());
        }
        self
    }
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
        input: json_column(row, "input")?.unwrap_or_default(),
        envelope: json_column(row, "envelope")?,
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
        Box::pin(self.write(|tx| Write::Enqueue(runs, tx)))
    }

    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claimed, StoreError>> {
        Box::pin(self.write(|tx| Write::Claim(request, tx)))
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
        Box::pin(self.write(|tx| Write::Settle(outcomes, tx)))
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
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind_all(&binds)
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

async fn write_token(conn: &mut Conn, write: &TokenWrite) -> Result<TokenReply, sqlx::Error> {
    match write {
        TokenWrite::Create(token) => {
            sqlx::query(
                "INSERT INTO wait_tokens (id, tenant_id, tags, status, timeout_at, created_at)
                 VALUES (?1, ?2, ?3, 'waiting', ?4, ?5)",
            )
            .bind(&token.id)
            .bind(&token.tenant_id)
            .bind((!token.tags.is_empty()).then(|| json_text(&token.tags)))
            .bind(token.timeout_at.map(millis))
            .bind(millis(token.created_at))
            .execute(&mut *conn)
            .await?;
            Ok(TokenReply::Done)
        }
        TokenWrite::Complete(id, data, now) => {
            let row: Option<(String, Option<i64>, Option<String>)> =
                sqlx::query_as("SELECT status, timeout_at, run_id FROM wait_tokens WHERE id = ?1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            let Some((status, timeout_at, run_id)) = row else {
                return Ok(TokenReply::Completed(TokenCompletion::NotFound));
            };
            if status == "completed" {
                return Ok(TokenReply::Completed(TokenCompletion::AlreadyCompleted));
            }
            if timeout_at.is_some_and(|t| t <= millis(*now)) {
                return Ok(TokenReply::Completed(TokenCompletion::TimedOut));
            }
            if let Some(run_id) = &run_id {
                let run_status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM runs WHERE id = ?1")
                        .bind(run_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                if run_status.as_deref() == Some("cancelled") {
                    return Ok(TokenReply::Completed(TokenCompletion::RunCancelled));
                }
            }
            let at = millis(SystemTime::now());
            sqlx::query(
                "UPDATE wait_tokens SET status = 'completed', data = ?2, completed_at = ?3 WHERE id = ?1",
            )
            .bind(id)
            .bind(json_text(data))
            .bind(millis(*now))
            .execute(&mut *conn)
            .await?;
            if let Some(run_id) = &run_id {
                // Due now on the system clock, which claims read.
                sqlx::query(
                    "UPDATE runs SET status = 'queued', run_at = ?2 WHERE id = ?1 AND status = 'waiting'",
                )
                .bind(run_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            Ok(TokenReply::Completed(TokenCompletion::Completed))
        }
        TokenWrite::Wake(now) => {
            // Due now on the system clock, which claims read (`now` may be a test's clock).
            let woken = sqlx::query(
                "UPDATE runs SET status = 'queued', run_at = ?2
                 WHERE id IN (SELECT id FROM runs INDEXED BY runs_waiting
                              WHERE status = 'waiting' AND parent_run_id IS NULL AND run_at <= ?1)",
            )
            .bind(millis(*now))
            .bind(millis(SystemTime::now()))
            .execute(&mut *conn)
            .await?;
            Ok(TokenReply::Woken(
                usize::try_from(woken.rows_affected()).unwrap_or(usize::MAX),
            ))
        }
    }
}

fn corrupt(id: &RunId, error: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        reason: error.to_string(),
    }
}
