use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Out {
    pub n: usize,
}

#[task(schedule = "0 */6 * * *")]
pub async fn report(_ctx: &TaskContext, input: BaseInput) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.tenant_id.len(),
    })
}

fn main() {}
