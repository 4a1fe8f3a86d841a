//! The SQLite store's writer: one connection on a thread of its own, which takes every
//! waiting write (triggers, claims, settles, journal entries, log lines) and applies them in
//! one `BEGIN IMMEDIATE` transaction.
//!
//! A batch is one hand-off: the writes reach this thread over a channel, every statement of
//! the batch runs here (prepared once, cached), and each answer goes back once its
//! transaction committed. (sqlx-sqlite runs a connection on a thread of its own too, but
//! hands it every statement and each answer back: two thread switches a statement, which
//! were most of a drain's time.) Reads stay on sqlx's pool.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use rusqlite::config::DbConfig;
use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, ToSql, params, params_from_iter};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{
    CHUNK, Encoded, LocalChanges, RawClaimed, ScheduleReply, ScheduleWrite, Spawn, TokenReply,
    TokenWrite, Write, classify_code, json_text, placeholders,
};
use crate::envelope::RunOutput;
use crate::id::RunId;
use crate::runs::RunStatus;
use crate::schedules::Schedule;
use crate::store::{
    CancelOutcome, ClaimRequest, Claimed, ClaimedRun, Enqueued, HeartbeatReply, JournalOp, Lease,
    LogLine, NewChild, NewRun, Settle, StoreError, later, millis, time,
};
use crate::tokens::TokenCompletion;

type Conn = Connection;
type Result<T, E = rusqlite::Error> = std::result::Result<T, E>;

/// Parameters of a statement whose rows are counted at run time.
type Args<'a> = Vec<Box<dyn ToSql + 'a>>;

/// Statements cached per connection: the fixed ones, and multi-row ones of a few sizes.
const CACHED_STATEMENTS: usize = 128;

/// Where the writer's file is and how it opens it.
pub(super) struct Open<'a> {
    pub path: &'a str,
    /// `NORMAL` or `FULL`.
    pub synchronous: &'static str,
    pub busy: Duration,
    pub max_pages: Option<u64>,
}

/// Opens the writer's connection to a migrated file and starts its thread, which applies
/// what `queue` brings until every sender is gone.
pub(super) fn start(
    open: &Open<'_>,
    queue: mpsc::UnboundedReceiver<Write>,
    local: Arc<LocalChanges>,
) -> Result<(), StoreError> {
    let path = open.path.to_owned();
    let busy = open.busy;
    let fail = move |e: &rusqlite::Error| classify(&path, busy, e);
    let conn = connect(open).map_err(|e| fail(&e))?;
    std::thread::Builder::new()
        .name("sqlite-writer".to_owned())
        .spawn(move || run(conn, queue, local, &fail))
        .map_err(|e| StoreError::Backend {
            reason: format!("cannot start the store's writer thread: {e}"),
        })?;
    Ok(())
}

fn connect(open: &Open<'_>) -> Result<Conn> {
    let conn = Connection::open_with_flags(
        open.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(open.busy)?;
    conn.pragma_update(None, "synchronous", open.synchronous)?;
    conn.pragma_update(None, "foreign_keys", false)?;
    if let Some(pages) = open.max_pages {
        // It answers with the new maximum.
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
    }
    // Plans that do not depend on the values bound: SQLite (built with STAT4, as the bundled
    // one is) otherwise prepares a statement again whenever a value that could change its
    // plan changes (a claim's `LIMIT ?4`, its time), which was a third of a claim's cost.
    // Every query of the writer names its index where it matters.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(CACHED_STATEMENTS);
    Ok(conn)
}

/// What a write's error means for the user.
fn classify(path: &str, busy: Duration, error: &rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::SqliteFailure(failure, message) => classify_code(
            path,
            busy,
            failure.extended_code,
            message.clone().unwrap_or_else(|| failure.to_string()),
        ),
        other => StoreError::Backend {
            reason: other.to_string(),
        },
    }
}

/// The writer's loop: takes every waiting write and commits them in one transaction.
fn run(
    mut conn: Conn,
    mut queue: mpsc::UnboundedReceiver<Write>,
    local: Arc<LocalChanges>,
    fail: &impl Fn(&rusqlite::Error) -> StoreError,
) {
    let mut batch = Vec::new();
    while queue.blocking_recv_many(&mut batch, 512) > 0 {
        let writes = std::mem::take(&mut batch);
        // A batch of claims and heartbeats only changes nothing a waiter waits for (a claim
        // loop would otherwise wake itself with its own claim); any other write (a new run,
        // a settle, a token, a cancel, log lines a stream follows) is a change.
        let change = writes
            .iter()
            .any(|write| !matches!(write, Write::Claim(..) | Write::Heartbeat(..)));
        apply_batch(&mut conn, writes, fail);
        if change {
            local.generation.fetch_add(1, Ordering::AcqRel);
            local.notify.notify_waiters();
        }
    }
}

