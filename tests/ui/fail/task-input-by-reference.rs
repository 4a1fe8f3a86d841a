use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RenderInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub template: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Rendered {
    pub html: String,
}

// Only the `&` is reported; rustc's "missing lifetime" and `&&RenderInput` never show.
#[task]
pub async fn render(_ctx: &TaskContext, input: &RenderInput) -> Result<Rendered, TaskError> {
    Ok(Rendered {
        html: input.template.clone(),
    })
}

fn main() {
    // The fn and its handle are still there.
    let _ = (render, Render);
}
