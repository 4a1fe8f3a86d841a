use task_runtime::prelude::*;

/// No `JsonSchema`: it cannot be a track's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

// Reported once, at the declared type; the orchestrator's input is checked the same way.
track! {
    pub OrderText("order_text")(input: OrderInput) {
        Trim = |input| TextInput { base: input.base.clone(), text: input.lines.concat() },
    }
}

orchestrator! {
    pub Orders("orders")(input: OrderInput) {
        text: OrderText,
    }
}

fn main() {}
