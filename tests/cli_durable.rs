//! The durable commands of the CLI, as a user runs them: `trigger` in one process, `worker`
//! in another, `runs list|show|logs|cancel|replay` afterwards, and the errors for a bad
//! store URL or file.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use task_tests::procs::KillOnDrop as Worker;

const APP: &str = env!("CARGO_BIN_EXE_fixture-app");

struct Cli {
    dir: PathBuf,
    url: String,
}

impl Cli {
    fn new(name: &str) -> Cli {
        let dir = std::env::temp_dir().join(format!("cli-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Cli {
            url: format!("sqlite://{}/runs.db", dir.display()),
            dir,
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(APP);
        command
            .env("TASK_STORE", &self.url)
            .env("FIXTURE_LOG", self.dir.join("executions.log"))
            .env("RUST_LOG", "info");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("the binary runs")
    }

    fn worker(&self) -> Worker {
        Worker(
            self.command()
                .args(["worker", "--concurrency", "4"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

const INPUT: &str = r#"{"tenantId": "acme", "projectId": "docs", "label": "cli", "millis": 10}"#;

#[test]
fn trigger_in_one_process_execute_in_another_then_look_at_the_runs() {
    let cli = Cli::new("walkthrough");
    let triggered = cli.run(&["trigger", "record_track", "--input", INPUT, "--tag", "demo"]);
    assert_eq!(triggered.status.code(), Some(0), "{}", stderr(&triggered));
    let id = stdout(&triggered).trim().to_owned();
    assert!(id.starts_with("run_"), "{id}");

    let listed = json(&cli.run(&["runs", "list", "--json"]));
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "queued");
    assert_eq!(listed[0]["tags"][0], "demo");

    let mut worker = cli.worker();
    let start = Instant::now();
    loop {
        let shown = json(&cli.run(&["runs", "show", &id, "--json"]));
        if shown["status"] == "completed" {
            let positions: Vec<&str> = shown["children"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["position"].as_str().unwrap())
                .collect();
            assert_eq!(positions, ["step:0", "step:1", "step:2"]);
            assert_eq!(shown["envelope"]["job"]["success"], true);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the worker ran it: {shown}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let human = stdout(&cli.run(&["runs", "show", &id]));
    assert!(
        human.contains("record_track  completed") && human.contains("step:2  record  completed"),
        "{human}"
    );

    // Its events, and those of its steps, were kept.
    let logs = stdout(&cli.run(&["runs", "logs", &id]));
    assert!(logs.contains(&format!("{id} run started")), "{logs}");
    assert_eq!(
        logs.matches("run succeeded").count(),
        4,
        "the track and its 3 steps: {logs}"
    );

    // `--wait` prints the envelope.
    let waited = cli.run(&["trigger", "record", "--input", INPUT, "--wait"]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));
    assert_eq!(json(&waited)["results"]["label"], "cli");

    // Cancel a delayed run; replay the finished one.
    let delayed = cli.run(&["trigger", "record", "--input", INPUT, "--delay", "1h"]);
    let delayed = stdout(&delayed).trim().to_owned();
    let cancelled = cli.run(&["runs", "cancel", &delayed]);
    assert_eq!(
        stdout(&cancelled).trim(),
        format!("{delayed}: cancelled (it had not started)")
    );
    let again = cli.run(&["runs", "cancel", &delayed]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stdout(&again).contains("already finished: cancelled"));
    let replayed = cli.run(&["runs", "replay", &id]);
    let replay = stdout(&replayed).trim().to_owned();
    assert!(replay.starts_with("run_") && replay != id);
    let filtered = json(&cli.run(&["runs", "list", "--status", "cancelled", "--json"]));
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    assert_eq!(filtered[0]["id"], delayed.as_str());

    let status = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        worker.0.wait().unwrap().success(),
        "the worker stops cleanly on SIGTERM"
    );
    std::fs::remove_dir_all(&cli.dir).ok();
}

#[test]
fn bad_stores_and_ids_are_usage_errors_that_say_why() {
    let cli = Cli::new("errors");
    let bad_url = cli.run(&["--store", "mysql://x", "runs", "list"]);
    assert_eq!(bad_url.status.code(), Some(2));
    assert!(
        stderr(&bad_url).contains("invalid store URL 'mysql://x'"),
        "{}",
        stderr(&bad_url)
    );

    let garbage = cli.dir.join("garbage.db");
    std::fs::write(
        &garbage,
        "this is not a database, it is a text file that is long enough",
    )
    .unwrap();
    let corrupt = cli.run(&[
        "--store",
        &format!("sqlite://{}", garbage.display()),
        "runs",
        "list",
    ]);
    assert_eq!(corrupt.status.code(), Some(2));
    assert!(
        stderr(&corrupt).contains("is not a run store"),
        "{}",
        stderr(&corrupt)
    );

    let missing = cli.run(&["runs", "show", "run_01KB0000000000000000000000"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no run run_01KB0000000000000000000000 in the store"));
    let malformed = cli.run(&["runs", "show", "42"]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        stderr(&malformed).contains("'42' is not a run id"),
        "{}",
        stderr(&malformed)
    );

    let refused = cli.run(&["trigger", "record", "--input", r#"{"tenantId": "acme"}"#]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "an invalid input is refused, nothing stored"
    );
    assert_eq!(json(&refused)["job"]["errorDetail"]["kind"], "invalidInput");
    assert!(
        json(&cli.run(&["runs", "list", "--json"]))
            .as_array()
            .unwrap()
            .is_empty()
    );
    std::fs::remove_dir_all(&cli.dir).ok();
}

#[test]
fn schedules_are_created_listed_and_deleted_from_the_command_line() {
    let cli = Cli::new("schedules");
    let created = cli.run(&[
        "schedules",
        "create",
        "--task",
        "on_schedule",
        "--cron",
        "*/5 * * * *",
        "--timezone",
        "Europe/Paris",
        "--tenant",
        "acme",
        "--project",
        "docs",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("sched_"), "{id}");

    let listed = cli.run(&["schedules", "list", "--json"]);
    assert!(listed.status.success());
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let schedule = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .expect("listed");
    assert_eq!(schedule["task"], "on_schedule");
    assert_eq!(schedule["cron"], "*/5 * * * *");
    assert_eq!(schedule["timezone"], "Europe/Paris");
    assert_eq!(schedule["tenantId"], "acme");
    assert_eq!(schedule["declared"], false);
    assert!(schedule["nextFireAt"].as_str().unwrap().ends_with('Z'));
    let table = cli.run(&["schedules", "list"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&format!("{id}  on_schedule  */5 * * * * (Europe/Paris)")),
        "{table}"
    );

    // Bad input: exit 2 and a message that says what was wrong.
    let bad = cli.run(&[
        "schedules",
        "create",
        "--task",
        "on_schedule",
        "--cron",
        "0 0 * *",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("invalid cron pattern \"0 0 * *\""),
        "{stderr}"
    );
    let bad = cli.run(&[
        "schedules",
        "create",
        "--task",
        "double",
        "--cron",
        "0 0 * * *",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("task 'double' cannot be scheduled"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    assert!(cli.run(&["schedules", "delete", &id]).status.success());
    let again = cli.run(&["schedules", "delete", &id]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains(&format!("no schedule '{id}'")));
    let declared = cli.run(&["schedules", "delete", "declared:new_year"]);
    assert_eq!(declared.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&declared.stderr).contains("declared on its task"));
    std::fs::remove_dir_all(&cli.dir).ok();
}

#[test]
fn processes_opening_a_new_store_file_at_once_all_migrate_it() {
    // Each round is a fresh file opened by six processes at the same moment: they race
    // migration by migration, and every one must come up on the full schema.
    for round in 0..3 {
        let cli = Cli::new(&format!("migrate-race-{round}"));
        let children: Vec<_> = (0..6)
            .map(|_| {
                cli.command()
                    .args(["runs", "list", "--json"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("the binary runs")
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}: {}",
                stderr(&output)
            );
            assert_eq!(stdout(&output).trim(), "[]", "round {round}");
        }
        let _ = std::fs::remove_dir_all(&cli.dir);
    }
}
