//! Peak memory and wall time of a 100 000-item fan-out, in a fresh process.
//!
//! `cargo bench -p task-runtime --bench fanout_memory -- orchestrator` runs the orchestrator
//! (`each` over 100 000 no-op items, the runtime's default window) once; `-- joinset` runs
//! the raw baseline (100 000 direct calls spawned on a `JoinSet`). Without an argument the
//! binary runs itself once for each, so each figure comes from a fresh process.
//!
//! Peak RSS is `VmHWM` from `/proc/self/status`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use common::{FAN_OUT_ITEMS, FanOut, fan_input, raw_fan_out, tokio_runtime};
use task_runtime::prelude::*;

const MODES: [&str; 2] = ["orchestrator", "joinset"];

/// A line of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn measure(mode: &str) {
    let tokio = tokio_runtime();
    let rt = Runtime::new();
    let ctx = Arc::new(TaskContext::for_test());
    let before = status_kib("VmHWM");
    let started = Instant::now();
    // On a worker thread, so the spawns go to a worker's local queue as in an application.
    let orchestrator = mode == "orchestrator";
    let items = tokio.block_on(async move {
        let work = tokio::spawn(async move {
            if orchestrator {
                let out = rt
                    .run(FanOut, fan_input(FAN_OUT_ITEMS))
                    .await
                    .expect("the fan-out succeeds");
                out.results.items.len()
            } else {
                raw_fan_out(ctx, FAN_OUT_ITEMS).await.len()
            }
        });
        work.await.expect("the fan-out does not panic")
    });
    let wall = started.elapsed();
    assert_eq!(items, FAN_OUT_ITEMS as usize);
    let peak = status_kib("VmHWM");
    println!(
        "{mode}: {items} items, wall {:.1} ms ({:.0} ns/item), peak RSS {:.1} MiB \
         (before the run {:.1} MiB)",
        wall.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e9 / items as f64,
        mib(peak),
        mib(before),
    );
}

fn main() {
    // `cargo bench` appends `--bench`; take the first argument naming a mode.
    let mode = std::env::args()
        .skip(1)
        .find(|a| MODES.contains(&a.as_str()));
    match mode {
        Some(mode) => measure(&mode),
        None => {
            let exe = std::env::current_exe().expect("own path");
            for mode in MODES {
                let status = Command::new(&exe).arg(mode).status().expect("runs itself");
                assert!(status.success(), "{mode} run failed");
            }
        }
    }
}
