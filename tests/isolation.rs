//! Limits that limit and never deadlock, idempotency keys scoped to one task and one tenant,
//! inputs refused precisely (duplicate keys, non-finite floats, sizes, depth), and builder
//! settings refused rather than adjusted.

use std::time::Duration;

use serde_json::{Value, json};
use task_runtime::prelude::*;
use task_runtime::{BuildError, InputError, RetryPolicy, TriggerOptions};
use task_tests::probe::Probe;
use task_tests::*;

fn json_of<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

/// Deadlocks show as this timeout under the paused clock (which jumps to it once every task
/// is idle).
async fn within_a_minute<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("finished: no deadlock")
}

#[tokio::test(start_paused = true)]
async fn a_global_and_a_per_task_limit_never_deadlock_a_nested_run() {
    // `wrap` holds the only runtime-wide slot and runs `limited_one` as its child, while a
    // second `limited_one` run, triggered meanwhile, waits for that slot.
    let rt = Runtime::builder().max_concurrency(1).build().unwrap();
    let probe = Probe::new();
    let outer = rt
        .trigger("wrap", json_of(&WorkInput::new(&probe, "outer", 100)))
        .await
        .unwrap();
    let fan = FanInput {
        work: WorkInput::new(&probe, "direct", 100),
        children: 0,
    };
    let direct = rt.trigger("limited_one", json_of(&fan)).await.unwrap();
    let (a, b) = within_a_minute(async { (outer.wait().await, direct.wait().await) }).await;
    assert!(
        a.job.success && b.job.success,
        "{:?} {:?}",
        a.job.error,
        b.job.error
    );
    assert_eq!(probe.max_running(), 1);
}

#[tokio::test(start_paused = true)]
async fn children_started_at_once_do_not_share_their_parent_slot() {
    let rt = Runtime::builder().max_concurrency(1).build().unwrap();
    let probe = Probe::new();
    let fan = FanInput {
        work: WorkInput::new(&probe, "f", 100),
        children: 4,
    };
    let out = within_a_minute(rt.run(FanLeaf, fan)).await.unwrap();
    assert_eq!(out.results.len(), 4);
    assert_eq!(
        probe.max_running(),
        1,
        "a limit of 1 runs the 4 children one at a time"
    );
    assert_eq!(out.metadata.duration_ms, 400);
}

#[tokio::test(start_paused = true)]
async fn a_per_task_limit_of_one_holds_for_its_own_children() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let fan = FanInput {
        work: WorkInput::new(&probe, "l", 100),
        children: 3,
    };
    let out = within_a_minute(rt.run(LimitedOne, fan)).await.unwrap();
    assert_eq!(out.results.len(), 3);
    assert_eq!(
        probe.max_running(),
        1,
        "3 runs of a `concurrency = 1` task, one at a time"
    );
}

#[tokio::test(start_paused = true)]
async fn nested_fan_out_under_a_limit_of_one_completes_one_at_a_time() {
    let rt = Runtime::builder().max_concurrency(1).build().unwrap();
    let probe = Probe::new();
    let input = BatchInput {
        base: BaseInput::new("t", "p"),
        lead: WorkInput::new(&probe, "lead", 10),
        items: (0..3)
            .map(|i| WorkInput::new(&probe, &format!("i{i}"), 10))
            .collect(),
    };
    let out = within_a_minute(rt.run(TrackFan, input)).await;
    assert!(out.is_ok());
    assert_eq!(probe.max_running(), 1);
}

#[tokio::test(start_paused = true)]
async fn idempotency_keys_belong_to_one_task_and_one_tenant() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let key = || TriggerOptions::new().idempotency_key("shared-key");
    let mut acme = WorkInput::new(&probe, "acme-secret", 0);
    acme.base.tenant_id = "acme".into();
    let mut globex = WorkInput::new(&probe, "globex", 0);
    globex.base.tenant_id = "globex".into();

    let first = rt
        .trigger_and_wait_with("work", json_of(&acme), key())
        .await;
    let other_tenant = rt
        .trigger_and_wait_with("work", json_of(&globex), key())
        .await;
    let other_task = rt
        .trigger_and_wait_with("flaky", json_of(&acme), key())
        .await;
    let same = rt
        .trigger_and_wait_with("work", json_of(&acme), key())
        .await;

    assert_ne!(other_tenant.job.run_id, first.job.run_id);
    assert_eq!(
        other_tenant.results["label"], "globex",
        "no cross-tenant result"
    );
    assert_eq!(other_tenant.results["tenantId"], "globex");
    assert_ne!(other_task.job.run_id, first.job.run_id);
    assert_eq!(other_task.job.task_name, "flaky");
    assert_eq!(
        same.job.run_id, first.job.run_id,
        "same task, tenant and key"
    );
    assert_eq!(probe.count("start"), 3);
}

