//! Parsing `#[task(..)]`: options, the fn, the handle name, the description.

use heck::ToUpperCamelCase;
use proc_macro2::TokenStream;
use syn::{Ident, ItemFn, LitStr};

use crate::attrs::description;
use crate::errors::Errors;
use crate::options::{Key, Options};

/// A `#[task]` definition as written.
pub struct TaskDef {
    pub item: ItemFn,
    pub options: Options,
    /// The task id: `id = ".."`, else the fn name.
    pub id: LitStr,
    /// The handle struct: `handle = ..`, else UpperCamelCase of the fn name.
    pub handle: Ident,
    pub description: String,
}

pub fn parse(args: TokenStream, item: ItemFn, errors: &mut Errors) -> TaskDef {
    let options = Options::parse(
        args,
        &[
            Key::Id,
            Key::Handle,
            Key::Retry,
            Key::Timeout,
            Key::Concurrency,
            Key::OnSuccess,
            Key::OnFailure,
            Key::Schedule,
        ],
        errors,
    );
    let name = &item.sig.ident;
    let id = options
        .id
        .clone()
        .unwrap_or_else(|| LitStr::new(name.to_string().trim_start_matches("r#"), name.span()));
    let handle = options.handle.clone().unwrap_or_else(|| {
        Ident::new(
            &name
                .to_string()
                .trim_start_matches("r#")
                .to_upper_camel_case(),
            name.span(),
        )
    });
    let description = description(&item.attrs);
    TaskDef {
        item,
        options,
        id,
        handle,
        description,
    }
}
