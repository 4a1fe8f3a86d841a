//! The expansion must not depend on what the user's module names: every item generated
//! code uses is reached by an absolute path (STYLE.md point 8).
#![allow(dead_code, non_snake_case, non_camel_case_types)]

/// The user's data types; their own derives need the real `serde` and `schemars` in scope.
mod types {
    use ::task_runtime::prelude::*;

    #[derive(Debug, ::core::clone::Clone, Serialize, Deserialize, JsonSchema)]
    pub struct WordsInput {
        #[serde(flatten)]
        pub base: BaseInput,
        pub text: ::std::string::String,
        pub texts: ::std::vec::Vec<::std::string::String>,
    }

    #[derive(Debug, ::core::clone::Clone, Serialize, Deserialize, JsonSchema)]
    pub struct WordsOutput {
        pub words: usize,
    }
}

mod user {
    use super::types::*;
    use ::task_runtime::prelude::*;

    // Shadow everything the expansion could name by a bare path.
    pub type Result = ();
    pub type Option = ();
    pub struct Send;
    pub struct Sync;
    pub struct Future;
    pub struct Task;
    pub struct Box;
    pub struct Vec;
    pub struct String;
    pub struct Into;
    pub struct From;
    pub struct Clone;
    pub struct Default;
    pub struct Duration;
    pub fn Ok() {}
    pub fn Err() {}
    pub fn Some() {}
    pub const None: () = ();
    pub mod serde {}
    pub mod schemars {}
    pub mod inventory {}
    pub mod task_runtime {}

    /// Counts words.
    #[task(
        id = "hygiene_words",
        retry(max_attempts = 2, min_delay = "1ms"),
        timeout = "1s",
        concurrency = 1
    )]
    pub async fn words(
        _ctx: &TaskContext,
        input: WordsInput,
    ) -> ::core::result::Result<WordsOutput, TaskError> {
        ::core::result::Result::Ok(WordsOutput {
            words: input.text.split_whitespace().count(),
        })
    }

    track! {
        /// Counts twice.
        pub HygieneTrack("hygiene_track", retry(max_attempts = 2), timeout = "2s") {
            Words,
            Words = |prev, original| WordsInput { base: original.base.clone(), text: ::std::format!("{}", prev.words), texts: ::std::vec::Vec::new() },
        }
    }

    orchestrator! {
        /// Counts in parallel.
        pub HygieneOrchestrator("hygiene_orchestrator", failure = settle)(input: WordsInput) {
            direct: Words,
            tracked: HygieneTrack = |input| input.clone(),
            each_text: each(|input| input.texts.iter().map(|t| WordsInput { base: input.base.clone(), text: t.clone(), texts: ::std::vec::Vec::new() }).collect::<::std::vec::Vec<_>>()) => Words, concurrency = 2,
        }
    }

    orchestrator! {
        pub HygieneFailFast("hygiene_fail_fast")(input: WordsInput) {
            direct: Words,
            each_text: each(::std::vec![input.clone()]) => HygieneTrack,
        }
    }
}

fn main() {
    use ::task_runtime::prelude::*;
    let _ = <user::Words as Task>::ID;
    let _ = <user::HygieneTrack as Task>::ID;
    let _ = <user::HygieneOrchestrator as Task>::ID;
    let _ = <user::HygieneFailFast as Task>::ID;
}
