//! Checking an orchestrator's shape; type agreement is left to the compiler through the
//! spanned helpers the expansion calls.

use syn::Expr;

use super::parse::{OrchestratorDef, Source};
use crate::closures::params;
use crate::errors::Errors;
use crate::task_ref::check_not_fn;

pub fn check(def: &OrchestratorDef, errors: &mut Errors) {
    if def.branches.is_empty() {
        errors.push(syn::Error::new(
            def.body_span,
            "an orchestrator needs at least one branch: `{ name: Task, .. }`",
        ));
    }
    let header = &def.header;
    let input_name = header.input.as_ref().map(|input| &input.name);
    if input_name.is_none() {
        errors.push(syn::Error::new(
            header.id_span,
            format!(
                "an orchestrator declares its input after the id: `{}(\"{}\")(input: YourInput) \
                 {{ .. }}`",
                header.handle,
                header.id.value()
            ),
        ));
    }
    for (i, branch) in def.branches.iter().enumerate() {
        if def.branches[..i].iter().any(|b| b.name == branch.name) {
            errors.push(syn::Error::new_spanned(
                &branch.name,
                format!(
                    "two branches are named `{}`; each branch needs its own name (it is a field \
                     of the output struct)",
                    branch.name
                ),
            ));
        }
        if let Some(input_name) = input_name
            && branch.name == *input_name
        {
            errors.push(syn::Error::new_spanned(
                &branch.name,
                format!("a branch cannot be named like the input binding `{input_name}`"),
            ));
        }
        if let Some(error) = check_not_fn(&branch.task, "a branch") {
            errors.push(error);
        }
        match &branch.source {
            Source::Mapper(Expr::Closure(closure)) if closure.inputs.len() != 1 => {
                errors.push(syn::Error::new_spanned(
                    params(closure),
                    format!(
                        "a branch mapper takes 1 parameter, `|input|` (a reference to the \
                         orchestrator's input), found {}",
                        closure.inputs.len()
                    ),
                ));
            }
            Source::Mapper(Expr::Closure(_)) => {}
            Source::Mapper(other) => errors.push(syn::Error::new_spanned(
                other,
                "a branch mapper is a closure `|input| BranchInput { .. }`",
            )),
            Source::Each {
                items: Expr::Closure(closure),
                ..
            } if closure.inputs.len() != 1 => errors.push(syn::Error::new_spanned(
                params(closure),
                "`each(|input| ..)` takes 1 parameter: a reference to the orchestrator's input",
            )),
            Source::Each {
                concurrency: Some(n),
                ..
            } => match n.base10_parse::<u32>() {
                Ok(0) => errors.push(syn::Error::new_spanned(
                    n,
                    "`concurrency` (how many items run at once) must be at least 1",
                )),
                Ok(_) => {}
                Err(error) => errors.push(error),
            },
            Source::Each { .. } | Source::Cloned => {}
        }
    }
}
