//! Reading a run's JSON input from the command line: a file, stdin (`-`) or inline JSON,
//! never buffering more than the size limit, refused with the limits' own errors.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::PathBuf;

use serde_json::Value;

use crate::{InputError, Limits};

/// Where `run --input` takes its JSON from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum InputSource {
    /// `-`
    Stdin,
    /// The argument itself, when its first non-whitespace character is `{` or `[`.
    Inline(Vec<u8>),
    /// Anything else.
    File(PathBuf),
}

impl InputSource {
    pub(super) fn classify(arg: &OsStr) -> Self {
        let bytes = arg.as_encoded_bytes();
        if bytes == b"-" {
            return InputSource::Stdin;
        }
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{' | b'[') => InputSource::Inline(bytes.to_vec()),
            _ => InputSource::File(PathBuf::from(arg)),
        }
    }

    /// Names the source in messages.
    fn describe(&self) -> String {
        match self {
            InputSource::Stdin => "stdin".to_owned(),
            InputSource::Inline(_) => "inline".to_owned(),
            InputSource::File(path) => format!("file '{}'", path.display()),
        }
    }
}

/// Why no JSON value came out of the input.
#[derive(Debug)]
pub(super) enum InputFailure {
    /// The command line is at fault (unreadable file, malformed JSON): a message, exit 2.
    Usage(String),
    /// Well-formed but refused by the limits: reported as an envelope, exit 1.
    Refused(InputError),
}

/// Reads and parses the input, enforcing the runtime's limits; never buffers more than the
/// size limit (plus one byte).
pub(super) async fn read_input(source: InputSource, limits: Limits) -> Result<Value, InputFailure> {
    let bytes = match &source {
        InputSource::Inline(bytes) => Ok(bytes.clone()),
        InputSource::Stdin => {
            blocking(move || read_capped(io::stdin().lock(), limits.max_input_bytes))
                .await
                .map_err(|e| InputFailure::Usage(format!("cannot read input from stdin: {e}")))?
        }
        InputSource::File(path) => {
            let path = path.clone();
            let shown = path.display().to_string();
            blocking(move || read_file(&path, limits.max_input_bytes))
                .await
                .map_err(|e| {
                    InputFailure::Usage(format!("cannot read input file '{shown}': {e}"))
                })?
        }
    };
    let bytes = bytes.map_err(InputFailure::Refused)?;
    limits.parse(&bytes).map_err(|error| match error {
        InputError::Malformed {
            line,
            column,
            message,
        } => InputFailure::Usage(format!(
            "input is not valid JSON ({}): line {line} column {column}: {message}",
            source.describe()
        )),
        refused => InputFailure::Refused(refused),
    })
}

/// Runs blocking I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)))
}

fn read_file(path: &std::path::Path, limit: usize) -> io::Result<Result<Vec<u8>, InputError>> {
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    if metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a directory",
        ));
    }
    let size = usize::try_from(metadata.len()).unwrap_or(usize::MAX);
    if metadata.is_file() && size > limit {
        return Ok(Err(InputError::TooLarge { size, limit }));
    }
    read_capped(file, limit)
}

/// Reads at most `limit + 1` bytes; past the limit, counts the rest without keeping it.
fn read_capped(mut reader: impl Read, limit: usize) -> io::Result<Result<Vec<u8>, InputError>> {
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    (&mut reader).take(cap).read_to_end(&mut bytes)?;
    if bytes.len() <= limit {
        return Ok(Ok(bytes));
    }
    let rest = io::copy(&mut reader, &mut io::sink())?;
    let size = bytes
        .len()
        .saturating_add(usize::try_from(rest).unwrap_or(usize::MAX));
    Ok(Err(InputError::TooLarge { size, limit }))
}

#[cfg(test)]
mod tests {
    use super::*;
    fn source(arg: &str) -> InputSource {
        InputSource::classify(OsStr::new(arg))
    }

    #[test]
    fn input_sources_are_classified() {
        assert_eq!(source("-"), InputSource::Stdin);
        assert_eq!(
            source(r#"{"a": 1}"#),
            InputSource::Inline(br#"{"a": 1}"#.to_vec())
        );
        assert_eq!(
            source("  \n[1, 2]"),
            InputSource::Inline(b"  \n[1, 2]".to_vec())
        );
        assert_eq!(
            source("input.json"),
            InputSource::File(PathBuf::from("input.json"))
        );
        assert_eq!(source("-x"), InputSource::File(PathBuf::from("-x")));
        assert_eq!(source(""), InputSource::File(PathBuf::new()));
    }

    #[tokio::test]
    async fn malformed_json_names_source_line_and_column() {
        let failure = read_input(source("{\n  \"a\": ,\n}"), Limits::default())
            .await
            .unwrap_err();
        match failure {
            InputFailure::Usage(message) => {
                assert!(message.contains("(inline)"), "{message}");
                assert!(message.contains("line 2 column 8"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn limits_refuse_instead_of_usage_error() {
        let limits = Limits {
            max_input_bytes: 4,
            ..Limits::default()
        };
        let failure = read_input(source("[1, 2, 3]"), limits).await.unwrap_err();
        assert!(matches!(
            failure,
            InputFailure::Refused(InputError::TooLarge { size: 9, limit: 4 })
        ));
        let deep = "[".repeat(1000) + &"]".repeat(1000);
        let failure = read_input(source(&deep), Limits::default())
            .await
            .unwrap_err();
        assert!(matches!(
            failure,
            InputFailure::Refused(InputError::TooDeepAt { .. })
        ));
    }

    #[tokio::test]
    async fn missing_file_is_a_usage_error() {
        let failure = read_input(source("/definitely/not/here.json"), Limits::default())
            .await
            .unwrap_err();
        match failure {
            InputFailure::Usage(message) => assert!(
                message.starts_with("cannot read input file '/definitely/not/here.json': "),
                "{message}"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn capped_read_counts_oversized_input() {
        let data = vec![b' '; 100];
        assert_eq!(
            read_capped(&data[..], 10).unwrap(),
            Err(InputError::TooLarge {
                size: 100,
                limit: 10
            })
        );
        assert_eq!(read_capped(&data[..], 100).unwrap(), Ok(data.clone()));
    }
}
