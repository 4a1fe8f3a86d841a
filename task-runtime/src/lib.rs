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
//! assert_eq!(out.results.text, "hello, Ada");
//!
//! let env = rt.trigger_and_wait("greet", serde_json::json!({ "tenantId": "t1", "name": "Ada" })).await;
//! assert_eq!(env.job.error_detail.unwrap().kind_name(), "invalidInput"); // projectId missing
//! # }
//! ```
//!
//! Features: `cli` (default) mounts the command line and its logging setup; `sqlite`
//! (default) keeps durable runs in an embedded SQLite file; `postgres` keeps them in
//! PostgreSQL for many workers on many machines (and adds `Runtime::trigger_in`); `test-util`
//! gives `TaskContext::for_test()` for calling task fns directly in unit tests; `http` adds the
//! HTTP API ([`http::router`]) and the CLI's `serve` and `keys` commands.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod builder;
#[cfg(any(feature = "cli", feature = "http"))]
mod catalog;
mod clock;
mod compose;
mod context;
mod envelope;
mod error;
mod exec;
mod handle;
mod id;
mod input;
mod json;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod policy;
mod registry;
mod runs;
mod runtime;
mod schedules;
mod schema;
mod step;
mod store;
mod task;
mod telemetry;
mod tokens;
#[cfg(feature = "postgres")]
mod trigger_in;
mod waits;
mod worker;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "cli")]
pub mod logging;

#[doc(hidden)]
pub mod __private;

pub use builder::{BuildError, Registered, RuntimeBuilder};
#[cfg(feature = "test-util")]
pub use clock::TestClock;
pub use compose::orchestrator::{FailurePolicy, Outcome};
pub use context::{CallbackResult, TaskContext};
pub use envelope::{
    BranchRecord, ItemCounts, ItemRun, Job, JobInput, Metadata, RunError, RunOutput, StepRecord,
};
pub use error::{BranchRef, ErrorKind, Fatal, Issue, Location, ResultExt, StepRef, TaskError};
pub use exec::hooks::{HookEvent, HookFn};
pub use handle::{RunHandle, TypedRunHandle};
pub use id::{InvalidRunId, RunId};
pub use input::{BaseInput, InputError, Limits, MAX_DEPTH_LIMIT, TrampData};
pub use policy::{PolicyError, RetryPolicy, RunPolicy, next_delay};
pub use registry::{BranchInfo, Registry, RegistryError, TaskDescriptor};
pub use runs::{RunInfo, RunStatus, Runs};
pub use runtime::{Runtime, TriggerOptions};
pub use schedules::{
    NewSchedule, Schedule, ScheduleError, ScheduleSpec, ScheduledInput, Schedules,
};
pub use schema::TaskSchemas;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use store::StoreLogLayer;
pub use store::{CancelOutcome, LogLine, RunFilter, Store, StoreError};
pub use task::{Kind, Task, TaskInput, TaskOutput};
pub use tokens::{NewToken, TokenCompletion, TokenError, TokenStatus, Tokens, WaitToken};
pub use worker::{Worker, WorkerBuilder, WorkerReport};

pub use task_macros::{orchestrator, task, track};

/// Re-exported so your crate uses the versions this one was built with.
pub use schemars;
/// Re-exported so your crate uses the version this one was built with.
pub use serde_json;
/// Re-exported (feature `postgres`) so the transaction you give
/// [`Runtime::trigger_in`] is of the sqlx this crate was built with.
#[cfg(feature = "postgres")]
pub use sqlx;

/// Everything a task module needs: `use task_runtime::prelude::*;`.
pub mod prelude {
    pub use crate::{
        BaseInput, Outcome, ResultExt, RunOutput, Runtime, ScheduledInput, Task, TaskContext,
        TaskError, orchestrator, task, track,
    };
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}
