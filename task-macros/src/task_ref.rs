//! A task named inside `track!` or `orchestrator!` (a step or a branch). The expansion names
//! it only through a local alias, `type __TaskStep0 = Checked<.., { is_task::<..>() }>;`,
//! spanned at the path as written: a path that is not a task is reported once, there, and
//! every other use of the alias stays silent.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{Ident, Path};

use crate::spans::{Range, checked};

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
    pub fn checked_assoc(&self, assoc: &str) -> TokenStream {
        let assoc = Ident::new(assoc, self.range.last);
        let checked = checked(self.path, "is_task", true);
        self.range.wrap(
            quote!(<),
            &checked,
            quote!(as ::task_runtime::__private::Task>::#assoc),
        )
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
}
