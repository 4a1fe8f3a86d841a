//! What generated code reaches: dependencies and runtime internals under one path, so a
//! user's crate needs no extra dependencies and its own `Result` or `Option` cannot break
//! the expansion. Not a public API.

pub use inventory;
pub use schemars;
pub use serde;
pub use serde_json;

pub mod orchestrator;
pub mod track;

pub use crate::builder::Registered;
pub use crate::compose::orchestrator::{Branches, FailurePolicy, Outcome};
pub use crate::policy::{RetryPolicy, RunPolicy};
pub use crate::registry::{BranchInfo, Registration, TaskDescriptor};
pub use crate::schema::{SchemaCell, TaskSchemas};
pub use crate::task::{Kind, Task, TaskInput, TaskOutput};
pub use crate::{TaskContext, TaskError};

pub use core::future::Future;
pub use core::result::Result;
pub use core::time::Duration;

/// The error types a `#[task]` fn may return.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error type of a task",
    label = "the error type must implement `std::error::Error + Send + Sync + 'static`",
    note = "return `TaskError`, or derive `thiserror::Error` on your own error type"
)]
pub trait IntoTaskError {
    fn into_task_error(self) -> TaskError;
}

#[diagnostic::do_not_recommend]
impl<E: std::error::Error + Send + Sync + 'static> IntoTaskError for E {
    fn into_task_error(self) -> TaskError {
        TaskError::from_error(self)
    }
}

/// Awaits a `#[task]` fn and converts its error with `convert`. The conversion is a closure
/// the expansion spans at the user's error type, so an error type that is not
/// `std::error::Error` is reported once, there.
pub async fn call<O, E, F: FnOnce(E) -> TaskError>(
    body: impl Future<Output = Result<O, E>>,
    convert: F,
) -> Result<O, TaskError> {
    body.await.map_err(convert)
}

/// The error conversion of [`call`], bounded so the message is ours.
pub fn into_task_error<E: IntoTaskError>(error: E) -> TaskError {
    error.into_task_error()
}

/// The schemas of a handle, built once in `cell`. Bounded on the handle, not on its input
/// and output, so a missing derive is reported once (at the user's type), not here too.
pub fn schemas<T: Task>(cell: &'static SchemaCell) -> &'static TaskSchemas {
    cell.get::<T::Input, T::Output>()
}

// One trait per derive a task's input and output need, each with its own message, so the
// compiler names the missing derive at the user's type (through `input_checks` and
// `output_checks` below). `do_not_recommend` makes the compiler stop at these traits
// instead of reporting the serde or schemars trait behind them.

macro_rules! derive_check {
    ($(#[$attr:meta])* $name:ident: $($bound:tt)+) => {
        $(#[$attr])*
        pub trait $name {}

        #[diagnostic::do_not_recommend]
        impl<T: $($bound)+> $name for T {}
    };
}

derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task input: it does not implement `Deserialize`",
        label = "add `#[derive(Deserialize)]` to `{Self}`",
        note = "a task input derives `Serialize, Deserialize, JsonSchema`: JSON input is validated against the schema, then deserialized"
    )]
    InputDeserialize: serde::de::DeserializeOwned
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task input: it does not implement `Serialize`",
        label = "add `#[derive(Serialize)]` to `{Self}`",
        note = "a task input derives `Serialize, Deserialize, JsonSchema`: typed inputs are serialized to be validated and echoed in the run envelope"
    )]
    InputSerialize: serde::Serialize
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task input: it does not implement `JsonSchema`",
        label = "add `#[derive(JsonSchema)]` to `{Self}`",
        note = "a task input derives `Serialize, Deserialize, JsonSchema`: every input is validated against its JSON Schema"
    )]
    InputSchema: schemars::JsonSchema
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task output: it does not implement `Serialize`",
        label = "add `#[derive(Serialize)]` to `{Self}`",
        note = "a task output derives `Serialize, Deserialize, JsonSchema`: outputs are serialized and validated against the schema"
    )]
    OutputSerialize: serde::Serialize
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task output: it does not implement `Deserialize`",
        label = "add `#[derive(Deserialize)]` to `{Self}`",
        note = "a task output derives `Serialize, Deserialize, JsonSchema`: the outputs of child runs are read back from JSON"
    )]
    OutputDeserialize: serde::de::DeserializeOwned
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task output: it does not implement `JsonSchema`",
        label = "add `#[derive(JsonSchema)]` to `{Self}`",
        note = "a task output derives `Serialize, Deserialize, JsonSchema`: every output is validated against its JSON Schema"
    )]
    OutputSchema: schemars::JsonSchema
}

// Checks that run inside a type: `Checked<T, { check::<T>() }>` is `T` when the check
// passes. When it fails, the compiler reports it once, at the user's tokens the check is
// spanned at, and the length becomes an error constant, which silences every later use of
// the type instead of repeating the error in generated code.

/// `T` once the check in `CHECKS` has passed.
pub type Checked<T, const CHECKS: usize> = <[T; CHECKS] as Passed>::Type;

/// Only `[T; 1]`: what a passing check leaves.
pub trait Passed {
    type Type;
}

impl<T> Passed for [T; 1] {
    type Type = T;
}

/// `T` itself, named in qualified-self position so a path that is not a type (a fn name)
/// is reported as such, once.
pub trait Itself {
    type Type: ?Sized;
}

impl<T: ?Sized> Itself for T {
    type Type = T;
}

/// A task's input type, derive by derive.
pub const fn input_checks<T: InputSerialize + InputDeserialize + InputSchema + Send + 'static>()
-> usize {
    1
}

/// A task's output type, derive by derive.
pub const fn output_checks<
    T: OutputSerialize + OutputDeserialize + OutputSchema + Send + 'static,
>() -> usize {
    1
}

/// A track step or orchestrator branch names a task.
pub const fn is_task<T: Task>() -> usize {
    1
}

pub use crate::exec::hooks::HookEvent;

/// Awaits a task's own hook and logs its error. The engine runs it under the hook timeout
/// and catches its panics.
pub async fn hook<F>(name: &'static str, task: &'static str, hook: F)
where
    F: Future,
    F::Output: crate::CallbackResult,
{
    if let Err(error) = crate::CallbackResult::into_result(hook.await) {
        crate::exec::hooks::log_failure(name, task, &error);
    }
}

/// The side of a task's hooks it did not set.
pub fn no_hook() -> core::future::Ready<()> {
    core::future::ready(())
}
