//! Schemas of the `docs_orchestrator`.

use task_runtime::prelude::*;

/// Documents to process together.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocsInput {
    #[serde(flatten)]
    pub base: BaseInput,
    /// Paths of `.txt`, `.md` or `.html` files. Each goes through `text_track`; the summaries
    /// come back in this order, each naming its path as `source`.
    #[schemars(length(min = 1))]
    pub documents: Vec<String>,
}
