//! A task named inside `track!` or `orchestrator!` (a step or a branch). The expansion names
//! it only through a local alias, `type __TaskStep0 = Checked<.., { is_task::<..>() }>;`,
//! spanned at the path as written: a path that is not a task is reported once, there, and
//! every other use of the alias stays silent.
//!
//! A path whose last segment starts in lowercase (`parse_invoice`) is, by Rust's naming
//! convention, a fn, not a handle; rustc would only say "expected type, found function". It
//! is refused before expansion with the handle's name, which `#[task]` derives from the fn
//! name.

use heck::ToUpperCamelCase;
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{Ident, Path};

use crate::errors::display;
use crate::spans::{Range, Shown, checked};

pub struct TaskRef<'a> {
    path: &'a Path,
    pub alias: Ident,
    pub range: Range,
}

impl<'a> TaskRef<'a> {
    /// The `index`th task of a declaration; `kind` names the alias (`Step`, `Branch`).
    pub fn new(kind: &str, index: usize, path: &'a Path) -> TaskRef<'a> {
        let range = Range::of(path);
        TaskRef {
            path,
            alias: format_ident!("__Task{}{}", kind, index, span = range.last),
            range,
        }
    }

    /// `type __TaskStepN = ..;`, to be placed inside the expansion's `const _` block.
    pub fn alias_item(&self) -> TokenStream {
        let alias = &self.alias;
        let checked = checked(self.path, "is_task", true);
        quote_spanned!(self.range.last=> type #alias = #checked;)
    }

    /// `<Checked<..> as Task>::assoc`, for items outside the `const _` block, where the alias
    /// is not in scope. The check is the alias's own, so a failure is still reported once.
    pub fn checked_assoc(&self, assoc: &str) -> Shown {
        let name = Ident::new(assoc, self.range.last);
        let checked = checked(self.path, "is_task", true);
        Shown {
            checked: self.range.wrap(
                quote!(<),
                &checked,
                quote!(as ::task_runtime::__private::Task>::#name),
            ),
            plain: self.plain_assoc(&name),
        }
    }

    /// `<__TaskStepN as Task>::assoc`, underlining the user's path.
    pub fn assoc(&self, assoc: &str) -> TokenStream {
        let assoc = Ident::new(assoc, self.range.last);
        self.range.wrap(
            quote!(<),
            &self.alias,
            quote!(as ::task_runtime::__private::Task>::#assoc),
        )
    }

    /// [`assoc`](Self::assoc), shown in docs through the user's path.
    pub fn shown_assoc(&self, assoc: &str) -> Shown {
        Shown {
            checked: self.assoc(assoc),
            plain: self.plain_assoc(&Ident::new(assoc, self.range.last)),
        }
    }

    /// `<path as Task>::assoc`, for rustdoc.
    fn plain_assoc(&self, assoc: &Ident) -> TokenStream {
        let path = self.path;
        quote!(<#path as ::task_runtime::__private::Task>::#assoc)
    }
}

/// A step or branch written as a fn name (`parse_invoice`), with the handle to write instead.
/// `what` is "a step" or "a branch".
pub fn check_not_fn(path: &Path, what: &str) -> Option<syn::Error> {
    let last = path.segments.last()?;
    let name = last.ident.to_string();
    let name = name.trim_start_matches("r#");
    let lowercase = name.starts_with(|c: char| c.is_lowercase() || c == '_');
    if !lowercase || is_primitive(name) {
        return None;
    }
    let mut handle = path.clone();
    let segment = handle.segments.last_mut().expect("a last segment");
    segment.ident = Ident::new(&name.to_upper_camel_case(), segment.ident.span());
    let handle = display(&handle);
    Some(syn::Error::new_spanned(
        path,
        format!(
            "`{}` is a fn; {what} names its task by the handle, `{handle}` (`#[task]` names the \
             handle after the fn, in UpperCamelCase, unless it sets `handle = ..`)",
            display(path)
        ),
    ))
}

fn is_primitive(name: &str) -> bool {
    matches!(
        name,
        "bool"
            | "char"
            | "str"
            | "f32"
            | "f64"
            | "i8"
            | "i16"
            | "i32"
            | "i64"
            | "i128"
            | "isize"
            | "u8"
            | "u16"
            | "u32"
            | "u64"
            | "u128"
            | "usize"
    )
}