fn exec(conn: &Conn, sql: &'static str) -> Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Applies `writes` in one transaction (one commit for everything waiting: concurrent
/// triggers, a worker's settles and its next claim). When a write fails (a constraint, a
/// full disk), the transaction is rolled back, that write is answered with its error, and
/// the others are applied again in a new transaction: each write is all or nothing, and
/// none is answered before its transaction committed.
fn apply_batch(
    conn: &mut Conn,
    writes: Vec<Write>,
    fail: &impl Fn(&rusqlite::Error) -> StoreError,
) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
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
            flush_journal(conn, std::mem::take(&mut journal), fail);
        }
        match apply_one(conn, write) {
            Ok(d) => done.push(d),
            Err(failed) => {
                let (failed, error) = *failed;
                let error = fail(&error);
                tracing::warn!(%error, "a store write failed; applying the others again without it");
                // A failed `BEGIN` leaves nothing to roll back; SQLite rolls some failures
                // back by itself (a full disk): either way nothing of it is kept.
                let _ = exec(conn, "ROLLBACK");
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
                    apply_batch(conn, rest, fail);
                }
                return;
            }
        }
    }
    if !journal.is_empty() {
        flush_journal(conn, journal, fail);
    }
    if !logs.is_empty() {
        flush_logs(conn, logs, fail);
    }
    let commit = exec(conn, "COMMIT").map_err(|e| fail(&e));
    if let Err(error) = &commit {
        tracing::warn!(%error, "store commit failed; nothing of this batch was kept");
        let _ = exec(conn, "ROLLBACK");
    }
    for d in done {
        d.send(commit.clone());
    }
}

/// A write applied in the open transaction, waiting for the commit to be answered.
enum Done {
    Enqueue(
        Encoded<Vec<NewRun>>,
        oneshot::Sender<Result<Vec<Enqueued>, StoreError>>,
        Vec<Enqueued>,
    ),
    Claim(
        ClaimRequest,
        oneshot::Sender<Result<RawClaimed, StoreError>>,
        RawClaimed,
    ),
    Heartbeat(
        String,
        Vec<Lease>,
        Duration,
        oneshot::Sender<Result<HeartbeatReply, StoreError>>,
        HeartbeatReply,
    ),
    Settle(
        Encoded<Arc<Vec<Settle>>>,
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

/// Applies one answered write in the open transaction; on failure, hands the write back
/// with its error.
fn apply_one(conn: &Conn, write: Write) -> Result<Done, Box<(Write, rusqlite::Error)>> {
    match write {
        Write::Enqueue(runs, tx) => match enqueue(conn, &runs.items, &runs.json) {
            Ok(r) => Ok(Done::Enqueue(runs, tx, r)),
            Err(e) => Err(Box::new((Write::Enqueue(runs, tx), e))),
        },
        Write::Claim(request, tx) => match claim(conn, &request) {
            Ok(r) => Ok(Done::Claim(request, tx, r)),
            Err(e) => Err(Box::new((Write::Claim(request, tx), e))),
        },
        Write::Heartbeat(owner, leases, extend, tx) => {
            match heartbeat(conn, &owner, &leases, extend) {
                Ok(r) => Ok(Done::Heartbeat(owner, leases, extend, tx, r)),
                Err(e) => Err(Box::new((Write::Heartbeat(owner, leases, extend, tx), e))),
            }
        }
        Write::Settle(outcomes, tx) => match settle(conn, &outcomes.items, &outcomes.json) {
            Ok(r) => Ok(Done::Settle(outcomes, tx, r)),
            Err(e) => Err(Box::new((Write::Settle(outcomes, tx), e))),
        },
        Write::EndQueued(ends, tx) => match end_queued(conn, &ends) {
            Ok(r) => Ok(Done::EndQueued(ends, tx, r)),
            Err(e) => Err(Box::new((Write::EndQueued(ends, tx), e))),
        },
        Write::Cancel(id, envelope, tx) => match cancel(conn, &id, &envelope) {
            Ok(r) => Ok(Done::Cancel(id, envelope, tx, r)),
            Err(e) => Err(Box::new((Write::Cancel(id, envelope, tx), e))),
        },
        // The journal queued before it is flushed first, in this transaction.
        Write::Sync(tx) => Ok(Done::Sync(tx)),
        Write::Spawn(spawn, tx) => match spawn_children(conn, &spawn) {
            Ok(r) => Ok(Done::Spawn(spawn, tx, r)),
            Err(e) => Err(Box::new((Write::Spawn(spawn, tx), e))),
        },
        Write::Schedule(write, tx) => match write_schedule(conn, &write) {
            Ok(r) => Ok(Done::Schedule(write, tx, r)),
            Err(e) => Err(Box::new((Write::Schedule(write, tx), e))),
        },
        Write::Token(write, tx) => match write_token(conn, &write) {
            Ok(r) => Ok(Done::Token(write, tx, r)),
            Err(e) => Err(Box::new((Write::Token(write, tx), e))),
        },
        Write::Journal(_) | Write::Logs(_) => unreachable!("handled by the batch"),
    }
}

/// A value read back that does not parse (`what` names it).
fn undecodable(what: &str, error: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, Type::Text, format!("{what}: {error}").into())
}

fn run_id(text: &str) -> Result<RunId> {
    text.parse().map_err(|e| undecodable("id", e))
}

const INSERT_RUN: &str =
    "INSERT INTO runs (id, task, tenant_id, project_id, status, input, run_at, expire_at,
                   idempotency_key, idempotency_ttl_ms, tags, replay_of, created_at,
                   concurrency_key, concurrency_limit, trace_context)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

