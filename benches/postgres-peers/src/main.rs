//! Durable runs on one PostgreSQL, side by side in one run: task-runtime's `PostgresStore`,
//! graphile_worker 0.14 (with its `local_queue`) and underway 0.2. The server is started
//! here (`initdb` + `pg_ctl`, fsync on, as `tests/src/pg.rs` does for the tests), each system
//! gets a fresh database of it, and each workload is run on each system in turn:
//!
//! 1. enqueue N jobs in a batch (ours: N triggers at once, which the store batches;
//!    graphile: `add_raw_jobs`; underway: `enqueue_multi`), jobs per second;
//! 2. drain them with concurrency 16, from the worker's start until every job is recorded
//!    as done in the database;
//! 3. a 3-step workflow (ours: a `track!` of three tasks; underway: a three-step `Job`;
//!    graphile has no workflow API), runs per second;
//! 4. enqueue -> start latency: one job at a time into an idle worker, from the call that
//!    enqueues it to the first line of its handler; p50 / p95 / p99.
//!
//! `cargo run --release --manifest-path benches/postgres-peers/Cargo.toml [-- --only ours]`
//! Sizes: `BENCH_JOBS` (default 20 000), `BENCH_FLOWS` (2 000), `BENCH_SLOW_JOBS` (underway's
//! drain, default 2 000: at its ~80 jobs/s, 20 000 would take four minutes),
//! `BENCH_LATENCY` (500 samples).

#[path = "../../../tests/src/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use task_runtime::prelude::*;
use task_runtime::{Store, TriggerOptions};

// ---------------------------------------------------------------------------------------
// Our tasks

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BenchInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BenchOutput {
    pub n: u64,
}

/// Jobs (and last steps of workflows) done, for every system.
static DONE: AtomicU64 = AtomicU64::new(0);

/// Does nothing; counts itself.
#[task(id = "bench_noop")]
pub async fn bench_noop(_ctx: &TaskContext, input: BenchInput) -> Result<BenchOutput, TaskError> {
    DONE.fetch_add(1, Ordering::Relaxed);
    Ok(BenchOutput { n: input.n })
}

/// Says when it started.
#[task(id = "bench_probe")]
pub async fn bench_probe(_ctx: &TaskContext, input: BenchInput) -> Result<BenchOutput, TaskError> {
    started(input.n);
    Ok(BenchOutput { n: input.n })
}

/// A workflow step that does nothing.
#[task(id = "bench_step")]
pub async fn bench_step(_ctx: &TaskContext, input: BenchInput) -> Result<BenchOutput, TaskError> {
    Ok(BenchOutput { n: input.n })
}

track! {
    /// Three steps; the last one counts the workflow done.
    pub BenchThree("bench_three")(input: BenchInput) {
        BenchStep,
        BenchStep = |prev: BenchOutput, original: &BenchInput| BenchInput { base: original.base.clone(), n: prev.n },
        BenchNoop = |prev: BenchOutput, original: &BenchInput| BenchInput { base: original.base.clone(), n: prev.n },
    }
}

fn ours_input(n: u64) -> serde_json::Value {
    serde_json::json!({ "tenantId": "bench", "projectId": "p", "n": n })
}

// ---------------------------------------------------------------------------------------
// Latency: handlers say when they started, by job number (numbers never repeat across
// systems).

struct Starts {
    seen: Mutex<HashMap<u64, Instant>>,
    notify: tokio::sync::Notify,
}

static STARTS: OnceLock<Starts> = OnceLock::new();

fn starts() -> &'static Starts {
    STARTS.get_or_init(|| Starts {
        seen: Mutex::default(),
        notify: tokio::sync::Notify::new(),
    })
}

/// The first line of every probe handler.
fn started(n: u64) {
    let at = Instant::now();
    let starts = starts();
    starts.seen.lock().unwrap().insert(n, at);
    starts.notify.notify_waiters();
}

async fn start_of(n: u64) -> Instant {
    let starts = starts();
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        let notified = starts.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(at) = starts.seen.lock().unwrap().remove(&n) {
            return at;
        }
        assert!(Instant::now() < limit, "job {n} never started");
        let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
    }
}

