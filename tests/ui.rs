//! Compile-time guarantees of `#[task]`, `track!` and `orchestrator!`, locked with trybuild.
//! Regenerate snapshots with `TRYBUILD=overwrite cargo test -p task-tests --test ui`, then
//! review every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
