//! Spans for generated code that wraps the user's tokens, so rustc's errors underline what
//! the user wrote (all of it, not only its first token) rather than the macro call.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};

/// The first and last token spans of `tokens`; generated tokens before the user's take the
/// first, tokens after take the last, and rustc underlines the whole range.
#[derive(Clone, Copy)]
pub struct Range {
    pub first: Span,
    pub last: Span,
}

impl Range {
    pub fn of(tokens: &impl ToTokens) -> Range {
        let mut iter = tokens.to_token_stream().into_iter();
        let first = iter.next().map_or_else(Span::call_site, |t| t.span());
        let last = iter.last().map_or(first, |t| t.span());
        Range { first, last }
    }

    /// `before user after`, with `before` at the first span and `after` at the last.
    pub fn wrap(
        self,
        before: TokenStream,
        user: &impl ToTokens,
        after: TokenStream,
    ) -> TokenStream {
        let before = respan(before, self.first);
        let after = respan(after, self.last);
        quote_spanned!(self.first=> #before #user #after)
    }
}

/// Every token of generated `tokens` at `span` (groups included, recursively).
pub fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(group) = &tree {
                let mut new =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                new.set_span(span);
                tree = proc_macro2::TokenTree::Group(new);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// `( tokens )` with the parentheses at `span`: the end of a call expression rustc underlines.
pub fn paren(tokens: TokenStream, span: Span) -> TokenStream {
    let mut group = proc_macro2::Group::new(proc_macro2::Delimiter::Parenthesis, tokens);
    group.set_span(span);
    proc_macro2::TokenTree::Group(group).into()
}

/// `Checked<ty, { check::<ty>() }>` (see `task_runtime::__private::Checked`), spanned at the
/// user's `ty` so a failed check underlines it. With `any_path`, `ty` is only named as
/// `<ty as Itself>::Type`, so a path to a fn is reported as "expected type" once.
pub fn checked(ty: &impl ToTokens, check: &str, any_path: bool) -> TokenStream {
    let p = quote!(::task_runtime::__private);
    let range = Range::of(ty);
    let ty = if any_path {
        range.wrap(quote!(<), ty, quote!(as #p::Itself>::Type))
    } else {
        ty.to_token_stream()
    };
    let check = proc_macro2::Ident::new(check, range.last);
    let call = range.wrap(quote!(#p::#check::<), &ty, quote!(>()));
    let length = proc_macro2::Group::new(proc_macro2::Delimiter::Brace, call);
    range.wrap(quote!(#p::Checked<), &ty, quote!(, #length>))
}

/// A type as the compiler checks it and as rustdoc shows it: `Checked<In, { .. }>` or
/// `<__TaskStep0 as Task>::Input` for the compiler, which reports a failed check once at the
/// user's tokens, and `In` or `<ExtractText as Task>::Input` in the generated docs, which
/// name no internal wrapper. Both are the same type whenever the crate compiles.
pub struct Shown {
    pub checked: TokenStream,
    pub plain: TokenStream,
}

impl Shown {
    /// `ty` checked by `check` (see [`checked`]), shown as written.
    pub fn checked(ty: &impl ToTokens, check: &str) -> Shown {
        Shown {
            checked: checked(ty, check, false),
            plain: ty.to_token_stream(),
        }
    }

    /// A type that names nothing internal: shown as the compiler sees it.
    pub fn same(ty: TokenStream) -> Shown {
        Shown {
            checked: ty.clone(),
            plain: ty,
        }
    }

    /// The item `item(ty)` twice: with the plain type under `cfg(doc)` (rustdoc documents the
    /// crate with `--cfg doc`), with the checked type otherwise.
    pub fn item(&self, item: impl Fn(&TokenStream) -> TokenStream) -> TokenStream {
        let plain = item(&self.plain);
        let checked = item(&self.checked);
        quote! {
            #[cfg(doc)]
            #plain
            #[cfg(not(doc))]
            #checked
        }
    }
}
