//! The single units of work. Each module holds one `#[task]` fn; its doc comment is the
//! description `docs-pipeline list` shows. Copy `task_shell.rs` to start a new one.

pub mod corpus_stats;
pub mod count_words;
pub mod extract_text;
pub mod summarise;

#[cfg(test)]
pub mod task_shell;

pub use corpus_stats::{CorpusStats, corpus_stats};
pub use count_words::{CountWords, count_words};
pub use extract_text::{ExtractError, ExtractText, extract_text};
pub use summarise::{Summarise, summarise};
