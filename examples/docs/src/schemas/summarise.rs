//! Schemas of `summarise`.

use task_runtime::prelude::*;

use super::count_words::WordCounts;
use super::generic::WordCount;

/// Text to summarise.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummariseInput {
    #[serde(flatten)]
    pub base: BaseInput,
    #[schemars(length(min = 1))]
    pub text: String,
    /// How many sentences the summary keeps at most.
    #[serde(default = "default_max_sentences")]
    #[schemars(range(min = 1, max = 20))]
    pub max_sentences: u32,
    /// Where the text came from; echoed in the summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The summary length when the input does not say.
pub const DEFAULT_MAX_SENTENCES: u32 = 3;

fn default_max_sentences() -> u32 {
    DEFAULT_MAX_SENTENCES
}

// Lets `summarise` follow `count_words` in a track without a mapper.
impl From<WordCounts> for SummariseInput {
    fn from(counts: WordCounts) -> Self {
        SummariseInput {
            base: counts.base,
            text: counts.text,
            max_sentences: DEFAULT_MAX_SENTENCES,
            source: counts.source,
        }
    }
}

/// An extractive summary: the highest-scoring sentences of the text, in their original
/// order, with the figures a reader wants next to them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The chosen sentences, in the order they appear in the text.
    pub sentences: Vec<String>,
    /// Sentences in the whole text, to show how much was left out.
    pub total_sentences: usize,
    pub words: usize,
    /// The ten most frequent words, stop words left out, ties in alphabetical order.
    pub top_words: Vec<WordCount>,
}
