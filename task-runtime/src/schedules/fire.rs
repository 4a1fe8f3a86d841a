//! Creating schedules and firing the due ones: what workers do for the whole store.

use std::sync::Arc;
use std::time::SystemTime;

use super::cron::CronSchedule;
use super::{NewSchedule, Schedule, ScheduleError, ScheduledInput, Schedules};
use crate::id::RunId;
use crate::registry::TaskDescriptor;
use crate::runtime::{Runtime, TriggerOptions};
use crate::store::{RunStore, ScheduleFire, millis};

/// The input a fire of `schedule` at `slot` gives its task.
fn input_of(schedule: &Schedule, slot: SystemTime) -> ScheduledInput {
    ScheduledInput {
        schedule_id: schedule.id.clone(),
        timestamp: slot,
        last_timestamp: schedule.last_fired_at,
        timezone: schedule.timezone.clone(),
        external_id: schedule.external_id.clone(),
        tenant_id: schedule.tenant_id.clone(),
        project_id: schedule.project_id.clone(),
    }
}

/// Whether `descriptor` accepts what `schedule` would give it.
fn check_schedulable(
    descriptor: &TaskDescriptor,
    schedule: &Schedule,
) -> Result<(), ScheduleError> {
    let sample = serde_json::to_value(input_of(schedule, SystemTime::now()))
        .expect("a scheduled input serializes");
    let issues = descriptor.schemas().input_issues(&sample);
    match issues.first() {
        None => Ok(()),
        Some(issue) => Err(ScheduleError::NotSchedulable {
            task: descriptor.id.to_owned(),
            reason: format!("{}: {}", issue.path, issue.message),
        }),
    }
}

impl<'a> Schedules<'a> {
    /// Creates a schedule: from now on, a worker triggers a run of its task at each of its
    /// fire times. Refused when the task is unknown, does not take [`ScheduledInput`], or
    /// the pattern or timezone does not parse.
    pub async fn create(self, new: NewSchedule) -> Result<Schedule, ScheduleError> {
        let store = self.store()?;
        let registry = self.rt.registry();
        let Some(descriptor) = registry.get(&new.task) else {
            return Err(ScheduleError::UnknownTask {
                suggestions: registry.suggest(&new.task),
                task: new.task,
            });
        };
        let cron = CronSchedule::parse(&new.cron, &new.timezone)?;
        let now = SystemTime::now();
        let schedule = Schedule {
            id: RunId::new(now).as_str().replacen("run_", "sched_", 1),
            task: new.task,
            cron: new.cron,
            timezone: new.timezone,
            tenant_id: new.tenant_id,
            project_id: new.project_id,
            external_id: new.external_id,
            declared: false,
            next_fire_at: cron.next_after(now),
            last_fired_at: None,
            created_at: now,
        };
        check_schedulable(descriptor, &schedule)?;
        store.create_schedule(schedule.clone()).await?;
        tracing::info!(schedule_id = %schedule.id, task = %schedule.task, cron = %schedule.cron, "schedule created");
        Ok(schedule)
    }

    /// Triggers one run for every schedule due at `now` and moves each to its next fire
    /// time; the ids of the runs triggered. Workers call this as part of their upkeep
    /// (with the clock's time); any number of them may call it at once, and a slot fires
    /// once. A schedule that missed several fire times (no worker ran) fires once, for the
    /// latest of them. Schedules of tasks this binary does not know are left for a worker
    /// that knows them.
    pub async fn fire_due(self, now: SystemTime) -> Result<Vec<RunId>, ScheduleError> {
        let store = self.store()?;
        let mut fired = Vec::new();
        for schedule in store.due_schedules(now).await? {
            if let Some(id) = fire_one(self.rt, store, &schedule, now).await? {
                fired.push(id);
            }
        }
        Ok(fired)
    }

    /// Brings the schedules declared in the code (`#[task(schedule = ..)]`) into the
    /// store: new ones are added, changed ones updated, removed ones deleted.
    pub(crate) async fn sync_declared(self) -> Result<(), ScheduleError> {
        let store = self.store()?;
        let now = SystemTime::now();
        let entries = self.rt.registry().entries();
        let mut declared = Vec::new();
        for descriptor in &entries {
            let Some(spec) = descriptor.schedule else {
                continue;
            };
            let cron = CronSchedule::parse(spec.cron, spec.timezone)?;
            declared.push(Schedule {
                id: format!("declared:{}", descriptor.id),
                task: descriptor.id.to_owned(),
                cron: spec.cron.to_owned(),
                timezone: spec.timezone.to_owned(),
                tenant_id: None,
                project_id: None,
                external_id: None,
                declared: true,
                next_fire_at: cron.next_after(now),
                last_fired_at: None,
                created_at: now,
            });
        }
        let known = entries.iter().map(|d| d.id.to_owned()).collect();
        store.sync_schedules(declared, known).await?;
        Ok(())
    }
}

async fn fire_one(
    rt: &Runtime,
    store: &Arc<dyn RunStore>,
    schedule: &Schedule,
    now: SystemTime,
) -> Result<Option<RunId>, ScheduleError> {
    let Some(expected) = schedule.next_fire_at else {
        return Ok(None);
    };
    let Some(descriptor) = rt.registry().get(&schedule.task) else {
        tracing::debug!(schedule_id = %schedule.id, task = %schedule.task, "schedule of a task this binary does not have; left for another worker");
        return Ok(None);
    };
    let cron = match CronSchedule::parse(&schedule.cron, &schedule.timezone) {
        Ok(cron) => cron,
        Err(error) => {
            tracing::error!(schedule_id = %schedule.id, %error, "stored schedule does not parse; it is not fired");
            return Ok(None);
        }
    };
    // After downtime: one run, for the latest fire time missed.
    let slot = cron
        .latest_until(now)
        .filter(|slot| *slot >= expected)
        .unwrap_or(expected);
    if slot > expected {
        tracing::info!(schedule_id = %schedule.id, "fire times were missed while no worker ran; firing once, for the latest");
    }
    let next = cron.next_after(now);
    let input =
        serde_json::to_value(input_of(schedule, slot)).expect("a scheduled input serializes");
    let options =
        TriggerOptions::new().idempotency_key(format!("schedule:{}:{}", schedule.id, millis(slot)));
    let run = match Runtime::new_run(descriptor, input, &options, None) {
        Ok(run) => Some(run),
        Err(error) => {
            tracing::error!(schedule_id = %schedule.id, task = %schedule.task, error = %error.envelope.job.error.as_deref().unwrap_or_default(), "the task refused the schedule's input; this fire is skipped");
            None
        }
    };
    let fired = store
        .fire_schedule(ScheduleFire {
            id: schedule.id.clone(),
            expected,
            next,
            slot,
            run,
        })
        .await?;
    if let Some(id) = &fired {
        tracing::info!(schedule_id = %schedule.id, task = %schedule.task, run_id = %id, "schedule fired");
    }
    Ok(fired)
}
