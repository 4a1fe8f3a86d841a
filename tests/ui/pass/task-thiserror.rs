use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ParseInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ParseOutput {
    pub value: i64,
}

/// The user's own error type.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a number: {0}")]
    NotANumber(#[from] std::num::ParseIntError),
    #[error("empty text")]
    Empty,
}

#[task(id = "parse_number")]
pub async fn parse_number(
    _ctx: &TaskContext,
    input: ParseInput,
) -> Result<ParseOutput, ParseError> {
    if input.text.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(ParseOutput {
        value: input.text.trim().parse()?,
    })
}

fn main() {
    assert_eq!(<ParseNumber as Task>::ID, "parse_number");
}
