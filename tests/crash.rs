//! Crash safety with real processes: workers of `fixture-app` (the CLI over tasks that log
//! every execution to a shared file) are killed with `kill -9` mid-flight and stopped with
//! `SIGSTOP` past their lease, while this process triggers runs into the same SQLite file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use task_runtime::{RunFilter, RunId, RunStatus, Runtime, Store};
use task_tests::eventually;
// The recorder tasks are registered in this process too, so it can trigger them.
use task_tests::procs::{KillOnDrop as Worker, signal};

const APP: &str = env!("CARGO_BIN_EXE_fixture-app");

struct Scene {
    dir: PathBuf,
    url: String,
    log: PathBuf,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let dir = std::env::temp_dir().join(format!("crash-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scene {
            url: format!("sqlite://{}/runs.db", dir.display()),
            log: dir.join("executions.log"),
            dir,
        }
    }

    fn worker(&self, name: &str, lease: &str, concurrency: u32) -> Worker {
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

    fn stderr(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.stderr"))).unwrap_or_default()
    }

    /// Every execution line: (run id, task, label, pid, attempt).
    fn executions(&self) -> Vec<(String, String, String, u32, u32)> {
        task_tests::recorder::executions(&self.log)
    }
}

fn kill9(worker: &mut Worker) {
    signal(&worker.0, "KILL");
    worker.0.wait().unwrap();
}

fn stop_gracefully(mut worker: Worker) {
    signal(&worker.0, "TERM");
    assert!(
        worker.0.wait().unwrap().success(),
        "the worker stops cleanly on SIGTERM"
    );
}

async fn all_runs(rt: &Runtime) -> Vec<task_runtime::RunInfo> {
    let mut runs = Vec::new();
    let mut filter = RunFilter::new().limit(1000);
    loop {
        let page = rt.runs().list(filter.clone()).await.unwrap();
        let Some(last) = page.last() else { break };
        filter = filter.before(last.id.clone());
        runs.extend(page);
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_and_re_execute_only_what_was_in_flight() {
    let scene = Scene::new("kill9");
    let store = Store::connect(&scene.url).await.unwrap();
    let rt = Runtime::builder().store(store).build().unwrap();
    let mut worker = scene.worker("w1", "1s", 8);

    // 400 single runs and 100 three-step tracks, triggered while the worker runs.
    let mut ids: Vec<(RunId, &str)> = Vec::new();
    let mut kills = 0;
    for i in 0..500 {
        let (task, millis) = if i % 5 == 4 {
            ("record_track", 10)
        } else {
            ("record", 20)
        };
        let input = json!({ "tenantId": "t", "projectId": "p", "label": format!("r{i}"), "millis": millis });
        let handle = rt.trigger(task, input).await.expect("committed");
        ids.push((handle.run_id().clone(), task));
        // Kill the worker twice mid-flight, restarting it each time.
        let executed = scene.executions().len();
        if (kills == 0 && executed >= 100) || (kills == 1 && executed >= 300) {
            kill9(&mut worker);
            kills += 1;
            worker = scene.worker(&format!("w{}", kills + 1), "1s", 8);
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    while kills < 2 {
        let executed = scene.executions().len();
        if (kills == 0 && executed >= 100) || (kills == 1 && executed >= 300) {
            kill9(&mut worker);
            kills += 1;
            worker = scene.worker(&format!("w{}", kills + 1), "1s", 8);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually(
        "every run to complete",
        Duration::from_secs(120),
        async || {
            all_runs(&rt)
                .await
                .iter()
                .filter(|r| r.status == RunStatus::Completed)
                .count()
                == 500
        },
    )
    .await;
    stop_gracefully(worker);

    let runs: HashMap<RunId, task_runtime::RunInfo> = all_runs(&rt)
        .await
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    assert_eq!(runs.len(), 500, "none lost, none duplicated");
    let executions = scene.executions();
    let mut per_label: HashMap<(String, String), usize> = HashMap::new();
    for (run, _, label, _, _) in &executions {
        *per_label.entry((run.clone(), label.clone())).or_default() += 1;
    }
    let mut lost_attempts = 0;
    for (id, task) in &ids {
        let run = &runs[id];
        assert_eq!(run.status, RunStatus::Completed, "{id}");
        let envelope = run
            .envelope
            .as_ref()
            .expect("a completed run keeps its envelope");
        assert!(envelope.job.success);
        assert_eq!(
            envelope.metadata.attempts, run.attempts,
            "completed once, by its last attempt"
        );
        // Every attempt but the last ended because its worker was killed.
        assert_eq!(
            run.retried.len() as u32,
            run.attempts - 1,
            "{id}: {:?}",
            run.retried
        );
        for error in &run.retried {
            assert_eq!(error.kind_name(), "workerLost", "{id}: {error}");
        }
        lost_attempts += run.retried.len();
        let labels: Vec<String> = match *task {
            "record" => vec![run.input["label"].as_str().unwrap().to_owned()],
            _ => (1..=3)
                .map(|s| format!("{}/{s}", run.input["label"].as_str().unwrap()))
                .collect(),
        };
        for label in labels {
            let n = per_label
                .get(&(id.to_string(), label.clone()))
                .copied()
                .unwrap_or(0);
            assert!(n >= 1, "{id} {label} executed");
            // A step executes again only when an attempt of its run was lost while it ran.
            assert!(
                n <= 1 + run.retried.len(),
                "{id} {label}: {n} executions, {} lost attempts",
                run.retried.len()
            );
        }
    }
    // Only attempts in flight at a kill were lost: a worker holds at most three
    // concurrencies' worth of started, unrecorded runs (executing, and ended with their
    // settle not yet written) and two more of runs claimed ahead of its slots (short runs
    // only), the bounds the worker keeps and pg_chaos.rs asserts too.
    assert!(lost_attempts >= 1, "the kills hit runs in flight");
    assert!(
        lost_attempts <= 2 * (3 + 2) * 8,
        "{lost_attempts} lost attempts for 2 kills of a worker of concurrency 8"
    );
    let total_executions: usize = per_label.values().sum();
    assert_eq!(total_executions, executions.len());
    let expected_steps = 400 + 100 * 3;
    assert!(
        total_executions <= expected_steps + lost_attempts * 3,
        "{total_executions} executions for {expected_steps} steps and {lost_attempts} lost attempts"
    );
    // Each started, unrecorded run executes one step again at most (a track's completed
    // steps are replayed from its journal); runs claimed ahead never started.
    assert!(
        total_executions - expected_steps <= 2 * 3 * 8,
        "{total_executions} executions for {expected_steps} steps: more than 2 kills of 24 \
         started, unrecorded runs each"
    );
    std::fs::remove_dir_all(&scene.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_its_lease_changes_nothing_when_it_comes_back() {
    let scene = Scene::new("sigstop");
    let store = Store::connect(&scene.url).await.unwrap();
    let rt = Runtime::builder().store(store).build().unwrap();
    let stalled = scene.worker("a", "500ms", 1);
    let input = json!({ "tenantId": "t", "projectId": "p", "label": "slow", "millis": 1500 });
    let handle = rt.trigger("record", input).await.unwrap();
    let id = handle.run_id().clone();
    eventually(
        "worker a to start the run",
        Duration::from_secs(30),
        async || !scene.executions().is_empty(),
    )
    .await;
    signal(&stalled, "STOP");

    let rescuer = scene.worker("b", "500ms", 1);
    let envelope = handle.wait().await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(
        envelope.results["pid"],
        rescuer.id(),
        "worker b completed it"
    );
    assert_eq!(envelope.results["attempt"], 2);

    // Worker a wakes up: its attempt ends (its sleep is long over), its write is fenced off.
    signal(&stalled, "CONT");
    eventually("worker a to notice", Duration::from_secs(30), async || {
        let stderr = scene.stderr("a");
        stderr.contains("lease lost") || stderr.contains("no longer ours")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = rt.runs().get(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Completed);
    assert_eq!(
        stored.envelope.unwrap(),
        envelope,
        "the stored envelope is worker b's"
    );
    assert_eq!(stored.attempts, 2);
    assert_eq!(stored.retried.len(), 1);
    assert_eq!(stored.retried[0].kind_name(), "workerLost");
    let pids: Vec<u32> = scene.executions().iter().map(|e| e.3).collect();
    assert_eq!(pids, [stalled.id(), rescuer.id()]);
    stop_gracefully(stalled);
    stop_gracefully(rescuer);
    std::fs::remove_dir_all(&scene.dir).ok();
}

/// The steps that executed for `run`, in order: (step, attempt, pid).
fn step_executions(scene: &Scene, run: &RunId) -> Vec<(String, u32, u32)> {
    scene
        .executions()
        .into_iter()
        .filter(|(id, task, ..)| id == run.as_str() && task.starts_with("step:"))
        .map(|(_, task, _, pid, attempt)| (task["step:".len()..].to_owned(), attempt, pid))
        .collect()
}

fn replayed_flags(envelope: &task_runtime::RunOutput<serde_json::Value>) -> Vec<(String, bool)> {
    envelope
        .metadata
        .steps
        .iter()
        .map(|s| (s.task_name.clone(), s.replayed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_killed_in_its_second_step_does_not_execute_the_first_again() {
    let scene = Scene::new("steps-kill9");
    let store = Store::connect(&scene.url).await.unwrap();
    let rt = Runtime::builder().store(store).build().unwrap();
    let mut first = scene.worker("first", "1s", 2);
    // The second step holds for a minute on the first attempt: the kill lands inside it.
    let input = json!({ "tenantId": "t", "projectId": "p", "label": "k", "holdMillis": 60_000 });
    let handle = rt.trigger("three_steps", input).await.unwrap();
    let id = handle.run_id().clone();
    eventually(
        "the second step to begin",
        Duration::from_secs(30),
        async || step_executions(&scene, &id).len() == 2,
    )
    .await;
    kill9(&mut first);

    let second = scene.worker("second", "1s", 2);
    let envelope = handle.wait().await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(
        envelope.results,
        json!({ "first": "first@1", "second": "second@2", "third": "third@2" }),
        "the first step's output is the one recorded by the killed attempt"
    );
    assert_eq!(
        replayed_flags(&envelope),
        [
            ("first".to_owned(), true),
            ("second".to_owned(), false),
            ("third".to_owned(), false)
        ]
    );
    let executed: Vec<(String, u32)> = step_executions(&scene, &id)
        .into_iter()
        .map(|(step, attempt, _)| (step, attempt))
        .collect();
    assert_eq!(
        executed,
        [
            ("first".to_owned(), 1),
            ("second".to_owned(), 1),
            ("second".to_owned(), 2),
            ("third".to_owned(), 2)
        ],
        "the first step executed once; the second again after the kill"
    );
    let stored = rt.runs().get(&id).await.unwrap().unwrap();
    assert_eq!(stored.attempts, 2);
    assert_eq!(stored.retried[0].kind_name(), "workerLost");
    // The steps are child rows of the run, at their positions.
    let children = rt.runs().children(&id).await.unwrap();
    let mut rows: Vec<(String, RunStatus)> = children
        .iter()
        .map(|c| (c.task.clone(), c.status))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rows,
        [
            ("first".to_owned(), RunStatus::Completed),
            ("second".to_owned(), RunStatus::Completed),
            ("third".to_owned(), RunStatus::Completed)
        ]
    );
    stop_gracefully(second);
    std::fs::remove_dir_all(&scene.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_task_replays_its_completed_steps_and_a_reordered_replay_fails() {
    let scene = Scene::new("steps-retry");
    let store = Store::connect(&scene.url).await.unwrap();
    let rt = Runtime::builder().store(store).build().unwrap();
    let worker = scene.worker("w", "5s", 4);

    // The second step fails on the first attempt: the retry replays the first.
    let input = json!({ "tenantId": "t", "projectId": "p", "label": "r", "failSecondOn": 1 });
    let handle = rt.trigger("three_steps", input).await.unwrap();
    let id = handle.run_id().clone();
    let envelope = handle.wait().await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.results["first"], "first@1");
    assert_eq!(envelope.results["second"], "second@2");
    assert_eq!(envelope.metadata.attempts, 2);
    let executed: Vec<String> = step_executions(&scene, &id)
        .into_iter()
        .map(|(step, attempt, _)| format!("{step}@{attempt}"))
        .collect();
    assert_eq!(executed, ["first@1", "second@1", "second@2", "third@2"]);

    // A second attempt that begins its steps in another order is stopped, not fed the
    // output recorded for another step.
    let input = json!({ "tenantId": "t", "projectId": "p", "label": "o" });
    let envelope = rt
        .trigger("reordered_steps", input)
        .await
        .unwrap()
        .wait()
        .await;
    assert!(!envelope.job.success);
    let error = envelope.job.error_detail.as_ref().unwrap();
    assert_eq!(error.kind_name(), "failed");
    assert!(!error.is_retryable(), "a reordered replay is not retried");
    assert_eq!(
        envelope.job.error.as_deref(),
        Some(
            "step 0 is `email` in this attempt, but the run recorded `charge` at that position: \
             the task's steps changed order (or one is skipped on a condition) since the run \
             started, and replaying would return another step's output"
        )
    );
    assert_eq!(
        envelope.metadata.attempts, 2,
        "stopped at its second attempt"
    );
    stop_gracefully(worker);
    std::fs::remove_dir_all(&scene.dir).ok();
}
