//! The CLI in-process over the example app's registry (`docs-pipeline`): list, schema, run,
//! exit codes, and every kind of bad input.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use task_runtime::Runtime;
use task_runtime::cli::run_with;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Reads an example input and makes its sample paths absolute (tests run in `tests/`).
fn example_input(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("examples/docs").join(name)).unwrap();
    let absolute = text.replace(
        "\"examples/docs/",
        &format!("\"{}/examples/docs/", root().display()),
    );
    serde_json::from_str(&absolute).unwrap()
}

struct Outcome {
    code: u8,
    out: String,
    err: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }
}

async fn cli(args: &[&str]) -> Outcome {
    // The example's inputs name files under the repository, the documents root here (the
    // tests run in `tests/`).
    docs_pipeline::documents::use_root(root()).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut argv = vec!["docs-pipeline"];
    argv.extend_from_slice(args);
    let code = run_with(Runtime::builder(), argv, &mut out, &mut err).await;
    Outcome {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

async fn run_inline(id: &str, input: &Value) -> Outcome {
    cli(&["run", id, "--input", &input.to_string()]).await
}

#[tokio::test]
async fn list_json_names_every_example_with_its_kind() {
    let out = cli(&["list", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.err);
    let list = out.json();
    let kind = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["kind"].as_str().unwrap().to_owned())
    };
    assert_eq!(kind("extract_text").as_deref(), Some("task"));
    assert_eq!(kind("count_words").as_deref(), Some("task"));
    assert_eq!(kind("summarise").as_deref(), Some("task"));
    assert_eq!(kind("text_track").as_deref(), Some("track"));
    assert_eq!(kind("docs_orchestrator").as_deref(), Some("orchestrator"));
}

#[tokio::test]
async fn schema_prints_both_schemas() {
    let out = cli(&["schema", "extract_text"]).await;
    assert_eq!(out.code, 0, "{}", out.err);
    let schema = out.json();
    assert_eq!(schema["id"], "extract_text");
    assert_eq!(schema["kind"], "task");
    assert_eq!(schema["input"]["properties"]["path"]["minLength"], 1);
    assert!(
        schema["input"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("tenantId"))
    );
    assert!(schema["output"]["properties"]["text"].is_object());
}

#[tokio::test]
async fn run_extract_text_succeeds_and_echoes_trampdata() {
    let input = example_input("inputs/extract_text.json");
    let out = run_inline("extract_text", &input).await;
    assert_eq!(out.code, 0, "{}", out.err);
    let env = out.json();
    assert_eq!(env["job"]["success"], true);
    assert!(env["job"]["runId"].as_str().unwrap().starts_with("run_"));
    assert_eq!(env["trampData"], input["trampData"]);
    assert!(env["results"]["text"].as_str().unwrap().len() > 100);
    let text = env["results"]["text"].as_str().unwrap();
    assert!(
        !text.contains("<p") && !text.contains("</"),
        "markup stripped: {text}"
    );
}

#[tokio::test]
async fn three_violations_exit_1_with_every_path() {
    let input = json!({ "tenantId": "", "path": 42, "trampData": { "keep": 1 } });
    let out = run_inline("extract_text", &input).await;
    assert_eq!(out.code, 1);
    let env = out.json();
    assert_eq!(env["job"]["success"], false);
    assert_eq!(env["job"]["errorDetail"]["kind"], "invalidInput");
    let paths: Vec<&str> = env["job"]["errorDetail"]["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(paths.contains(&"") && paths.contains(&"/tenantId") && paths.contains(&"/path"));
    assert_eq!(env["trampData"], json!({ "keep": 1 }));
}

#[tokio::test]
async fn input_from_a_file_and_from_stdin_marker_path() {
    let dir = std::env::temp_dir().join(format!("cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("input.json");
    std::fs::write(&file, example_input("inputs/extract_text.json").to_string()).unwrap();
    let out = cli(&["run", "extract_text", "--input", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{}", out.err);
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = cli(&["run", "extract_text", "--input", "/no/such/input.json"]).await;
    assert_eq!(missing.code, 2);
    assert!(
        missing.err.contains("/no/such/input.json"),
        "{}",
        missing.err
    );
    assert!(missing.out.is_empty());
}

#[tokio::test]
async fn malformed_json_is_a_usage_error_that_says_where() {
    let out = cli(&[
        "run",
        "extract_text",
        "--input",
        "{\"tenantId\": \"a\",\n \"path\": }",
    ])
    .await;
    assert_eq!(out.code, 2);
    assert!(out.err.contains("line 2 column 10"), "{}", out.err);
    assert!(out.out.is_empty());
}

#[tokio::test]
async fn unknown_id_suggests_and_exits_2() {
    let out = cli(&["run", "extract_txt", "--input", "{}"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.err.contains("no task with id 'extract_txt'"),
        "{}",
        out.err
    );
    assert!(out.err.contains("extract_text"), "{}", out.err);
    let out = cli(&["schema", "text_trak"]).await;
    assert_eq!(out.code, 2);
    assert!(out.err.contains("text_track"), "{}", out.err);
}

#[tokio::test]
async fn oversized_and_deeply_nested_inputs_get_an_envelope_not_a_crash() {
    let big = json!({ "tenantId": "a", "projectId": "b", "path": "x".repeat(4 * 1024 * 1024) });
    let out = run_inline("extract_text", &big).await;
    assert_eq!(out.code, 1);
    let env = out.json();
    assert_eq!(env["job"]["errorDetail"]["kind"], "invalidInput");
    let message = env["job"]["error"].as_str().unwrap();
    assert!(
        message.contains("over the limit of 3145728 bytes"),
        "{message}"
    );

    let deep = format!(
        "{{\"tenantId\":\"a\",\"projectId\":\"b\",\"path\":{}1{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let out = cli(&["run", "extract_text", "--input", &deep]).await;
    assert_eq!(out.code, 1);
    let env = out.json();
    assert!(
        env["job"]["error"]
            .as_str()
            .unwrap()
            .contains("deeper than the limit of 64 levels")
    );
}

#[tokio::test]
async fn usage_errors_exit_2() {
    assert_eq!(cli(&[]).await.code, 2);
    assert_eq!(cli(&["frobnicate"]).await.code, 2);
    assert_eq!(cli(&["run", "extract_text"]).await.code, 2);
    assert_eq!(cli(&["--log-format", "xml", "list"]).await.code, 2);
    assert_eq!(cli(&["--help"]).await.code, 0);
}

#[tokio::test]
async fn text_track_reports_every_step() {
    let out = run_inline("text_track", &example_input("inputs/text_track.json")).await;
    assert_eq!(out.code, 0, "{}", out.out);
    let env = out.json();
    let steps = env["metadata"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    let mut ids: Vec<&str> = steps.iter().map(|s| s["runId"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(env["results"], steps_last_results(&env));
}

fn steps_last_results(env: &Value) -> Value {
    // `results` of a track is its last step's output: a summary with sentences.
    assert!(env["results"]["sentences"].is_array(), "{}", env["results"]);
    env["results"].clone()
}

#[tokio::test]
async fn an_empty_document_fails_step_2_and_keeps_trampdata() {
    let input = example_input("inputs/text_track_empty.json");
    let out = run_inline("text_track", &input).await;
    assert_eq!(out.code, 1);
    let env = out.json();
    let error = env["job"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("step 2 'count_words' failed: invalid input: /text"),
        "{error}"
    );
    assert_eq!(env["job"]["errorDetail"]["step"]["index"], 1);
    assert_eq!(env["job"]["errorDetail"]["step"]["taskName"], "count_words");
    assert_eq!(env["trampData"], input["trampData"]);
}

#[tokio::test]
async fn the_orchestrator_processes_every_sample() {
    let input = example_input("input.json");
    let out = run_inline("docs_orchestrator", &input).await;
    assert_eq!(out.code, 0, "{}", out.out);
    let env = out.json();
    let documents = input["documents"].as_array().unwrap().len();
    assert_eq!(
        env["results"]["documents"].as_array().unwrap().len(),
        documents
    );
    assert_eq!(env["results"]["corpus"]["documents"], documents);
    assert_eq!(env["trampData"], input["trampData"]);
    let branches = env["metadata"]["branches"].as_array().unwrap();
    assert_eq!(branches.len(), 2);
}

/// The orchestrator input with document 2 replaced by the empty sample, which fails
/// `text_track` at `count_words` (and nothing else).
fn input_with_an_empty_document() -> Value {
    let mut input = example_input("input.json");
    let empty = root().join("examples/docs/samples/empty.txt");
    input["documents"][2] = json!(empty.display().to_string());
    input
}

#[tokio::test]
async fn one_bad_document_fails_fast_naming_the_item() {
    let out = run_inline("docs_orchestrator", &input_with_an_empty_document()).await;
    assert_eq!(out.code, 1);
    let env = out.json();
    let detail = &env["job"]["errorDetail"];
    assert_eq!(detail["branch"]["name"], "documents");
    assert_eq!(detail["branch"]["item"], 2);
    assert_eq!(detail["branch"]["step"]["taskName"], "count_words");
    let error = env["job"]["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "branch 'documents' item 2 failed: step 2 'count_words' failed: invalid input: /text"
        ),
        "{error}"
    );
    assert_eq!(env["trampData"]["requestId"], "req-42");
}

#[tokio::test]
async fn best_effort_records_the_one_bad_document_and_succeeds() {
    let out = run_inline("docs_best_effort", &input_with_an_empty_document()).await;
    assert_eq!(out.code, 0, "{}", out.out);
    let env = out.json();
    let documents = env["results"]["documents"].as_array().unwrap();
    assert_eq!(documents.len(), 5);
    for (i, document) in documents.iter().enumerate() {
        if i == 2 {
            assert_eq!(document["error"]["kind"], "invalidInput", "{document}");
            assert_eq!(document["error"]["branch"]["item"], 2);
        } else {
            assert!(document["ok"]["sentences"].is_array(), "{document}");
        }
    }
    assert_eq!(env["results"]["corpus"]["ok"]["documents"], 5);
    let branch = &env["metadata"]["branches"][0];
    assert_eq!(branch["items"]["failed"], 1);
    assert_eq!(branch["items"]["succeeded"], 4);
}

#[tokio::test]
async fn a_path_outside_the_documents_root_is_invalid_input_and_nothing_is_read() {
    let outside = [
        (
            "extract_text",
            json!({ "tenantId": "t", "projectId": "p", "path": "/etc/passwd" }),
            "/path",
        ),
        (
            "extract_text",
            json!({ "tenantId": "t", "projectId": "p", "path": "../../../../etc/hostname" }),
            "/path",
        ),
        (
            "extract_text",
            json!({ "tenantId": "t", "projectId": "p", "path": "examples/docs/samples/tides.html",
                    "saveTo": "/tmp/docs-pipeline-stolen.txt" }),
            "/saveTo",
        ),
        (
            "corpus_stats",
            json!({ "tenantId": "t", "projectId": "p",
                    "paths": ["examples/docs/samples/tides.html", "/etc/passwd"] }),
            "/paths/1",
        ),
    ];
    for (task, input, field) in outside {
        let out = run_inline(task, &input).await;
        assert_eq!(out.code, 1, "{task} {input}: {}", out.err);
        let env = out.json();
        assert_eq!(env["job"]["success"], false);
        let error = &env["job"]["errorDetail"];
        assert_eq!(error["kind"], "invalidInput", "{env}");
        assert_eq!(error["issues"][0]["path"], field, "{env}");
        let message = error["issues"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("leads outside the documents root"),
            "{message}"
        );
        // The server's own layout is not told to the caller.
        assert!(!message.contains(root().to_str().unwrap()), "{message}");
    }
    assert!(!std::path::Path::new("/tmp/docs-pipeline-stolen.txt").exists());
}
