//! Checking a track's shape; type agreement between steps is left to the compiler, through
//! the spanned helpers the expansion calls.

use syn::Expr;

use super::parse::TrackDef;
use crate::errors::Errors;

pub fn check(def: &TrackDef, errors: &mut Errors) {
    if def.steps.is_empty() {
        errors.push(syn::Error::new(
            def.body_span,
            "a track needs at least one step: `{ FirstTask, SecondTask = |prev, original| .. }`",
        ));
    }
    if let Some(first) = def.steps.first()
        && let Some(mapper) = &first.mapper
    {
        errors.push(syn::Error::new_spanned(
            mapper,
            "the first step receives the track's input as it is and takes no mapper",
        ));
    }
    for step in def.steps.iter().skip(1) {
        match &step.mapper {
            Some(Expr::Closure(closure)) if closure.inputs.len() != 2 => {
                errors.push(syn::Error::new_spanned(
                    &closure.inputs,
                    format!(
                        "a step mapper takes 2 parameters, `|prev, original|` (the previous \
                         step's output and a reference to the track's input), found {}",
                        closure.inputs.len()
                    ),
                ));
            }
            Some(Expr::Closure(_)) | None => {}
            Some(other) => errors.push(syn::Error::new_spanned(
                other,
                "a step mapper is a closure `|prev, original| NextInput { .. }`",
            )),
        }
    }
}
