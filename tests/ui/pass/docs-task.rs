//! The example of `task-macros/docs/task.md` (the rustdoc of `task`), verbatim: the
//! `docs_examples_compile` test in tests/ui.rs keeps the two in step.

use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GreetInput {
    #[serde(flatten)]
    pub base: BaseInput,
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Greeting {
    pub text: String,
}

async fn log_failure(event: &task_runtime::HookEvent) {
    tracing::warn!(run_id = %event.run_id, "greeting failed");
}

/// Says hello.
#[task(id = "greet", retry(max_attempts = 2, min_delay = "100ms"), timeout = "5s", on_failure = log_failure)]
pub async fn greet(_ctx: &TaskContext, input: GreetInput) -> Result<Greeting, TaskError> {
    Ok(Greeting {
        text: format!("hello, {}", input.name),
    })
}

// The handle names the task: `rt.run(Greet, input)`, `ctx.run(Greet, input)`, track steps.
const _: &str = <Greet as Task>::ID;

fn main() {
    assert_eq!(<Greet as Task>::ID, "greet");
    let _ = greet;
}
