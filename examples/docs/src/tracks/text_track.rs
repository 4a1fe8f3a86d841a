//! `text_track`: one document from file to summary.

use task_runtime::prelude::*;

use crate::schemas::count_words::CountInput;
use crate::schemas::extract_text::{ExtractInput, TextOutput};
use crate::tasks::{CountWords, ExtractText, Summarise};

track! {
    /// Extract a document's text, count its words, then summarise it.
    ///
    /// The input is `extract_text`'s; the output is `summarise`'s, naming the document's
    /// path as `source`. A document without text fails at `count_words`, whose input needs
    /// a non-empty text.
    pub TextTrack("text_track") {
        ExtractText,
        // The text alone lost the tenant and project, so they come from the track's input.
        CountWords = |prev: TextOutput, original: &ExtractInput| CountInput {
            base: original.base.clone(),
            text: prev.text,
            source: Some(prev.path),
        },
        // No mapper: `WordCounts` carries everything, see `From<WordCounts> for SummariseInput`.
        Summarise,
    }
}
