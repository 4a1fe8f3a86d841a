//! The run envelope `RunOutput<T>`: the seed's "Task Output Structure" in camelCase JSON.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::TaskError;

/// What one run produced: `job` (who ran, did it work), `results`, `metadata` (timing,
/// attempts, steps, branches) and the caller's `trampData`, echoed on success and failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutput<T> {
    pub job: Job,
    /// The task's output; `null` when the run failed.
    pub results: Option<T>,
    pub metadata: Metadata,
    /// Copied unchanged from the input's `trampData`.
    pub tramp_data: Option<Value>,
}

/// Identity and outcome of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub success: bool,
    pub task_name: String,
    pub run_id: String,
    /// The input as given (JSON), so a failed run loses nothing.
    pub input: Value,
    /// The human sentence (`"step 2 'count_words' failed: ..."`); `null` on success.
    pub error: Option<String>,
    /// The structured error; `null` on success.
    pub error_detail: Option<TaskError>,
}

/// Timing and shape of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub finished_at: SystemTime,
    pub duration_ms: u64,
    /// Attempts made, counting the first.
    pub attempts: u32,
    /// One entry per track step that ran (tracks only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
    /// One entry per orchestrator branch (orchestrators only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<BranchRecord>,
    /// Cleanup callbacks that failed; the run's own outcome is unaffected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleanup_errors: Vec<String>,
}

/// One step of a track, as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub task_name: String,
    pub run_id: String,
    pub success: bool,
    pub duration_ms: u64,
    pub attempts: u32,
    /// The inner steps, when this step is itself a track.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
}

/// One branch of an orchestrator, as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchRecord {
    pub name: String,
    pub task_name: String,
    pub success: bool,
    pub duration_ms: u64,
    /// The run id of a single branch; absent for `each` branches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Item counts of an `each` branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ItemCounts>,
}

/// How the items of an `each` branch ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemCounts {
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Items that never started or were stopped because a sibling failed.
    pub cancelled: usize,
}

impl<T> RunOutput<T> {
    /// Whether the run succeeded.
    pub fn is_success(&self) -> bool {
        self.job.success
    }

    /// The run id (`run_` + a time-sortable ULID).
    pub fn run_id(&self) -> &str {
        &self.job.run_id
    }

    /// The error, when the run failed.
    pub fn error(&self) -> Option<&TaskError> {
        self.job.error_detail.as_ref()
    }

    /// The results as `Ok`, or the error as `Err`.
    pub fn into_result(self) -> Result<T, TaskError> {
        match (self.results, self.job.error_detail) {
            (Some(results), None) => Ok(results),
            (_, Some(error)) => Err(error),
            (None, None) => Err(TaskError::failed("run produced no results")),
        }
    }

    /// Converts the results, keeping everything else.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> RunOutput<U> {
        RunOutput {
            job: self.job,
            results: self.results.map(f),
            metadata: self.metadata,
            tramp_data: self.tramp_data,
        }
    }
}

/// The error of a typed run that failed, carrying the whole (failed) envelope.
#[derive(Debug, Clone, thiserror::Error)]
#[error("run {} of '{}' failed: {}", envelope.job.run_id, envelope.job.task_name, error)]
pub struct RunError {
    /// The envelope of the failed run (`results` is `null`).
    pub envelope: Box<RunOutput<Value>>,
    #[source]
    pub error: TaskError,
}

impl RunError {
    /// The run id of the failed run.
    pub fn run_id(&self) -> &str {
        &self.envelope.job.run_id
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}
