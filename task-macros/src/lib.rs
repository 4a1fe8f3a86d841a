//! Procedural macros of `task-runtime`: `#[task]`, `track!` and `orchestrator!`. Use them
//! through `task_runtime::prelude::*`; generated code names everything through
//! `::task_runtime::__private`, so users need no other dependency.
//!
//! Each macro is split parse -> check -> expand, and on error still emits the user's item
//! (and the handle) next to the errors, so the rest of the crate keeps type-checking. The
//! macros' reference pages are `docs/*.md`; their examples cannot run in a proc-macro crate,
//! so each is compiled as a trybuild pass case (`tests/ui/pass/docs-*.rs`).

use proc_macro::TokenStream;

mod attrs;
mod closures;
mod errors;
mod header;
mod options;
mod orchestrator;
mod spans;
mod task;
mod task_ref;
mod track;

#[doc = include_str!("../docs/task.md")]
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    task::expand(args.into(), item.into()).into()
}

#[doc = include_str!("../docs/track.md")]
#[proc_macro]
pub fn track(input: TokenStream) -> TokenStream {
    track::expand(input.into()).into()
}

#[doc = include_str!("../docs/orchestrator.md")]
#[proc_macro]
pub fn orchestrator(input: TokenStream) -> TokenStream {
    orchestrator::expand(input.into()).into()
}

#[cfg(test)]
mod tests;
