//! Single tasks end to end: the envelope, validation at both boundaries, bad input of every
//! kind, user errors, the registry, run handles and logging.

use std::time::Duration;

use serde_json::{Value, json};
use task_runtime::prelude::*;
use task_runtime::{
    CancelOutcome, ErrorKind, HookEvent, Kind, Registry, RegistryError, RunFilter, RunId,
    RunStatus, TaskDescriptor, TrampData, TriggerOptions,
};
use task_tests::*;

fn json_of<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

fn base_json() -> Value {
    json!({ "tenantId": "acme", "projectId": "docs" })
}

#[tokio::test]
async fn typed_run_returns_a_full_envelope() {
    let rt = Runtime::new();
    let mut base = BaseInput::new("acme", "docs");
    base.tramp_data = Some(json!({ "requestId": "r-1" }).into());
    let out = rt
        .run(Double, NumberInput { base, value: 21 })
        .await
        .expect("run succeeds");
    assert!(out.job.success);
    assert_eq!(out.job.task_name, "double");
    assert!(out.job.run_id.starts_with("run_"), "{}", out.job.run_id);
    assert_eq!(out.job.input["value"], 21);
    assert_eq!(out.job.error, None);
    assert_eq!(out.results, NumberOutput { value: 42 });
    assert_eq!(out.metadata.attempts, 1);
    assert!(out.metadata.finished_at >= out.metadata.started_at);
    assert_eq!(
        out.tramp_data().cloned(),
        Some(json!({ "requestId": "r-1" }))
    );

    let json = serde_json::to_value(&out).unwrap();
    for key in ["job", "results", "metadata", "trampData"] {
        assert!(json.get(key).is_some(), "envelope lacks {key}: {json}");
    }
    for key in [
        "success",
        "taskName",
        "runId",
        "input",
        "error",
        "errorDetail",
    ] {
        assert!(json["job"].get(key).is_some(), "job lacks {key}");
    }
    for key in ["startedAt", "finishedAt", "durationMs", "attempts"] {
        assert!(json["metadata"].get(key).is_some(), "metadata lacks {key}");
    }
}

/// A typed run's envelope holds one copy of the input's `trampData`, the one the input came
/// with, yet its `job.input` reads, compares and writes as the whole input; so does what the
/// hooks are told, on success and on failure.
#[tokio::test]
async fn a_typed_runs_envelope_shares_the_inputs_tramp_data_and_reads_whole() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ok, failed) = (seen.clone(), seen.clone());
    let rt = Runtime::builder()
        .on_success(move |event: &HookEvent| {
            ok.lock().unwrap().push(event.input.clone());
            async {}
        })
        .on_failure(move |event: &HookEvent| {
            failed.lock().unwrap().push(event.input.clone());
            async {}
        })
        .build()
        .unwrap();
    let tramp = TrampData::from(json!({ "requestId": "r-9", "zeta": [1, 2] }));
    let mut base = BaseInput::new("acme", "docs");
    base.user_id = Some("u-1".into());
    base.tramp_data = Some(tramp.clone());
    let whole = json!({
        "tenantId": "acme", "projectId": "docs", "userId": "u-1", "value": 21,
        "trampData": { "requestId": "r-9", "zeta": [1, 2] },
    });

    let out = rt
        .run(
            Double,
            NumberInput {
                base: base.clone(),
                value: 21,
            },
        )
        .await
        .expect("run succeeds");
    // One copy: the envelope's trampData is the input's own.
    assert!(std::ptr::eq(out.tramp_data().unwrap(), tramp.as_value()));
    assert!(std::ptr::eq(
        out.job.input.tramp_data().unwrap(),
        tramp.as_value()
    ));
    // Written as JSON, it is the whole input, with its keys in order.
    let text = serde_json::to_string(&out.job.input).unwrap();
    assert_eq!(text, serde_json::to_string(&whole).unwrap());
    let envelope = serde_json::to_value(&out).unwrap();
    assert_eq!(envelope["job"]["input"], whole);
    assert_eq!(envelope["trampData"], whole["trampData"]);
    // Read, compared and taken as a value, it is the whole input too.
    assert_eq!(out.job.input["trampData"]["requestId"], "r-9");
    assert_eq!(out.job.input, whole);
    assert_eq!(whole, out.job.input);
    let mut edited = out.job.input.clone();
    edited["value"] = json!(22);
    assert_eq!(edited["trampData"], whole["trampData"]);
    assert_eq!(out.job.input.clone().into_value(), whole);

    // A failed typed run: the envelope in the error and the hook hold the whole input.
    let err = rt
        .run(Double, NumberInput { base, value: 5000 })
        .await
        .expect_err("value over the input schema's maximum");
    assert_eq!(err.envelope.job.input["trampData"], whole["trampData"]);
    assert_eq!(err.envelope.job.input["value"], 5000);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], whole);
    assert_eq!(seen[1]["trampData"], whole["trampData"]);
}

