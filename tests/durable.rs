//! Durable runs on a real SQLite file, executed by a worker in this process: statuses,
//! the journal (a retried track executes only the step that failed), idempotency across
//! runtimes sharing the file, delay, TTL, cancel, replay, stored logs, bad store URLs and
//! files. Process-level crash tests are in `crash.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use task_runtime::prelude::*;
use task_runtime::{CancelOutcome, RunFilter, RunStatus, Store, StoreError, TriggerOptions};
use task_tests::probe::Probe;
use task_tests::*;

/// A fresh directory for one test's store files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("durable-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn url(dir: &std::path::Path) -> String {
    format!("sqlite://{}/runs.db", dir.display())
}

async fn durable(dir: &std::path::Path) -> (Runtime, Store) {
    let store = Store::connect(&url(dir)).await.expect("store opens");
    let rt = Runtime::builder().store(store.clone()).build().unwrap();
    (rt, store)
}

fn json_of<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_run_is_stored_executed_by_a_worker_and_kept() {
    let dir = scratch("basic");
    let (rt, _store) = durable(&dir).await;
    let input = json!({ "tenantId": "acme", "projectId": "docs", "value": 21 });
    let handle = rt.trigger("double", input.clone()).await.unwrap();
    let id = handle.run_id().clone();
    let queued = rt.runs().get(&id).await.unwrap().unwrap();
    assert_eq!(queued.status, RunStatus::Queued);
    assert_eq!(queued.input, input);

    let worker = rt.worker().concurrency(4).start();
    let envelope = handle.wait().await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.results, json!({ "value": 42 }));
    assert_eq!(envelope.job.run_id, id);
    let done = rt.runs().get(&id).await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.envelope.unwrap(), envelope);
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.executed, 1);

    // Another runtime on the same file sees it.
    let (other, _) = durable(&dir).await;
    let listed = other
        .runs()
        .list(RunFilter::new().tenant("acme"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_input_is_refused_at_trigger_and_nothing_is_stored() {
    let dir = scratch("invalid");
    let (rt, _store) = durable(&dir).await;
    let refused = rt
        .trigger(
            "double",
            json!({ "tenantId": "acme", "projectId": "docs", "value": "x" }),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.error.kind_name(), "invalidInput");
    assert!(rt.runs().list(RunFilter::new()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_track_executes_only_the_step_that_failed() {
    let dir = scratch("journal");
    let (rt, _store) = durable(&dir).await;
    let probe = Probe::new();
    // `retried_steps`: step 3 fails the first time it runs; the track retries.
    let input = WorkInput::new(&probe, "j", 0);
    let handle = rt.trigger("retried_steps", json_of(&input)).await.unwrap();
    let worker = rt.worker().start();
    let envelope = handle.wait().await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.metadata.attempts, 2);
    // Steps 1 and 2 ran once; step 3 twice (failed, then succeeded).
    assert_eq!(probe.count("start work:j-1"), 1, "{:?}", probe.events());
    assert_eq!(probe.count("start work:j-2"), 1, "{:?}", probe.events());
    assert_eq!(
        probe.count("start flaky_step:j-3"),
        2,
        "{:?}",
        probe.events()
    );
    let steps = &envelope.metadata.steps;
    assert_eq!(steps.len(), 3);
    assert!(
        steps[0].replayed && steps[1].replayed && !steps[2].replayed,
        "{steps:?}"
    );
    // The children are rows of the tree.
    let children = rt.runs().children(handle_id(&envelope)).await.unwrap();
    let positions: Vec<_> = children
        .iter()
        .map(|c| c.position.clone().unwrap())
        .collect();
    assert_eq!(positions, ["step:0", "step:1", "step:2"]);
    assert!(children.iter().all(|c| c.status == RunStatus::Completed));
    worker.shutdown(Duration::from_secs(5)).await;
}

fn handle_id(envelope: &RunOutput<Value>) -> &task_runtime::RunId {
    &envelope.job.run_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_across_runtimes_sharing_the_file() {
    let dir = scratch("idempotency");
    let (a, _) = durable(&dir).await;
    let (b, _) = durable(&dir).await;
    let input = json!({ "tenantId": "acme", "projectId": "docs", "value": 1 });
    let key = || TriggerOptions::new().idempotency_key("order-42");
    let first = a
        .trigger_with("double", input.clone(), key())
        .await
        .unwrap();
    let second = b
        .trigger_with("double", input.clone(), key())
        .await
        .unwrap();
    assert_eq!(first.run_id(), second.run_id());
    let other_tenant = json!({ "tenantId": "globex", "projectId": "docs", "value": 1 });
    let third = b.trigger_with("double", other_tenant, key()).await.unwrap();
    assert_ne!(third.run_id(), first.run_id());
    assert_eq!(a.runs().list(RunFilter::new()).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_ttls_cancels_and_replays() {
    let dir = scratch("options");
    let (rt, _store) = durable(&dir).await;
    let input = json!({ "tenantId": "acme", "projectId": "docs", "value": 2 });
    let delayed = rt
        .trigger_with(
            "double",
            input.clone(),
            TriggerOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let expiring = rt
        .trigger_with(
            "double",
            input.clone(),
            TriggerOptions::new()
                .delay(Duration::from_millis(300))
                .ttl(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let worker = rt.worker().lease(Duration::from_millis(300)).start();
    let expired = expiring.wait().await;
    assert_eq!(expired.error().unwrap().kind_name(), "expired");
    let info = rt.runs().get(delayed.run_id()).await.unwrap().unwrap();
    assert_eq!(
        info.status,
        RunStatus::Delayed,
        "an hour's delay does not start early"
    );

    // Cancel a queued run: at once, never executed.
    assert_eq!(
        rt.runs().cancel(delayed.run_id()).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let cancelled = delayed.wait().await;
    assert_eq!(cancelled.error().unwrap().kind_name(), "cancelled");
    assert_eq!(cancelled.metadata.attempts, 0);

    // Cancel an executing run: cooperatively, its cleanup runs.
    let probe = Probe::new();
    let long = rt
        .trigger("work", json_of(&WorkInput::new(&probe, "long", 60_000)))
        .await
        .unwrap();
    while probe.count("start") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        rt.runs().cancel(long.run_id()).await.unwrap(),
        CancelOutcome::Requested
    );
    let stopped = long.wait().await;
    assert_eq!(stopped.error().unwrap().kind_name(), "cancelled");
    assert_eq!(probe.count("cleanup"), 1);

    // Replay: a new run with the same input, linked to the original.
    let replayed = rt.runs().replay(&expired.job.run_id).await.unwrap();
    let replay = rt.runs().wait(&replayed).await.unwrap().unwrap();
    assert!(replay.job.success);
    assert_eq!(replay.results, json!({ "value": 4 }));
    let info = rt.runs().get(&replayed).await.unwrap().unwrap();
    assert_eq!(info.replay_of.as_ref(), Some(&expired.job.run_id));
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_files_are_clear_errors() {
    for (url, expected) in [
        ("postgres2://x", "unknown scheme"),
        ("runs.db", "expected a URL"),
        ("sqlite://", "no file path"),
        (
            "sqlite://x.db?synchronous=sometimes",
            "synchronous must be normal or full",
        ),
        ("sqlite://x.db?cache=big", "unknown parameter `cache`"),
    ] {
        let error = Store::connect(url).await.unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidUrl { .. }),
            "{url}: {error}"
        );
        assert!(error.to_string().contains(expected), "{url}: {error}");
    }
    let dir = scratch("files");
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
    let error = Store::connect(&format!("sqlite://{}", garbage.display()))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotAStore { .. }), "{error}");
    assert!(error.to_string().contains("garbage.db"), "{error}");
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![b'x'; 8192],
        "the file is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_written_is_a_clear_error() {
    // Even root cannot create files under /proc.
    let error = Store::connect("sqlite:///proc/task-runtime-test/runs.db")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("/proc/task-runtime-test/runs.db"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_new_runs_and_keeps_the_committed_ones() {
    let dir = scratch("full");
    // 64 pages of 4 KiB: the schema and a few runs fit, a large input does not.
    let store = Store::connect(&format!("{}?max_pages=64", url(&dir)))
        .await
        .unwrap();
    let rt = Runtime::builder().store(store).build().unwrap();
    let small = json!({ "tenantId": "acme", "projectId": "docs", "value": 1 });
    let kept = rt.trigger("double", small.clone()).await.unwrap();
    let mut refused = None;
    for i in 0..400 {
        let big = json!({ "tenantId": "acme", "projectId": "docs", "value": 1, "trampData": { "pad": "x".repeat(2000 + i) } });
        match rt.trigger("double", big).await {
            Ok(_) => continue,
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("the store filled up");
    assert_eq!(refused.error.kind_name(), "rejected");
    assert!(
        refused.error.to_string().contains("is full"),
        "{}",
        refused.error
    );
    // What was committed before is intact and readable, by this process and another one.
    let info = rt.runs().get(kept.run_id()).await.unwrap().unwrap();
    assert_eq!(info.input, small);
    assert_eq!(info.status, RunStatus::Queued);
    let (other, _) = durable(&dir).await;
    let listed = other
        .runs()
        .list(RunFilter::new().limit(1000))
        .await
        .unwrap();
    assert!(listed.iter().any(|run| &run.id == kept.run_id()));
    assert!(listed.iter().all(|run| run.status == RunStatus::Queued));
    // The refused write left no transaction open: the writer still commits a change.
    rt.runs().cancel(kept.run_id()).await.unwrap();
    let info = other.runs().get(kept.run_id()).await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_among_concurrent_ones_loses_none_of_the_others() {
    let dir = scratch("refused-among");
    let (rt, _store) = durable(&dir).await;
    // A constraint of the user's own (a trigger on the file) refuses one run's insert.
    {
        use sqlx::Connection;
        let db = dir.join("runs.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON runs WHEN NEW.input LIKE '%poison%'
             BEGIN SELECT RAISE(ABORT, 'poisoned input'); END",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
    // Triggered at once, so the writer takes many of them in one transaction: the refused
    // insert rolls it back, and every other run must be applied again, and only once.
    let triggers = (0..60).map(|i| {
        let note = if i == 30 { "poison" } else { "fine" };
        let input = json!({ "tenantId": "acme", "projectId": "docs", "value": i, "trampData": { "note": note } });
        let rt = &rt;
        async move { rt.trigger("double", input).await }
    });
    let results = futures_util::future::join_all(triggers).await;
    let mut ids = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(handle) => {
                assert_ne!(i, 30, "the poisoned run was stored");
                ids.push((i, handle.run_id().clone()));
            }
            Err(error) => {
                assert_eq!(i, 30, "run {i} was refused: {}", error.error);
                assert!(
                    error.error.to_string().contains("poisoned input"),
                    "{}",
                    error.error
                );
            }
        }
    }
    assert_eq!(ids.len(), 59);
    for (i, id) in &ids {
        let info = rt.runs().get(id).await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Queued);
        assert_eq!(info.input["value"], json!(i));
    }
    let listed = rt.runs().list(RunFilter::new().limit(1000)).await.unwrap();
    assert_eq!(listed.len(), 59, "no run stored twice, none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_migrated_by_a_newer_binary_is_refused() {
    let dir = scratch("newer");
    drop(Store::connect(&url(&dir)).await.unwrap());
    // What a newer binary would have recorded: a migration this one does not know.
    let db = dir.join("runs.db");
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (999, 'from the future', 1, x'00', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let error = Store::connect(&url(&dir)).await.unwrap_err();
    assert!(
        matches!(error, StoreError::NewerSchema { found: 999, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("upgrade the binary"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_locked_past_the_busy_timeout_is_a_clear_error_and_loses_nothing() {
    let dir = scratch("locked");
    let store = Store::connect(&format!("{}?busy_timeout_ms=200", url(&dir)))
        .await
        .unwrap();
    let rt = Runtime::builder().store(store).build().unwrap();
    let first = rt
        .trigger(
            "double",
            json!({ "tenantId": "a", "projectId": "p", "value": 1 }),
        )
        .await
        .unwrap();
    use sqlx::Connection;
    let mut holder =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}/runs.db", dir.display()))
            .await
            .unwrap();
    let tx = holder.begin_with("BEGIN EXCLUSIVE").await.unwrap();
    let refused = rt
        .trigger(
            "double",
            json!({ "tenantId": "a", "projectId": "p", "value": 2 }),
        )
        .await
        .unwrap_err();
    assert!(
        refused
            .error
            .to_string()
            .contains("is locked by another process"),
        "{}",
        refused.error
    );
    tx.rollback().await.unwrap();
    let again = rt
        .trigger(
            "double",
            json!({ "tenantId": "a", "projectId": "p", "value": 2 }),
        )
        .await;
    assert!(again.is_ok(), "the lock is gone");
    assert!(rt.runs().get(first.run_id()).await.unwrap().is_some());
}

/// Per-key limits on SQLite: one run at a time per tenant, while other tenants' runs and
/// runs without a key proceed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_limits_hold_while_other_keys_and_keyless_runs_proceed() {
    let dir = scratch("keys");
    let (rt, _store) = durable(&dir).await;
    let probe = Probe::new();
    let trigger = |name: String, tenant: &'static str, keyed: bool| {
        let (rt, probe) = (rt.clone(), probe.clone());
        async move {
            let mut input = WorkInput::new(&probe, &name, 30);
            input.base = BaseInput::new(tenant, "p");
            let options = if keyed {
                TriggerOptions::new().concurrency_key(tenant)
            } else {
                TriggerOptions::new()
            };
            rt.trigger_with("work", json_of(&input), options)
                .await
                .unwrap()
        }
    };
    let mut handles = Vec::new();
    for i in 0..4 {
        handles.push(trigger(format!("alone{i}"), "alone", false).await);
    }
    let worker = rt.worker().concurrency(8).start();
    for handle in handles.drain(..) {
        assert!(handle.wait().await.job.success);
    }
    // Tenant a's backlog first, then b's and c's, and keyless runs among them.
    for (tenant, n) in [("a", 6), ("b", 3), ("c", 3)] {
        for i in 0..n {
            handles.push(trigger(format!("{tenant}{i}"), tenant, true).await);
        }
        handles.push(trigger(format!("free-{tenant}"), "free", false).await);
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.run_id().clone());
        assert!(handle.wait().await.job.success);
    }
    worker.shutdown(Duration::from_secs(5)).await;
    let mut runs = Vec::new();
    for id in &ids {
        runs.push(rt.runs().get(id).await.unwrap().unwrap());
    }
    for tenant in ["a", "b", "c"] {
        assert_one_at_a_time(&runs, tenant);
    }
    // b, c and the keyless runs did not wait for a's backlog.
    let last_a = intervals_of(&runs, "a").last().unwrap().0;
    for other in ["b", "c", "free"] {
        assert!(
            intervals_of(&runs, other)[0].0 < last_a,
            "{other} waited for a's backlog"
        );
    }
    // Each run executed once: 4 keyless alone, 12 keyed, 3 keyless among them.
    assert_eq!(probe.count("start work:"), 4 + 12 + 3);
}

/// A worker claims runs ahead of its free slots only when they are short (the store then
/// commits the next claim while they execute). Runs of 100 ms are claimed no further than
/// its slots: the others stay queued for any worker, none waits in this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_runs_are_not_claimed_ahead_of_the_free_slots() {
    let dir = scratch("slow-not-ahead");
    let (rt, _store) = durable(&dir).await;
    let probe = Probe::new();
    let mut handles = Vec::new();
    for i in 0..8 {
        let input = WorkInput::new(&probe, &format!("slow-{i}"), 100);
        handles.push(rt.trigger("work", json_of(&input)).await.unwrap());
    }
    let worker = rt.worker().concurrency(2).start();
    let count = async |status| {
        rt.runs()
            .list(RunFilter::new().status(status))
            .await
            .unwrap()
            .len()
    };
    // Claimed ahead: executing in the store beyond the two slots and the runs that
    // finished and are not yet recorded completed (their settle on its way: their slots
    // are free, and may be claimed again). Read in this order, a run that moves on between
    // the reads is counted as finished, never as claimed ahead. (Counting runs started
    // instead counted a claimed run that was about to start as one claimed ahead.)
    let mut most_ahead = 0;
    eventually("the runs finish", Duration::from_secs(60), async || {
        let completed = count(RunStatus::Completed).await;
        let executing = count(RunStatus::Executing).await;
        let finished = probe.count("finish");
        let allowed = 2 + finished.saturating_sub(completed);
        most_ahead = most_ahead.max(executing.saturating_sub(allowed));
        completed == handles.len()
    })
    .await;
    assert_eq!(most_ahead, 0, "no run was claimed ahead of a free slot");
    assert_eq!(probe.max_running(), 2);
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.executed, 8);
}

/// A finished run's envelope is stored without a second copy of its input (see
/// `task_tests::an_envelope_is_stored_once_beside_its_input`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_is_stored_without_a_second_copy_of_its_input() {
    use sqlx::Connection;
    let dir = scratch("envelope-input-once");
    let (rt, _store) = durable(&dir).await;
    let db = dir.join("runs.db");
    let url = format!("sqlite://{}", db.display());
    an_envelope_is_stored_once_beside_its_input(&rt, async |id, write| {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        if let Some(text) = write {
            sqlx::query("UPDATE runs SET envelope = ?1 WHERE id = ?2")
                .bind(text)
                .bind(id.as_str())
                .execute(&mut conn)
                .await
                .unwrap();
        }
        sqlx::query_scalar("SELECT envelope FROM runs WHERE id = ?1")
            .bind(id.as_str())
            .fetch_one(&mut conn)
            .await
            .unwrap()
    })
    .await;
}
