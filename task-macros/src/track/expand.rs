//! Generating a track's handle: a `Task` whose body runs each step as a child run, feeding
//! each step the previous output through its mapper or `Into`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::parse::TrackDef;
use crate::header::registration;

pub fn expand(def: &TrackDef) -> TokenStream {
    let p = quote!(::task_runtime::__private);
    let header = &def.header;
    let handle = &header.handle;
    let id = &header.id;
    let policy = header.options.policy();
    let first = &def.steps[0].task;
    let last = &def.steps[def.steps.len() - 1].task;

    let is_task = def.steps.iter().map(|step| {
        let task = &step.task;
        quote_spanned!(task.span()=> const _: () = #p::track::is_task::<#task>();)
    });
    let needs_original = def.steps.iter().any(|step| step.mapper.is_some());
    let original = needs_original.then(|| {
        quote!(let __task_original = ::core::clone::Clone::clone(&__task_input);)
    });
    let rest = def.steps.windows(2).enumerate().map(|(i, pair)| {
        let index = i + 1;
        let (prev, task) = (&pair[0].task, &pair[1].task);
        let next_input = match &pair[1].mapper {
            Some(mapper) => quote_spanned! {mapper.span()=>
                #p::track::mapper::<#prev, #task, <Self as #p::Task>::Input, _>(#mapper)(__task_prev, &__task_original)
            },
            None => quote_spanned! {task.span()=>
                #p::track::flow::<#prev, #task>(__task_prev)
            },
        };
        quote! {
            let __task_prev = #p::track::step::<#task>(__task_ctx, #index, #next_input).await?;
        }
    });
    let steps = def.steps.iter().map(|step| {
        let task = &step.task;
        quote!(<#task as #p::Task>::ID)
    });
    let registration = registration(header, quote!(&[#(#steps),*]), quote!(&[]));
    let handle_struct = header.handle_struct();

    quote! {
        #handle_struct

        const _: () = {
            #(#is_task)*

            #[automatically_derived]
            impl #p::Task for #handle {
                const ID: &'static str = #id;
                const KIND: #p::Kind = #p::Kind::Track;
                const POLICY: #p::RunPolicy = #policy;
                type Input = <#first as #p::Task>::Input;
                type Output = <#last as #p::Task>::Output;

                fn run(
                    __task_ctx: &#p::TaskContext,
                    __task_input: Self::Input,
                ) -> impl #p::Future<Output = #p::Result<Self::Output, #p::TaskError>> + ::core::marker::Send + '_ {
                    async move {
                        #original
                        let __task_prev = #p::track::step::<#first>(__task_ctx, 0usize, __task_input).await?;
                        #(#rest)*
                        #p::Result::Ok(__task_prev)
                    }
                }

                fn schemas() -> &'static #p::TaskSchemas {
                    static SCHEMAS: #p::SchemaCell = #p::SchemaCell::new();
                    SCHEMAS.get::<<Self as #p::Task>::Input, <Self as #p::Task>::Output>()
                }
            }

            #registration
        };
    }
}
