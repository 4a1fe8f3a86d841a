//! Children on any worker, on SQLite and on PostgreSQL: an orchestrator's `each` items are
//! runs of their own, claimed by any `fixture-app` worker process sharing the store, while
//! the parent waits without a worker slot; fail-fast cancels the queued siblings of a failed
//! item, settle keeps every outcome, a worker killed with `kill -9` duplicates no child, and
//! a cancelled parent leaves no child running.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use task_runtime::{RunId, RunInfo, RunStatus, Runtime, Store};
use task_tests::procs::{KillOnDrop as Worker, signal};
use task_tests::{eventually, pg};

const APP: &str = env!("CARGO_BIN_EXE_fixture-app");

struct Scene {
    dir: PathBuf,
    url: String,
    log: PathBuf,
}

impl Scene {
    /// A scene on a SQLite file of its own.
    fn sqlite(name: &str) -> Scene {
        let dir = Self::dir(name, "sqlite");
        Scene {
            url: format!("sqlite://{}/runs.db", dir.display()),
            log: dir.join("executions.log"),
            dir,
        }
    }

    /// A scene on a database of its own in this binary's PostgreSQL server.
    fn postgres(name: &str) -> Scene {
        let dir = Self::dir(name, "postgres");
        Scene {
            url: pg::server().database(&format!("children_{name}")),
            log: dir.join("executions.log"),
            dir,
        }
    }

    fn dir(name: &str, store: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("children-{name}-{store}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A worker with a lease long enough that a loaded machine's stall does not expire it.
    fn worker(&self, name: &str, concurrency: u32) -> Worker {
        self.worker_with_lease(name, concurrency, "5s")
    }

    /// A worker whose leases expire after `lease` (short: a killed worker's runs are
    /// reclaimed soon).
    fn worker_with_lease(&self, name: &str, concurrency: u32, lease: &str) -> Worker {
        let stderr = std::fs::File::create(self.dir.join(format!("{name}.stderr"))).unwrap();
        let child = Command::new(APP)
            .args([
                "--store",
                &self.url,
                "worker",
                "--concurrency",
                &concurrency.to_string(),
                "--lease",
                lease,
                "--grace",
                "5s",
            ])
            .env("FIXTURE_LOG", &self.log)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the worker starts");
        Worker(child)
    }

    /// Every execution line: (run id, task, label, pid, attempt).
    fn executions(&self) -> Vec<(String, String, String, u32, u32)> {
        task_tests::recorder::executions(&self.log)
    }

    /// How often each label executed.
    fn executed(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (_, _, label, _, _) in self.executions() {
            *counts.entry(label).or_default() += 1;
        }
        counts
    }

    /// How often the parent suspended to wait, read from its row.
    async fn waits(&self, id: &RunId) -> i64 {
        use sqlx::Connection;
        if self.url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            let waits: i32 =
                sqlx::query_scalar("SELECT waits FROM task_runtime.runs WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            return i64::from(waits);
        }
        let path = self.dir.join("runs.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT waits FROM runs WHERE id = ?1")
            .bind(id.as_str())
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}

/// Each scenario on both durable stores: `name` on SQLite, `name_on_postgres` on PostgreSQL.
macro_rules! on_both_stores {
    ($($name:ident => $body:ident,)*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$body(super::Scene::sqlite(stringify!($name))).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$body(super::Scene::postgres(stringify!($name))).await;
                }
            )*
        }
    };
}

on_both_stores! {
    each_over_1000_items_runs_on_two_worker_processes_while_the_parent_holds_no_slot => two_workers,
    a_failing_item_fails_the_parent_and_cancels_its_queued_siblings => fail_fast,
    settle_completes_with_every_item_s_outcome => settle,
    killing_a_worker_mid_fan_out_duplicates_no_child => kill9,
    a_retried_parent_runs_its_failed_child_again_at_the_same_position => retried,
    cancelling_a_waiting_parent_cancels_its_unfinished_children => cancel_waiting,
    children_inherit_the_parents_tramp_data_which_is_stored_once => inherit,
}

