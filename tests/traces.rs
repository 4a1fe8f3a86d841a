//! OpenTelemetry traces across processes: `serve` (API only) takes an HTTP trigger of
//! `docs_orchestrator` with a W3C `traceparent` header, a `worker` in another process executes
//! it (the orchestrator's branches and items as runs of their own), and both export their
//! spans over OTLP/HTTP to a receiver in this test. What arrives is one trace, the header's,
//! whose spans nest request -> run -> branches -> track steps with the runs' attributes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtelStatus;
use prost::Message;
use reqwest::Client;
use serde_json::Value;
use task_tests::api::scratch;
use task_tests::procs::{KillOnDrop, served_at, signal};

const APP: &str = env!("CARGO_BIN_EXE_docs-app");

/// One received span, with the service that exported it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
    error: bool,
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// What an OTLP/HTTP exporter sends to `/v1/traces`, decoded.
fn decode(body: &[u8]) -> Vec<Received> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Received {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                    error: span
                        .status
                        .as_ref()
                        .is_some_and(|s| s.code == OtelStatus::Error as i32),
                });
            }
        }
    }
    spans
}

/// An OTLP/HTTP receiver on 127.0.0.1: every span exported to it, in arrival order.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().extend(decode(&body));
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (endpoint, spans)
}

/// SIGTERM, then the exit code of a graceful stop (bounded: 20 s).
async fn stop(child: &mut KillOnDrop) -> Option<i32> {
    signal(child, "TERM");
    exited(child, Duration::from_secs(20)).await
}

/// The exit code of `child` once it exits, which it must within `bound`.
async fn exited(child: &mut KillOnDrop, bound: Duration) -> Option<i32> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The spans from `span` up to the root of the trace, nearest first.
fn ancestors<'a>(spans: &'a [Received], span: &Received) -> Vec<&'a Received> {
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = Vec::new();
    let mut next = by_id.get(span.parent.as_str());
    while let Some(parent) = next {
        chain.push(*parent);
        next = by_id.get(parent.parent.as_str());
    }
    chain
}

