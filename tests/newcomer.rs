//! What a new user hit (issue "What a new user hit"): typos in inputs, typed background
//! runs with options, orchestrator children in the logs, `?` inside tasks.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use task_runtime::prelude::*;
use task_runtime::{ResultExt, TriggerOptions};
use task_tests::probe::Probe;
use task_tests::*;

#[tokio::test]
async fn a_misspelt_field_is_refused_naming_the_closest_known_one() {
    let rt = Runtime::new();
    let input = json!({ "tenantId": "t", "projectId": "p", "value": 1, "vaule": 2 });
    let env = rt.trigger_and_wait("double", input).await;
    let error = env.error().expect("refused");
    assert_eq!(error.kind_name(), "invalidInput");
    assert_eq!(error.issues()[0].path, "/vaule");
    assert_eq!(
        error.issues()[0].message,
        "unknown field `vaule`; did you mean `value`?"
    );
    // Next to the flattened BaseInput too.
    let input = json!({ "tenantId": "t", "projectId": "p", "value": 1, "tenant_id": "x" });
    let env = rt.trigger_and_wait("double", input).await;
    assert_eq!(
        env.error().unwrap().issues()[0].message,
        "unknown field `tenant_id`; did you mean `tenantId`?"
    );
    // And the schema says so.
    let schemas = rt.registry().get("double").unwrap().schemas();
    assert_eq!(schemas.input["additionalProperties"], false);
}

#[tokio::test(start_paused = true)]
async fn a_typed_background_run_with_options_waits_for_its_typed_output() {
    let rt = Runtime::new();
    let probe = Probe::new();
    let handle = rt
        .start(Work, WorkInput::new(&probe, "typed", 100))
        .await
        .unwrap();
    let id = handle.run_id().clone();
    let out = handle.wait().await.unwrap();
    let typed: WorkOutput = out.results;
    assert_eq!(typed.label, "typed");
    assert_eq!(out.job.run_id, id);
    assert_eq!(
        rt.runs().get(&id).await.unwrap().unwrap().status.as_str(),
        "completed"
    );

    // With an idempotency key: the second typed run is the first one.
    let key = || TriggerOptions::new().idempotency_key("typed-key");
    let first = rt
        .run_with(Work, WorkInput::new(&probe, "k", 10), key())
        .await
        .unwrap();
    let second = rt
        .run_with(Work, WorkInput::new(&probe, "k", 10), key())
        .await
        .unwrap();
    assert_eq!(first.job.run_id, second.job.run_id);
    assert_eq!(second.results.label, "k");
    assert_eq!(probe.count("start work:k"), 1);

    // A delay: nothing starts early.
    let later = rt
        .start_with(
            Work,
            WorkInput::new(&probe, "later", 0),
            TriggerOptions::new().delay(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        rt.runs()
            .get(later.run_id())
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "delayed"
    );
    assert_eq!(probe.count("start work:later"), 0);
    assert!(later.wait().await.is_ok());

    // A TTL shorter than the delay: expired, never run.
    let expired = rt
        .start_with(
            Work,
            WorkInput::new(&probe, "expired", 0),
            TriggerOptions::new()
                .delay(Duration::from_secs(10))
                .ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let error = expired.wait().await.unwrap_err();
    assert_eq!(error.error.kind_name(), "expired");
    assert_eq!(probe.count("start work:expired"), 0);
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn orchestrator_children_nest_in_the_logs_and_name_their_parent() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_span_list(true)
        .with_writer(move || writer.clone())
        .finish();
    let probe = Probe::new();
    let input = BatchInput {
        base: BaseInput::new("acme", "docs"),
        lead: WorkInput::new(&probe, "lead", 0),
        items: (0..3)
            .map(|i| WorkInput::new(&probe, &format!("i{i}"), 0))
            .collect(),
    };
    // Global (the only test of this binary that installs one): branches run on the worker
    // threads, and scoped subscribers race with other tests over callsite interest. Lines of
    // other tests are told apart by their root run id below.
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let envelope = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
        .block_on(async { Runtime::new().run(Batch, input).await.ok().unwrap() });
    let root_id = envelope.job.run_id.to_string();
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let item_runs: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "run succeeded" && l["span"]["task"] == "work")
        .filter(|l| l["spans"][0]["run_id"] == root_id.as_str())
        .collect();
    assert_eq!(item_runs.len(), 4, "the lead and three items: {text}");
    for line in item_runs {
        let spans = line["spans"].as_array().unwrap();
        // batch's run span, its attempt, then the child's run span.
        assert_eq!(spans[0]["name"], "run");
        assert_eq!(spans[0]["task"], "batch");
        assert_eq!(spans[0]["run_id"], root_id.as_str());
        let child = &line["span"];
        assert_eq!(child["parent_run_id"], root_id.as_str(), "{line}");
        assert_eq!(
            child["tenant_id"], "tenant",
            "the item's own input's tenant"
        );
    }
    // Every item's run id is recorded, the counts exact.
    let items = envelope
        .metadata
        .branches
        .iter()
        .find(|b| b.name == "items")
        .and_then(|b| b.items.clone())
        .unwrap();
    assert_eq!((items.total, items.succeeded), (3, 3));
    let indexes: Vec<usize> = items.runs.iter().map(|r| r.index).collect();
    assert_eq!(indexes, [0, 1, 2]);
    assert!(
        items
            .runs
            .iter()
            .all(|r| r.success && r.run_id.starts_with("run_"))
    );
}

#[tokio::test]
async fn question_mark_works_inside_a_task_returning_task_error() {
    let path = std::env::temp_dir().join(format!("newcomer-{}.txt", std::process::id()));
    std::fs::write(&path, "not a number").unwrap();
    let read = |path: &std::path::Path| -> Result<u32, TaskError> {
        let text =
            std::fs::read_to_string(path).context(format!("cannot read '{}'", path.display()))?;
        let n = text.trim().parse::<u32>().or_fatal()?;
        Ok(n)
    };
    let error = read(&path).unwrap_err();
    assert_eq!(error.kind_name(), "failed");
    assert!(!error.is_retryable(), "or_fatal is never retried");
    assert!(error.downcast_ref::<std::num::ParseIntError>().is_some());
    let missing = read(std::path::Path::new("/no/such/file")).unwrap_err();
    assert!(missing.is_retryable());
    assert!(
        missing
            .to_string()
            .starts_with("cannot read '/no/such/file': "),
        "{missing}"
    );
    assert!(missing.downcast_ref::<std::io::Error>().is_some());
    std::fs::remove_file(path).unwrap();
}
