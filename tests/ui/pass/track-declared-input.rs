//! Tracks that declare their own input, `(input: TrackInput)`: a first-step mapper from
//! `&TrackInput`, or `Into`; later mappers see the declared input as `original`.
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

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CountOutput {
    pub words: usize,
}

impl From<OrderInput> for TextInput {
    fn from(order: OrderInput) -> Self {
        TextInput {
            base: order.base,
            text: order.lines.join(" "),
        }
    }
}

#[task(id = "trim")]
pub async fn trim(_ctx: &TaskContext, input: TextInput) -> Result<TextOutput, TaskError> {
    Ok(TextOutput {
        text: input.text.trim().to_owned(),
    })
}

#[task(id = "count_words")]
pub async fn count_words(_ctx: &TaskContext, input: TextInput) -> Result<CountOutput, TaskError> {
    Ok(CountOutput {
        words: input.text.split_whitespace().count(),
    })
}

track! {
    /// The first step maps the order; the next one sees it as `original`.
    pub OrderWords("order_words")(input: OrderInput) {
        Trim = |input| TextInput { base: input.base.clone(), text: input.lines.join(" ") },
        CountWords = |prev, original| TextInput { base: original.base.clone(), text: format!("{} {}", prev.text, original.lines.len()) },
    }
}

track! {
    /// Every type declared, the first mapper's return type too.
    pub OrderWordsDeclared("order_words_declared", retry(max_attempts = 2))(input: OrderInput) {
        Trim = |input: &OrderInput| -> TextInput { TextInput { base: input.base.clone(), text: input.lines.concat() } },
        CountWords = |prev: TextOutput, original: &OrderInput| -> TextInput {
            TextInput { base: original.base.clone(), text: prev.text }
        },
    }
}

track! {
    /// No first mapper: the declared input converts with `Into`, a clone kept for `original`.
    pub OrderConverted("order_converted")(input: OrderInput) {
        Trim,
        CountWords = |prev, original: &OrderInput| TextInput { base: original.base.clone(), text: prev.text },
    }
}

track! {
    /// A single step fed through `Into`; the input need not be `Clone` here.
    pub OrderSingle("order_single")(order: OrderInput) {
        CountWords,
    }
}

orchestrator! {
    /// Declared-input tracks nest like any task.
    pub Orders("orders")(input: OrderInput) {
        words: OrderWords,
        single: OrderSingle = |input| input.clone(),
    }
}

fn main() {
    fn types_of<T: Task>() -> std::marker::PhantomData<(T::Input, T::Output)> {
        std::marker::PhantomData
    }
    let _: std::marker::PhantomData<(OrderInput, CountOutput)> = types_of::<OrderWords>();
    let _: std::marker::PhantomData<(OrderInput, CountOutput)> = types_of::<OrderWordsDeclared>();
    let _: std::marker::PhantomData<(OrderInput, CountOutput)> = types_of::<OrderConverted>();
    let _: std::marker::PhantomData<(OrderInput, CountOutput)> = types_of::<OrderSingle>();
    let _ = OrdersOutput {
        words: CountOutput { words: 1 },
        single: CountOutput { words: 2 },
    };
}
