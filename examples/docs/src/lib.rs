//! `docs-pipeline`: extract, count and summarise local documents.
//!
//! Laid out like the seed's task system: `schemas` holds the input and output types
//! (`schemas::generic` first, then one module per task), `tasks` the single units of work,
//! `tracks` the sequences and `orchestrators` the parallel fan-outs. Every `*_shell` module is
//! a template to copy; they are compiled only under `cfg(test)` so they stay type-checked
//! without being registered in the binary.
//!
//! The text helpers shared by several tasks (tokenizer, sentence splitter, stop words) live in
//! [`text`], so every task counts words the same way.

pub mod orchestrators;
pub mod schemas;
pub mod tasks;
pub mod text;
pub mod tracks;