fn insert_run(conn: &Conn, run: &NewRun, input: &str, now: i64) -> Result<()> {
    let delayed = millis(run.run_at) > now;
    let (key, key_ttl) = match &run.idempotency {
        Some((key, ttl)) => (
            Some(key.as_str()),
            Some(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        ),
        None => (None, None),
    };
    conn.prepare_cached(INSERT_RUN)?.execute(params![
        run.id.as_str(),
        run.task,
        run.tenant_id,
        run.project_id,
        if delayed { "delayed" } else { "queued" },
        input,
        millis(run.run_at),
        run.expire_at.map(millis),
        key,
        key_ttl,
        (!run.tags.is_empty()).then(|| json_text(&run.tags)),
        run.replay_of.as_ref().map(RunId::as_str),
        now,
        run.concurrency_key.as_ref().map(|(key, _)| key.as_str()),
        run.concurrency_key
            .as_ref()
            .map(|(_, limit)| i64::from(*limit)),
        run.trace_context,
    ])?;
    Ok(())
}

/// New runs, `inputs` their inputs as JSON text.
fn enqueue(conn: &Conn, runs: &[NewRun], inputs: &[String]) -> Result<Vec<Enqueued>> {
    let now = millis(SystemTime::now());
    let mut out = Vec::with_capacity(runs.len());
    for (run, input) in runs.iter().zip(inputs) {
        if let Some((key, _)) = &run.idempotency {
            // A failed, cancelled or expired holder, or one past its key's TTL, gives the
            // key up; a live one is the answer.
            conn.prepare_cached(
                "UPDATE runs SET idempotency_key = NULL
                 WHERE task = ?1 AND coalesce(tenant_id, '') = coalesce(?2, '') AND idempotency_key = ?3
                   AND (status IN ('failed', 'cancelled', 'expired')
                        OR (idempotency_expires_at IS NOT NULL AND idempotency_expires_at <= ?4))",
            )?
            .execute(params![run.task, run.tenant_id, key, now])?;
            let existing: Option<String> = conn
                .prepare_cached(
                    "SELECT id FROM runs
                     WHERE task = ?1 AND coalesce(tenant_id, '') = coalesce(?2, '') AND idempotency_key = ?3",
                )?
                .query_row(params![run.task, run.tenant_id, key], |row| row.get(0))
                .optional()?;
            if let Some(id) = existing.and_then(|id| id.parse().ok()) {
                out.push(Enqueued { id, existing: true });
                continue;
            }
        }
        insert_run(conn, run, input, now)?;
        out.push(Enqueued {
            id: run.id.clone(),
            existing: false,
        });
    }
    Ok(out)
}

fn insert_schedule(conn: &Conn, s: &Schedule, on_conflict: &str) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO schedules ({})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) {on_conflict}",
        super::SCHEDULE_COLUMNS
    ))?
    .execute(params![
        s.id,
        s.task,
        s.cron,
        s.timezone,
        s.tenant_id,
        s.project_id,
        s.external_id,
        i64::from(s.declared),
        s.next_fire_at.map(millis),
        s.last_fired_at.map(millis),
        millis(s.created_at),
    ])?;
    Ok(())
}

fn write_schedule(conn: &Conn, write: &ScheduleWrite) -> Result<ScheduleReply> {
    match write {
        ScheduleWrite::Sync(declared, known) => {
            // A changed pattern starts again from its own next fire time.
            let update = "ON CONFLICT (id) DO UPDATE SET task = excluded.task,
                 cron = excluded.cron, timezone = excluded.timezone,
                 next_fire_at = CASE WHEN schedules.cron = excluded.cron
                                      AND schedules.timezone = excluded.timezone
                                     THEN schedules.next_fire_at ELSE excluded.next_fire_at END";
            for schedule in declared {
                insert_schedule(conn, schedule, update)?;
            }
            let keep = declared.iter().map(|s| s.id.as_str());
            conn.prepare_cached(&format!(
                "DELETE FROM schedules WHERE declared = 1 AND task IN ({}) AND id NOT IN ({})",
                placeholders(known.len(), 1),
                placeholders(declared.len(), known.len() + 1)
            ))?
            .execute(params_from_iter(
                known.iter().map(String::as_str).chain(keep),
            ))?;
            Ok(ScheduleReply::Done)
        }
        ScheduleWrite::Create(schedule) => {
            insert_schedule(conn, schedule, "")?;
            Ok(ScheduleReply::Done)
        }
        ScheduleWrite::Delete(id) => {
            let deleted = conn
                .prepare_cached("DELETE FROM schedules WHERE id = ?1 AND declared = 0")?
                .execute(params![id])?;
            Ok(ScheduleReply::Deleted(deleted == 1))
        }
        ScheduleWrite::Fire(fire) => {
            let moved = conn
                .prepare_cached(
                    "UPDATE schedules SET next_fire_at = ?1, last_fired_at = ?2
                     WHERE id = ?3 AND next_fire_at = ?4",
                )?
                .execute(params![
                    fire.next.map(millis),
                    millis(fire.slot),
                    fire.id,
                    millis(fire.expected),
                ])?;
            if moved == 0 {
                return Ok(ScheduleReply::Fired(None));
            }
            let Some(run) = &fire.run else {
                return Ok(ScheduleReply::Fired(None));
            };
            let enqueued = enqueue(conn, std::slice::from_ref(run), &[json_text(&run.input)])?;
            Ok(ScheduleReply::Fired(
                enqueued.into_iter().next().map(|e| e.id),
            ))
        }
    }
}

