//! Checking the fn's shape: `async fn name(ctx: &TaskContext, input: In) -> Result<Out, E>`.
//! Each mistake is reported at the tokens that make it.

use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, PathArguments, ReturnType, Type};

use super::parse::TaskDef;
use crate::errors::Errors;

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
    match (input, result) {
        (Some(input), Some((output, error))) => Some(Signature {
            input,
            output,
            error,
        }),
        _ => None,
    }
}

fn check_params(def: &TaskDef, errors: &mut Errors) -> Option<Type> {
    let sig = &def.item.sig;
    let params: Vec<&FnArg> = sig.inputs.iter().collect();
    if params.len() != 2 {
        let span = if sig.inputs.is_empty() {
            sig.paren_token.span.join()
        } else {
            sig.inputs.span()
        };
        errors.push(syn::Error::new(
            span,
            format!(
                "a task takes exactly 2 parameters, `(ctx: &TaskContext, input: YourInput)`, \
                 found {}",
                params.len()
            ),
        ));
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
    match ctx {
        Ok(ty) if is_ctx_ref(ty) => {}
        Ok(ty) => errors.push(syn::Error::new_spanned(
            ty,
            "the first parameter of a task must be `&TaskContext`",
        )),
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

/// `&TaskContext` or `&path::to::TaskContext`, not `&mut`.
fn is_ctx_ref(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) if r.mutability.is_none() => match &*r.elem {
            Type::Path(p) => p.qself.is_none()
                && p.path.segments.last().is_some_and(|s| {
                    s.ident == "TaskContext" && matches!(s.arguments, PathArguments::None)
                }),
            _ => false,
        },
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
            errors.push(syn::Error::new_spanned(&sig.ident, message));
            return None;
        }
    };
    let args = match &**ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().and_then(|s| {
            match (&s.arguments, s.ident == "Result") {
                (PathArguments::AngleBracketed(args), true) => Some(args),
                _ => None,
            }
        }),
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
