//! `TaskError`: every way a run can fail, as data with a stable JSON form.
//!
//! The JSON form is the envelope's `job.errorDetail`:
//!
//! ```json
//! { "kind": "invalidInput", "issues": [{ "path": "/text", "message": "..." }],
//!   "retryable": false,
//!   "step": { "index": 1, "taskName": "count_words", "runId": "run_..." } }
//! ```
//!
//! `kind` is one of `invalidInput`, `invalidOutput`, `notFound`, `failed`, `timeout`,
//! `cancelled`, `panicked`, `rejected`, `workerLost`, `expired`. `step` / `branch` say where in a track or orchestrator
//! the error happened, outermost first, each nesting the next level.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One schema violation: where in the JSON document and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// JSON pointer into the validated document (`""` is the document itself).
    pub path: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// What went wrong, with the data that belongs to that kind of failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input broke the task's input schema (or a payload limit). Never retried.
    #[error("invalid input: {}", join(issues))]
    InvalidInput {
        /// Every violation, with its JSON pointer.
        issues: Vec<Issue>,
    },
    /// The task returned an output that breaks its output schema.
    #[error("invalid output: {}", join(issues))]
    InvalidOutput {
        /// Every violation, with its JSON pointer.
        issues: Vec<Issue>,
    },
    /// No task, track or orchestrator is registered under this id; or, when the id is a
    /// run id, no such run (or not one the caller may see).
    #[error("no {} with id '{id}'{}", if id.parse::<crate::RunId>().is_ok() { "run" } else { "task" }, did_you_mean(suggestions))]
    NotFound {
        /// The id asked for.
        id: String,
        /// The closest registered ids.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        suggestions: Vec<String>,
    },
    /// The task's own code returned an error.
    #[error("{message}")]
    Failed {
        /// The error's `Display`.
        message: String,
        /// Rust type name of the user's error (`my_app::ExtractError`).
        type_name: String,
        /// Messages of the error's `source()` chain, outermost first, excluding `message`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sources: Vec<String>,
    },
    /// An attempt ran longer than the task's timeout.
    #[error("timed out after {}", humantime::format_duration(std::time::Duration::from_millis(*after_ms)))]
    Timeout {
        /// The timeout that passed, in milliseconds.
        after_ms: u64,
    },
    /// The run was cancelled before it finished.
    #[error("cancelled: {reason}")]
    Cancelled {
        /// Who or what cancelled it.
        reason: String,
    },
    /// The task panicked; the message is the panic payload when it was a string.
    #[error("panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The runtime refused to start the run (shutting down, nesting too deep, ...).
    #[error("rejected: {reason}")]
    Rejected {
        /// Why.
        reason: String,
    },
    /// The worker executing the attempt stopped heartbeating (it crashed, was killed or lost
    /// the store) and its lease expired. Retryable.
    #[error("worker lost: {reason}")]
    WorkerLost {
        /// What was seen (the lease's owner and when it expired).
        reason: String,
    },
    /// The run was not started before its time to live ran out.
    #[error("expired: {reason}")]
    Expired {
        /// When the run's time to live ended.
        reason: String,
    },
}

fn join(issues: &[Issue]) -> String {
    let parts: Vec<String> = issues.iter().map(Issue::to_string).collect();
    parts.join("; ")
}

pub(crate) fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", suggestions.join(", "))
    }
}

/// Where in a track an error happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRef {
    /// Zero-based index of the step in its track.
    pub index: usize,
    /// The step's task id.
    pub task_name: String,
    /// The step's run id.
    pub run_id: String,
    /// The location inside this step, when the step is itself a track or orchestrator.
    #[serde(flatten)]
    pub inner: Location,
}

/// Where in an orchestrator an error happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchRef {
    /// The branch's field name.
    pub name: String,
    /// For `each` branches: the index of the failing item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    /// The branch's task id.
    pub task_name: String,
    /// The branch's (or item's) run id.
    pub run_id: String,
    /// The location inside this branch, when it is itself a track or orchestrator.
    #[serde(flatten)]
    pub inner: Location,
}

/// A position inside a composite run: at most one of `step` / `branch` is set per level.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// The track step, when the error happened in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Box<StepRef>>,
    /// The orchestrator branch, when the error happened in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<Box<BranchRef>>,
}

