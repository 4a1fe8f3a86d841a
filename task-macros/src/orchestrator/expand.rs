//! Generating an orchestrator's handle: the typed output struct and a `Task` whose body
//! starts every branch on its own tokio task, then joins them under the failure policy.
//!
//! As in `track!`, every branch is named through its checked alias (`task_ref`), so a branch
//! that is not a task, a missing conversion or a mapper of the wrong type is reported once,
//! at the user's tokens.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Expr, ExprClosure, Ident, Type};

use super::parse::{Branch, OrchestratorDef, Source};
use crate::closures::{Param, call_mapper, typed};
use crate::errors::display;
use crate::header::{Composite, composite};
use crate::options::Failure;
use crate::spans::{Range, Shown, paren, respan};
use crate::task_ref::TaskRef;

pub fn expand(def: &OrchestratorDef) -> TokenStream {
    let p = quote!(::task_runtime::__private);
    let header = &def.header;
    let handle = &header.handle;
    let vis = &header.vis;
    let id = &header.id;
    let settle = header.options.failure == Failure::Settle;
    let output = format_ident!("{}Output", handle);
    let declared = header.input.as_ref().expect("`check` requires the input");
    let (input_name, input_type) = (&declared.name, &declared.ty);

    let refs: Vec<TaskRef> = def
        .branches
        .iter()
        .enumerate()
        .map(|(i, branch)| TaskRef::new("Branch", i, &branch.task))
        .collect();
    let aliases = refs.iter().map(TaskRef::alias_item);

    let fields = def.branches.iter().zip(&refs).map(|(branch, r)| {
        let (name, task) = (&branch.name, &branch.task);
        let each = matches!(branch.source, Source::Each { .. });
        let doc = format!(
            "Output of branch `{}` (`{}`){}.",
            name,
            display(task),
            if each {
                ", one per item, in item order"
            } else {
                ""
            }
        );
        r.checked_assoc("Output").item(|one| {
            let one = if settle {
                quote!(#p::Outcome<#one>)
            } else {
                one.clone()
            };
            let ty = if each {
                quote!(::std::vec::Vec<#one>)
            } else {
                one
            };
            quote!(#[doc = #doc] pub #name: #ty,)
        })
    });

    let starts = def
        .branches
        .iter()
        .zip(&refs)
        .map(|(branch, r)| start(branch, r, input_name, input_type));
    let joins = def.branches.iter().map(|branch| {
        let name = &branch.name;
        quote!(let #name = #name.join(&__task_branches).await;)
    });
    let assign = def.branches.iter().map(|branch| {
        let name = &branch.name;
        let value = match (&branch.source, settle) {
            (Source::Each { .. }, true) => quote!(#p::orchestrator::settled(#name)),
            (Source::Each { .. }, false) => quote!(#p::orchestrator::all(#name)?),
            (_, true) => quote!(#p::Outcome::from(#name)),
            (_, false) => quote!(#name?),
        };
        quote!(#name: #value)
    });
    let policy_value = if settle {
        quote!(#p::FailurePolicy::Settle)
    } else {
        quote!(#p::FailurePolicy::FailFast)
    };
    let branch_infos = def.branches.iter().zip(&refs).map(|(branch, r)| {
        let name = branch.name.to_string();
        let each = matches!(branch.source, Source::Each { .. });
        let task_id = r.assoc("ID");
        quote!(#p::BranchInfo { name: #name, task: #task_id, each: #each })
    });
    let output_doc = format!(
        "Output of the orchestrator `{}`: one field per branch.",
        id.value()
    );
    let serde_crate = "::task_runtime::__private::serde";
    let schemars_crate = "::task_runtime::__private::schemars";

    let output_struct = quote! {
        #[doc = #output_doc]
        #[derive(#p::serde::Serialize, #p::serde::Deserialize, #p::schemars::JsonSchema)]
        #[serde(crate = #serde_crate, rename_all = "camelCase")]
        #[schemars(crate = #schemars_crate)]
        #vis struct #output {
            #(#fields)*
        }
    };
    let composite = composite(
        header,
        Composite {
            kind: quote!(Orchestrator),
            items: quote!(#(#aliases)*),
            input: Shown::checked(input_type, "input_checks"),
            output: Shown::same(quote!(#output)),
            body: quote! {
                let #input_name: &#input_type = &__task_input;
                let __task_branches = #p::Branches::new(__task_ctx, #policy_value);
                #(#starts)*
                #(#joins)*
                __task_branches.finish()?;
                #p::Result::Ok(#output { #(#assign,)* })
            },
            steps: quote!(&[]),
            branches: quote!(&[#(#branch_infos),*]),
        },
    );
    quote! {
        #output_struct
        #composite
    }
}

/// `let name = __task_branches.one::<Task>(..)` (or `each`), spanned at the branch.
fn start(branch: &Branch, r: &TaskRef, input_name: &Ident, input_type: &Type) -> TokenStream {
    let p = quote!(::task_runtime::__private);
    let (name, alias) = (&branch.name, &r.alias);
    let label = name.to_string();
    let branch_input = r.assoc("Input");
    match &branch.source {
        Source::Cloned => {
            // Spanned at the task: a missing conversion is reported where the mapper is missing.
            let value = r.range.wrap(
                quote!(#p::orchestrator::cloned::<_,),
                &branch_input,
                quote!(>(#input_name)),
            );
            let one = respan(quote!(__task_branches.one::<#alias>), r.range.last);
            quote!(let #name = #one(#label, #value);)
        }
        Source::Mapper(Expr::Closure(closure)) => {
            let params = [input_param(closure, input_name, input_type)];
            let helper = quote!(#p::orchestrator::mapper);
            let value = call_mapper(closure, helper, &params, &branch_input);
            let one = respan(quote!(__task_branches.one::<#alias>), r.range.last);
            quote!(let #name = #one(#label, #value);)
        }
        // `check` rejected any other mapper; keep the expansion well-formed regardless.
        Source::Mapper(other) => quote!(let #name = #other;),
        Source::Each { items, concurrency } => {
            let items = match items {
                // Only the parameter is typed here; what the closure returns is checked by
                // `each_items` below.
                Expr::Closure(closure) => {
                    let param = input_param(closure, input_name, input_type);
                    let helper = quote!(#p::orchestrator::items);
                    let typed = typed(closure, helper, param.ty, quote!(_, _));
                    let call = paren(param.arg, Range::of(closure).last);
                    quote!(#typed #call)
                }
                other => quote!(#other),
            };
            let range = Range::of(&items);
            let each_items = respan(quote!(#p::orchestrator::each_items::<), range.first);
            let items = paren(items, range.last);
            let close = respan(quote!(>), range.last);
            let items = quote!(#each_items #branch_input #close #items);
            let concurrency = match concurrency {
                Some(n) => quote!(::core::option::Option::Some(#n)),
                None => quote!(::core::option::Option::None),
            };
            let each = respan(quote!(__task_branches.each::<#alias>), r.range.last);
            quote!(let #name = #each(#label, #items, #concurrency);)
        }
    }
}

/// The single parameter of a branch closure: a reference to the orchestrator's input.
fn input_param(closure: &ExprClosure, input_name: &Ident, input_type: &Type) -> Param {
    Param::new(
        closure,
        0,
        quote!(&#input_type),
        quote!(::task_runtime::__private::orchestrator::input),
        quote!(#input_name),
    )
}
