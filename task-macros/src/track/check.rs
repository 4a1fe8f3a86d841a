//! Checking a track's shape; type agreement between steps is left to the compiler, through
//! the spanned helpers the expansion calls.
//!
//! A step's mapper depends on where the step is: the first step's mapper exists only when
//! the track declares its own input (`(input: TrackInput)`) and takes `|input|`; every later
//! one takes `|prev, original|`.

use syn::Expr;

use super::parse::TrackDef;
use crate::closures::params;
use crate::errors::{Errors, display};
use crate::task_ref::check_not_fn;

pub fn check(def: &TrackDef, errors: &mut Errors) {
    if def.steps.is_empty() {
        errors.push(syn::Error::new(
            def.body_span,
            "a track needs at least one step: `{ FirstTask, SecondTask = |prev, original| .. }`",
        ));
    }
    for step in &def.steps {
        if let Some(error) = check_not_fn(&step.task, "a step") {
            errors.push(error);
        }
    }
    let declared = def.header.input.is_some();
    for (index, step) in def.steps.iter().enumerate() {
        let Some(mapper) = &step.mapper else { continue };
        let first = index == 0;
        let expected = if first { 1 } else { 2 };
        match mapper {
            _ if first && !declared => {
                let header = &def.header;
                errors.push(syn::Error::new_spanned(
                    mapper,
                    format!(
                        "the first step receives the track's input as it is; to map it, declare \
                         the track's own input after the id: `{}(\"{}\")(input: YourInput) {{ \
                         {} = |input| .. }}`",
                        header.handle,
                        header.id.value(),
                        display(&step.task)
                    ),
                ));
            }
            Expr::Closure(closure) if closure.inputs.len() != expected => {
                let message = if first {
                    "the first step's mapper takes 1 parameter, `|input|` (a reference to the \
                     track's input)"
                } else {
                    "a step mapper takes 2 parameters, `|prev, original|` (the previous step's \
                     output and a reference to the track's input)"
                };
                errors.push(syn::Error::new_spanned(
                    params(closure),
                    format!("{message}, found {}", closure.inputs.len()),
                ));
            }
            Expr::Closure(_) => {}
            other => errors.push(syn::Error::new_spanned(
                other,
                if first {
                    "the first step's mapper is a closure `|input| FirstInput { .. }`"
                } else {
                    "a step mapper is a closure `|prev, original| NextInput { .. }`"
                },
            )),
        }
    }
}