async fn runtime(scene: &Scene) -> Runtime {
    let store = Store::connect(&scene.url).await.unwrap();
    Runtime::builder().store(store).build().unwrap()
}

fn fan(count: usize, millis: u64, fail: &[usize]) -> Value {
    json!({ "tenantId": "t", "projectId": "p", "count": count, "millis": millis, "fail": fail })
}

/// The parent's envelope, once it finished (bounded, so a lost wake fails the test).
async fn finished(rt: &Runtime, id: &RunId) -> task_runtime::RunOutput<Value> {
    tokio::time::timeout(Duration::from_secs(180), rt.runs().wait(id))
        .await
        .expect("the parent finishes")
        .unwrap()
        .expect("the parent exists")
}

/// How long a wait for a scene to reach a state may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn items_of(children: &[RunInfo]) -> Vec<&RunInfo> {
    children
        .iter()
        .filter(|c| {
            c.position
                .as_deref()
                .is_some_and(|p| p.starts_with("item:"))
        })
        .collect()
}

async fn two_workers(scene: Scene) {
    let rt = runtime(&scene).await;
    // One slot each: a parent that kept its slot while it waits would leave its worker
    // unable to execute a single item.
    let w1 = scene.worker("w1", 1);
    let w2 = scene.worker("w2", 1);
    let handle = rt.trigger("fan", fan(1000, 1, &[])).await.unwrap();
    let parent = handle.run_id().clone();
    let envelope = finished(&rt, &parent).await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);

    // Every item's output, in item order.
    let items = envelope.results["items"].as_array().unwrap();
    assert_eq!(items.len(), 1000);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["label"], format!("i{i}"), "item {i} in its place");
    }
    // Executed by both processes.
    let pids: HashSet<u64> = items.iter().map(|i| i["pid"].as_u64().unwrap()).collect();
    let workers: HashSet<u64> = [w1.id(), w2.id()].into_iter().map(u64::from).collect();
    assert_eq!(pids, workers, "both workers executed items");
    // Each item executed exactly once, and is one row of its own at its position.
    let executed = scene.executed();
    for i in 0..1000 {
        assert_eq!(
            executed.get(&format!("i{i}")),
            Some(&1),
            "item i{i} ran once"
        );
    }
    let children = rt.runs().children(&parent).await.unwrap();
    let items = items_of(&children);
    assert_eq!(items.len(), 1000, "one row per item");
    let positions: HashSet<&str> = items.iter().filter_map(|c| c.position.as_deref()).collect();
    assert_eq!(positions.len(), 1000);
    assert!(items.iter().all(|c| c.status == RunStatus::Completed));
    assert!(
        items
            .iter()
            .all(|c| c.parent_run_id.as_ref() == Some(&parent)),
        "each item names its parent"
    );
    // The parent waited (suspended, no slot) rather than executing its items itself.
    assert!(scene.waits(&parent).await >= 1, "the parent suspended");
    // Children are not top-level runs.
    let listed = rt
        .runs()
        .list(task_runtime::RunFilter::new())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "only the parent is listed");
}

async fn fail_fast(scene: Scene) {
    let rt = runtime(&scene).await;
    let _w = scene.worker("w1", 2);
    let handle = rt.trigger("fan", fan(300, 5, &[5])).await.unwrap();
    let parent = handle.run_id().clone();
    let envelope = finished(&rt, &parent).await;
    assert!(!envelope.job.success);
    let error = envelope.job.error.clone().unwrap();
    assert!(
        error.contains("branch 'items' item 5 failed"),
        "the error names the item: {error}"
    );
    // Nothing is left running or queued, some siblings were cancelled, and the items past
    // the window were never enqueued.
    let mut children = Vec::new();
    eventually("every child ended", PATIENCE, async || {
        children = rt.runs().children(&parent).await.unwrap();
        children.iter().all(|c| c.status.is_finished())
    })
    .await;
    let items = items_of(&children);
    assert!(items.len() <= 100, "at most the window was enqueued");
    let cancelled = items
        .iter()
        .filter(|c| c.status == RunStatus::Cancelled)
        .count();
    assert!(cancelled > 0, "queued siblings were cancelled");
    let executed = scene.executed();
    assert!(executed.len() < 301, "not every item executed");
}

