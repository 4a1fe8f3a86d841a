//! The HTTP API over a real listening server (127.0.0.1, an ephemeral port) on a real SQLite
//! file with a worker: every endpoint, every error status, cursor pagination, API keys
//! (revocation effective at once), a tenant-isolation sweep, and the event stream with a
//! reconnect from `Last-Event-ID`; the same API on PostgreSQL; and the CLI's `keys` and
//! `serve` commands as a user runs them.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use task_runtime::http::{create_key, list_keys, revoke_key};
use task_runtime::{RunFilter, Runtime};
use task_tests::api::{Server, scratch};
#[allow(unused_imports)]
use task_tests::*;

fn double(value: i64) -> Value {
    json!({ "payload": { "projectId": "docs", "value": value } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_run_is_executed_and_read_back_with_its_envelope() {
    let server = Server::start("basic").await;
    let key = server.key("acme").await;
    let id = server
        .trigger(
            &key,
            "double",
            json!({ "payload": { "projectId": "docs", "value": 21, "trampData": { "req": 7 } },
                    "options": { "tags": ["api"] } }),
        )
        .await;
    assert!(id.starts_with("run_"), "{id}");
    let run = server.until_status(&key, &id, "completed").await;
    assert_eq!(run["id"], id);
    assert_eq!(run["task"], "double");
    // The key's tenant is applied to a payload that names none.
    assert_eq!(run["tenantId"], "acme");
    assert_eq!(run["input"]["tenantId"], "acme");
    assert_eq!(run["tags"], json!(["api"]));
    assert_eq!(run["children"], json!([]));
    let envelope = &run["envelope"];
    assert_eq!(envelope["job"]["success"], true);
    assert_eq!(envelope["job"]["runId"], id);
    assert_eq!(envelope["job"]["taskName"], "double");
    assert_eq!(envelope["results"], json!({ "value": 42 }));
    assert_eq!(envelope["trampData"], json!({ "req": 7 }));
    assert_eq!(envelope["metadata"]["attempts"], 1);

    // The catalog.
    let (status, tasks) = server
        .call(Method::GET, "/api/v1/tasks", Some(&key), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"double") && ids.contains(&"work"), "{ids:?}");
    let (status, schema) = server
        .call(Method::GET, "/api/v1/tasks/double/schema", Some(&key), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(schema["id"], "double");
    assert!(
        schema["input"]["properties"]["value"].is_object(),
        "{schema}"
    );
    assert!(schema["output"].is_object());

    // The runs page is served at `/`, without a key (it asks for one).
    let page = server
        .client
        .get(format!("{}/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/api/v1/runs") && html.contains("/events"),
        "{html}"
    );

    // An idempotency key returns the first run.
    let body = json!({ "payload": { "projectId": "docs", "value": 1 },
                       "options": { "idempotencyKey": "order-42" } });
    let first = server.trigger(&key, "double", body.clone()).await;
    let second = server.trigger(&key, "double", body).await;
    assert_eq!(first, second);
    // The same key with another payload is a conflict naming the run that holds it.
    let (status, error) = server
        .call(
            Method::POST,
            "/api/v1/tasks/double/trigger",
            Some(&key),
            Some(json!({ "payload": { "projectId": "docs", "value": 2 },
                         "options": { "idempotencyKey": "order-42" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["kind"], "rejected");
    assert!(
        error["reason"].as_str().unwrap().contains(&first),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_task_error_json_with_a_fitting_status() {
    let server = Server::start_with("errors", Runtime::builder().max_input_bytes(4096)).await;
    let key = server.key("acme").await;
    let trigger = "/api/v1/tasks/double/trigger";

    // 401: no key, a malformed one, an unknown one.
    let (status, error) = server.call(Method::GET, "/api/v1/runs", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["kind"], "rejected");
    assert!(
        error["reason"]
            .as_str()
            .unwrap()
            .contains("missing API key")
    );
    let (status, error) = server
        .call(Method::GET, "/api/v1/tasks", Some("nonsense"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    let last = if key.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{last}", &key[..key.len() - 1]);
    let (status, error) = server
        .call(Method::GET, "/api/v1/tasks", Some(&forged), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["reason"], "unknown or revoked API key");

    // 400: not JSON; a key named twice.
    let (status, error) = server.raw(trigger, &key, b"{\"payload\": ".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["kind"], "invalidInput");
    assert!(
        error["issues"][0]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    let body = br#"{"payload": {"projectId": "a", "value": 1, "value": 2}}"#.to_vec();
    let (status, error) = server.raw(trigger, &key, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["issues"][0]["path"], "/payload/value");
    assert!(
        error["issues"][0]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate key `value`")
    );

    // 413: over the limit, refused before parsing (it is not even JSON).
    let (status, error) = server.raw(trigger, &key, vec![b'x'; 200_000]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["kind"], "invalidInput");
    assert!(
        error["issues"][0]["message"]
            .as_str()
            .unwrap()
            .contains("over the limit")
    );

    // 422: the schema, the options, the body's shape.
    let (status, error) = server
        .call(
            Method::POST,
            trigger,
            Some(&key),
            Some(json!({ "payload": { "projectId": "docs", "value": "x" } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["kind"], "invalidInput");
    assert_eq!(error["issues"][0]["path"], "/value");
    let (status, error) = server
        .call(
            Method::POST,
            trigger,
            Some(&key),
            Some(json!({ "payload": { "projectId": "docs", "value": 1 }, "options": { "delay": "soon" } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["issues"][0]["path"], "/options/delay");
    let (status, error) = server
        .call(
            Method::POST,
            trigger,
            Some(&key),
            Some(json!({ "value": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let (status, error) = server
        .call(
            Method::GET,
            "/api/v1/runs?status=sleeping",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["issues"][0]["path"], "status");

    // 403: another tenant in the payload.
    let (status, error) = server
        .call(
            Method::POST,
            trigger,
            Some(&key),
            Some(json!({ "payload": { "tenantId": "globex", "projectId": "docs", "value": 1 } })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error["kind"], "rejected");
    assert!(
        error["reason"]
            .as_str()
            .unwrap()
            .contains("not the API key's tenant 'acme'")
    );

    // 404: no such task (with suggestions), no such run, no such route.
    let (status, error) = server
        .call(
            Method::POST,
            "/api/v1/tasks/dubble/trigger",
            Some(&key),
            Some(double(1)),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["kind"], "notFound");
    assert_eq!(error["id"], "dubble");
    assert!(
        error["suggestions"]
            .as_array()
            .unwrap()
            .contains(&json!("double"))
    );
    let (status, error) = server
        .call(Method::GET, "/api/v1/tasks/dubble/schema", Some(&key), None)
        .await;
    assert_eq!(
        (status, &error["kind"]),
        (StatusCode::NOT_FOUND, &json!("notFound"))
    );
    for path in [
        "/api/v1/runs/run_01JZZZZZZZZZZZZZZZZZZZZZZZ",
        "/api/v1/runs/not-a-run-id",
        "/api/v1/runs/not-a-run-id/logs",
        "/api/v1/runs/not-a-run-id/events",
    ] {
        let (status, error) = server.call(Method::GET, path, Some(&key), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error["kind"], "notFound", "{path}");
    }
    let (status, error) = server.call(Method::GET, "/nowhere", Some(&key), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["kind"], "rejected");

    // Nothing refused was stored.
    assert!(
        server
            .rt
            .runs()
            .list(RunFilter::new())
            .await
            .unwrap()
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_newest_first_a_page_at_a_time() {
    let server = Server::start("pages").await;
    let key = server.key("acme").await;
    let mut ids = Vec::new();
    for value in 0..5 {
        ids.push(server.trigger(&key, "double", double(value)).await);
    }
    ids.reverse(); // newest first
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/runs?limit=2&cursor={cursor}"),
            None => "/api/v1/runs?limit=2".to_owned(),
        };
        let (status, page) = server.call(Method::GET, &path, Some(&key), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for run in page["data"].as_array().unwrap() {
            seen.push(run["id"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    for id in &ids {
        server.until_status(&key, id, "completed").await;
    }
    let (_, page) = server
        .call(
            Method::GET,
            "/api/v1/runs?status=completed&task=double",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 5);
    assert_eq!(page["nextCursor"], Value::Null);
    let (_, page) = server
        .call(Method::GET, "/api/v1/runs?task=work", Some(&key), None)
        .await;
    assert_eq!(page["data"], json!([]));
    let (status, error) = server
        .call(Method::GET, "/api/v1/runs?limit=0", Some(&key), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["issues"][0]["path"], "limit");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_cancelled_replayed_and_their_logs_read() {
    let server = Server::start("cancel").await;
    let key = server.key("acme").await;
    let delayed = server
        .trigger(
            &key,
            "double",
            json!({ "payload": { "projectId": "docs", "value": 2 }, "options": { "delay": "1h", "ttl": "2h" } }),
        )
        .await;
    server.until_status(&key, &delayed, "delayed").await;
    let (status, reply) = server
        .call(
            Method::POST,
            &format!("/api/v1/runs/{delayed}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply,
        json!({ "id": delayed, "outcome": "cancelled", "status": "cancelled" })
    );
    let run = server.until_status(&key, &delayed, "cancelled").await;
    assert_eq!(run["envelope"]["job"]["errorDetail"]["kind"], "cancelled");
    let (_, reply) = server
        .call(
            Method::POST,
            &format!("/api/v1/runs/{delayed}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(reply["outcome"], "alreadyFinished");

    let done = server.trigger(&key, "double", double(5)).await;
    server.until_status(&key, &done, "completed").await;
    let (status, reply) = server
        .call(
            Method::POST,
            &format!("/api/v1/runs/{done}/replay"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["replayOf"], done);
    let replay = reply["id"].as_str().unwrap().to_owned();
    assert_ne!(replay, done);
    let run = server.until_status(&key, &replay, "completed").await;
    assert_eq!(run["replayOf"], done);
    assert_eq!(run["tenantId"], "acme");
    assert_eq!(run["envelope"]["results"], json!({ "value": 10 }));

    let (status, logs) = server
        .call(
            Method::GET,
            &format!("/api/v1/runs/{done}/logs"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(logs["data"].is_array(), "{logs}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_from_the_next_request_on() {
    let server = Server::start("revoke").await;
    let new = create_key(&server.store, "acme").await.unwrap();
    let other = server.key("acme").await;
    assert_eq!(new.info.last_four, new.key[new.key.len() - 4..]);
    assert!(new.key.starts_with(&format!("tk_{}_", new.info.id)));
    let (status, _) = server
        .call(Method::GET, "/api/v1/runs", Some(&new.key), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let revoked = revoke_key(&server.store, &new.info.last_four)
        .await
        .unwrap();
    assert_eq!(revoked.id, new.info.id);
    let (status, error) = server
        .call(Method::GET, "/api/v1/runs", Some(&new.key), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["reason"], "unknown or revoked API key");
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/tasks/double/trigger",
            Some(&new.key),
            Some(double(1)),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The other key of the tenant still works; the listing shows both, never a key.
    let (status, _) = server
        .call(Method::GET, "/api/v1/runs", Some(&other), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let keys = list_keys(&server.store).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .any(|k| k.id == new.info.id && k.revoked_at.is_some())
    );
    assert!(
        keys.iter()
            .any(|k| k.id != new.info.id && k.revoked_at.is_none())
    );
    let listed = serde_json::to_string(&keys).unwrap();
    assert!(!listed.contains(&new.key) && !listed.contains(&other));
    assert!(
        revoke_key(&server.store, &new.info.id).await.is_err(),
        "revoked twice"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_never_reads_or_writes_another_tenants_runs() {
    let server = Server::start("tenants").await;
    let acme = server.key("acme").await;
    let globex = server.key("globex").await;
    let acme_done = server.trigger(&acme, "double", double(3)).await;
    let acme_delayed = server
        .trigger(
            &acme,
            "double",
            json!({ "payload": { "projectId": "docs", "value": 4 }, "options": { "delay": "1h" } }),
        )
        .await;
    let globex_done = server.trigger(&globex, "double", double(6)).await;
    server.until_status(&acme, &acme_done, "completed").await;
    server
        .until_status(&globex, &globex_done, "completed")
        .await;
    let before = server.rt.runs().list(RunFilter::new()).await.unwrap().len();

    for (key, theirs) in [
        (&globex, [&acme_done, &acme_delayed]),
        (&acme, [&globex_done, &globex_done]),
    ] {
        for id in theirs {
            for (method, path) in [
                (Method::GET, format!("/api/v1/runs/{id}")),
                (Method::GET, format!("/api/v1/runs/{id}/logs")),
                (Method::GET, format!("/api/v1/runs/{id}/events")),
                (Method::POST, format!("/api/v1/runs/{id}/cancel")),
                (Method::POST, format!("/api/v1/runs/{id}/replay")),
            ] {
                let (status, error) = server.call(method, &path, Some(key), None).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {error}");
                assert_eq!(error["kind"], "notFound", "{path}");
                assert_eq!(error["id"], json!(id), "{path}");
            }
            // A page starting at the other tenant's run lists only the caller's own.
            let (_, page) = server
                .call(
                    Method::GET,
                    &format!("/api/v1/runs?cursor={id}&limit=1000"),
                    Some(key),
                    None,
                )
                .await;
            assert!(!page.to_string().contains(id.as_str()));
        }
    }
    // Listings hold only the caller's runs.
    let (_, page) = server
        .call(Method::GET, "/api/v1/runs", Some(&globex), None)
        .await;
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [globex_done.as_str()]);
    assert!(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenantId"] == "globex")
    );
    // A payload naming the other tenant is refused.
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/tasks/double/trigger",
            Some(&globex),
            Some(json!({ "payload": { "tenantId": "acme", "projectId": "docs", "value": 1 } })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Zero writes: no run was added, the delayed one was not cancelled.
    let after = server.rt.runs().list(RunFilter::new()).await.unwrap();
    assert_eq!(after.len(), before);
    let delayed = after
        .iter()
        .find(|r| r.id.as_str() == acme_delayed)
        .unwrap();
    assert_eq!(delayed.status.as_str(), "delayed");
    server.stop().await;
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// Reads the event stream of `id` until it closes (bounded: 10 s), calling `each` on every
/// event as it arrives.
async fn follow(
    server: &Server,
    key: &str,
    id: &str,
    last_event_id: Option<&str>,
    mut each: impl AsyncFnMut(&Sse),
) -> Vec<Sse> {
    let mut request = server
        .client
        .get(format!("{}/api/v1/runs/{id}/events", server.base))
        .bearer_auth(key);
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = Sse {
                    id: None,
                    event: "message".to_owned(),
                    data: Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    let field = |name: &str| {
                        line.strip_prefix(name)
                            .map(|rest| rest.strip_prefix(' ').unwrap_or(rest).to_owned())
                    };
                    if let Some(id) = field("id:") {
                        event.id = Some(id);
                    } else if let Some(name) = field("event:") {
                        event.event = name;
                        any = true;
                    } else if let Some(data) = field("data:") {
                        event.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                        any = true;
                    }
                }
                if any {
                    each(&event).await;
                    events.push(event);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the event stream ends when the run finished");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_events_stream_live_and_resume_from_last_event_id() {
    let server = Server::start("events").await;
    let key = server.key("acme").await;

    // A delayed run: the stream says so, then follows the cancel made meanwhile.
    let delayed = server
        .trigger(
            &key,
            "double",
            json!({ "payload": { "projectId": "docs", "value": 2 }, "options": { "delay": "1h" } }),
        )
        .await;
    let cancel_path = format!("/api/v1/runs/{delayed}/cancel");
    let events = follow(&server, &key, &delayed, None, async |event: &Sse| {
        if event.event == "status" && event.data["status"] == "delayed" {
            let (status, _) = server
                .call(Method::POST, &cancel_path, Some(&key), None)
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    })
    .await;
    let names: Vec<(&str, Value)> = events
        .iter()
        .filter(|e| e.event != "log")
        .map(|e| {
            (
                e.event.as_str(),
                e.data.get("status").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("status", json!("delayed")),
            ("status", json!("cancelled")),
            ("envelope", Value::Null),
        ]
    );
    let envelope = &events.last().unwrap().data;
    assert_eq!(envelope["job"]["runId"], delayed);
    assert_eq!(envelope["job"]["errorDetail"]["kind"], "cancelled");
    assert!(events.iter().all(|e| e.id.is_some()), "{events:?}");

    // Reconnecting after the first event misses nothing after it, repeats nothing before.
    let first = events[0].id.clone().unwrap();
    let resumed = follow(&server, &key, &delayed, Some(&first), async |_: &Sse| {}).await;
    assert_eq!(resumed.as_slice(), &events[1..]);
    // After the final event there is nothing more.
    let last = events.last().unwrap().id.clone().unwrap();
    assert!(last.ends_with("-end"), "{last}");
    let after = follow(&server, &key, &delayed, Some(&last), async |_: &Sse| {}).await;
    assert!(after.is_empty(), "{after:?}");

    // A run executed by the worker: its stream ends with the completed envelope.
    let id = server.trigger(&key, "double", double(8)).await;
    let events = follow(&server, &key, &id, None, async |_: &Sse| {}).await;
    let statuses: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| &e.data["status"])
        .collect();
    assert_eq!(
        statuses.last().unwrap().as_str(),
        Some("completed"),
        "{events:?}"
    );
    let envelope = events.last().unwrap();
    assert_eq!(envelope.event, "envelope");
    assert_eq!(envelope.data["job"]["success"], true);
    assert_eq!(envelope.data["results"], json!({ "value": 16 }));

    // A Last-Event-ID that this stream never sent is refused.
    let response = server
        .client
        .get(format!("{}/api/v1/runs/{id}/events", server.base))
        .bearer_auth(&key)
        .header("Last-Event-ID", "garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_its_keys_work_on_postgres_too() {
    let url = task_tests::pg::server().database("http_api");
    let server = Server::on(&url, Runtime::builder()).await;
    let new = create_key(&server.store, "acme").await.unwrap();
    let globex = server.key("globex").await;
    let id = server.trigger(&new.key, "double", double(21)).await;
    let run = server.until_status(&new.key, &id, "completed").await;
    assert_eq!(run["tenantId"], "acme");
    assert_eq!(run["envelope"]["results"], json!({ "value": 42 }));
    let (status, error) = server
        .call(
            Method::GET,
            &format!("/api/v1/runs/{id}"),
            Some(&globex),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["kind"], "notFound");
    let (_, page) = server
        .call(Method::GET, "/api/v1/runs", Some(&globex), None)
        .await;
    assert_eq!(page["data"], json!([]));
    revoke_key(&server.store, &new.info.id).await.unwrap();
    let (status, _) = server
        .call(Method::GET, "/api/v1/runs", Some(&new.key), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let keys = list_keys(&server.store).await.unwrap();
    assert_eq!(keys.len(), 2);
    // The queue gauges read PostgreSQL too (nothing waits: the one run completed).
    let (status, metrics) = server.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK, "{metrics}");
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.lines().any(|l| l == "task_queue_depth 0"),
        "{metrics}"
    );
    server.stop().await;
}

const APP: &str = env!("CARGO_BIN_EXE_fixture-app");

/// `serve` killed (SIGTERM) when the test ends however it ends.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_serve_from_the_command_line() {
    use std::process::{Command, Stdio};

    let dir = scratch("cli");
    let url = format!("sqlite://{}/runs.db", dir.display());
    let app = |args: &[&str]| {
        Command::new(APP)
            .env("TASK_STORE", &url)
            .args(args)
            .output()
            .expect("the binary runs")
    };
    let created = app(&["keys", "create", "--tenant", "acme"]);
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("tk_"), "{key}");
    let stderr = String::from_utf8(created.stderr).unwrap();
    assert!(stderr.contains("shown this once"), "{stderr}");
    let listed = app(&["keys", "list", "--json"]);
    assert!(listed.status.success());
    let keys: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(keys[0]["tenantId"], "acme");
    assert_eq!(keys[0]["lastFour"], key[key.len() - 4..]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&key));
    let second = app(&["keys", "create", "--tenant", "acme"]);
    let second = String::from_utf8(second.stdout).unwrap().trim().to_owned();
    let table = app(&["keys", "list"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("live"));
    let missing = app(&["keys", "revoke", "zzzz-none"]);
    assert_eq!(missing.status.code(), Some(2));

    let mut serve = Serving(
        Command::new(APP)
            .env("TASK_STORE", &url)
            .args(["serve", "--listen", "127.0.0.1:0", "--grace", "5s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let base = task_tests::procs::served_at(&mut serve.0);
    let client = Client::new();
    let reply: Value = client
        .post(format!("{base}/api/v1/tasks/double/trigger"))
        .bearer_auth(&key)
        .json(&double(4))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = reply["id"].as_str().unwrap().to_owned();
    let finished = task_tests::api::until_status(&client, &base, &key, &id, "completed").await;
    assert_eq!(
        finished["envelope"]["results"],
        json!({ "value": 8 }),
        "the worker of serve ran it"
    );
    // `serve` counts what its worker ran on `GET /metrics` (no key needed).
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"task_runs_finished_total{task="double",status="completed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "task_queue_depth 0"),
        "{metrics}"
    );

    // Revoked from another process: refused by the server at once.
    let revoked = app(&["keys", "revoke", &key[key.len() - 4..]]);
    assert!(revoked.status.success(), "{revoked:?}");
    let status = client
        .get(format!("{base}/api/v1/runs"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let status = client
        .get(format!("{base}/api/v1/runs"))
        .bearer_auth(&second)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);

    // An event stream open on a run that waits an hour does not hold the shutdown.
    let delayed: Value = client
        .post(format!("{base}/api/v1/tasks/double/trigger"))
        .bearer_auth(&second)
        .json(&json!({ "payload": { "projectId": "docs", "value": 1 }, "options": { "delay": "1h" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut open = client
        .get(format!(
            "{base}/api/v1/runs/{}/events",
            delayed["id"].as_str().unwrap()
        ))
        .bearer_auth(&second)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let first = open.chunk().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("delayed"),
        "{first:?}"
    );

    // SIGTERM: a graceful stop, exit code 0.
    let killed = Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(std::time::Instant::now() < deadline, "serve did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
    // The stream ended with the server.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = open.chunk().await {}
    })
    .await;
    assert!(
        rest.is_ok(),
        "the event stream stays open after serve stopped"
    );
}
