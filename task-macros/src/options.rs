//! Options shared by the three macros: `id = "..."`, `handle = Name`, `retry(..)`,
//! `timeout = "30s"`, `concurrency = N`, `failure = settle`, `on_success = path`,
//! `on_failure = path`, and for tasks `schedule = "0 * * * *"` or
//! `schedule(cron = "..", timezone = "Europe/Paris")`. Each macro says which keys it
//! accepts; unknown and duplicated keys are errors at the key, and every error is reported.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::meta::ParseNestedMeta;
use syn::{Ident, LitBool, LitFloat, LitInt, LitStr, Result};

use crate::errors::Errors;
use crate::spans::{Range, paren, respan};

/// Which option keys a macro accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Id,
    Handle,
    Retry,
    Timeout,
    Concurrency,
    Failure,
    OnSuccess,
    OnFailure,
    Schedule,
}

/// The options every kind accepts after its id: run policy and hooks.
pub const POLICY_KEYS: [Key; 5] = [
    Key::Retry,
    Key::Timeout,
    Key::Concurrency,
    Key::OnSuccess,
    Key::OnFailure,
];

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Id => "id",
            Key::Handle => "handle",
            Key::Retry => "retry",
            Key::Timeout => "timeout",
            Key::Concurrency => "concurrency",
            Key::Failure => "failure",
            Key::OnSuccess => "on_success",
            Key::OnFailure => "on_failure",
            Key::Schedule => "schedule",
        }
    }
}

/// A duration written as a friendly string (`"30s"`, `"1m 30s"`), checked at compile time.
pub struct DurationLit {
    pub nanos: u64,
    /// The string literal as written, for errors about it.
    pub lit: LitStr,
}

impl ToTokens for DurationLit {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        let nanos = self.nanos;
        tokens.extend(quote!(::task_runtime::__private::Duration::from_nanos(#nanos)));
    }
}

/// `retry(max_attempts = 3, factor = 2.0, min_delay = "100ms", max_delay = "10s", jitter = true)`.
#[derive(Default)]
pub struct Retry {
    max_attempts: Option<u32>,
    factor: Option<f64>,
    min_delay: Option<DurationLit>,
    max_delay: Option<DurationLit>,
    jitter: Option<bool>,
}

/// The failure policy of an orchestrator.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum Failure {
    #[default]
    FailFast,
    Settle,
}

/// Parsed options.
#[derive(Default)]
pub struct Options {
    pub id: Option<LitStr>,
    pub handle: Option<Ident>,
    pub retry: Option<Retry>,
    pub timeout: Option<DurationLit>,
    pub concurrency: Option<u32>,
    pub failure: Failure,
    /// `on_success = path::to::hook`: an `async fn(&HookEvent)` returning `()` or
    /// `Result<(), E: Display>`.
    pub on_success: Option<syn::Path>,
    pub on_failure: Option<syn::Path>,
    /// `schedule = ".."`: a five-field cron pattern, checked here, with its timezone.
    pub schedule: Option<Schedule>,
}

/// A cron schedule declared on a task.
pub struct Schedule {
    pub cron: LitStr,
    pub timezone: LitStr,
}

impl Schedule {
    fn parse(meta: &ParseNestedMeta, errors: &mut Errors) -> Result<Schedule> {
        let key = meta.path.require_ident()?.span();
        let (cron, timezone) = if meta.input.peek(syn::Token![=]) {
            (meta.value()?.parse::<LitStr>()?, None)
        } else {
            let (mut cron, mut timezone) = (None, None);
            meta.parse_nested_meta(|inner| {
                if inner.path.is_ident("cron") {
                    cron = Some(inner.value()?.parse::<LitStr>()?);
                } else if inner.path.is_ident("timezone") {
                    timezone = Some(inner.value()?.parse::<LitStr>()?);
                } else {
                    let written = inner.path.to_token_stream().to_string().replace(' ', "");
                    errors.push(inner.error(unknown(
                        "schedule option",
                        &written,
                        &["cron", "timezone"],
                    )));
                    return skip_value(&inner);
                }
                Ok(())
            })?;
            let Some(cron) = cron else {
                return Err(syn::Error::new(
                    key,
                    "`schedule(..)` needs `cron = \"..\"`, e.g. `schedule(cron = \"0 */6 * * *\", timezone = \"Europe/Paris\")`",
                ));
            };
            (cron, timezone)
        };
        if let Err(error) = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&cron.value())
        {
            errors.push(syn::Error::new(
                cron.span(),
                format!(
                    "invalid cron pattern \"{}\": {}; write five fields, minute hour \
                     day-of-month month day-of-week, e.g. \"0 */6 * * *\"",
                    cron.value(),
                    error.to_string().trim_end_matches('.')
                ),
            ));
        }
        let timezone = timezone.unwrap_or_else(|| LitStr::new("UTC", key));
        if timezone.value().parse::<chrono_tz::Tz>().is_err() {
            errors.push(syn::Error::new(
                timezone.span(),
                format!(
                    "unknown timezone \"{}\": use an IANA name such as \"UTC\", \
                     \"Europe/Paris\" or \"America/New_York\"",
                    timezone.value()
                ),
            ));
        }
        Ok(Schedule { cron, timezone })
    }

