//! Generating the handle, its `Task` impl and its registration.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::LitStr;

use super::check::Signature;
use super::parse::TaskDef;
use crate::header::registration;
use crate::spans::{Range, Shown, respan};

pub fn expand(def: &TaskDef, sig: &Signature) -> TokenStream {
    let TaskDef {
        item,
        options,
        id,
        handle,
        description,
    } = def;
    let fn_name = &item.sig.ident;
    // Rustdoc prints an associated const as the source text under its span: a default id
    // spanned at the fn name would read `ID = parse_invoice`, without quotes.
    let id = LitStr::new(&id.value(), Span::call_site());
    let (input, output, error) = (&sig.input, &sig.output, &sig.error);
    let hooks = options.hooks();
    let policy = options.policy();
    let handle_struct = handle_struct(def);
    let p = quote!(::task_runtime::__private);

    // Derive checks inside the types themselves: see `__private::input_checks`. Rustdoc
    // shows the types as written.
    let input_type = Shown::checked(input, "input_checks").item(|ty| quote!(type Input = #ty;));
    let output_type = Shown::checked(output, "output_checks").item(|ty| quote!(type Output = #ty;));
    // The error conversion is spanned at the error type, where a non-`Error` type is reported.
    // A closure, not the fn itself: naming the fn would put its bound in the future's type,
    // and the error would be reported a second time, at `#[task]`.
    let convert = respan(
        quote!(|__task_error| #p::into_task_error(__task_error)),
        Range::of(error).last,
    );
    let registration = registration(handle, description, quote!(&[]), quote!(&[]));
    let schedule = crate::options::Schedule::tokens(&options.schedule);
    // A scheduled task is triggered with what the schedule knows: its input must be
    // `ScheduledInput`, reported at the input type.
    let scheduled_input = options.schedule.as_ref().map(|_| {
        let check = respan(
            quote!(#p::scheduled_input::<#input>),
            Range::of(input).first,
        );
        quote!(const _: fn() = || #check();)
    });

    quote! {
        #item

        #handle_struct

        const _: () = {
            #[automatically_derived]
            #[diagnostic::do_not_recommend]
            impl #p::Task for #handle {
                const ID: &'static str = #id;
                const POLICY: #p::RunPolicy = #policy;
                const SCHEDULE: ::core::option::Option<#p::ScheduleSpec> = #schedule;
                #hooks
                #input_type
                #output_type

                // The conversion closure carries the user's span, so clippy would see it as
                // the user's code.
                #[allow(clippy::redundant_closure)]
                fn run(
                    ctx: &#p::TaskContext,
                    input: Self::Input,
                ) -> impl #p::Future<Output = #p::Result<Self::Output, #p::TaskError>> + ::core::marker::Send + '_ {
                    #p::call(#fn_name(ctx, input), #convert)
                }

                fn schemas() -> &'static #p::TaskSchemas {
                    static SCHEMAS: #p::SchemaCell = #p::SchemaCell::new();
                    #p::schemas::<Self>(&SCHEMAS)
                }
            }

            #scheduled_input

            #registration
        };
    }
}

/// The user's fn and the handle, without impls, next to the errors: the rest of the crate
/// still type-checks against both. Without the handle when its name is taken.
pub fn fallback(def: &TaskDef, error: syn::Error, with_handle: bool) -> TokenStream {
    let item = &def.item;
    let handle_struct = with_handle.then(|| handle_struct(def));
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
    let derives = crate::header::handle_derives();
    quote_spanned! {handle.span()=>
        #[doc = #doc]
        #derives
        #vis struct #handle;
    }
}
