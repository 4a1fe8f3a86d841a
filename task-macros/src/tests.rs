//! What the expansions look like where no compiler message shows it: the generated docs.
//! (Messages are locked by the trybuild cases in `tests/ui`.)

use quote::quote;

/// The expansion as a string without spaces, for substring checks.
fn compact(tokens: proc_macro2::TokenStream) -> String {
    tokens.to_string().replace(' ', "")
}

#[test]
fn rustdoc_sees_a_tasks_own_types_and_the_compiler_the_checked_ones() {
    let out = compact(crate::task::expand(
        quote!(id = "extract_text"),
        quote!(
            pub async fn extract_text(
                ctx: &TaskContext,
                input: ExtractInput,
            ) -> Result<TextOutput, ExtractError> {
                read(ctx, input).await
            }
        ),
    ));
    assert!(out.contains("#[cfg(doc)]typeInput=ExtractInput;"), "{out}");
    assert!(out.contains("#[cfg(doc)]typeOutput=TextOutput;"), "{out}");
    assert!(
        out.contains("#[cfg(not(doc))]typeInput=::task_runtime::__private::Checked<ExtractInput"),
        "{out}"
    );
}

#[test]
fn rustdoc_sees_a_tracks_types_through_the_users_paths() {
    let out = compact(crate::track::expand(quote!(
        pub TextTrack("text_track") {
            ExtractText,
            tasks::CountWords = |prev, original| CountInput { text: prev.text },
        }
    )));
    let task = "::task_runtime::__private::Task";
    assert!(
        out.contains(&format!(
            "#[cfg(doc)]typeInput=<ExtractTextas{task}>::Input;"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "#[cfg(doc)]typeOutput=<tasks::CountWordsas{task}>::Output;"
        )),
        "{out}"
    );

    let out = compact(crate::track::expand(quote!(
        pub OrderTrack("order_track")(input: OrderInput) {
            ExtractText = |input| ExtractInput { path: input.path.clone() },
        }
    )));
    assert!(out.contains("#[cfg(doc)]typeInput=OrderInput;"), "{out}");
}

#[test]
fn rustdoc_sees_an_orchestrators_fields_through_the_users_paths() {
    let out = compact(crate::orchestrator::expand(quote!(
        pub Docs("docs", failure = settle)(input: DocsInput) {
            stats: TextTrack = |input| input.primary.clone(),
            files: each(input.files.clone()) => TextTrack,
        }
    )));
    let task = "::task_runtime::__private::Task";
    assert!(
        out.contains(&format!(
            "#[cfg(doc)]#[doc=\"Outputofbranch`stats`(`TextTrack`).\"]pubstats:::task_runtime::__private::Outcome<<TextTrackas{task}>::Output>,"
        )),
        "{out}"
    );
    assert!(out.contains("#[cfg(doc)]typeInput=DocsInput;"), "{out}");
    assert!(
        !out.contains("#[cfg(doc)]typeInput=::task_runtime::__private::Checked"),
        "{out}"
    );
}
