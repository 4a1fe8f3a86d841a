//! Template: the schema pair of a new task. Copy this file to `schemas/<your_task>.rs`, add
//! `pub mod <your_task>;` to `schemas/mod.rs` and rename the types.
//!
//! Compiled only under `cfg(test)`, so it stays type-checked without shipping.

use task_runtime::prelude::*;

/// The input of the task. The doc comments of the fields end up in the JSON Schema that
/// `docs-pipeline schema <id>` prints, so write them for the caller.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShellInput {
    /// tenantId, projectId, userId?, trampData?, cleanup?: every input carries them.
    #[serde(flatten)]
    pub base: BaseInput,
    /// Refinements such as `length`, `range` or `regex` are checked at run time, at every
    /// boundary, typed calls included; the Rust type alone cannot say "non-empty".
    #[schemars(length(min = 1))]
    pub message: String,
    /// Optional fields take a serde default, so callers may leave them out.
    #[serde(default = "default_repeat")]
    #[schemars(range(min = 1, max = 5))]
    pub repeat: u32,
}

fn default_repeat() -> u32 {
    1
}

/// The output of the task. Outputs are validated too, so a broken promise here (say a
/// `length(min = 1)` list coming back empty) fails the run instead of reaching the caller.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShellOutput {
    pub echoed: String,
}
