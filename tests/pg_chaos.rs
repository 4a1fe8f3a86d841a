//! Many workers on one PostgreSQL, as real processes: three `fixture-app` workers (the CLI
//! over tasks that log every execution to a shared file) drain runs this process triggers,
//! while one worker is killed with `kill -9`, the server is restarted and every worker
//! connection is terminated; queue limits and per-key limits hold across the three; a
//! track triggered many times runs every step once, in order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use task_runtime::{RunFilter, RunId, RunInfo, RunStatus, Runtime, Store, TriggerOptions};
use task_tests::futures_join_all;
use task_tests::pg::{self, database_of};
use task_tests::procs::{KillOnDrop, signal};

const APP: &str = env!("CARGO_BIN_EXE_fixture-app");

struct Scene {
    dir: PathBuf,
    url: String,
    log: PathBuf,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let dir = std::env::temp_dir().join(format!("pg-chaos-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scene {
            url: pg::server().database(name),
            log: dir.join("executions.log"),
            dir,
        }
    }

    fn worker(&self, name: &str, lease: &str, concurrency: u32) -> KillOnDrop {
        let stderr = std::fs::File::create(self.dir.join(format!("{name}.stderr"))).unwrap();
        let child = Command::new(APP)
            .args(["--store", &self.url, "worker"])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--lease", lease, "--grace", "5s"])
            .env("FIXTURE_LOG", &self.log)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the worker starts");
        KillOnDrop(child)
    }

    async fn runtime(&self) -> Runtime {
        let store = Store::connect(&self.url).await.unwrap();
        Runtime::builder().store(store).build().unwrap()
    }

    /// Every execution line: (run id, task, label, pid, attempt), in the order written.
    fn executions(&self) -> Vec<(String, String, String, u32, u32)> {
        task_tests::recorder::executions(&self.log)
    }

    fn executed(&self) -> usize {
        self.executions().len()
    }

