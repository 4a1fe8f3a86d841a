//! Durable runs on the SQLite store, on a real file: trigger throughput (batched and one by
//! one), drain throughput of no-op runs and of 3-step tracks with a worker of concurrency
//! 16, trigger->start latency (worker in this process, and in another one), the drain
//! rate after 200 000 finished runs, and the wake-up latency of waiting runs (a completed
//! token, a passed sleep).
//!
//! `cargo bench -p task-runtime --bench sqlite_store [-- MODE] [-- --synchronous full]`
//! with MODE one of `enqueue`, `drain`, `track`, `latency`, `latency-remote`, `aged`, `wake`
//! (default: all, each in a fresh process). Files go to a fresh directory under
//! `$TMPDIR` (set `BENCH_DIR` to use another disk).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Noop, NoopInput, NoopOutput, payload, tokio_runtime};
use serde_json::json;
use task_runtime::prelude::*;
use task_runtime::{Store, TriggerOptions};

impl From<NoopOutput> for NoopInput {
    fn from(out: NoopOutput) -> Self {
        NoopInput {
            base: BaseInput::new("tenant-0001", "project-0001"),
            value: out.value,
            label: "step".to_owned(),
        }
    }
}

track! {
    /// Three no-op steps.
    pub Noop3("noop3") {
        Noop,
        Noop,
        Noop,
    }
}

/// Input of `stamp`: when it was triggered, and where to record when it started.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StampInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub sent_at_nanos: u64,
    pub log: String,
}

/// Records how long after its trigger it started, in nanoseconds.
#[task(id = "stamp")]
pub async fn stamp(_ctx: &TaskContext, input: StampInput) -> Result<NoopOutput, TaskError> {
    let waited = now_nanos().saturating_sub(input.sent_at_nanos);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&input.log)
        .or_failed()?;
    file.write_all(format!("{waited}\n").as_bytes())
        .or_failed()?;
    Ok(NoopOutput { value: 0 })
}

/// Input of the waiting benchmarks: a token to wait for, or a time to sleep until.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WakeInput {
    #[serde(flatten)]
    pub base: BaseInput,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub until_nanos: u64,
}

/// How late the run resumed, in nanoseconds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Woke {
    pub late_nanos: u64,
}

