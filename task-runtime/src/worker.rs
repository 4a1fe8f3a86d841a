//! The worker: claims due runs from the runtime's store and executes them through the same
//! engine as every other run.
//!
//! - **Claims** take up to the worker's free slots at once (one statement), each with a
//!   lease: an owner, an expiry and a fencing token that grows on every claim. Per-task
//!   `concurrency` limits hold across every worker of the store.
//! - **Heartbeats** extend the leases every third of the lease; the reply names leases that
//!   are no longer ours (the run is stopped) and runs someone asked to cancel (their token is
//!   cancelled: the attempt ends `cancelled` within a heartbeat).
//! - **Settles** write how attempts ended, in batches, each fenced by its token: a worker
//!   that lost its lease changes nothing. A failed attempt with retries left is rescheduled
//!   (`next_delay`), never slept on.
//! - **Reclaims**: an executing run whose lease expired (its worker crashed or was stopped)
//!   ends its attempt as `workerLost` and is retried per its task's policy. Runs past their
//!   time to live end `expired`.
//! - **Shutdown** stops claiming, waits up to the grace period for what runs, then stops
//!   the rest and hands them back to the queue (the attempt not counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::envelope::RunOutput;
use crate::error::TaskError;
use crate::exec::seed::lock;
use crate::exec::{Scope, Seed, scope_of};
use crate::id::RunId;
use crate::policy::next_delay;
use crate::runtime::Runtime;
use crate::store::journal::Journal;
use crate::store::{ClaimRequest, ClaimedRun, Lease, RunStore, Settle, later};

/// Configures a [`Worker`]: `rt.worker().concurrency(16).start()`.
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    rt: Runtime,
    concurrency: usize,
    lease: Duration,
    idle_poll: Duration,
}

impl Runtime {
    /// A worker for this runtime's store (see [`Worker`]).
    pub fn worker(&self) -> WorkerBuilder {
        WorkerBuilder {
            rt: self.clone(),
            concurrency: 16,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_millis(500),
        }
    }
}

impl WorkerBuilder {
    /// Runs executing at once (default 16).
    pub fn concurrency(mut self, runs: usize) -> Self {
        self.concurrency = runs.max(1);
        self
    }

    /// How long a claim holds a run without a heartbeat (default 30 s): after a crash, its
    /// runs are retried by other workers this much later.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// Starts claiming and executing. A runtime without a store has nothing to claim: the
    /// worker logs that and stops at once.
    pub fn start(self) -> Worker {
        let owner = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            RunId::new(SystemTime::now())
                .as_str()
                .get(4..)
                .unwrap_or_default()
        );
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            rt: self.rt.clone(),
            owner: owner.clone(),
            held: Mutex::default(),
            settled: tokio::sync::Notify::new(),
            suspended: tokio::sync::Notify::new(),
            lease: self.lease,
            stats: Stats::default(),
            inherited: Inherited::default(),
            pace: Pace::new(self.concurrency),
            plain_settle: Mutex::default(),
        });
        let task = match self.rt.store().cloned() {
            Some(store) => {
                let span = tracing::info_span!("worker", worker = %owner);
                tokio::spawn(
                    work(
                        shared.clone(),
                        store,
                        self.concurrency,
                        self.idle_poll,
                        stop.clone(),
                    )
                    .instrument(span),
                )
            }
            None => {
                tracing::error!(
                    "a worker needs a runtime with a store: Runtime::builder().store(..)"
                );
                tokio::spawn(async {})
            }
        };
        Worker {
            owner,
            stop,
            task,
            shared,
        }
    }
}

/// A running worker. Stop it with [`Worker::shutdown`].
#[derive(Debug)]
pub struct Worker {
    owner: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

/// What a worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Attempts it executed to an end (completed, failed, cancelled, rescheduled, or
    /// suspended by a durable wait).
    pub executed: u64,
    /// Runs it handed back to the queue at shutdown.
    pub released: u64,
    /// Writes rejected because the lease was no longer ours.
    pub lost: u64,
    /// Expired leases of other workers it reclaimed.
    pub reclaimed: u64,
}

impl Worker {
    /// This worker's lease owner name (`host:pid:id`).
    pub fn id(&self) -> &str {
        &self.owner
    }

    /// What it did so far.
    pub fn report(&self) -> WorkerReport {
        self.shared.stats.report()
    }