impl Location {
    fn write_prefix(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(step) = &self.step {
            write!(f, "step {} '{}' failed: ", step.index + 1, step.task_name)?;
            step.inner.write_prefix(f)?;
        }
        if let Some(branch) = &self.branch {
            match branch.item {
                Some(item) => write!(f, "branch '{}' item {item} failed: ", branch.name)?,
                None => write!(f, "branch '{}' failed: ", branch.name)?,
            }
            branch.inner.write_prefix(f)?;
        }
        Ok(())
    }
}

/// The error of a run. `Display` is the sentence in the envelope's `job.error`; the serde form
/// is `job.errorDetail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskError {
    #[serde(flatten)]
    kind: ErrorKind,
    retryable: bool,
    #[serde(flatten)]
    location: Location,
    /// The user's original error, so `source()` keeps the chain in-process.
    #[serde(skip)]
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.location.write_prefix(f)?;
        fmt::Display::fmt(&self.kind, f)
    }
}

impl StdError for TaskError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.source {
            Some(source) => source.source(),
            None => None,
        }
    }
}

impl PartialEq for TaskError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.retryable == other.retryable
            && self.location == other.location
    }
}

impl TaskError {
    fn of(kind: ErrorKind, retryable: bool) -> Self {
        TaskError {
            kind,
            retryable,
            location: Location::default(),
            source: None,
        }
    }

    /// A retryable failure with a message (the common case inside a task body).
    pub fn failed(message: impl Into<String>) -> Self {
        Self::of(
            ErrorKind::Failed {
                message: message.into(),
                // The public path, not the defining module's.
                type_name: "task_runtime::TaskError".to_owned(),
                sources: Vec::new(),
            },
            true,
        )
    }

    /// A failure that retrying cannot fix (Trigger.dev's `AbortTaskRunError`).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::failed(message).into_fatal()
    }

    /// Wraps a user error, keeping its message, `source()` chain and type name.
    /// A [`TaskError`] passed here is returned unchanged.
    pub fn from_error<E>(error: E) -> Self
    where
        E: StdError + Send + Sync + 'static,
    {
        let mut slot = Some(error);
        if let Some(task_error) =
            (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<TaskError>>()
        {
            return task_error.take().expect("slot was just filled");
        }
        let error = slot.expect("slot was just filled");
        let mut sources = Vec::new();
        let mut next = error.source();
        while let Some(source) = next {
            sources.push(source.to_string());
            next = source.source();
        }
        let retryable = !is_marked_fatal(&error);
        TaskError {
            kind: ErrorKind::Failed {
                message: error.to_string(),
                type_name: std::any::type_name::<E>().to_owned(),
                sources,
            },
            retryable,
            location: Location::default(),
            source: Some(Arc::new(error)),
        }
    }

    /// The input broke the schema; `issues` lists every violation.
    pub fn invalid_input(issues: Vec<Issue>) -> Self {
        Self::of(ErrorKind::InvalidInput { issues }, false)
    }

    /// The output broke the schema; `issues` lists every violation.
    pub fn invalid_output(issues: Vec<Issue>) -> Self {
        Self::of(ErrorKind::InvalidOutput { issues }, false)
    }

    /// No task is registered under `id`; `suggestions` are the closest registered ids.
    pub fn not_found(id: impl Into<String>, suggestions: Vec<String>) -> Self {
        Self::of(
            ErrorKind::NotFound {
                id: id.into(),
                suggestions,
            },
            false,
        )
    }

    /// An attempt exceeded its timeout. Retryable.
    pub fn timeout(after: std::time::Duration) -> Self {
        Self::of(
            ErrorKind::Timeout {
                after_ms: after.as_millis().try_into().unwrap_or(u64::MAX),
            },
            true,
        )
    }

    /// The run was cancelled. Never retried.
    pub fn cancelled(reason: impl Into<String>) -> Self {
        Self::of(
            ErrorKind::Cancelled {
                reason: reason.into(),
            },
            false,
        )
    }

    /// The task panicked. Retryable (a panic may come from a transient condition).
    pub fn panicked(message: impl Into<String>) -> Self {
        Self::of(
            ErrorKind::Panicked {
                message: message.into(),
            },
            true,
        )
    }

    /// The attempt's worker was lost (its lease expired). Retryable.
    pub fn worker_lost(reason: impl Into<String>) -> Self {
        Self::of(
            ErrorKind::WorkerLost {
                reason: reason.into(),
            },
            true,
        )
    }

    /// The run's time to live ended before it started. Never retried.
    pub fn expired(reason: impl Into<String>) -> Self {
        Self::of(
            ErrorKind::Expired {
                reason: reason.into(),
            },
            false,
        )
    }

    /// The runtime refused to start the run. Never retried.
    pub fn rejected(reason: impl Into<String>) -> Self {
        Self::of(
            ErrorKind::Rejected {
                reason: reason.into(),
            },
            false,
        )
    }

    /// Marks this error as not worth retrying.
    pub fn into_fatal(mut self) -> Self {
        self.retryable = false;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The `kind` tag as it appears in JSON (`"invalidInput"`, `"failed"`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidInput { .. } => "invalidInput",
            ErrorKind::InvalidOutput { .. } => "invalidOutput",
            ErrorKind::NotFound { .. } => "notFound",
            ErrorKind::Failed { .. } => "failed",
            ErrorKind::Timeout { .. } => "timeout",
            ErrorKind::Cancelled { .. } => "cancelled",
            ErrorKind::Panicked { .. } => "panicked",
            ErrorKind::Rejected { .. } => "rejected",
            ErrorKind::WorkerLost { .. } => "workerLost",
            ErrorKind::Expired { .. } => "expired",
        }
    }

    /// Whether another attempt could succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The schema issues of an `invalidInput` / `invalidOutput` error.
    pub fn issues(&self) -> &[Issue] {
        match &self.kind {
            ErrorKind::InvalidInput { issues } | ErrorKind::InvalidOutput { issues } => issues,
            _ => &[],
        }
    }

    /// Where in a track or orchestrator the error happened.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Downcasts the user's original error, when this wraps one and it is still in-process.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        let source: &(dyn StdError + 'static) = self.source.as_deref()?;
        source.downcast_ref::<E>()
    }

    /// Records that this error happened in step `index` of a track.
    pub(crate) fn in_step(mut self, index: usize, task_name: &str, run_id: &str) -> Self {
        let inner = std::mem::take(&mut self.location);
        self.location.step = Some(Box::new(StepRef {
            index,
            task_name: task_name.to_owned(),
            run_id: run_id.to_owned(),
            inner,
        }));
        self
    }

    /// Records that this error happened in branch `name` (item `item` of an `each`).
    pub(crate) fn in_branch(
        mut self,
        name: &str,
        item: Option<usize>,
        task_name: &str,
        run_id: &str,
    ) -> Self {
        let inner = std::mem::take(&mut self.location);
        self.location.branch = Some(Box::new(BranchRef {
            name: name.to_owned(),
            item,
            task_name: task_name.to_owned(),
            run_id: run_id.to_owned(),
            inner,
        }));
        self
    }
}

