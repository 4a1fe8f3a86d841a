//! Tracks end to end: steps as child runs, metadata.steps, failing steps named, trampData,
//! nesting, cleanup before the result.

use serde_json::json;
use task_runtime::prelude::*;
use task_tests::probe::Probe;
use task_tests::*;

#[tokio::test]
async fn a_track_runs_every_step_as_its_own_run() {
    let rt = Runtime::new();
    let env = rt
        .trigger_and_wait(
            "measure",
            json!({ "tenantId": "t", "projectId": "p", "text": "hello", "trampData": { "req": 9 } }),
        )
        .await;
    assert!(env.job.success, "{:?}", env.job.error);
    // 5 chars -> 10 -> 20 -> 40
    assert_eq!(env.results, json!({ "value": 40 }));
    let steps = &env.metadata.steps;
    let names: Vec<&str> = steps.iter().map(|s| s.task_name.as_str()).collect();
    assert_eq!(names, ["length", "double", "quadruple"]);
    let mut ids: Vec<&str> = steps.iter().map(|s| s.run_id.as_str()).collect();
    ids.push(&env.job.run_id);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every step has its own run id");
    assert!(steps.iter().all(|s| s.success && s.attempts == 1));
    // The nested track reports its own steps.
    let inner: Vec<&str> = steps[2]
        .steps
        .iter()
        .map(|s| s.task_name.as_str())
        .collect();
    assert_eq!(inner, ["double", "double"]);
    assert_eq!(env.tramp_data().cloned(), Some(json!({ "req": 9 })));
}

#[tokio::test]
async fn a_mapper_output_breaking_the_next_schema_fails_that_step() {
    let rt = Runtime::new();
    let env = rt
        .trigger_and_wait(
            "measure",
            json!({ "tenantId": "t", "projectId": "p", "text": "x".repeat(1500), "trampData": { "n": [1, 2] } }),
        )
        .await;
    assert!(!env.job.success);
    assert_eq!(
        env.job.error.as_deref(),
        Some(
            "step 2 'double' failed: invalid input: /value: 1500 is greater than the maximum of 1000"
        )
    );
    let error = env.job.error_detail.as_ref().unwrap();
    assert_eq!(error.kind_name(), "invalidInput");
    let step = error.location().step.as_ref().unwrap();
    assert_eq!((step.index, step.task_name.as_str()), (1, "double"));
    assert_eq!(step.run_id, env.metadata.steps[1].run_id);
    assert_eq!(
        env.metadata.steps.len(),
        2,
        "the track stops at the failing step"
    );
    assert!(!env.metadata.steps[1].success);
    assert_eq!(
        env.tramp_data().cloned(),
        Some(json!({ "n": [1, 2] })),
        "trampData is echoed on failure"
    );
    let detail = serde_json::to_value(&env).unwrap()["job"]["errorDetail"].clone();
    assert_eq!(detail["step"]["index"], 1);
    assert_eq!(detail["step"]["taskName"], "double");
}

#[tokio::test]
async fn a_failure_deep_in_a_nested_track_names_every_level() {
    let rt = Runtime::new();
    // 300 chars -> 600 -> nested: 1200 breaks double's maximum in the inner step 1.
    let env = rt
        .trigger_and_wait(
            "measure",
            json!({ "tenantId": "t", "projectId": "p", "text": "y".repeat(300) }),
        )
        .await;
    assert_eq!(
        env.job.error.as_deref(),
        Some(
            "step 3 'quadruple' failed: step 2 'double' failed: invalid input: /value: 1200 is greater than the maximum of 1000"
        )
    );
    let detail = serde_json::to_value(&env).unwrap()["job"]["errorDetail"].clone();
    assert_eq!(detail["step"]["taskName"], "quadruple");
    assert_eq!(detail["step"]["step"]["taskName"], "double");
    assert_eq!(detail["step"]["step"]["index"], 1);
}

