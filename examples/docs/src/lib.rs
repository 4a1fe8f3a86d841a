//! `docs-pipeline`: extract, count and summarise local documents.
//!
//! Laid out like the seed's task system: `schemas` holds the input and output types
//! (`schemas::generic` first, then one module per task), `tasks` the single units of work,
//! `tracks` the sequences and `orchestrators` the parallel fan-outs. Every `*_shell` module is
//! a template to copy; they are compiled only under `cfg(test)` so they stay type-checked
//! without being registered in the binary.
//!
//! The helpers several tasks share live outside the task modules, so there is one way to do
//! each thing: [`markup`] turns Markdown and HTML into plain text, [`text`] splits text into
//! words, sentences and paragraphs, [`documents`] keeps every file path from an input under
//! the documents root (`DOCS_ROOT`, or the working directory).

pub mod documents;
pub mod markup;
pub mod orchestrators;
pub mod schemas;
pub mod tasks;
pub mod text;
pub mod tracks;

use task_runtime::{HookEvent, Runtime, RuntimeBuilder};

/// The runtime the binary runs on: at most 8 tasks at once, and every failed run (after its
/// retries) reported by [`alert`].
pub fn runtime() -> RuntimeBuilder {
    Runtime::builder().max_concurrency(8).on_failure(alert)
}

/// Where an on-call system would be paged: one structured warning per failed run, with the
/// run, the task and the error's kind and sentence.
pub async fn alert(event: &HookEvent) {
    let (kind, error) = match &event.error {
        Some(error) => (error.kind_name(), error.to_string()),
        None => ("unknown", String::new()),
    };
    tracing::warn!(
        run_id = %event.run_id,
        task = event.task_name,
        kind,
        error,
        attempts = event.attempts,
        "alert: run failed"
    );
}
