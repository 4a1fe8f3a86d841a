//! `docs_orchestrator` and `docs_best_effort`: many documents at once, plus statistics over
//! all of them; the first fails fast, the second settles every branch.

use task_runtime::prelude::*;

use crate::schemas::corpus_stats::CorpusInput;
use crate::schemas::docs::DocsInput;
use crate::schemas::extract_text::ExtractInput;
use crate::tasks::CorpusStats;
use crate::tracks::TextTrack;

orchestrator! {
    /// Summarise many documents at once and compute corpus statistics.
    ///
    /// Every document goes through `text_track`, four at a time, while `corpus_stats` reads
    /// them all for the corpus-wide figures. The first failure fails the run.
    pub DocsOrchestrator("docs_orchestrator")(input: DocsInput) {
        documents: each(documents(input)) => TextTrack, concurrency = 4,
        corpus: CorpusStats = |input| CorpusInput { base: input.base.clone(), paths: input.documents.clone() },
    }
}

orchestrator! {
    /// Like `docs_orchestrator`, but best effort: every document and the corpus get their own
    /// outcome, so one bad document is recorded as an error while the rest are summarised.
    pub DocsBestEffort("docs_best_effort", failure = settle)(input: DocsInput) {
        documents: each(documents(input)) => TextTrack, concurrency = 4,
        corpus: CorpusStats = |input| CorpusInput { base: input.base.clone(), paths: input.documents.clone() },
    }
}

/// One `text_track` input per document, in the input's order.
fn documents(input: &DocsInput) -> Vec<ExtractInput> {
    input
        .documents
        .iter()
        .map(|path| ExtractInput {
            base: input.base.clone(),
            path: path.clone(),
            save_to: None,
        })
        .collect()
}
