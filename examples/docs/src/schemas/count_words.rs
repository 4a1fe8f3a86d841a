//! Schemas of `count_words`.

use task_runtime::prelude::*;

use super::generic::WordCount;

/// Text to count.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CountInput {
    #[serde(flatten)]
    pub base: BaseInput,
    #[schemars(length(min = 1))]
    pub text: String,
    /// Where the text came from (e.g. its path); echoed in the output so results stay
    /// identifiable when many documents go through at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Counts over a text. Carries the text, its source and the base forward, so the result
/// converts straight into the next step's input (see `From<WordCounts> for SummariseInput`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WordCounts {
    #[serde(flatten)]
    pub base: BaseInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub text: String,
    pub words: usize,
    pub sentences: usize,
    pub paragraphs: usize,
    /// Unicode characters, whitespace included.
    pub characters: usize,
    /// The ten most frequent words, stop words left out, ties in alphabetical order.
    pub top_words: Vec<WordCount>,
}
