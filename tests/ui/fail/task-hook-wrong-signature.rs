use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct In {
    pub n: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Out {
    pub n: u32,
}

// A hook takes the finished run's `&HookEvent`, not the task's output.
async fn notify(output: &Out) {
    let _ = output.n;
}

#[task(on_success = notify)]
pub async fn count(_ctx: &TaskContext, input: In) -> Result<Out, TaskError> {
    Ok(Out { n: input.n })
}

fn main() {}
