use task_runtime::HookEvent;
use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct In {
    pub n: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Out {
    pub n: u32,
}

// A per-task hook borrows the event: `event: &HookEvent`.
async fn notify(event: HookEvent) {
    let _ = event.run_id;
}

#[task(on_success = notify)]
pub async fn count(_ctx: &TaskContext, input: In) -> Result<Out, TaskError> {
    Ok(Out { n: input.n })
}

fn main() {}
