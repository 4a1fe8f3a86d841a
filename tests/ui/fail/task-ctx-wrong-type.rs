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
pub async fn by_value(_ctx: TaskContext, input: In) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len(),
    })
}

#[task]
pub async fn by_mut_ref(_ctx: &mut TaskContext, input: In) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len(),
    })
}

#[task]
pub async fn not_a_ctx(_ctx: u32, input: In) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len(),
    })
}

fn main() {}
