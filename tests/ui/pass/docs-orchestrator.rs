//! The example of `task-macros/docs/orchestrator.md` (the rustdoc of `orchestrator`), verbatim: the
//! `docs_examples_compile` test in tests/ui.rs keeps the two in step.

use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Number {
    #[serde(flatten)]
    pub base: BaseInput,
    pub value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Doubled {
    pub value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Batch {
    #[serde(flatten)]
    pub base: BaseInput,
    pub lead: i64,
    pub values: Vec<i64>,
}

#[task(id = "double")]
pub async fn double(_ctx: &TaskContext, input: Number) -> Result<Doubled, TaskError> {
    Ok(Doubled {
        value: input.value * 2,
    })
}

orchestrator! {
    /// Doubles a lead value beside every value of the batch, four at a time.
    pub DoubleAll("double_all", failure = settle)(input: Batch) {
        lead: Double = |input| Number { base: input.base.clone(), value: input.lead },
        all: each(|input| input.values.iter().map(|v| Number { base: input.base.clone(), value: *v }).collect::<Vec<_>>()) => Double, concurrency = 4,
    }
}

// Generated: pub struct DoubleAllOutput { pub lead: Outcome<Doubled>, pub all: Vec<Outcome<Doubled>> }
fn leads(out: &DoubleAllOutput) -> Option<i64> {
    match &out.lead {
        Outcome::Ok(doubled) => Some(doubled.value),
        Outcome::Error(_) => None,
    }
}

fn main() {
    let out = DoubleAllOutput {
        lead: Outcome::Ok(Doubled { value: 2 }),
        all: vec![],
    };
    assert_eq!(leads(&out), Some(2));
}
