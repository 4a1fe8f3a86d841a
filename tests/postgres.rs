//! Durable runs on a real PostgreSQL (started by `task_tests::pg`), executed by workers in
//! this process: the same contract as the SQLite store (statuses, the journal, idempotency
//! across runtimes, delay, TTL, cancel, replay, stored logs), plus what only PostgreSQL has:
//! transactional enqueue inside the caller's transaction, a cancel reaching its worker
//! through NOTIFY long before a heartbeat, migrations raced by several processes, and clear
//! errors for a server that is not there. Worker processes, faults and queue limits across
//! workers are in `pg_chaos.rs`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use task_runtime::prelude::*;
use task_runtime::{CancelOutcome, RunFilter, RunStatus, Store, StoreError, TriggerOptions};
use task_tests::pg::{self, database_of};
use task_tests::probe::Probe;
use task_tests::*;

async fn durable(url: &str) -> (Runtime, Store) {
    let store = Store::connect(url).await.expect("store opens");
    let rt = Runtime::builder().store(store.clone()).build().unwrap();
    (rt, store)
}

fn json_of<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_run_is_stored_executed_by_a_worker_and_kept() {
    let url = pg::server().database("basic");
    let (rt, _store) = durable(&url).await;
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
    let done = rt.runs().get(&id).await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.envelope.unwrap(), envelope);
    assert!(done.started_at.unwrap() <= done.finished_at.unwrap());
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.executed, 1);

    // Another runtime on the same database sees it.
    let (other, _) = durable(&url).await;
    let listed = other
        .runs()
        .list(RunFilter::new().tenant("acme"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
}

/// As on SQLite: a finished run's envelope is stored without a second copy of its input
/// (see `task_tests::an_envelope_is_stored_once_beside_its_input`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_is_stored_without_a_second_copy_of_its_input() {
    let url = pg::server().database("envelope_input_once");
    let (rt, _store) = durable(&url).await;
    an_envelope_is_stored_once_beside_its_input(&rt, async |id, write| {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        if let Some(text) = write {
            sqlx::query("UPDATE task_runtime.runs SET envelope = $1 WHERE id = $2")
                .bind(text)
                .bind(id.as_str())
                .execute(&mut conn)
                .await
                .unwrap();
        }
        sqlx::query_scalar("SELECT envelope FROM task_runtime.runs WHERE id = $1")
            .bind(id.as_str())
            .fetch_one(&mut conn)
            .await
            .unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_input_is_refused_at_trigger_and_nothing_is_stored() {
    let url = pg::server().database("invalid");
    let (rt, _store) = durable(&url).await;
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
    let url = pg::server().database("journal");
    let (rt, _store) = durable(&url).await;
    let probe = Probe::new();
    // `retried_steps`: step 3 fails the first time it runs; the track retries.
    let input = WorkInput::new(&probe, "j", 0);
    let handle = rt.trigger("retried_steps", json_of(&input)).await.unwrap();
    let worker = rt.worker().start();
    let envelope = handle.wait().await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.metadata.attempts, 2);
    assert_eq!(probe.count("start work:j-1"), 1, "{:?}", probe.events());
    assert_eq!(probe.count("start work:j-2"), 1, "{:?}", probe.events());
    assert_eq!(
        probe.count("start flaky_step:j-3"),
        2,
        "{:?}",
        probe.events()
    );
    let steps = &envelope.metadata.steps;
    assert!(
        steps[0].replayed && steps[1].replayed && !steps[2].replayed,
        "{steps:?}"
    );
    let children = rt.runs().children(&envelope.job.run_id).await.unwrap();
    let positions: Vec<_> = children
        .iter()
        .map(|c| c.position.clone().unwrap())
        .collect();
    assert_eq!(positions, ["step:0", "step:1", "step:2"]);
    assert!(children.iter().all(|c| c.status == RunStatus::Completed));
    assert!(
        children
            .iter()
            .all(|c| c.root_run_id.as_ref() == Some(&envelope.job.run_id))
    );
    let info = rt.runs().get(&envelope.job.run_id).await.unwrap().unwrap();
    assert_eq!(info.retried.len(), 1, "{:?}", info.retried);
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_across_runtimes_sharing_the_database() {
    let url = pg::server().database("idempotency");
    let (a, _) = durable(&url).await;
    let (b, _) = durable(&url).await;
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
    // Triggered at once from both runtimes: still one run per key.
    let racing = (0..20).map(|i| {
        let rt = if i % 2 == 0 { a.clone() } else { b.clone() };
        let input = input.clone();
        async move {
            rt.trigger_with(
                "double",
                input,
                TriggerOptions::new().idempotency_key("race"),
            )
            .await
            .unwrap()
            .run_id()
            .clone()
        }
    });
    let ids = futures_join_all(racing).await;
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    assert_eq!(a.runs().list(RunFilter::new()).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_ttls_cancels_and_replays() {
    let url = pg::server().database("options");
    let (rt, _store) = durable(&url).await;
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
    let soon = rt
        .trigger_with(
            "double",
            input.clone(),
            TriggerOptions::new().delay(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let worker = rt.worker().lease(Duration::from_millis(300)).start();
    let expired = expiring.wait().await;
    assert_eq!(expired.error().unwrap().kind_name(), "expired");
    let soon_id = soon.run_id().clone();
    let ran = soon.wait().await;
    assert!(ran.job.success);
    let info = rt.runs().get(&soon_id).await.unwrap().unwrap();
    assert!(
        info.started_at.unwrap() >= info.run_at,
        "a delayed run does not start early"
    );
    let info = rt.runs().get(delayed.run_id()).await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Delayed);

    assert_eq!(
        rt.runs().cancel(delayed.run_id()).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let delayed_id = delayed.run_id().clone();
    let cancelled = delayed.wait().await;
    assert_eq!(cancelled.error().unwrap().kind_name(), "cancelled");
    assert_eq!(cancelled.metadata.attempts, 0);
    assert_eq!(
        rt.runs().cancel(&delayed_id).await.unwrap(),
        CancelOutcome::AlreadyFinished(RunStatus::Cancelled)
    );

    // Replay: a new run with the same input, linked to the original.
    let replayed = rt.runs().replay(&expired.job.run_id).await.unwrap();
    let replay = rt.runs().wait(&replayed).await.unwrap().unwrap();
    assert!(replay.job.success);
    assert_eq!(replay.results, json!({ "value": 4 }));
    let info = rt.runs().get(&replayed).await.unwrap().unwrap();
    assert_eq!(info.replay_of.as_ref(), Some(&expired.job.run_id));

    let tagged = rt
        .trigger_with("double", input, TriggerOptions::new().tags(["eu", "x"]))
        .await
        .unwrap();
    tagged.wait().await;
    let listed = rt.runs().list(RunFilter::new().tag("eu")).await.unwrap();
    assert_eq!(listed.len(), 1);
    let listed = rt
        .runs()
        .list(RunFilter::new().status(RunStatus::Expired))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_executing_run_through_notify_not_the_next_heartbeat() {
    let url = pg::server().database("cancel");
    let (worker_rt, _) = durable(&url).await;
    // The canceller is another runtime (as another process would be): no in-process
    // shortcut, and with a 30 s lease the next heartbeat is 10 s away.
    let (other, _) = durable(&url).await;
    let probe = Probe::new();
    let worker = worker_rt.worker().lease(Duration::from_secs(30)).start();
    let long = other
        .trigger("work", json_of(&WorkInput::new(&probe, "long", 60_000)))
        .await
        .unwrap();
    while probe.count("start") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    assert_eq!(
        other.runs().cancel(long.run_id()).await.unwrap(),
        CancelOutcome::Requested
    );
    let stopped = long.wait().await;
    let took = asked.elapsed();
    assert_eq!(stopped.error().unwrap().kind_name(), "cancelled");
    assert_eq!(probe.count("cleanup"), 1);
    assert!(took < Duration::from_secs(3), "cancel took {took:?}");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// An idle worker given runs one at a time claims once per run, not once per wake-up: the
/// `NOTIFY` of this process's own trigger and settle is not a second wake-up (their commits
/// woke it already), a run that ended is no reason to claim again before its settle is
/// written, nor is that settle where nothing else is queued. (It claimed five times per
/// run, four of them empty: each an index scan and a commit on the server.) Counted by the server itself
/// (`pg_stat_user_functions`, which a server process reports when it exits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_claims_once_per_run_it_is_given() {
    const RUNS: i64 = 20;
    let url = pg::server().database("claims_per_run");
    let db = database_of(&url).to_owned();
    pg::server()
        .psql(
            "postgres",
            &format!("ALTER DATABASE {db} SET track_functions = 'pl'"),
        )
        .unwrap();
    let (rt, store) = durable(&url).await;
    let worker = rt.worker().concurrency(4).start();
    for value in 0..RUNS {
        let input = json!({ "tenantId": "acme", "projectId": "docs", "value": value });
        let envelope = rt.trigger("double", input).await.unwrap().wait().await;
        assert!(envelope.job.success, "{:?}", envelope.job.error);
        assert_eq!(envelope.results, json!({ "value": 2 * value }));
    }
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.executed, u64::try_from(RUNS).unwrap());
    drop((rt, store));
    let gone = Instant::now();
    loop {
        let open = pg::server()
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = '{db}' AND application_name = 'task-runtime'"
                ),
            )
            .unwrap();
        if open == "0" {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(30),
            "the store's connections stayed open after it was dropped: {open}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let claims: i64 = pg::server()
        .psql(
            &db,
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
              WHERE schemaname = 'task_runtime' AND funcname = 'claim'",
        )
        .unwrap()
        .parse()
        .unwrap();
    // Each run: the claim that takes it; a few more for the worker's idle polls.
    assert!(
        (RUNS..=RUNS + 4).contains(&claims),
        "{claims} claims for {RUNS} runs"
    );
}

/// A heartbeat that finds one of its runs locked by another transaction (a settle of it, a
/// child's settle updating it as a parent) extends the others without waiting. Waiting, it
/// deadlocked with the worker's own settle, PostgreSQL broke the deadlock only after a
/// second, and by then short leases had run out and their runs were executed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_extends_its_other_leases_while_one_run_is_locked() {
    let url = pg::server().database("heartbeat_locked");
    let (rt, _) = durable(&url).await;
    let probe = Probe::new();
    // Heartbeats every 2 s.
    let worker = rt
        .worker()
        .concurrency(2)
        .lease(Duration::from_secs(6))
        .start();
    let locked = rt
        .trigger("gated", json_of(&WorkInput::new(&probe, "locked", 0)))
        .await
        .unwrap();
    let free = rt
        .trigger("gated", json_of(&WorkInput::new(&probe, "free", 0)))
        .await
        .unwrap();
    for handle in [&locked, &free] {
        eventually("both runs executing", Duration::from_secs(30), async || {
            let info = rt.runs().get(handle.run_id()).await.unwrap().unwrap();
            info.status == RunStatus::Executing
        })
        .await;
    }
    let mut reader = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let lease_sql = "SELECT lease_expires_at FROM task_runtime.runs WHERE id = $1";
    // Another transaction holds the row of one run, as a settle does while it runs.
    let mut tx = Connection::begin(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM task_runtime.runs WHERE id = $1 FOR UPDATE")
        .bind(locked.run_id().as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
    let before: i64 = sqlx::query_scalar(lease_sql)
        .bind(free.run_id().as_str())
        .fetch_one(&mut reader)
        .await
        .unwrap();
    eventually(
        "the next heartbeat extended the lease of the run not locked",
        Duration::from_secs(30),
        async || {
            let now: i64 = sqlx::query_scalar(lease_sql)
                .bind(free.run_id().as_str())
                .fetch_one(&mut reader)
                .await
                .unwrap();
            now > before
        },
    )
    .await;
    tx.rollback().await.unwrap();
    // The skipped run was not taken for lost: both end in their first attempt.
    probe.open_gate();
    for handle in [locked, free] {
        let envelope = handle.wait().await;
        assert!(envelope.job.success, "{:?}", envelope.job.error);
        assert_eq!(envelope.metadata.attempts, 1);
    }
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.executed, 2);
    assert_eq!(report.lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_in_commits_with_the_callers_transaction_or_not_at_all() {
    let url = pg::server().database("trigger_in");
    let (rt, _) = durable(&url).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE orders (id int PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .unwrap();
    let input = |v: i64| json!({ "tenantId": "acme", "projectId": "shop", "value": v });

    // Rolled back: neither the order nor the run exists.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let dropped = rt
        .trigger_in(&mut tx, "double", input(1), TriggerOptions::new())
        .await
        .unwrap();
    let dropped_id = dropped.run_id().clone();
    // Not visible outside the transaction before it commits.
    assert!(rt.runs().get(&dropped_id).await.unwrap().is_none());
    tx.rollback().await.unwrap();
    assert!(rt.runs().get(&dropped_id).await.unwrap().is_none());

    // Committed: both exist, and a worker runs it.
    let worker = rt.worker().start();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = rt
        .trigger_in(&mut tx, "double", input(2), TriggerOptions::new())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        rt.runs().get(kept.run_id()).await.unwrap().is_none(),
        "no worker sees it before the commit"
    );
    tx.commit().await.unwrap();
    let envelope = kept.wait().await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.results, json!({ "value": 4 }));
    let orders: Vec<i32> = sqlx::query_scalar("SELECT id FROM orders ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(orders, [2]);
    assert_eq!(rt.runs().list(RunFilter::new()).await.unwrap().len(), 1);

    // Validation as for any trigger; an idempotency key matching a live run returns it.
    let mut tx = conn.begin().await.unwrap();
    let refused = rt
        .trigger_in(
            &mut tx,
            "double",
            json!({ "value": 1 }),
            TriggerOptions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.error.kind_name(), "invalidInput");
    let unknown = rt
        .trigger_in(&mut tx, "dubble", input(1), TriggerOptions::new())
        .await
        .unwrap_err();
    assert_eq!(unknown.error.kind_name(), "notFound");
    let keyed = TriggerOptions::new().idempotency_key("k");
    let first = rt
        .trigger_in(&mut tx, "double", input(3), keyed.clone())
        .await
        .unwrap();
    let second = rt
        .trigger_in(&mut tx, "double", input(3), keyed)
        .await
        .unwrap();
    assert_eq!(first.run_id(), second.run_id());
    tx.commit().await.unwrap();
    assert!(first.wait().await.job.success);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// The CLI over the PostgreSQL store, as a user runs it: `trigger` in one process, a
/// `worker` in another, then `runs list|show|logs|cancel|replay` (the CLI keeps runs'
/// events in the store).
#[test]
fn the_runs_cli_works_on_postgres() {
    let url = pg::server().database("cli");
    let dir = std::env::temp_dir().join(format!("pg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fixture-app"))
            .args(args)
            .env("TASK_STORE", &url)
            .env("FIXTURE_LOG", dir.join("executions.log"))
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    };
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let input = r#"{"tenantId": "acme", "projectId": "docs", "label": "cli", "millis": 10}"#;
    let triggered = cli(&["trigger", "record_track", "--input", input, "--tag", "demo"]);
    assert!(
        triggered.status.success(),
        "{}",
        String::from_utf8_lossy(&triggered.stderr)
    );
    let id = stdout(&triggered);
    let listed: Value = serde_json::from_str(&stdout(&cli(&["runs", "list", "--json"]))).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "queued");

    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_fixture-app"))
        .args(["worker", "--concurrency", "4"])
        .env("TASK_STORE", &url)
        .env("FIXTURE_LOG", dir.join("executions.log"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let shown: Value =
            serde_json::from_str(&stdout(&cli(&["runs", "show", &id, "--json"]))).unwrap();
        if shown["status"] == "completed" {
            let positions: Vec<&str> = shown["children"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["position"].as_str().unwrap())
                .collect();
            assert_eq!(positions, ["step:0", "step:1", "step:2"]);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{shown}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its events, and those of its steps, were kept (written off the hot path: look until
    // they are there).
    let start = Instant::now();
    loop {
        let logs = stdout(&cli(&["runs", "logs", &id]));
        if logs.matches("run succeeded").count() == 4 {
            assert!(logs.contains(&format!("{id} run started")), "{logs}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the track and its 3 steps: {logs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let delayed = stdout(&cli(&[
        "trigger", "record", "--input", input, "--delay", "1h",
    ]));
    assert_eq!(
        stdout(&cli(&["runs", "cancel", &delayed])),
        format!("{delayed}: cancelled (it had not started)")
    );
    let replay = stdout(&cli(&["runs", "replay", &id]));
    assert!(replay.starts_with("run_") && replay != id);
    let waited = cli(&["trigger", "record", "--input", input, "--wait"]);
    let envelope: Value = serde_json::from_str(&stdout(&waited)).unwrap();
    assert_eq!(envelope["results"]["label"], "cli");
    let filtered: Value = serde_json::from_str(&stdout(&cli(&[
        "runs",
        "list",
        "--status",
        "cancelled",
        "--json",
    ])))
    .unwrap();
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(worker.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_migrating_at_once_apply_the_schema_once() {
    // Stores connecting at once in this process, and processes starting at once.
    let url = pg::server().database("migrate");
    for store in futures_join_all((0..6).map(|_| Store::connect(&url))).await {
        store.expect("every connect succeeds");
    }
    let url = pg::server().database("migrate_processes");
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_fixture-app"))
                .args(["--store", &url, "runs", "list", "--json"])
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
    }
    let applied = pg::server()
        .psql(
            database_of(&url),
            "SELECT count(*) || ' ' || count(DISTINCT version) FROM task_runtime._migrations",
        )
        .unwrap();
    // 1 to 4, 5 (children), 6 (trace context) and 7 (generic plans).
    assert_eq!(applied, "7 7", "each of the seven migrations applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_migrated_by_a_newer_binary_is_refused() {
    let url = pg::server().database("newer");
    drop(Store::connect(&url).await.unwrap());
    pg::server()
        .psql(
            database_of(&url),
            "INSERT INTO task_runtime._migrations (version, description, success, checksum, execution_time)
             VALUES (999, 'from the future', true, '\\x00', 0)",
        )
        .unwrap();
    let error = Store::connect(&url).await.unwrap_err();
    assert!(
        matches!(error, StoreError::NewerSchema { found: 999, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("upgrade the binary"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_absent_servers_are_clear_errors() {
    let server = pg::server();
    let error = Store::connect("postgres://u@127.0.0.1:1/x?max_connections=0")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::InvalidUrl { .. }), "{error}");
    assert!(error.to_string().contains("max_connections"), "{error}");

    // Nothing listens on that port: unavailable, with the URL but not the password.
    let error = Store::connect("postgres://app:s3cret@127.0.0.1:1/x")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("127.0.0.1:1") && !text.contains("s3cret"),
        "{text}"
    );

    // A database that does not exist.
    let error = Store::connect(&server.url("no_such_database"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "{error}");
    assert!(error.to_string().contains("no_such_database"), "{error}");

    // trigger_in on a database the store never migrated.
    let url = server.database("bare");
    let other = server.database("migrated");
    let (rt, _) = durable(&other).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let refused = rt
        .trigger_in(
            &mut tx,
            "double",
            json!({ "tenantId": "a", "projectId": "p", "value": 1 }),
            TriggerOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(
        refused.error.to_string().contains("has no run store"),
        "{}",
        refused.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_limits_on_one_worker_let_other_keys_proceed() {
    let url = pg::server().database("keys_local");
    let (rt, _) = durable(&url).await;
    let probe = Probe::new();
    let mut handles = Vec::new();
    // Tenant a's backlog first, then b's and c's: one at a time per tenant.
    for (tenant, n) in [("a", 6), ("b", 3), ("c", 3)] {
        for i in 0..n {
            let mut input = WorkInput::new(&probe, &format!("{tenant}{i}"), 30);
            input.base = BaseInput::new(tenant, "p");
            let options = TriggerOptions::new().concurrency_key(tenant);
            handles.push(
                rt.trigger_with("work", json_of(&input), options)
                    .await
                    .unwrap(),
            );
        }
    }
    let worker = rt.worker().concurrency(8).start();
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
    // b and c did not wait for a's backlog.
    let first_of = |tenant: &str| intervals_of(&runs, tenant)[0].0;
    let last_a = intervals_of(&runs, "a").last().unwrap().0;
    assert!(first_of("b") < last_a && first_of("c") < last_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_steps_are_journaled_and_a_reordered_replay_is_stopped() {
    let url = pg::server().database("steps");
    let (rt, _store) = durable(&url).await;
    let worker = rt.worker().concurrency(2).start();
    let input = json!({ "tenantId": "t", "projectId": "p", "label": "o" });
    let handle = rt.trigger("reordered_steps", input).await.unwrap();
    let id = handle.run_id().clone();
    let envelope = handle.wait().await;
    assert!(!envelope.job.success);
    let error = envelope.job.error_detail.as_ref().unwrap();
    assert!(!error.is_retryable());
    assert!(
        envelope
            .job
            .error
            .as_deref()
            .unwrap()
            .starts_with("step 0 is `email` in this attempt, but the run recorded `charge`"),
        "{:?}",
        envelope.job.error
    );
    assert_eq!(envelope.metadata.attempts, 2);
    // The first attempt's two steps are rows under the run, with their outputs.
    let mut children: Vec<(String, RunStatus)> = rt
        .runs()
        .children(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.task, c.status))
        .collect();
    children.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        children,
        [
            ("charge".to_owned(), RunStatus::Completed),
            ("email".to_owned(), RunStatus::Completed)
        ]
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A claim reads due runs through their partial index, never the whole table. A claim once
/// joined its rows back to `runs` through a hash of every row, so each claim read the whole
/// table: a drain cost about N² / batch row reads, and drained 1 200 runs/s instead of
/// 12 000 in the peers benchmark. 50 000 finished runs sit in the table (so any scan of it
/// reads at least that many rows, and no healthy plan would choose one), then 2 000 are
/// drained: the table's sequential-scan counter says whether anything read it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_reads_runs_by_index_not_by_scanning_the_table() {
    const FINISHED: usize = 50_000;
    const RUNS: usize = 2_000;
    let url = pg::server().database("claim_plan");
    let db = database_of(&url).to_owned();
    let server = pg::server();
    {
        let (rt, _store) = durable(&url).await;
        server
            .psql(
                &db,
                &format!(
                    "INSERT INTO task_runtime.runs
                         (id, task, tenant_id, status, input, run_at, created_at, finished_at)
                     SELECT 'run_' || lpad(g::text, 26, '0'), 'double', 'acme', 'completed',
                            '{{}}', 0, 0, 0
                       FROM generate_series(1, {FINISHED}) AS g"
                ),
            )
            .unwrap();
        let inputs = (0..RUNS)
            .map(|i| json!({ "tenantId": "acme", "projectId": "docs", "value": i % 1000 }))
            .collect();
        let handles = rt
            .trigger_batch("double", inputs, TriggerOptions::new())
            .await
            .unwrap();
        let worker = rt.worker().concurrency(16).start();
        for handle in handles {
            assert!(handle.wait().await.job.success);
        }
        let report = worker.shutdown(Duration::from_secs(10)).await;
        assert_eq!(report.executed, RUNS as u64);
    }
    // Every connection of the runtime closed: their backends wrote their statistics as
    // they exited.
    let deadline = Instant::now() + Duration::from_secs(30);
    let others = "SELECT count(*) FROM pg_stat_activity \
                  WHERE datname = current_database() AND pid <> pg_backend_pid()";
    while server.psql(&db, others).unwrap() != "0" {
        assert!(
            Instant::now() < deadline,
            "the runtime's connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = server
        .psql(
            &db,
            "SELECT seq_scan || ' ' || seq_tup_read FROM pg_stat_user_tables \
             WHERE schemaname = 'task_runtime' AND relname = 'runs'",
        )
        .unwrap();
    let (scans, rows) = read.split_once(' ').expect("two counters");
    let rows: usize = rows.parse().unwrap();
    assert!(
        rows < FINISHED,
        "{rows} rows read by {scans} sequential scans of runs while draining {RUNS} runs \
         beside {FINISHED} finished ones: something read the whole table"
    );
}
