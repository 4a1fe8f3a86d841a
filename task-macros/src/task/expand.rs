//! Generating the handle, its `Task` impl and its registration.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::check::Signature;
use super::parse::TaskDef;

pub fn expand(def: &TaskDef, sig: &Signature) -> TokenStream {
    let TaskDef {
        item,
        options,
        id,
        handle,
        description,
    } = def;
    let fn_name = &item.sig.ident;
    let (input, output, error) = (&sig.input, &sig.output, &sig.error);
    let policy = options.policy();
    let handle_struct = handle_struct(def);
    let p = quote!(::task_runtime::__private);

    // Checks spanned at the user's types, so a missing derive is reported there.
    let in_span = input.span();
    let out_span = output.span();
    let checks = quote_spanned! {in_span=>
        const _: () = #p::input_is_deserialize::<#input>();
        const _: () = #p::input_is_serialize::<#input>();
        const _: () = #p::input_has_schema::<#input>();
    };
    let out_checks = quote_spanned! {out_span=>
        const _: () = #p::output_is_serialize::<#output>();
        const _: () = #p::output_is_deserialize::<#output>();
        const _: () = #p::output_has_schema::<#output>();
    };
    let call = quote_spanned! {error.span()=>
        #p::call::<#output, #error>(#fn_name(ctx, input))
    };
    let location = quote_spanned!(fn_name.span()=> ::core::file!(), ::core::line!());

    quote! {
        #item

        #handle_struct

        const _: () = {
            #checks
            #out_checks

            #[automatically_derived]
            impl #p::Task for #handle {
                const ID: &'static str = #id;
                const POLICY: #p::RunPolicy = #policy;
                type Input = #input;
                type Output = #output;

                fn run(
                    ctx: &#p::TaskContext,
                    input: Self::Input,
                ) -> impl #p::Future<Output = #p::Result<Self::Output, #p::TaskError>> + ::core::marker::Send + '_ {
                    #call
                }

                fn schemas() -> &'static #p::TaskSchemas {
                    static SCHEMAS: #p::SchemaCell = #p::SchemaCell::new();
                    SCHEMAS.get::<#input, #output>()
                }
            }

            static __TASK_DESCRIPTOR: #p::TaskDescriptor =
                #p::TaskDescriptor::of::<#handle>(#description, #location, &[], &[]);

            #[automatically_derived]
            impl #p::Registered for #handle {
                fn descriptor() -> &'static #p::TaskDescriptor {
                    &__TASK_DESCRIPTOR
                }
            }

            #p::inventory::submit! { #p::Registration(&__TASK_DESCRIPTOR) }
        };
    }
}

/// The user's fn and the handle, without impls, next to the errors: the rest of the crate
/// still type-checks against both.
pub fn fallback(def: &TaskDef, error: syn::Error) -> TokenStream {
    let item = &def.item;
    let handle_struct = handle_struct(def);
    let error = error.to_compile_error();
    quote! {
        #item
        #handle_struct
        #error
    }
}

fn handle_struct(def: &TaskDef) -> TokenStream {
    let vis = &def.item.vis;
    let handle = &def.handle;
    let doc = format!(
        "Handle of the task `{}` (runs [`{}`]). Use it with `Runtime::run`, `ctx.run`, \
         `track!` and `orchestrator!`.",
        def.id.value(),
        def.item.sig.ident
    );
    quote! {
        #[doc = #doc]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        #vis struct #handle;
    }
}
