//! The run envelope `RunOutput<T>`: the seed's "Task Output Structure" in camelCase JSON.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::TaskError;
use crate::id::RunId;
use crate::input::TrampData;

/// What one run produced: `job` (who ran, did it work), `results`, `metadata` (timing,
/// attempts, steps, branches) and the caller's `trampData`, echoed on success and failure.
///
/// A typed run's envelope holds the task's output type itself (`rt.run(..).await?.results`
/// is the output); a run by id holds JSON, `null` when the run failed.
///
/// `trampData` is the input's own, read from `job.input` ([`RunOutput::tramp_data`]): the
/// envelope keeps one copy of it, however large.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RunOutput<T> {
    /// Identity and outcome.
    pub job: Job,
    /// The task's output (`null` in JSON when the run failed).
    pub results: T,
    /// Timing, attempts, steps and branches.
    pub metadata: Metadata,
}

impl<T: Serialize> Serialize for RunOutput<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("RunOutput", 4)?;
        out.serialize_field("job", &self.job)?;
        out.serialize_field("results", &self.results)?;
        out.serialize_field("metadata", &self.metadata)?;
        out.serialize_field("trampData", &self.tramp_data())?;
        out.end()
    }
}

/// Identity and outcome of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Job {
    /// Whether the run succeeded.
    pub success: bool,
    /// The id of the task, track or orchestrator.
    pub task_name: Cow<'static, str>,
    /// The run's id.
    pub run_id: RunId,
    /// The input as given (JSON), so a failed run loses nothing; it reads as a
    /// `serde_json::Value` (see [`JobInput`]). (Absent is `null`: a store may keep an
    /// envelope without it, beside the run's input.)
    #[serde(default)]
    pub input: JobInput,
    /// The human sentence (`"step 2 'count_words' failed: ..."`); `null` on success.
    pub error: Option<String>,
    /// The structured error; `null` on success.
    pub error_detail: Option<TaskError>,
}

/// A run's input as JSON, as given: it reads as a [`serde_json::Value`] (it derefs to one,
/// compares equal to one, and [`into_value`](Self::into_value) gives it).
///
/// A typed run's envelope shares the input's `trampData` with the input it ran with rather
/// than hold a second copy of it in the JSON: the whole value is put together the first time
/// it is read, once, and writing the envelope as JSON never needs it.
///
/// ```
/// # use task_runtime::JobInput;
/// let input = JobInput::from(serde_json::json!({ "tenantId": "acme", "value": 21 }));
/// assert_eq!(input["value"], 21);
/// assert_eq!(input, serde_json::json!({ "tenantId": "acme", "value": 21 }));
/// ```
#[derive(Clone, Default)]
pub struct JobInput {
    /// The input, without `tramp` when that is set.
    json: Value,
    /// The top-level `trampData` left out of `json`.
    tramp: Option<TrampData>,
    /// `json` with `tramp` put back, made on the first read.
    whole: OnceLock<Value>,
}

impl JobInput {
    /// `json` with, when given, the top-level `trampData` it leaves out.
    pub(crate) fn shared(json: Value, tramp: Option<TrampData>) -> Self {
        JobInput {
            json,
            tramp,
            whole: OnceLock::new(),
        }
    }

    /// The input as one JSON value.
    pub fn as_value(&self) -> &Value {
        let Some(tramp) = &self.tramp else {
            return &self.json;
        };
        self.whole.get_or_init(|| {
            let mut whole = self.json.clone();
            if let Value::Object(map) = &mut whole {
                map.insert("trampData".to_owned(), tramp.as_value().clone());
            }
            whole
        })
    }

    /// The input as an owned JSON value.
    pub fn into_value(mut self) -> Value {
        if let Some(whole) = self.whole.take() {
            return whole;
        }
        if let (Some(tramp), Value::Object(map)) = (self.tramp.take(), &mut self.json) {
            map.insert("trampData".to_owned(), tramp.into_value());
        }
        self.json
    }

    /// The input's `trampData` (`null` and absent are `None`), read without putting the
    /// whole value together.
    pub fn tramp_data(&self) -> Option<&Value> {
        match &self.tramp {
            Some(tramp) => Some(tramp.as_value()),
            None => self.json.get("trampData").filter(|v| !v.is_null()),
        }
    }
}

