//! Every child run belongs to its parent: however a parent ends (timeout, a branch or a
//! mapper panicking, a parent's timeout, a dropped caller future, cancel, retry, shutdown),
//! no child runs after the parent returned, each child's cleanup ran exactly once, and no
//! slot is held afterwards. Also: a task cannot cancel anything but itself through its
//! token, hooks cannot hang or crash their caller, recursion ends in a clear error.
//!
//! All under tokio's paused clock: the 10 s branches take no real time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use task_runtime::prelude::*;
use task_runtime::{HookEvent, TriggerOptions};
use task_tests::probe::Probe;
use task_tests::*;

fn json_of<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

/// The error of a run that must have failed (orchestrator outputs need not be `Debug`).
fn failed<T>(result: Result<RunOutput<T>, task_runtime::RunError>) -> task_runtime::RunError {
    match result {
        Ok(_) => panic!("the run succeeded"),
        Err(error) => error,
    }
}

/// After the parent returned: nothing is running, every started child cleaned up exactly
/// once, and nothing finishes later.
/// `started: None` when how many children started before the parent ended is up to the
/// scheduler.
async fn assert_children_settled(probe: &Arc<Probe>, started: impl Into<Option<usize>>) {
    assert_eq!(
        probe.running(),
        0,
        "no child runs after its parent returned: {:?}",
        probe.events()
    );
    let started = started.into().unwrap_or_else(|| probe.count("start"));
    assert_eq!(probe.count("start"), started, "{:?}", probe.events());
    assert_eq!(
        probe.count("cleanup"),
        started,
        "each child's cleanup ran once: {:?}",
        probe.events()
    );
    let before = probe.events();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        probe.events(),
        before,
        "nothing happened after the parent returned"
    );
    assert_eq!(probe.count("finish"), 0, "{:?}", probe.events());
}

#[tokio::test(start_paused = true)]
async fn an_orchestrator_timeout_stops_its_branches_before_it_returns() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let err = failed(rt.run(TimedPair, WorkInput::new(&probe, "t", 10_000)).await);
    assert_eq!(err.error.kind_name(), "timeout", "{}", err.error);
    assert_children_settled(&probe, 2).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_mapper_stops_the_branches_already_started() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut input = WorkInput::new(&probe, "panic", 10_000);
    input.label = "panic".into();
    let err = failed(rt.run(PanickyPair, input).await);
    assert_eq!(err.error.kind_name(), "panicked", "{}", err.error);
    assert!(
        err.error.to_string().contains("mapper panicked"),
        "{}",
        err.error
    );
    // On this single-threaded test runtime the first branch is cancelled before it was ever
    // polled; on a multi-thread one it may have started. Either way it is settled.
    assert_children_settled(&probe, None).await;
}

#[tokio::test(start_paused = true)]
async fn a_parent_timeout_reaches_the_branches_of_a_nested_orchestrator() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let err = failed(
        rt.run(TimedTrack, WorkInput::new(&probe, "n", 10_000))
            .await,
    );
    assert_eq!(err.error.kind_name(), "timeout", "{}", err.error);
    assert_children_settled(&probe, 2).await;
}

