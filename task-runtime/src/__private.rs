//! What generated code reaches: dependencies and runtime internals under one path, so a
//! user's crate needs no extra dependencies and its own `Result` or `Option` cannot break
//! the expansion. Not a public API.

pub use inventory;
pub use schemars;
pub use serde;
pub use serde_json;

pub use crate::orchestrator::{self, Branches, FailurePolicy, Outcome};
pub use crate::policy::{RetryPolicy, RunPolicy};
pub use crate::registry::{BranchInfo, Registration, TaskDescriptor};
pub use crate::runtime::Registered;
pub use crate::schema::{SchemaCell, TaskSchemas};
pub use crate::task::{Kind, Task, TaskInput, TaskOutput};
pub use crate::track;
pub use crate::{TaskContext, TaskError};

pub use core::future::Future;
pub use core::result::Result;
pub use core::time::Duration;

use std::error::Error as StdError;

/// The error types a `#[task]` fn may return.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error type of a task",
    label = "the error type must implement `std::error::Error + Send + Sync + 'static`",
    note = "return `TaskError`, or derive `thiserror::Error` on your own error type"
)]
pub trait IntoTaskError {
    fn into_task_error(self) -> TaskError;
}

impl<E: StdError + Send + Sync + 'static> IntoTaskError for E {
    fn into_task_error(self) -> TaskError {
        TaskError::from_error(self)
    }
}

/// Awaits a `#[task]` fn and converts its error.
pub async fn call<O, E: IntoTaskError>(
    body: impl Future<Output = Result<O, E>>,
) -> Result<O, TaskError> {
    body.await.map_err(IntoTaskError::into_task_error)
}

/// Compile-time checks spanned at the user's types, one per missing derive.
pub const fn input_is_deserialize<T: serde::de::DeserializeOwned>() {}
pub const fn input_is_serialize<T: serde::Serialize>() {}
pub const fn input_has_schema<T: schemars::JsonSchema>() {}
pub const fn output_is_serialize<T: serde::Serialize>() {}
pub const fn output_is_deserialize<T: serde::de::DeserializeOwned>() {}
pub const fn output_has_schema<T: schemars::JsonSchema>() {}
