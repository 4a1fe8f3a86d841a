//! Template: a new orchestrator. Copy this file to `orchestrators/<yours>.rs`, add it to
//! `orchestrators/mod.rs`, then rename the handle and the id. Compiled only under
//! `cfg(test)`.

use task_runtime::prelude::*;

use crate::schemas::docs::DocsInput;
use crate::schemas::extract_text::ExtractInput;
use crate::tasks::ExtractText;
use crate::tracks::track_shell::ShellTrack;

orchestrator! {
    /// One short line for `docs-pipeline list`: here, the text of every document and a short
    /// summary of the first.
    ///
    /// `failure = settle` lets every branch finish and turns each field of the generated
    /// `ShellOrchestratorOutput` into an `Outcome` (ok or error); without it the first
    /// failure cancels the other branches and fails the run.
    pub ShellOrchestrator("orchestrator_shell", failure = settle)(input: DocsInput) {
        // `each(..)` fans out over anything iterable of the branch's input; the field becomes
        // a list in input order. `concurrency` caps how many run at once.
        texts: each(|input| {
            input
                .documents
                .iter()
                .map(|path| ExtractInput { base: input.base.clone(), path: path.clone(), save_to: None })
                .collect::<Vec<_>>()
        }) => ExtractText, concurrency = 2,
        // A single branch maps the orchestrator's input to the branch's input; tracks (and
        // other orchestrators) are branches like any task. Indexing is safe: `documents` has
        // `minItems: 1`, validated before any branch starts.
        first: ShellTrack = |input| ExtractInput {
            base: input.base.clone(),
            path: input.documents[0].clone(),
            save_to: None,
        },
    }
}
