//! The runs page in a real headless Chromium (Debian's `chromium` and `chromium-driver`),
//! driven over WebDriver, against a real server on a SQLite file with a worker: the list
//! shows runs triggered through the API, a track's detail shows its steps as child runs, a
//! failed run's detail shows its error, and a status change reaches an open detail live,
//! without a reload.
//!
//! Screenshots of the list and of the failed run's detail are written to
//! `target/page-screenshots/`; with `UPDATE_SCREENSHOTS=1` they replace `docs/runs-list.png`
//! and `docs/failed-run.png`, which the README shows.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use task_tests::api::Server;
use task_tests::probe::Probe;
use task_tests::procs::KillOnDrop;

/// How long the page may take to show what the API already says (generous: a shared
/// 2-core machine runs other test binaries at the same time).
const PATIENCE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chromedriver() -> PathBuf {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect(
            "chromedriver not found: install Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver; .ci/run does)",
        )
}

/// A chromedriver on a free port, and a headless Chromium session through it.
async fn browser(profile: &Path) -> (KillOnDrop, Client) {
    let port = free_port();
    let driver = KillOnDrop(
        Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let url = format!("http://127.0.0.1:{port}");
    // The flags the machine's notes give for a closed network: no background fetches that
    // would be refused, a fresh profile, no sandbox (tests run as root).
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
    ]
    .iter()
    .map(|flag| flag.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut last_error = None;
    // chromedriver listens a moment after it starts.
    for _ in 0..100 {
        match ClientBuilder::new(connector.clone())
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return (driver, client),
            Err(error) => last_error = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no WebDriver session on {url}: {last_error:?}");
}

/// Evaluates `script` (a function body returning a value) in the page until `done` accepts
/// its value; panics with the last value after [`PATIENCE`].
async fn until(client: &Client, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let value = client.execute(script, Vec::new()).await.unwrap();
        if done(&value) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page never showed {what}; last seen: {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status the list shows for `id` (null while the row is absent).
fn row_status(id: &str) -> String {
    format!(
        "const row = document.querySelector('tr.run[data-id=\"{id}\"]'); \
         return row ? row.cells[2].textContent : null;"
    )
}

const DETAIL: &str = "return { loaded: document.getElementById('detail').dataset.loaded, \
     hidden: document.getElementById('detail').hidden, \
     status: document.getElementById('d-status').textContent, \
     error: document.getElementById('d-error').textContent, \
     cancellable: !document.getElementById('d-cancel').disabled, \
     envelope: document.getElementById('d-envelope').textContent, \
     input: document.getElementById('d-input').textContent, \
     children: [...document.querySelectorAll('#d-children tr')].map(tr => \
        [...tr.cells].map(td => td.textContent)) };";

async fn open_detail(client: &Client, id: &str) -> Value {
    client
        .find(Locator::Css(&format!("tr.run[data-id=\"{id}\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(client, &format!("the detail of {id}"), DETAIL, |detail| {
        detail["loaded"] == id
    })
    .await
}

fn save_screenshot(name: &str, png: &[u8]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/page-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        std::fs::write(root.join("docs").join(name), png).unwrap();
    }
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_page_lists_details_and_follows_runs_live() {
    let server = Server::start("page").await;
    let key = server.key("acme").await;
    let probe = Probe::new();
    let work = |label: &str| json!({ "projectId": "docs", "probe": probe.name(), "label": label });

    // Runs triggered through the API: a three-step track, a run that fails, and a run held
    // `executing` until the test opens its gate.
    let track = server
        .trigger(&key, "work_track", json!({ "payload": work("report") }))
        .await;
    let mut failing = work("invoice");
    failing["failAttempts"] = json!(1);
    failing["fatal"] = json!(true);
    let failed = server
        .trigger(&key, "work", json!({ "payload": failing }))
        .await;
    let held = server
        .trigger(&key, "gated", json!({ "payload": work("held") }))
        .await;
    server.until_status(&key, &track, "completed").await;
    server.until_status(&key, &failed, "failed").await;
    server.until_status(&key, &held, "executing").await;

    let profile = task_tests::api::scratch("page-profile");
    let (_driver, client) = browser(&profile).await;
    client.goto(&format!("{}/", server.base)).await.unwrap();
    // The page asks for a key; without one it lists nothing.
    let rows = client.find_all(Locator::Css("tr.run")).await.unwrap();
    assert!(rows.is_empty());
    client
        .find(Locator::Id("key"))
        .await
        .unwrap()
        .send_keys(&key)
        .await
        .unwrap();
    client
        .find(Locator::Css("#auth button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The list: every run with its task, status and tenant.
    for (id, status) in [
        (&track, "completed"),
        (&failed, "failed"),
        (&held, "executing"),
    ] {
        until(
            &client,
            &format!("{id} as {status}"),
            &row_status(id),
            |shown| shown == status,
        )
        .await;
    }
    let row = client
        .execute(
            &format!(
                "return [...document.querySelector('tr.run[data-id=\"{track}\"]').cells]\
                 .map(td => td.textContent);"
            ),
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(row[0], json!(track));
    assert_eq!(row[1], "work_track");
    assert_eq!(row[3], "acme");
    assert!(
        row[5].as_str().unwrap().ends_with(" ms"),
        "a duration: {row}"
    );
    // Only the three root runs are listed, not the track's steps.
    let listed = client.find_all(Locator::Css("tr.run")).await.unwrap();
    assert_eq!(listed.len(), 3);
    save_screenshot("runs-list.png", &client.screenshot().await.unwrap());

    // A track's detail shows its three steps as child runs, each completed.
    let detail = open_detail(&client, &track).await;
    assert_eq!(detail["status"], "completed");
    assert_eq!(detail["error"], "");
    let steps = detail["children"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{detail}");
    for step in steps {
        assert_eq!(step[1], "work", "{detail}");
        assert_eq!(step[2], "completed", "{detail}");
        assert!(step[3].as_str().unwrap().starts_with("run_"), "{detail}");
    }
    let envelope: Value = serde_json::from_str(detail["envelope"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["job"]["success"], true);
    assert_eq!(envelope["results"]["label"], "report-3");

    // A failed run's detail shows its error.
    let detail = open_detail(&client, &failed).await;
    assert_eq!(detail["status"], "failed");
    assert_eq!(detail["error"], "failed: work:invoice failed on attempt 1");
    assert_eq!(
        detail["cancellable"], false,
        "a finished run cannot be cancelled"
    );
    let envelope: Value = serde_json::from_str(detail["envelope"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["job"]["success"], false);
    assert_eq!(
        envelope["job"]["errorDetail"]["message"], "work:invoice failed on attempt 1",
        "{envelope}"
    );
    let input: Value = serde_json::from_str(detail["input"].as_str().unwrap()).unwrap();
    assert_eq!(input["label"], "invoice");
    save_screenshot("failed-run.png", &client.screenshot().await.unwrap());

    // A run followed live: its detail says `executing`; once the gate opens, the detail and
    // the list say `completed` without the page being loaded again (a marker set on this
    // page survives).
    let detail = open_detail(&client, &held).await;
    assert_eq!(detail["status"], "executing");
    assert_eq!(detail["cancellable"], true);
    client
        .execute("window.notReloaded = true; return null;", Vec::new())
        .await
        .unwrap();
    probe.open_gate();
    until(
        &client,
        "the held run completed in its detail",
        DETAIL,
        |detail| detail["status"] == "completed",
    )
    .await;
    until(
        &client,
        "the held run completed in the list",
        &row_status(&held),
        |shown| shown == "completed",
    )
    .await;
    let kept = client
        .execute("return window.notReloaded === true;", Vec::new())
        .await
        .unwrap();
    assert_eq!(kept, true, "the page was not reloaded");

    client.close().await.unwrap();
    server.stop().await;
    let _ = std::fs::remove_dir_all(profile);
}
