//! Generating a track's handle: a `Task` whose body runs each step as a child run, feeding
//! each step the previous output through its mapper or `Into`.
//!
//! Every mention of a step goes through its checked alias (`task_ref`), and every check sits
//! at the user's tokens: a step that is not a task, a conversion that is missing or a
//! mapper of the wrong type is reported once, where the user wrote it.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Expr, ExprClosure};

use super::parse::TrackDef;
use crate::closures::{Param, call_mapper};
use crate::header::{Composite, composite};
use crate::spans::respan;
use crate::task_ref::TaskRef;

pub fn expand(def: &TrackDef) -> TokenStream {
    let p = quote!(::task_runtime::__private);

    let refs: Vec<TaskRef> = def
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| TaskRef::new("Step", i, &step.task))
        .collect();
    let aliases = refs.iter().map(TaskRef::alias_item);
    let first = &refs[0];
    let last = &refs[refs.len() - 1];
    let input = first.assoc("Input");
    let output = last.assoc("Output");

    // Mappers receive `original` after the first step consumed the input: keep a clone.
    let original = def
        .steps
        .iter()
        .find_map(|step| step.mapper.as_ref())
        .map(|_| {
            respan(
                quote!(let __task_original = #p::track::keep_original(&__task_input);),
                first.range.last,
            )
        });
    let first_run = run_step(first, 0, quote!(__task_input));
    let rest = def
        .steps
        .iter()
        .zip(&refs)
        .enumerate()
        .skip(1)
        .map(|(index, (step, this))| {
            let prev = &refs[index - 1];
            let next_input = match &step.mapper {
                Some(Expr::Closure(closure)) => mapper(closure, prev, this),
                // `check` rejected any other mapper; keep the expansion well-formed regardless.
                Some(other) => quote!(#other),
                // The previous output is inferred from `__task_prev`, spanned at this step: a
                // missing conversion is reported here, where the mapper is missing.
                None => this.range.wrap(
                    quote!(#p::track::flow::<_,),
                    &this.assoc("Input"),
                    quote!(>(__task_prev)),
                ),
            };
            let run = run_step(this, index, quote!(__task_next));
            quote! {
                let __task_next = #next_input;
                #run
            }
        });
    let step_ids = refs.iter().map(|r| r.assoc("ID"));
    composite(
        &def.header,
        Composite {
            kind: quote!(Track),
            items: quote!(#(#aliases)*),
            input,
            output,
            body: quote! {
                #original
                #first_run
                #(#rest)*
                #p::Result::Ok(__task_prev)
            },
            steps: quote!(&[#(#step_ids),*]),
            branches: quote!(&[]),
        },
    )
}

/// `let __task_prev = step::<__TaskStepN>(ctx, index, input).await?;`, at the step.
fn run_step(step: &TaskRef, index: usize, input: TokenStream) -> TokenStream {
    let alias = &step.alias;
    respan(
        quote! {
            let __task_prev = ::task_runtime::__private::track::step::<#alias>(__task_ctx, #index, #input).await?;
        },
        step.range.last,
    )
}

/// A step mapper: `|prev, original|`, the previous step's output and a reference to the
/// track's input, returning this step's input.
fn mapper(closure: &ExprClosure, prev: &TaskRef, this: &TaskRef) -> TokenStream {
    let p = quote!(::task_runtime::__private);
    let params = [
        Param::new(
            closure,
            0,
            prev.assoc("Output"),
            quote!(#p::track::prev),
            quote!(__task_prev),
        ),
        Param::new(
            closure,
            1,
            quote!(&<Self as #p::Task>::Input),
            quote!(#p::track::original),
            quote!(&__task_original),
        ),
    ];
    call_mapper(
        closure,
        quote!(#p::track::mapper),
        &params,
        &this.assoc("Input"),
    )
}
