//! Compile-time guarantees of `#[task]`, `track!` and `orchestrator!`, locked with trybuild.
//! Regenerate snapshots with `TRYBUILD=overwrite cargo test -p task-tests --test ui`, then
//! review every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}

/// The examples of the macros' rustdoc (`task-macros/docs/*.md`, marked `ignore` because a
/// proc-macro crate cannot run them) are compiled as the pass cases `ui/pass/docs-*.rs`:
/// each must hold its page's example verbatim.
#[test]
fn docs_examples_compile() {
    let root = env!("CARGO_MANIFEST_DIR");
    for name in ["task", "track", "orchestrator"] {
        let page =
            std::fs::read_to_string(format!("{root}/../task-macros/docs/{name}.md")).unwrap();
        let start = page.find("```rust,ignore\n").expect("an example") + "```rust,ignore\n".len();
        let example = &page[start..start + page[start..].find("\n```").unwrap()];
        let case = std::fs::read_to_string(format!("{root}/ui/pass/docs-{name}.rs")).unwrap();
        assert!(
            case.contains(example),
            "ui/pass/docs-{name}.rs must hold the example of task-macros/docs/{name}.md"
        );
    }
}
