//! Children on any worker, through the SQLite (or PostgreSQL) store: an orchestrator fans out over 10 000
//! no-op items, each a queued run of its own that the worker claims, while the parent waits
//! suspended. Measured: the enqueue (the parent's multi-row write of its children, as the
//! runtime logs it), the completion throughput of the children (first start to last
//! finish, from their rows), and trigger to the parent's end.
//!
//! `cargo bench -p task-runtime --bench store_fanout --features postgres [-- ITEMS]`
//! (default 10 000); `STORE_URL=postgres://...` measures a PostgreSQL database instead
//! (an empty one: the bench does not clear it). Two
//! shapes: every item enqueued at once (`concurrency = 10_000`), and the default window
//! (the runtime's `max_fan_out`, 1024 unfinished at most, refilled as half of them end).
//! The file goes to a fresh directory under `$TMPDIR` (`BENCH_DIR` for another disk).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{FanInput, Noop, fan_input, item, tokio_runtime};
use task_runtime::prelude::*;
use task_runtime::{RunStatus, Store};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

orchestrator! {
    /// Every item enqueued in one write.
    pub FanAll("fan_all")(input: FanInput) {
        items: each(|input| (0..input.count).map(|i| item(&input.base, i)).collect::<Vec<_>>()) => Noop, concurrency = 10_000,
    }
}

/// The `children enqueued` events of the runtime: (children added, microseconds).
#[derive(Clone, Default)]
struct Enqueues(Arc<Mutex<Vec<(u64, u64)>>>);

#[derive(Default)]
struct Fields {
    enqueued: bool,
    added: u64,
    enqueue_us: u64,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "added" => self.added = value,
            "enqueue_us" => self.enqueue_us = value,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.enqueued = format!("{value:?}").contains("children enqueued");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Enqueues {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.enqueued {
            self.0
                .lock()
                .unwrap()
                .push((fields.added, fields.enqueue_us));
        }
    }
}

fn secs(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64()
}

/// A runtime on the store `STORE_URL` names, else on a fresh SQLite file in a directory of
/// its own (under `BENCH_DIR`, default `$TMPDIR`), removed by the caller.
async fn fresh(name: &str) -> (Runtime, std::path::PathBuf) {
    let dir = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("store-fanout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = std::env::var("STORE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}/runs.db", dir.display()));
    let store = Store::connect(&url).await.unwrap();
    (Runtime::builder().store(store).build().unwrap(), dir)
}

async fn measure(task: &str, items: u32, enqueues: &Enqueues) {
    let (rt, dir) = fresh(task).await;
    let worker = rt.worker().concurrency(16).start();
    enqueues.0.lock().unwrap().clear();

    let clock = Instant::now();
    let input = serde_json::to_value(fan_input(items)).unwrap();
    let handle = rt.trigger(task, input).await.unwrap();
    let envelope = rt.runs().wait(handle.run_id()).await.unwrap().unwrap();
    let total = clock.elapsed();
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(
        envelope.results["items"].as_array().map(Vec::len),
        Some(items as usize)
    );
    worker.shutdown(Duration::from_secs(5)).await;

    let children = rt.runs().children(handle.run_id()).await.unwrap();
    assert_eq!(children.len(), items as usize);
    assert!(children.iter().all(|c| c.status == RunStatus::Completed));
    let first_start = children.iter().filter_map(|c| c.started_at).min().unwrap();
    let last_finish = children.iter().filter_map(|c| c.finished_at).max().unwrap();
    let span = secs(first_start, last_finish);
    let writes = enqueues.0.lock().unwrap().clone();
    let added: u64 = writes.iter().map(|(n, _)| n).sum();
    let enqueue_ms: f64 = writes.iter().map(|(_, us)| *us as f64 / 1000.0).sum();
    assert_eq!(added, u64::from(items), "every child enqueued once");
    println!(
        "{task}: {items} children; enqueue {enqueue_ms:.1} ms in {} write(s) ({:.0} children/s); \
         children first start -> last finish {span:.2} s ({:.0} children/s); trigger -> parent done {:.2} s",
        writes.len(),
        f64::from(items) / (enqueue_ms / 1000.0),
        f64::from(items) / span,
        total.as_secs_f64(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The baseline, same store, same worker: the same no-op runs triggered as top-level runs
/// (one batch), drained. The gap to the children's throughput is what being a child costs
/// (the parent's journal row, its wake).
async fn measure_flat(items: u32) {
    let (rt, dir) = fresh("flat").await;
    let base = fan_input(items).base;
    let inputs = (0..items)
        .map(|i| serde_json::to_value(item(&base, i)).unwrap())
        .collect();
    let handles = rt
        .trigger_batch("noop", inputs, task_runtime::TriggerOptions::new())
        .await
        .unwrap();
    let clock = Instant::now();
    let worker = rt.worker().concurrency(16).start();
    // One waiter (runs are claimed oldest first, so the last one ends about last): a waiter
    // per run would poll the store as often as the worker writes to it.
    let last = handles.last().unwrap().run_id();
    rt.runs().wait(last).await.unwrap().unwrap();
    for handle in &handles {
        let envelope = rt.runs().wait(handle.run_id()).await.unwrap().unwrap();
        assert!(envelope.job.success, "{:?}", envelope.job.error);
    }
    let total = clock.elapsed();
    worker.shutdown(Duration::from_secs(5)).await;
    let mut runs = Vec::with_capacity(handles.len());
    for handle in &handles {
        runs.push(rt.runs().get(handle.run_id()).await.unwrap().unwrap());
    }
    let first_start = runs.iter().filter_map(|r| r.started_at).min().unwrap();
    let last_finish = runs.iter().filter_map(|r| r.finished_at).max().unwrap();
    let span = secs(first_start, last_finish);
    println!(
        "top-level baseline: {items} runs; first start -> last finish {span:.2} s ({:.0} runs/s); worker start -> all awaited {:.2} s",
        f64::from(items) / span,
        total.as_secs_f64(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let items: u32 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(10_000);
    let enqueues = Enqueues::default();
    let subscriber = tracing_subscriber::registry().with(enqueues.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let runtime = tokio_runtime();
    runtime.block_on(async {
        // `-- flat` measures the baseline alone (on a fresh database).
        if !std::env::args().any(|arg| arg == "flat") {
            measure("fan_all", items, &enqueues).await;
            measure("fan_out", items, &enqueues).await;
        }
        measure_flat(items).await;
    });
}
