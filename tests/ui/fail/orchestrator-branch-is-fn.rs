use task_runtime::prelude::*;

mod tasks {
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

    #[task(id = "parse_invoice")]
    pub async fn parse_invoice(
        _ctx: &TaskContext,
        input: InvoiceInput,
    ) -> Result<Invoice, TaskError> {
        Ok(Invoice {
            total: input.text.len() as u64,
        })
    }
}

use tasks::{InvoiceInput, parse_invoice};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Batch {
    #[serde(flatten)]
    pub base: BaseInput,
    pub first: InvoiceInput,
    pub all: Vec<InvoiceInput>,
}

// Both fn names are reported, each with the handle to write instead.
orchestrator! {
    pub Invoices("invoices")(input: Batch) {
        first: parse_invoice = |input| input.first.clone(),
        all: each(|input| input.all.clone()) => tasks::parse_invoice,
    }
}

fn main() {
    let _ = parse_invoice;
    let _ = Invoices;
}
