//! `extract_text`: a local document in, its plain text out.

use std::path::{Path, PathBuf};

use task_runtime::Fatal;
use task_runtime::prelude::*;

use crate::documents;
use crate::markup::{html_to_text, markdown_to_text};
use crate::schemas::extract_text::{ExtractInput, TextOutput};
use crate::schemas::generic::DocumentFormat;
use crate::text::normalise_whitespace;

/// Why a document could not be turned into text.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The file is missing, unreadable or a directory; a retry may succeed once it is fixed.
    #[error("cannot read '{path}'")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// No extractor for this extension. The `Fatal` cause stops retries: the file's type
    /// will not change between attempts.
    #[error(
        "cannot extract text from '{path}': unsupported extension '{extension}' \
         (expected txt, md, markdown, html or htm)"
    )]
    Unsupported {
        path: String,
        extension: String,
        #[source]
        cause: Fatal,
    },
    /// The path names a directory, a device, a pipe or a socket (symlinks are followed):
    /// reading it could block or never end.
    #[error("cannot read '{path}': it is not a regular file ({kind})")]
    NotAFile {
        path: String,
        kind: &'static str,
        #[source]
        cause: Fatal,
    },
    /// The file is larger than a document may be.
    #[error("cannot read '{path}': it is larger than the limit of {limit} bytes")]
    TooLarge {
        path: String,
        limit: u64,
        #[source]
        cause: Fatal,
    },
    /// The text could not be saved where `saveTo` asked.
    #[error("cannot save the text to '{path}'")]
    Save {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ExtractError {
    fn unsupported(path: &str, extension: &str) -> Self {
        ExtractError::Unsupported {
            path: path.to_owned(),
            extension: extension.to_owned(),
            cause: Fatal::new("retrying cannot change a file's type"),
        }
    }
}

/// Extract the plain text of a local .txt, .md or .html file under the documents root
/// ([`documents`]; a path leading outside it is `invalidInput`).
///
/// Markdown loses its markup and code blocks; HTML loses its tags, scripts and styles and has
/// its entities decoded. Whitespace is normalised so paragraphs are separated by exactly one
/// blank line. An unsupported extension fails without retry. With `saveTo`, the text is
/// also saved atomically (a temporary file renamed into place, removed by cleanup however
/// the attempt ends).
#[task(id = "extract_text")]
pub async fn extract_text(ctx: &TaskContext, input: ExtractInput) -> Result<TextOutput, TaskError> {
    let mut document = read_document("/path", &input.path).await?;
    if let Some(target) = input.save_to {
        let file = documents::resolve_target("/saveTo", &target)?;
        save_atomically(ctx, &file, &target, &document.text)
            .await
            .map_err(TaskError::from_error)?;
        document.saved_to = Some(target);
    }
    tracing::info!(
        path = %document.path,
        format = ?document.format,
        bytes = document.bytes,
        characters = document.text.chars().count(),
        "extracted text"
    );
    Ok(document)
}

/// The largest document `extract_text` reads: 8 MiB. A file named by a user's input is
/// never read without bound (a symlink to `/dev/zero` would otherwise fill memory).
pub const MAX_DOCUMENT_BYTES: u64 = 8 * 1024 * 1024;

/// Reads at most [`MAX_DOCUMENT_BYTES`] of the regular file `file`; errors name `path`, as
/// the input gave it.
async fn read_bounded(file: &Path, path: &str) -> Result<Vec<u8>, ExtractError> {
    use tokio::io::AsyncReadExt;
    let read_error = |source| ExtractError::Read {
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(file).await.map_err(read_error)?;
    let metadata = file.metadata().await.map_err(read_error)?;
    if !metadata.is_file() {
        let kind = if metadata.is_dir() {
            "a directory"
        } else {
            "a device, pipe or socket"
        };
        return Err(ExtractError::NotAFile {
            path: path.to_owned(),
            kind,
            cause: Fatal::new("retrying cannot make it a regular file"),
        });
    }
    let too_large = || ExtractError::TooLarge {
        path: path.to_owned(),
        limit: MAX_DOCUMENT_BYTES,
        cause: Fatal::new("retrying cannot make the file smaller"),
    };
    if metadata.len() > MAX_DOCUMENT_BYTES {
        return Err(too_large());
    }
    // The size may change while we read: never take more than the limit and one byte.
    let mut raw = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(read_error)?;
    if raw.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(too_large());
    }
    Ok(raw)
}

/// Reads and extracts the document an input names at `field` (its JSON pointer, named when
/// the path leads outside the documents root). The body of `extract_text`, shared with
/// `corpus_stats` so both see exactly the same text.
pub async fn read_document(field: &str, path: &str) -> Result<TextOutput, TaskError> {
    // A path outside the root is refused before anything else is said about it.
    let file = documents::resolve(field, path)?;
    let extension = Path::new(path)
        .extension()
        .and_then(|extension| extension.to_str())
        .unwrap_or_default();
    // Checked before reading, so an unsupported file is refused without reading it.
    let format = DocumentFormat::from_extension(extension)
        .ok_or_else(|| TaskError::from_error(ExtractError::unsupported(path, extension)))?;
    let raw = read_bounded(&file, path)
        .await
        .map_err(TaskError::from_error)?;
    // A stray invalid byte should cost one character, not the whole document.
    let text = extract(format, &String::from_utf8_lossy(&raw));
    Ok(TextOutput {
        path: path.to_owned(),
        format,
        text,
        bytes: raw.len() as u64,
        saved_to: None,
    })
}

/// Writes `text` to a temporary file beside `file`, then renames it into place (errors name
/// `target`, as the input gave it). The
/// temporary file is removed when the attempt ends, whether the write, the rename, a timeout
/// or a cancellation ended it, unless the cleanup options say `keepTemp`.
async fn save_atomically(
    ctx: &TaskContext,
    file: &Path,
    target: &str,
    text: &str,
) -> Result<(), ExtractError> {
    let mut temp = file.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", ctx.run_id()));
    let temp = PathBuf::from(temp);
    let keep = ctx
        .cleanup_options()
        .and_then(|options| options.get("keepTemp"))
        .and_then(|keep| keep.as_bool())
        .unwrap_or(false);
    // Registered before the file exists, so no ending of the attempt can leave it behind.
    let leftover = temp.clone();
    ctx.defer(async move {
        if keep {
            return Ok(());
        }
        match tokio::fs::remove_file(&leftover).await {
            // Renamed into place: nothing left to remove.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    });
    let failed = |source| ExtractError::Save {
        path: target.to_owned(),
        source,
    };
    tokio::fs::write(&temp, text).await.map_err(failed)?;
    tokio::fs::rename(&temp, file).await.map_err(failed)
}

/// The plain text of `raw` in `format`, whitespace-normalised.
pub fn extract(format: DocumentFormat, raw: &str) -> String {
    match format {
        DocumentFormat::Text => normalise_whitespace(raw),
        DocumentFormat::Markdown => normalise_whitespace(&markdown_to_text(raw)),
        DocumentFormat::Html => normalise_whitespace(&html_to_text(raw)),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn input(path: &str) -> ExtractInput {
        ExtractInput {
            base: BaseInput::new("t", "p"),
            path: path.to_owned(),
            save_to: None,
        }
    }

    const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/sourdough.txt");

    /// A fresh directory for one test under the crate's directory, the documents root of
    /// the unit tests; removed by the test.
    fn scratch(name: &str) -> PathBuf {
        let root = documents::use_root(env!("CARGO_MANIFEST_DIR")).unwrap();
        let dir = root.join(format!(".scratch/extract-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_symlink_to_a_device_is_refused_without_reading_it() {
        let dir = scratch("device");
        let link = dir.join("zero.txt");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let path = link.display().to_string();
        let err = Runtime::new()
            .run(ExtractText, input(&path))
            .await
            .unwrap_err();
        // It leads outside the documents root, so it is not even opened.
        assert_eq!(err.error.kind_name(), "invalidInput");
        assert_eq!(
            err.error.issues()[0].to_string(),
            format!(
                "/path: '{path}' leads outside the documents root through a symlink (set \
                 DOCS_ROOT to serve other documents)"
            )
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_directory_is_refused_without_reading_it() {
        let dir = scratch("directory");
        let folder = dir.join("folder.txt");
        std::fs::create_dir(&folder).unwrap();
        let path = folder.display().to_string();
        let err = Runtime::new()
            .run(ExtractText, input(&path))
            .await
            .unwrap_err();
        assert_eq!(
            err.error.to_string(),
            format!("cannot read '{path}': it is not a regular file (a directory)")
        );
        assert!(!err.error.is_retryable());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_path_outside_the_root_is_invalid_input_for_reading_and_saving() {
        let rt = Runtime::new();
        documents::use_root(env!("CARGO_MANIFEST_DIR")).unwrap();
        let err = rt
            .run(ExtractText, input("../../../etc/passwd"))
            .await
            .unwrap_err();
        assert_eq!(err.error.kind_name(), "invalidInput");
        assert_eq!(err.error.issues()[0].path, "/path");
        let mut request = input(SAMPLE);
        request.save_to = Some("/tmp/stolen.txt".to_owned());
        let err = rt.run(ExtractText, request).await.unwrap_err();
        assert_eq!(err.error.kind_name(), "invalidInput");
        assert_eq!(err.error.issues()[0].path, "/saveTo");
        assert!(!Path::new("/tmp/stolen.txt").exists());
    }

    #[tokio::test]
    async fn a_file_over_the_limit_is_refused_naming_the_limit() {
        let dir = scratch("large");
        let big = dir.join("big.txt");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(MAX_DOCUMENT_BYTES + 1).unwrap();
        let path = big.display().to_string();
        let err = Runtime::new()
            .run(ExtractText, input(&path))
            .await
            .unwrap_err();
        assert_eq!(
            err.error.to_string(),
            format!("cannot read '{path}': it is larger than the limit of 8388608 bytes")
        );
        assert!(!err.error.is_retryable());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn saves_the_text_atomically_and_leaves_no_temp_file() {
        let dir = scratch("save");
        let target = dir.join("out.txt").display().to_string();
        let mut request = input(SAMPLE);
        request.save_to = Some(target.clone());
        let out = Runtime::new().run(ExtractText, request).await.unwrap();
        let saved = out.results;
        assert_eq!(saved.saved_to.as_deref(), Some(target.as_str()));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), saved.text);
        assert_eq!(entries(&dir), ["out.txt"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_save_removes_its_temp_file_unless_asked_to_keep_it() {
        let dir = scratch("fail");
        // Renaming a file onto a directory fails after the temp file was written.
        std::fs::create_dir(dir.join("taken")).unwrap();
        let target = dir.join("taken").display().to_string();
        let mut request = input(SAMPLE);
        request.save_to = Some(target.clone());
        let rt = Runtime::new();
        let err = rt.run(ExtractText, request.clone()).await.unwrap_err();
        assert_eq!(
            err.error.to_string(),
            format!("cannot save the text to '{target}'")
        );
        assert_eq!(entries(&dir), ["taken"], "the temp file was cleaned up");

        request.base.cleanup = Some(
            serde_json::json!({ "keepTemp": true })
                .as_object()
                .unwrap()
                .clone(),
        );
        let err = rt.run(ExtractText, request).await.unwrap_err();
        let kept = format!("taken.{}.tmp", err.run_id());
        assert_eq!(entries(&dir), ["taken".to_owned(), kept]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn extracts_a_shipped_markdown_sample() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/beekeeping.md");
        let output = extract_text(&TaskContext::for_test(), input(path))
            .await
            .unwrap();
        assert_eq!(output.format, DocumentFormat::Markdown);
        assert!(output.bytes > 0);
        assert!(!output.text.contains('#'));
        assert!(!output.text.contains("](")); // links reduced to their text
    }

    #[tokio::test]
    async fn missing_file_is_a_read_error_with_path_and_io_source() {
        let path = "definitely/not/here.txt";
        let error = extract_text(&TaskContext::for_test(), input(path))
            .await
            .unwrap_err();
        assert!(error.is_retryable());
        assert_eq!(error.to_string(), format!("cannot read '{path}'"));
        let error = error.downcast_ref::<ExtractError>().unwrap();
        assert!(matches!(error, ExtractError::Read { path: p, .. } if p == path));
        let source = error.source().expect("the io error is kept as the source");
        let io = source.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn unsupported_extension_is_fatal() {
        let error = extract_text(&TaskContext::for_test(), input("report.pdf"))
            .await
            .unwrap_err();
        assert!(matches!(
            error.downcast_ref::<ExtractError>(),
            Some(ExtractError::Unsupported { extension, .. }) if extension == "pdf"
        ));
        assert!(!error.is_retryable());
        assert_eq!(error.kind_name(), "failed");
    }
}
