//! `orchestrator!`: parse the declaration, check the branches, expand into the handle, its
//! typed output struct, its `Task` impl (branches run in parallel) and its registration.

mod check;
mod expand;
mod parse;

use proc_macro2::TokenStream;

use crate::errors::Errors;

pub fn expand(input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let def = match parse::parse(input, &mut errors) {
        Ok(def) => def,
        Err(error) => return error.to_compile_error(),
    };
    check::check(&def, &mut errors);
    match errors.finish() {
        Ok(()) => expand::expand(&def),
        Err(error) => crate::header::fallback(&def.header, error),
    }
}
