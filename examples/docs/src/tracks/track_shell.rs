//! Template: a new track. Copy this file to `tracks/<your_track>.rs`, add it to
//! `tracks/mod.rs`, then rename the handle and the id. Compiled only under `cfg(test)`.

use task_runtime::prelude::*;

use crate::schemas::extract_text::{ExtractInput, TextOutput};
use crate::schemas::summarise::SummariseInput;
use crate::tasks::{ExtractText, Summarise};

track! {
    /// One short line for `docs-pipeline list`: here, a two-sentence summary of a file.
    ///
    /// The first step takes the track's input as it is, so the track's input type is the
    /// first step's. Its output is the last step's.
    pub ShellTrack("track_shell") {
        ExtractText,
        // A step either has a mapper, `|prev: <previous output>, original: &<track input>|`,
        // or relies on `From<previous output> for <its input>`. Both are checked when this
        // compiles: a type that does not fit is an error pointing at this line.
        Summarise = |prev: TextOutput, original: &ExtractInput| SummariseInput {
            base: original.base.clone(),
            text: prev.text,
            max_sentences: 2,
            source: Some(prev.path),
        },
    }
}
