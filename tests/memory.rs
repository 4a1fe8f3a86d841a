//! Memory a fan-out takes, measured by a counting global allocator (this test binary's
//! own): 200 items under 2 MiB of trampData share one copy of it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use task_runtime::prelude::*;
use task_tests::probe::Probe;
use task_tests::{Spread, SpreadInput};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_share_the_parents_tramp_data() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut base = BaseInput::new("t", "p");
    base.tramp_data = Some(json!({ "blob": "x".repeat(2 * MIB) }).into());
    let input = SpreadInput {
        base,
        probe: probe.name().to_owned(),
        count: 200,
    };
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = match rt.run(Spread, input).await {
        Ok(out) => out,
        Err(e) => panic!("{}", e.error),
    };
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert_eq!(out.results.items.len(), 200);
    assert!(
        out.results.items.iter().all(|item| item.bytes == 2 * MIB),
        "every item saw the trampData"
    );
    // The root's input as JSON and the envelope's copy; one copy per item would be 400 MiB.
    assert!(peak < 12 * MIB, "peak {:.1} MiB", peak as f64 / MIB as f64);
    eprintln!("peak {:.1} MiB", peak as f64 / MIB as f64);
}
