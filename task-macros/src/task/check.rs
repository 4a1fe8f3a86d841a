//! Checking the fn's shape: `async fn name(ctx: &TaskContext, input: In) -> Result<Out, E>`.
//! Each mistake is reported at the tokens that make it.

use syn::{FnArg, GenericArgument, PathArguments, ReturnType, Type};

use super::parse::TaskDef;
use crate::errors::{Errors, display};

/// The types the expansion needs.
pub struct Signature {
    pub input: Type,
    pub output: Type,
    pub error: Type,
}

pub fn check(def: &TaskDef, errors: &mut Errors) -> Option<Signature> {
    let sig = &def.item.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            "a task must be an `async fn`: add `async` before `fn`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a task fn cannot be generic: its input and output types must be concrete so their \
             schemas can be generated",
        ));
    }
    let input = check_params(def, errors);
    let result = check_return(def, errors);
    if let Some(ty) = handle_taken_by(def, input.as_ref(), result.as_ref().map(|(out, _)| out)) {
        let handle = &def.handle;
        errors.push(syn::Error::new_spanned(
            ty,
            format!(
                "`{handle}` is both this type and the name of the task's handle (by default \
                 the fn name in UpperCamelCase); name the handle otherwise, e.g. \
                 `#[task(handle = {handle}Task)]`"
            ),
        ));
    }
    match (input, result) {
        (Some(input), Some((output, error))) => Some(Signature {
            input,
            output,
            error,
        }),
        _ => None,
    }
}

/// The input or output type named like the handle, which the handle struct would clash with.
fn handle_taken_by<'a>(
    def: &TaskDef,
    input: Option<&'a Type>,
    output: Option<&'a Type>,
) -> Option<&'a Type> {
    [input, output].into_iter().flatten().find(|ty| match ty {
        Type::Path(p) => p.qself.is_none() && p.path.is_ident(&def.handle),
        _ => false,
    })
}

/// Whether the handle's name is taken by the input or output type: the fallback then leaves
/// the handle out, so only the error above is reported.
pub fn handle_is_taken(def: &TaskDef) -> bool {
    let mut ignored = Errors::default();
    let input = check_params(def, &mut ignored);
    let result = check_return(def, &mut ignored);
    handle_taken_by(def, input.as_ref(), result.as_ref().map(|(out, _)| out)).is_some()
}

fn check_params(def: &TaskDef, errors: &mut Errors) -> Option<Type> {
    let sig = &def.item.sig;
    let params: Vec<&FnArg> = sig.inputs.iter().collect();
    if params.len() != 2 {
        let expected = "a task takes 2 parameters: `(ctx: &TaskContext, input: YourInput)`";
        let error = match params.as_slice() {
            [] => syn::Error::new(
                sig.paren_token.span.join(),
                format!("{expected}, found none"),
            ),
            [only] if !is_ctx(only) => syn::Error::new_spanned(
                only,
                format!("{expected}; add `ctx: &TaskContext` before this one"),
            ),
            [only] => {
                syn::Error::new_spanned(only, format!("{expected}; add the input after this one"))
            }
            [_, _] => unreachable!("two parameters are accepted"),
            [_, _, extra @ ..] => {
                let extra: Vec<&&FnArg> = extra.iter().collect();
                let mut error = syn::Error::new_spanned(
                    extra[0],
                    format!(
                        "{expected}, found {}; pass more data as fields of the input type",
                        params.len()
                    ),
                );
                for more in &extra[1..] {
                    error.combine(syn::Error::new_spanned(more, "another extra parameter"));
                }
                error
            }
        };
        errors.push(error);
        return None;
    }
    let mut typed = params.iter().map(|param| match param {
        FnArg::Typed(pat_type) => Ok(&*pat_type.ty),
        FnArg::Receiver(receiver) => Err(syn::Error::new_spanned(
            receiver,
            "a task is a free fn: it cannot take `self`",
        )),
    });
    let ctx = typed.next().expect("two params");
    let input = typed.next().expect("two params");
    let input = input.and_then(|ty| match ty {
        // `type Input = &In` cannot be: rustc would say "missing lifetime in associated type"
        // and suggest `&&In`. Only this is reported, at the `&`.
        Type::Reference(reference) => {
            let name = match params[1] {
                FnArg::Typed(pat_type) => display(&pat_type.pat),
                FnArg::Receiver(_) => "input".to_owned(),
            };
            Err(syn::Error::new_spanned(
                reference.and_token,
                format!(
                    "a task takes its input by value: `{name}: {}`",
                    display(&reference.elem)
                ),
            ))
        }
        ty => Ok(ty),
    });
    match ctx {
        Ok(ty) => {
            if let Some(message) = ctx_mistake(ty) {
                errors.push(syn::Error::new_spanned(ty, message));
            }
        }
        Err(error) => errors.push(error),
    }
    match input {
        Ok(ty) => Some(ty.clone()),
        Err(error) => {
            errors.push(error);
            None
        }
    }
}

/// Whether a parameter looks like the context (for the "which one is missing" hint).
fn is_ctx(param: &FnArg) -> bool {
    match param {
        FnArg::Typed(pat_type) => names_ctx(&pat_type.ty),
        FnArg::Receiver(_) => false,
    }
}

/// What is wrong with the first parameter's type, if anything.
fn ctx_mistake(ty: &Type) -> Option<&'static str> {
    match ty {
        Type::Reference(r) if names_ctx(&r.elem) && r.mutability.is_some() => Some(
            "the first parameter of a task must be `&TaskContext`: the context is shared, \
             take it by `&`, not `&mut`",
        ),
        Type::Reference(r) if names_ctx(&r.elem) => None,
        ty if names_ctx(ty) => Some(
            "the first parameter of a task must be `&TaskContext`: take the context by \
             reference",
        ),
        _ => Some("the first parameter of a task must be `ctx: &TaskContext`"),
    }
}

/// `TaskContext` or `path::to::TaskContext`, behind any number of references.
fn names_ctx(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => names_ctx(&r.elem),
        Type::Path(p) => {
            p.qself.is_none()
                && p.path.segments.last().is_some_and(|s| {
                    s.ident == "TaskContext" && matches!(s.arguments, PathArguments::None)
                })
        }
        _ => false,
    }
}

fn check_return(def: &TaskDef, errors: &mut Errors) -> Option<(Type, Type)> {
    let sig = &def.item.sig;
    let message = "a task must return `Result<YourOutput, YourError>` (the error may be \
                   `TaskError` or any `std::error::Error + Send + Sync + 'static`)";
    let ty = match &sig.output {
        ReturnType::Type(_, ty) => ty,
        ReturnType::Default => {
            errors.push(syn::Error::new(
                sig.paren_token.span.close(),
                format!("{message}; add `-> Result<YourOutput, TaskError>` after the parameters"),
            ));
            return None;
        }
    };
    let args = match &**ty {
        Type::Path(p) if p.qself.is_none() => {
            p.path
                .segments
                .last()
                .and_then(|s| match (&s.arguments, s.ident == "Result") {
                    (PathArguments::AngleBracketed(args), true) => Some(args),
                    _ => None,
                })
        }
        _ => None,
    };
    let types: Vec<&Type> = args
        .map(|args| {
            args.args
                .iter()
                .filter_map(|arg| match arg {
                    GenericArgument::Type(ty) => Some(ty),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match types.as_slice() {
        [output, error] => Some(((*output).clone(), (*error).clone())),
        _ => {
            errors.push(syn::Error::new_spanned(ty, message));
            None
        }
    }
}
