//! `summarise`: the few sentences that best stand for a text.

use std::collections::HashMap;

use task_runtime::prelude::*;

use crate::schemas::summarise::{SummariseInput, Summary};
use crate::text::{self, TOP_WORDS};

/// Summarise a text by picking its most representative sentences.
///
/// Extractive: each sentence scores the summed frequencies of its content words across the
/// whole text, divided by its length in words so long sentences do not win by size alone.
/// Only complete sentences compete (headings and list labels would win on a few topical
/// words); the best `maxSentences` come back in their original order.
#[task(id = "summarise")]
pub async fn summarise(_ctx: &TaskContext, input: SummariseInput) -> Result<Summary, TaskError> {
    let mut frequencies = HashMap::new();
    let words = text::tally(&input.text, &mut frequencies);
    let sentences = text::sentences(&input.text);
    let keep = usize::try_from(input.max_sentences).unwrap_or(usize::MAX);
    let summary = Summary {
        source: input.source,
        sentences: pick(&sentences, &frequencies, keep),
        total_sentences: sentences.len(),
        words,
        top_words: text::top_words(&frequencies, TOP_WORDS),
    };
    tracing::info!(
        kept = summary.sentences.len(),
        of = summary.total_sentences,
        "summarised"
    );
    Ok(summary)
}

/// The `keep` best sentences, in text order.
fn pick(sentences: &[String], frequencies: &HashMap<String, usize>, keep: usize) -> Vec<String> {
    let complete: Vec<usize> = (0..sentences.len())
        .filter(|&i| text::is_complete_sentence(&sentences[i]))
        .collect();
    // A text of headings alone still deserves a summary.
    let candidates = if complete.is_empty() {
        (0..sentences.len()).collect()
    } else {
        complete
    };
    let mut ranked: Vec<(usize, f64)> = candidates
        .into_iter()
        .map(|i| (i, score(&sentences[i], frequencies)))
        .collect();
    // On equal scores the earlier sentence wins: it usually sets the context.
    ranked.sort_by(|(a, a_score), (b, b_score)| b_score.total_cmp(a_score).then(a.cmp(b)));
    let mut chosen: Vec<usize> = ranked.into_iter().take(keep).map(|(i, _)| i).collect();
    chosen.sort_unstable();
    chosen.into_iter().map(|i| sentences[i].clone()).collect()
}

fn score(sentence: &str, frequencies: &HashMap<String, usize>) -> f64 {
    let (mut length, mut weight) = (0usize, 0usize);
    for word in text::words(sentence) {
        length += 1;
        weight += frequencies.get(&word).copied().unwrap_or(0);
    }
    if length == 0 {
        0.0
    } else {
        weight as f64 / length as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(text: &str, max_sentences: u32) -> SummariseInput {
        SummariseInput {
            base: BaseInput::new("t", "p"),
            text: text.to_owned(),
            max_sentences,
            source: None,
        }
    }

    #[tokio::test]
    async fn picks_the_densest_sentences_in_text_order() {
        let text = "Honey Bees\n\n\
                    We visited the farm on a grey morning last week. \
                    Bees make honey from nectar. \
                    The weather stayed cold. \
                    Honey bees guard the honey stores of the hive.";
        let summary = summarise(&TaskContext::for_test(), input(text, 2))
            .await
            .unwrap();
        assert_eq!(
            summary.sentences,
            [
                "Bees make honey from nectar.",
                "Honey bees guard the honey stores of the hive.",
            ]
        );
        assert_eq!(summary.total_sentences, 5);
        assert_eq!(summary.top_words[0].word, "honey");
    }

    #[tokio::test]
    async fn keeps_everything_when_the_text_is_short() {
        let summary = summarise(&TaskContext::for_test(), input("One line only.", 3))
            .await
            .unwrap();
        assert_eq!(summary.sentences, ["One line only."]);
    }
}
