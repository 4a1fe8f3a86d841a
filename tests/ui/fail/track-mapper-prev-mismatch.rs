use task_runtime::prelude::*;

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

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CountInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CountOutput {
    pub words: usize,
}

#[task(id = "extract")]
pub async fn extract(_ctx: &TaskContext, input: TextInput) -> Result<TextOutput, TaskError> {
    Ok(TextOutput { text: input.text })
}

#[task(id = "count_words")]
pub async fn count_words(_ctx: &TaskContext, input: CountInput) -> Result<CountOutput, TaskError> {
    Ok(CountOutput {
        words: input.text.split_whitespace().count(),
    })
}

track! {
    pub TextTrack("text_track") {
        Extract,
        CountWords = |prev: CountOutput, original: &TextInput| CountInput { base: original.base.clone(), text: prev.words.to_string() },
    }
}

fn main() {}