impl schemars::JsonSchema for TaskError {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TaskError".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "A run's error: `kind` says what went wrong, the other fields depend on it.",
            "required": ["kind", "retryable"],
            "properties": {
                "kind": { "enum": ["invalidInput", "invalidOutput", "notFound", "failed",
                                   "timeout", "cancelled", "panicked", "rejected",
                                   "workerLost", "expired"] },
                "retryable": { "type": "boolean" }
            }
        })
    }
}

/// `?` for any error inside a task that returns [`TaskError`].
///
/// `TaskError` cannot implement `From` for every error type (it is an error type itself), so
/// `std::fs::read_to_string(path)?` does not compile in a task returning `TaskError`. Use
/// these instead; each keeps the error's message, `source()` chain and type name:
///
/// ```
/// use task_runtime::prelude::*;
///
/// fn read(path: &str) -> Result<String, TaskError> {
///     let text = std::fs::read_to_string(path).context(format!("cannot read '{path}'"))?;
///     let n: u32 = text.trim().parse().or_fatal()?; // retrying cannot fix a bad number
///     Ok(format!("{n}"))
/// }
///
/// let err = read("/no/such/file").unwrap_err();
/// assert!(err.to_string().starts_with("cannot read '/no/such/file': "));
/// assert!(err.is_retryable());
/// ```
///
/// In a task with its own error type, `ctx.run(..)?` needs that type to convert from
/// `TaskError`: with thiserror, a variant `#[error(transparent)] Child(#[from] TaskError)`.
pub trait ResultExt<T> {
    /// The error as a retryable `failed` [`TaskError`].
    fn or_failed(self) -> Result<T, TaskError>;
    /// The error as a `failed` [`TaskError`] that is never retried.
    fn or_fatal(self) -> Result<T, TaskError>;
    /// The error as a retryable `failed` [`TaskError`] whose message is
    /// `"{context}: {error}"`; the error stays the first of the `source()` chain.
    fn context(self, context: impl Into<String>) -> Result<T, TaskError>;
}

