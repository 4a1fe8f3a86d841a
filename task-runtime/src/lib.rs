//! Typed background tasks for tokio: `#[task]` turns an `async fn` into a schema-validated,
//! registered task; `track!` chains tasks with compiler-checked mappers; `orchestrator!` runs
//! tasks and tracks in parallel with a typed, aggregated output. The embedded [`Runtime`]
//! runs them with types or by id with JSON, and every run returns a [`RunOutput`] envelope.
//!
//! ```
//! use task_runtime::prelude::*;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
//! #[serde(rename_all = "camelCase")]
//! pub struct GreetInput {
//!     #[serde(flatten)]
//!     pub base: BaseInput,
//!     #[schemars(length(min = 1))]
//!     pub name: String,
//! }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
//! pub struct Greeting {
//!     pub text: String,
//! }
//!
//! /// Says hello.
//! #[task(id = "greet")]
//! pub async fn greet(_ctx: &TaskContext, input: GreetInput) -> Result<Greeting, TaskError> {
//!     Ok(Greeting { text: format!("hello, {}", input.name) })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let rt = Runtime::new();
//! let input = GreetInput { base: BaseInput::new("t1", "p1"), name: "Ada".into() };
//! let out = rt.run(Greet, input).await.unwrap();
//! assert_eq!(out.results.unwrap().text, "hello, Ada");
//!
//! let env = rt.trigger_and_wait("greet", serde_json::json!({ "tenantId": "t1", "name": "Ada" })).await;
//! assert_eq!(env.job.error_detail.unwrap().kind_name(), "invalidInput"); // projectId missing
//! # }
//! ```

mod base;
mod compose;
mod concurrency;
mod context;
mod engine;
mod envelope;
mod error;
mod hooks;
mod limits;
pub mod logging;
mod policy;
pub mod registry;
mod runtime;
mod schema;
mod task;

#[cfg(feature = "cli")]
pub mod cli;

#[doc(hidden)]
pub mod __private;

pub use base::BaseInput;
pub use compose::orchestrator::{FailurePolicy, Outcome};
pub use context::{CallbackResult, TaskContext};
pub use envelope::{BranchRecord, ItemCounts, Job, Metadata, RunError, RunOutput, StepRecord};
pub use error::{BranchRef, ErrorKind, Fatal, Issue, Location, StepRef, TaskError};
pub use hooks::HookEvent;
pub use limits::{InputError, Limits};
pub use policy::{RetryPolicy, RunPolicy};
pub use registry::{Registry, RegistryError, TaskDescriptor};
pub use runtime::{Registered, RunHandle, Runtime, RuntimeBuilder, TriggerOptions};
pub use schema::TaskSchemas;
pub use task::{Kind, Task, TaskInput, TaskOutput};

pub use task_macros::{orchestrator, task, track};

pub use schemars;
pub use serde_json;

/// Everything a task module needs: `use task_runtime::prelude::*;`.
pub mod prelude {
    pub use crate::{
        BaseInput, Outcome, RunOutput, Runtime, Task, TaskContext, TaskError, orchestrator, task,
        track,
    };
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}
