//! Orchestrators: branches (tasks or tracks) run in parallel, their results gathered in a
//! generated output struct. Copy `orchestrator_shell.rs` to start a new one.

pub mod docs_orchestrator;

#[cfg(test)]
pub mod orchestrator_shell;

pub use docs_orchestrator::{
    DocsBestEffort, DocsBestEffortOutput, DocsOrchestrator, DocsOrchestratorOutput,
};
