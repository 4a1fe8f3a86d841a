//! The runtime side of `track!`: each step is a child run recorded in `metadata.steps`.

use crate::context::TaskContext;
use crate::envelope::StepRecord;
use crate::error::TaskError;
use crate::task::Task;

/// Runs step `index` of the track running in `ctx` as a child run, records it, and names
/// the step in its error.
pub async fn step<T: Task>(
    ctx: &TaskContext,
    index: usize,
    input: T::Input,
) -> Result<T::Output, TaskError> {
    let position = ctx.journaled().then(|| format!("step:{index}"));
    let mut finished = ctx.run_child::<T>(input, position).await;
    let report = &finished.report;
    ctx.push_step(StepRecord {
        task_name: T::ID.to_owned(),
        run_id: finished.run_id.clone(),
        success: finished.result.is_ok(),
        duration_ms: report.duration_ms,
        attempts: report.attempts,
        replayed: finished.replayed,
        steps: std::mem::take(&mut finished.report.records.steps),
    });
    let run_id = finished.run_id.clone();
    finished
        .into_typed()
        .map_err(|error| error.in_step(index, T::ID, run_id.as_str()))
}
