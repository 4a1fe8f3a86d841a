//! The `Task` trait every task, track and orchestrator handle implements.

use std::future::Future;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::TaskContext;
use crate::error::TaskError;
use crate::exec::hooks::HookEvent;
use crate::policy::RunPolicy;
use crate::schema::TaskSchemas;

/// What a registered unit of work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// A single `#[task]` fn.
    Task,
    /// A sequence of steps declared with `track!`.
    Track,
    /// Parallel branches declared with `orchestrator!`.
    Orchestrator,
}

impl Kind {
    /// The name used in JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Track => "track",
            Kind::Orchestrator => "orchestrator",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A type that can be a task's input: JSON in both directions plus a JSON Schema.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task input: it needs `Serialize`, `Deserialize` and `JsonSchema`",
    label = "add `#[derive(Serialize, Deserialize, JsonSchema)]` to this type",
    note = "inputs are validated against their JSON Schema and echoed in the envelope, so all three derives are required"
)]
pub trait TaskInput: Serialize + DeserializeOwned + JsonSchema + Send + 'static {}
impl<T: Serialize + DeserializeOwned + JsonSchema + Send + 'static> TaskInput for T {}

/// A type that can be a task's output: JSON in both directions plus a JSON Schema.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task output: it needs `Serialize`, `Deserialize` and `JsonSchema`",
    label = "add `#[derive(Serialize, Deserialize, JsonSchema)]` to this type",
    note = "outputs are validated against their JSON Schema and mapped into later steps, so all three derives are required"
)]
pub trait TaskOutput: Serialize + DeserializeOwned + JsonSchema + Send + 'static {}
impl<T: Serialize + DeserializeOwned + JsonSchema + Send + 'static> TaskOutput for T {}

/// A registered unit of work with typed input and output.
///
/// `#[task]`, `track!` and `orchestrator!` generate the implementations; a handle is a unit
/// struct (`ExtractText`) used wherever a task is named: `Runtime::run(ExtractText, input)`,
/// `ctx.run(ExtractText, input)`, track steps and orchestrator branches.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a task handle",
    label = "not a task handle",
    note = "a handle is the unit struct `#[task]` generates next to its fn (`async fn parse_invoice` gets `ParseInvoice`: the fn name in UpperCamelCase, unless `handle = ..` is set), or the name a `track!` or `orchestrator!` declares; pass the handle, never the fn"
)]
pub trait Task: Send + Sync + 'static {
    /// The id it is triggered by (`"extract_text"`).
    const ID: &'static str;
    /// Task, track or orchestrator.
    const KIND: Kind = Kind::Task;
    /// Retry, timeout and concurrency settings; unset fields take the runtime's defaults.
    const POLICY: RunPolicy = RunPolicy::DEFAULT;
    /// The cron schedule declared with `#[task(schedule = "..")]`: workers trigger a run of
    /// it at every fire time.
    const SCHEDULE: Option<crate::schedules::ScheduleSpec> = None;

    /// What a run takes (validated against its JSON Schema on every run).
    type Input: TaskInput;
    /// What a run gives (validated against its JSON Schema).
    type Output: TaskOutput;

    /// Runs one attempt. Called by the runtime, which validates around it.
    fn run(
        ctx: &TaskContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, TaskError>> + Send + '_;

    /// Whether the task defines hooks (set by `#[task(on_success = .., on_failure = ..)]`);
    /// runs of tasks without hooks build no hook event.
    const HAS_HOOKS: bool = false;

    /// Called once after the run succeeded (`#[task(on_success = path)]`). The generated
    /// glue logs the hook's error or panic; it never changes the run's outcome.
    fn on_success(event: &HookEvent) -> impl Future<Output = ()> + Send + '_ {
        let _ = event;
        std::future::ready(())
    }

    /// Called once after the run failed, retries exhausted (`#[task(on_failure = path)]`).
    fn on_failure(event: &HookEvent) -> impl Future<Output = ()> + Send + '_ {
        let _ = event;
        std::future::ready(())
    }

    /// The task's schemas and compiled validators, built once on first use.
    #[doc(hidden)]
    fn schemas() -> &'static TaskSchemas;
}