async fn settle(scene: Scene) {
    let rt = runtime(&scene).await;
    let _w = scene.worker("w1", 2);
    let handle = rt.trigger("fan_settle", fan(20, 0, &[3, 7])).await.unwrap();
    let envelope = finished(&rt, handle.run_id()).await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    let items = envelope.results["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    for (i, item) in items.iter().enumerate() {
        if i == 3 || i == 7 {
            let message = item["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(&format!("item i{i} fails on purpose")),
                "item {i}: {item}"
            );
        } else {
            assert_eq!(item["ok"]["label"], format!("i{i}"), "item {i}: {item}");
        }
    }
    assert_eq!(envelope.results["lead"]["ok"]["label"], "lead");
    let executed = scene.executed();
    assert_eq!(executed.len(), 21, "every item and the lead executed");
}

async fn kill9(scene: Scene) {
    let rt = runtime(&scene).await;
    let mut w1 = scene.worker_with_lease("w1", 4, "1s");
    // The kill may find the parent itself executing (woken to enqueue the next window):
    // that attempt is lost too, and retried.
    let handle = rt.trigger("fan_durable", fan(400, 5, &[])).await.unwrap();
    let parent = handle.run_id().clone();
    eventually(
        "a first share of the items executed",
        PATIENCE,
        async || scene.executions().len() >= 60,
    )
    .await;
    let killed = w1.0.id();
    signal(&w1.0, "KILL");
    w1.0.wait().unwrap();
    let _w2 = scene.worker_with_lease("w2", 4, "1s");
    let envelope = finished(&rt, &parent).await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    let items = envelope.results["items"].as_array().unwrap();
    assert_eq!(items.len(), 400);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["label"], format!("i{i}"));
    }
    let children = rt.runs().children(&parent).await.unwrap();
    let items = items_of(&children);
    assert_eq!(items.len(), 400, "one row per item, none enqueued twice");
    // Only what the killed worker held ran twice: its 4 slots, plus at most twice as many
    // runs again whose settle it had not written yet (the worker's bound, as in
    // tests/crash.rs).
    let executed = scene.executed();
    assert_eq!(executed.len(), 401, "every item and the lead executed");
    let twice = executed.values().filter(|n| **n > 1).count();
    assert!(twice <= 3 * 4, "{twice} items executed more than once");
    // And each of those first ran in the killed worker: the second worker executed none of
    // its own runs twice.
    let mut first = HashMap::new();
    for (_, _, label, pid, _) in scene.executions() {
        if let Some(&earlier) = first.get(&label) {
            assert_eq!(
                earlier, killed,
                "{label} ran twice, first in {earlier}, not killed"
            );
        } else {
            first.insert(label, pid);
        }
    }
}

async fn retried(scene: Scene) {
    let rt = runtime(&scene).await;
    let _w = scene.worker("w1", 2);
    let handle = rt.trigger("fan_retried", fan(10, 0, &[4])).await.unwrap();
    let parent = handle.run_id().clone();
    let envelope = finished(&rt, &parent).await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.metadata.attempts, 2, "the parent was retried once");
    let items = envelope.results["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["label"], format!("i{i}"));
    }
    let executed = scene.executed();
    assert_eq!(executed.get("i4"), Some(&2), "the failed item ran again");
    assert!((0..10).all(|i| executed.contains_key(&format!("i{i}"))));
    // Again at its position, as the same row: no second child.
    let children = rt.runs().children(&parent).await.unwrap();
    assert_eq!(items_of(&children).len(), 10);
    assert!(children.iter().all(|c| c.status == RunStatus::Completed));
}

