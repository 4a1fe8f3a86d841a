//! The example of `task-macros/docs/track.md` (the rustdoc of `track`), verbatim: the
//! `docs_examples_compile` test in tests/ui.rs keeps the two in step.

use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TextInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Words {
    pub words: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WordCount {
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Order {
    #[serde(flatten)]
    pub base: BaseInput,
    pub lines: Vec<String>,
}

#[task(id = "split")]
pub async fn split(_ctx: &TaskContext, input: TextInput) -> Result<Words, TaskError> {
    let words = input.text.split_whitespace().map(str::to_owned).collect();
    Ok(Words { words })
}

#[task(id = "count")]
pub async fn count(_ctx: &TaskContext, input: Words) -> Result<WordCount, TaskError> {
    Ok(WordCount {
        count: input.words.len(),
    })
}

track! {
    /// Splits a text, then counts its words (`Words` flows into `count` as it is).
    pub SplitCount("split_count", timeout = "10s") {
        Split,
        Count,
    }
}

track! {
    /// The same over an order's lines: the track declares its own input.
    pub OrderCount("order_count")(input: Order) {
        Split = |input| TextInput { base: input.base.clone(), text: input.lines.join(" ") },
        Count = |prev, original| Words { words: [prev.words, original.lines.clone()].concat() },
    }
}

fn main() {
    fn types_of<T: Task>() -> std::marker::PhantomData<(T::Input, T::Output)> {
        std::marker::PhantomData
    }
    let _: std::marker::PhantomData<(TextInput, WordCount)> = types_of::<SplitCount>();
    let _: std::marker::PhantomData<(Order, WordCount)> = types_of::<OrderCount>();
}