    /// Stops claiming, waits up to `grace` for the runs it executes, then stops the rest and
    /// hands them back to the queue; returns what it did.
    pub async fn shutdown(self, grace: Duration) -> WorkerReport {
        let deadline = tokio::time::Instant::now() + grace;
        self.stop.cancel();
        let shared = self.shared.clone();
        let releaser = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            shared.release_all();
        });
        if let Err(error) = self.task.await {
            tracing::error!(%error, "worker task ended abnormally");
        }
        releaser.abort();
        self.shared.stats.report()
    }
}

#[derive(Debug, Default)]
struct Stats {
    executed: AtomicU64,
    released: AtomicU64,
    lost: AtomicU64,
    reclaimed: AtomicU64,
}

impl Stats {
    fn report(&self) -> WorkerReport {
        WorkerReport {
            executed: self.executed.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
        }
    }
}

/// A run this worker holds.
#[derive(Debug)]
struct Held {
    token: i64,
    cancel: CancellationToken,
    /// Stopped by shutdown: hand it back instead of recording how it ended.
    released: Arc<AtomicBool>,
    /// The attempt ended and its settle is on its way to the store: a heartbeat that finds
    /// the row no longer executing raced that write (the settle itself reports a lease
    /// that was really lost).
    ending: bool,
    /// An orchestrator's branch or item, run by a worker: its end may wake its parent.
    spawned: bool,
}

#[derive(Debug)]
struct Shared {
    rt: Runtime,
    owner: String,
    /// Every run claimed and not yet settled: queued here, executing, or ended with its
    /// settle not yet written.
    held: Mutex<HashMap<RunId, Held>>,
    /// Signalled when settles were written (their runs are no longer held).
    settled: tokio::sync::Notify,
    /// Signalled when a run of this worker started waiting: the wake pass looks again, in
    /// case it is due before the pass's next look.
    suspended: tokio::sync::Notify,
    lease: Duration,
    stats: Stats,
    /// What the children of recently seen spawning orchestrators inherit (see
    /// [`inherited`]), by orchestrator: read from the store once per worker, not per child.
    inherited: Inherited,
    /// How fast this worker's runs end (see [`Pace`]).
    pace: Pace,
    /// The store's change mark before and after this worker's last settle, when that
    /// settle only finished top-level runs and nothing else changed the store meanwhile:
    /// such a settle makes nothing claimable where nothing was queued.
    plain_settle: Mutex<Option<(u64, u64)>>,
}

/// How fast this worker's runs turn over: when the last `concurrency` of them ended, and a
/// moving average of how long an attempt takes. It says how many runs the worker claims
/// ahead of its free slots (see [`Pace::ahead`]).
#[derive(Debug)]
struct Pace {
    concurrency: usize,
    state: Mutex<PaceState>,
}

#[derive(Debug, Default)]
struct PaceState {
    /// When the last runs ended, at most `concurrency` of them, oldest first.
    ends: std::collections::VecDeque<tokio::time::Instant>,
    /// How long an attempt takes (each new one weighs an eighth).
    took: Option<Duration>,
}

impl Pace {
    /// How soon a run claimed ahead may expect a slot, at most.
    const HORIZON: Duration = Duration::from_millis(10);

    fn new(concurrency: usize) -> Self {
        Pace {
            concurrency,
            state: Mutex::default(),
        }
    }

    /// Takes in that an attempt that took `took` ended at `at`.
    fn ended(&self, at: tokio::time::Instant, took: Duration) {
        let mut state = lock(&self.state);
        if state.ends.len() == self.concurrency {
            state.ends.pop_front();
        }
        state.ends.push_back(at);
        state.took = Some(match state.took {
            None => took,
            Some(average) => average - average / 8 + took / 8,
        });
    }

    /// Runs to claim ahead of the free slots at `now`: as many as the slots start within
    /// [`Pace::HORIZON`] at the average attempt's length, at most two concurrencies' worth,
    /// and none unless a whole concurrency's worth of runs ended within the horizon (the
    /// slots turn over now; they do not hold long runs). Runs that turn over fast are
    /// claimed ahead, so the store commits the next claim while they execute; no run waits
    /// in this worker for a slot while another worker may be free.
    fn ahead(&self, now: tokio::time::Instant) -> usize {
        let state = lock(&self.state);
        let (Some(oldest), Some(took)) = (state.ends.front(), state.took) else {
            return 0;
        };
        if state.ends.len() < self.concurrency
            || now.saturating_duration_since(*oldest) > Self::HORIZON
        {
            return 0;
        }
        let within = (self.concurrency as u128).saturating_mul(Self::HORIZON.as_nanos())
            / took.as_nanos().max(1);
        usize::try_from(within)
            .unwrap_or(usize::MAX)
            .min(2 * self.concurrency)
    }
}