fn claim(conn: &Conn, request: &ClaimRequest) -> Result<RawClaimed> {
    let (runs, inputs): (Vec<ClaimedRun>, Vec<String>) =
        claim_runs(conn, request)?.into_iter().unzip();
    let next_due = if runs.len() < request.limit {
        conn.prepare_cached(NEXT_DUE)?
            .query_row([], |row| row.get::<_, Option<i64>>(0))?
            .map(time)
    } else {
        None
    };
    Ok(RawClaimed {
        claimed: Claimed { runs, next_due },
        inputs,
    })
}

/// What a claim returns of each run it claimed (see [`claimed_run`]).
const CLAIM_RETURNING: &str =
    "RETURNING id, task, input, attempts, lease_token, waits, spawned_by, trace_context";

/// Whether a run with a concurrency key is queued: then a claim must count what executes
/// with its key. On its partial index: the planner would pick `runs_by_status` and read
/// every queued row on every claim.
const KEYED_QUEUED: &str = "SELECT EXISTS (SELECT 1 FROM runs INDEXED BY runs_keyed_due
     WHERE concurrency_key IS NOT NULL AND status IN ('queued', 'delayed')
       AND parent_run_id IS NULL)";

/// When the next queued or delayed top-level run is due (a worker sleeps until then).
const NEXT_DUE: &str = "SELECT min(run_at) FROM runs INDEXED BY runs_due
     WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL";

/// The common claim, one statement: due runs, oldest first, unless a keyed run is queued
/// (then it updates nothing, and the claim that counts keys runs). Parameters: `?1` the
/// owner, `?2` the lease's end, `?3` now, `?4` how many.
static CLAIM_DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE runs SET status = 'executing', lease_owner = ?1, lease_expires_at = ?2,
                lease_token = lease_token + 1, attempts = attempts + 1,
                started_at = coalesce(started_at, ?3)
         WHERE id IN (SELECT id FROM runs INDEXED BY runs_due
                      WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL
                        AND run_at <= (SELECT ?3) AND (expire_at IS NULL OR expire_at > ?3)
                      ORDER BY run_at, id LIMIT ?4)
           AND NOT ({KEYED_QUEUED})
         {CLAIM_RETURNING}"
    )
});