impl<T, E: StdError + Send + Sync + 'static> ResultExt<T> for Result<T, E> {
    fn or_failed(self) -> Result<T, TaskError> {
        self.map_err(TaskError::from_error)
    }

    fn or_fatal(self) -> Result<T, TaskError> {
        self.map_err(|e| TaskError::from_error(e).into_fatal())
    }

    fn context(self, context: impl Into<String>) -> Result<T, TaskError> {
        self.map_err(|error| {
            let context = context.into();
            let wrapped = TaskError::from_error(error);
            let (message, type_name, mut sources) = match &wrapped.kind {
                ErrorKind::Failed {
                    message,
                    type_name,
                    sources,
                } => (message.clone(), type_name.clone(), sources.clone()),
                other => (
                    other.to_string(),
                    "task_runtime::TaskError".to_owned(),
                    Vec::new(),
                ),
            };
            sources.insert(0, message.clone());
            TaskError {
                kind: ErrorKind::Failed {
                    message: format!("{context}: {message}"),
                    type_name,
                    sources,
                },
                retryable: wrapped.retryable,
                location: Location::default(),
                source: wrapped.source,
            }
        })
    }
}

/// Marker a user error can carry in its `source()` chain to say "do not retry":
/// `#[source] Fatal` or `Fatal::new(..)` as the innermost cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(
    /// Why retrying cannot help.
    pub String,
);

impl Fatal {
    /// A fatal cause with a reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Fatal(reason.into())
    }
}

fn is_marked_fatal(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<Fatal>() {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_says_run_for_a_run_id_and_task_otherwise() {
        let run = crate::RunId::new(std::time::SystemTime::now()).to_string();
        assert_eq!(
            TaskError::not_found(run.clone(), Vec::new()).to_string(),
            format!("no run with id '{run}'")
        );
        assert_eq!(
            TaskError::not_found("doubel", vec!["double".to_owned()]).to_string(),
            "no task with id 'doubel' (did you mean double?)"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("could not read the file")]
    struct ReadError {
        #[source]
        cause: std::io::Error,
    }

    #[test]
    fn user_error_keeps_message_chain_and_type() {
        let err = TaskError::from_error(ReadError {
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
        let json = serde_json::to_value(&err).unwrap();
        assert_eq!(json["kind"], "failed");
        assert_eq!(json["message"], "could not read the file");
        assert_eq!(json["sources"][0], "no such file");
        assert!(json["typeName"].as_str().unwrap().ends_with("ReadError"));
        assert_eq!(json["retryable"], true);
        assert!(err.downcast_ref::<ReadError>().is_some());
        assert_eq!(err.source().unwrap().to_string(), "no such file");
    }

    #[test]
    fn task_error_passes_through_unchanged() {
        let err = TaskError::from_error(TaskError::fatal("bad"));
        assert_eq!(err.kind_name(), "failed");
        assert!(!err.is_retryable());
        assert_eq!(err.to_string(), "bad");
    }

    #[test]
    fn fatal_marker_in_chain_disables_retry() {
        #[derive(Debug, thiserror::Error)]
        #[error("quota exhausted")]
        struct Quota(#[source] Fatal);
        let err = TaskError::from_error(Quota(Fatal::new("permanent")));
        assert!(!err.is_retryable());
    }

    #[test]
    fn nested_location_renders_outer_first_and_round_trips() {
        let err = TaskError::invalid_input(vec![Issue {
            path: "/text".into(),
            message: "\"\" is shorter than 1 character".into(),
        }])
        .in_step(1, "count_words", "run_b")
        .in_branch("documents", Some(3), "text_track", "run_a");
        assert_eq!(
            err.to_string(),
            "branch 'documents' item 3 failed: step 2 'count_words' failed: \
             invalid input: /text: \"\" is shorter than 1 character"
        );
        let json = serde_json::to_value(&err).unwrap();
        assert_eq!(json["kind"], "invalidInput");
        assert_eq!(json["branch"]["item"], 3);
        assert_eq!(json["branch"]["step"]["taskName"], "count_words");
        let back: TaskError = serde_json::from_value(json).unwrap();
        assert_eq!(back, err);
    }
}
