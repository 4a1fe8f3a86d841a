//! Cron schedules: a task declared with `#[task(schedule = "0 */6 * * *")]` (or
//! `schedule(cron = "..", timezone = "Europe/Paris")`), or a schedule created at run time
//! with [`Runtime::schedules`], gets one run at every fire time.
//!
//! Schedules live in the store, beside the runs, and workers fire them (feature `cron`,
//! on by default): every fire is one run whose idempotency key is the schedule's id and the
//! fire time, claimed by moving the schedule's next fire time in the same transaction, so
//! any number of workers fire it once. After downtime, a schedule that missed fire times
//! fires once, for the latest of them, not once per missed slot. Fire times follow the
//! schedule's IANA timezone through daylight-saving changes: a local time that does not
//! exist that day (spring forward) fires at the first valid time after the gap, and one
//! that occurs twice (fall back) fires once, at its first occurrence.

#[cfg(feature = "cron")]
pub(crate) mod cron;
#[cfg(feature = "cron")]
pub(crate) mod fire;

use std::time::SystemTime;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::runtime::Runtime;
use crate::store::StoreError;

/// A schedule as declared on a task: a five-field cron pattern and its timezone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// `minute hour day-of-month month day-of-week`, e.g. `"0 */6 * * *"`.
    pub cron: &'static str,
    /// An IANA timezone (`"UTC"` unless given).
    pub timezone: &'static str,
}

/// The input of a scheduled task: which schedule fired, and for which time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledInput {
    /// The schedule's id (`declared:<task id>` for a schedule declared on the task).
    pub schedule_id: String,
    /// The fire time this run is for.
    #[serde(with = "crate::envelope::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub timestamp: SystemTime,
    /// The fire time of the schedule's previous run, if it had one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::envelope::rfc3339_option"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub last_timestamp: Option<SystemTime>,
    /// The timezone the cron pattern is read in.
    pub timezone: String,
    /// What the creator of the schedule attached to it (e.g. a customer id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The schedule's tenant, when it was created for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The schedule's project, when it was created for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

/// What a scheduled task's input must be; see [`ScheduledInput`].
#[diagnostic::on_unimplemented(
    message = "a task with `schedule = ..` takes `task_runtime::ScheduledInput` as its input, not `{Self}`",
    label = "the input of a scheduled task",
    note = "a schedule triggers the task with what it knows (the schedule's id, the fire time, the previous one, the timezone): `async fn f(ctx: &TaskContext, input: ScheduledInput)`"
)]
pub trait ScheduledTaskInput {}

impl ScheduledTaskInput for ScheduledInput {}

/// Checks, at compile time, that a scheduled task takes [`ScheduledInput`].
#[doc(hidden)]
pub fn scheduled_input<T: ScheduledTaskInput>() {}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Schedule {
    /// `sched_<ULID>` for a created schedule, `declared:<task id>` for a declared one.
    pub id: String,
    /// The task it triggers.
    pub task: String,
    /// The five-field cron pattern.
    pub cron: String,
    /// The IANA timezone it is read in.
    pub timezone: String,
    /// The tenant its runs belong to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The project its runs belong to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// What its creator attached to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Declared on the task (`#[task(schedule = ..)]`), kept in step with the code by
    /// workers; `false` for one created at run time.
    pub declared: bool,
    /// When it fires next (`None`: never again, e.g. February 30th).
    #[serde(with = "crate::envelope::rfc3339_option")]
    pub next_fire_at: Option<SystemTime>,
    /// When it fired last.
    #[serde(with = "crate::envelope::rfc3339_option")]
    pub last_fired_at: Option<SystemTime>,
    /// When it was created.
    #[serde(with = "crate::envelope::rfc3339")]
    pub created_at: SystemTime,
}

/// A schedule to create with [`Schedules::create`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    pub(crate) task: String,
    pub(crate) cron: String,
    pub(crate) timezone: String,
    pub(crate) tenant_id: Option<String>,
    pub(crate) project_id: Option<String>,
    pub(crate) external_id: Option<String>,
}

