use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NumberInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NumberOutput {
    pub value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BatchInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub values: Vec<i64>,
}

#[task(id = "negate")]
pub async fn negate(_ctx: &TaskContext, input: NumberInput) -> Result<NumberOutput, TaskError> {
    Ok(NumberOutput {
        value: -input.value,
    })
}

track! {
    pub NegateTwice("negate_twice") {
        Negate,
        Negate = |prev, original| NumberInput { base: original.base.clone(), value: prev.value },
    }
}

orchestrator! {
    /// Every branch runs to its end; each field is an `Outcome`.
    pub Batch("batch", failure = settle, timeout = "1m")(input: BatchInput) {
        first: Negate = |input| NumberInput { base: input.base.clone(), value: input.values[0] },
        twice: NegateTwice = |input: &BatchInput| NumberInput { base: input.base.clone(), value: 1 },
        all: each(|input| input.values.iter().map(|v| NumberInput { base: input.base.clone(), value: *v }).collect::<Vec<_>>()) => Negate, concurrency = 4,
    }
}

orchestrator! {
    /// Fail-fast (the default), `each` over an expression, and a branch without a mapper.
    pub FailFast("fail_fast_batch")(input: NumberInput) {
        same: Negate,
        many: each(vec![input.clone(), input.clone()]) => Negate,
        declared: Negate = |input: &NumberInput| -> NumberInput { input.clone() },
        each_declared: each(|input: &NumberInput| [input.clone()]) => NegateTwice, concurrency = 1,
    }
}

fn main() {
    let out = BatchOutput {
        first: Outcome::Ok(NumberOutput { value: 1 }),
        twice: Outcome::Ok(NumberOutput { value: 1 }),
        all: vec![Outcome::Ok(NumberOutput { value: 2 })],
    };
    let _: Option<Outcome<NumberOutput>> = Some(out.first);
    let out = FailFastOutput {
        same: NumberOutput { value: 1 },
        many: vec![NumberOutput { value: 2 }],
        declared: NumberOutput { value: 3 },
        each_declared: vec![NumberOutput { value: 4 }],
    };
    let _ = out;
    let _ = <Batch as Task>::ID;
    let _ = <FailFast as Task>::ID;
}
