//! Generating an orchestrator's handle: the typed output struct and a `Task` whose body
//! starts every branch on its own tokio task, then joins them under the failure policy.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::Expr;

use super::parse::{OrchestratorDef, Source};
use crate::header::registration;
use crate::options::Failure;

pub fn expand(def: &OrchestratorDef) -> TokenStream {
    let p = quote!(::task_runtime::__private);
    let header = &def.header;
    let handle = &header.handle;
    let vis = &header.vis;
    let id = &header.id;
    let policy = header.options.policy();
    let settle = header.options.failure == Failure::Settle;
    let output = format_ident!("{}Output", handle);
    let input_name = &def.input_name;
    let input_type = &def.input_type;

    let is_task = def.branches.iter().map(|branch| {
        let task = &branch.task;
        quote_spanned!(task.span()=> const _: () = #p::track::is_task::<#task>();)
    });

    let fields = def.branches.iter().map(|branch| {
        let (name, task) = (&branch.name, &branch.task);
        let one = quote!(<#task as #p::Task>::Output);
        let one = if settle { quote!(#p::Outcome<#one>) } else { one };
        let ty = match branch.source {
            Source::Each { .. } => quote!(::std::vec::Vec<#one>),
            _ => one,
        };
        let doc = format!(
            "Output of branch `{}` (`{}`){}.",
            name,
            quote::ToTokens::to_token_stream(task).to_string().replace(' ', ""),
            if matches!(branch.source, Source::Each { .. }) { ", one per item, in item order" } else { "" }
        );
        quote!(#[doc = #doc] pub #name: #ty)
    });

    let starts = def.branches.iter().map(|branch| {
        let (name, task) = (&branch.name, &branch.task);
        let label = name.to_string();
        match &branch.source {
            Source::Cloned => quote_spanned! {task.span()=>
                let #name = __task_branches.one::<#task>(#label, #p::orchestrator::cloned::<#input_type, #task>(#input_name));
            },
            Source::Mapper(mapper) => quote_spanned! {mapper.span()=>
                let #name = __task_branches.one::<#task>(#label, #p::orchestrator::mapper::<#input_type, #task, _>(#mapper)(#input_name));
            },
            Source::Each { items, concurrency } => {
                let items = match items {
                    Expr::Closure(_) => quote_spanned! {items.span()=>
                        #p::orchestrator::items::<#input_type, #task, _, _>(#items)(#input_name)
                    },
                    _ => quote!(#items),
                };
                let concurrency = match concurrency {
                    Some(n) => quote!(::core::option::Option::Some(#n)),
                    None => quote!(::core::option::Option::None),
                };
                quote_spanned! {task.span()=>
                    let #name = __task_branches.each::<#task>(#label, #items, #concurrency);
                }
            }
        }
    });
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
    let branch_infos = def.branches.iter().map(|branch| {
        let (name, task) = (branch.name.to_string(), &branch.task);
        let each = matches!(branch.source, Source::Each { .. });
        quote!(#p::BranchInfo { name: #name, task: <#task as #p::Task>::ID, each: #each })
    });
    let registration = registration(header, quote!(&[]), quote!(&[#(#branch_infos),*]));
    let handle_struct = header.handle_struct();
    let output_doc = format!("Output of the orchestrator `{}`: one field per branch.", id.value());
    let serde_crate = "::task_runtime::__private::serde";
    let schemars_crate = "::task_runtime::__private::schemars";

    quote! {
        #handle_struct

        #[doc = #output_doc]
        #[derive(#p::serde::Serialize, #p::serde::Deserialize, #p::schemars::JsonSchema)]
        #[serde(crate = #serde_crate, rename_all = "camelCase")]
        #[schemars(crate = #schemars_crate)]
        #vis struct #output {
            #(#fields,)*
        }

        const _: () = {
            #(#is_task)*

            #[automatically_derived]
            impl #p::Task for #handle {
                const ID: &'static str = #id;
                const KIND: #p::Kind = #p::Kind::Orchestrator;
                const POLICY: #p::RunPolicy = #policy;
                type Input = #input_type;
                type Output = #output;

                fn run(
                    __task_ctx: &#p::TaskContext,
                    __task_input: Self::Input,
                ) -> impl #p::Future<Output = #p::Result<Self::Output, #p::TaskError>> + ::core::marker::Send + '_ {
                    async move {
                        let #input_name: &#input_type = &__task_input;
                        let __task_branches = #p::Branches::new(__task_ctx, #policy_value);
                        #(#starts)*
                        #(#joins)*
                        __task_branches.finish()?;
                        #p::Result::Ok(#output { #(#assign,)* })
                    }
                }

                fn schemas() -> &'static #p::TaskSchemas {
                    static SCHEMAS: #p::SchemaCell = #p::SchemaCell::new();
                    SCHEMAS.get::<#input_type, #output>()
                }
            }

            #registration
        };
    }
}
