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

/// A text to count.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TextInput {
    #[serde(flatten)]
    pub base: BaseInput,
    #[schemars(length(min = 1))]
    pub text: String,
}

/// Output of `length`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TextLength {
    pub chars: usize,
}

/// Counts characters.
#[task(id = "length")]
pub async fn length(_ctx: &TaskContext, input: TextInput) -> Result<TextLength, TaskError> {
    Ok(TextLength {
        chars: input.text.chars().count(),
    })
}

/// A number as the input of `double`, for mapper-less steps.
impl From<NumberOutput> for NumberInput {
    fn from(out: NumberOutput) -> Self {
        NumberInput {
            base: BaseInput::new("t", "p"),
            value: out.value,
        }
    }
}

track! {
    /// Doubles twice.
    pub QuadrupleTrack("quadruple") {
        Double,
        Double,
    }
}

track! {
    /// Measures, doubles the length, doubles again.
    pub MeasureTrack("measure") {
        Length,
        Double = |prev: TextLength, original: &TextInput| NumberInput { base: original.base.clone(), value: prev.chars as i64 },
        QuadrupleTrack,
    }
}

/// Inputs of `fan`: numbers to double.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NumbersInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub values: Vec<i64>,
}

orchestrator! {
    /// Doubles every number and measures a text.
    pub Fan("fan")(input: NumbersInput) {
        doubled: each(|input| input.values.iter().map(|v| NumberInput { base: input.base.clone(), value: *v }).collect::<Vec<_>>()) => Double, concurrency = 2,
        first: Double = |input| NumberInput { base: input.base.clone(), value: input.values[0] },
    }
}
