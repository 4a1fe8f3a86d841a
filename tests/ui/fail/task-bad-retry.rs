use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct In {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Out {
    pub n: usize,
}

/// Every mistake in `retry(..)` is reported, each at its tokens.
#[task(retry(
    max_attempts = 0,
    factor = 0.5,
    backoff = "linear",
    min_delay = "10s",
    max_delay = "1s"
))]
pub async fn count(_ctx: &TaskContext, input: In) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len(),
    })
}

fn main() {}
