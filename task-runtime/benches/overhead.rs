//! Per-run overhead of the runtime against calling the task fns directly.
//!
//! `cargo bench -p task-runtime --bench overhead`. Groups:
//! - `task`: one no-op task, called directly / `rt.run` / `rt.trigger_and_wait` with JSON;
//! - `track`: a 3-step track of that task / the three fns called in sequence;
//! - `fanout`: an orchestrator `each` over 100 000 items / a raw `JoinSet` of direct calls;
//! - `parts`: the pieces a run is made of, to explain where the overhead goes.
//!
//! Every routine runs inside `block_on` of a 2-worker multi-thread tokio runtime (criterion's
//! `async_tokio`), so the routine itself runs on the bench thread and anything it spawns runs
//! on the two workers. Inputs are cloned inside the timed routine on every side; the clones
//! are measured on their own in `parts` so they can be subtracted.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use common::{
    FAN_OUT_ITEMS, FanOut, Noop, NoopInput, NoopOutput, fan_input, noop, payload, raw_fan_out,
    tokio_runtime, typed_payload,
};
use criterion::{Criterion, criterion_group, criterion_main};
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
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    group.bench_function("orchestrator_each_100k", |b| {
        b.to_async(&tokio).iter(|| async {
            let out = rt
                .run(FanOut, fan_input(FAN_OUT_ITEMS))
                .await
                .expect("ok");
            assert_eq!(
                out.results.as_ref().map(|o| o.items.len()),
                Some(FAN_OUT_ITEMS as usize)
            );
            out
        });
    });
    group.bench_function("joinset_100k", |b| {
        b.to_async(&tokio).iter(|| async {
            let out = raw_fan_out(ctx.clone(), FAN_OUT_ITEMS).await;
            assert_eq!(out.len(), FAN_OUT_ITEMS as usize);
            out
        });
    });
    group.finish();
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
    group.bench_function("tokio_spawn_await", |b| {
        b.to_async(&tokio)
            .iter(|| async { tokio::spawn(async { black_box(1) }).await.expect("joins") });
    });
    group.finish();
}

criterion_group!(benches, task_group, track_group, fanout_group, parts_group);
criterion_main!(benches);
