//! Load against `docs-pipeline serve` on loopback: N clients (64) for S seconds (30), each
//! triggering a `count_words` run and reading its status back, in a loop. Then every run
//! triggered is followed until it finishes.
//!
//! Prints requests/s and latency percentiles per request kind; exits non-zero on any error
//! response, a run that did not complete, or one completed twice. BENCHMARKS.md keeps the
//! figures.
//!
//! ```text
//! cargo bench -p docs-pipeline --bench serve_load -- [--clients 64] [--seconds 30] [--concurrency 16]
//! ```
//!
//! The server is the real binary (`serve` with its own worker) on a fresh SQLite file in a
//! temporary directory; the key comes from `keys create`, as a user makes one.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

struct Args {
    clients: usize,
    seconds: u64,
    concurrency: usize,
}

fn args() -> Args {
    let mut args = Args {
        clients: 64,
        seconds: 30,
        concurrency: 16,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || {
            given
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--clients" => args.clients = value() as usize,
            "--seconds" => args.seconds = value(),
            "--concurrency" => args.concurrency = value() as usize,
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    args
}

/// Kills the server if the bench panics.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    trigger: Option<Histogram<u64>>,
    read: Option<Histogram<u64>>,
    errors: Vec<String>,
    ids: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 60 s, 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

async fn client(
    http: reqwest::Client,
    base: Arc<str>,
    key: Arc<str>,
    until: Instant,
    client: usize,
) -> Seen {
    let mut trigger = histogram();
    let mut read = histogram();
    let mut seen = Seen::default();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let body = json!({ "payload": {
            "projectId": "load",
            "text": format!("Client {client} sends text number {n}. It has two sentences."),
        } });
        let started = Instant::now();
        let reply = http
            .post(format!("{base}/api/v1/tasks/count_words/trigger"))
            .bearer_auth(&*key)
            .json(&body)
            .send()
            .await;
        let id = match reply {
            Ok(reply) if reply.status().is_success() => {
                let reply: Value = reply.json().await.unwrap();
                trigger
                    .record(started.elapsed().as_micros() as u64)
                    .unwrap();
                reply["id"].as_str().unwrap().to_owned()
            }
            Ok(reply) => {
                let status = reply.status();
                seen.errors.push(format!(
                    "trigger: {status} {}",
                    reply.text().await.unwrap_or_default()
                ));
                continue;
            }
            Err(error) => {
                seen.errors.push(format!("trigger: {error}"));
                continue;
            }
        };
        let started = Instant::now();
        match http
            .get(format!("{base}/api/v1/runs/{id}"))
            .bearer_auth(&*key)
            .send()
            .await
        {
            Ok(reply) if reply.status().is_success() => {
                let run: Value = reply.json().await.unwrap();
                read.record(started.elapsed().as_micros() as u64).unwrap();
                assert_eq!(run["id"], id.as_str());
            }
            Ok(reply) => seen.errors.push(format!("read: {}", reply.status())),
            Err(error) => seen.errors.push(format!("read: {error}")),
        }
        seen.ids.push(id);
    }
    seen.trigger = Some(trigger);
    seen.read = Some(read);
    seen
}

fn report(name: &str, histogram: &Histogram<u64>, seconds: f64) {
    println!(
        "{name:<8} {:>8} requests {:>8.0} req/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms",
        histogram.len(),
        histogram.len() as f64 / seconds,
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.9) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = std::env::temp_dir().join(format!("serve-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite://{}/runs.db", dir.display());
    let binary = env!("CARGO_BIN_EXE_docs-pipeline");

    let created = Command::new(binary)
        .args(["--store", &store, "keys", "create", "--tenant", "acme"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let key: Arc<str> = String::from_utf8(created.stdout).unwrap().trim().into();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _server = Server(
        Command::new(binary)
            .args(["--store", &store, "serve", "--listen", &listen])
            .args(["--concurrency", &args.concurrency.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let base: Arc<str> = format!("http://{listen}").into();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if http.get(format!("{base}/")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "serve did not start on {listen}");

    println!(
        "{} clients for {} s against serve --concurrency {} (SQLite file)",
        args.clients, args.seconds, args.concurrency
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let clients: Vec<_> = (0..args.clients)
        .map(|n| tokio::spawn(client(http.clone(), base.clone(), key.clone(), until, n)))
        .collect();
    let mut trigger = histogram();
    let mut read = histogram();
    let mut errors = Vec::new();
    let mut ids = Vec::new();
    for seen in clients {
        let seen = seen.await.unwrap();
        trigger.add(seen.trigger.unwrap()).unwrap();
        read.add(seen.read.unwrap()).unwrap();
        errors.extend(seen.errors);
        ids.extend(seen.ids);
    }
    let elapsed = started.elapsed().as_secs_f64();
    report("trigger", &trigger, elapsed);
    report("read", &read, elapsed);
    println!(
        "all      {:>8} requests {:>8.0} req/s  ({} errors)",
        trigger.len() + read.len(),
        (trigger.len() + read.len()) as f64 / elapsed,
        errors.len()
    );

    // Every run triggered finishes, completed, exactly once (attempts 1).
    let drain = Instant::now();
    let mut pending = ids.clone();
    let mut lost = Vec::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for chunk in pending.chunks(256) {
            let reads = chunk.iter().map(|id| {
                let http = http.clone();
                let url = format!("{base}/api/v1/runs/{id}");
                let key = key.clone();
                async move {
                    let run: Value = http
                        .get(url)
                        .bearer_auth(&*key)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    run
                }
            });
            for (id, run) in chunk
                .iter()
                .zip(futures_util::future::join_all(reads).await)
            {
                match run["status"].as_str() {
                    Some("completed") if run["envelope"]["metadata"]["attempts"] == 1 => {}
                    Some("completed" | "failed" | "cancelled" | "expired") => {
                        lost.push(format!("{id}: {}", run["status"]))
                    }
                    _ => still.push(id.clone()),
                }
            }
        }
        pending = still;
        if !pending.is_empty() {
            assert!(
                drain.elapsed() < Duration::from_secs(600),
                "{} runs never finished",
                pending.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "{} runs triggered, all completed once; the backlog drained {:.1} s after the load stopped",
        ids.len(),
        drain.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    if !errors.is_empty() || !lost.is_empty() {
        eprintln!("errors: {:?}", &errors[..errors.len().min(10)]);
        eprintln!("not completed once: {:?}", &lost[..lost.len().min(10)]);
        std::process::exit(1);
    }
}