#[tokio::test]
async fn steps_see_the_track_trampdata_and_their_cleanup_has_run() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut input = WorkInput::new(&probe, "w", 0);
    input.base.tramp_data = Some(json!({ "trace": "abc" }).into());
    let out = rt.run(WorkTrack, input).await.unwrap();
    let results = out.results;
    assert_eq!(results.label, "w-3");
    assert_eq!(results.tramp_data, Some(json!({ "trace": "abc" })));
    assert_eq!(results.tenant_id.as_deref(), Some("tenant"));
    assert_eq!(probe.count("cleanup"), 3, "{:?}", probe.events());
    assert_eq!(
        probe.events(),
        [
            "start work:w #1",
            "finish work:w",
            "cleanup work:w",
            "start work:w-2 #1",
            "finish work:w-2",
            "cleanup work:w-2",
            "start work:w-3 #1",
            "finish work:w-3",
            "cleanup work:w-3",
        ]
    );
}

#[tokio::test]
async fn a_failing_step_stops_the_track_and_keeps_its_user_error() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let mut input = WorkInput::new(&probe, "w", 0);
    input.fail_attempts = 1;
    let err = rt.run(WorkTrack, input).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("run {} of 'work_track' failed: ", err.run_id()))
    );
    assert_eq!(
        err.error.to_string(),
        "step 1 'work' failed: work:w failed on attempt 1"
    );
    assert_eq!(err.envelope.metadata.steps.len(), 1);
    assert_eq!(probe.count("start"), 1, "later steps never start");
    assert_eq!(probe.count("cleanup"), 1);
}

#[tokio::test]
async fn a_track_with_its_own_input_maps_it_for_the_first_step() {
    let rt = Runtime::new();
    let input = json!({ "tenantId": "t", "projectId": "p", "lines": ["ab", "cde"], "trampData": { "order": 7 } });
    let env = rt.trigger_and_wait("order_track", input.clone()).await;
    assert!(env.job.success, "{:?}", env.job.error);
    // "ab\ncde" is 6 chars, plus 2 lines from `original`, doubled.
    assert_eq!(env.results, json!({ "value": 16 }));
    assert_eq!(
        env.job.input, input,
        "the envelope holds the track's input, not the first step's"
    );
    let names: Vec<&str> = env
        .metadata
        .steps
        .iter()
        .map(|s| s.task_name.as_str())
        .collect();
    assert_eq!(names, ["length", "double"]);
    assert_eq!(env.tramp_data().cloned(), Some(json!({ "order": 7 })));

    // Typed, the track takes and validates an `OrderInput`.
    let order = OrderInput {
        base: BaseInput::new("t", "p"),
        lines: vec!["x".into()],
    };
    let out = rt.run(OrderTrack, order).await.unwrap();
    assert_eq!(out.results.value, 4);
    let required = &<OrderTrack as Task>::schemas().input["required"];
    assert!(
        required.as_array().unwrap().contains(&json!("lines")),
        "{required}"
    );
}

#[tokio::test]
async fn a_track_validates_its_own_input_and_what_its_first_mapper_builds() {
    let rt = Runtime::new();
    // The track's schema is `OrderInput`'s: the first step's `text` is not asked for.
    let env = rt
        .trigger_and_wait(
            "order_track",
            json!({ "tenantId": "t", "projectId": "p", "text": "x" }),
        )
        .await;
    assert!(!env.job.success);
    let error = env.job.error_detail.as_ref().unwrap();
    assert_eq!(error.kind_name(), "invalidInput");
    assert!(error.location().step.is_none(), "refused before any step");
    assert!(env.metadata.steps.is_empty());

    // No lines: the mapper builds an empty text, which `length`'s schema refuses.
    let env = rt
        .trigger_and_wait(
            "order_track",
            json!({ "tenantId": "t", "projectId": "p", "lines": [] }),
        )
        .await;
    assert_eq!(
        env.job.error.as_deref(),
        Some("step 1 'length' failed: invalid input: /text: \"\" is shorter than 1 character")
    );
}

#[tokio::test]
async fn a_track_with_its_own_input_converts_it_without_a_mapper() {
    let rt = Runtime::new();
    let order = OrderInput {
        base: BaseInput::new("t", "p"),
        lines: vec!["ab".into(), "c".into()],
    };
    let out = rt.run(OrderLength, order).await.unwrap();
    assert_eq!(out.results, TextLength { chars: 3 });
    assert_eq!(out.job.input["lines"], json!(["ab", "c"]));
}
