use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct In {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Out {
    pub n: usize,
}

#[task]
pub async fn returns_nothing(_ctx: &TaskContext, input: In) {
    let _ = input;
}

fn main() {}
