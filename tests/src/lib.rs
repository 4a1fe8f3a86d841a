//! Fixture tasks for the workspace integration tests.

use task_runtime::prelude::*;

/// Input of the fixture tasks: the base fields and a value.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NumberInput {
    #[serde(flatten)]
    pub base: BaseInput,
    #[schemars(range(min = 0, max = 1000))]
    pub value: i64,
}

/// Output of the fixture tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NumberOutput {
    pub value: i64,
}

/// Doubles a number.
#[task(id = "double")]
pub async fn double(_ctx: &TaskContext, input: NumberInput) -> Result<NumberOutput, TaskError> {
    Ok(NumberOutput {
        value: input.value * 2,
    })
}
