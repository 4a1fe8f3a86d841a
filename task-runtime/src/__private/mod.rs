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
pub use crate::schedules::{ScheduleSpec, scheduled_input};
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
//
// A derive that is written but does not implement *our* trait has two other causes, each
// named in a second note: the crate the derive expands to is missing from the user's
// Cargo.toml (serde's and schemars' derives name `serde::` / `schemars::` paths of the
// user's crate), or it is another major version (schemars 0.8's `JsonSchema` is not 1.x's).

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
        label = "`{Self}` needs `#[derive(Deserialize)]`",
        note = "a task input derives `Serialize, Deserialize, JsonSchema`: JSON input is validated against the schema, then deserialized",
        note = "if `{Self}` already derives `Deserialize`, add `serde = {{ version = \"1\", features = [\"derive\"] }}` to your Cargo.toml: the derive needs the `serde` crate"
    )]
    InputDeserialize: serde::de::DeserializeOwned
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task input: it does not implement `Serialize`",
        label = "`{Self}` needs `#[derive(Serialize)]`",
        note = "a task input derives `Serialize, Deserialize, JsonSchema`: typed inputs are serialized to be validated and echoed in the run envelope",
        note = "if `{Self}` already derives `Serialize`, add `serde = {{ version = \"1\", features = [\"derive\"] }}` to your Cargo.toml: the derive needs the `serde` crate"
    )]
    InputSerialize: serde::Serialize
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task input: it does not implement `JsonSchema`",
        label = "`{Self}` needs `#[derive(JsonSchema)]`",
        note = "a task input derives `Serialize, Deserialize, JsonSchema`: every input is validated against its JSON Schema",
        note = "if `{Self}` already derives `JsonSchema`, add `schemars = \"1\"` to your Cargo.toml: the derive needs the `schemars` crate, in the major version task-runtime uses (1.x; schemars 0.8's `JsonSchema` is another trait)"
    )]
    InputSchema: schemars::JsonSchema
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task output: it does not implement `Serialize`",
        label = "`{Self}` needs `#[derive(Serialize)]`",
        note = "a task output derives `Serialize, Deserialize, JsonSchema`: outputs are serialized and validated against the schema",
        note = "if `{Self}` already derives `Serialize`, add `serde = {{ version = \"1\", features = [\"derive\"] }}` to your Cargo.toml: the derive needs the `serde` crate"
    )]
    OutputSerialize: serde::Serialize
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task output: it does not implement `Deserialize`",
        label = "`{Self}` needs `#[derive(Deserialize)]`",
        note = "a task output derives `Serialize, Deserialize, JsonSchema`: the outputs of child runs are read back from JSON",
        note = "if `{Self}` already derives `Deserialize`, add `serde = {{ version = \"1\", features = [\"derive\"] }}` to your Cargo.toml: the derive needs the `serde` crate"
    )]
    OutputDeserialize: serde::de::DeserializeOwned
}
derive_check! {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task output: it does not implement `JsonSchema`",
        label = "`{Self}` needs `#[derive(JsonSchema)]`",
        note = "a task output derives `Serialize, Deserialize, JsonSchema`: every output is validated against its JSON Schema",
        note = "if `{Self}` already derives `JsonSchema`, add `schemars = \"1\"` to your Cargo.toml: the derive needs the `schemars` crate, in the major version task-runtime uses (1.x; schemars 0.8's `JsonSchema` is another trait)"
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

/// Calls a task's own hook with the event: `#[task(on_success = notify)]` expands to
/// `call_hook(notify, event)`, spanned at `notify`.
///
/// The parameter type `P` is inferred from the hook fn itself, whatever it is, so the `Fn`
/// bound always holds and rustc's "type mismatch in function arguments" (with its
/// `notify.clone()` suggestion for a by-value `HookEvent`) never fires; `P` is then checked by
/// [`HookFuture`], whose message says what a hook takes. The check sits on the hook's future
/// `R`, not on `P`, because rustc would answer an unimplemented trait on `P = HookEvent` with
/// "consider borrowing here" instead of our label.
pub fn call_hook<'a, F, P, R>(hook: F, event: &'a HookEvent) -> R
where
    F: FnOnce(P) -> R,
    R: HookFuture<'a, P>,
{
    hook(R::event(event))
}

/// What a hook fn is called with: `&HookEvent`, and nothing else.
#[diagnostic::on_unimplemented(
    message = "a hook takes `event: &HookEvent`, but this one takes `{P}`",
    label = "a hook takes `event: &HookEvent`",
    note = "declare it as `async fn name(event: &HookEvent)` returning `()` or `Result<(), E: Display>`; the event describes the finished run (id, input, output or error, attempts)"
)]
pub trait HookFuture<'a, P> {
    fn event(event: &'a HookEvent) -> P;
}

#[diagnostic::do_not_recommend]
impl<'a, R> HookFuture<'a, &'a HookEvent> for R {
    fn event(event: &'a HookEvent) -> &'a HookEvent {
        event
    }
}

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