#[tokio::test]
async fn duplicate_keys_are_refused_with_the_path() {
    let rt = Runtime::new();
    let limits = rt.limits();
    let text = br#"{"base": 1, "tenantId":"a","projectId":"p","value":1,"tenantId":"b"}"#;
    let error = limits.parse(text).unwrap_err();
    assert!(matches!(&error, InputError::DuplicateKey { key, .. } if key == "tenantId"));
    let nested = br#"{"tenantId":"a","projectId":"p","trampData":{"x":1,"x":2},"value":1}"#;
    match limits.parse(nested).unwrap_err() {
        InputError::DuplicateKey {
            pointer,
            key,
            line,
            column,
        } => {
            assert_eq!(
                (pointer.as_str(), key.as_str(), line),
                ("/trampData", "x", 1)
            );
            assert!(column > 0);
        }
        other => panic!("unexpected {other:?}"),
    }
    let task_error = TaskError::from(error);
    assert_eq!(task_error.issues()[0].path, "/tenantId");
}

#[tokio::test]
async fn non_finite_floats_are_refused_on_every_path() {
    let rt = Runtime::new();
    for (mean, best, path, what) in [
        ("nan", None, "/mean", "NaN"),
        ("1.5", Some("inf"), "/best", "inf"),
    ] {
        let input = ScoresInput {
            base: BaseInput::new("t", "p"),
            mean: mean.into(),
            best: best.map(Into::into),
        };
        let env = rt.trigger_and_wait("scores", json_of(&input)).await;
        let error = env.error().expect("refused");
        assert_eq!(error.kind_name(), "invalidOutput", "{error}");
        assert_eq!(error.issues()[0].path, path);
        assert_eq!(
            error.issues()[0].message,
            format!("{what} is not a JSON number")
        );
        let typed = match rt.run(ScoresTask, input).await {
            Ok(_) => panic!("accepted a non-finite float"),
            Err(e) => e.error,
        };
        assert_eq!(typed.issues(), error.issues(), "typed and by-id runs alike");
    }
    let fine = ScoresInput {
        base: BaseInput::new("t", "p"),
        mean: "2.5".into(),
        best: None,
    };
    assert_eq!(rt.run(ScoresTask, fine).await.unwrap().results.mean, 2.5);
}

#[tokio::test]
async fn an_oversized_input_reports_its_actual_size() {
    let rt = Runtime::builder().max_input_bytes(100).build().unwrap();
    let input = json!({ "tenantId": "t", "projectId": "p", "value": 1, "pad": "x".repeat(200) });
    let size = serde_json::to_vec(&input).unwrap().len();
    let env = rt.trigger_and_wait("double", input).await;
    let message = &env.error().unwrap().issues()[0].message;
    assert_eq!(
        message,
        &format!("input is {size} bytes, over the limit of 100 bytes")
    );
}

#[tokio::test]
async fn depth_limits_are_one_limit_for_every_path() {
    assert!(matches!(
        Runtime::builder().max_input_depth(129).build(),
        Err(BuildError::Setting {
            setting: "max_input_depth",
            ..
        })
    ));
    let rt = Runtime::builder().max_input_depth(128).build().unwrap();
    let mut deep = Value::Null;
    for _ in 0..126 {
        deep = Value::Array(vec![deep]);
    }
    let input =
        json!({ "tenantId": "t", "projectId": "p", "value": 1, "trampData": { "d": deep } });
    let text = serde_json::to_vec(&input).unwrap();
    let parsed = rt
        .limits()
        .parse(&text)
        .expect("128 levels parse from bytes");
    let env = rt.trigger_and_wait("double", parsed.clone()).await;
    assert!(env.job.success, "and run by id: {:?}", env.job.error);
    // In the background too, where the input waits as text and is read back twice.
    let env = rt.trigger("double", parsed).await.unwrap().wait().await;
    assert!(
        env.job.success,
        "and in the background: {:?}",
        env.job.error
    );
    assert_eq!(env.job.input, input);
}

#[test]
fn the_builder_refuses_what_the_attribute_refuses() {
    let refused = |builder: task_runtime::RuntimeBuilder| builder.build().unwrap_err().to_string();
    assert!(
        refused(Runtime::builder().default_retry(RetryPolicy::attempts(3).factor(0.5)))
            .contains("factor")
    );
    assert!(
        refused(
            Runtime::builder().default_retry(
                RetryPolicy::attempts(3)
                    .min_delay(Duration::from_secs(10))
                    .max_delay(Duration::from_secs(1))
            )
        )
        .contains("longer than max_delay")
    );
    assert!(refused(Runtime::builder().default_timeout(Duration::ZERO)).contains("timeout"));
    assert!(refused(Runtime::builder().max_concurrency(0)).contains("max_concurrency"));
    assert!(refused(Runtime::builder().max_fan_out(0)).contains("max_fan_out"));
}

#[tokio::test(start_paused = true)]
async fn huge_retry_delays_neither_panic_nor_block_cancellation() {
    let rt = Runtime::builder()
        .default_retry(
            RetryPolicy::attempts(5)
                .factor(1e300)
                .min_delay(Duration::from_secs(u64::MAX / 4))
                .max_delay(Duration::MAX),
        )
        .build()
        .unwrap();
    let probe = Probe::new();
    let mut input = WorkInput::new(&probe, "x", 0);
    input.fail_attempts = 5;
    let handle = rt.trigger("work", json_of(&input)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle.cancel();
    let env = handle.wait().await;
    assert_eq!(env.error().unwrap().kind_name(), "cancelled");
    assert_eq!(env.metadata.attempts, 1);
}