/// The runs claimed, each with its input as stored (see [`RawClaimed`]).
fn claim_runs(conn: &Conn, request: &ClaimRequest) -> Result<Vec<(ClaimedRun, String)>> {
    let now = SystemTime::now();
    let lease_until = millis(later(now, request.lease));
    let now = millis(now);
    let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
    let owner = request.owner.as_str();
    if request.task_limits.is_empty() {
        let runs = conn
            .prepare_cached(&CLAIM_DUE)?
            .query_map(params![owner, lease_until, now, limit], claimed_run)?
            .collect::<Result<Vec<_>>>()?;
        // Nothing claimed: nothing was due, or a keyed run was queued.
        if !runs.is_empty()
            || !conn
                .prepare_cached(KEYED_QUEUED)?
                .query_row([], |row| row.get::<_, bool>(0))?
        {
            return Ok(runs);
        }
    }
    // Tasks with a concurrency limit: count what executes now (in every process), leave
    // out the tasks at their limit, and take no more of each than its room.
    let tasks: Vec<&str> = request
        .task_limits
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    let counts: Vec<(String, i64)> = conn
        .prepare_cached(&format!(
            "SELECT task, count(*) FROM runs INDEXED BY runs_executing
             WHERE status = 'executing' AND parent_run_id IS NULL AND task IN ({})
             GROUP BY task",
            placeholders(tasks.len(), 1)
        ))?
        .query_map(params_from_iter(&tasks), |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<Result<_>>()?;
    let mut room: HashMap<&str, i64> = request
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
    let cap = limit.saturating_mul(4);
    let mut args: Vec<&dyn ToSql> = vec![&now, &cap];
    args.extend(full.iter().map(|t| t as &dyn ToSql));
    let candidates: Vec<Candidate> = conn
        .prepare_cached(&format!(
            "SELECT id, task, concurrency_key, concurrency_limit,
                    CASE WHEN concurrency_key IS NULL THEN 0 ELSE {key_running} END
             FROM runs INDEXED BY runs_due
             WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL
               AND run_at <= ?1 AND (expire_at IS NULL OR expire_at > ?1) {exclude}
               AND (concurrency_key IS NULL OR {key_running} < concurrency_limit)
             ORDER BY run_at, id LIMIT ?2"
        ))?
        .query_map(params_from_iter(args), |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?
        .collect::<Result<_>>()?;
    let mut chosen = Vec::new();
    let mut key_room: HashMap<(String, String), i64> = HashMap::new();
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
    let mut args: Vec<&dyn ToSql> = vec![&owner, &lease_until, &now];
    args.extend(chosen.iter().map(|id| id as &dyn ToSql));
    conn.prepare_cached(&format!(
        "UPDATE runs SET status = 'executing', lease_owner = ?1, lease_expires_at = ?2,
                lease_token = lease_token + 1, attempts = attempts + 1,
                started_at = coalesce(started_at, ?3)
         WHERE status IN ('queued', 'delayed') AND id IN ({})
         {CLAIM_RETURNING}",
        placeholders(chosen.len(), 4)
    ))?
    .query_map(params_from_iter(args), claimed_run)?
    .collect()
}

/// A claimed run from a row of [`CLAIM_RETURNING`], and its input as stored.
fn claimed_run(row: &Row<'_>) -> Result<(ClaimedRun, String)> {
    let id: String = row.get("id")?;
    let run = ClaimedRun {
        id: run_id(&id)?,
        task: row.get("task")?,
        input: Value::Null,
        attempt: u32::try_from(row.get::<_, i64>("attempts")?).unwrap_or(u32::MAX),
        token: row.get("lease_token")?,
        resumed: row.get::<_, i64>("waits")? > 0,
        spawned_by: row
            .get::<_, Option<String>>("spawned_by")?
            .map(|id| run_id(&id))
            .transpose()?,
        trace_context: row.get("trace_context")?,
    };
    Ok((run, row.get("input")?))
}

fn heartbeat(
    conn: &Conn,
    owner: &str,
    leases: &[Lease],
    extend: Duration,
) -> Result<HeartbeatReply> {
    let until = millis(later(SystemTime::now(), extend));
    let mut reply = HeartbeatReply::default();
    for chunk in leases.chunks(CHUNK) {
        // By primary key (a row-value `IN (VALUES ..)` would scan the table); a lease is
        // ours when the owner and the token still match.
        let mut args: Args<'_> = vec![Box::new(until), Box::new(owner)];
        args.extend(
            chunk
                .iter()
                .map(|l| Box::new(l.id.as_str()) as Box<dyn ToSql>),
        );
        let mut statement = conn.prepare_cached(&format!(
            "UPDATE runs SET lease_expires_at = ?1
             WHERE id IN ({}) AND lease_owner = ?2 AND status = 'executing'
             RETURNING id, lease_token, cancel_requested",
            placeholders(chunk.len(), 3)
        ))?;
        let kept = statement.query_map(params_from_iter(args), |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, bool>(2)?,
            ))
        })?;
        let mut seen = HashMap::new();
        for row in kept {
            let (id, token, cancel) = row?;
            if cancel {
                reply.cancel.push(run_id(&id)?);
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
/// then four parameters a run (id, token, status, envelope). Returns the runs it finished.
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

/// How attempts ended; `json` holds each one's envelope or error as text.
fn settle(conn: &Conn, outcomes: &[Settle], json: &[String]) -> Result<Vec<bool>> {
    let now = millis(SystemTime::now());
    let mut applied = vec![false; outcomes.len()];
    // Whether a parent may have to wake: a spawned child ended, a parent suspended to wait
    // for its children, or a reclaimed run ended (rare, not looked at closer).
    let mut wake = false;
    // A worker's finished runs: one statement for all of them.
    let finished: Vec<Finish<'_>> = outcomes.iter().enumerate().filter_map(finish_of).collect();
    for chunk in finished.chunks(CHUNK) {
        let mut args: Args<'_> = vec![Box::new(now)];
        for (i, id, token, envelope) in chunk {
            args.push(Box::new(id.as_str()));
            args.push(Box::new(*token));
            args.push(Box::new(RunStatus::of_envelope(envelope).as_str()));
            args.push(Box::new(json[*i].as_str()));
        }
        let mut statement = conn.prepare_cached(&finish_sql(chunk.len()))?;
        let rows = statement.query_map(params_from_iter(args), |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?))
        })?;
        let mut done: Vec<String> = Vec::with_capacity(chunk.len());
        for row in rows {
            let (id, spawned) = row?;
            wake |= spawned;
            done.push(id);
        }
        // The others' leases were no longer theirs.
        for (i, id, _, _) in chunk {
            applied[*i] = done.iter().any(|d| d == id.as_str());
        }
    }
    for (i, outcome) in outcomes.iter().enumerate() {
        let changed = match outcome {
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
                conn.prepare_cached(
                    "UPDATE runs SET status = ?1, envelope = ?2, finished_at = ?3,
                            lease_owner = NULL, lease_expires_at = NULL,
                            idempotency_key = CASE WHEN ?4 THEN idempotency_key END,
                            idempotency_expires_at = CASE WHEN ?4 AND idempotency_ttl_ms IS NOT NULL
                                THEN min(?3 + idempotency_ttl_ms, 9000000000000000000) END
                     WHERE id = ?5 AND lease_token = ?6 AND status = 'executing'
                       AND (?7 IS NULL OR lease_expires_at < ?7)",
                )?
                .execute(params![
                    status.as_str(),
                    json[i],
                    now,
                    status == RunStatus::Completed,
                    id.as_str(),
                    token,
                    expired_before.map(millis),
                ])?
            }
            Settle::Retry {
                id,
                token,
                run_at,
                error: _,
                expired_before,
            } => conn
                .prepare_cached(
                    "UPDATE runs SET status = 'queued', run_at = ?1, lease_owner = NULL, lease_expires_at = NULL,
                            retried = json_insert(coalesce(retried, '[]'), '$[#]', json(?2))
                     WHERE id = ?3 AND lease_token = ?4 AND status = 'executing'
                       AND (?5 IS NULL OR lease_expires_at < ?5)",
                )?
                .execute(params![
                    millis(*run_at),
                    json[i],
                    id.as_str(),
                    token,
                    expired_before.map(millis),
                ])?,
            Settle::Release { id, token } => conn
                .prepare_cached(
                    "UPDATE runs SET status = 'queued', attempts = attempts - 1,
                            lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = ?1 AND lease_token = ?2 AND status = 'executing'",
                )?
                .execute(params![id.as_str(), token])?,
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
                let changed = conn
                    .prepare_cached(
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
                    )?
                    .execute(params![
                        id.as_str(),
                        token,
                        wait_token,
                        now,
                        millis(*wake_at),
                        children.map(|c| i64::from(c.open_at_most)),
                        children.is_some_and(|c| c.on_failure),
                    ])?;
                if changed == 1
                    && let Some(wait_token) = wait_token
                {
                    conn.prepare_cached("UPDATE wait_tokens SET run_id = ?2 WHERE id = ?1")?
                        .execute(params![wait_token, id.as_str()])?;
                }
                changed
            }
        };
        applied[i] = changed == 1;
    }
    // The settle of a parent's last child (or the one that leaves room) wakes the parent;
    // so does a parent's own suspension when its children already ended meanwhile. One
    // writer orders both, so no wake is missed. (Only then: a drain of top-level runs
    // pays no statement for it.)
    if wake {
        wake_parents(conn, now)?;
    }
    Ok(applied)
}

