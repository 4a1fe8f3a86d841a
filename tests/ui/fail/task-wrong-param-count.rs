use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct In {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Out {
    pub n: usize,
}

#[task]
pub async fn no_params() -> Result<Out, TaskError> {
    Ok(Out { n: 0 })
}

#[task]
pub async fn only_input(input: In) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len(),
    })
}

#[task]
pub async fn three_params(_ctx: &TaskContext, input: In, extra: u32) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len() + extra as usize,
    })
}

fn main() {}
