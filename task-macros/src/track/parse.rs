//! Parsing `track! { /// docs  pub Name("id", options..) { Step, Step = |prev, original| .., } }`,
//! or, with the track's own input, `pub Name("id")(input: Input) { Step = |input| .., .. }`.

use proc_macro2::{Span, TokenStream};
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, Path, Token, braced};

use crate::errors::Errors;
use crate::header::Header;
use crate::options::POLICY_KEYS;

/// A track as declared.
pub struct TrackDef {
    pub header: Header,
    pub steps: Vec<Step>,
    /// The `{ .. }` holding the steps, for "empty track" errors.
    pub body_span: Span,
}

/// `Task` or `Task = mapper`.
pub struct Step {
    pub task: Path,
    pub mapper: Option<Expr>,
}

impl syn::parse::Parse for Step {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let task: Path = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected a step: a task handle, optionally `= |prev, original| ..`",
            )
        })?;
        let mapper = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(Step { task, mapper })
    }
}

pub fn parse(tokens: TokenStream, errors: &mut Errors) -> syn::Result<TrackDef> {
    let parser = |input: ParseStream| {
        let header = Header::parse(input, "track", &POLICY_KEYS, errors)?;
        let body;
        let brace = braced!(body in input);
        let steps = Punctuated::<Step, Token![,]>::parse_terminated(&body)?;
        if !input.is_empty() {
            return Err(input.error(
                "unexpected tokens after the track's steps; declare one track per `track!`",
            ));
        }
        Ok(TrackDef {
            header,
            steps: steps.into_iter().collect(),
            body_span: brace.span.join(),
        })
    };
    parser.parse2(tokens)
}
