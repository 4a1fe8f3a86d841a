//! Schemas of `corpus_stats`.

use task_runtime::prelude::*;

use super::generic::WordCount;

/// The documents that make up a corpus.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorpusInput {
    #[serde(flatten)]
    pub base: BaseInput,
    /// Paths of `.txt`, `.md` or `.html` files.
    #[schemars(length(min = 1))]
    pub paths: Vec<String>,
}

/// Statistics over every document of a corpus at once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorpusReport {
    pub documents: usize,
    pub total_words: usize,
    /// Distinct words across the corpus, stop words and numbers left out.
    pub vocabulary_size: usize,
    /// The ten most frequent words across the corpus, ties in alphabetical order.
    pub top_words: Vec<WordCount>,
    /// The document with the most words (the first one listed, on a tie).
    pub longest_document: DocumentSize,
}

/// A document and its length in words.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocumentSize {
    pub path: String,
    pub words: usize,
}