#[tokio::test(start_paused = true)]
async fn a_dropped_caller_future_cancels_the_run_and_shutdown_waits_for_its_cleanup() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let input = json_of(&WorkInput::new(&probe, "d", 10_000));
    let gone =
        tokio::time::timeout(Duration::from_secs(1), rt.trigger_and_wait("pair", input)).await;
    assert!(gone.is_err(), "the caller gave up after 1 s");
    assert!(
        rt.shutdown(Duration::from_secs(5)).await,
        "the cancelled branches end within the grace period"
    );
    assert_children_settled(&probe, 2).await;

    // The same for a typed run.
    let rt = Runtime::new();
    let probe = Probe::new();
    let gone = tokio::time::timeout(
        Duration::from_secs(1),
        rt.run(Pair, WorkInput::new(&probe, "d", 10_000)),
    )
    .await;
    assert!(gone.is_err());
    assert!(rt.shutdown(Duration::from_secs(5)).await);
    assert_children_settled(&probe, 2).await;
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_every_branch_and_their_cleanup_runs_before_wait_returns() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let handle = rt
        .trigger("pair", json_of(&WorkInput::new(&probe, "c", 10_000)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle.cancel();
    let env = handle.wait().await;
    assert_eq!(env.error().unwrap().kind_name(), "cancelled");
    assert_children_settled(&probe, 2).await;
}

#[tokio::test(start_paused = true)]
async fn a_retried_orchestrator_never_overlaps_its_attempts() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let err = failed(
        rt.run(RetriedPair, WorkInput::new(&probe, "r", 10_000))
            .await,
    );
    assert_eq!(err.error.kind_name(), "timeout");
    assert_eq!(err.envelope.metadata.attempts, 3);
    assert_eq!(
        probe.max_running(),
        2,
        "one attempt's two branches at a time"
    );
    assert_children_settled(&probe, 6).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_what_outlives_the_grace_period_and_waits_for_its_cleanup() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let handle = rt
        .trigger("pair", json_of(&WorkInput::new(&probe, "s", 10_000)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !rt.shutdown(Duration::from_secs(1)).await,
        "not finished within 1 s"
    );
    assert_children_settled(&probe, 2).await;
    assert_eq!(
        handle.wait().await.error().unwrap().kind_name(),
        "cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_cancelling_its_token_cancels_nothing_else() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let out = rt
        .run(CancelsItsToken, WorkInput::new(&probe, "a", 10))
        .await;
    assert!(out.is_ok(), "{:?}", out.err().map(|e| e.error));
    // Later runs, and the parent of a step doing it, are unaffected.
    assert!(rt.run(Work, WorkInput::new(&probe, "b", 10)).await.is_ok());
    let track = rt.run(TokenTrack, WorkInput::new(&probe, "c", 10)).await;
    assert!(track.is_ok(), "{:?}", track.err().map(|e| e.error));
    assert_eq!(probe.count("finish"), 4);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_child_run_still_cleans_up_before_its_parent_returns() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let handle = rt
        .trigger("wrap", json_of(&WorkInput::new(&probe, "child", 10_000)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle.cancel();
    let env = handle.wait().await;
    assert_eq!(env.error().unwrap().kind_name(), "cancelled");
    assert_eq!(
        probe.events(),
        ["start work:child #1", "cleanup work:child"]
    );
    assert!(rt.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn a_hook_that_never_returns_is_abandoned_after_the_hook_timeout() {
    let rt = Runtime::builder()
        .hook_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let probe = Probe::new();
    let started = tokio::time::Instant::now();
    let out = rt.run(HangingHook, WorkInput::new(&probe, "h", 0)).await;
    assert!(out.is_ok());
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "held up for the hook timeout, no longer"
    );
    let handle = rt
        .trigger("hanging_hook", json_of(&WorkInput::new(&probe, "h2", 0)))
        .await
        .unwrap();
    assert!(handle.wait().await.job.success);
    assert!(rt.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn a_runtime_hook_panicking_before_its_future_does_not_reach_the_caller() {
    fn explode(_event: &HookEvent) -> std::future::Ready<()> {
        panic!("hook exploded before returning its future")
    }
    let rt = Runtime::builder()
        .on_success(explode)
        .on_failure(explode)
        .build()
        .unwrap();
    let probe = Probe::new();
    let env = rt
        .trigger_and_wait("work", json_of(&WorkInput::new(&probe, "p", 0)))
        .await;
    assert!(env.job.success);
    let env = rt
        .trigger_and_wait("work", json!({ "tenantId": "t" }))
        .await;
    assert_eq!(env.error().unwrap().kind_name(), "invalidInput");
}

#[tokio::test]
async fn recursion_ends_with_a_clear_error_at_the_nesting_limit() {
    let rt = Runtime::new();
    let base = BaseInput::new("t", "p");
    let ok = rt
        .run(
            Recurse,
            DepthInput {
                base: base.clone(),
                depth: 32,
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.results.value, 32);
    let err = failed(
        rt.run(
            Recurse,
            DepthInput {
                base,
                depth: 100_000,
            },
        )
        .await,
    );
    assert_eq!(err.error.kind_name(), "rejected");
    assert!(
        err.error
            .to_string()
            .contains("runs nest deeper than the limit of 32 levels"),
        "{}",
        err.error
    );

    let shallow = Runtime::builder().max_nesting_depth(3).build().unwrap();
    let input = json!({ "tenantId": "t", "projectId": "p", "depth": 4 });
    let env = shallow.trigger_and_wait("recurse", input).await;
    assert_eq!(env.error().unwrap().kind_name(), "rejected");
}

#[tokio::test(start_paused = true)]
async fn idempotency_keys_with_a_ttl_past_the_end_of_time_keep_working() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let key = || {
        TriggerOptions::new()
            .idempotency_key("forever")
            .idempotency_ttl(Duration::MAX)
    };
    let input = json_of(&WorkInput::new(&probe, "k", 10));
    let first = rt.trigger_and_wait_with("work", input.clone(), key()).await;
    assert!(first.job.success, "{:?}", first.job.error);
    let second = rt.trigger_and_wait_with("work", input, key()).await;
    assert_eq!(second.job.run_id, first.job.run_id);
    assert_eq!(probe.count("start"), 1);
}
