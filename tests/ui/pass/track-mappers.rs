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

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReportInput {
    pub words: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReportLine {
    pub line: String,
}

/// No mapper needed between `count_words` and `report`.
impl From<CountOutput> for ReportInput {
    fn from(out: CountOutput) -> Self {
        ReportInput { words: out.words }
    }
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

#[task(id = "report")]
pub async fn report(_ctx: &TaskContext, input: ReportInput) -> Result<ReportLine, TaskError> {
    Ok(ReportLine {
        line: format!("{} words", input.words),
    })
}

track! {
    /// Annotated mapper, then a step converted with `From`.
    pub AnnotatedTrack("annotated_track") {
        Extract,
        CountWords = |prev: TextOutput, original: &TextInput| CountInput { base: original.base.clone(), text: prev.text },
        Report,
    }
}

track! {
    /// The same, with the mapper's argument types inferred.
    pub InferredTrack("inferred_track", retry(max_attempts = 2), timeout = "1m") {
        Extract,
        CountWords = |prev, original| CountInput { base: original.base.clone(), text: prev.text },
        Report,
    }
}

track! {
    /// A single step, and a nested track as a step.
    pub WrapperTrack("wrapper_track") {
        AnnotatedTrack,
    }
}

track! {
    /// Every type declared, the return type too.
    pub DeclaredTrack("declared_track") {
        Extract,
        CountWords = |prev: TextOutput, original: &TextInput| -> CountInput {
            CountInput { base: original.base.clone(), text: prev.text }
        },
        Report,
    }
}

track! {
    pub NestedTrack("nested_track") {
        Extract,
        InferredTrack = |prev, original| TextInput { base: original.base.clone(), text: prev.text },
    }
}

fn main() {
    fn output_of<T: Task>() -> std::marker::PhantomData<(T::Input, T::Output)> {
        std::marker::PhantomData
    }
    let _: std::marker::PhantomData<(TextInput, ReportLine)> = output_of::<AnnotatedTrack>();
    let _: std::marker::PhantomData<(TextInput, ReportLine)> = output_of::<InferredTrack>();
    let _: std::marker::PhantomData<(TextInput, ReportLine)> = output_of::<WrapperTrack>();
    let _: std::marker::PhantomData<(TextInput, ReportLine)> = output_of::<NestedTrack>();
    let _: std::marker::PhantomData<(TextInput, ReportLine)> = output_of::<DeclaredTrack>();
}
