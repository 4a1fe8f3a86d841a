//! The HTTP API served for real: a SQLite file (or any store URL), a worker and the API on
//! an ephemeral 127.0.0.1 port, with a `reqwest` client. Shared by the API tests and the
//! runs-page browser test.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use task_runtime::http::create_key;
use task_runtime::{Runtime, Store, Worker};

/// A fresh scratch directory for one test (emptied first).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("http-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub rt: Runtime,
    pub store: Store,
    pub client: Client,
    worker: Option<Worker>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    pub async fn start(name: &str) -> Server {
        Server::start_with(name, Runtime::builder()).await
    }

    pub async fn start_with(name: &str, builder: task_runtime::RuntimeBuilder) -> Server {
        let dir = scratch(name);
        Server::on(&format!("sqlite://{}/runs.db", dir.display()), builder).await
    }

    pub async fn on(url: &str, builder: task_runtime::RuntimeBuilder) -> Server {
        let store = Store::connect(url).await.expect("store opens");
        let rt = builder.store(store.clone()).build().unwrap();
        let worker = rt.worker().concurrency(4).start();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(task_runtime::http::serve(listener, rt.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            base,
            rt,
            store,
            client: Client::new(),
            worker: Some(worker),
            stop: Some(stop),
        }
    }

    pub async fn key(&self, tenant: &str) -> String {
        create_key(&self.store, tenant).await.unwrap().key
    }

    /// A request with `key`, its status and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn raw(&self, path: &str, key: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn trigger(&self, key: &str, task: &str, body: Value) -> String {
        let (status, reply) = self
            .call(
                Method::POST,
                &format!("/api/v1/tasks/{task}/trigger"),
                Some(key),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        reply["id"].as_str().unwrap().to_owned()
    }

    /// Polls the run until its status is `want` (see [`until_status`]).
    pub async fn until_status(&self, key: &str, id: &str, want: &str) -> Value {
        until_status(&self.client, &self.base, key, id, want).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(worker) = self.worker.take() {
            worker.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// Polls `GET {base}/api/v1/runs/{id}` with `key` until the run's status is `want`, and
/// returns the run; panics when it ends with another status, or after 60 s.
pub async fn until_status(client: &Client, base: &str, key: &str, id: &str, want: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let response = client
            .get(format!("{base}/api/v1/runs/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let run: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{run}");
        if run["status"] == want {
            return run;
        }
        let ended = ["completed", "failed", "cancelled", "expired"];
        assert!(
            !ended.iter().any(|s| run["status"] == *s),
            "run {id} ended {} instead of {want}: {run}",
            run["status"]
        );
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} never reached {want}: {run}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
