//! `docs_orchestrator`: many documents at once, plus statistics over all of them.

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
        documents: each(|input| {
            input
                .documents
                .iter()
                .map(|path| ExtractInput { base: input.base.clone(), path: path.clone(), save_to: None })
                .collect::<Vec<_>>()
        }) => TextTrack, concurrency = 4,
        corpus: CorpusStats = |input| CorpusInput {
            base: input.base.clone(),
            paths: input.documents.clone(),
        },
    }
}
