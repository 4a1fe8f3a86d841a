//! Parsing `orchestrator! { /// docs  pub Name("id", options..)(input: Input) { branches } }`
//! where a branch is `name: Task`, `name: Task = |input| ..` or
//! `name: each(items) => Task, concurrency = N`.

use proc_macro2::{Span, TokenStream};
use syn::parse::{ParseStream, Parser};
use syn::{Expr, Ident, LitInt, Path, Token, braced, parenthesized};

use crate::errors::Errors;
use crate::header::Header;
use crate::options::{Key, POLICY_KEYS};

/// An orchestrator as declared; its input is the header's `(input: DocsInput)`, which
/// `check` requires.
pub struct OrchestratorDef {
    pub header: Header,
    pub branches: Vec<Branch>,
    pub body_span: Span,
}

/// One named branch.
pub struct Branch {
    pub name: Ident,
    pub task: Path,
    pub source: Source,
}

/// Where a branch's input comes from.
pub enum Source {
    /// The orchestrator input, cloned and converted with `Into`.
    Cloned,
    /// `= |input| ..`: a mapper from `&Input`.
    Mapper(Expr),
    /// `each(items)`: one run per item, `items` a closure over `&Input` or an expression.
    Each {
        items: Expr,
        concurrency: Option<LitInt>,
    },
}

fn parse_branch(input: ParseStream) -> syn::Result<Branch> {
    let name: Ident = input.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            "expected a branch: `name: Task`, `name: Task = |input| ..` or `name: each(..) => Task`",
        )
    })?;
    input.parse::<Token![:]>()?;
    let is_each = input.peek(Ident) && input.peek2(syn::token::Paren) && {
        let fork = input.fork();
        fork.parse::<Ident>().is_ok_and(|ident| ident == "each")
    };
    if is_each {
        input.parse::<Ident>()?;
        let content;
        parenthesized!(content in input);
        let items: Expr = content.parse()?;
        input.parse::<Token![=>]>()?;
        let task: Path = input.parse()?;
        let concurrency = if input.peek(Token![,]) && is_concurrency(&input.fork()) {
            input.parse::<Token![,]>()?;
            input.parse::<Ident>()?;
            input.parse::<Token![=]>()?;
            Some(input.parse::<LitInt>()?)
        } else {
            None
        };
        return Ok(Branch {
            name,
            task,
            source: Source::Each { items, concurrency },
        });
    }
    let task: Path = input.parse()?;
    let source = if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Source::Mapper(input.parse()?)
    } else {
        Source::Cloned
    };
    Ok(Branch { name, task, source })
}

/// `, concurrency =` follows (rather than the next branch's `name:`).
fn is_concurrency(fork: ParseStream) -> bool {
    fork.parse::<Token![,]>().is_ok()
        && fork
            .parse::<Ident>()
            .is_ok_and(|ident| ident == "concurrency")
        && fork.peek(Token![=])
}

pub fn parse(tokens: TokenStream, errors: &mut Errors) -> syn::Result<OrchestratorDef> {
    let parser = |input: ParseStream| {
        let header = Header::parse(
            input,
            "orchestrator",
            &[&[Key::Failure][..], &POLICY_KEYS[..]].concat(),
            errors,
        )?;
        let body;
        let brace = braced!(body in input);
        let mut branches = Vec::new();
        while !body.is_empty() {
            branches.push(parse_branch(&body)?);
            if body.is_empty() {
                break;
            }
            body.parse::<Token![,]>()?;
        }
        if !input.is_empty() {
            return Err(input.error(
                "unexpected tokens after the branches; declare one orchestrator per `orchestrator!`",
            ));
        }
        Ok(OrchestratorDef {
            header,
            branches,
            body_span: brace.span.join(),
        })
    };
    parser.parse2(tokens)
}
