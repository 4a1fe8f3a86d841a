//! A small driver for profilers (`valgrind --tool=callgrind`, `perf record`): runs one kind
//! of run `N` times in a loop, with no criterion machinery around it.
//!
//! `cargo bench -p task-runtime --bench profile_driver --no-run`, then run the binary under
//! the profiler with `direct|run|trigger|background|track|fanout|joinset [N]` or `sizes`
//! (`fanout` and `joinset` run once over `N` items).

mod common;

use std::hint::black_box;
use std::sync::Arc;

use common::{
    FanOut, Noop, NoopInput, NoopOutput, fan_input, noop, payload, raw_fan_out, tokio_runtime,
    typed_payload,
};
use task_runtime::prelude::*;

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

fn main() {
    // `cargo bench` appends `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mode = args.first().map_or("run", String::as_str);
    let n: u32 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let tokio = tokio_runtime();
    let rt = Runtime::new();
    let ctx = Arc::new(TaskContext::for_test());
    let input = typed_payload();
    let json = payload();
    if mode == "sizes" {
        // Bytes of the futures the run path builds (each is moved by value into its
        // wrappers, so large futures cost memcpy per run).
        println!(
            "noop(&ctx, input)         {:>6} bytes",
            size_of_val(&noop(&ctx, input.clone()))
        );
        println!(
            "rt.run(Noop, ..)          {:>6} bytes",
            size_of_val(&rt.run(Noop, input.clone()))
        );
        println!(
            "rt.trigger_and_wait(..)   {:>6} bytes",
            size_of_val(&rt.trigger_and_wait("noop", json.clone()))
        );
        println!(
            "rt.run(Noop3, ..)         {:>6} bytes",
            size_of_val(&rt.run(Noop3, input.clone()))
        );
        println!(
            "rt.run(FanOut, ..)        {:>6} bytes",
            size_of_val(&rt.run(FanOut, fan_input(1)))
        );
        println!(
            "TaskError                 {:>6} bytes",
            size_of::<TaskError>()
        );
        println!(
            "RunOutput<NoopOutput>     {:>6} bytes",
            size_of::<RunOutput<NoopOutput>>()
        );
        return;
    }
    tokio.block_on(async {
        for _ in 0..n {
            match mode {
                "direct" => {
                    black_box(noop(&ctx, input.clone()).await.expect("ok"));
                }
                "run" => {
                    black_box(rt.run(Noop, input.clone()).await.expect("ok"));
                }
                "trigger" => {
                    black_box(rt.trigger_and_wait("noop", json.clone()).await);
                }
                "background" => {
                    let handle = rt.trigger("noop", json.clone()).await.expect("accepted");
                    black_box(handle.wait().await);
                }
                "track" => {
                    black_box(rt.run(Noop3, input.clone()).await.expect("ok"));
                }
                "fanout" => {
                    black_box(rt.run(FanOut, fan_input(n)).await.expect("ok"));
                    break;
                }
                "joinset" => {
                    black_box(raw_fan_out(ctx.clone(), n).await);
                    break;
                }
                other => panic!(
                    "unknown mode {other}: direct|run|trigger|background|track|fanout|joinset"
                ),
            }
        }
    });
}
