use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OrderInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TextInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TextOutput {
    pub text: String,
}

#[task(id = "trim")]
pub async fn trim(_ctx: &TaskContext, input: TextInput) -> Result<TextOutput, TaskError> {
    Ok(TextOutput {
        text: input.text.trim().to_owned(),
    })
}

// The first mapper's `input` is a reference to the track's declared input, not the step's.
track! {
    pub OrderText("order_text")(input: OrderInput) {
        Trim = |input: &TextInput| input.clone(),
    }
}

fn main() {}