    /// `Some(ScheduleSpec { .. })` for the generated `Task::SCHEDULE`.
    pub fn tokens(schedule: &Option<Schedule>) -> TokenStream {
        match schedule {
            Some(Schedule { cron, timezone, .. }) => quote! {
                ::core::option::Option::Some(::task_runtime::__private::ScheduleSpec {
                    cron: #cron,
                    timezone: #timezone,
                })
            },
            None => quote!(::core::option::Option::None),
        }
    }
}

impl Options {
    /// Parses `key = value, key(..), ...`, accepting only `allowed` keys. Errors go to
    /// `errors`; parsing continues after each so all are reported.
    pub fn parse(tokens: TokenStream, allowed: &[Key], errors: &mut Errors) -> Options {
        let mut options = Options::default();
        let mut seen: Vec<(Key, Span)> = Vec::new();
        let parser = syn::meta::parser(|meta| {
            let Some(key) = allowed
                .iter()
                .copied()
                .find(|key| meta.path.is_ident(key.name()))
            else {
                let written = meta.path.to_token_stream().to_string().replace(' ', "");
                let names: Vec<&str> = allowed.iter().map(|k| k.name()).collect();
                errors.push(meta.error(unknown("option", &written, &names)));
                return skip_value(&meta);
            };
            let span = meta.path.require_ident()?.span();
            if seen.iter().any(|(k, _)| *k == key) {
                errors.push(syn::Error::new(
                    span,
                    format!("option `{}` is given twice; keep one", key.name()),
                ));
                return skip_value(&meta);
            }
            seen.push((key, span));
            if let Err(error) = options.parse_value(key, &meta, errors) {
                errors.push(error);
                return skip_value(&meta);
            }
            Ok(())
        });
        if let Err(error) = syn::parse::Parser::parse2(parser, tokens) {
            errors.push(error);
        }
        options
    }

