//! The README's "Creating a task" example, verbatim below this paragraph (tests/readme.rs
//! checks it), in a crate whose dependencies are the quickstart's.

use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtractInput {
    #[serde(flatten)]
    pub base: BaseInput, // tenantId, projectId (required, non-empty), userId?, trampData?, cleanup?
    #[schemars(length(min = 1))] // refinements are validated at run time, typed calls included
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TextOutput {
    pub path: String,
    pub text: String,
}

/// Your own error type: its message, source chain and type name reach the run envelope.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("cannot read '{path}'")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Extract the plain text of a local file.
#[task(id = "extract_text", retry(max_attempts = 3), timeout = "30s")]
pub async fn extract_text(
    _ctx: &TaskContext,
    input: ExtractInput,
) -> Result<TextOutput, ExtractError> {
    tracing::info!(path = %input.path, "reading");
    let text = tokio::fs::read_to_string(&input.path)
        .await
        .map_err(|source| ExtractError::Read {
            path: input.path.clone(),
            source,
        })?;
    Ok(TextOutput {
        path: input.path,
        text,
    })
}
