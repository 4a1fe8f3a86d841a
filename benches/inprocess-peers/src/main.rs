//! 100 000 no-op jobs pushed and drained in-process: apalis 1.x `MemoryStorage` (two
//! workers' worth of concurrency, inline), our `orchestrator!` `each` fan-out over 100 000
//! validated items, and 100 000 `rt.trigger` by id with the same jobs as JSON, then all awaited. Each sample is
//! a fresh process (the binary runs itself), the modes interleaved, so allocator and page
//! state never carry over; peak memory is the process's `VmHWM`.
//!
//! `cargo run --release --manifest-path benches/inprocess-peers/Cargo.toml [-- SAMPLES]`

#[path = "../../../task-runtime/benches/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use apalis::prelude::*;
use common::{FAN_OUT_ITEMS, FanOut, NoopInput, fan_input, item, tokio_runtime};
use task_runtime::BaseInput;

const JOBS: usize = FAN_OUT_ITEMS as usize;
const MODES: [&str; 3] = ["apalis", "each", "trigger"];

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

/// apalis' job: the same input type, counted; the last one stops the worker.
async fn apalis_noop(job: NoopInput, worker: WorkerContext, done: Data<Arc<AtomicUsize>>) {
    std::hint::black_box(job.value);
    if done.fetch_add(1, Ordering::AcqRel) + 1 == JOBS {
        let _ = worker.stop();
    }
}

fn run_apalis(tokio: &tokio::runtime::Runtime) {
    tokio.block_on(async {
        let mut storage = MemoryStorage::new();
        let base = BaseInput::new("tenant-0001", "project-0001");
        for i in 0..JOBS as u32 {
            storage.push(item(&base, i)).await.expect("pushed");
        }
        let done = Arc::new(AtomicUsize::new(0));
        WorkerBuilder::new("noop")
            .backend(storage)
            .concurrency(2)
            .data(done.clone())
            .build(apalis_noop)
            .run()
            .await
            .expect("the worker runs");
        assert_eq!(done.load(Ordering::Acquire), JOBS);
    });
}

fn run_each(tokio: &tokio::runtime::Runtime) {
    let rt = task_runtime::Runtime::new();
    let items = tokio.block_on(async move {
        tokio::spawn(async move {
            let out = rt.run(FanOut, fan_input(FAN_OUT_ITEMS)).await.ok().expect("the fan-out succeeds");
            out.results.items.len()
        })
        .await
        .expect("no panic")
    });
    assert_eq!(items, JOBS);
}

fn run_trigger(tokio: &tokio::runtime::Runtime) {
    let rt = task_runtime::Runtime::new();
    let ok = tokio.block_on(async move {
        tokio::spawn(async move {
            // The jobs apalis is given (`item`), as the JSON a caller triggering by id sends.
            let mut handles = Vec::with_capacity(JOBS);
            for i in 0..JOBS as u32 {
                let json = serde_json::json!({
                    "tenantId": "tenant-0001",
                    "projectId": "project-0001",
                    "value": i,
                    "label": "item",
                });
                handles.push(rt.trigger("noop", json).await.expect("accepted"));
            }
            let mut ok = 0;
            for handle in handles {
                ok += usize::from(handle.wait().await.job.success);
            }
            ok
        })
        .await
        .expect("no panic")
    });
    assert_eq!(ok, JOBS);
}

fn sample(mode: &str) {
    let tokio = tokio_runtime();
    let started = Instant::now();
    match mode {
        "apalis" => run_apalis(&tokio),
        "each" => run_each(&tokio),
        "trigger" => run_trigger(&tokio),
        other => panic!("unknown mode {other}"),
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{mode} {:.0} {}", JOBS as f64 / seconds, status_kib("VmHWM"));
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(mode) = args.first().filter(|a| MODES.contains(&a.as_str())) {
        return sample(mode);
    }
    let samples: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(7);
    let exe = std::env::current_exe().expect("own path");
    let mut results: Vec<(&str, Vec<f64>, Vec<f64>)> = MODES.iter().map(|m| (*m, Vec::new(), Vec::new())).collect();
    for _ in 0..samples {
        for (mode, rates, peaks) in &mut results {
            let out = Command::new(&exe).arg(*mode).output().expect("runs itself");
            assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
            let line = String::from_utf8(out.stdout).expect("utf-8");
            let fields: Vec<&str> = line.split_whitespace().collect();
            rates.push(fields[1].parse().expect("jobs/s"));
            peaks.push(fields[2].parse::<f64>().expect("KiB") / 1024.0);
        }
    }
    let apalis = median(results[0].1.clone());
    let apalis_peak = median(results[0].2.clone());
    println!("{samples} fresh processes per mode, {JOBS} jobs each, medians (min..max)");
    println!("{:<8} {:>12} {:>8} {:>14} {:>8}", "mode", "jobs/s", "x apalis", "peak MiB", "x apalis");
    for (mode, rates, peaks) in &results {
        let (rate, peak) = (median(rates.clone()), median(peaks.clone()));
        let lo = rates.iter().cloned().fold(f64::MAX, f64::min);
        let hi = rates.iter().cloned().fold(0.0, f64::max);
        println!(
            "{mode:<8} {rate:>12.0} {:>8.2} {peak:>14.1} {:>8.2}   ({lo:.0}..{hi:.0} jobs/s)",
            rate / apalis,
            peak / apalis_peak
        );
    }
}
