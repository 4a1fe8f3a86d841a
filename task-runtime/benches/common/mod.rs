//! Tasks and inputs shared by the bench binaries. `inventory` registers the handles in
//! each binary that includes this module.

// Each bench binary uses a different subset of these items.
#![allow(dead_code)]

use std::sync::Arc;

use serde_json::{Value, json};
use task_runtime::prelude::*;
use tokio::task::JoinSet;

/// Input of the no-op task: the base fields plus two small fields.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NoopInput {
    #[serde(flatten)]
    pub base: BaseInput,
    #[schemars(range(min = 0, max = 1_000_000))]
    pub value: i64,
    #[schemars(length(min = 1))]
    pub label: String,
}

/// Output of the no-op task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NoopOutput {
    pub value: i64,
}

/// Does nothing: echoes the value.
#[task(id = "noop")]
pub async fn noop(_ctx: &TaskContext, input: NoopInput) -> Result<NoopOutput, TaskError> {
    Ok(NoopOutput { value: input.value })
}

/// Input of the fan-out orchestrator: how many items to run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FanInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub count: u32,
}

/// The input of fan-out item `i`; the orchestrator and the raw `JoinSet` build the same.
pub fn item(base: &BaseInput, i: u32) -> NoopInput {
    NoopInput {
        base: base.clone(),
        value: i64::from(i),
        label: "item".to_owned(),
    }
}

orchestrator! {
    /// Runs the no-op task once per item, in the runtime's default fan-out window.
    pub FanOut("fan_out")(input: FanInput) {
        items: each(|input| (0..input.count).map(|i| item(&input.base, i)).collect::<Vec<_>>()) => Noop,
    }
}

/// Items in the fan-out benchmarks.
pub const FAN_OUT_ITEMS: u32 = 100_000;

/// The orchestrator's input for `count` items.
pub fn fan_input(count: u32) -> FanInput {
    FanInput {
        base: BaseInput::new("tenant-0001", "project-0001"),
        count,
    }
}

/// The baseline: one tokio task per item calling `noop` directly, all spawned at once, joined
/// into a `Vec` in item order (what the orchestrator returns).
pub async fn raw_fan_out(ctx: Arc<TaskContext>, count: u32) -> Vec<NoopOutput> {
    let base = BaseInput::new("tenant-0001", "project-0001");
    let mut set = JoinSet::new();
    for i in 0..count {
        let (ctx, input) = (ctx.clone(), item(&base, i));
        set.spawn(async move { (i, noop(&ctx, input).await) });
    }
    let mut results: Vec<Option<NoopOutput>> = vec![None; count as usize];
    while let Some(joined) = set.join_next().await {
        let (i, output) = joined.expect("no-op tasks do not panic");
        results[i as usize] = Some(output.expect("no-op tasks do not fail"));
    }
    results
        .into_iter()
        .map(|output| output.expect("every item joined"))
        .collect()
}

/// The ~200-byte JSON payload of the `trigger_and_wait` benchmark.
pub fn payload() -> Value {
    json!({
        "tenantId": "tenant-0001",
        "projectId": "project-0001",
        "userId": "user-0001",
        "trampData": { "requestId": "req-7f3a9c2e-41d8", "source": "benchmark", "attempt": 1 },
        "value": 42,
        "label": "a small label carried by the no-op task",
    })
}

/// The same payload as a typed input.
pub fn typed_payload() -> NoopInput {
    serde_json::from_value(payload()).expect("the payload matches NoopInput")
}

/// A tokio runtime like the one the targets assume: multi-thread, 2 workers.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
