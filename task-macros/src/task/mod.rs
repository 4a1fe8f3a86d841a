//! `#[task]`: parse the attribute and fn, check the signature, expand into the handle, its
//! `Task` impl and its registration.

mod check;
mod expand;
mod parse;

use proc_macro2::TokenStream;
use quote::quote;

use crate::errors::Errors;

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let item_fn: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(item_fn) => item_fn,
        Err(error) => {
            let error = syn::Error::new(
                error.span(),
                "`#[task]` goes on an `async fn(ctx: &TaskContext, input: YourInput) -> Result<YourOutput, YourError>`",
            )
            .to_compile_error();
            return quote!(#item #error);
        }
    };
    let mut errors = Errors::default();
    let def = parse::parse(args, item_fn, &mut errors);
    let signature = check::check(&def, &mut errors);
    match (errors.finish(), signature) {
        (Ok(()), Some(signature)) => expand::expand(&def, &signature),
        (Err(error), _) => expand::fallback(&def, error, !check::handle_is_taken(&def)),
        (Ok(()), None) => unreachable!("check reports an error whenever it returns None"),
    }
}