impl std::ops::Deref for JobInput {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.as_value()
    }
}

impl std::ops::DerefMut for JobInput {
    fn deref_mut(&mut self) -> &mut Value {
        if self.tramp.is_some() {
            *self = JobInput::from(std::mem::take(self).into_value());
        }
        &mut self.json
    }
}

impl From<Value> for JobInput {
    fn from(json: Value) -> Self {
        JobInput::shared(json, None)
    }
}

impl From<JobInput> for Value {
    fn from(input: JobInput) -> Self {
        input.into_value()
    }
}

impl std::fmt::Debug for JobInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_value(), f)
    }
}

impl PartialEq for JobInput {
    fn eq(&self, other: &Self) -> bool {
        self.as_value() == other.as_value()
    }
}

impl PartialEq<Value> for JobInput {
    fn eq(&self, other: &Value) -> bool {
        self.as_value() == other
    }
}

impl PartialEq<JobInput> for Value {
    fn eq(&self, other: &JobInput) -> bool {
        self == other.as_value()
    }
}

impl Serialize for JobInput {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (Some(tramp), Value::Object(map)) = (&self.tramp, &self.json) else {
            return self.json.serialize(s);
        };
        // The entries in the order the whole value would have them, `trampData` among them.
        let mut out = s.serialize_map(Some(map.len() + 1))?;
        let mut pending = Some(tramp);
        for (key, value) in map {
            if let Some(tramp) = pending.take_if(|_| key.as_str() > "trampData") {
                out.serialize_entry("trampData", tramp.as_value())?;
            }
            out.serialize_entry(key, value)?;
        }
        if let Some(tramp) = pending {
            out.serialize_entry("trampData", tramp.as_value())?;
        }
        out.end()
    }
}

impl<'de> Deserialize<'de> for JobInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(JobInput::from)
    }
}

/// Timing and shape of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Metadata {
    /// When the run started.
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    /// When it finished.
    #[serde(with = "rfc3339")]
    pub finished_at: SystemTime,
    /// `finishedAt - startedAt` in milliseconds.
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
#[non_exhaustive]
pub struct StepRecord {
    /// The step's task id.
    pub task_name: String,
    /// The step's run id.
    pub run_id: RunId,
    /// Whether the step succeeded.
    pub success: bool,
    /// How long the step ran.
    pub duration_ms: u64,
    /// Attempts the step made.
    pub attempts: u32,
    /// The output came from the run's journal: the step had completed in an earlier attempt
    /// and did not execute again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// The inner steps, when this step is itself a track.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
}

/// One branch of an orchestrator, as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BranchRecord {
    /// The branch's field name.
    pub name: String,
    /// The branch's task id.
    pub task_name: String,
    /// Whether the branch (every item of an `each`) succeeded.
    pub success: bool,
    /// How long the branch ran.
    pub duration_ms: u64,
    /// The run id of a single branch; absent for `each` branches (see `items.runs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// The output came from the run's journal (see [`StepRecord::replayed`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// Item counts and runs of an `each` branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ItemCounts>,
}

/// How the items of an `each` branch ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ItemCounts {
    /// Items in all.
    pub total: usize,
    /// Items that succeeded.
    pub succeeded: usize,
    /// Items that failed.
    pub failed: usize,
    /// Items that never started or were stopped because a sibling failed.
    pub cancelled: usize,
    /// The items' runs: every failed one, then the first succeeded ones, at most
    /// [`ItemCounts::MAX_RUNS`] in all, in item order. The counts above are always exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<ItemRun>,
}

impl ItemCounts {
    /// The most item runs one `each` branch lists.
    pub const MAX_RUNS: usize = 1000;
}

/// One item of an `each` branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ItemRun {
    /// The item's index in the branch's items.
    pub index: usize,
    /// The item's run id.
    pub run_id: RunId,
    /// Whether it succeeded.
    pub success: bool,
}

