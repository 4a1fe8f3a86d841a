//! Collects every error a macro finds, so a user fixes all mistakes in one build, and
//! writes the user's tokens back into messages.

/// Accumulated `syn::Error`s, combined into one.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(existing) => existing.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// `Err` with every collected error, or `Ok` when there were none.
    pub fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Tokens as a user would write them in a message: `Vec<String>`, not `Vec < String >`.
pub fn display(tokens: &impl quote::ToTokens) -> String {
    // Arrows are set aside first, so the rules about `>` leave `->` and `=>` alone.
    let mut text = tokens
        .to_token_stream()
        .to_string()
        .replace("->", "\u{1}")
        .replace("=>", "\u{2}");
    for (spaced, tight) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" < ", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("& ", "&"),
        (" (", "("),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" ;", ";"),
    ] {
        text = text.replace(spaced, tight);
    }
    text.replace('\u{1}', "->").replace('\u{2}', "=>")
}

#[cfg(test)]
mod tests {
    use super::display;

    #[test]
    fn types_read_as_written() {
        let cases = [
            (quote::quote!(Vec<String>), "Vec<String>"),
            (
                quote::quote!(&'a mut std::vec::Vec<(u8, i32)>),
                "&'a mut std::vec::Vec<(u8, i32)>",
            ),
            (
                quote::quote!(Box<dyn Fn(u8) -> Result<(), E> + Send>),
                "Box<dyn Fn(u8) -> Result<(), E> + Send>",
            ),
            (quote::quote!([u8; 4]), "[u8; 4]"),
            (
                quote::quote!(::core::option::Option<T>),
                "::core::option::Option<T>",
            ),
        ];
        for (tokens, expected) in cases {
            assert_eq!(display(&tokens), expected);
        }
    }
}