async fn cancel_waiting(scene: Scene) {
    let rt = runtime(&scene).await;
    let _w = scene.worker("w1", 2);
    let handle = rt.trigger("fan", fan(200, 20, &[])).await.unwrap();
    let parent = handle.run_id().clone();
    eventually(
        "the parent waits while its items run",
        PATIENCE,
        async || {
            let waiting =
                rt.runs().get(&parent).await.unwrap().unwrap().status == RunStatus::Waiting;
            waiting && scene.executions().len() >= 5
        },
    )
    .await;
    assert_eq!(
        rt.runs().cancel(&parent).await.unwrap(),
        task_runtime::CancelOutcome::Cancelled,
        "a waiting parent is cancelled at once"
    );
    let envelope = finished(&rt, &parent).await;
    assert_eq!(envelope.error().unwrap().kind_name(), "cancelled");
    // Its children do not run on: the queued ones end at once, the executing ones stop.
    let mut children = Vec::new();
    eventually("every child ended", PATIENCE, async || {
        children = rt.runs().children(&parent).await.unwrap();
        children.iter().all(|c| c.status.is_finished())
    })
    .await;
    let items = items_of(&children);
    assert_eq!(
        items.len(),
        100,
        "the window of the each was enqueued, no more"
    );
    assert!(
        items
            .iter()
            .all(|c| matches!(c.status, RunStatus::Cancelled | RunStatus::Completed)),
        "items end cancelled, or completed when they finished first"
    );
    // The queued ones were ended by the parent's cancel, saying so.
    let mut by_parent = 0;
    for item in items.iter().filter(|c| c.status == RunStatus::Cancelled) {
        let info = rt.runs().get(&item.id).await.unwrap().unwrap();
        let error = info.envelope.unwrap().job.error.unwrap();
        if error.contains(&format!("cancelled: its parent run {parent} was cancelled")) {
            by_parent += 1;
        }
    }
    assert!(
        by_parent >= 50,
        "{by_parent} items cancelled with their parent"
    );
    // Nothing runs after every child ended: the count of executions stays put while a
    // worker with free slots keeps polling the store.
    let executed = scene.executions().len();
    assert!(executed < 201, "{executed} executions");
    let probe = rt.trigger("fan", fan(1, 0, &[])).await.unwrap();
    let probed = finished(&rt, probe.run_id()).await;
    assert!(probed.job.success, "{:?}", probed.job.error);
    assert_eq!(
        scene.executions().len(),
        executed + 2,
        "only the probe's lead and item ran after the cancel"
    );
}

async fn inherit(scene: Scene) {
    let rt = runtime(&scene).await;
    let _w = scene.worker("w1", 2);
    let tramp = json!({ "requestId": "req-7", "blob": "x".repeat(4096) });
    let mut input = fan(20, 0, &[]);
    input["trampData"] = tramp.clone();
    input["cleanup"] = json!({ "keepTemp": true });
    let handle = rt.trigger("fan", input).await.unwrap();
    let parent = handle.run_id().clone();
    let envelope = finished(&rt, &parent).await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.tramp_data(), Some(&tramp));
    // Every item, executed by a worker as a run of its own, saw the parent's trampData and
    // cleanup options, as an item executed inside the parent's attempt does.
    let items = envelope.results["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    for item in items {
        assert_eq!(item["tramp"], tramp, "{}", item["label"]);
        assert_eq!(item["cleanup"], json!({ "keepTemp": true }));
    }
    assert_eq!(envelope.results["lead"]["tramp"], tramp);
    // ... and none stored a copy of it: the 4 KiB trampData is in the parent's row only.
    let children = rt.runs().children(&parent).await.unwrap();
    assert_eq!(children.len(), 21);
    for child in &children {
        assert!(
            child.input.get("trampData").is_none(),
            "{:?} stored a copy: {}",
            child.position,
            child.input
        );
        assert_eq!(child.input["tenantId"], "t");
    }
}
