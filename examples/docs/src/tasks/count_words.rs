//! `count_words`: figures about a text.

use std::collections::HashMap;

use task_runtime::prelude::*;

use crate::schemas::count_words::{CountInput, WordCounts};
use crate::text::{self, TOP_WORDS};

/// Count the words, sentences, paragraphs and characters of a text, and its top words.
///
/// Top words leave out stop words, numbers and single letters; ties are listed alphabetically.
/// The text itself is passed through so a following step can summarise it.
#[task(id = "count_words")]
pub async fn count_words(_ctx: &TaskContext, input: CountInput) -> Result<WordCounts, TaskError> {
    let mut frequencies = HashMap::new();
    let words = text::tally(&input.text, &mut frequencies);
    let counts = WordCounts {
        words,
        sentences: text::sentences(&input.text).len(),
        paragraphs: text::paragraphs(&input.text).len(),
        characters: input.text.chars().count(),
        top_words: text::top_words(&frequencies, TOP_WORDS),
        base: input.base,
        source: input.source,
        text: input.text,
    };
    tracing::info!(
        words = counts.words,
        sentences = counts.sentences,
        "counted words"
    );
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemas::generic::WordCount;

    const TEXT: &str = "Bees build combs. Bees store honey in combs!\n\n\
                        A colony keeps warm in winter. Honey feeds the colony?";

    #[tokio::test]
    async fn counts_a_known_text() {
        let input = CountInput {
            base: BaseInput::new("t", "p"),
            text: TEXT.to_owned(),
            source: Some("bees.txt".to_owned()),
        };
        let counts = count_words(&TaskContext::for_test(), input).await.unwrap();
        assert_eq!(counts.words, 18);
        assert_eq!(counts.sentences, 4);
        assert_eq!(counts.paragraphs, 2);
        assert_eq!(counts.characters, TEXT.chars().count());
        assert_eq!(counts.source.as_deref(), Some("bees.txt"));
        assert_eq!(counts.text, TEXT);
        let top: Vec<(&str, usize)> = counts
            .top_words
            .iter()
            .map(|WordCount { word, count }| (word.as_str(), *count))
            .collect();
        // Counts first, then alphabetical; "a", "in" and "the" are stop words.
        assert_eq!(
            top,
            [
                ("bees", 2),
                ("colony", 2),
                ("combs", 2),
                ("honey", 2),
                ("build", 1),
                ("feeds", 1),
                ("keeps", 1),
                ("store", 1),
                ("warm", 1),
                ("winter", 1),
            ]
        );
    }
}