/// Queues the parents waiting for spawned children whose wake condition holds. A parent
/// goes back at its creation time: ahead of its own queued children, so a fail-fast parent
/// cancels them before they run.
fn wake_parents(conn: &Conn, now: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE runs SET status = 'queued', run_at = min(created_at, ?1), wait_children = NULL, wait_children_fail = 0
         WHERE id IN (SELECT p.id FROM runs AS p INDEXED BY runs_waiting_children
                      WHERE p.status = 'waiting' AND p.wait_children IS NOT NULL
                        AND ((SELECT count(*) FROM runs AS c WHERE c.spawned_by = p.id
                                AND c.status IN ('queued', 'delayed', 'executing', 'waiting')) <= p.wait_children
                             OR (p.wait_children_fail = 1 AND EXISTS (SELECT 1 FROM runs AS c
                                 WHERE c.spawned_by = p.id AND c.status IN ('failed', 'cancelled', 'expired')))))",
    )?
    .execute(params![now])?;
    Ok(())
}

/// The root's lease still holds (the writer of a journal entry or a spawn is its root's
/// owner): `?1` the root, `?2` its lease token.
const ROOT_HELD: &str = "EXISTS (SELECT 1 FROM runs AS root WHERE root.id = ?1 AND root.lease_token = ?2 AND root.status = 'executing')";

