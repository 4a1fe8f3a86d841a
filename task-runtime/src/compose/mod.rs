//! Composite runs: the runtime side of `track!` (steps run in sequence as child runs) and
//! `orchestrator!` (branches run in parallel, `each` fan-out, failure policies).

pub(crate) mod orchestrator;
pub(crate) mod track;
