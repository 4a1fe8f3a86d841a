//! The `docs-pipeline` binary: the task-runtime CLI (`list`, `schema <id>`, `run <id>`) over
//! every task, track and orchestrator of this crate.

use std::process::ExitCode;

// Tasks register themselves at link time; naming the library makes sure it is linked.
use docs_pipeline as _;

fn main() -> ExitCode {
    task_runtime::cli::main()
}