/// The parts every envelope is built from, whatever ended the run.
pub(crate) struct Head {
    pub task: Cow<'static, str>,
    pub run_id: RunId,
    pub input: Value,
    /// The input's `trampData` when `input` leaves it out (see [`JobInput`]).
    pub tramp: Option<TrampData>,
    pub started_at: SystemTime,
    pub duration_ms: u64,
    pub attempts: u32,
    pub steps: Vec<StepRecord>,
    pub branches: Vec<BranchRecord>,
    pub cleanup_errors: Vec<String>,
}

impl Head {
    /// A run that ended before it started: refused, not found, shut down.
    pub(crate) fn refused(task: &str, run_id: RunId, input: Value) -> Self {
        Head {
            task: Cow::Owned(task.to_owned()),
            started_at: SystemTime::now(),
            run_id,
            input,
            tramp: None,
            duration_ms: 0,
            attempts: 0,
            steps: Vec::new(),
            branches: Vec::new(),
            cleanup_errors: Vec::new(),
        }
    }
}

impl<T> RunOutput<T> {
    /// The one constructor of envelopes: `results` is the output, or (for a failed run by
    /// id) `null`.
    pub(crate) fn build(head: Head, results: T, error: Option<TaskError>) -> Self {
        RunOutput {
            job: Job {
                success: error.is_none(),
                task_name: head.task,
                run_id: head.run_id,
                input: JobInput::shared(head.input, head.tramp),
                error: error.as_ref().map(ToString::to_string),
                error_detail: error,
            },
            results,
            metadata: Metadata {
                started_at: head.started_at,
                finished_at: head.started_at + Duration::from_millis(head.duration_ms),
                duration_ms: head.duration_ms,
                attempts: head.attempts,
                steps: head.steps,
                branches: head.branches,
                cleanup_errors: head.cleanup_errors,
            },
        }
    }

    /// The caller's `trampData`, as given in the input (`null` and absent are `None`).
    pub fn tramp_data(&self) -> Option<&Value> {
        self.job.input.tramp_data()
    }

    /// Whether the run succeeded.
    pub fn is_success(&self) -> bool {
        self.job.success
    }

    /// The run id (`run_` + a time-sortable ULID).
    pub fn run_id(&self) -> &RunId {
        &self.job.run_id
    }

    /// The error, when the run failed.
    pub fn error(&self) -> Option<&TaskError> {
        self.job.error_detail.as_ref()
    }

    /// The results as `Ok`, or the error as `Err`.
    pub fn into_result(self) -> Result<T, TaskError> {
        match self.job.error_detail {
            Some(error) => Err(error),
            None => Ok(self.results),
        }
    }

    /// Converts the results, keeping everything else.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> RunOutput<U> {
        RunOutput {
            job: self.job,
            results: f(self.results),
            metadata: self.metadata,
        }
    }
}

impl<T: Serialize> RunOutput<T> {
    /// The same envelope with the results as JSON.
    pub fn to_json(&self) -> RunOutput<Value> {
        RunOutput {
            job: self.job.clone(),
            results: serde_json::to_value(&self.results).unwrap_or_default(),
            metadata: self.metadata.clone(),
        }
    }
}

impl RunOutput<Value> {
    /// The envelope of a run that ended before it started (unknown id, payload limits,
    /// shutdown, a refused duplicate).
    pub(crate) fn refused(task: &str, run_id: RunId, input: Value, error: TaskError) -> Self {
        RunOutput::build(Head::refused(task, run_id, input), Value::Null, Some(error))
    }

    /// The envelope as a store keeps it beside the run's input: its JSON with `job.input`
    /// `null`, so the input (and the `trampData` read from it) is stored once, not twice
    /// (about half of a small run's envelope). [`RunOutput::with_input`] puts it back.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn stored_json(&self) -> String {
        // `Job`'s fields, borrowed, with `input` written as `null` (not cloned and dropped).
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct StoredJob<'a> {
            success: bool,
            task_name: &'a str,
            run_id: &'a RunId,
            input: (),
            error: &'a Option<String>,
            error_detail: &'a Option<TaskError>,
        }
        #[derive(Serialize)]
        struct Stored<'a> {
            job: StoredJob<'a>,
            results: &'a Value,
            metadata: &'a Metadata,
        }
        let Job {
            success,
            task_name,
            run_id,
            input: _,
            error,
            error_detail,
        } = &self.job;
        let stored = Stored {
            job: StoredJob {
                success: *success,
                task_name,
                run_id,
                input: (),
                error,
                error_detail,
            },
            results: &self.results,
            metadata: &self.metadata,
        };
        serde_json::to_string(&stored).unwrap_or_else(|_| "null".to_owned())
    }

    /// A stored envelope made whole again with the run's `input` (see
    /// [`RunOutput::stored_json`]); one stored with its input is left as it is.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn with_input(mut self, input: &Value) -> Self {
        if self.job.input.is_null() {
            self.job.input = JobInput::from(input.clone());
        }
        self
    }
}

