//! `corpus_stats`: figures over many documents at once.

use std::collections::HashMap;

use task_runtime::prelude::*;
use tokio::task::JoinSet;

use super::extract_text::read_document;
use crate::schemas::corpus_stats::{CorpusInput, CorpusReport, DocumentSize};
use crate::schemas::extract_text::TextOutput;
use crate::text::{self, TOP_WORDS};

/// Compute corpus-wide statistics: words, vocabulary, top words and the longest document.
///
/// Documents are read concurrently and extracted exactly as `extract_text` does; the first
/// one that cannot be read fails the run with that document's error.
#[task(id = "corpus_stats")]
pub async fn corpus_stats(
    _ctx: &TaskContext,
    input: CorpusInput,
) -> Result<CorpusReport, TaskError> {
    let documents = read_all(&input.paths).await?;
    let mut frequencies = HashMap::new();
    let mut total_words = 0;
    let mut longest: Option<DocumentSize> = None;
    for document in &documents {
        let words = text::tally(&document.text, &mut frequencies);
        total_words += words;
        if longest.as_ref().is_none_or(|longest| words > longest.words) {
            longest = Some(DocumentSize {
                path: document.path.clone(),
                words,
            });
        }
    }
    // The schema asks for at least one path, but the fn can be called directly too.
    let longest_document =
        longest.ok_or_else(|| TaskError::fatal("corpus_stats needs at least one document"))?;
    tracing::info!(
        documents = documents.len(),
        total_words,
        "computed corpus stats"
    );
    Ok(CorpusReport {
        documents: documents.len(),
        total_words,
        vocabulary_size: frequencies.len(),
        top_words: text::top_words(&frequencies, TOP_WORDS),
        longest_document,
    })
}

/// Reads every path at once; the documents come back in the order of `paths`.
async fn read_all(paths: &[String]) -> Result<Vec<TextOutput>, TaskError> {
    // Dropping the set (on an error, a timeout or cancellation) aborts the reads still going.
    let mut reads = JoinSet::new();
    for (index, path) in paths.iter().cloned().enumerate() {
        reads.spawn(async move {
            (
                index,
                read_document(&format!("/paths/{index}"), &path).await,
            )
        });
    }
    let mut documents = Vec::with_capacity(paths.len());
    while let Some(joined) = reads.join_next().await {
        let (index, read) = match joined {
            Ok(done) => done,
            // Re-raised so the runtime reports the panic as the run's own.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => return Err(TaskError::cancelled("a document read was aborted")),
        };
        documents.push((index, read?));
    }
    documents.sort_unstable_by_key(|(index, _)| *index);
    Ok(documents
        .into_iter()
        .map(|(_, document)| document)
        .collect())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Temp files named after the test and the process, removed on drop even if the test
    /// fails; under the crate's directory, the documents root of the unit tests.
    struct TempFiles(Vec<PathBuf>);

    impl TempFiles {
        fn write(files: &[(&str, &str)]) -> Self {
            let root = crate::documents::use_root(env!("CARGO_MANIFEST_DIR")).unwrap();
            let dir = root.join(".scratch");
            std::fs::create_dir_all(&dir).unwrap();
            let paths = files
                .iter()
                .map(|(name, contents)| {
                    let path = dir.join(format!("docs-pipeline-{}-{name}", std::process::id()));
                    std::fs::write(&path, contents).unwrap();
                    path
                })
                .collect();
            TempFiles(paths)
        }

        fn paths(&self) -> Vec<String> {
            self.0
                .iter()
                .map(|path| path.to_str().unwrap().to_owned())
                .collect()
        }
    }

    impl Drop for TempFiles {
        fn drop(&mut self) {
            for path in &self.0 {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn input(paths: Vec<String>) -> CorpusInput {
        CorpusInput {
            base: BaseInput::new("t", "p"),
            paths,
        }
    }

    #[tokio::test]
    async fn stats_over_two_documents() {
        let files = TempFiles::write(&[
            ("corpus-a.txt", "Rivers carry silt. Rivers shape valleys."),
            (
                "corpus-b.md",
                "# Valleys\n\nGlaciers *carve* valleys too, and rivers follow.",
            ),
        ]);
        let report = corpus_stats(&TaskContext::for_test(), input(files.paths()))
            .await
            .unwrap();
        assert_eq!(report.documents, 2);
        assert_eq!(report.total_words, 6 + 8);
        // rivers, carry, silt, shape, valleys, glaciers, carve, follow ("too", "and" are stop words)
        assert_eq!(report.vocabulary_size, 8);
        // Three each: the tie goes to the alphabet.
        assert_eq!(report.top_words[0].word, "rivers");
        assert_eq!(report.top_words[0].count, 3);
        assert_eq!(report.top_words[1].word, "valleys");
        assert_eq!(report.top_words[1].count, 3);
        assert_eq!(report.longest_document.path, files.paths()[1]);
        assert_eq!(report.longest_document.words, 8);
    }

    #[tokio::test]
    async fn an_unreadable_document_fails_the_corpus() {
        let files = TempFiles::write(&[("corpus-ok.txt", "Fine text.")]);
        let mut paths = files.paths();
        paths.push("missing/nowhere.txt".to_owned());
        let error = corpus_stats(&TaskContext::for_test(), input(paths))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cannot read 'missing/nowhere.txt'")
        );
        assert!(error.is_retryable());
    }

    #[tokio::test]
    async fn a_path_outside_the_root_is_invalid_input_naming_its_index() {
        let files = TempFiles::write(&[("corpus-inside.txt", "Fine text.")]);
        let mut paths = files.paths();
        paths.push("/etc/hostname".to_owned());
        let error = corpus_stats(&TaskContext::for_test(), input(paths))
            .await
            .unwrap_err();
        assert_eq!(error.kind_name(), "invalidInput");
        assert_eq!(error.issues()[0].path, "/paths/1");
        assert!(
            error.issues()[0]
                .message
                .starts_with("'/etc/hostname' leads outside")
        );
    }
}
