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

// The first mapper takes `|input|`, later ones `|prev, original|`: both mistakes reported.
track! {
    pub OrderText("order_text")(input: OrderInput) {
        Trim = |prev, original| TextInput { base: original.base.clone(), text: prev.lines.concat() },
        Trim = |prev| TextInput { base: BaseInput::new("t", "p"), text: prev.text },
    }
}

fn main() {
    let _ = OrderText;
}
