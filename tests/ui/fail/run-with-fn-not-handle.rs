use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Invoice {
    pub total: u64,
}

#[task]
pub async fn parse_invoice(_ctx: &TaskContext, input: InvoiceInput) -> Result<Invoice, TaskError> {
    Ok(Invoice {
        total: input.text.len() as u64,
    })
}

// The fn where its handle `ParseInvoice` belongs. `Runtime::run` reports the unmet `Task`
// bound at the argument, at the call and at `.await` (its signature names `T::Output`); the
// message names the handle convention each time.
async fn run(rt: &Runtime, input: InvoiceInput) {
    let _ = rt.run(parse_invoice, input).await;
}

fn main() {
    let _ = run;
}
