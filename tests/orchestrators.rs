//! Orchestrators end to end: parallel branches (virtual time and real threads), fan-out with
//! a concurrency window, fail-fast with cancellation and cleanup, settle, nesting under limits.

use std::time::Duration;

use serde_json::json;
use task_runtime::Outcome;
use task_runtime::prelude::*;
use task_tests::probe::Probe;
use task_tests::*;

fn batch(probe: &Probe, lead_millis: u64, items: usize, item_millis: u64) -> BatchInput {
    BatchInput {
        base: BaseInput::new("tenant", "project"),
        lead: WorkInput::new(probe, "lead", lead_millis),
        items: (0..items)
            .map(|i| WorkInput::new(probe, &format!("item{i}"), item_millis))
            .collect(),
    }
}

#[tokio::test(start_paused = true)]
async fn two_one_second_branches_finish_in_one_second() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let started = tokio::time::Instant::now();
    let out = rt
        .run(Pair, WorkInput::new(&probe, "p", 1000))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    let results = out.results;
    assert_eq!(
        (results.left.label.as_str(), results.right.label.as_str()),
        ("p", "p")
    );
    assert_eq!(probe.max_running(), 2);
    let branches = &out.metadata.branches;
    assert_eq!(branches.len(), 2);
    assert!(
        branches
            .iter()
            .all(|b| b.success && b.run_id.is_some() && b.duration_ms == 1000)
    );
}

#[tokio::test(start_paused = true)]
async fn ten_items_two_at_a_time_take_five_seconds_and_keep_their_order() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let started = tokio::time::Instant::now();
    let out = rt.run(Batch, batch(&probe, 1000, 10, 1000)).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let results = out.results;
    let labels: Vec<String> = results.items.iter().map(|w| w.label.clone()).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("item{i}")).collect();
    assert_eq!(labels, expected);
    assert_eq!(results.lead.label, "lead");
    // The lead runs beside the two items in flight.
    assert_eq!(probe.max_running(), 3);
    let items = out
        .metadata
        .branches
        .iter()
        .find(|b| b.name == "items")
        .unwrap();
    let counts = items.items.clone().unwrap();
    assert_eq!((counts.total, counts.succeeded, counts.failed), (10, 10, 0));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_names_the_item_and_cancels_the_rest_with_cleanup() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut input = batch(&probe, 60_000, 6, 1000);
    input.items[3].fail_attempts = 1;
    let started = tokio::time::Instant::now();
    let env = rt
        .trigger_and_wait("batch", serde_json::to_value(&input).unwrap())
        .await;
    assert!(!env.job.success);
    assert_eq!(
        env.job.error.as_deref(),
        Some("branch 'items' item 3 failed: work:item3 failed on attempt 1")
    );
    let detail = serde_json::to_value(&env).unwrap()["job"]["errorDetail"].clone();
    assert_eq!(detail["kind"], "failed");
    assert_eq!(detail["branch"]["name"], "items");
    assert_eq!(detail["branch"]["item"], 3);
    // Items 2 and 3 ran in the second second; item 3's failure cancelled the lead (a minute
    // long) at once, and items 4 and 5 never started.
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(probe.count("finish work:lead"), 0);
    assert_eq!(probe.count("cleanup work:lead"), 1, "{:?}", probe.events());
    assert_eq!(probe.count("start work:item4"), 0);
    assert_eq!(
        probe.count("start"),
        probe.count("cleanup"),
        "every started run cleaned up"
    );
    let items = env
        .metadata
        .branches
        .iter()
        .find(|b| b.name == "items")
        .unwrap();
    let counts = items.items.clone().unwrap();
    assert_eq!((counts.total, counts.succeeded, counts.failed), (6, 3, 1));
    assert_eq!(counts.cancelled, 2);
    let lead = env
        .metadata
        .branches
        .iter()
        .find(|b| b.name == "lead")
        .unwrap();
    assert!(!lead.success);
}

#[tokio::test(start_paused = true)]
async fn settle_runs_everything_and_records_the_one_error() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut input = batch(&probe, 1000, 6, 1000);
    input.items[3].fail_attempts = 1;
    let out = rt.run(BatchSettle, input).await.unwrap();
    let results = out.results;
    assert!(results.lead.is_ok());
    assert_eq!(results.items.len(), 6);
    for (i, item) in results.items.iter().enumerate() {
        match (i, item) {
            (3, Outcome::Error(error)) => {
                assert_eq!(
                    error.to_string(),
                    "branch 'items' item 3 failed: work:item3 failed on attempt 1"
                );
            }
            (3, other) => panic!("item 3 should have failed: {other:?}"),
            (_, outcome) => assert!(outcome.is_ok(), "item {i}: {outcome:?}"),
        }
    }
    assert_eq!(probe.count("finish"), 6);
    let json = serde_json::to_value(&results).unwrap();
    assert_eq!(json["items"][3]["error"]["kind"], "failed");
    assert_eq!(json["items"][0]["ok"]["label"], "item0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_run_on_different_worker_threads_at_once() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let input = json!({ "tenantId": "t", "projectId": "p", "probe": probe.name() });
    let env = rt.trigger_and_wait("meet", input).await;
    assert!(env.job.success, "{:?}", env.job.error);
    let results = env.results;
    assert_eq!(results["a"]["met"], true);
    assert_eq!(results["b"]["met"], true);
}

#[tokio::test(start_paused = true)]
async fn nested_fan_out_under_a_runtime_limit_of_one_never_deadlocks() {
    let rt = Runtime::builder().max_concurrency(1).build().unwrap();
    let probe = Probe::new();
    let out = rt
        .run(TrackFan, batch(&probe, 1000, 3, 1000))
        .await
        .unwrap();
    let results = out.results;
    assert_eq!(results.tracks.len(), 3);
    assert_eq!(results.nested.items.len(), 3);
    assert_eq!(probe.max_running(), 1, "the runtime-wide limit held");
    // 3 tracks x 3 steps + lead + 3 items, one second each, one at a time.
    assert_eq!(probe.count("finish"), 13);
}
