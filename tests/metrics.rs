//! `GET /metrics` scraped over a real socket from the HTTP server (SQLite file, a worker with
//! four slots) after a known workload: the Prometheus text agrees with the store's counts.
//! Its own test binary, because the metrics recorder is global to a process.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use task_runtime::{RunFilter, RunStatus};
use task_tests::api::Server;
use task_tests::probe::Probe;

/// The value of the sample `name{labels}` (labels given as `k="v"` pairs, in any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let have: Vec<&str> = rest.split(',').filter(|l| !l.is_empty()).collect();
            let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            (have.len() == want.len() && want.iter().all(|w| have.contains(&w.as_str())))
                .then(|| value.parse().ok())?
        })
}

async fn scrape(server: &Server) -> String {
    // No key: `/metrics` holds counts only.
    let response = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

async fn store_count(server: &Server, task: &str, status: RunStatus) -> usize {
    server
        .rt
        .runs()
        .list(RunFilter::new().task(task).status(status).limit(1000))
        .await
        .unwrap()
        .len()
}

fn work(probe: &Probe, label: &str, fail: bool) -> Value {
    json!({ "payload": { "projectId": "docs", "probe": probe.name(), "label": label,
                         "failAttempts": u32::from(fail), "fatal": fail } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_known_workload_match_the_store() {
    let server = Server::start("metrics").await;
    let key = server.key("acme").await;
    // The first scrape: the server is up and its recorder installed; nothing has run yet.
    let before = scrape(&server).await;
    assert_eq!(
        sample(&before, "task_queue_depth", &[]),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, "task_queue_oldest_age_seconds", &[]),
        Some(0.0)
    );

    // 5 runs of `work` complete, 3 fail (fatal: one attempt each).
    let probe = Probe::new();
    let mut ids = Vec::new();
    for i in 0..8 {
        let body = work(&probe, &format!("w{i}"), i >= 5);
        ids.push((server.trigger(&key, "work", body).await, i >= 5));
    }
    for (id, failed) in &ids {
        let want = if *failed { "failed" } else { "completed" };
        server.until_status(&key, id, want).await;
    }

    // A run that sleeps durably is resumed by a second claim: it started once.
    let sleep = Probe::new();
    let body = json!({ "payload": { "projectId": "docs", "probe": sleep.name(), "sleepMs": 50 } });
    let slept = server.trigger(&key, "sleeper", body).await;
    server.until_status(&key, &slept, "completed").await;
    let (_, run) = server
        .call(
            Method::GET,
            &format!("/api/v1/runs/{slept}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(sleep.count("step before"), 1, "{run}");
    let resumed = scrape(&server).await;
    assert_eq!(
        sample(&resumed, "task_runs_started_total", &[("task", "sleeper")]),
        Some(1.0),
        "{resumed}"
    );
    assert_eq!(
        sample(
            &resumed,
            "task_runs_finished_total",
            &[("task", "sleeper"), ("status", "completed")]
        ),
        Some(1.0)
    );

    // A backlog: 4 `gated` runs hold the worker's four slots, 3 more wait in the queue.
    let gate = Probe::new();
    let mut gated = Vec::new();
    for i in 0..4 {
        gated.push(
            server
                .trigger(&key, "gated", work(&gate, &format!("g{i}"), false))
                .await,
        );
    }
    for id in &gated {
        server.until_status(&key, id, "executing").await;
    }
    for i in 4..7 {
        gated.push(
            server
                .trigger(&key, "gated", work(&gate, &format!("g{i}"), false))
                .await,
        );
    }
    // Let the queued ones age: the age is measured in milliseconds.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let busy = scrape(&server).await;
    let queued = store_count(&server, "gated", RunStatus::Queued).await;
    assert_eq!(queued, 3, "the worker has four slots");
    assert_eq!(
        sample(&busy, "task_queue_depth", &[]),
        Some(queued as f64),
        "{busy}"
    );
    let age = sample(&busy, "task_queue_oldest_age_seconds", &[]).unwrap();
    assert!((0.05..60.0).contains(&age), "oldest queued age {age}");

    for (status, want) in [
        (RunStatus::Completed, "completed"),
        (RunStatus::Failed, "failed"),
    ] {
        let stored = store_count(&server, "work", status).await;
        let labels = [("task", "work"), ("status", want)];
        assert_eq!(
            sample(&busy, "task_runs_finished_total", &labels),
            Some(stored as f64),
            "{want}: {busy}"
        );
    }
    assert_eq!(store_count(&server, "work", RunStatus::Completed).await, 5);
    assert_eq!(store_count(&server, "work", RunStatus::Failed).await, 3);
    assert_eq!(
        sample(&busy, "task_runs_started_total", &[("task", "work")]),
        Some(8.0)
    );
    // 4 gated runs started; the 3 queued have not.
    assert_eq!(
        sample(&busy, "task_runs_started_total", &[("task", "gated")]),
        Some(4.0),
        "{busy}"
    );
    for (outcome, want) in [("success", 5.0), ("failure", 3.0)] {
        let labels = [("task", "work"), ("outcome", outcome)];
        assert_eq!(
            sample(&busy, "task_attempt_duration_seconds_count", &labels),
            Some(want),
            "{outcome}: {busy}"
        );
        // Every attempt is under the histogram's top bucket.
        let mut top = labels.to_vec();
        top.push(("le", "600"));
        assert_eq!(
            sample(&busy, "task_attempt_duration_seconds_bucket", &top),
            Some(want)
        );
    }
    assert_eq!(
        sample(&busy, "task_log_lines_dropped_total", &[]),
        Some(server.store.dropped_log_lines() as f64)
    );
    // Bounded labels: no run id, no tenant anywhere.
    assert!(!busy.contains("run_0"), "{busy}");
    assert!(!busy.contains("acme"), "{busy}");

    // Runs that end without an attempt of theirs ending them count too: one queued run
    // cancelled, one whose time to live runs out in the queue.
    let cancelled = gated.pop().unwrap();
    let (status, reply) = server
        .call(
            Method::POST,
            &format!("/api/v1/runs/{cancelled}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let mut body = work(&gate, "ttl", false);
    body["options"] = json!({ "ttl": "100ms" });
    let expired = server.trigger(&key, "gated", body).await;
    server.until_status(&key, &expired, "expired").await;
    let ended = scrape(&server).await;
    for (status, want) in [
        (RunStatus::Cancelled, "cancelled"),
        (RunStatus::Expired, "expired"),
    ] {
        assert_eq!(store_count(&server, "gated", status).await, 1, "{want}");
        let labels = [("task", "gated"), ("status", want)];
        assert_eq!(
            sample(&ended, "task_runs_finished_total", &labels),
            Some(1.0),
            "{want}: {ended}"
        );
    }
    // Neither ever started.
    assert_eq!(
        sample(&ended, "task_runs_started_total", &[("task", "gated")]),
        Some(4.0),
        "{ended}"
    );

    // The backlog drains.
    gate.open_gate();
    for id in &gated {
        server.until_status(&key, id, "completed").await;
    }
    let after = scrape(&server).await;
    assert_eq!(sample(&after, "task_queue_depth", &[]), Some(0.0));
    assert_eq!(
        sample(&after, "task_queue_oldest_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &after,
            "task_runs_finished_total",
            &[("task", "gated"), ("status", "completed")]
        ),
        Some(store_count(&server, "gated", RunStatus::Completed).await as f64)
    );
    assert_eq!(store_count(&server, "gated", RunStatus::Completed).await, 6);
    server.stop().await;
}
