use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct In {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Out {
    pub n: usize,
}

#[task(timeout = "0s")]
pub async fn count(_ctx: &TaskContext, input: In) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len(),
    })
}

fn main() {}
