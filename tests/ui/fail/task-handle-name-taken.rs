use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct In {
    pub text: String,
}

/// Named like the task's handle (`UpperCamelCase` of the fn name).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Count {
    pub n: usize,
}

#[task]
pub async fn count(_ctx: &TaskContext, input: In) -> Result<Count, TaskError> {
    Ok(Count {
        n: input.text.len(),
    })
}

fn main() {}
