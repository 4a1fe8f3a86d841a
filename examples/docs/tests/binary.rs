//! The `docs-pipeline` binary as a user runs it from the repository root: the README's
//! first command, and the exit codes for a failed run and a usage error.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn docs_pipeline(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new(env!("CARGO_BIN_EXE_docs-pipeline"))
        .args(args)
        .current_dir(root)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn envelope(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).expect("stdout is the envelope")
}

#[test]
fn the_readme_command_summarises_every_sample() {
    let output = docs_pipeline(&[
        "run",
        "docs_orchestrator",
        "--input",
        "examples/docs/input.json",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let env = envelope(&output);
    assert_eq!(env["job"]["success"], true);
    let documents = env["job"]["input"]["documents"].as_array().unwrap();
    let summaries = env["results"]["documents"].as_array().unwrap();
    assert_eq!(summaries.len(), documents.len());
    for (summary, path) in summaries.iter().zip(documents) {
        assert_eq!(&summary["source"], path, "results keep the input order");
        assert!(!summary["sentences"].as_array().unwrap().is_empty());
    }
    assert_eq!(env["trampData"]["requestId"], "req-42");
}

#[test]
fn a_failed_run_exits_1_and_a_usage_error_exits_2() {
    let failed = docs_pipeline(&[
        "run",
        "text_track",
        "--input",
        "examples/docs/inputs/text_track_empty.json",
    ]);
    assert_eq!(failed.status.code(), Some(1));
    assert_eq!(
        envelope(&failed)["job"]["errorDetail"]["step"]["taskName"],
        "count_words"
    );

    let usage = docs_pipeline(&["run", "no_such_task", "--input", "{}"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(usage.stdout.is_empty());
    assert!(String::from_utf8_lossy(&usage.stderr).contains("no task with id 'no_such_task'"));
}

#[test]
fn logs_go_to_stderr_as_json_lines_when_asked() {
    let output = Command::new(env!("CARGO_BIN_EXE_docs-pipeline"))
        .args([
            "--log-format",
            "json",
            "run",
            "count_words",
            "--input",
            "examples/docs/inputs/count_words.json",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    envelope(&output);
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "run succeeded"
                && l["span"]["task"] == "count_words"
                && l["span"]["tenant_id"] == "acme")
    );
}

#[test]
fn the_binary_runs_on_its_configured_runtime_with_its_hook_and_json_logs() {
    let output = Command::new(env!("CARGO_BIN_EXE_docs-pipeline"))
        .args([
            "--log-format",
            "json",
            "run",
            "text_track",
            "--input",
            "examples/docs/inputs/text_track_empty.json",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let run_id = envelope(&output)["job"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let alerts: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["fields"]["message"] == "alert: run failed")
        .collect();
    let track = alerts
        .iter()
        .find(|l| l["fields"]["run_id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("the hook of main_with's runtime ran: {stderr}"));
    assert_eq!(track["fields"]["task"], "text_track");
    assert_eq!(track["fields"]["kind"], "invalidInput");
}
