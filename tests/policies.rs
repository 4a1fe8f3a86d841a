//! Run policies under the paused clock: retries with backoff, timeouts, cancellation, panic
//! isolation, cleanup in every ending, hooks, idempotency keys, concurrency limits, shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use task_runtime::prelude::*;
use task_runtime::{HookEvent, RetryPolicy, TriggerOptions};
use task_tests::probe::Probe;
use task_tests::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn json_of(input: &WorkInput) -> serde_json::Value {
    serde_json::to_value(input).unwrap()
}

#[tokio::test(start_paused = true)]
async fn two_failures_then_success_takes_three_attempts_with_backoff() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut input = WorkInput::new(&probe, "f", 10);
    input.fail_attempts = 2;
    let out = rt.run(Flaky, input).await.unwrap();
    assert_eq!(out.metadata.attempts, 3);
    assert_eq!(out.results.attempt, 3);
    let starts: Vec<Duration> = probe.timed("start").into_iter().map(|(at, _)| at).collect();
    // Each attempt works 10 ms; then 100 ms before the 2nd, 200 ms before the 3rd.
    assert_eq!(starts, [ms(0), ms(110), ms(320)]);
    assert_eq!(probe.count("cleanup"), 3, "each attempt cleans up");
}

#[tokio::test(start_paused = true)]
async fn fatal_errors_and_invalid_input_are_not_retried() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut input = WorkInput::new(&probe, "f", 0);
    input.fail_attempts = 3;
    input.fatal = true;
    let err = rt.run(Flaky, input).await.unwrap_err();
    assert_eq!(err.envelope.metadata.attempts, 1);
    assert!(!err.error.is_retryable());
    assert_eq!(probe.count("start"), 1);

    let mut input = json_of(&WorkInput::new(&probe, "f", 0));
    input["millis"] = json!(-5);
    let env = rt.trigger_and_wait("flaky", input).await;
    assert_eq!(env.job.error_detail.unwrap().kind_name(), "invalidInput");
    assert_eq!(env.metadata.attempts, 0);
    assert_eq!(
        probe.count("start"),
        1,
        "invalid input never reaches the task"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_retried_then_reported_as_timeout() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let err = rt
        .run(Slow, WorkInput::new(&probe, "s", 5000))
        .await
        .unwrap_err();
    assert_eq!(err.error.kind_name(), "timeout");
    assert_eq!(err.error.to_string(), "timed out after 1s");
    assert!(err.error.is_retryable());
    assert_eq!(err.envelope.metadata.attempts, 2);
    assert_eq!(probe.count("start"), 2);
    assert_eq!(probe.count("finish"), 0);
    assert_eq!(
        probe.count("cleanup"),
        2,
        "the dropped attempts still cleaned up"
    );
    assert_eq!(probe.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn runtime_defaults_apply_to_tasks_without_a_policy() {
    let rt = Runtime::builder()
        .default_retry(RetryPolicy {
            max_attempts: 2,
            min_delay: ms(50),
            ..RetryPolicy::NONE
        })
        .default_timeout(ms(300))
        .build()
        .unwrap();
    let probe = Probe::new();
    let err = rt
        .run(Work, WorkInput::new(&probe, "d", 1000))
        .await
        .unwrap_err();
    assert_eq!(err.error.kind_name(), "timeout");
    assert_eq!(err.envelope.metadata.attempts, 2);
    let starts: Vec<Duration> = probe.timed("start").into_iter().map(|(at, _)| at).collect();
    assert_eq!(starts, [ms(0), ms(350)]);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_track_cancels_its_step_skips_the_rest_and_cleans_up() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let handle = rt
        .trigger("work_track", json_of(&WorkInput::new(&probe, "c", 1000)))
        .await
        .unwrap();
    tokio::time::sleep(ms(1500)).await; // step 1 done, step 2 half way
    handle.cancel();
    let env = handle.wait().await;
    assert!(!env.job.success);
    let error = env.job.error_detail.as_ref().unwrap();
    assert_eq!(error.kind_name(), "cancelled");
    assert_eq!(error.location().step.as_ref().unwrap().index, 1);
    assert_eq!(
        probe.events(),
        [
            "start work:c #1",
            "finish work:c",
            "cleanup work:c",
            "start work:c-2 #1",
            "cleanup work:c-2",
        ]
    );
    assert_eq!(env.metadata.steps.len(), 2);
    assert!(!env.metadata.steps[1].success);
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_isolated_retried_and_the_runtime_carries_on() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut input = WorkInput::new(&probe, "p", 0);
    input.panic_attempts = 1;
    let err = rt.run(Work, input.clone()).await.unwrap_err();
    assert_eq!(err.error.kind_name(), "panicked");
    assert_eq!(
        err.error.to_string(),
        "panicked: work:p panicked on attempt 1"
    );
    assert_eq!(probe.count("cleanup"), 1);

    // The same runtime runs the next task normally, and a retrying task recovers.
    assert!(rt.run(Work, WorkInput::new(&probe, "ok", 0)).await.is_ok());
    let out = rt.run(Flaky, input).await.unwrap();
    assert_eq!(out.metadata.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn cleanup_runs_exactly_once_however_the_attempt_ends() {
    let rt = Runtime::new();
    let cases: Vec<(&str, WorkInput)> = {
        let probe = Probe::new();
        let ok = WorkInput::new(&probe, "ok", 0);
        let mut error = ok.clone();
        error.fail_attempts = 1;
        let mut panic = ok.clone();
        panic.panic_attempts = 1;
        vec![("success", ok), ("error", error), ("panic", panic)]
    };
    for (case, mut input) in cases {
        let probe = Probe::new();
        input.probe = probe.name().to_owned();
        let _ = rt.run(Work, input).await;
        assert_eq!(probe.count("cleanup"), 1, "{case}: {:?}", probe.events());
    }
    // Timeout: one attempt of `slow` (two attempts in all, one cleanup each).
    let probe = Probe::new();
    let _ = rt.run(Slow, WorkInput::new(&probe, "t", 5000)).await;
    assert_eq!((probe.count("start"), probe.count("cleanup")), (2, 2));
    // Cancellation.
    let probe = Probe::new();
    let handle = rt
        .trigger("work", json_of(&WorkInput::new(&probe, "c", 5000)))
        .await
        .unwrap();
    tokio::time::sleep(ms(100)).await;
    handle.cancel();
    assert_eq!(
        handle.wait().await.job.error_detail.unwrap().kind_name(),
        "cancelled"
    );
    assert_eq!(probe.count("cleanup"), 1, "{:?}", probe.events());
}

#[tokio::test(start_paused = true)]
async fn failing_cleanup_is_recorded_and_never_hides_the_result() {
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    struct Empty {}

    /// Registers three cleanups; the middle one fails.
    #[task(id = "messy_cleanup")]
    async fn messy_cleanup(ctx: &TaskContext, _input: Empty) -> Result<Empty, TaskError> {
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..3 {
            let order = order.clone();
            ctx.defer(async move {
                order.lock().unwrap().push(i);
                if i == 1 { Err("disk full") } else { Ok(()) }
            });
        }
        let check = order.clone();
        ctx.defer(async move {
            assert_eq!(
                *check.lock().unwrap(),
                Vec::<i32>::new(),
                "last registered runs first"
            );
        });
        Ok(Empty {})
    }

    let out = Runtime::new().run(MessyCleanup, Empty {}).await.unwrap();
    assert!(out.job.success);
    assert_eq!(out.metadata.cleanup_errors, ["disk full"]);
}

#[tokio::test(start_paused = true)]
async fn runtime_hooks_see_every_outcome_and_their_errors_change_nothing() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, f) = (seen.clone(), seen.clone());
    let rt = Runtime::builder()
        .on_success(move |event: &HookEvent| {
            let (s, line) = (
                s.clone(),
                format!("ok {} {}", event.task_name, event.attempts),
            );
            async move {
                s.lock().unwrap().push(line);
                Err::<(), _>("hook is broken")
            }
        })
        .on_failure(move |event: &HookEvent| {
            let kind = event.error.as_ref().unwrap().kind_name();
            let (f, line) = (f.clone(), format!("failed {} {kind}", event.task_name));
            async move {
                f.lock().unwrap().push(line);
            }
        })
        .build()
        .unwrap();
    let probe = Probe::new();
    let mut input = WorkInput::new(&probe, "h", 0);
    input.fail_attempts = 1;
    assert!(
        rt.run(Flaky, input.clone()).await.is_ok(),
        "a failing hook never fails the run"
    );
    assert!(rt.run(Work, input).await.is_err());
    assert_eq!(*seen.lock().unwrap(), ["ok flaky 2", "failed work failed"]);
}

#[tokio::test(start_paused = true)]
async fn one_idempotency_key_runs_once_and_returns_the_same_run() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let input = json_of(&WorkInput::new(&probe, "i", 1000));
    let key = || {
        TriggerOptions::new()
            .idempotency_key("order-42")
            .idempotency_ttl(Duration::from_secs(60))
    };
    let first = rt.trigger_with("work", input.clone(), key()).await.unwrap();
    let second = rt.trigger_with("work", input.clone(), key()).await.unwrap();
    assert_eq!(first.run_id(), second.run_id(), "while running");
    let (a, b) = (first.wait().await, second.wait().await);
    assert_eq!(a, b);
    let third = rt.trigger_and_wait_with("work", input.clone(), key()).await;
    assert_eq!(third.job.run_id, a.job.run_id, "after success");
    assert_eq!(probe.count("start"), 1);

    // The key expires with its TTL.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let fourth = rt.trigger_and_wait_with("work", input, key()).await;
    assert_ne!(fourth.job.run_id, a.job.run_id);
    assert_eq!(probe.count("start"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_releases_its_idempotency_key() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut failing = WorkInput::new(&probe, "r", 0);
    failing.fail_attempts = 1;
    let key = || TriggerOptions::new().idempotency_key("retry-me");
    let first = rt
        .trigger_and_wait_with("work", json_of(&failing), key())
        .await;
    assert!(!first.job.success);
    let second = rt
        .trigger_and_wait_with("work", json_of(&WorkInput::new(&probe, "r", 0)), key())
        .await;
    assert!(second.job.success);
    assert_ne!(first.job.run_id, second.job.run_id);
}

#[tokio::test(start_paused = true)]
async fn per_task_concurrency_two_holds_ten_runs_to_two_at_a_time() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let started = tokio::time::Instant::now();
    let mut handles = Vec::new();
    for i in 0..10 {
        let input = json_of(&WorkInput::new(&probe, &format!("q{i}"), 1000));
        handles.push(rt.trigger("limited", input).await.unwrap());
    }
    for handle in handles {
        assert!(handle.wait().await.job.success);
    }
    assert_eq!(probe.max_running(), 2);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    // Runs waited in order.
    let order: Vec<String> = probe.timed("start").into_iter().map(|(_, e)| e).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("start limited:q{i} #1")).collect();
    assert_eq!(order, expected);
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_short_runs_and_cancels_long_ones_with_cleanup() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let short = rt
        .trigger("work", json_of(&WorkInput::new(&probe, "short", 1000)))
        .await
        .unwrap();
    let long = rt
        .trigger("work", json_of(&WorkInput::new(&probe, "long", 60_000)))
        .await
        .unwrap();
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let all_finished = rt.shutdown(Duration::from_secs(5)).await;
    assert!(!all_finished);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert!(short.wait().await.job.success);
    let long = long.wait().await;
    assert_eq!(long.job.error_detail.unwrap().kind_name(), "cancelled");
    assert_eq!(probe.count("cleanup work:long"), 1);

    let refused = rt
        .trigger_and_wait("work", json_of(&WorkInput::new(&probe, "late", 0)))
        .await;
    let error = refused.job.error_detail.unwrap();
    assert_eq!(error.kind_name(), "rejected");
    assert!(error.to_string().contains("shutting down"));
    assert!(
        rt.run(Work, WorkInput::new(&probe, "late", 0))
            .await
            .is_err()
    );
    assert_eq!(probe.count("start work:late"), 0);
}

#[tokio::test(start_paused = true)]
async fn task_hooks_run_once_after_retries_and_never_change_the_outcome() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut input = WorkInput::new(&probe, "h", 0);
    input.fail_attempts = 1;
    let out = rt.run(Hooked, input.clone()).await.unwrap();
    assert_eq!(out.metadata.attempts, 2);
    assert_eq!(probe.count("hook"), 1);
    assert_eq!(
        probe.count("hook success hooked #2"),
        1,
        "{:?}",
        probe.events()
    );

    input.fail_attempts = 5;
    let err = rt.run(HookedTrack, input).await.unwrap_err();
    assert_eq!(err.error.kind_name(), "failed");
    // The step's own hook, then the track's: one each, after the step's last attempt.
    assert_eq!(
        probe
            .timed("hook")
            .into_iter()
            .map(|(_, e)| e)
            .collect::<Vec<_>>(),
        [
            "hook success hooked #2",
            "hook failure hooked failed",
            "hook failure hooked_track failed"
        ]
    );
}
