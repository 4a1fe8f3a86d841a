//! A binary for process-level tests: the task-runtime CLI (`trigger`, `worker`, `runs`) over
//! the fixtures of `task_tests` (the `recorder` tasks among them).

use std::process::ExitCode;

// Naming the library links it, so its tasks are registered.
use task_tests as _;

fn main() -> ExitCode {
    task_runtime::cli::main()
}