#[tokio::test]
async fn every_violation_is_reported_with_its_path() {
    let rt = Runtime::new();
    let env = rt
        .trigger_and_wait(
            "double",
            json!({ "tenantId": "", "value": "ten", "trampData": { "keep": true } }),
        )
        .await;
    assert!(!env.job.success);
    assert_eq!(env.results, serde_json::Value::Null);
    let error = env.job.error_detail.as_ref().unwrap();
    assert_eq!(error.kind_name(), "invalidInput");
    assert!(!error.is_retryable());
    let issues: Vec<(&str, &str)> = error
        .issues()
        .iter()
        .map(|i| (i.path.as_str(), i.message.as_str()))
        .collect();
    assert_eq!(issues.len(), 3, "{issues:?}");
    assert!(
        issues
            .iter()
            .any(|(p, m)| p.is_empty() && m.contains("projectId"))
    );
    assert!(
        issues
            .iter()
            .any(|(p, m)| *p == "/tenantId" && m.contains("shorter"))
    );
    assert!(
        issues
            .iter()
            .any(|(p, m)| *p == "/value" && m.contains("integer"))
    );
    let text = env.job.error.as_deref().unwrap();
    assert!(text.starts_with("invalid input: "), "{text}");
    assert_eq!(env.tramp_data().cloned(), Some(json!({ "keep": true })));
    assert_eq!(
        env.job.input["value"], "ten",
        "the input is echoed as given"
    );
    let detail = serde_json::to_value(&env).unwrap()["job"]["errorDetail"].clone();
    assert_eq!(detail["kind"], "invalidInput");
    assert_eq!(detail["issues"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn typed_calls_are_validated_too() {
    let rt = Runtime::new();
    let err = rt
        .run(
            Double,
            NumberInput {
                base: BaseInput::new("a", "b"),
                value: 5000,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.error.kind_name(), "invalidInput");
    assert_eq!(err.error.issues()[0].path, "/value");
    assert!(
        err.to_string()
            .contains("5000 is greater than the maximum of 1000"),
        "{err}"
    );
    assert!(!err.envelope.job.success);
    assert_eq!(err.envelope.job.input["value"], 5000);
}

#[tokio::test]
async fn oversized_payload_is_refused_with_the_limit() {
    let rt = Runtime::builder().max_input_bytes(1024).build().unwrap();
    let mut input = base_json();
    input["value"] = json!(1);
    input["padding"] = json!("x".repeat(4096));
    input["trampData"] = json!({ "id": 7 });
    let env = rt.trigger_and_wait("double", input).await;
    let error = env.job.error_detail.as_ref().unwrap();
    assert_eq!(error.kind_name(), "invalidInput");
    let message = &error.issues()[0].message;
    assert!(
        message.contains("over the limit of 1024 bytes"),
        "{message}"
    );
    assert_eq!(
        env.tramp_data().cloned(),
        Some(json!({ "id": 7 })),
        "trampData survives"
    );
    assert_eq!(
        env.job.input["padding"].as_str().unwrap().len(),
        4096,
        "input kept"
    );
}

#[tokio::test]
async fn a_hundred_thousand_levels_of_nesting_is_refused_without_overflow() {
    let rt = Runtime::new();
    let mut deep = json!(1);
    for _ in 0..100_000 {
        deep = Value::Array(vec![deep]);
    }
    let mut input = base_json();
    input["value"] = deep;
    let env = rt.trigger_and_wait("double", input).await;
    let error = env.job.error_detail.as_ref().unwrap();
    assert_eq!(error.kind_name(), "invalidInput");
    assert!(
        error.issues()[0]
            .message
            .contains("deeper than the limit of 64 levels")
    );
    assert_eq!(
        env.job.input,
        Value::Null,
        "a document this deep is not echoed"
    );

    // The same as bytes, as the CLI reads it.
    let text = "[".repeat(100_000) + &"]".repeat(100_000);
    let refused = rt.limits().parse(text.as_bytes()).unwrap_err();
    assert!(refused.to_string().contains("at byte 64"), "{refused}");
}

#[tokio::test]
async fn unknown_id_suggests_the_closest_ids() {
    let rt = Runtime::new();
    let env = rt.trigger_and_wait("doubel", base_json()).await;
    let error = env.job.error_detail.unwrap();
    match error.kind() {
        ErrorKind::NotFound { id, suggestions } => {
            assert_eq!(id, "doubel");
            assert_eq!(suggestions.first().map(String::as_str), Some("double"));
        }
        other => panic!("expected notFound, got {other:?}"),
    }
    assert_eq!(
        env.job.error.unwrap(),
        "no task with id 'doubel' (did you mean double?)"
    );
    assert!(env.job.run_id.starts_with("run_"));
}

#[tokio::test]
async fn a_thiserror_type_keeps_message_source_and_type_in_the_envelope() {
    let rt = Runtime::new();
    let mut input = base_json();
    input["path"] = json!("/definitely/not/here.txt");
    let env = rt.trigger_and_wait("read_number", input).await;
    assert!(!env.job.success);
    assert_eq!(
        env.job.error.as_deref(),
        Some("cannot read '/definitely/not/here.txt'")
    );
    let detail = serde_json::to_value(env.job.error_detail.as_ref().unwrap()).unwrap();
    assert_eq!(detail["kind"], "failed");
    assert_eq!(detail["message"], "cannot read '/definitely/not/here.txt'");
    assert!(
        detail["typeName"]
            .as_str()
            .unwrap()
            .ends_with("ReadNumberError")
    );
    assert!(
        detail["sources"][0]
            .as_str()
            .unwrap()
            .contains("No such file"),
        "{detail}"
    );
    assert_eq!(detail["retryable"], true);

    // In-process, the original error is still there to downcast.
    let dir = std::env::temp_dir().join(format!("task-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nan.txt");
    std::fs::write(&path, "twelve").unwrap();
    let err = rt
        .run(
            ReadNumber,
            PathInput {
                base: BaseInput::new("a", "b"),
                path: path.display().to_string(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err.error.downcast_ref::<ReadNumberError>(),
        Some(ReadNumberError::NotANumber { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn registry_lists_every_kind_with_schemas() {
    let rt = Runtime::new();
    let registry = rt.registry();
    let kind = |id: &str| registry.get(id).map(|d| d.kind);
    assert_eq!(kind("double"), Some(Kind::Task));
    assert_eq!(kind("measure"), Some(Kind::Track));
    assert_eq!(kind("pair"), Some(Kind::Orchestrator));
    let measure = registry.get("measure").unwrap();
    assert_eq!(measure.steps, ["length", "double", "quadruple"]);
    assert_eq!(
        measure.description,
        "Measures a text, doubles the length, then quadruples it with a nested track."
    );
    let schemas = registry.get("double").unwrap().schemas();
    assert_eq!(schemas.input["properties"]["value"]["maximum"], 1000);
    assert!(
        schemas.input["required"]
            .as_array()
            .unwrap()
            .contains(&json!("tenantId"))
    );
    assert_eq!(schemas.output["properties"]["value"]["type"], "integer");
    let ids: Vec<&str> = registry.entries().iter().map(|d| d.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

static FIRST: TaskDescriptor = TaskDescriptor::of::<Double>("one", "src/a.rs", 10, &[], &[]);
static SECOND: TaskDescriptor = TaskDescriptor::of::<Double>("two", "src/b.rs", 20, &[], &[]);

#[test]
fn duplicate_ids_name_both_definitions() {
    let err = Registry::from_entries([&SECOND, &FIRST]).unwrap_err();
    assert_eq!(
        err,
        RegistryError::DuplicateId {
            id: "double".into(),
            first: "src/a.rs:10".into(),
            second: "src/b.rs:20".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "task id 'double' is defined twice: at src/a.rs:10 and at src/b.rs:20"
    );
    // Registering a handle explicitly next to inventory's copy is not a duplicate.
    assert!(Runtime::builder().register::<Double>().build().is_ok());
}

#[tokio::test]
async fn trigger_returns_a_handle_with_the_run_id() {
    let rt = Runtime::new();
    let mut input = base_json();
    input["value"] = json!(4);
    let handle = rt.trigger("double", input).await.unwrap();
    let run_id = handle.run_id().to_owned();
    let env = handle.wait().await;
    assert_eq!(env.job.run_id, run_id);
    assert_eq!(env.results, json!({ "value": 8 }));

    // Both typed and by-id errors work with `?` in an application's error type.
    async fn start(rt: &Runtime, id: &str) -> Result<String, Box<dyn std::error::Error>> {
        let handle = rt
            .trigger(id, json!({ "tenantId": "a", "projectId": "b", "value": 1 }))
            .await?;
        let typed = rt
            .run(
                Double,
                NumberInput {
                    base: BaseInput::new("a", "b"),
                    value: 1,
                },
            )
            .await?;
        Ok(format!("{} {}", handle.run_id(), typed.job.run_id))
    }
    assert!(start(&rt, "double").await.is_ok());
    let message = start(&rt, "nope").await.unwrap_err().to_string();
    assert!(message.contains("no task with id 'nope'"), "{message}");

    let refused = rt.trigger("nope", json!({})).await.unwrap_err();
    assert_eq!(refused.error.kind_name(), "notFound");
    assert_eq!(refused.envelope.job.task_name, "nope");
}

#[tokio::test(start_paused = true)]
async fn runs_triggered_by_id_keep_their_envelope_until_awaited_and_expire_from_the_trigger() {
    let rt = Runtime::new();
    let input = |value: i64| json!({ "tenantId": "acme", "projectId": "docs", "value": value });
    let mut handles = Vec::new();
    for value in 0..3 {
        handles.push(rt.trigger("double", input(value)).await.unwrap());
    }
    let refused = rt
        .trigger("double", json!({ "tenantId": "acme" }))
        .await
        .unwrap();
    // Every run ends before any handle is awaited: each keeps what its envelope needs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (value, handle) in (0..).zip(handles) {
        let id = handle.run_id().clone();
        let info = rt.runs().get(&id).await.unwrap().expect("a recent run");
        assert_eq!((info.status, info.attempts), (RunStatus::Completed, 1));
        let out = handle.wait().await;
        assert!(out.job.success, "{:?}", out.job.error);
        assert_eq!(out.job.run_id, id);
        assert_eq!(out.job.input, input(value));
        assert_eq!(out.results, json!({ "value": value * 2 }));
        assert_eq!(out.metadata.attempts, 1);
    }
    let info = rt.runs().get(refused.run_id()).await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    let out = refused.wait().await;
    assert_eq!(out.results, Value::Null);
    assert_eq!(out.error().map(TaskError::kind_name), Some("invalidInput"));

    // A time to live counts from the trigger: a run delayed past it expires unrun, one
    // delayed within it runs; one that lives forever (`Duration::MAX`) runs too.
    let options = |delay: u64, ttl: Duration| {
        TriggerOptions::new()
            .delay(Duration::from_secs(delay))
            .ttl(ttl)
    };
    let late = rt
        .trigger_with("double", input(1), options(10, Duration::from_secs(5)))
        .await
        .unwrap();
    let soon = rt
        .trigger_with("double", input(2), options(4, Duration::from_secs(5)))
        .await
        .unwrap();
    let forever = rt
        .trigger_with("double", input(3), options(1, Duration::MAX))
        .await
        .unwrap();
    let late_id = late.run_id().clone();
    let out = late.wait().await;
    assert_eq!(out.error().map(TaskError::kind_name), Some("expired"));
    let info = rt.runs().get(&late_id).await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Expired);
    assert_eq!(soon.wait().await.results, json!({ "value": 4 }));
    assert_eq!(forever.wait().await.results, json!({ "value": 6 }));
}

/// A run triggered in the background keeps its input as text until its envelope is built:
/// what comes back is exactly what was given, whatever the numbers and strings.
#[tokio::test]
async fn a_background_runs_input_comes_back_exactly_as_given() {
    let rt = Runtime::new();
    let input = json!({
        "tenantId": "acme",
        "projectId": "docs",
        "value": 4,
        "trampData": {
            "max": u64::MAX, "min": i64::MIN, "neg0": -0.0, "tiny": 1e-300, "third": 0.1 + 0.2,
            "text": "line\nbreak \"quoted\" \u{1F600} \\ é", "empty": {}, "nested": [[], [null, true, false]]
        }
    });
    let out = rt
        .trigger("double", input.clone())
        .await
        .unwrap()
        .wait()
        .await;
    assert!(out.job.success, "{:?}", out.job.error);
    assert_eq!(out.job.input, input);
    assert_eq!(
        out.job.input["trampData"]["neg0"]
            .as_f64()
            .map(f64::is_sign_negative),
        Some(true)
    );
    assert_eq!(out.results, json!({ "value": 8 }));
}

/// Without a store, `rt.runs()` follows background runs in memory: status while they run,
/// a waiter that arrives before the end gets the envelope, cancel reaches queued and
/// executing runs, and a finished run answers `AlreadyFinished`.
#[tokio::test(start_paused = true)]
async fn runs_in_memory_are_followed_waited_for_and_cancelled() {
    let rt = Runtime::new();
    let probe = task_tests::probe::Probe::new();
    let work = |label: &str, millis: u64| json_of(&WorkInput::new(&probe, label, millis));
    let slow = rt.trigger("work", work("slow", 1_000)).await.unwrap();
    let doomed = rt.trigger("work", work("doomed", 1_000)).await.unwrap();
    let delayed = rt
        .trigger_with(
            "work",
            work("delayed", 0),
            TriggerOptions::new()
                .delay(Duration::from_secs(60))
                .tags(["later"]),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let status = |id: RunId| {
        let rt = rt.clone();
        async move { rt.runs().get(&id).await.unwrap().map(|info| info.status) }
    };
    assert_eq!(
        status(slow.run_id().clone()).await,
        Some(RunStatus::Executing)
    );
    assert_eq!(
        status(delayed.run_id().clone()).await,
        Some(RunStatus::Delayed)
    );
    let listed = rt.runs().list(RunFilter::new().tag("later")).await.unwrap();
    assert_eq!(
        listed.iter().map(|i| &i.id).collect::<Vec<_>>(),
        [delayed.run_id()]
    );

    // A waiter that arrives while the run executes gets its envelope when it ends.
    let waiter = {
        let (rt, id) = (rt.clone(), slow.run_id().clone());
        tokio::spawn(async move { rt.runs().wait(&id).await.unwrap() })
    };
    let cancels = [
        rt.runs().cancel(doomed.run_id()).await.unwrap(),
        rt.runs().cancel(delayed.run_id()).await.unwrap(),
    ];
    assert!(
        matches!(
            cancels,
            [CancelOutcome::Requested, CancelOutcome::Cancelled]
        ),
        "{cancels:?}"
    );
    let waited = waiter.await.unwrap().expect("the envelope");
    assert!(waited.job.success, "{:?}", waited.job.error);
    assert_eq!(waited.job.run_id, *slow.run_id());
    assert_eq!(waited.job.input, work("slow", 1_000));
    assert_eq!(slow.wait().await.results, waited.results);
    let doomed_out = doomed.wait().await;
    assert_eq!(
        doomed_out.error().map(TaskError::kind_name),
        Some("cancelled")
    );
    assert_eq!(
        status(doomed_out.job.run_id.clone()).await,
        Some(RunStatus::Cancelled)
    );
    assert_eq!(
        delayed.wait().await.error().map(TaskError::kind_name),
        Some("cancelled")
    );
    assert_eq!(probe.count("start work:delayed"), 0);
    assert_eq!(probe.count("cleanup work:doomed"), 1);
    assert!(matches!(
        rt.runs().cancel(&waited.job.run_id).await.unwrap(),
        CancelOutcome::AlreadyFinished(RunStatus::Completed)
    ));
    let unknown: RunId = "run_01KB0000000000000000000000".parse().unwrap();
    assert!(matches!(
        rt.runs().cancel(&unknown).await.unwrap(),
        CancelOutcome::NotFound
    ));
    assert!(rt.runs().wait(&unknown).await.unwrap().is_none());
}

#[tokio::test]
async fn run_ids_sort_in_creation_order() {
    let rt = Runtime::new();
    let mut ids = Vec::new();
    for value in 0..50 {
        let out = rt
            .run(
                Double,
                NumberInput {
                    base: BaseInput::new("a", "b"),
                    value,
                },
            )
            .await
            .unwrap();
        ids.push(out.job.run_id);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    sorted.dedup();
    assert_eq!(sorted.len(), 50);
}

#[tokio::test]
async fn task_fns_stay_callable_with_a_test_context() {
    let ctx = TaskContext::for_test()
        .with_tenant("acme")
        .with_tramp_data(json!({ "x": 1 }));
    let out = double(
        &ctx,
        NumberInput {
            base: BaseInput::new("a", "b"),
            value: 3,
        },
    )
    .await;
    assert_eq!(out.unwrap(), NumberOutput { value: 6 });
    assert_eq!(ctx.tenant_id(), Some("acme"));
    assert_eq!(ctx.tramp_data(), Some(&json!({ "x": 1 })));
    // Child runs from a test context go through the whole validated path.
    let err = ctx
        .run(
            Double,
            NumberInput {
                base: BaseInput::new("a", "b"),
                value: -1,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind_name(), "invalidInput");
}

#[tokio::test(start_paused = true)]
async fn in_process_steps_run_on_every_attempt_and_are_listed_in_metadata() {
    // No store, no journal: each attempt runs its steps, in whatever order it has.
    let rt = Runtime::new();
    let envelope = rt
        .trigger_and_wait(
            "reordered_steps",
            json!({ "tenantId": "acme", "projectId": "docs", "label": "x" }),
        )
        .await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.metadata.attempts, 2);
    let steps: Vec<(&str, bool, bool)> = envelope
        .metadata
        .steps
        .iter()
        .map(|s| (s.task_name.as_str(), s.success, s.replayed))
        .collect();
    assert_eq!(steps, [("email", true, false), ("charge", true, false)]);
    assert_ne!(
        envelope.metadata.steps[0].run_id,
        envelope.metadata.steps[1].run_id
    );
}
