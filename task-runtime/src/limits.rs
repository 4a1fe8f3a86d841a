//! Payload limits checked before anything else touches an input: size (Trigger.dev caps
//! payloads too) and nesting depth (recursive code, serde's included, must never see a
//! 100 000-level document).

use std::io;

use serde_json::Value;

use crate::error::{Issue, TaskError};

/// Limits on inputs accepted by `trigger`, `trigger_and_wait` and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input, in bytes of JSON. Default 3 MiB.
    pub max_input_bytes: usize,
    /// Deepest accepted nesting of arrays and objects. Default 64; at most 128
    /// (serde_json's own recursion limit).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 3 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// Why an input was refused before it reached a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("input is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("input nests deeper than the limit of {limit} levels (at byte {offset})")]
    TooDeepAt { limit: usize, offset: usize },
    #[error("input nests deeper than the limit of {limit} levels")]
    TooDeep { limit: usize },
    #[error("malformed JSON at line {line} column {column}: {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },
}

impl From<InputError> for TaskError {
    fn from(error: InputError) -> Self {
        TaskError::invalid_input(vec![Issue {
            path: String::new(),
            message: error.to_string(),
        }])
    }
}

impl Limits {
    /// Parses raw JSON bytes, refusing oversized, too deep or malformed input with the place
    /// of the problem.
    pub fn parse(&self, bytes: &[u8]) -> Result<Value, InputError> {
        if bytes.len() > self.max_input_bytes {
            return Err(InputError::TooLarge {
                size: bytes.len(),
                limit: self.max_input_bytes,
            });
        }
        self.check_depth_bytes(bytes)?;
        serde_json::from_slice(bytes).map_err(|e| InputError::Malformed {
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })
    }

    /// Checks a JSON value already in memory: depth first (without recursion), then size.
    pub fn check_value(&self, value: &Value) -> Result<(), InputError> {
        if depth_exceeds(value, self.max_depth) {
            return Err(InputError::TooDeep {
                limit: self.max_depth,
            });
        }
        let mut counter = Counter {
            count: 0,
            limit: self.max_input_bytes,
        };
        if serde_json::to_writer(&mut counter, value).is_err() {
            return Err(InputError::TooLarge {
                size: counter.count,
                limit: self.max_input_bytes,
            });
        }
        Ok(())
    }

    fn check_depth_bytes(&self, bytes: &[u8]) -> Result<(), InputError> {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for (offset, &b) in bytes.iter().enumerate() {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > self.max_depth {
                        return Err(InputError::TooDeepAt {
                            limit: self.max_depth,
                            offset,
                        });
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

/// serde_json appends " at line L column C"; we report those as fields.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn depth_exceeds(value: &Value, limit: usize) -> bool {
    // Only containers go on the stack; scalars cannot add depth.
    fn push<'v>(stack: &mut Vec<(&'v Value, usize)>, value: &'v Value, depth: usize) {
        if matches!(value, Value::Array(_) | Value::Object(_)) {
            stack.push((value, depth));
        }
    }
    let mut stack = Vec::new();
    push(&mut stack, value, 1);
    while let Some((value, depth)) = stack.pop() {
        if depth > limit {
            return true;
        }
        match value {
            Value::Array(items) => items.iter().for_each(|c| push(&mut stack, c, depth + 1)),
            Value::Object(map) => map.values().for_each(|c| push(&mut stack, c, depth + 1)),
            _ => {}
        }
    }
    false
}

/// Drops a value of any depth without recursion (serde_json's `Drop` recurses and would
/// overflow the stack on a 100 000-level document).
pub(crate) fn drop_deep(value: Value) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// Counts serialized bytes, failing as soon as the limit is passed.
struct Counter {
    count: usize,
    limit: usize,
}

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.count += buf.len();
        if self.count > self.limit {
            Err(io::Error::other("over the limit"))
        } else {
            Ok(buf.len())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> Value {
        let mut v = Value::Null;
        for _ in 0..levels {
            v = Value::Array(vec![v]);
        }
        v
    }

    #[test]
    fn deep_bytes_are_refused_with_offset() {
        let text = "[".repeat(100_000) + &"]".repeat(100_000);
        let err = Limits::default().parse(text.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            InputError::TooDeepAt {
                limit: 64,
                offset: 64
            }
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = format!(r#"{{"a": "{}\"["}}"#, "[".repeat(500));
        assert!(Limits::default().parse(text.as_bytes()).is_ok());
    }

    #[test]
    fn deep_value_is_refused_and_dropped_without_overflow() {
        let value = nested(100_000);
        assert_eq!(
            Limits::default().check_value(&value),
            Err(InputError::TooDeep { limit: 64 })
        );
        drop_deep(value);
    }

    #[test]
    fn oversized_value_and_bytes_are_refused() {
        let limits = Limits {
            max_input_bytes: 10,
            ..Limits::default()
        };
        let value = Value::String("x".repeat(100));
        assert!(matches!(
            limits.check_value(&value),
            Err(InputError::TooLarge { limit: 10, .. })
        ));
        assert_eq!(
            limits.parse(br#""01234567890""#),
            Err(InputError::TooLarge {
                size: 13,
                limit: 10
            })
        );
    }

    #[test]
    fn malformed_json_says_where() {
        let err = Limits::default().parse(b"{\n  \"a\": ,\n}").unwrap_err();
        match err {
            InputError::Malformed { line, column, .. } => assert_eq!((line, column), (2, 8)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
