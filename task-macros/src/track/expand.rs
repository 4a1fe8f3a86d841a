//! Generating a track's handle: a `Task` whose body runs each step as a child run, feeding
//! each step the previous output through its mapper or `Into`.
//!
//! Every mention of a step goes through its checked alias (`task_ref`), and every check sits
//! at the user's tokens: a step that is not a task, a conversion that is missing or a
//! mapper of the wrong type is reported once, where the user wrote it.
//!
//! The track's input is its first step's input, or the type it declares with
//! `(input: TrackInput)`; then the first step gets it through its `|input|` mapper (from a
//! reference, so nothing is cloned) or through `Into`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Expr, ExprClosure};

use super::parse::TrackDef;
use crate::closures::{Param, call_mapper};
use crate::header::{Composite, composite};
use crate::spans::{Shown, respan};
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
    let declared = def.header.input.as_ref();
    let input = match declared {
        Some(decl) => Shown::checked(&decl.ty, "input_checks"),
        None => first.shown_assoc("Input"),
    };
    let output = last.shown_assoc("Output");

    // The first step's input: the track's input as it is, converted, or mapped from `&input`.
    let first_mapper = match (declared, &def.steps[0].mapper) {
        (Some(_), Some(Expr::Closure(closure))) => Some(closure),
        _ => None,
    };
    let first_input = match (declared, first_mapper) {
        (_, Some(closure)) => first_input_mapper(closure, first),
        // Spanned at the step, where the missing mapper belongs.
        (Some(_), None) => first.range.wrap(
            quote!(#p::track::first::<_,),
            &first.assoc("Input"),
            quote!(>(__task_input)),
        ),
        (None, None) => quote!(__task_input),
    };
    // Later mappers see the input as `original`. A first step that consumes the input needs
    // a clone of it kept; a first mapper only borrows it.
    let later_mappers = def.steps.iter().skip(1).any(|step| step.mapper.is_some());
    let (keep, original) = if first_mapper.is_some() {
        (None, quote!(&__task_input))
    } else {
        let keep = later_mappers.then(|| {
            respan(
                quote!(let __task_original = #p::track::keep_original(&__task_input);),
                first.range.last,
            )
        });
        (keep, quote!(&__task_original))
    };
    let first_run = run_step(first, 0);
    let rest = def
        .steps
        .iter()
        .zip(&refs)
        .enumerate()
        .skip(1)
        .map(|(index, (step, this))| {
            let prev = &refs[index - 1];
            let next_input = match &step.mapper {
                Some(Expr::Closure(closure)) => mapper(closure, prev, this, &original),
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
            let run = run_step(this, index);
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
                #keep
                let __task_next = #first_input;
                #first_run
                #(#rest)*
                #p::Result::Ok(__task_prev)
            },
            steps: quote!(&[#(#step_ids),*]),
            branches: quote!(&[]),
        },
    )
}

/// `let __task_prev = step::<__TaskStepN>(ctx, index, __task_next).await?;`, at the step.
fn run_step(step: &TaskRef, index: usize) -> TokenStream {
    let alias = &step.alias;
    respan(
        quote! {
            let __task_prev = ::task_runtime::__private::track::step::<#alias>(__task_ctx, #index, __task_next).await?;
        },
        step.range.last,
    )
}

/// The first step's mapper: `|input|`, a reference to the track's declared input, returning
/// the first step's input. Its parameter is checked like an orchestrator branch's.
fn first_input_mapper(closure: &ExprClosure, first: &TaskRef) -> TokenStream {
    let p = quote!(::task_runtime::__private);
    let params = [Param::new(
        closure,
        0,
        quote!(&<Self as #p::Task>::Input),
        quote!(#p::orchestrator::input),
        quote!(&__task_input),
    )];
    call_mapper(
        closure,
        quote!(#p::orchestrator::mapper),
        &params,
        &first.assoc("Input"),
    )
}

/// A step mapper: `|prev, original|`, the previous step's output and a reference to the
/// track's input (`original`, the expression passing it), returning this step's input.
fn mapper(
    closure: &ExprClosure,
    prev: &TaskRef,
    this: &TaskRef,
    original: &TokenStream,
) -> TokenStream {
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
            original.clone(),
        ),
    ];
    call_mapper(
        closure,
        quote!(#p::track::mapper),
        &params,
        &this.assoc("Input"),
    )
}
