//! `BaseInput`: the fields every task input shares (the seed's "Task Input Structure").
//! Flatten it into your input type with `#[serde(flatten)] pub base: BaseInput`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Tenant and project (required, non-empty), optional user, the caller's `trampData`
/// (echoed in the envelope) and `cleanup` options (readable by cleanup code through
/// `ctx.cleanup_options()`).
///
/// ```
/// # use task_runtime::prelude::*;
/// #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
/// #[serde(rename_all = "camelCase")]
/// pub struct ResizeInput {
///     #[serde(flatten)]
///     pub base: BaseInput,
///     pub width: u32,
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseInput {
    #[schemars(length(min = 1))]
    pub tenant_id: String,
    #[schemars(length(min = 1))]
    pub project_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Anything the caller wants back in the envelope, untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tramp_data: Option<Map<String, Value>>,
    /// Options for the task's cleanup (e.g. `{ "keepTemp": true }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Map<String, Value>>,
}

impl BaseInput {
    /// A base with tenant and project set.
    pub fn new(tenant_id: impl Into<String>, project_id: impl Into<String>) -> Self {
        BaseInput {
            tenant_id: tenant_id.into(),
            project_id: project_id.into(),
            ..BaseInput::default()
        }
    }
}
