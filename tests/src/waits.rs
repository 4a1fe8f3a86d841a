//! Tasks that wait durably (`ctx.sleep`, `ctx.wait_for_token`), each with a `ctx.step` on
//! either side reported to a [`Probe`], so a test sees which steps executed, and how often.

use std::time::Duration;

use serde_json::Value;
use task_runtime::prelude::*;

use crate::probe::Probe;

/// Input of `sleeper`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SleepInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub probe: String,
    /// How long to sleep between the two steps.
    pub sleep_ms: u64,
}

/// What `sleeper` and `approval` return: their steps' outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Waited {
    pub before: String,
    pub after: String,
    /// The token's data (`approval`).
    pub data: Option<Value>,
    /// The wait ended with its `timeout` error, handled (`approval`).
    pub timed_out: bool,
}

async fn probed_step(ctx: &TaskContext, probe: &Probe, name: &str) -> Result<String, TaskError> {
    ctx.step(name, async {
        probe.record(format!("step {name}"));
        Ok::<_, TaskError>(format!("{name} at attempt {}", ctx.attempt()))
    })
    .await
}

/// A step, a sleep, another step.
#[task(id = "sleeper")]
pub async fn sleeper(ctx: &TaskContext, input: SleepInput) -> Result<Waited, TaskError> {
    let probe = Probe::get(&input.probe);
    let before = probed_step(ctx, &probe, "before").await?;
    ctx.sleep(Duration::from_millis(input.sleep_ms)).await?;
    let after = probed_step(ctx, &probe, "after").await?;
    Ok(Waited {
        before,
        after,
        data: None,
        timed_out: false,
    })
}

/// `sleeper`, at most one at a time across every worker of a store.
#[task(id = "limited_sleeper", concurrency = 1)]
pub async fn limited_sleeper(ctx: &TaskContext, input: SleepInput) -> Result<Waited, TaskError> {
    sleeper(ctx, input).await
}

/// Input of `approval`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub probe: String,
    /// The wait token to wait for.
    pub token: String,
    /// The wait's own timeout.
    pub timeout_ms: u64,
}

/// A step, a wait for a token (its timeout handled: `timedOut`), another step.
#[task(id = "approval")]
pub async fn approval(ctx: &TaskContext, input: ApprovalInput) -> Result<Waited, TaskError> {
    let probe = Probe::get(&input.probe);
    let before = probed_step(ctx, &probe, "before").await?;
    let timeout = Duration::from_millis(input.timeout_ms);
    let (data, timed_out) = match ctx.wait_for_token::<Value>(&input.token, timeout).await {
        Ok(data) => (Some(data), false),
        Err(error) if error.kind_name() == "timeout" => (None, true),
        Err(error) => return Err(error),
    };
    let after = probed_step(ctx, &probe, "after").await?;
    Ok(Waited {
        before,
        after,
        data,
        timed_out,
    })
}

track! {
    /// Two `sleeper`s, one after the other: a track whose steps wait.
    pub SleepTrack("sleep_track")(input: SleepInput) {
        Sleeper = |input| input.clone(),
        Sleeper = |_prev, original| original.clone(),
    }
}