/// The nearest `run` span above `span` (its parent run).
fn parent_run<'a>(spans: &'a [Received], span: &Received) -> Option<&'a Received> {
    ancestors(spans, span)
        .into_iter()
        .find(|s| s.attributes.contains_key("run_id") && s.name != "attempt")
}

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example app on the store `url`, exporting its spans to `endpoint` as `service`.
fn app(url: &str, endpoint: &str, service: &str, args: &[&str]) -> Command {
    let mut command = Command::new(APP);
    command
        .current_dir(workspace())
        .env("TASK_STORE", url)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", service)
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("RUST_LOG")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_trigger_executed_by_another_process_is_one_trace() {
    let dir = scratch("traces");
    http_trigger_is_one_trace(&format!("sqlite://{}/runs.db", dir.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_trigger_executed_by_a_postgres_worker_is_one_trace() {
    http_trigger_is_one_trace(&task_tests::pg::server().database("traces_http")).await;
}

/// `serve` (API only) and a worker in another process on the store `url`: one HTTP trigger
/// of `docs_orchestrator` with a `traceparent` header is one trace.
async fn http_trigger_is_one_trace(url: &str) {
    let (endpoint, received) = receiver().await;
    let url = url.to_owned();
    let created = Command::new(APP)
        .env("TASK_STORE", &url)
        .args(["keys", "create", "--tenant", "acme"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let workspace = workspace();

    let app = |service: &str, args: &[&str]| {
        KillOnDrop(app(&url, &endpoint, service, args).spawn().unwrap())
    };
    // The API with no worker of its own: only the other process executes runs.
    let mut serve = app(
        "docs-serve",
        &["serve", "--listen", "127.0.0.1:0", "--concurrency", "0"],
    );
    let base = served_at(&mut serve);
    let mut worker = app("docs-worker", &["worker", "--concurrency", "4"]);
    let worker_err = worker.stderr.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(worker_err).lines() {});

    // The caller's trace: a trace id and the id of the caller's span.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_id = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 96));
    let caller_span = "00f067aa0ba902b7";
    let input: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace.join("examples/docs/input.json")).unwrap(),
    )
    .unwrap();
    let documents = input["documents"].as_array().unwrap().len();
    let client = Client::new();
    let reply: Value = client
        .post(format!("{base}/api/v1/tasks/docs_orchestrator/trigger"))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&serde_json::json!({ "payload": input }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = reply["id"].as_str().expect("a run id").to_owned();
    // A header that is not a traceparent is ignored: the trigger succeeds, its request span
    // starts a trace of its own. (Delayed an hour: no worker executes it here.)
    let ignored = client
        .post(format!("{base}/api/v1/tasks/docs_orchestrator/trigger"))
        .bearer_auth(&key)
        .header("traceparent", "00-not-a-trace-01")
        .json(&serde_json::json!({ "payload": input, "options": { "delay": "1h" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(ignored.status(), reqwest::StatusCode::OK);
    let ignored: Value = ignored.json().await.unwrap();
    let ignored_id = ignored["id"].as_str().expect("a run id").to_owned();
    task_tests::api::until_status(&client, &base, &key, &run_id, "completed").await;
    // A graceful stop flushes each process's spans before it exits.
    assert_eq!(stop(&mut worker).await, Some(0), "worker stops gracefully");
    assert_eq!(stop(&mut serve).await, Some(0), "serve stops gracefully");
    // Every export was answered before the exporters shut down; the bound only guards a
    // receiver that has not stored the last one yet.
    let expected_runs = 1 + documents * 4 + 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = received.lock().unwrap().clone();
        let runs: std::collections::HashSet<&str> = spans
            .iter()
            .filter(|s| s.name != "attempt")
            .filter_map(|s| s.attr("run_id"))
            .collect();
        if runs.len() >= expected_runs || Instant::now() > deadline {
            break spans;
        }
        drop(runs);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The trigger with the bad header: a request span of its own trace, nothing else.
    let (ignored, spans): (Vec<Received>, Vec<Received>) = spans
        .into_iter()
        .partition(|s| s.attr("run_id") == Some(ignored_id.as_str()));
    assert_eq!(ignored.len(), 1, "{ignored:#?}");
    assert_eq!(ignored[0].parent, "", "a root: {ignored:#?}");
    assert_ne!(ignored[0].trace_id, trace_id);

    // One trace: the header's, from both processes.
    let foreign: Vec<&Received> = spans.iter().filter(|s| s.trace_id != trace_id).collect();
    assert!(
        foreign.is_empty(),
        "spans outside the caller's trace: {foreign:#?}"
    );
    let services: std::collections::HashSet<&str> =
        spans.iter().map(|s| s.service.as_str()).collect();
    assert!(
        services.contains("docs-serve") && services.contains("docs-worker"),
        "{services:?}"
    );

    // request: the caller's span is its parent.
    let requests: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name == "POST /api/v1/tasks/{id}/trigger")
        .collect();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let request = requests[0];
    assert_eq!(request.service, "docs-serve");
    assert_eq!(request.parent, caller_span);
    assert_eq!(request.attr("run_id"), Some(run_id.as_str()));
    assert_eq!(request.attr("task"), Some("docs_orchestrator"));
    assert_eq!(request.attr("http.response.status_code"), Some("200"));

    // run: every execution of the orchestrator (it waits for its children in between) is a
    // child of the request, in the worker's process.
    let roots: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name == "docs_orchestrator")
        .collect();
    assert!(!roots.is_empty());
    for root in &roots {
        assert_eq!(root.service, "docs-worker");
        assert_eq!(root.parent, request.span_id, "{root:#?}");
        assert_eq!(root.attr("task"), Some("docs_orchestrator"));
        assert_eq!(root.attr("run_id"), Some(run_id.as_str()));
        assert_eq!(root.attr("tenant_id"), Some("acme"));
        assert_eq!(root.attr("project_id"), Some("handbook"));
        assert_eq!(root.attr("attempt"), Some("1"));
        assert!(!root.error, "{root:#?}");
    }
    let last = roots
        .iter()
        .filter(|r| r.attr("status") == Some("completed"))
        .count();
    assert_eq!(last, 1, "the last execution completed: {roots:#?}");
    assert!(
        roots
            .iter()
            .filter(|r| r.attr("status") != Some("completed"))
            .all(|r| r.attr("status") == Some("waiting")),
        "{roots:#?}"
    );
    let root_ids: Vec<&str> = roots.iter().map(|r| r.span_id.as_str()).collect();

    // branches: `documents` items (text_track) and `corpus` (corpus_stats), each a run of
    // its own under an execution of the orchestrator.
    let branch = |task: &str| -> Vec<&Received> {
        spans.iter().filter(|s| s.name == task).collect::<Vec<_>>()
    };
    let tracks = branch("text_track");
    let corpus = branch("corpus_stats");
    assert_eq!(tracks.len(), documents, "{tracks:#?}");
    assert_eq!(corpus.len(), 1, "{corpus:#?}");
    for run in tracks.iter().chain(&corpus) {
        let above = parent_run(&spans, run).expect("a branch has a parent run");
        assert!(
            root_ids.contains(&above.span_id.as_str()),
            "{run:#?} under {above:#?}"
        );
        assert_eq!(run.service, "docs-worker");
        assert_eq!(run.attr("tenant_id"), Some("acme"));
        assert_eq!(run.attr("project_id"), Some("handbook"));
        assert_eq!(run.attr("attempt"), Some("1"));
        assert_eq!(run.attr("status"), Some("completed"));
        assert!(run.attr("run_id").is_some_and(|id| id != run_id));
    }
    let track_runs: std::collections::HashSet<&str> =
        tracks.iter().filter_map(|t| t.attr("run_id")).collect();
    assert_eq!(track_runs.len(), documents, "one run per document");

    // track steps: extract, count, summarise under each text_track run, in step order.
    for track in &tracks {
        let mut steps: Vec<&Received> = spans
            .iter()
            .filter(|s| {
                s.name != "attempt"
                    && parent_run(&spans, s).is_some_and(|p| p.span_id == track.span_id)
            })
            .collect();
        steps.sort_by_key(|s| s.attr("position").map(str::to_owned));
        let tasks: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            tasks,
            ["extract_text", "count_words", "summarise"],
            "{steps:#?}"
        );
        for (index, step) in steps.iter().enumerate() {
            let position = format!("step:{index}");
            assert_eq!(step.attr("position"), Some(position.as_str()));
            assert_eq!(step.attr("task"), Some(step.name.as_str()));
            assert_eq!(step.attr("parent_run_id"), track.attr("run_id"));
            assert_eq!(step.attr("tenant_id"), Some("acme"));
            assert_eq!(step.attr("project_id"), Some("handbook"));
            assert_eq!(step.attr("attempt"), Some("1"));
            assert_eq!(step.attr("status"), Some("completed"));
        }
    }

    // attempts: between each run and what it runs, carrying the run's attributes.
    let attempts: Vec<&Received> = spans.iter().filter(|s| s.name == "attempt").collect();
    assert!(!attempts.is_empty());
    for attempt in &attempts {
        let run = parent_run(&spans, attempt).expect("an attempt is inside a run");
        assert_eq!(attempt.parent, run.span_id, "{attempt:#?}");
        assert_eq!(attempt.attr("run_id"), run.attr("run_id"));
        assert_eq!(attempt.attr("task"), run.attr("task"));
        assert_eq!(attempt.attr("tenant_id"), Some("acme"));
        assert_eq!(attempt.attr("attempt"), Some("1"));
    }
    // No span failed; everything that ran is in this one trace.
    assert!(spans.iter().all(|s| !s.error), "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_trigger_is_continued_by_the_worker_that_executes_it() {
    let dir = scratch("traces-cli");
    cli_trigger_continued(&format!("sqlite://{}/runs.db", dir.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_trigger_is_continued_by_a_postgres_worker() {
    cli_trigger_continued(&task_tests::pg::server().database("traces")).await;
}

/// `trigger --wait` in one process, a worker in another, on the store `url`: the worker's
/// spans continue the trace of the CLI's `trigger` span, which the run stored.
async fn cli_trigger_continued(url: &str) {
    let (endpoint, received) = receiver().await;
    let url = url.to_owned();
    // Migrated before the two processes open it at once.
    drop(
        task_runtime::Store::connect(&url)
            .await
            .expect("the store opens"),
    );
    let mut worker = KillOnDrop(
        app(
            &url,
            &endpoint,
            "docs-worker",
            &["worker", "--concurrency", "2"],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    // `trigger --wait` in a process of its own: the run stores its `trigger` span's context.
    let mut triggering = KillOnDrop(
        app(
            &url,
            &endpoint,
            "docs-cli",
            &[
                "trigger",
                "text_track",
                "--input",
                "examples/docs/inputs/text_track.json",
                "--wait",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let code = exited(&mut triggering, Duration::from_secs(60)).await;
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut triggering.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(code, Some(0), "{stdout}");
    let envelope: Value = serde_json::from_str(&stdout).unwrap();
    let run_id = envelope["job"]["runId"].as_str().unwrap().to_owned();
    assert_eq!(stop(&mut worker).await, Some(0), "worker stops gracefully");
    let spans = received.lock().unwrap().clone();

    let trigger: Vec<&Received> = spans.iter().filter(|s| s.name == "trigger").collect();
    assert_eq!(trigger.len(), 1, "{spans:#?}");
    let trigger = trigger[0];
    assert_eq!(trigger.service, "docs-cli");
    assert_eq!(trigger.parent, "", "the CLI's span starts the trace");
    assert_eq!(trigger.attr("task"), Some("text_track"));
    let run: Vec<&Received> = spans.iter().filter(|s| s.name == "text_track").collect();
    assert_eq!(run.len(), 1, "{spans:#?}");
    let run = run[0];
    assert_eq!(run.service, "docs-worker");
    assert_eq!(run.trace_id, trigger.trace_id);
    assert_eq!(run.parent, trigger.span_id);
    assert_eq!(run.attr("run_id"), Some(run_id.as_str()));
    assert_eq!(run.attr("status"), Some("completed"));
    let steps: Vec<&str> = spans
        .iter()
        .filter(|s| {
            s.name != "attempt" && parent_run(&spans, s).is_some_and(|p| p.span_id == run.span_id)
        })
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert!(
        spans.iter().all(|s| s.trace_id == trigger.trace_id),
        "{spans:#?}"
    );
}
