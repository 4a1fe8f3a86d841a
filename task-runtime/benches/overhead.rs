//! Per-run overhead of the runtime against calling the task fns directly.
//!
//! `cargo bench -p task-runtime --bench overhead`. Groups:
//! - `task`: one no-op task, called directly / `rt.run` / `rt.trigger_and_wait` with JSON;
//! - `track`: a 3-step track of that task / the three fns called in sequence;
//! - `fanout`: an orchestrator `each` over 100 000 items / a raw `JoinSet` of direct calls
//!   (and, on its own, the orchestrator's 100 000-item output going through JSON);
//! - `parts`: the pieces a run is made of, to explain where the overhead goes.
//!
//! Every routine runs inside `block_on` of a 2-worker multi-thread tokio runtime (criterion's
//! `async_tokio`), so the routine itself runs on the bench thread and anything it spawns runs
//! on the two workers; the fan-out routines (and the spawn probe) first move onto a worker. Inputs are cloned inside the timed routine on every side; the clones
//! are measured on their own in `parts` so they can be subtracted.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    FAN_OUT_ITEMS, FanOut, FanOutOutput, Noop, NoopInput, NoopOutput, fan_input, noop, payload,
    raw_fan_out, tokio_runtime, typed_payload,
};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use task_runtime::prelude::*;

/// Mapper-less steps: the previous output becomes the next input.
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

fn task_group(c: &mut Criterion) {
    let tokio = tokio_runtime();
    let rt = Runtime::new();
    let ctx = TaskContext::for_test();
    let input = typed_payload();
    let json = payload();
    let minimal = NoopInput {
        base: BaseInput::new("tenant-0001", "project-0001"),
        value: 42,
        label: "a small label carried by the no-op task".to_owned(),
    };
    eprintln!(
        "minimal payload: {} bytes of JSON",
        serde_json::to_vec(&minimal).expect("serializes").len()
    );
    eprintln!(
        "task payload: {} bytes of JSON",
        serde_json::to_vec(&json).expect("serializes").len()
    );

    let mut group = c.benchmark_group("task");
    group.bench_function("direct", |b| {
        b.to_async(&tokio)
            .iter(|| async { noop(&ctx, input.clone()).await.expect("ok") });
    });
    group.bench_function("run", |b| {
        b.to_async(&tokio)
            .iter(|| async { rt.run(Noop, input.clone()).await.expect("ok") });
    });
    // The same with a minimal input: tenant, project, value, label (no userId, no trampData).
    group.bench_function("direct_minimal", |b| {
        b.to_async(&tokio)
            .iter(|| async { noop(&ctx, minimal.clone()).await.expect("ok") });
    });
    group.bench_function("run_minimal", |b| {
        b.to_async(&tokio)
            .iter(|| async { rt.run(Noop, minimal.clone()).await.expect("ok") });
    });
    group.bench_function("trigger_and_wait", |b| {
        b.to_async(&tokio).iter(|| async {
            let out = rt.trigger_and_wait("noop", json.clone()).await;
            assert!(out.job.success);
            out
        });
    });
    group.finish();
}

fn track_group(c: &mut Criterion) {
    let tokio = tokio_runtime();
    let rt = Runtime::new();
    let ctx = TaskContext::for_test();
    let input = typed_payload();

    let mut group = c.benchmark_group("track");
    group.bench_function("direct_3_steps", |b| {
        b.to_async(&tokio).iter(|| async {
            let first = noop(&ctx, input.clone()).await.expect("ok");
            let second = noop(&ctx, first.into()).await.expect("ok");
            noop(&ctx, second.into()).await.expect("ok")
        });
    });
    group.bench_function("run_3_steps", |b| {
        b.to_async(&tokio)
            .iter(|| async { rt.run(Noop3, input.clone()).await.expect("ok") });
    });
    group.finish();
}

