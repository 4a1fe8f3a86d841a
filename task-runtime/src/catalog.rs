//! What callers are told about the registered tasks: the listing (`list --json`,
//! `GET /api/v1/tasks`) and one task's schemas (`schema <id>`, `GET /api/v1/tasks/{id}/schema`).
//! One shape for the CLI and the API.

use serde::Serialize;
use serde_json::Value;

use crate::registry::{BranchInfo, TaskDescriptor};
use crate::task::Kind;

/// One registered task, track or orchestrator as listed.
#[derive(Debug, Serialize)]
pub(crate) struct ListEntry<'a> {
    id: &'a str,
    kind: Kind,
    description: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    steps: &'a [&'a str],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    branches: &'a [BranchInfo],
}

/// The listing of `entries`, in their order.
pub(crate) fn list<'a>(entries: &[&'a TaskDescriptor]) -> Vec<ListEntry<'a>> {
    entries
        .iter()
        .map(|descriptor| ListEntry {
            id: descriptor.id,
            kind: descriptor.kind,
            description: descriptor.description.trim(),
            steps: descriptor.steps,
            branches: descriptor.branches,
        })
        .collect()
}

/// One task's schemas (a struct, so the keys keep this order).
#[derive(Debug, Serialize)]
pub(crate) struct SchemaDocument<'a> {
    id: &'a str,
    kind: Kind,
    description: &'a str,
    input: &'a Value,
    output: &'a Value,
}

/// The schema document of `descriptor`.
pub(crate) fn schema(descriptor: &TaskDescriptor) -> SchemaDocument<'_> {
    let schemas = descriptor.schemas();
    SchemaDocument {
        id: descriptor.id,
        kind: descriptor.kind,
        description: descriptor.description.trim(),
        input: &schemas.input,
        output: &schemas.output,
    }
}
