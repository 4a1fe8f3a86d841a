//! The runtime side of `track!`: each step is a child run recorded in `metadata.steps`, and
//! the helpers whose signatures make the compiler check mappers and step conversions.

use crate::context::TaskContext;
use crate::envelope::{RunOutput, StepRecord};
use crate::error::TaskError;
use crate::task::Task;

/// Runs step `index` of the track running in `ctx` as a child run, records it, and names
/// the step in its error.
pub async fn step<T: Task>(
    ctx: &TaskContext,
    index: usize,
    input: T::Input,
) -> Result<T::Output, TaskError> {
    let RunOutput {
        job,
        results,
        metadata,
        ..
    } = ctx.run_child::<T>(input).await;
    ctx.push_step(StepRecord {
        task_name: T::ID.to_owned(),
        run_id: job.run_id.clone(),
        success: job.success,
        duration_ms: metadata.duration_ms,
        attempts: metadata.attempts,
        steps: metadata.steps,
    });
    match (results, job.error_detail) {
        (Some(output), None) => Ok(output),
        (_, Some(error)) => Err(error.in_step(index, T::ID, &job.run_id)),
        (None, None) => {
            Err(TaskError::failed("step produced no output").in_step(index, T::ID, &job.run_id))
        }
    }
}

/// How a step's output becomes the next step's input when the track gives no mapper.
#[diagnostic::on_unimplemented(
    message = "the previous step's output `{Self}` does not convert into this step's input `{Next}`",
    label = "add a mapper here: `Step = |prev, original| ...` returning `{Next}`",
    note = "a step without a mapper receives the previous step's output, which must implement `Into<{Next}>`"
)]
pub trait FlowsInto<Next> {
    fn flow_into(self) -> Next;
}

impl<Prev: Into<Next>, Next> FlowsInto<Next> for Prev {
    fn flow_into(self) -> Next {
        self.into()
    }
}

/// Converts step `Prev`'s output into step `Next`'s input (no mapper given).
pub fn flow<Prev: Task, Next: Task>(output: Prev::Output) -> Next::Input
where
    Prev::Output: FlowsInto<Next::Input>,
{
    output.flow_into()
}

/// Checks a step mapper's signature: `(Prev::Output, &TrackInput) -> Next::Input`.
pub fn mapper<Prev: Task, Next: Task, TrackInput, F>(mapper: F) -> F
where
    F: FnOnce(Prev::Output, &TrackInput) -> Next::Input,
{
    mapper
}

/// Checks that a step names a task handle.
pub const fn is_task<T: Task>() {}
