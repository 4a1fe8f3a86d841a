//! Durable waits on a real SQLite file and on a real PostgreSQL (`ctx.sleep`,
//! `ctx.wait_for_token`, `rt.tokens()`, the CLI's `tokens` commands), under a
//! [`TestClock`]: an hour passes with `clock.advance(..)`, never by waiting for it.
//!
//! Each scenario is one async fn taking the store's URL, run once per backend.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use task_runtime::{
    CancelOutcome, NewToken, RunId, RunInfo, RunStatus, Runtime, Store, TestClock, TokenCompletion,
    TokenStatus,
};
use task_tests::pg;
use task_tests::probe::Probe;

const APP: &str = env!("CARGO_BIN_EXE_fixture-app");
const HOUR: Duration = Duration::from_secs(3600);

fn sqlite_url(name: &str) -> String {
    let dir: PathBuf = std::env::temp_dir().join(format!("waits-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}/runs.db", dir.display())
}

async fn runtime(url: &str, clock: &Arc<TestClock>) -> Runtime {
    let store = Store::connect(url).await.expect("store opens");
    Runtime::builder()
        .store(store)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// The run once it has `status` (panics after 20 s).
async fn until_status(rt: &Runtime, id: &RunId, status: RunStatus) -> RunInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = rt.runs().get(id).await.unwrap().expect("the run is stored");
        if info.status == status {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {id} is still {:?}, expected {status:?}",
            info.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn envelope_of(rt: &Runtime, id: &RunId) -> task_runtime::RunOutput<Value> {
    tokio::time::timeout(Duration::from_secs(20), rt.runs().wait(id))
        .await
        .expect("the run finishes")
        .unwrap()
        .expect("the run is known")
}

fn base() -> Value {
    json!({ "tenantId": "acme", "projectId": "waits" })
}

fn input(fields: Value) -> Value {
    let mut input = base();
    input
        .as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    input
}

/// A sleep of an hour on a worker with one slot: the run waits (no slot, no lease, the
/// attempt not counted) while a second run executes; the worker and the runtime go away;
/// a new runtime and worker on the same store resume it once the clock passed the hour,
/// without executing its first step again.
async fn sleep_holds_no_slot_and_survives_a_restart(url: &str) {
    let clock = TestClock::new();
    let probe = Probe::new();
    let rt = runtime(url, &clock).await;
    let worker = rt.worker().concurrency(1).start();
    let sleeper = rt
        .trigger(
            "sleeper",
            input(json!({ "probe": probe.name(), "sleepMs": HOUR.as_millis() as u64 })),
        )
        .await
        .unwrap();
    let id = sleeper.run_id().clone();
    let waiting = until_status(&rt, &id, RunStatus::Waiting).await;
    assert_eq!(waiting.attempts, 0, "a wait is not an attempt");
    assert_eq!(probe.count("step before"), 1);
    assert_eq!(probe.count("step after"), 0);

    // The one slot is free: another run executes while the first sleeps.
    let other = rt
        .trigger("double", input(json!({ "value": 21 })))
        .await
        .unwrap();
    let done = envelope_of(&rt, other.run_id()).await;
    assert!(done.job.success, "{:?}", done.job.error);
    assert_eq!(done.results, json!({ "value": 42 }));
    assert_eq!(
        rt.runs().get(&id).await.unwrap().unwrap().status,
        RunStatus::Waiting,
        "the sleeper still sleeps while the other run executed"
    );

    // Restart: the worker stops, the runtime and the store are dropped.
    worker.shutdown(Duration::from_secs(5)).await;
    drop(sleeper);
    drop(rt);

    let rt = runtime(url, &clock).await;
    let worker = rt.worker().concurrency(1).start();
    // Not before its time: the worker's wake-up pass (every second) leaves it waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rt.runs().get(&id).await.unwrap().unwrap().status,
        RunStatus::Waiting
    );
    clock.advance(HOUR + Duration::from_secs(1));
    let envelope = envelope_of(&rt, &id).await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.results["before"], "before at attempt 1");
    assert_eq!(envelope.results["after"], "after at attempt 1");
    assert_eq!(
        probe.count("step before"),
        1,
        "the first step is not executed again"
    );
    assert_eq!(probe.count("step after"), 1);
    let steps = &envelope.metadata.steps;
    let names: Vec<&str> = steps.iter().map(|s| s.task_name.as_str()).collect();
    assert_eq!(names, ["before", "wait:sleep", "after"]);
    assert!(
        steps[0].replayed,
        "the first step replayed from the journal"
    );
    assert!(!steps[2].replayed);
    let info = rt.runs().get(&id).await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.attempts, 1);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Two runs of a task limited to one at a time, on a worker with room for four: the
/// second starts while the first sleeps (a waiting run holds no concurrency slot), and both
/// finish once their hour passed.
async fn a_waiting_run_holds_no_concurrency_slot(url: &str) {
    let clock = TestClock::new();
    let probe = Probe::new();
    let rt = runtime(url, &clock).await;
    let worker = rt.worker().concurrency(4).start();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let run = rt
            .trigger(
                "limited_sleeper",
                input(json!({ "probe": probe.name(), "sleepMs": HOUR.as_millis() as u64 })),
            )
            .await
            .unwrap();
        ids.push(run.run_id().clone());
    }
    for id in &ids {
        until_status(&rt, id, RunStatus::Waiting).await;
    }
    assert_eq!(
        probe.count("step before"),
        2,
        "both started, one after the other"
    );
    clock.advance(HOUR + Duration::from_secs(1));
    for id in &ids {
        let envelope = envelope_of(&rt, id).await;
        assert!(envelope.job.success, "{:?}", envelope.job.error);
    }
    assert_eq!(probe.count("step before"), 2);
    assert_eq!(probe.count("step after"), 2);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// `tokens complete` through the fixture-app binary (another process).
fn complete_in_another_process(url: &str, token: &str, data: &str) -> (i32, String, String) {
    let output = Command::new(APP)
        .args(["--store", url, "tokens", "complete", token, "--data", data])
        .output()
        .expect("fixture-app runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A token completed from another process resumes its waiting run with the data at once;
/// completing it again is a no-op that says so.
async fn a_token_completed_elsewhere_resumes_its_run(url: &str) {
    let clock = TestClock::new();
    let probe = Probe::new();
    let rt = runtime(url, &clock).await;
    let worker = rt.worker().concurrency(2).start();
    let token = rt
        .tokens()
        .create(NewToken::new().tags(["approval"]).tenant("acme"))
        .await
        .unwrap();
    let run = rt
        .trigger(
            "approval",
            input(json!({
                "probe": probe.name(),
                "token": token.id,
                "timeoutMs": HOUR.as_millis() as u64,
            })),
        )
        .await
        .unwrap();
    let id = run.run_id().clone();
    until_status(&rt, &id, RunStatus::Waiting).await;
    let stored = rt.tokens().get(&token.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TokenStatus::Waiting);
    assert_eq!(stored.run_id.as_ref(), Some(&id));

    let (code, stdout, stderr) =
        complete_in_another_process(url, &token.id, r#"{"approved":true,"by":"ops"}"#);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("completed {}", token.id));
    // No clock moved: the completion itself woke the run.
    let envelope = envelope_of(&rt, &id).await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(
        envelope.results["data"],
        json!({ "approved": true, "by": "ops" })
    );
    assert_eq!(envelope.results["timedOut"], false);
    assert_eq!(
        probe.count("step before"),
        1,
        "the first step is not executed again"
    );
    assert_eq!(probe.count("step after"), 1);

    // Twice: nothing changes, and both ways say so.
    let (code, stdout, stderr) =
        complete_in_another_process(url, &token.id, r#"{"approved":false}"#);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("alreadyCompleted {}", token.id));
    assert!(stderr.contains("completed before"), "{stderr}");
    assert_eq!(
        rt.tokens()
            .complete(&token.id, json!({ "approved": false }))
            .await
            .unwrap(),
        TokenCompletion::AlreadyCompleted
    );
    let stored = rt.tokens().get(&token.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TokenStatus::Completed);
    assert_eq!(stored.data, Some(json!({ "approved": true, "by": "ops" })));
    assert_eq!(stored.tags, ["approval"]);
    let show = Command::new(APP)
        .args(["--store", url, "tokens", "show", &token.id, "--json"])
        .output()
        .unwrap();
    assert!(show.status.success());
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["runId"], id.as_str());
    assert_eq!(
        rt.tokens().complete("token_nope", json!(1)).await.unwrap(),
        TokenCompletion::NotFound
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A token's timeout ends the wait with a `timeout` error the task handles; completing it
/// afterwards is a no-op. A waiting run that is cancelled ends at once, and completing its
/// token is a no-op too.
async fn a_token_times_out_and_a_cancelled_wait_ignores_its_token(url: &str) {
    let clock = TestClock::new();
    let probe = Probe::new();
    let rt = runtime(url, &clock).await;
    let worker = rt.worker().concurrency(2).start();
    let token = rt
        .tokens()
        .create(NewToken::new().timeout(HOUR))
        .await
        .unwrap();
    let run = rt
        .trigger(
            "approval",
            input(json!({
                "probe": probe.name(),
                "token": token.id,
                // The token's own timeout comes first.
                "timeoutMs": (24 * HOUR).as_millis() as u64,
            })),
        )
        .await
        .unwrap();
    let id = run.run_id().clone();
    until_status(&rt, &id, RunStatus::Waiting).await;
    clock.advance(HOUR + Duration::from_secs(1));
    let envelope = envelope_of(&rt, &id).await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.results["timedOut"], true);
    assert_eq!(envelope.results["data"], Value::Null);
    assert_eq!(
        rt.tokens()
            .complete(&token.id, json!("late"))
            .await
            .unwrap(),
        TokenCompletion::TimedOut
    );
    let stored = rt.tokens().get(&token.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TokenStatus::TimedOut);
    assert_eq!(stored.data, None);

    // Cancelled while waiting.
    let token = rt.tokens().create(NewToken::new()).await.unwrap();
    let run = rt
        .trigger(
            "approval",
            input(json!({
                "probe": probe.name(),
                "token": token.id,
                "timeoutMs": HOUR.as_millis() as u64,
            })),
        )
        .await
        .unwrap();
    let id = run.run_id().clone();
    until_status(&rt, &id, RunStatus::Waiting).await;
    assert_eq!(
        rt.runs().cancel(&id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let info = until_status(&rt, &id, RunStatus::Cancelled).await;
    let error = info.envelope.unwrap().job.error.unwrap();
    assert!(error.contains("cancelled while waiting"), "{error}");
    assert_eq!(
        rt.tokens().complete(&token.id, json!(1)).await.unwrap(),
        TokenCompletion::RunCancelled
    );
    assert_eq!(
        rt.tokens().get(&token.id).await.unwrap().unwrap().status,
        TokenStatus::Waiting
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sleep_holds_no_slot_and_survives_a_restart() {
    sleep_holds_no_slot_and_survives_a_restart(&sqlite_url("sleep")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sleep_holds_no_slot_and_survives_a_restart() {
    sleep_holds_no_slot_and_survives_a_restart(&pg::server().database("sleep")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_waiting_run_holds_no_concurrency_slot() {
    a_waiting_run_holds_no_concurrency_slot(&sqlite_url("limited")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_waiting_run_holds_no_concurrency_slot() {
    a_waiting_run_holds_no_concurrency_slot(&pg::server().database("limited")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_token_completed_elsewhere_resumes_its_run() {
    a_token_completed_elsewhere_resumes_its_run(&sqlite_url("token")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_token_completed_elsewhere_resumes_its_run() {
    a_token_completed_elsewhere_resumes_its_run(&pg::server().database("token")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_token_times_out_and_a_cancelled_wait_ignores_its_token() {
    a_token_times_out_and_a_cancelled_wait_ignores_its_token(&sqlite_url("timeout")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_token_times_out_and_a_cancelled_wait_ignores_its_token() {
    a_token_times_out_and_a_cancelled_wait_ignores_its_token(&pg::server().database("timeout"))
        .await;
}

/// Without a store: a sleep is a plain sleep, a token wait waits in this process, and its
/// timeout is the same handled `timeout` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_waits_sleep_and_wait_in_process() {
    let probe = Probe::new();
    let rt = Runtime::new();
    let started = std::time::Instant::now();
    let slept = rt
        .trigger_and_wait(
            "sleeper",
            input(json!({ "probe": probe.name(), "sleepMs": 50 })),
        )
        .await;
    assert!(slept.job.success, "{:?}", slept.job.error);
    assert!(started.elapsed() >= Duration::from_millis(50));

    let token = rt.tokens().create(NewToken::new()).await.unwrap();
    let waiting = rt
        .trigger(
            "approval",
            input(json!({ "probe": probe.name(), "token": token.id, "timeoutMs": 60_000 })),
        )
        .await
        .unwrap();
    // Completed once the run waits for it (the token names its run then).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rt
        .tokens()
        .get(&token.id)
        .await
        .unwrap()
        .unwrap()
        .run_id
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        rt.tokens()
            .complete(&token.id, json!({ "ok": 1 }))
            .await
            .unwrap(),
        TokenCompletion::Completed
    );
    let done = waiting.wait().await;
    assert!(done.job.success, "{:?}", done.job.error);
    assert_eq!(done.results["data"], json!({ "ok": 1 }));
    assert_eq!(
        rt.tokens().complete(&token.id, json!(2)).await.unwrap(),
        TokenCompletion::AlreadyCompleted
    );

    let token = rt
        .tokens()
        .create(NewToken::new().timeout(Duration::from_millis(30)))
        .await
        .unwrap();
    let timed_out = rt
        .trigger_and_wait(
            "approval",
            input(json!({ "probe": probe.name(), "token": token.id, "timeoutMs": 60_000 })),
        )
        .await;
    assert!(timed_out.job.success, "{:?}", timed_out.job.error);
    assert_eq!(timed_out.results["timedOut"], true);
}

/// The waitpoint-token endpoints: a key's tenant creates, reads and completes its tokens;
/// another tenant's key gets a 404; a second completion says it changed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_wait_tokens_are_created_read_and_completed_per_tenant() {
    let url = sqlite_url("http");
    let clock = TestClock::new();
    let probe = Probe::new();
    let store = Store::connect(&url).await.unwrap();
    let rt = Runtime::builder()
        .store(store.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let worker = rt.worker().concurrency(2).start();
    let acme = task_runtime::http::create_key(&store, "acme")
        .await
        .unwrap()
        .key;
    let globex = task_runtime::http::create_key(&store, "globex")
        .await
        .unwrap()
        .key;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!(
        "http://{}/api/v1/waitpoints/tokens",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(task_runtime::http::serve(
        listener,
        rt.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();

    let unauthenticated = http.post(&base_url).json(&json!({})).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let created: Value = http
        .post(&base_url)
        .bearer_auth(&acme)
        .json(&json!({ "timeout": "1h", "tags": ["api"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("token_"), "{created}");
    assert_eq!(created["isCached"], false);

    let run = rt
        .trigger(
            "approval",
            input(json!({ "probe": probe.name(), "token": token, "timeoutMs": 60_000 })),
        )
        .await
        .unwrap();
    let id = run.run_id().clone();
    until_status(&rt, &id, RunStatus::Waiting).await;

    let other_get = http
        .get(format!("{base_url}/{token}"))
        .bearer_auth(&globex)
        .send()
        .await
        .unwrap();
    assert_eq!(other_get.status(), 404);
    let other_complete = http
        .post(format!("{base_url}/{token}/complete"))
        .bearer_auth(&globex)
        .json(&json!({ "data": { "ok": false } }))
        .send()
        .await
        .unwrap();
    assert_eq!(other_complete.status(), 404);

    let shown: Value = http
        .get(format!("{base_url}/{token}"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "waiting");
    assert_eq!(shown["tenantId"], "acme");
    assert_eq!(shown["tags"], json!(["api"]));
    assert_eq!(shown["runId"], id.as_str());

    let complete = |key: String| {
        http.post(format!("{base_url}/{token}/complete"))
            .bearer_auth(key)
            .json(&json!({ "data": { "ok": true } }))
            .send()
    };
    let first: Value = complete(acme.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(first, json!({ "success": true, "outcome": "completed" }));
    let envelope = envelope_of(&rt, &id).await;
    assert_eq!(envelope.results["data"], json!({ "ok": true }));
    let second: Value = complete(acme.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(
        second,
        json!({ "success": false, "outcome": "alreadyCompleted" })
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A track whose two steps each sleep an hour: the track run waits twice, and each resume
/// replays what completed (the first step as a whole, then the second step's first
/// `ctx.step`), so every `ctx.step` executes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_track_whose_steps_sleep_waits_and_resumes_twice() {
    let url = sqlite_url("track");
    let clock = TestClock::new();
    let probe = Probe::new();
    let rt = runtime(&url, &clock).await;
    let worker = rt.worker().concurrency(1).start();
    let run = rt
        .trigger(
            "sleep_track",
            input(json!({ "probe": probe.name(), "sleepMs": HOUR.as_millis() as u64 })),
        )
        .await
        .unwrap();
    let id = run.run_id().clone();
    until_status(&rt, &id, RunStatus::Waiting).await;
    assert_eq!(
        (probe.count("step before"), probe.count("step after")),
        (1, 0)
    );
    clock.advance(HOUR + Duration::from_secs(1));
    // Woken, the first step finishes and the second one sleeps.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while probe.count("step before") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second step never began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_status(&rt, &id, RunStatus::Waiting).await;
    assert_eq!(probe.count("step after"), 1);
    clock.advance(HOUR + Duration::from_secs(1));
    let envelope = envelope_of(&rt, &id).await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(
        (probe.count("step before"), probe.count("step after")),
        (2, 2)
    );
    let steps = &envelope.metadata.steps;
    assert_eq!(steps.len(), 2);
    assert!(
        steps[0].replayed,
        "the first step replayed from the journal"
    );
    assert!(!steps[1].replayed);
    worker.shutdown(Duration::from_secs(5)).await;
}