/// Waits for its token (completed with the completion's time) or sleeps until its time,
/// then says how long after that moment it resumed.
#[task(id = "wake")]
pub async fn wake(ctx: &TaskContext, input: WakeInput) -> Result<Woke, TaskError> {
    let due = match &input.token {
        Some(token) => {
            ctx.wait_for_token::<u64>(token, Duration::from_secs(3600))
                .await?
        }
        None => {
            ctx.sleep_until(UNIX_EPOCH + Duration::from_nanos(input.until_nanos))
                .await?;
            input.until_nanos
        }
    };
    Ok(Woke {
        late_nanos: now_nanos().saturating_sub(due),
    })
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

const MODES: [&str; 7] = [
    "enqueue",
    "drain",
    "track",
    "latency",
    "latency-remote",
    "aged",
    "wake",
];

fn bench_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = root.join(format!("sqlite-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

fn url(dir: &Path, synchronous: &str) -> String {
    format!(
        "sqlite://{}/runs.db?synchronous={synchronous}",
        dir.display()
    )
}

async fn runtime(url: &str) -> Runtime {
    let store = Store::connect(url).await.expect("store");
    Runtime::builder().store(store).build().expect("runtime")
}

/// Waits until the worker has executed `n` runs in all.
async fn executed(worker: &task_runtime::Worker, n: u64) {
    while worker.report().executed < n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn enqueue_batched(rt: &Runtime, n: usize, batch: usize, task: &str) {
    let json = payload();
    for _ in 0..n / batch {
        let inputs = (0..batch).map(|_| json.clone()).collect();
        rt.trigger_batch(task, inputs, TriggerOptions::new())
            .await
            .expect("committed");
    }
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run_mode(mode: &str, synchronous: &str) {
    let dir = bench_dir(mode);
    let url = url(&dir, synchronous);
    let rt = runtime(&url).await;
    match mode {
        "enqueue" => {
            let started = Instant::now();
            enqueue_batched(&rt, 20_000, 500, "noop").await;
            let batched = rate(20_000, started.elapsed());
            let json = payload();
            let started = Instant::now();
            for _ in 0..2_000 {
                rt.trigger("noop", json.clone()).await.expect("committed");
            }
            let single = rate(2_000, started.elapsed());
            println!(
                "enqueue: 20000 batched (500 per batch) {batched:.0} runs/s; 2000 one by one {single:.0} runs/s"
            );
        }
        "drain" | "track" => {
            let (task, n) = if mode == "drain" {
                ("noop", 20_000)
            } else {
                ("noop3", 5_000)
            };
            enqueue_batched(&rt, n, 500, task).await;
            let worker = rt.worker().concurrency(16).start();
            let started = Instant::now();
            executed(&worker, n as u64).await;
            let took = started.elapsed();
            worker.shutdown(Duration::from_secs(5)).await;
            println!(
                "{mode}: {n} {task} runs, concurrency 16: {:.0} runs/s",
                rate(n, took)
            );
        }
        "aged" => {
            let worker = rt.worker().concurrency(16).start();
            let mut done = 0u64;
            let mut rates = Vec::new();
            for round in 0..11 {
                enqueue_batched(&rt, 20_000, 500, "noop").await;
                let started = Instant::now();
                done += 20_000;
                executed(&worker, done).await;
                rates.push(rate(20_000, started.elapsed()));
                println!(
                    "aged: round {round}: {} finished before it, {:.0} runs/s",
                    done - 20_000,
                    rates[round]
                );
            }
            worker.shutdown(Duration::from_secs(5)).await;
            println!(
                "aged: fresh {:.0} runs/s, after 200000 finished {:.0} runs/s ({:+.1}%)",
                rates[0],
                rates[10],
                (rates[10] / rates[0] - 1.0) * 100.0
            );
        }
        "wake" => {
            let worker = rt.worker().concurrency(16).start();
            let base = json!({ "tenantId": "tenant-0001", "projectId": "project-0001" });
            let with = |extra: serde_json::Value| {
                let mut input = base.clone();
                input
                    .as_object_mut()
                    .unwrap()
                    .extend(extra.as_object().unwrap().clone());
                input
            };
            let waiting = |ids: Vec<task_runtime::RunId>| {
                let rt = rt.clone();
                async move {
                    for id in ids {
                        while rt.runs().get(&id).await.expect("read").expect("run").status
                            != task_runtime::RunStatus::Waiting
                        {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            };
            let lateness = |ids: Vec<task_runtime::RunId>| {
                let rt = rt.clone();
                async move {
                    let mut late = Vec::new();
                    for id in ids {
                        let out = rt.runs().wait(&id).await.expect("read").expect("run");
                        assert!(out.job.success, "{:?}", out.job.error);
                        late.push(out.results["lateNanos"].as_u64().expect("late") as f64 / 1e6);
                    }
                    late.sort_by(f64::total_cmp);
                    late
                }
            };
            // Tokens: 500 runs wait; each token is completed in turn, and the run's
            // resumption is awaited before the next (the wake-up, not a queue).
            let samples = 500;
            let mut tokens = Vec::new();
            let mut ids = Vec::new();
            for _ in 0..samples {
                let token = rt
                    .tokens()
                    .create(task_runtime::NewToken::new())
                    .await
                    .expect("token");
                let handle = rt
                    .trigger("wake", with(json!({ "token": token.id })))
                    .await
                    .expect("committed");
                tokens.push(token.id);
                ids.push(handle.run_id().clone());
            }
            waiting(ids.clone()).await;
            let mut completing = Vec::new();
            for (token, id) in tokens.iter().zip(&ids) {
                let started = Instant::now();
                rt.tokens()
                    .complete(token, json!(now_nanos()))
                    .await
                    .expect("complete");
                completing.push(started.elapsed().as_secs_f64() * 1e3);
                rt.runs().wait(id).await.expect("read");
            }
            completing.sort_by(f64::total_cmp);
            let late = lateness(ids).await;
            println!(
                "wake: token completed -> run resumed, {samples} runs one at a time: p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms (complete() itself: p50 {:.3} ms, p99 {:.3} ms)",
                percentile(&late, 0.5),
                percentile(&late, 0.95),
                percentile(&late, 0.99),
                percentile(&completing, 0.5),
                percentile(&completing, 0.99)
            );
            // Sleeps: 200 runs sleep until moments spread over the next 4 s.
            let samples = 200;
            let start = now_nanos() + 1_000_000_000;
            let mut ids = Vec::new();
            for i in 0..samples {
                let until = start + i * 20_000_000;
                let handle = rt
                    .trigger("wake", with(json!({ "untilNanos": until })))
                    .await
                    .expect("committed");
                ids.push(handle.run_id().clone());
            }
            let late = lateness(ids).await;
            println!(
                "wake: sleep until t -> run resumed, {samples} runs due over 4 s: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
                percentile(&late, 0.5),
                percentile(&late, 0.95),
                percentile(&late, 0.99)
            );
            worker.shutdown(Duration::from_secs(5)).await;
        }
        "latency" | "latency-remote" => {
            let log = dir.join("started.log");
            let mut remote = None;
            let worker = if mode == "latency" {
                Some(rt.worker().concurrency(16).start())
            } else {
                let exe = std::env::current_exe().expect("own path");
                remote = Some(
                    Command::new(exe)
                        .args(["worker-process", &url])
                        .spawn()
                        .expect("worker process"),
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                None
            };
            let samples = 1_000;
            let count = || std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
            for i in 0..samples {
                let input = json!({
                    "tenantId": "tenant-0001", "projectId": "project-0001",
                    "sentAtNanos": now_nanos(), "log": log.display().to_string(),
                });
                rt.trigger("stamp", input).await.expect("committed");
                // One at a time: measure the wake-up, not a queue.
                while count() <= i {
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
            }
            let mut waits: Vec<f64> = std::fs::read_to_string(&log)
                .expect("log")
                .lines()
                .map(|l| l.parse::<f64>().expect("nanos") / 1e6)
                .collect();
            waits.sort_by(f64::total_cmp);
            println!(
                "{mode}: trigger->start over {samples} runs: p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms",
                percentile(&waits, 0.5),
                percentile(&waits, 0.95),
                percentile(&waits, 0.99)
            );
            if let Some(worker) = worker {
                worker.shutdown(Duration::from_secs(5)).await;
            }
            if let Some(mut child) = remote {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        other => panic!("unknown mode {other}"),
    }
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let synchronous = args
        .windows(2)
        .find(|w| w[0] == "--synchronous")
        .map_or("normal".to_owned(), |w| w[1].clone());
    let tokio = tokio_runtime();
    if args.first().map(String::as_str) == Some("worker-process") {
        let url = args[1].clone();
        tokio.block_on(async move {
            let rt = runtime(&url).await;
            let worker = rt.worker().concurrency(16).start();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            worker.shutdown(Duration::from_secs(1)).await;
        });
        return;
    }
    if let Some(mode) = args.iter().find(|a| MODES.contains(&a.as_str())) {
        tokio.block_on(run_mode(mode, &synchronous));
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    println!("synchronous={synchronous}");
    for mode in MODES {
        let status = Command::new(&exe)
            .args([mode, "--synchronous", &synchronous])
            .status()
            .expect("runs itself");
        assert!(status.success(), "{mode} failed");
    }
}
