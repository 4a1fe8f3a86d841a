use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct In {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Out {
    pub n: usize,
}

// Both typos are reported, each with the key it was probably meant to be.
#[task(retries(max_attempts = 3), timeout = "1s")]
pub async fn count(_ctx: &TaskContext, input: In) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len(),
    })
}

#[task(retry(max_attempt = 3))]
pub async fn measure(_ctx: &TaskContext, input: In) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len(),
    })
}

fn main() {
    // The handles are still emitted next to the errors.
    let _ = (Count, Measure);
}