/// Enqueues a parent's children, a multi-row statement per chunk, fenced by the parent's
/// lease; a position that has a child already keeps it.
fn spawn_children(conn: &Conn, spawn: &Spawn) -> Result<usize> {
    let now = millis(SystemTime::now());
    let mut added = 0;
    let (again, new): (Vec<&NewChild>, Vec<&NewChild>) =
        spawn.children.iter().partition(|child| child.again);
    // Eight parameters a row, three before them.
    for chunk in new.chunks(CHUNK * 4) {
        let rows = (0..chunk.len())
            .map(|i| {
                let b = 4 + 8 * i;
                let columns = (b..b + 8).map(|p| format!("?{p}")).collect::<Vec<_>>();
                format!("({})", columns.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut args: Args<'_> = vec![
            Box::new(spawn.parent.as_str()),
            Box::new(spawn.token),
            Box::new(now),
        ];
        for child in chunk {
            args.push(Box::new(child.id.as_str()));
            args.push(Box::new(child.task.as_str()));
            args.push(Box::new(child.tenant_id.as_deref()));
            args.push(Box::new(child.project_id.as_deref()));
            args.push(Box::new(json_text(&child.input)));
            args.push(Box::new(child.position.as_str()));
            args.push(Box::new(i64::from(child.parent_attempt)));
            args.push(Box::new(child.trace_context.as_deref()));
        }
        let inserted = conn
            .prepare_cached(&format!(
                "INSERT INTO runs (id, task, tenant_id, project_id, input, position, spawn_attempt,
                                   trace_context, status, run_at, created_at, spawned_by, root_run_id)
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7,
                        v.column8, 'queued', ?3, ?3, ?1, ?1
                 FROM (VALUES {rows}) AS v WHERE {ROOT_HELD}
                 ON CONFLICT DO NOTHING"
            ))?
            .execute(params_from_iter(args))?;
        added += inserted;
    }
    // Children that failed in an earlier attempt of the parent: queued again with fresh
    // attempts; `waits` makes their claim load the journal they keep.
    for chunk in again.chunks(CHUNK) {
        let attempt = i64::from(chunk.iter().map(|c| c.parent_attempt).max().unwrap_or(1));
        // One attempt of the parent queues them all: one trace context.
        let trace = chunk.iter().find_map(|c| c.trace_context.as_deref());
        let mut args: Args<'_> = vec![
            Box::new(spawn.parent.as_str()),
            Box::new(spawn.token),
            Box::new(now),
            Box::new(attempt),
            Box::new(trace),
        ];
        args.extend(
            chunk
                .iter()
                .map(|c| Box::new(c.id.as_str()) as Box<dyn ToSql>),
        );
        let queued = conn
            .prepare_cached(&format!(
                "UPDATE runs SET status = 'queued', run_at = ?3, attempts = 0, retried = NULL,
                        envelope = NULL, output = NULL, error = NULL, finished_at = NULL,
                        cancel_requested = 0, lease_owner = NULL, lease_expires_at = NULL,
                        waits = waits + 1, spawn_attempt = ?4, trace_context = ?5
                 WHERE spawned_by = ?1 AND status IN ('failed', 'cancelled', 'expired')
                   AND {ROOT_HELD} AND id IN ({})",
                placeholders(chunk.len(), 6)
            ))?
            .execute(params_from_iter(args))?;
        added += queued;
    }
    Ok(added)
}

fn end_queued(conn: &Conn, ends: &[(RunId, Box<RunOutput<Value>>)]) -> Result<Vec<bool>> {
    let now = millis(SystemTime::now());
    let mut applied = Vec::with_capacity(ends.len());
    for (id, envelope) in ends {
        let changed = conn
            .prepare_cached(
                "UPDATE runs SET status = ?1, envelope = ?2, finished_at = ?3, idempotency_key = NULL
                 WHERE id = ?4 AND status IN ('queued', 'delayed', 'waiting')",
            )?
            .execute(params![
                RunStatus::of_envelope(envelope).as_str(),
                json_text(&envelope),
                now,
                id.as_str(),
            ])?;
        applied.push(changed == 1);
    }
    wake_parents(conn, now)?;
    Ok(applied)
}

fn cancel(conn: &Conn, id: &RunId, envelope: &RunOutput<Value>) -> Result<CancelOutcome> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
        .query_row(params![id.as_str()], |row| row.get(0))
        .optional()?;
    let Some(status) = status else {
        return Ok(CancelOutcome::NotFound);
    };
    let status: RunStatus = status.parse().map_err(|e| undecodable("status", e))?;
    match status {
        // A waiting run holds no worker: it ends at once, like a queued one.
        RunStatus::Queued | RunStatus::Delayed | RunStatus::Waiting => {
            end_queued(conn, &[(id.clone(), Box::new(envelope.clone()))])?;
            Ok(CancelOutcome::Cancelled)
        }
        RunStatus::Executing => {
            conn.prepare_cached("UPDATE runs SET cancel_requested = 1 WHERE id = ?1")?
                .execute(params![id.as_str()])?;
            Ok(CancelOutcome::Requested)
        }
        finished => Ok(CancelOutcome::AlreadyFinished(finished)),
    }
}