/// Scopes by spawning orchestrator (see [`inherited`]).
#[derive(Default)]
struct Inherited(Mutex<HashMap<RunId, Scope>>);

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inherited({} scopes)", lock(&self.0).len())
    }
}

impl Shared {
    fn leases(&self) -> Vec<Lease> {
        lock(&self.held)
            .iter()
            .map(|(id, held)| Lease {
                id: id.clone(),
                token: held.token,
            })
            .collect()
    }

    /// Holds a claimed run: heartbeated from now on, cancellable from this process.
    fn hold(&self, run: &ClaimedRun) {
        let cancel = self.rt.executor().root.child_token();
        self.rt.executing(&run.id, &cancel);
        lock(&self.held).insert(
            run.id.clone(),
            Held {
                token: run.token,
                cancel,
                released: Arc::new(AtomicBool::new(false)),
                ending: false,
                spawned: run.spawned_by.is_some(),
            },
        );
    }

    fn release_all(&self) {
        for (id, held) in lock(&self.held).iter() {
            tracing::info!(run_id = %id, "stopping the run to hand it back");
            held.released.store(true, Ordering::Release);
            held.cancel.cancel();
        }
    }

    /// Tasks with a concurrency limit, for claims.
    fn task_limits(&self) -> Vec<(String, u32)> {
        self.rt
            .registry()
            .entries()
            .iter()
            .filter_map(|d| d.policy.concurrency.map(|n| (d.id.to_owned(), n)))
            .collect()
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The claim loop.
async fn work(
    shared: Arc<Shared>,
    store: Arc<dyn RunStore>,
    concurrency: usize,
    idle_poll: Duration,
    stop: CancellationToken,
) {
    tracing::info!(
        concurrency,
        lease_ms = u64::try_from(shared.lease.as_millis()).unwrap_or(u64::MAX),
        "worker started"
    );
    let keeper =
        tokio::spawn(keep_leases(shared.clone(), store.clone(), stop.clone()).in_current_span());
    sync_schedules(&shared).await;
    #[cfg(feature = "cron")]
    let scheduler = tokio::spawn(fire_schedules(shared.clone(), stop.clone()).in_current_span());
    let waker =
        tokio::spawn(wake_waiting(shared.clone(), store.clone(), stop.clone()).in_current_span());
    let cancels = store
        .cancel_requests()
        .map(|requests| tokio::spawn(forward_cancels(shared.clone(), requests).in_current_span()));
    let task_limits = shared.task_limits();
    // Claims run ahead of the free slots when runs are short (see [`Pace::ahead`]): while
    // one batch executes, the store commits the claim of the next, instead of the store and
    // the runs taking turns (a SQLite drain of no-op runs kept one of the two cores busy
    // without it). A run claimed ahead holds a lease like a running one: a worker that
    // stops hands it back untouched, and one that dies loses its attempt (`workerLost`,
    // retried per policy), as a claim is an attempt in graphile-worker and River.
    //
    // Started runs not yet recorded (executing, or ended with their settle not written) stay
    // within three concurrencies' worth: a fault (a kill, a lost server) re-executes no
    // more than that, while settles overlap the next runs. (Measured: on PostgreSQL,
    // settling within one concurrency's worth halved the drain rate; on SQLite, a drain of
    // no-op runs at concurrency 16 ran at 24 000 runs/s with two concurrencies' worth
    // unrecorded, whatever ran ahead, and at 32 000 with three and two ahead.)
    let unrecorded = 3 * concurrency;
    // Claim when at least this many runs can be taken (or nothing is held): claims come in
    // batches, not one statement per finished run.
    let min_batch = (concurrency / 4).max(1);
    let mut queue: std::collections::VecDeque<ClaimedRun> = std::collections::VecDeque::new();
    let mut running: JoinSet<Settle> = JoinSet::new();
    // How attempts ended is written by a task of its own, in batches, while this loop
    // claims: a claim never waits for a settle's commit (measured on PostgreSQL: twice the
    // drain rate of settling and claiming in step; SQLite's writer still commits both in
    // one transaction when they meet).
    let (finished, settle_queue) = tokio::sync::mpsc::unbounded_channel();
    let settler =
        tokio::spawn(settle_loop(shared.clone(), store.clone(), settle_queue).in_current_span());
    let done = |outcome: Result<Settle, tokio::task::JoinError>| match outcome {
        Ok(settle) => {
            if let Some(held) = lock(&shared.held).get_mut(settle.id())
                && held.token == settle.token()
            {
                held.ending = true;
            }
            let _ = finished.send(settle);
        }
        Err(error) => tracing::error!(%error, "a run's task ended abnormally"),
    };
    let mut backoff = Duration::from_millis(10);
    // After a claim that came back short: its change mark, until when it would have
    // waited, and whether nothing at all was queued. While the store's mark counts every
    // change and has not moved, nothing became claimable: a slot freed by a run that ended
    // (its settle not written yet) is no reason to claim again (on PostgreSQL that claim
    // came back empty after every run). Nor, where nothing was queued, is this worker's
    // own settle of top-level runs that ended (no retry, release or wait, no parent to
    // wake): it frees slots, and no run waits for one.
    let mut drained: Option<Drained> = None;
    loop {
        while let Some(outcome) = running.try_join_next() {
            done(outcome);
        }
        if stop.is_cancelled() {
            // Never started: straight back to the queue.
            for run in queue.drain(..) {
                let _ = finished.send(Settle::Release {
                    id: run.id,
                    token: run.token,
                });
            }
            match running.join_next().await {
                Some(outcome) => done(outcome),
                None => break,
            }
            continue;
        }
        // Everything held: claimed (queued here), executing, ended and not recorded yet.
        // Starting a run moves it from the queue to `running`; only settles change it.
        let held = lock(&shared.held).len();
        // Runs start while a slot is free and fewer than `unrecorded` started runs are
        // not recorded yet.
        let mut started = held.saturating_sub(queue.len());
        while running.len() < concurrency && started < unrecorded {
            let Some(run) = queue.pop_front() else { break };
            let (shared, store) = (shared.clone(), store.clone());
            running.spawn(execute_claimed(shared, store, run).in_current_span());
            started += 1;
        }
        // Claims fill free slots and the runs ahead of them; everything held (claimed,
        // executing, unrecorded) stays within `unrecorded + ahead`.
        let ahead = shared.pace.ahead(tokio::time::Instant::now());
        let room = (concurrency + ahead)
            .saturating_sub(running.len() + queue.len())
            .min((unrecorded + ahead).saturating_sub(held));
        let want = if room >= min_batch || held == 0 {
            room.min(64)
        } else {
            0
        };
        // Taken before the claim: a run enqueued while it runs wakes the wait below.
        let mark = store.change_mark();
        let quiet = match drained.as_mut() {
            Some(last) if want > 0 && store.mark_counts_every_change() => {
                let own = *lock(&shared.plain_settle);
                let unchanged = last.mark == mark
                    || (last.empty
                        && own.is_some_and(|(before, after)| before == last.mark && after == mark));
                last.mark = mark;
                unchanged
                    .then(|| {
                        last.until
                            .checked_duration_since(tokio::time::Instant::now())
                    })
                    .flatten()
            }
            _ => None,
        };
        let claim = if want == 0 || quiet.is_some() {
            None
        } else {
            let request = ClaimRequest {
                owner: shared.owner.clone(),
                limit: want,
                lease: shared.lease,
                task_limits: task_limits.clone(),
            };
            Some(store.claim(request).await)
        };
        let mut wait = quiet.unwrap_or(idle_poll);
        let got = match claim {
            None => 0,
            Some(Ok(batch)) => {
                backoff = Duration::from_millis(10);
                // Sleep no longer than until the next delayed or retried run is due.
                if let Some(due) = batch.next_due {
                    let until = due.duration_since(SystemTime::now()).unwrap_or_default();
                    wait = wait.min(until + Duration::from_millis(1));
                }
                let got = batch.runs.len();
                drained = (got < want).then(|| Drained {
                    mark,
                    until: tokio::time::Instant::now() + wait,
                    empty: batch.next_due.is_none(),
                });
                for run in batch.runs {
                    shared.hold(&run);
                    queue.push_back(run);
                }
                got
            }
            Some(Err(error)) => {
                drained = None;
                tracing::warn!(%error, retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(0), "claiming failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if !queue.is_empty() && running.len() < concurrency && started < unrecorded {
            continue;
        }
        // Queued runs that wait for settles to be written before they start.
        let gated = !queue.is_empty() && running.len() < concurrency;
        if got > 0 && got == want {
            continue; // more may be due
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => {}
            Some(outcome) = running.join_next(), if !running.is_empty() => done(outcome),
            // Settles written: their slots can be claimed again.
            _ = shared.settled.notified(), if want == 0 || gated => {}
            // Nothing more was due: wait for a trigger (ours or another process's).
            _ = store.changed(mark, wait), if want > 0 && got < want => {}
        }
    }
    // Every settle is written before the worker reports that it stopped.
    drop(finished);
    if let Err(error) = settler.await {
        tracing::error!(%error, "the settling task ended abnormally");
    }
    keeper.abort();
    #[cfg(feature = "cron")]
    scheduler.abort();
    waker.abort();
    if let Some(cancels) = cancels {
        cancels.abort();
    }
    let report = shared.stats.report();
    tracing::info!(
        executed = report.executed,
        released = report.released,
        lost = report.lost,
        "worker stopped"
    );
}

/// A claim that came back short (see the claim loop).
struct Drained {
    /// The change mark taken before it, then the last one found unchanged.
    mark: u64,
    /// Until when the worker waits for a change before claiming again.
    until: tokio::time::Instant,
    /// It found nothing queued at all.
    empty: bool,
}

/// Writes how attempts ended, taking every one waiting at once.
async fn settle_loop(
    shared: Arc<Shared>,
    store: Arc<dyn RunStore>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Settle>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 256).await > 0 {
        write_settles(&shared, &store, std::mem::take(&mut batch)).await;
    }
}

async fn write_settles(shared: &Shared, store: &Arc<dyn RunStore>, settles: Vec<Settle>) {
    let ids: Vec<RunId> = settles.iter().map(|s| s.id().clone()).collect();
    let plain = {
        let held = lock(&shared.held);
        settles.iter().all(|s| {
            matches!(s, Settle::Finish { .. }) && held.get(s.id()).is_some_and(|h| !h.spawned)
        })
    };
    let settles = Arc::new(settles);
    let before = store.change_mark();
    // A store that fails now keeps the leases (and the runs) until they expire: another
    // attempt then redoes the work, nothing is lost.
    let mut attempts = 0;
    let applied = loop {
        attempts += 1;
        match store.settle(Arc::clone(&settles)).await {
            Ok(applied) => break applied,
            Err(error) if attempts < 5 => {
                tracing::warn!(%error, attempts, "settling runs failed, retrying");
                tokio::time::sleep(Duration::from_millis(50 * attempts)).await;
            }
            Err(error) => {
                tracing::error!(%error, runs = settles.len(), "settling runs failed; their leases will expire and they will run again");
                break vec![false; settles.len()];
            }
        }
    };
    // Nothing but this settle's own wake-up moved the mark.
    let after = store.change_mark();
    *lock(&shared.plain_settle) = (plain && after == before + 1).then_some((before, after));
    let mut held = lock(&shared.held);
    for ((id, settle), applied) in ids.iter().zip(settles.iter()).zip(applied) {
        // Only this attempt's entry: the run may have been claimed again meanwhile.
        let token = settle.token();
        if held.get(id).is_some_and(|h| h.token == token) {
            held.remove(id);
            shared.rt.executed(id);
        }
        if !applied {
            shared.stats.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(run_id = %id, "the run's lease was no longer ours: its outcome was not recorded");
        } else if matches!(settle, Settle::Release { .. }) {
            shared.stats.released.fetch_add(1, Ordering::Relaxed);
        } else {
            if matches!(settle, Settle::Suspend { .. }) {
                // Stored as a permit: the wake pass sees it even if it was busy just now.
                shared.suspended.notify_one();
            }
            shared.stats.executed.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(held);
    shared.settled.notify_one();
}

/// Executes one claimed attempt and says how to settle it.
async fn execute_claimed(shared: Arc<Shared>, store: Arc<dyn RunStore>, run: ClaimedRun) -> Settle {
    let ClaimedRun {
        id,
        task,
        input,
        attempt,
        token,
        resumed,
        spawned_by,
        trace_context,
    } = run;
    let (cancel, released) = {
        let held = lock(&shared.held);
        match held.get(&id) {
            Some(run) => (run.cancel.clone(), run.released.clone()),
            None => (
                shared.rt.executor().root.child_token(),
                Arc::new(AtomicBool::new(false)),
            ),
        }
    };
    let Some(descriptor) = shared.rt.registry().get(&task) else {
        let error = TaskError::not_found(&task, shared.rt.registry().suggest(&task)).into_fatal();
        tracing::error!(run_id = %id, task, "no task with this id in this worker's binary");
        let envelope = RunOutput::refused(&task, id.clone(), input, error);
        return Settle::Finish {
            id,
            token,
            envelope: Box::new(envelope),
            expired_before: None,
        };
    };
    // A run attempted (or suspended by a wait) before may have children that completed:
    // load what they recorded.
    let entries = if attempt > 1 || resumed {
        match store.journal(id.clone()).await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(run_id = %id, %error, "reading the journal failed; every step runs again");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let journal = Arc::new(Journal::new(
        store.clone(),
        id.clone(),
        token,
        entries,
        cancel.clone(),
        resumed && attempt == 1,
    ));
    let mut seed = Seed::root(cancel);
    if let Some(parent) = &spawned_by {
        seed.scope = inherited(&shared, &store, parent).await;
    }
    seed.run_id = Some(id.clone());
    seed.attempt = Some(attempt);
    seed.scope.journal = Some(journal.clone());
    seed.trace = crate::telemetry::Remote::of(trace_context.as_deref());
    let began = tokio::time::Instant::now();
    let end = descriptor
        .run_stored(shared.rt.executor(), input, seed)
        .await;
    let now = tokio::time::Instant::now();
    shared.pace.ended(now, now - began);
    // A durable wait ended the attempt: the run waits in the store, holding nothing.
    if let Some(suspension) = journal.suspension() {
        return Settle::Suspend {
            id,
            token,
            wake_at: suspension.wake_at,
            wait_token: suspension.token,
            children: suspension.children,
        };
    }
    if released.load(Ordering::Acquire) {
        return Settle::Release { id, token };
    }
    match (end.retry_in, end.envelope.job.error_detail.clone()) {
        (Some(delay), Some(error)) => Settle::Retry {
            id,
            token,
            run_at: later(SystemTime::now(), delay),
            error,
            expired_before: None,
        },
        _ => Settle::Finish {
            id,
            token,
            envelope: Box::new(end.envelope),
            expired_before: None,
        },
    }
}

/// How many spawning orchestrators' scopes a worker keeps.
const INHERITED_KEPT: usize = 256;

/// What a child spawned by `parent` inherits where its input is silent (trampData, cleanup
/// options, tenant and project): what the parent's stored input says, else what the
/// parent inherited itself (when it was spawned too, up to [`INHERITED_DEPTH`] levels), as
/// a child executed inside its parent's attempt inherits. Children serialize without the
/// trampData they share with their parent, so 1 000 items of a 2 MiB trampData store one
/// copy, not 1 000.
async fn inherited(shared: &Shared, store: &Arc<dyn RunStore>, parent: &RunId) -> Scope {
    const INHERITED_DEPTH: usize = 16;
    let mut chain = Vec::new();
    let mut scope = Scope::default();
    let mut next = Some(parent.clone());
    while let Some(id) = next.take() {
        if let Some(known) = lock(&shared.inherited.0).get(&id) {
            scope = known.clone();
            break;
        }
        if chain.len() == INHERITED_DEPTH {
            break;
        }
        match store.get(id.clone()).await {
            Ok(Some(info)) => {
                next = info.parent_run_id.clone();
                chain.push((id, info.input));
            }
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(run_id = %id, %error, "reading what a spawned child inherits failed; it inherits nothing");
                break;
            }
        }
    }
    for (id, input) in chain.into_iter().rev() {
        scope = scope_of(&input, scope, None);
        let mut kept = lock(&shared.inherited.0);
        if kept.len() >= INHERITED_KEPT {
            kept.clear();
        }
        kept.insert(id, scope.clone());
    }
    scope
}

/// Brings the schedules declared in this binary's code into the store.
async fn sync_schedules(shared: &Shared) {
    #[cfg(feature = "cron")]
    if let Err(error) = shared.rt.schedules().sync_declared().await {
        tracing::error!(%error, "the declared schedules could not be stored; they do not fire");
    }
    #[cfg(not(feature = "cron"))]
    if let Some(task) = shared
        .rt
        .registry()
        .entries()
        .iter()
        .find(|d| d.schedule.is_some())
    {
        tracing::error!(
            task = task.id,
            "a task declares a schedule, but task-runtime was built without its `cron` feature: it never fires"
        );
    }
}

/// Fires the store's due schedules, every second, until the worker stops (a fire is a
/// trigger: the claim loop then executes it like any run).
#[cfg(feature = "cron")]
async fn fire_schedules(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(error) = shared.rt.schedules().fire_due(SystemTime::now()).await {
            tracing::warn!(%error, "firing due schedules failed; trying again in a second");
        }
    }
}

/// Queues the waiting runs whose wake time came (a sleep's end, a token wait's deadline,
/// read on the runtime's clock), every second or at the next wake time if sooner (looked up
/// again whenever one of this worker's runs starts waiting), until the worker stops; the claim loop then takes them like any due run. A completed token wakes
/// its run itself, at once.
async fn wake_waiting(shared: Arc<Shared>, store: Arc<dyn RunStore>, stop: CancellationToken) {
    let clock = shared.rt.executor().clock.clone();
    loop {
        let mut wait = Duration::from_secs(1);
        match store.wake_waiting(clock.now()).await {
            Ok((woken, next)) => {
                if woken > 0 {
                    tracing::debug!(woken, "woke waiting runs");
                    // A pass that woke runs does not say when the next one is due: look
                    // again at once (a read), rather than sleeping a whole second.
                    continue;
                }
                if let Some(next) = next {
                    let until = next.duration_since(clock.now()).unwrap_or_default();
                    wait = wait.min(until + Duration::from_millis(1));
                }
            }
            Err(error) => {
                tracing::warn!(%error, "waking waiting runs failed; trying again in a second")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A run of ours started waiting: its wake time may come before `wait` is over.
            _ = shared.suspended.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Stops the runs this worker holds as soon as the store hears they are to be cancelled
/// (the heartbeat's reply is the fallback).
async fn forward_cancels(
    shared: Arc<Shared>,
    mut requests: tokio::sync::broadcast::Receiver<RunId>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match requests.recv().await {
            Ok(id) => {
                if let Some(run) = lock(&shared.held).get(&id) {
                    tracing::info!(run_id = %id, "cancel requested");
                    run.cancel.cancel();
                }
            }
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        }
    }
}

/// Heartbeats, and the upkeep any worker does for the whole store: reclaiming expired
/// leases and expiring runs past their time to live.
async fn keep_leases(shared: Arc<Shared>, store: Arc<dyn RunStore>, stop: CancellationToken) {
    let every = (shared.lease / 3).max(Duration::from_millis(10));
    let mut upkeep_due = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // After stop, leases still need extending while runs finish within the grace.
            _ = stop.cancelled(), if !stop.is_cancelled() => continue,
        }
        let leases = shared.leases();
        if !leases.is_empty() {
            match store
                .heartbeat(shared.owner.clone(), leases, shared.lease)
                .await
            {
                Ok(reply) => {
                    let held = lock(&shared.held);
                    for id in &reply.lost {
                        if let Some(run) = held.get(id).filter(|run| !run.ending) {
                            tracing::warn!(run_id = %id, "lease lost (it expired and was reclaimed): stopping the run");
                            run.cancel.cancel();
                        }
                    }
                    for id in &reply.cancel {
                        if let Some(run) = held.get(id) {
                            tracing::info!(run_id = %id, "cancel requested");
                            run.cancel.cancel();
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "heartbeat failed; leases run out unless the next one succeeds")
                }
            }
        }
        if !stop.is_cancelled() && tokio::time::Instant::now() >= upkeep_due {
            upkeep_due = tokio::time::Instant::now() + every.max(Duration::from_millis(250));
            reclaim(&shared, &store).await;
            expire(&store).await;
        }
    }
}

/// Ends the attempts whose worker stopped heartbeating, as `workerLost`, and reschedules or
/// fails each run per its task's retry policy.
async fn reclaim(shared: &Shared, store: &Arc<dyn RunStore>) {
    let now = SystemTime::now();
    let expired = match store.expired_leases(now, 256).await {
        Ok(expired) => expired,
        Err(error) => {
            tracing::warn!(%error, "looking for expired leases failed");
            return;
        }
    };
    let mut settles = Vec::new();
    for lease in expired {
        let error = TaskError::worker_lost(format!(
            "worker {} stopped heartbeating; its lease on attempt {} expired",
            lease.owner, lease.attempt
        ));
        let retry = shared
            .rt
            .registry()
            .get(&lease.task)
            .and_then(|d| d.policy.retry)
            .unwrap_or(shared.rt.executor().default_retry);
        tracing::warn!(run_id = %lease.id, task = lease.task, owner = lease.owner, attempt = lease.attempt, "reclaiming an expired lease");
        settles.push(match next_delay(&retry, lease.attempt, &error) {
            Some(delay) => Settle::Retry {
                id: lease.id,
                token: lease.token,
                run_at: later(now, delay),
                error,
                expired_before: Some(now),
            },
            None => {
                let mut envelope =
                    RunOutput::refused(&lease.task, lease.id.clone(), lease.input, error);
                envelope.metadata.attempts = lease.attempt;
                Settle::Finish {
                    id: lease.id,
                    token: lease.token,
                    envelope: Box::new(envelope),
                    expired_before: Some(now),
                }
            }
        });
    }
    if settles.is_empty() {
        return;
    }
    let settles = Arc::new(settles);
    match store.settle(settles.clone()).await {
        Ok(applied) => {
            let n = applied.iter().filter(|a| **a).count() as u64;
            shared.stats.reclaimed.fetch_add(n, Ordering::Relaxed);
            crate::metrics::leases_reclaimed(n);
            // Lost on its last attempt: the run ended here.
            for (settle, applied) in settles.iter().zip(applied) {
                if let (Settle::Finish { envelope, .. }, true) = (settle, applied) {
                    crate::metrics::run_ended(&envelope.job.task_name, "failed");
                }
            }
        }
        Err(error) => tracing::warn!(%error, "reclaiming expired leases failed"),
    }
}

/// Ends queued runs whose time to live ran out.
async fn expire(store: &Arc<dyn RunStore>) {
    let now = SystemTime::now();
    let expired = match store.expired_runs(now, 256).await {
        Ok(expired) => expired,
        Err(error) => {
            tracing::warn!(%error, "looking for expired runs failed");
            return;
        }
    };
    if expired.is_empty() {
        return;
    }
    let ends = expired
        .into_iter()
        .map(|run| {
            let error = TaskError::expired(format!(
                "not started before its time to live ended at {}",
                humantime::format_rfc3339_millis(run.expire_at)
            ));
            let envelope = RunOutput::refused(&run.task, run.id.clone(), run.input, error);
            (run.id, Box::new(envelope))
        })
        .collect::<Vec<_>>();
    let tasks: Vec<String> = ends
        .iter()
        .map(|(_, e)| e.job.task_name.to_string())
        .collect();
    match store.end_queued(ends).await {
        Ok(ended) => {
            for (task, ended) in tasks.iter().zip(ended) {
                if ended {
                    crate::metrics::run_ended(task, "expired");
                }
            }
        }
        Err(error) => tracing::warn!(%error, "expiring runs failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// `pace` after runs of `took` ended `gap` apart, `n` of them from `t`; the last end.
    fn after(pace: &Pace, t: Instant, n: u64, gap: Duration, took: Duration) -> Instant {
        for i in 0..n {
            pace.ended(t + gap * u32::try_from(i).unwrap(), took);
        }
        t + gap * u32::try_from(n - 1).unwrap()
    }

    #[test]
    fn runs_that_turn_over_fast_are_claimed_ahead() {
        let t = Instant::now();
        let pace = Pace::new(16);
        assert_eq!(pace.ahead(t), 0, "nothing ahead before runs ended");
        // No-op runs of 20 us, ending every 2 us on 16 slots: two concurrencies ahead.
        let last = after(&pace, t, 200, us(2), us(20));
        assert_eq!(pace.ahead(last + us(100)), 32);
        // Runs of 5 ms on 4 slots: 4 slots start 8 runs within 10 ms.
        let pace = Pace::new(4);
        let last = after(&pace, t, 40, us(1_250), us(5_000));
        assert_eq!(pace.ahead(last), 8);
        // Runs of 8 ms on 16 slots: 20 start within 10 ms.
        let pace = Pace::new(16);
        let last = after(&pace, t, 64, us(500), us(8_000));
        assert_eq!(pace.ahead(last), 20);
        // Runs of 40 ms: a slot turns over every 40 ms, none ahead.
        let pace = Pace::new(16);
        let last = after(&pace, t, 64, us(2_500), us(40_000));
        assert_eq!(pace.ahead(last), 0);
    }

    #[test]
    fn long_runs_are_not_claimed_ahead() {
        let t = Instant::now();
        // Two slots of 100 ms runs that end together: they end fast, but take long.
        let pace = Pace::new(2);
        let last = after(&pace, t, 2, us(100), us(100_000));
        assert_eq!(pace.ahead(last), 0);
        // Fewer ends than slots within the horizon: the slots hold runs that do not end.
        let pace = Pace::new(4);
        let last = after(&pace, t, 3, us(10), us(20));
        assert_eq!(pace.ahead(last), 0, "3 of 4 slots turned over");
        pace.ended(last + us(10), us(20));
        assert_eq!(pace.ahead(last + us(20)), 8, "all 4 did");
    }

    #[test]
    fn slots_held_by_long_runs_stop_claims_ahead_at_once() {
        let t = Instant::now();
        let pace = Pace::new(8);
        let last = after(&pace, t, 1_000, us(3), us(20));
        assert_eq!(pace.ahead(last + us(5_000)), 16, "fast a moment ago");
        assert_eq!(
            pace.ahead(last + us(11_000)),
            0,
            "no 8 runs ended within 10 ms"
        );
    }

    #[test]
    fn the_pace_follows_the_recent_runs() {
        let t = Instant::now();
        let pace = Pace::new(8);
        let last = after(&pace, t, 8, us(10), Duration::from_secs(1));
        assert_eq!(pace.ahead(last), 0);
        let last = after(&pace, last, 64, us(3), us(10));
        assert_eq!(pace.ahead(last), 16, "runs became short again");
    }
}
