//! Text primitives shared by every task: one tokenizer, one sentence splitter, one stop-word
//! list. `count_words`, `summarise` and `corpus_stats` all go through these functions, so they
//! always agree on what a word, a sentence and a paragraph are.

use std::collections::HashMap;

use crate::schemas::generic::WordCount;

/// How many entries a `topWords` list holds.
pub const TOP_WORDS: usize = 10;

/// Frequent English words that say nothing about what a document is about. Kept sorted so
/// lookups can binary-search (a unit test guards the order).
const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at",
    "be", "because", "been", "before", "being", "between", "both", "but", "by", "can", "could",
    "did", "do", "does", "doing", "don't", "down", "during", "each", "even", "few", "for", "from",
    "further", "had", "has", "have", "having", "he", "her", "here", "hers", "him", "his", "how",
    "i", "if", "in", "into", "is", "it", "it's", "its", "itself", "just", "may", "me", "might",
    "more", "most", "much", "must", "my", "no", "nor", "not", "now", "of", "off", "on", "once",
    "one", "only", "or", "other", "our", "ours", "out", "over", "own", "same", "she", "should",
    "so", "some", "such", "than", "that", "that's", "the", "their", "theirs", "them", "then",
    "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up",
    "us", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom",
    "why", "will", "with", "would", "you", "your", "yours",
];

/// Whether `word` (lowercase) is on the stop-word list.
pub fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.binary_search(&word).is_ok()
}

/// Whether `word` (lowercase) says something about a document's topic: not a stop word, not a
/// bare number, not a single letter.
pub fn is_content_word(word: &str) -> bool {
    word.chars().count() > 1 && word.chars().any(char::is_alphabetic) && !is_stop_word(word)
}

/// The lowercase words of `text`: runs of letters and digits, keeping inner apostrophes so
/// "don't" is one word. Typographic apostrophes are folded to `'` so both spellings count
/// as the same word.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || is_apostrophe(c)))
        .map(|word| word.trim_matches(is_apostrophe))
        .filter(|word| !word.is_empty())
        .map(|word| word.to_lowercase().replace('\u{2019}', "'"))
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

/// Adds the content words of `text` to `frequencies` and returns how many words (of any kind)
/// `text` has. One pass serves both a single document and a whole corpus.
pub fn tally(text: &str, frequencies: &mut HashMap<String, usize>) -> usize {
    let mut total = 0;
    for word in words(text) {
        total += 1;
        if is_content_word(&word) {
            *frequencies.entry(word).or_default() += 1;
        }
    }
    total
}

/// The `n` most frequent words, most frequent first. Ties are broken alphabetically so the
/// same text always gives the same list.
pub fn top_words(frequencies: &HashMap<String, usize>, n: usize) -> Vec<WordCount> {
    let mut ranked: Vec<(&String, &usize)> = frequencies.iter().collect();
    ranked.sort_by(|(a_word, a_count), (b_word, b_count)| {
        b_count.cmp(a_count).then_with(|| a_word.cmp(b_word))
    });
    ranked
        .into_iter()
        .take(n)
        .map(|(word, &count)| WordCount {
            word: word.clone(),
            count,
        })
        .collect()
}

/// The paragraphs of `text`: blocks of non-blank lines separated by blank lines.
pub fn paragraphs(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                blocks.push(current.join("\n"));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        blocks.push(current.join("\n"));
    }
    blocks
}

/// The sentences of `text`, each with its whitespace collapsed to single spaces.
///
/// A sentence ends at `.`, `!` or `?` (plus closing quotes or brackets) when the next word
/// does not start in lowercase, so "e.g. this" stays whole. A paragraph break always ends a
/// sentence, so a heading without punctuation stands on its own instead of swallowing the
/// paragraph below it.
pub fn sentences(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for paragraph in paragraphs(text) {
        let tokens: Vec<&str> = paragraph.split_whitespace().collect();
        let mut current: Vec<&str> = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            current.push(token);
            let next_opens_sentence = tokens
                .get(i + 1)
                .is_some_and(|next| !next.starts_with(char::is_lowercase));
            if next_opens_sentence && is_complete_sentence(token) {
                found.push(current.join(" "));
                current.clear();
            }
        }
        if !current.is_empty() {
            found.push(current.join(" "));
        }
    }
    found
}

/// Whether `sentence` ends like a sentence: `.`, `!` or `?`, possibly followed by closing
/// quotes or brackets. Headings and list labels usually do not.
pub fn is_complete_sentence(sentence: &str) -> bool {
    sentence
        .trim_end_matches(['"', '\'', ')', ']', '\u{201d}', '\u{2019}'])
        .ends_with(['.', '!', '?'])
}

/// Trims every line, collapses runs of spaces and tabs, keeps at most one blank line in a row
/// and trims the text as a whole. Extracted text from any format ends up in this shape, which
/// is what [`paragraphs`] and [`sentences`] expect.
pub fn normalise_whitespace(text: &str) -> String {
    let mut normalised = String::with_capacity(text.len());
    let mut after_blank = false;
    for line in text.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            // Blank lines before the first text are dropped rather than remembered.
            after_blank = !normalised.is_empty();
            continue;
        }
        if !normalised.is_empty() {
            normalised.push_str(if after_blank { "\n\n" } else { "\n" });
        }
        normalised.push_str(&line);
        after_blank = false;
    }
    normalised
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        assert!(STOP_WORDS.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(is_stop_word("the"));
        assert!(is_stop_word("don't"));
        assert!(!is_stop_word("river"));
    }

    #[test]
    fn words_are_lowercase_and_keep_inner_apostrophes() {
        let found: Vec<String> =
            words("Don\u{2019}t PANIC: 42 towels, 'quoted' words-here.").collect();
        assert_eq!(
            found,
            ["don't", "panic", "42", "towels", "quoted", "words", "here"]
        );
    }

    #[test]
    fn content_words_skip_stop_words_numbers_and_letters() {
        assert!(is_content_word("towel"));
        assert!(!is_content_word("the"));
        assert!(!is_content_word("1969"));
        assert!(!is_content_word("x"));
    }

    #[test]
    fn tally_counts_all_words_but_ranks_content_words() {
        let mut frequencies = HashMap::new();
        let total = tally("The cat and the hat. A cat!", &mut frequencies);
        assert_eq!(total, 7);
        assert_eq!(frequencies.get("cat"), Some(&2));
        assert_eq!(frequencies.get("the"), None);
    }

    #[test]
    fn top_words_break_ties_alphabetically() {
        let mut frequencies = HashMap::new();
        tally("pear apple pear apple fig", &mut frequencies);
        let top = top_words(&frequencies, 2);
        assert_eq!(top[0].word, "apple");
        assert_eq!(top[1].word, "pear");
        assert_eq!(top.len(), 2);
    }

    #[test]
    fn sentences_split_on_punctuation_and_paragraphs() {
        let text = "Rivers Today\n\nRivers move water. They carry silt, e.g. sand and clay!\nDo they \
                    stop? \"Never.\" Fine";
        assert_eq!(
            sentences(text),
            [
                "Rivers Today",
                "Rivers move water.",
                "They carry silt, e.g. sand and clay!",
                "Do they stop?",
                "\"Never.\"",
                "Fine",
            ]
        );
    }

    #[test]
    fn whitespace_is_normalised() {
        let text = "\n\n  Title  \n\n\n\n first\tline \nsecond   line\n \n\n";
        assert_eq!(
            normalise_whitespace(text),
            "Title\n\nfirst line\nsecond line"
        );
        assert_eq!(paragraphs(&normalise_whitespace(text)).len(), 2);
    }
}
