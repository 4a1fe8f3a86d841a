//! The README's quickstart, run: its test snippet verbatim (first below), the whole validated
//! path through `Runtime`, and a check that the README still says what this crate is.

use readme_app::*;
use task_runtime::prelude::*;

#[tokio::test]
async fn extracts() {
    let ctx = TaskContext::for_test().with_tenant("acme");
    let input = ExtractInput {
        base: BaseInput::new("acme", "docs"),
        path: "Cargo.toml".into(),
    };
    let out = extract_text(&ctx, input).await.unwrap();
    assert!(out.text.contains("[dependencies]"));
}

#[tokio::test]
async fn runs_validated_through_the_runtime() {
    let rt = Runtime::new();
    let input = ExtractInput {
        base: BaseInput::new("acme", "docs"),
        path: "Cargo.toml".into(),
    };
    let out = rt.run(ExtractText, input).await.unwrap();
    assert!(out.results.text.contains("readme-app"));

    // By id, with the `serde_json` task-runtime re-exports: the schema's refinement refuses
    // an empty path before the fn runs.
    let json =
        task_runtime::serde_json::json!({ "tenantId": "acme", "projectId": "docs", "path": "" });
    let env = rt.trigger_and_wait("extract_text", json).await;
    assert_eq!(env.job.error_detail.unwrap().kind_name(), "invalidInput");
}

#[test]
fn the_schemars_reexport_is_the_one_the_derives_use() {
    fn schema_of<T: task_runtime::schemars::JsonSchema>() -> task_runtime::schemars::Schema {
        task_runtime::schemars::schema_for!(T)
    }
    assert!(schema_of::<ExtractInput>().as_value()["required"].is_array());
}

/// The README's fenced blocks: ```lang, then the lines up to the closing fence.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("```{lang}") {
            let body: Vec<&'a str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n"));
        }
    }
    blocks
}

/// The text of `section` (from its `## ` heading to the next one).
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no `{heading}`"));
    let rest = &readme[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// `name = value` lines of the table `[table]`, comments dropped.
fn dependencies(toml: &str, table: &str) -> Vec<(String, String)> {
    toml.lines()
        .skip_while(|line| line.trim() != format!("[{table}]"))
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .filter_map(|line| {
            let line = line.split(" #").next()?.trim();
            let (name, value) = line.split_once(" = ")?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

#[test]
fn the_readme_shows_this_crate() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let here = |path: &str| {
        std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };

    let quickstart = section(&readme, "## Quickstart");
    let toml = blocks(quickstart, "toml");
    assert_eq!(toml.len(), 1, "one Cargo.toml block in the quickstart");
    let mut wanted = dependencies(&toml[0], "dependencies");
    let mut have = dependencies(&here("Cargo.toml"), "dependencies");
    assert_eq!(
        wanted.remove(0).0,
        "task-runtime",
        "the README starts with task-runtime"
    );
    assert_eq!(
        have.remove(0),
        (
            "task-runtime".to_owned(),
            "{ path = \"../../task-runtime\" }".to_owned()
        )
    );
    assert_eq!(
        have, wanted,
        "tests/readme-app/Cargo.toml and the README's quickstart"
    );
    // The unit-test snippet below needs `test-util`: the quickstart says so, and this crate
    // (whose tests run that snippet) gets it the same way.
    assert_eq!(
        dependencies(&toml[0], "dev-dependencies"),
        [(
            "task-runtime".to_owned(),
            "{ version = \"0.1\", features = [\"test-util\"] }".to_owned()
        )]
    );
    assert_eq!(
        dependencies(&here("Cargo.toml"), "dev-dependencies"),
        [(
            "task-runtime".to_owned(),
            "{ path = \"../../task-runtime\", features = [\"test-util\"] }".to_owned()
        )]
    );

    let creating = section(&readme, "## Creating a task");
    let rust = blocks(creating, "rust");
    assert!(
        here("src/lib.rs").contains(&rust[0]),
        "src/lib.rs holds the README's task example:\n{}",
        rust[0]
    );
    assert!(
        here("tests/readme.rs").contains(&rust[1]),
        "tests/readme.rs holds the README's test example:\n{}",
        rust[1]
    );
}