impl NewSchedule {
    /// Runs of `task` at every time `cron` (five fields) matches, in UTC.
    pub fn new(task: impl Into<String>, cron: impl Into<String>) -> Self {
        NewSchedule {
            task: task.into(),
            cron: cron.into(),
            timezone: "UTC".to_owned(),
            tenant_id: None,
            project_id: None,
            external_id: None,
        }
    }

    /// Reads the pattern in this IANA timezone (`"Europe/Paris"`).
    pub fn timezone(mut self, timezone: impl Into<String>) -> Self {
        self.timezone = timezone.into();
        self
    }

    /// The tenant and project its runs belong to.
    pub fn tenant(mut self, tenant_id: impl Into<String>, project_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self.project_id = Some(project_id.into());
        self
    }

    /// Something of yours to find it by, passed to every run (`ScheduledInput::external_id`).
    pub fn external_id(mut self, external_id: impl Into<String>) -> Self {
        self.external_id = Some(external_id.into());
        self
    }
}

/// Why a schedule could not be created, listed or fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron pattern does not parse.
    #[error(
        "invalid cron pattern \"{pattern}\": {reason}; write five fields, minute hour \
         day-of-month month day-of-week, e.g. \"0 */6 * * *\""
    )]
    InvalidCron {
        /// The pattern given.
        pattern: String,
        /// What the parser said.
        reason: String,
    },
    /// The timezone is not an IANA name.
    #[error(
        "unknown timezone \"{timezone}\": use an IANA name such as \"UTC\", \"Europe/Paris\" \
         or \"America/New_York\""
    )]
    UnknownTimezone {
        /// The timezone given.
        timezone: String,
    },
    /// No task has this id in this binary.
    #[error(
        "no task has the id '{task}'{}",
        crate::error::did_you_mean(suggestions)
    )]
    UnknownTask {
        /// The id given.
        task: String,
        /// The closest ids.
        suggestions: Vec<String>,
    },
    /// The task does not take [`ScheduledInput`].
    #[error(
        "task '{task}' cannot be scheduled: a scheduled task takes `ScheduledInput` as its \
         input ({reason})"
    )]
    NotSchedulable {
        /// The task.
        task: String,
        /// How its schema refused the schedule's input.
        reason: String,
    },
    /// Schedules are kept in a store: the runtime has none.
    #[error(
        "schedules are kept in a store: build the runtime with one \
         (`Runtime::builder().store(Store::connect(\"sqlite://...\").await?)`)"
    )]
    NoStore,
    /// This build of task-runtime has no `cron` feature.
    #[error("this build of task-runtime has no schedules: enable its `cron` feature")]
    CronDisabled,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The schedules of a runtime's store: `rt.schedules()`.
#[derive(Debug, Clone, Copy)]
pub struct Schedules<'a> {
    pub(crate) rt: &'a Runtime,
}

impl<'a> Schedules<'a> {
    pub(crate) fn store(
        self,
    ) -> Result<&'a std::sync::Arc<dyn crate::store::RunStore>, ScheduleError> {
        self.rt.store().ok_or(ScheduleError::NoStore)
    }

    /// Every schedule in the store, declared and created, by id.
    pub async fn list(self) -> Result<Vec<Schedule>, ScheduleError> {
        let store = self.store()?;
        Ok(store.list_schedules().await?)
    }

    /// Deletes a created schedule; `false` when there is none with this id. Runs it already
    /// triggered stay. A declared schedule is deleted by removing it from the code (a
    /// worker of the new code then deletes it).
    pub async fn delete(self, id: &str) -> Result<bool, ScheduleError> {
        let store = self.store()?;
        Ok(store.delete_schedule(id.to_owned()).await?)
    }
}

#[cfg(not(feature = "cron"))]
impl<'a> Schedules<'a> {
    /// Creates a schedule (needs the `cron` feature).
    pub async fn create(self, schedule: NewSchedule) -> Result<Schedule, ScheduleError> {
        let _ = (schedule, self.store()?);
        Err(ScheduleError::CronDisabled)
    }
}