fn fanout_group(c: &mut Criterion) {
    let tokio = tokio_runtime();
    let rt = Runtime::new();
    let ctx = Arc::new(TaskContext::for_test());

    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    // Both sides run inside a task on a worker thread (one spawn, ~30 µs, per iteration), so
    // their spawns go to a worker's local queue as in an application; spawning 100 000 tasks
    // from `block_on`'s thread would push them all through the injection queue.
    group.bench_function("orchestrator_each_100k", |b| {
        b.to_async(&tokio).iter(|| {
            let rt = rt.clone();
            on_worker(async move {
                let out = rt.run(FanOut, fan_input(FAN_OUT_ITEMS)).await.expect("ok");
                assert_eq!(Some(out.results.items.len()), Some(FAN_OUT_ITEMS as usize));
                out
            })
        });
    });
    group.bench_function("joinset_100k", |b| {
        b.to_async(&tokio).iter(|| {
            let ctx = ctx.clone();
            on_worker(async move {
                let out = raw_fan_out(ctx, FAN_OUT_ITEMS).await;
                assert_eq!(out.len(), FAN_OUT_ITEMS as usize);
                out
            })
        });
    });
    // The part of the orchestrator's run that grows with the item count outside the items:
    // its output (100 000 item outputs) serialised to JSON, validated and dropped.
    let output = FanOutOutput {
        items: (0..FAN_OUT_ITEMS)
            .map(|i| NoopOutput {
                value: i64::from(i),
            })
            .collect(),
    };
    let schemas = <FanOut as Task>::schemas();
    group.bench_function("output_json_100k", |b| {
        b.iter(|| {
            let json = serde_json::to_value(&output).expect("serializes");
            assert!(schemas.output_issues(&json).is_empty());
            json
        })
    });
    group.finish();
}

/// Runs `work` on a worker thread of the current runtime and waits for it.
async fn on_worker<F>(work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(work)
        .await
        .expect("the benchmark task does not panic")
}

/// The pieces of a run, each on its own, to attribute the overhead.
fn parts_group(c: &mut Criterion) {
    let tokio = tokio_runtime();
    let input = typed_payload();
    let json = payload();
    let input_json = serde_json::to_value(&input).expect("serializes");
    let output = NoopOutput { value: 42 };
    let output_json = serde_json::to_value(&output).expect("serializes");
    let schemas = <Noop as Task>::schemas();
    assert!(schemas.input_issues(&input_json).is_empty());
    assert!(schemas.output_issues(&output_json).is_empty());

    let mut group = c.benchmark_group("parts");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("clone_typed_input", |b| b.iter(|| input.clone()));
    group.bench_function("clone_json_input", |b| b.iter(|| json.clone()));
    let tramp_data = json["trampData"].clone();
    group.bench_function("clone_tramp_data", |b| b.iter(|| tramp_data.clone()));
    group.bench_function("to_value_input", |b| {
        b.iter(|| serde_json::to_value(black_box(&input)).expect("serializes"))
    });
    group.bench_function("validate_input", |b| {
        b.iter(|| schemas.input_issues(black_box(&input_json)))
    });
    group.bench_function("from_value_input", |b| {
        b.iter(|| NoopInput::deserialize(black_box(&input_json)).expect("deserializes"))
    });
    group.bench_function("to_value_output", |b| {
        b.iter(|| serde_json::to_value(black_box(&output)).expect("serializes"))
    });
    group.bench_function("validate_output", |b| {
        b.iter(|| schemas.output_issues(black_box(&output_json)))
    });
    group.bench_function("ulid_from_datetime", |b| {
        b.iter(|| ulid::Ulid::from_datetime(std::time::SystemTime::now()))
    });
    group.bench_function("child_cancel_token", |b| {
        let root = tokio_util::sync::CancellationToken::new();
        b.iter(|| root.child_token())
    });
    group.bench_function("info_span_no_subscriber", |b| {
        b.iter(|| tracing::info_span!("run", task = "noop", run_id = "run_x"))
    });
    group.bench_function("drop_input_json", |b| {
        b.iter_batched(
            || input_json.clone(),
            drop,
            criterion::BatchSize::SmallInput,
        )
    });
    // One spawn + await at a time, from a worker thread (as the ANCHORS.md figure).
    group.bench_function("tokio_spawn_await_on_worker", |b| {
        b.to_async(&tokio).iter_custom(|iters| {
            on_worker(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(tokio::spawn(async { black_box(1) }).await.expect("joins"));
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, task_group, track_group, fanout_group, parts_group);
criterion_main!(benches);