/// The error of a typed run that failed, carrying the whole (failed) envelope.
#[derive(Debug, Clone, thiserror::Error)]
#[error("run {} of '{}' failed: {}", envelope.job.run_id, envelope.job.task_name, error)]
pub struct RunError {
    /// The envelope of the failed run (`results` is `null`).
    pub envelope: Box<RunOutput<Value>>,
    /// Why it failed (also `envelope.job.errorDetail`).
    #[source]
    pub error: TaskError,
}

impl RunError {
    /// The run id of the failed run.
    pub fn run_id(&self) -> &RunId {
        &self.envelope.job.run_id
    }

    /// A refused or failed envelope as the error of a typed call.
    pub(crate) fn from_envelope(envelope: RunOutput<Value>) -> Self {
        let error = envelope
            .job
            .error_detail
            .clone()
            .unwrap_or_else(|| TaskError::failed("the run failed without an error"));
        RunError {
            envelope: Box::new(envelope),
            error,
        }
    }
}

pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod rfc3339_option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::rfc3339::serialize(time, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let text = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.map(|text| humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(all(test, any(feature = "sqlite", feature = "postgres")))]
mod tests {
    use super::*;

    #[test]
    fn a_shared_tramp_data_is_written_where_the_whole_value_has_it() {
        use serde_json::json;
        let tramp = TrampData::from(json!({ "k": [1, { "deep": true }] }));
        for rest in [
            json!({}),
            json!({ "a": 1 }),
            json!({ "zz": 1 }),
            json!({ "a": 1, "tenantId": "t", "userId": "u", "value": 2 }),
        ] {
            let mut whole = rest.clone();
            whole["trampData"] = tramp.as_value().clone();
            let shared = JobInput::shared(rest.clone(), Some(tramp.clone()));
            assert_eq!(
                serde_json::to_string(&shared).unwrap(),
                serde_json::to_string(&whole).unwrap()
            );
            assert_eq!(shared, whole);
            assert_eq!(*shared, whole);
            assert_eq!(shared.tramp_data(), Some(tramp.as_value()));
            let read: JobInput = serde_json::from_value(whole.clone()).unwrap();
            assert_eq!(read, shared);
            assert_eq!(read.tramp_data(), Some(tramp.as_value()));
            let mut edited = shared.clone();
            edited["extra"] = json!(true);
            assert_eq!(edited["trampData"], *tramp.as_value());
            assert_eq!(shared.into_value(), whole);
        }
        let plain = JobInput::from(json!({ "trampData": null }));
        assert_eq!(plain.tramp_data(), None);
        assert_eq!(JobInput::default(), Value::Null);
    }

    #[test]
    fn the_stored_form_is_the_envelope_without_its_input() {
        let input = serde_json::json!({ "tenantId": "acme", "trampData": { "k": 1 } });
        let id = RunId::new(SystemTime::now());
        let envelope =
            RunOutput::refused("noop", id, input.clone(), TaskError::failed("refused here"));
        let mut whole = serde_json::to_value(&envelope).unwrap();
        whole["job"]["input"] = Value::Null;
        whole.as_object_mut().unwrap().remove("trampData");
        let stored: Value = serde_json::from_str(&envelope.stored_json()).unwrap();
        assert_eq!(stored, whole);
        // Read back whole (compared as JSON: times are kept to the millisecond).
        let read: RunOutput<Value> = serde_json::from_value(stored).unwrap();
        assert_eq!(
            serde_json::to_value(read.with_input(&input)).unwrap(),
            serde_json::to_value(&envelope).unwrap()
        );
    }
}
