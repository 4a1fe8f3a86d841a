//! Closures the user writes inside `track!` and `orchestrator!` (mappers, `each(|input| ..)`):
//! each is given its signature before its body is checked, and each type the user declared
//! on it is checked where it is declared, so a mismatch is reported at that type, with a
//! message saying what the parameter receives.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::{ExprClosure, Pat, ReturnType};

use crate::spans::{Range, paren, respan};

/// How a closure parameter is typed and fed.
pub struct Param {
    /// The type the closure is given for it: the declared one, else the actual one.
    pub ty: TokenStream,
    /// The value passed: checked against the declared type when there is one.
    pub arg: TokenStream,
}

impl Param {
    /// Parameter `index` of `closure`, which receives `value` of type `actual`; a declared
    /// type is checked by `check` (a runtime fn whose bound carries the message).
    pub fn new(
        closure: &ExprClosure,
        index: usize,
        actual: TokenStream,
        check: TokenStream,
        value: TokenStream,
    ) -> Param {
        match closure.inputs.iter().nth(index) {
            Some(Pat::Type(pat_type)) => {
                let ty = &pat_type.ty;
                Param {
                    ty: ty.to_token_stream(),
                    arg: check_declared(ty, check, value),
                }
            }
            _ => Param {
                ty: actual,
                arg: value,
            },
        }
    }
}

/// `{ let f = helper::<params.., returns, _>(closure); f(args..) }`: a mapper called with
/// `params`, whose result must be `expected` (checked at a declared return type, else by
/// the signature, at the closure's body).
pub fn call_mapper(
    closure: &ExprClosure,
    helper: TokenStream,
    params: &[Param],
    expected: &TokenStream,
) -> TokenStream {
    let (returns, result) = match &closure.output {
        ReturnType::Type(_, ty) => {
            let call = Range::of(ty).wrap(
                quote!(::task_runtime::__private::track::returns::<),
                &quote!(#ty, #expected),
                quote!(>(__task_mapped)),
            );
            (ty.to_token_stream(), call)
        }
        ReturnType::Default => (expected.clone(), quote!(__task_mapped)),
    };
    let types = params.iter().map(|param| &param.ty).chain([&returns]);
    let typed = typed(closure, helper, quote!(#(#types),*), quote!(_));
    let args = params.iter().map(|param| &param.arg);
    quote! {{
        let __task_mapper = #typed;
        let __task_mapped = __task_mapper(#(#args),*);
        #result
    }}
}

/// `helper::<types, infer>(closure)`, spanned at the closure: rustc underlines the closure,
/// not the macro call, for anything about its signature.
pub fn typed(
    closure: &ExprClosure,
    helper: TokenStream,
    types: TokenStream,
    infer: TokenStream,
) -> TokenStream {
    let range = Range::of(closure);
    let path = respan(quote!(#helper::<), range.first);
    let rest = respan(quote!(, #infer>), range.last);
    let args = paren(quote!(#closure), range.last);
    quote!(#path #types #rest #args)
}

/// `check::<ty>(value)`: `value` passed to a closure parameter the user declared as `ty`.
/// Spanned at the end of `ty`, so rustc reports a mismatch with one label there.
fn check_declared(ty: &impl ToTokens, check: TokenStream, value: TokenStream) -> TokenStream {
    let last = Range::of(ty).last;
    let path = respan(quote!(#check::<), last);
    let close = respan(quote!(>), last);
    let args = paren(respan(value, last), last);
    quote!(#path #ty #close #args)
}

/// A closure's parameters as written, `a, b` or `||`, for errors about how many there are.
pub fn params(closure: &ExprClosure) -> TokenStream {
    let ExprClosure {
        or1_token,
        inputs,
        or2_token,
        ..
    } = closure;
    if inputs.is_empty() {
        quote!(#or1_token #or2_token)
    } else {
        quote!(#inputs)
    }
}
