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
//! words, sentences and paragraphs.

pub mod markup;
pub mod orchestrators;
pub mod schemas;
pub mod tasks;
pub mod text;
pub mod tracks;
