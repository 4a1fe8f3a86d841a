//! Scheduled fixtures: each gives back the input its schedule fired it with.

use task_runtime::prelude::*;

/// For schedules created at run time (`rt.schedules().create(..)`).
#[task(id = "on_schedule")]
pub async fn on_schedule(
    _ctx: &TaskContext,
    input: ScheduledInput,
) -> Result<ScheduledInput, TaskError> {
    Ok(input)
}

/// Declared on the task: midnight on New Year's Day in Paris (so it never fires in the
/// middle of another test; tests fire it with a controlled clock).
#[task(
    id = "new_year",
    schedule(cron = "0 0 1 1 *", timezone = "Europe/Paris")
)]
pub async fn new_year(
    _ctx: &TaskContext,
    input: ScheduledInput,
) -> Result<ScheduledInput, TaskError> {
    Ok(input)
}