    /// Top-level runs in `status`, counted by the server.
    fn count(&self, status: &str) -> usize {
        pg::server()
            .psql(
                database_of(&self.url),
                &format!(
                    "SELECT count(*) FROM task_runtime.runs
                      WHERE parent_run_id IS NULL AND status = '{status}'"
                ),
            )
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    async fn wait_completed(&self, runs: usize, limit: Duration) {
        let start = Instant::now();
        while self.count("completed") < runs {
            assert!(
                start.elapsed() < limit,
                "{} of {runs} runs completed after {limit:?}",
                self.count("completed")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&self, workers: Vec<KillOnDrop>) {
        for mut child in workers {
            signal(&child, "TERM");
            let status = child.wait().unwrap();
            assert!(status.success(), "a worker stops cleanly on SIGTERM");
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn all_runs(rt: &Runtime) -> Vec<RunInfo> {
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

fn input(label: &str, millis: u64) -> serde_json::Value {
    json!({ "tenantId": "t", "projectId": "p", "label": label, "millis": millis })
}

/// Triggers `runs` (task, input) in batches of 100 at once; returns their ids in order.
async fn trigger_all(rt: &Runtime, runs: &[(&'static str, serde_json::Value)]) -> Vec<RunId> {
    let mut ids = Vec::with_capacity(runs.len());
    for chunk in runs.chunks(100) {
        let handles = futures_join_all(
            chunk
                .iter()
                .map(|(task, input)| rt.trigger(task, input.clone())),
        )
        .await;
        ids.extend(
            handles
                .into_iter()
                .map(|h| h.expect("committed").run_id().clone()),
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_drain_5000_runs_through_a_kill_a_server_restart_and_killed_connections() {
    const RUNS: usize = 5000;
    const CONCURRENCY: u32 = 16;
    let scene = Scene::new("chaos");
    let rt = scene.runtime().await;
    let mut workers = vec![
        scene.worker("w1", "1s", CONCURRENCY),
        scene.worker("w2", "1s", CONCURRENCY),
        scene.worker("w3", "1s", CONCURRENCY),
    ];
    // 4 000 single runs and 1 000 three-step tracks, triggered while the workers run.
    let plan: Vec<(&'static str, serde_json::Value)> = (0..RUNS)
        .map(|i| {
            if i % 5 == 4 {
                ("record_track", input(&format!("r{i}"), 1))
            } else {
                ("record", input(&format!("r{i}"), 3))
            }
        })
        .collect();
    let mut ids = Vec::new();
    let mut faults = Vec::new();
    let expected_steps = 4000 + 1000 * 3;
    for (n, wave) in plan.chunks(500).enumerate() {
        ids.extend(trigger_all(&rt, wave).await);
        let executed = scene.executed();
        if faults.is_empty() && (executed >= 1000 || n == 4) {
            // A worker dies mid-flight; another takes its place.
            signal(&workers[0], "KILL");
            workers.remove(0).wait().unwrap();
            workers.push(scene.worker("w4", "1s", CONCURRENCY));
            faults.push(("kill -9", executed));
        }
    }
    let start = Instant::now();
    while scene.executed() < expected_steps / 2 {
        assert!(start.elapsed() < Duration::from_secs(120), "progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg::server().restart().expect("the server restarts");
    faults.push(("server restart", scene.executed()));
    let start = Instant::now();
    while scene.executed() < expected_steps * 3 / 4 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "progress after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = pg::server()
        .terminate_connections(database_of(&scene.url))
        .unwrap();
    assert!(
        killed >= 3,
        "every worker's connections (and ours): {killed}"
    );
    faults.push(("connections terminated", scene.executed()));
    scene.wait_completed(RUNS, Duration::from_secs(240)).await;

    let runs: HashMap<RunId, RunInfo> = all_runs(&rt)
        .await
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    assert_eq!(runs.len(), RUNS, "none lost, none duplicated");
    let executions = scene.executions();
    let mut per_label: HashMap<(String, String), usize> = HashMap::new();
    for (run, _, label, _, _) in &executions {
        *per_label.entry((run.clone(), label.clone())).or_default() += 1;
    }
    let mut lost_attempts = 0;
    for (id, (task, input)) in ids.iter().zip(&plan) {
        let run = &runs[id];
        assert_eq!(run.status, RunStatus::Completed, "{id}");
        let envelope = run
            .envelope
            .as_ref()
            .expect("a completed run keeps its envelope");
        assert!(envelope.job.success);
        // Recorded once, by its last attempt: a worker whose lease was taken over wrote
        // nothing (fencing).
        assert_eq!(envelope.metadata.attempts, run.attempts, "{id}");
        assert_eq!(run.retried.len() as u32, run.attempts - 1, "{id}");
        for error in &run.retried {
            assert_eq!(error.kind_name(), "workerLost", "{id}: {error}");
        }
        lost_attempts += run.retried.len();
        let label = input["label"].as_str().unwrap();
        let labels: Vec<String> = match *task {
            "record" => vec![label.to_owned()],
            _ => (1..=3).map(|s| format!("{label}/{s}")).collect(),
        };
        for label in labels {
            let n = per_label
                .get(&(id.to_string(), label.clone()))
                .copied()
                .unwrap_or(0);
            assert!(n >= 1, "{id} {label} executed");
            // A step runs again only when an attempt of its run was lost while it ran.
            assert!(
                n <= 1 + run.retried.len(),
                "{id} {label}: {n} executions, {} lost attempts",
                run.retried.len()
            );
        }
    }
    // Only attempts in flight at a fault ran again: the kill can lose one worker's runs in
    // flight, the restart and the terminated connections every worker's (an attempt whose
    // settle could not be written while the server was away ends with its lease). A worker
    // holds at most three concurrencies' worth of started, unrecorded runs (those executing
    // and those whose settle is being written) and two of short runs claimed ahead.
    let in_flight_bound = (3 + 2) * CONCURRENCY as usize * (1 + 3 + 3);
    eprintln!(
        "faults (at executions): {faults:?}; lost attempts: {lost_attempts}; executions: {}",
        executions.len()
    );
    assert!(
        lost_attempts >= 1,
        "the faults hit runs in flight: {faults:?}"
    );
    assert!(
        lost_attempts <= in_flight_bound,
        "{lost_attempts} lost attempts for faults {faults:?}"
    );
    let total: usize = per_label.values().sum();
    assert_eq!(total, executions.len());
    assert!(
        total <= expected_steps + lost_attempts * 3,
        "{total} executions for {expected_steps} steps and {lost_attempts} lost attempts"
    );
    scene.stop(workers);
}

/// Overlaps of `[start, end)` intervals: the most at once.
fn most_at_once(intervals: &[(SystemTime, SystemTime)]) -> usize {
    let mut edges: Vec<(SystemTime, i32)> = Vec::new();
    for (start, end) in intervals {
        edges.push((*start, 1));
        edges.push((*end, -1));
    }
    // Ends before starts at the same instant: half-open intervals.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

fn interval(run: &RunInfo) -> (SystemTime, SystemTime) {
    (run.started_at.unwrap(), run.finished_at.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_limit_and_per_tenant_limits_hold_across_three_workers() {
    let scene = Scene::new("queues");
    let rt = scene.runtime().await;
    let workers: Vec<KillOnDrop> = ["q1", "q2", "q3"]
        .iter()
        .map(|name| scene.worker(name, "5s", 8))
        .collect();
    // `record_limited` has `concurrency = 2`; tenants a (a backlog of 30, triggered first),
    // b and c (10 each) are one at a time each, with `concurrency_key`.
    let mut limited = Vec::new();
    let mut keyed = Vec::new();
    for i in 0..40 {
        let handle = rt
            .trigger("record_limited", input(&format!("l{i}"), 25))
            .await
            .unwrap();
        limited.push(handle.run_id().clone());
    }
    for (tenant, n) in [("a", 30), ("b", 10), ("c", 10)] {
        for i in 0..n {
            let input = json!({ "tenantId": tenant, "projectId": "p", "label": format!("{tenant}{i}"), "millis": 25 });
            let options = TriggerOptions::new().concurrency_key(tenant);
            let handle = rt.trigger_with("record", input, options).await.unwrap();
            keyed.push(handle.run_id().clone());
        }
    }
    scene.wait_completed(90, Duration::from_secs(120)).await;
    let runs: HashMap<RunId, RunInfo> = all_runs(&rt)
        .await
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();

    let intervals: Vec<_> = limited.iter().map(|id| interval(&runs[id])).collect();
    let most = most_at_once(&intervals);
    assert_eq!(most, 2, "the limit of 2 held, and was used");
    let pids: std::collections::HashSet<u32> = scene
        .executions()
        .iter()
        .filter(|e| e.1 == "record_limited")
        .map(|e| e.3)
        .collect();
    assert!(pids.len() >= 2, "several workers took part: {pids:?}");

    let keyed: Vec<&RunInfo> = keyed.iter().map(|id| &runs[id]).collect();
    for tenant in ["a", "b", "c"] {
        let mine: Vec<_> = keyed
            .iter()
            .filter(|r| r.tenant_id.as_deref() == Some(tenant))
            .map(|r| interval(r))
            .collect();
        assert_eq!(most_at_once(&mine), 1, "tenant {tenant}: one at a time");
    }
    let all: Vec<_> = keyed.iter().map(|r| interval(r)).collect();
    assert!(most_at_once(&all) >= 2, "other tenants proceeded meanwhile");
    // a's backlog did not starve b and c: they started before a's last run did.
    let starts = |tenant: &str| -> Vec<SystemTime> {
        keyed
            .iter()
            .filter(|r| r.tenant_id.as_deref() == Some(tenant))
            .map(|r| r.started_at.unwrap())
            .collect()
    };
    let last_a = starts("a").into_iter().max().unwrap();
    for tenant in ["b", "c"] {
        let last = starts(tenant).into_iter().max().unwrap();
        assert!(
            last < last_a,
            "tenant {tenant}'s runs all started before a's backlog drained"
        );
    }
    scene.stop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_triggered_again_and_again_runs_every_step_once_in_order() {
    let scene = Scene::new("tracks");
    let rt = scene.runtime().await;
    let workers: Vec<KillOnDrop> = ["t1", "t2", "t3"]
        .iter()
        .map(|name| scene.worker(name, "5s", 8))
        .collect();
    // Triggered in waves while the earlier runs finish.
    let mut ids = Vec::new();
    for wave in 0..6 {
        let plan: Vec<_> = (0..50)
            .map(|i| ("record_track", input(&format!("w{wave}-{i}"), 2)))
            .collect();
        ids.extend(trigger_all(&rt, &plan).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scene.wait_completed(300, Duration::from_secs(120)).await;
    let mut steps: HashMap<String, Vec<String>> = HashMap::new();
    for (run, task, label, _, attempt) in scene.executions() {
        assert_eq!(task, "record");
        assert_eq!(attempt, 1, "{run} {label}: no step ran twice");
        steps.entry(run).or_default().push(label);
    }
    assert_eq!(steps.len(), 300);
    for id in &ids {
        let info = rt.runs().get(id).await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Completed);
        assert_eq!(info.attempts, 1);
        let label = info.input["label"].as_str().unwrap();
        let expected: Vec<String> = (1..=3).map(|s| format!("{label}/{s}")).collect();
        assert_eq!(
            steps[id.as_str()],
            expected,
            "{id}: every step once, in order"
        );
        let children = rt.runs().children(id).await.unwrap();
        assert_eq!(children.len(), 3);
        assert!(
            children
                .windows(2)
                .all(|w| w[0].finished_at.unwrap() <= w[1].started_at.unwrap()),
            "{id}: each step started after the previous one finished"
        );
    }
    scene.stop(workers);
}
