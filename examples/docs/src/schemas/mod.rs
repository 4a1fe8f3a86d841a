//! Input and output types, one module per task (the seed's `schemas/<task>`), with the
//! shared pieces in [`generic`]. Check `generic` before adding a type: if two tasks need it,
//! it belongs there.

pub mod corpus_stats;
pub mod count_words;
pub mod docs;
pub mod extract_text;
pub mod generic;
pub mod summarise;

#[cfg(test)]
pub mod task_shell;
