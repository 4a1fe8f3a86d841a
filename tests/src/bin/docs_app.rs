//! A binary for process-level tests: the task-runtime CLI over the example app's tasks, on
//! the runtime it configures (what `docs-pipeline` is, built with this crate's features of
//! task-runtime, `otel` among them).

use std::process::ExitCode;

fn main() -> ExitCode {
    // Naming the library links it, so its tasks are registered.
    task_runtime::cli::main_with(docs_pipeline::runtime())
}