fn flush_journal(conn: &Conn, ops: Vec<JournalOp>, fail: &impl Fn(&rusqlite::Error) -> StoreError) {
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
            } => conn
                .prepare_cached(&format!(
                    "INSERT INTO runs (id, task, tenant_id, project_id, status, input, attempts, run_at,
                                       created_at, started_at, parent_run_id, root_run_id, position)
                     SELECT ?3, ?4, ?5, ?6, 'executing', ?7, 0, ?8, ?8, ?8, ?9, ?1, ?10 WHERE {ROOT_HELD}
                     ON CONFLICT (id) DO UPDATE SET status = 'executing', output = NULL, error = NULL,
                                                    finished_at = NULL"
                ))
                .and_then(|mut statement| {
                    statement.execute(params![
                        root.as_str(),
                        token,
                        id.as_str(),
                        task,
                        tenant_id,
                        project_id,
                        json_text(&input),
                        millis(at),
                        parent.as_str(),
                        position,
                    ])
                }),
            JournalOp::Finish {
                root,
                token,
                id,
                status,
                output,
                error,
                attempts,
                at,
            } => conn
                .prepare_cached(&format!(
                    "UPDATE runs SET status = ?3, output = ?4, error = ?5, attempts = attempts + ?6, finished_at = ?7
                     WHERE id = ?8 AND {ROOT_HELD}"
                ))
                .and_then(|mut statement| {
                    statement.execute(params![
                        root.as_str(),
                        token,
                        status.as_str(),
                        output.as_ref().map(json_text),
                        error.as_ref().map(json_text),
                        i64::from(attempts),
                        millis(at),
                        id.as_str(),
                    ])
                }),
        };
        if let Err(e) = result {
            let error = fail(&e);
            tracing::warn!(%error, "journal write failed; the step may run again on a retry");
        }
    }
}

fn flush_logs(conn: &Conn, lines: Vec<LogLine>, fail: &impl Fn(&rusqlite::Error) -> StoreError) {
    for chunk in lines.chunks(CHUNK) {
        let rows = (0..chunk.len())
            .map(|i| {
                let b = 1 + 5 * i;
                format!("(?{b}, ?{}, ?{}, ?{}, ?{})", b + 1, b + 2, b + 3, b + 4)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut args: Args<'_> = Vec::with_capacity(chunk.len() * 5);
        for line in chunk {
            args.push(Box::new(line.run_id.as_str()));
            args.push(Box::new(millis(line.at)));
            args.push(Box::new(line.level.as_str()));
            args.push(Box::new(line.message.as_str()));
            args.push(Box::new(json_text(&line.fields)));
        }
        let stored = conn
            .prepare_cached(&format!(
                "INSERT INTO run_logs (run_id, at, level, message, fields) VALUES {rows}"
            ))
            .and_then(|mut statement| statement.execute(params_from_iter(args)));
        if let Err(e) = stored {
            let error = fail(&e);
            tracing::warn!(%error, lines = chunk.len(), "storing log lines failed");
        }
    }
}

fn write_token(conn: &Conn, write: &TokenWrite) -> Result<TokenReply> {
    match write {
        TokenWrite::Create(token) => {
            conn.prepare_cached(
                "INSERT INTO wait_tokens (id, tenant_id, tags, status, timeout_at, created_at)
                 VALUES (?1, ?2, ?3, 'waiting', ?4, ?5)",
            )?
            .execute(params![
                token.id,
                token.tenant_id,
                (!token.tags.is_empty()).then(|| json_text(&token.tags)),
                token.timeout_at.map(millis),
                millis(token.created_at),
            ])?;
            Ok(TokenReply::Done)
        }
        TokenWrite::Complete(id, data, now) => {
            let row: Option<(String, Option<i64>, Option<String>)> = conn
                .prepare_cached("SELECT status, timeout_at, run_id FROM wait_tokens WHERE id = ?1")?
                .query_row(params![id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?;
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
                let run_status: Option<String> = conn
                    .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
                    .query_row(params![run_id], |row| row.get(0))
                    .optional()?;
                if run_status.as_deref() == Some("cancelled") {
                    return Ok(TokenReply::Completed(TokenCompletion::RunCancelled));
                }
            }
            let at = millis(SystemTime::now());
            conn.prepare_cached(
                "UPDATE wait_tokens SET status = 'completed', data = ?2, completed_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id, json_text(data), millis(*now)])?;
            if let Some(run_id) = &run_id {
                // Due now on the system clock, which claims read.
                conn.prepare_cached(
                    "UPDATE runs SET status = 'queued', run_at = ?2 WHERE id = ?1 AND status = 'waiting'",
                )?
                .execute(params![run_id, at])?;
            }
            Ok(TokenReply::Completed(TokenCompletion::Completed))
        }
        TokenWrite::Wake(now) => {
            // Due now on the system clock, which claims read (`now` may be a test's clock).
            let woken = conn
                .prepare_cached(
                    "UPDATE runs SET status = 'queued', run_at = ?2
                     WHERE id IN (SELECT id FROM runs INDEXED BY runs_waiting
                                  WHERE status = 'waiting' AND parent_run_id IS NULL AND run_at <= ?1)",
                )?
                .execute(params![millis(*now), millis(SystemTime::now())])?;
            Ok(TokenReply::Woken(woken))
        }
    }
}