    fn parse_value(&mut self, key: Key, meta: &ParseNestedMeta, errors: &mut Errors) -> Result<()> {
        match key {
            Key::Id => {
                let lit: LitStr = meta.value()?.parse()?;
                if let Err(error) = check_id(&lit) {
                    errors.push(error);
                }
                self.id = Some(lit);
            }
            Key::Handle => self.handle = Some(meta.value()?.parse()?),
            Key::Timeout => {
                let lit: LitStr = meta.value()?.parse()?;
                let timeout = duration(&lit)?;
                if timeout.nanos == 0 {
                    errors.push(syn::Error::new(
                        lit.span(),
                        "a timeout of zero would end every attempt before it starts; \
                         leave `timeout` out for no timeout, or write e.g. \"30s\"",
                    ));
                }
                self.timeout = Some(timeout);
            }
            Key::Concurrency => {
                let lit: LitInt = meta.value()?.parse()?;
                let n: u32 = lit.base10_parse()?;
                if n == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`concurrency` (how many runs at once) must be at least 1",
                    ));
                }
                self.concurrency = Some(n);
            }
            Key::Failure => {
                let ident: Ident = meta.value()?.parse()?;
                self.failure = match ident.to_string().as_str() {
                    "fail_fast" => Failure::FailFast,
                    "settle" => Failure::Settle,
                    other => {
                        return Err(syn::Error::new(
                            ident.span(),
                            format!(
                                "unknown failure policy `{other}`; expected `fail_fast` (the \
                                 default: the first failing branch cancels the others) or \
                                 `settle` (every branch runs to its end)"
                            ),
                        ));
                    }
                }
            }
            Key::Retry => self.retry = Some(Retry::parse(meta, errors)?),
            Key::OnSuccess => self.on_success = Some(meta.value()?.parse()?),
            Key::OnFailure => self.on_failure = Some(meta.value()?.parse()?),
            Key::Schedule => self.schedule = Some(Schedule::parse(meta, errors)?),
        }
        Ok(())
    }

    /// The `Task` hook items: nothing without hooks (the trait's defaults build no event).
    pub fn hooks(&self) -> TokenStream {
        if self.on_success.is_none() && self.on_failure.is_none() {
            return TokenStream::new();
        }
        let p = quote!(::task_runtime::__private);
        let hook = |name: &str, path: &Option<syn::Path>| {
            let method = Ident::new(name, Span::call_site());
            let body = match path {
                // `call_hook(path, event)` covers the user's path, so a hook of the wrong
                // signature is reported there, with `call_hook`'s message.
                Some(path) => {
                    let range = Range::of(path);
                    let call = respan(quote!(#p::call_hook), range.first);
                    let args = paren(quote!(#path, event), range.last);
                    quote_spanned! {range.first=>
                        #p::hook(#name, <Self as #p::Task>::ID, #call #args)
                    }
                }
                None => quote!(#p::no_hook()),
            };
            quote! {
                fn #method(
                    event: &#p::HookEvent,
                ) -> impl #p::Future<Output = ()> + ::core::marker::Send + '_ {
                    #body
                }
            }
        };
        let on_success = hook("on_success", &self.on_success);
        let on_failure = hook("on_failure", &self.on_failure);
        quote! {
            const HAS_HOOKS: bool = true;
            #on_success
            #on_failure
        }
    }

    /// `RunPolicy { .. }` for the generated `Task::POLICY`.
    pub fn policy(&self) -> TokenStream {
        let retry = match &self.retry {
            Some(retry) => {
                let r = retry.tokens();
                quote!(::core::option::Option::Some(#r))
            }
            None => quote!(::core::option::Option::None),
        };
        let timeout = match &self.timeout {
            Some(d) => quote!(::core::option::Option::Some(#d)),
            None => quote!(::core::option::Option::None),
        };
        let concurrency = match self.concurrency {
            Some(n) => quote!(::core::option::Option::Some(#n)),
            None => quote!(::core::option::Option::None),
        };
        quote! {
            ::task_runtime::__private::RunPolicy {
                retry: #retry,
                timeout: #timeout,
                concurrency: #concurrency,
            }
        }
    }
}

impl Retry {
    fn parse(meta: &ParseNestedMeta, errors: &mut Errors) -> Result<Retry> {
        let mut retry = Retry::default();
        let mut seen: Vec<String> = Vec::new();
        meta.parse_nested_meta(|inner| {
            let name = inner.path.require_ident()?.to_string();
            if seen.contains(&name) {
                errors.push(inner.error(format!("retry option `{name}` is given twice; keep one")));
                return skip_value(&inner);
            }
            seen.push(name.clone());
            let value = inner.value()?;
            match name.as_str() {
                "max_attempts" => {
                    let lit: LitInt = value.parse()?;
                    let n: u32 = lit.base10_parse()?;
                    if n == 0 {
                        errors.push(syn::Error::new(
                            lit.span(),
                            "`max_attempts` counts the first attempt and must be at least 1",
                        ));
                    }
                    retry.max_attempts = Some(n.max(1));
                }
                "factor" => {
                    let (factor, span) = if value.peek(LitFloat) {
                        let lit: LitFloat = value.parse()?;
                        (lit.base10_parse::<f64>()?, lit.span())
                    } else {
                        let lit: LitInt = value.parse()?;
                        (lit.base10_parse::<f64>()?, lit.span())
                    };
                    if !(factor >= 1.0 && factor.is_finite()) {
                        errors.push(syn::Error::new(span, "`factor` must be at least 1.0"));
                    }
                    retry.factor = Some(factor);
                }
                "min_delay" => retry.min_delay = Some(duration(&value.parse()?)?),
                "max_delay" => retry.max_delay = Some(duration(&value.parse()?)?),
                "jitter" => retry.jitter = Some(value.parse::<LitBool>()?.value),
                _ => {
                    errors.push(inner.error(unknown("retry option", &name, &RETRY_KEYS)));
                    value.parse::<syn::Expr>()?;
                }
            }
            Ok(())
        })?;
        if let (Some(min), Some(max)) = (&retry.min_delay, &retry.max_delay)
            && min.nanos > max.nanos
        {
            errors.push(syn::Error::new(
                min.lit.span(),
                format!(
                    "`min_delay` ({}) is longer than `max_delay` ({})",
                    min.lit.value(),
                    max.lit.value()
                ),
            ));
        }
        Ok(retry)
    }

    fn tokens(&self) -> TokenStream {
        let none = quote!(::task_runtime::__private::RetryPolicy::NONE);
        let max_attempts = match self.max_attempts {
            Some(n) => quote!(#n),
            None => quote!(3u32),
        };
        let factor = match self.factor {
            Some(f) => quote!(#f),
            None => quote!(#none.factor),
        };
        let min_delay = match &self.min_delay {
            Some(d) => quote!(#d),
            None => quote!(#none.min_delay),
        };
        let max_delay = match &self.max_delay {
            Some(d) => quote!(#d),
            None => quote!(#none.max_delay),
        };
        let jitter = self.jitter.unwrap_or(false);
        quote! {
            ::task_runtime::__private::RetryPolicy {
                max_attempts: #max_attempts,
                factor: #factor,
                min_delay: #min_delay,
                max_delay: #max_delay,
                jitter: #jitter,
            }
        }
    }
}

/// The keys of `retry(..)`.
const RETRY_KEYS: [&str; 5] = ["max_attempts", "factor", "min_delay", "max_delay", "jitter"];

/// "unknown option `retries`; did you mean `retry`? expected one of: ..": the closest key is
/// suggested when it is near enough to be a typo (at least 0.7 Jaro-Winkler similarity, which
/// `retries`/`retry` and `on_sucess`/`on_success` pass and unrelated words do not).
fn unknown(what: &str, written: &str, keys: &[&str]) -> String {
    let closest = keys
        .iter()
        .map(|key| (strsim::jaro_winkler(written, key), key))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, key)| format!(" did you mean `{key}`?"))
        .unwrap_or_default();
    let expected: Vec<String> = keys.iter().map(|key| format!("`{key}`")).collect();
    format!(
        "unknown {what} `{written}`;{closest} expected one of: {}",
        expected.join(", ")
    )
}

/// Skips `= value` or `(..)` after a key we refused, so parsing can go on.
fn skip_value(meta: &ParseNestedMeta) -> Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip_value(&inner))?;
    }
    Ok(())
}

fn duration(lit: &LitStr) -> Result<DurationLit> {
    let text = lit.value();
    let parsed = humantime::parse_duration(&text).map_err(|e| {
        syn::Error::new(
            lit.span(),
            format!("invalid duration \"{text}\": {e}; write e.g. \"500ms\", \"30s\", \"1m 30s\""),
        )
    })?;
    let nanos = u64::try_from(parsed.as_nanos())
        .map_err(|_| syn::Error::new(lit.span(), "duration is too long"))?;
    Ok(DurationLit {
        nanos,
        lit: lit.clone(),
    })
}

/// Ids are what users type on the command line and in API calls: keep them plain.
pub fn check_id(lit: &LitStr) -> Result<()> {
    let id = lit.value();
    if id.is_empty() {
        return Err(syn::Error::new(lit.span(), "a task id cannot be empty"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "invalid character {bad:?} in task id \"{id}\": use letters, digits, `_`, `-`, `.` or `:`"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unknown;

    const TASK_KEYS: [&str; 7] = [
        "id",
        "handle",
        "retry",
        "timeout",
        "concurrency",
        "on_success",
        "on_failure",
    ];

    fn suggestion(written: &str) -> Option<String> {
        let message = unknown("option", written, &TASK_KEYS);
        let (_, rest) = message.split_once("did you mean `")?;
        Some(rest.split('`').next()?.to_owned())
    }

    #[test]
    fn typos_get_the_closest_key() {
        assert_eq!(suggestion("retries").as_deref(), Some("retry"));
        assert_eq!(suggestion("idd").as_deref(), Some("id"));
        assert_eq!(suggestion("on_sucess").as_deref(), Some("on_success"));
        assert_eq!(suggestion("timout").as_deref(), Some("timeout"));
        assert_eq!(suggestion("concurency").as_deref(), Some("concurrency"));
    }

    #[test]
    fn unrelated_words_get_no_suggestion() {
        for written in ["queue", "max_duration", "tags", "x"] {
            assert_eq!(suggestion(written), None, "{written}");
        }
    }
}
