//! Template: a new task. To start one:
//!
//! 1. copy `schemas/task_shell.rs` to `schemas/<your_task>.rs` and add it to `schemas/mod.rs`;
//! 2. copy this file to `tasks/<your_task>.rs` and add it to `tasks/mod.rs`;
//! 3. rename the fn, the id and the types; `docs-pipeline list` shows it once it compiles.
//!
//! Nothing else registers a task: `#[task]` does it at link time. This module is compiled
//! only under `cfg(test)`, so it is type-checked (and its test runs) without shipping.

use task_runtime::prelude::*;

use crate::schemas::task_shell::{ShellInput, ShellOutput};

// The error type is yours to choose. `TaskError` suits a task with few failure modes; a
// thiserror enum (see `ExtractError` in `extract_text.rs`) suits one whose callers branch on
// the cause. Either way the envelope keeps the message, the source chain and the type name.

/// One short line saying what the task does: `docs-pipeline list` shows this line.
///
/// Further paragraphs appear in the schema's `description` (`docs-pipeline schema <id>`).
/// Say what the task needs, what it promises and when it fails.
//
// Options go next to the id, e.g. `#[task(id = "task_shell", retry(max_attempts = 3),
// timeout = "30s")]`; unset ones take the runtime's defaults (one attempt, no timeout).
#[task(id = "task_shell")]
pub async fn task_shell(ctx: &TaskContext, input: ShellInput) -> Result<ShellOutput, TaskError> {
    // Log through `tracing`, never `println!`: the runtime's span already carries the task,
    // runId, tenantId, projectId and attempt, so only add what is specific to this step.
    tracing::info!(repeat = input.repeat, "shell started");

    // By the time the body runs, the input has passed its schema (`message` is non-empty,
    // `repeat` is within 1..=5), so only rules the schema cannot express are checked here.
    // `fatal` marks an error retrying cannot fix: the same input would fail again.
    if input.message.trim().is_empty() {
        return Err(TaskError::fatal("message is only whitespace"));
    }

    // Register cleanup right after creating what needs cleaning: it runs exactly once when
    // this attempt ends, on success, error, timeout, cancellation or panic alike. A failing
    // cleanup is logged and reported in the envelope's metadata, never replacing the result.
    let scratch = std::env::temp_dir().join(format!("task_shell-{}.txt", ctx.run_id()));
    tokio::fs::write(&scratch, &input.message)
        .await
        .map_err(|error| TaskError::failed(format!("cannot write scratch file: {error}")))?;
    ctx.defer(async move { tokio::fs::remove_file(scratch).await });

    // Long loops should look at `ctx.is_cancelled()` (or select on `ctx.cancelled()`); the
    // runtime also drops the future on timeout or cancellation.
    //
    // Another task runs as a child run with `ctx.run(OtherTask, other_input).await?`:
    // validated, with its own run id, sharing tenant, project and trampData.

    let times = usize::try_from(input.repeat).unwrap_or(1);
    Ok(ShellOutput {
        echoed: vec![input.message.as_str(); times].join(" "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The fn stays callable as written: a test needs only a test context.
    #[tokio::test]
    async fn echoes_the_message() {
        let input = ShellInput {
            base: BaseInput::new("t", "p"),
            message: "hello".to_owned(),
            repeat: 2,
        };
        let output = task_shell(&TaskContext::for_test(), input).await.unwrap();
        assert_eq!(output.echoed, "hello hello");
    }
}
