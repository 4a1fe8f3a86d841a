use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NumberInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NumberOutput {
    pub value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BatchInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub values: Vec<i64>,
}

#[task(id = "double")]
pub async fn double(_ctx: &TaskContext, input: NumberInput) -> Result<NumberOutput, TaskError> {
    Ok(NumberOutput {
        value: input.value * 2,
    })
}

orchestrator! {
    pub Batch("batch")(input: BatchInput) {
        first: Double = |input: &NumberInput| input.clone(),
    }
}

fn main() {}
