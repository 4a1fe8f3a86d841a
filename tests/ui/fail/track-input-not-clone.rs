use task_runtime::prelude::*;

/// No `Clone`: mappers cannot see the track's input.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
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

track! {
    pub TrimTwice("trim_twice") {
        Trim,
        Trim = |prev, original| TextInput { base: original.base.clone(), text: prev.text },
    }
}

fn main() {}
