//! The `docs-pipeline` binary: the task-runtime CLI (`list`, `schema <id>`, `run <id>`) over
//! every task, track and orchestrator of this crate, on the runtime `docs_pipeline::runtime`
//! configures (a concurrency limit and an alert hook for failed runs).

use std::process::ExitCode;

fn main() -> ExitCode {
    // Naming the library also links it, so its tasks are registered.
    task_runtime::cli::main_with(docs_pipeline::runtime())
}