/// `samples` jobs, one at a time into an idle worker: from `enqueue(n)` to the handler's
/// first line.
async fn latency<F, Fut>(first: u64, samples: usize, mut enqueue: F) -> [f64; 3]
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut took = Vec::with_capacity(samples);
    for n in first..first + samples as u64 {
        let t0 = Instant::now();
        enqueue(n).await;
        took.push(start_of(n).await - t0);
        // The worker settles it and is idle again before the next one.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    percentiles(took)
}

// ---------------------------------------------------------------------------------------
// Reporting

#[derive(Default)]
struct Row {
    enqueue: Option<f64>,
    drain: Option<(f64, usize)>,
    flows: Option<f64>,
    latency: Option<[f64; 3]>,
}

fn percentiles(mut samples: Vec<Duration>) -> [f64; 3] {
    samples.sort();
    let at = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    [at(0.50), at(0.95), at(0.99)]
}

fn per_second(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

async fn wait_done(target: u64, limit: Duration) {
    let start = Instant::now();
    while DONE.load(Ordering::Relaxed) < target {
        assert!(
            start.elapsed() < limit,
            "{} of {target} done after {limit:?}",
            DONE.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct Sizes {
    jobs: usize,
    flows: usize,
    slow_jobs: usize,
    latency: usize,
}

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Ours

async fn count_ours(pool: &task_runtime::sqlx::PgPool, status: &str) -> i64 {
    task_runtime::sqlx::query_scalar(
        "SELECT count(*) FROM task_runtime.runs WHERE parent_run_id IS NULL AND status = $1",
    )
    .bind(status)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// With `BENCH_STATS=1` (and the server started with pg_stat_statements, which `main`
/// then asks for): what the statements of one phase cost, and how many commits it made.
struct Stats<'a> {
    server: &'a pg::PgServer,
    db: String,
    on: bool,
    commits: i64,
}

impl<'a> Stats<'a> {
    fn new(server: &'a pg::PgServer, url: &str) -> Self {
        let db = pg::database_of(url).to_owned();
        let on = std::env::var("BENCH_STATS").is_ok_and(|v| v == "1");
        if on {
            server
                .psql(&db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .unwrap();
        }
        Stats {
            server,
            db,
            on,
            commits: 0,
        }
    }

    fn commits(&self) -> i64 {
        // Backends publish their counts about once a second.
        std::thread::sleep(Duration::from_millis(1500));
        self.server
            .psql(
                "postgres",
                &format!(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = '{}'",
                    self.db
                ),
            )
            .unwrap()
            .parse()
            .unwrap()
    }

    fn begin(&mut self) {
        if self.on {
            self.server
                .psql(&self.db, "SELECT pg_stat_statements_reset()")
                .unwrap();
            self.commits = self.commits();
        }
    }

    fn end(&self, phase: &str, runs: usize) {
        if !self.on {
            return;
        }
        let commits = self.commits() - self.commits;
        let top = self
            .server
            .psql(
                &self.db,
                &format!(
                    "SELECT calls, rows, round(total_exec_time::numeric, 1) AS ms,
                            round((total_exec_time * 1000 / {runs})::numeric, 1) AS us_per_run,
                            left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
                       FROM pg_stat_statements
                      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '{}')
                      ORDER BY total_exec_time DESC LIMIT 10",
                    self.db
                ),
            )
            .unwrap();
        println!(
            "-- {phase}: {runs} runs, {commits} commits ({:.3} per run); calls|rows|ms|us per run|statement:\n{top}",
            commits as f64 / runs as f64
        );
    }
}

async fn ours(server: &pg::PgServer, url: &str, sizes: &Sizes) -> Row {
    let mut stats = Stats::new(server, url);
    let mut row = Row::default();
    let store = Store::connect(url).await.unwrap();
    let rt = Runtime::builder().store(store).build().unwrap();
    let pool = task_runtime::sqlx::PgPool::connect(url).await.unwrap();

    // 1. Enqueue: N triggers at once; the store commits them in batches.
    stats.begin();
    let start = Instant::now();
    let triggers = (0..sizes.jobs as u64).map(|n| rt.trigger("bench_noop", ours_input(n)));
    for handle in futures_util::future::join_all(triggers).await {
        handle.unwrap();
    }
    row.enqueue = Some(per_second(sizes.jobs, start.elapsed()));
    stats.end("enqueue", sizes.jobs);

    // 2. Drain with concurrency 16, until the database says every run completed.
    stats.begin();
    DONE.store(0, Ordering::Relaxed);
    let start = Instant::now();
    let worker = rt.worker().concurrency(16).start();
    wait_done(sizes.jobs as u64, Duration::from_secs(600)).await;
    while count_ours(&pool, "completed").await < sizes.jobs as i64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    row.drain = Some((per_second(sizes.jobs, start.elapsed()), sizes.jobs));
    worker.shutdown(Duration::from_secs(10)).await;
    stats.end("drain", sizes.jobs);

    // 3. Three-step workflows: enqueued first, then drained with concurrency 16.
    let triggers = (0..sizes.flows as u64).map(|n| rt.trigger("bench_three", ours_input(n)));
    for handle in futures_util::future::join_all(triggers).await {
        handle.unwrap();
    }
    DONE.store(0, Ordering::Relaxed);
    let before = count_ours(&pool, "completed").await;
    stats.begin();
    let start = Instant::now();
    let worker = rt.worker().concurrency(16).start();
    wait_done(sizes.flows as u64, Duration::from_secs(600)).await;
    while count_ours(&pool, "completed").await < before + sizes.flows as i64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    row.flows = Some(per_second(sizes.flows, start.elapsed()));
    stats.end("3-step runs", sizes.flows);

    // 4. Latency into the idle worker.
    stats.begin();
    row.latency = Some(
        latency(0, sizes.latency, |n| {
            let rt = rt.clone();
            async move {
                rt.trigger_with("bench_probe", ours_input(n), TriggerOptions::new())
                    .await
                    .unwrap();
            }
        })
        .await,
    );
    stats.end("latency", sizes.latency);
    worker.shutdown(Duration::from_secs(10)).await;
    row
}

// ---------------------------------------------------------------------------------------
// graphile_worker

#[derive(Serialize, Deserialize)]
struct GraphileJob {
    n: u64,
}

impl graphile_worker::TaskHandler for GraphileJob {
    const IDENTIFIER: &'static str = "graphile_noop";

    async fn run(
        self,
        _ctx: graphile_worker::WorkerContext,
    ) -> impl graphile_worker::IntoTaskHandlerResult {
        DONE.fetch_add(1, Ordering::Relaxed);
        Ok::<(), String>(())
    }
}

#[derive(Serialize, Deserialize)]
struct GraphileProbe {
    n: u64,
}

impl graphile_worker::TaskHandler for GraphileProbe {
    const IDENTIFIER: &'static str = "graphile_probe";

    async fn run(
        self,
        _ctx: graphile_worker::WorkerContext,
    ) -> impl graphile_worker::IntoTaskHandlerResult {
        started(self.n);
        Ok::<(), String>(())
    }
}

async fn graphile(url: &str, sizes: &Sizes) -> Row {
    let mut row = Row::default();
    let worker = graphile_worker::WorkerOptions::default()
        .database_url(url)
        .concurrency(16)
        .schema("graphile_worker")
        .define_job::<GraphileJob>()
        .define_job::<GraphileProbe>()
        .local_queue(graphile_worker::LocalQueueConfig::default().with_size(64))
        .init()
        .await
        .unwrap();
    let worker = Arc::new(worker);
    let utils = worker.create_utils();

    let jobs: Vec<graphile_worker::RawJobSpec> = (0..sizes.jobs as u64)
        .map(|n| graphile_worker::RawJobSpec {
            identifier: "graphile_noop".to_owned(),
            payload: serde_json::json!({ "n": n }),
            spec: graphile_worker::JobSpec::default(),
        })
        .collect();
    let start = Instant::now();
    utils.add_raw_jobs(&jobs).await.unwrap();
    row.enqueue = Some(per_second(sizes.jobs, start.elapsed()));

    DONE.store(0, Ordering::Relaxed);
    let pool = sqlx08::PgPool::connect(url).await.unwrap();
    let start = Instant::now();
    let running = worker.clone();
    let run = tokio::spawn(async move { running.run().await });
    wait_done(sizes.jobs as u64, Duration::from_secs(600)).await;
    // Done means deleted from its jobs table.
    loop {
        let left: i64 = sqlx08::query_scalar("SELECT count(*) FROM graphile_worker._private_jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    row.drain = Some((per_second(sizes.jobs, start.elapsed()), sizes.jobs));

    row.latency = Some(
        latency(1_000_000, sizes.latency, |n| {
            let utils = utils.clone();
            async move {
                utils
                    .add_job(GraphileProbe { n }, graphile_worker::JobSpec::default())
                    .await
                    .unwrap();
            }
        })
        .await,
    );
    worker.request_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
    row
}

// ---------------------------------------------------------------------------------------
// underway

#[derive(Serialize, Deserialize)]
struct Flow {
    n: u64,
}

/// `enqueue_multi` takes the job's own input type (its `JobState`, which underway builds
/// privately in `enqueue`): the same fields, made through serde.
fn job_states<T>(inputs: impl Iterator<Item = serde_json::Value>) -> Vec<T>
where
    T: serde::de::DeserializeOwned,
{
    inputs
        .map(|input| {
            serde_json::from_value(serde_json::json!({
                "step_index": 0,
                "step_input": input,
                "job_id": uuid::Uuid::new_v4(),
            }))
            .unwrap()
        })
        .collect()
}

async fn underway(url: &str, sizes: &Sizes) -> Row {
    let mut row = Row::default();
    let pool = sqlx08::PgPool::connect(url).await.unwrap();
    underway::run_migrations(&pool).await.unwrap();
    let single = underway::Job::builder()
        .step(|_cx, Flow { n }: Flow| async move {
            if n >= 2_000_000 {
                started(n);
            } else {
                DONE.fetch_add(1, Ordering::Relaxed);
            }
            underway::To::done()
        })
        .name("single")
        .pool(pool.clone())
        .build()
        .await
        .unwrap();
    let three = underway::Job::builder()
        .step(|_cx, flow: Flow| async move { underway::To::next(flow) })
        .step(|_cx, flow: Flow| async move { underway::To::next(flow) })
        .step(|_cx, _flow: Flow| async move {
            DONE.fetch_add(1, Ordering::Relaxed);
            underway::To::done()
        })
        .name("three")
        .pool(pool.clone())
        .build()
        .await
        .unwrap();
    let pending = |queue: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx08::query_scalar::<_, i64>(
                "SELECT count(*) FROM underway.task WHERE task_queue_name = $1 AND state <> 'succeeded'",
            )
            .bind(queue)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };

    // 1. Enqueue N in one batch.
    let states =
        job_states((0..sizes.jobs as u64).map(|n| serde_json::to_value(Flow { n }).unwrap()));
    let start = Instant::now();
    single
        .queue()
        .enqueue_multi(&pool, &single, &states)
        .await
        .unwrap();
    row.enqueue = Some(per_second(sizes.jobs, start.elapsed()));
    // At ~80 jobs/s, draining N would take minutes: drain a smaller batch, on its own.
    sqlx08::query("DELETE FROM underway.task WHERE task_queue_name = 'single'")
        .execute(&pool)
        .await
        .unwrap();
    let states =
        job_states((0..sizes.slow_jobs as u64).map(|n| serde_json::to_value(Flow { n }).unwrap()));
    single
        .queue()
        .enqueue_multi(&pool, &single, &states)
        .await
        .unwrap();

    // 2. Drain with concurrency 16.
    DONE.store(0, Ordering::Relaxed);
    let start = Instant::now();
    let mut worker = single.worker();
    worker.set_concurrency_limit(16);
    let single_worker = tokio::spawn(async move { worker.run().await });
    wait_done(sizes.slow_jobs as u64, Duration::from_secs(600)).await;
    while pending("single").await > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    row.drain = Some((
        per_second(sizes.slow_jobs, start.elapsed()),
        sizes.slow_jobs,
    ));

    // 3. Three-step jobs.
    let states =
        job_states((0..sizes.flows as u64).map(|n| serde_json::to_value(Flow { n }).unwrap()));
    three
        .queue()
        .enqueue_multi(&pool, &three, &states)
        .await
        .unwrap();
    DONE.store(0, Ordering::Relaxed);
    let start = Instant::now();
    let mut worker = three.worker();
    worker.set_concurrency_limit(16);
    let three_worker = tokio::spawn(async move { worker.run().await });
    wait_done(sizes.flows as u64, Duration::from_secs(600)).await;
    while pending("three").await > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    row.flows = Some(per_second(sizes.flows, start.elapsed()));
    three_worker.abort();

    // 4. Latency into the idle worker of `single`.
    row.latency = Some(
        latency(2_000_000, sizes.latency, |n| {
            let single = single.clone();
            async move {
                single.enqueue(&Flow { n }).await.unwrap();
            }
        })
        .await,
    );
    single_worker.abort();
    row
}

// ---------------------------------------------------------------------------------------

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

#[tokio::main]
async fn main() {
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let sizes = Sizes {
        jobs: size("BENCH_JOBS", 20_000),
        flows: size("BENCH_FLOWS", 2_000),
        slow_jobs: size("BENCH_SLOW_JOBS", 2_000),
        latency: size("BENCH_LATENCY", 500),
    };
    if std::env::var("BENCH_STATS").is_ok_and(|v| v == "1") {
        // SAFETY: set before any thread of ours reads the environment.
        unsafe {
            std::env::set_var(
                "PG_EXTRA_OPTIONS",
                "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all",
            )
        };
    }
    let server = pg::PgServer::start(true).unwrap_or_else(|e| panic!("{e}"));
    let version = server.psql("postgres", "SHOW server_version").unwrap();
    let fsync = server.psql("postgres", "SHOW fsync").unwrap();
    let commit = server.psql("postgres", "SHOW synchronous_commit").unwrap();
    println!(
        "PostgreSQL {version} (fsync {fsync}, synchronous_commit {commit}), {}",
        machine()
    );
    println!(
        "enqueue {} batched; drain {} (underway {}) with concurrency 16; {} three-step runs; {} latency samples",
        sizes.jobs, sizes.jobs, sizes.slow_jobs, sizes.flows, sizes.latency
    );
    let mut rows: Vec<(&str, Row)> = Vec::new();
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wants("ours") {
        let url = server.database("ours");
        rows.push((
            "task-runtime (PostgresStore)",
            ours(&server, &url, &sizes).await,
        ));
    }
    if wants("graphile") {
        let url = server.database("graphile");
        rows.push((
            "graphile_worker 0.14 (local_queue)",
            graphile(&url, &sizes).await,
        ));
    }
    if wants("underway") {
        let url = server.database("underway");
        rows.push(("underway 0.2", underway(&url, &sizes).await));
    }
    println!();
    println!(
        "| | enqueue, batched (jobs/s) | drain, concurrency 16 (jobs/s) | 3-step runs/s | enqueue -> start p50 / p95 / p99 (ms) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, row) in rows {
        let enqueue = row.enqueue.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let drain = row
            .drain
            .map_or("-".to_owned(), |(v, n)| format!("{v:.0} ({n} jobs)"));
        let flows = row
            .flows
            .map_or("no workflow API".to_owned(), |v| format!("{v:.0}"));
        let latency = row.latency.map_or("-".to_owned(), |[a, b, c]| {
            format!("{a:.2} / {b:.2} / {c:.2}")
        });
        println!("| {name} | {enqueue} | {drain} | {flows} | {latency} |");
    }
}
