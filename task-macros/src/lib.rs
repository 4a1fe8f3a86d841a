//! Procedural macros of `task-runtime`: `#[task]`, `track!` and `orchestrator!`. Use them
//! through `task_runtime::prelude::*`; generated code names everything through
//! `::task_runtime::__private`, so users need no other dependency.
//!
//! Each macro is split parse -> check -> expand, and on error still emits the user's item
//! (and the handle) next to the errors, so the rest of the crate keeps type-checking.

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

/// Turns an `async fn(ctx: &TaskContext, input: In) -> Result<Out, E>` into a registered,
/// schema-validated task with a handle struct (UpperCamelCase of the fn name).
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    task::expand(args.into(), item.into()).into()
}

/// Declares a track: steps run in sequence as child runs, with compiler-checked mappers.
#[proc_macro]
pub fn track(input: TokenStream) -> TokenStream {
    track::expand(input.into()).into()
}

/// Declares an orchestrator: branches run in parallel, aggregated into a typed output.
#[proc_macro]
pub fn orchestrator(input: TokenStream) -> TokenStream {
    orchestrator::expand(input.into()).into()
}

#[cfg(test)]
mod tests;
