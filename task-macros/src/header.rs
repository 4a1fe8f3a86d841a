//! The head both `track!` and `orchestrator!` start with:
//! `/// docs` `pub Name("id", options..)(input: Input)`, the handle struct it declares, and
//! the `Task` impl and registration both kinds share. The `(input: Input)` part is an
//! orchestrator's input, or a track's own input when its first step's input is not it.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::ParseStream;
use syn::{Attribute, Ident, LitStr, Token, Type, Visibility, parenthesized, token};

use crate::attrs::description;
use crate::errors::Errors;
use crate::options::{Key, Options};
use crate::spans::Shown;

/// `#[attrs] vis Name("id", options..)`, then `(input: Input)` when written.
pub struct Header {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub handle: Ident,
    pub id: LitStr,
    pub options: Options,
    pub description: String,
    /// `(input: Input)` after the id, when written.
    pub input: Option<InputDecl>,
    /// The parentheses around the id, where a missing `(input: Input)` belongs.
    pub id_span: Span,
}

/// `(input: Input)`: the name the declaration's closures may use for the input, and its type.
pub struct InputDecl {
    pub name: Ident,
    pub ty: Type,
}

impl InputDecl {
    /// `(name: Type)`, after the id; `what` is "track" or "orchestrator" for messages.
    fn parse(input: ParseStream, what: &str) -> syn::Result<InputDecl> {
        let content;
        parenthesized!(content in input);
        let expected = |e: syn::Error| {
            syn::Error::new(
                e.span(),
                format!("expected the {what}'s input as `(input: YourInput)`"),
            )
        };
        let name: Ident = content.parse().map_err(expected)?;
        content.parse::<Token![:]>().map_err(expected)?;
        let ty: Type = content.parse()?;
        if !content.is_empty() {
            return Err(content.error(format!(
                "a {what} has one input: `(input: YourInput)`; put more data in its fields"
            )));
        }
        Ok(InputDecl { name, ty })
    }
}

impl Header {
    /// Parses the head; `what` is "track" or "orchestrator" for messages.
    pub fn parse(
        input: ParseStream,
        what: &str,
        allowed: &[Key],
        errors: &mut Errors,
    ) -> syn::Result<Header> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let handle: Ident = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected the {what}'s handle name, e.g. `pub TextTrack(\"text_track\") {{ .. }}`"),
            )
        })?;
        let content;
        let parens = parenthesized!(content in input);
        let id: LitStr = content.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected the {what} id as a string literal: `{handle}(\"my_{what}\")`"),
            )
        })?;
        if let Err(error) = crate::options::check_id(&id) {
            errors.push(error);
        }
        let options = if content.peek(Token![,]) {
            content.parse::<Token![,]>()?;
            Options::parse(content.parse()?, allowed, errors)
        } else {
            if !content.is_empty() {
                return Err(content.error(format!(
                    "expected `,` and options or `)` after the {what} id"
                )));
            }
            Options::default()
        };
        let description = description(&attrs);
        let declared = if input.peek(token::Paren) {
            Some(InputDecl::parse(input, what)?)
        } else {
            None
        };
        Ok(Header {
            attrs,
            vis,
            handle,
            id,
            options,
            description,
            input: declared,
            id_span: parens.span.join(),
        })
    }

    /// The handle struct, with the user's doc comment and attributes.
    pub fn handle_struct(&self) -> TokenStream {
        let Header {
            attrs, vis, handle, ..
        } = self;
        let derives = handle_derives();
        quote_spanned! {handle.span()=>
            #(#attrs)*
            #derives
            #vis struct #handle;
        }
    }
}

/// The derives of every handle struct, by absolute path: a user's own `Debug` or `Clone`
/// in scope cannot break them.
pub fn handle_derives() -> TokenStream {
    quote! {
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default,
            ::core::cmp::PartialEq,
            ::core::cmp::Eq,
            ::core::hash::Hash
        )]
    }
}

/// The handle next to the errors, so code naming it still type-checks.
pub fn fallback(header: &Header, error: syn::Error) -> TokenStream {
    let handle = header.handle_struct();
    let error = error.to_compile_error();
    quote! {
        #handle
        #error
    }
}

/// What differs between the `Task` impls of a track and an orchestrator.
pub struct Composite {
    /// `Track` or `Orchestrator`.
    pub kind: TokenStream,
    /// Items at the impl's scope (the checked aliases of steps and branches).
    pub items: TokenStream,
    pub input: Shown,
    pub output: Shown,
    /// Statements of the body, ending in `Ok(output)`; `__task_ctx` and `__task_input` are
    /// in scope.
    pub body: TokenStream,
    /// The registry's step ids and branches.
    pub steps: TokenStream,
    pub branches: TokenStream,
}

/// The handle, its `Task` impl and its registration, for a track or an orchestrator.
pub fn composite(header: &Header, composite: Composite) -> TokenStream {
    let p = quote!(::task_runtime::__private);
    let Composite {
        kind,
        items,
        input,
        output,
        body,
        steps,
        branches,
    } = composite;
    let handle = &header.handle;
    let id = &header.id;
    let hooks = header.options.hooks();
    let policy = header.options.policy();
    let handle_struct = header.handle_struct();
    let registration = registration(handle, &header.description, steps, branches);
    let input = input.item(|ty| quote!(type Input = #ty;));
    let output = output.item(|ty| quote!(type Output = #ty;));
    quote! {
        #handle_struct

        const _: () = {
            #items

            #[automatically_derived]
            #[diagnostic::do_not_recommend]
            impl #p::Task for #handle {
                const ID: &'static str = #id;
                // The public path: rustdoc prints this value as written.
                const KIND: #p::Kind = ::task_runtime::Kind::#kind;
                const POLICY: #p::RunPolicy = #policy;
                #hooks
                #input
                #output

                fn run(
                    __task_ctx: &#p::TaskContext,
                    __task_input: Self::Input,
                ) -> impl #p::Future<Output = #p::Result<Self::Output, #p::TaskError>> + ::core::marker::Send + '_ {
                    async move {
                        #body
                    }
                }

                fn schemas() -> &'static #p::TaskSchemas {
                    static SCHEMAS: #p::SchemaCell = #p::SchemaCell::new();
                    #p::schemas::<Self>(&SCHEMAS)
                }
            }

            #registration
        };
    }
}

/// The descriptor static, `Registered` impl and `inventory` submission of any handle.
pub fn registration(
    handle: &Ident,
    description: &str,
    steps: TokenStream,
    branches: TokenStream,
) -> TokenStream {
    let p = quote!(::task_runtime::__private);
    let location = quote::quote_spanned!(handle.span()=> ::core::file!(), ::core::line!());
    quote! {
        static __TASK_DESCRIPTOR: #p::TaskDescriptor =
            #p::TaskDescriptor::of::<#handle>(#description, #location, #steps, #branches);

        #[automatically_derived]
        impl #p::Registered for #handle {
            fn descriptor() -> &'static #p::TaskDescriptor {
                &__TASK_DESCRIPTOR
            }
        }

        #p::inventory::submit! { #p::Registration(&__TASK_DESCRIPTOR) }
    }
}
