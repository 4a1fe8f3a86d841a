//! What every input carries and what every input must pass before a task sees it:
//! [`BaseInput`] (the seed's "Task Input Structure"), [`TrampData`] (shared, never copied per
//! child), and [`Limits`] on size and nesting, checked before recursive code (serde's
//! included) touches a document.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Issue, TaskError};
use crate::json::{self, StrictError};

/// Tenant and project (required, non-empty), optional user, the caller's `trampData`
/// (echoed in the envelope) and `cleanup` options (readable by cleanup code through
/// `ctx.cleanup_options()`).
///
/// ```
/// # use task_runtime::prelude::*;
/// #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
/// #[serde(rename_all = "camelCase")]
/// pub struct ResizeInput {
///     #[serde(flatten)]
///     pub base: BaseInput,
///     pub width: u32,
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseInput {
    /// The tenant the run belongs to.
    #[schemars(length(min = 1))]
    pub tenant_id: String,
    /// The project the run belongs to.
    #[schemars(length(min = 1))]
    pub project_id: String,
    /// The user who asked for the run, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Anything the caller wants back in the envelope, untouched.
    #[serde(default, skip_serializing_if = "skip_tramp")]
    pub tramp_data: Option<TrampData>,
    /// Options for the task's cleanup (e.g. `{ "keepTemp": true }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Map<String, Value>>,
}

impl BaseInput {
    /// A base with tenant and project set.
    pub fn new(tenant_id: impl Into<String>, project_id: impl Into<String>) -> Self {
        BaseInput {
            tenant_id: tenant_id.into(),
            project_id: project_id.into(),
            ..BaseInput::default()
        }
    }
}

/// The caller's `trampData`: a JSON object carried from a run's input to its envelope and
/// to every child run, unchanged.
///
/// Cloning shares it (one `Arc`), so an orchestrator whose items each clone the parent's
/// `BaseInput` holds one copy, not one per item. Read it like a `serde_json::Value`.
///
/// ```
/// # use task_runtime::TrampData;
/// let tramp = TrampData::from(serde_json::json!({ "requestId": "req-8" }));
/// assert_eq!(tramp["requestId"], "req-8");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TrampData(Arc<Value>);

impl Default for TrampData {
    fn default() -> Self {
        TrampData(Arc::new(Value::Object(Map::new())))
    }
}

impl TrampData {
    /// The data as a JSON value.
    pub fn as_value(&self) -> &Value {
        &self.0
    }

    /// The data, copied only when something else still shares it.
    pub fn into_value(self) -> Value {
        Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone())
    }

    pub(crate) fn ptr(&self) -> *const Value {
        Arc::as_ptr(&self.0)
    }
}

impl std::ops::Deref for TrampData {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.0
    }
}

impl From<Value> for TrampData {
    fn from(value: Value) -> Self {
        TrampData(Arc::new(value))
    }
}

impl From<Map<String, Value>> for TrampData {
    fn from(map: Map<String, Value>) -> Self {
        TrampData(Arc::new(Value::Object(map)))
    }
}

// How the engine keeps one copy of a run's trampData for all its children, without knowing
// the user's input types: while it serializes or deserializes a run's input it `capture`s
// the first `TrampData` the input holds (so the run's scope shares the user's own `Arc`),
// and while it serializes a child's input it marks the parent's as `inherited`, which
// `skip_tramp` then leaves out of the child's JSON. The child's scope inherits the parent's
// copy instead: for 200 items under 2 MiB of trampData that is 2 MiB, not 400.
thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static CAPTURED: RefCell<Option<TrampData>> = const { RefCell::new(None) };
    static INHERITED: Cell<*const Value> = const { Cell::new(std::ptr::null()) };
    static SHARING: Cell<bool> = const { Cell::new(false) };
}

fn captured(tramp: &TrampData) {
    if CAPTURING.get() {
        CAPTURED.with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Some(tramp.clone());
            }
        });
    }
}

/// Runs `f` (a serialization or deserialization of a run's input) and returns the first
/// `TrampData` it met.
pub(crate) fn capture_tramp<R>(f: impl FnOnce() -> R) -> (R, Option<TrampData>) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CAPTURING.set(false);
        }
    }
    CAPTURING.set(true);
    let reset = Reset;
    let out = f();
    drop(reset);
    (out, CAPTURED.with_borrow_mut(Option::take))
}

/// Runs `f` (the serialization of a child's input) leaving `inherited` out of it.
pub(crate) fn without_inherited<R>(inherited: Option<&TrampData>, f: impl FnOnce() -> R) -> R {
    let Some(tramp) = inherited else {
        return f();
    };
    struct Reset(*const Value);
    impl Drop for Reset {
        fn drop(&mut self) {
            INHERITED.set(self.0);
        }
    }
    let reset = Reset(INHERITED.replace(tramp.ptr()));
    let out = f();
    drop(reset);
    out
}

/// Runs `f` (the serialization of a top-level run's input) leaving its `TrampData` out of
/// the JSON, and returns that `TrampData`: the run's envelope shares it (see
/// [`JobInput`](crate::JobInput)) rather than hold a copy. Only for inputs whose one
/// `trampData` is their top-level field (`TaskSchemas::input_tramp_at_top`), so the
/// envelope knows where it goes back.
pub(crate) fn sharing_tramp<R>(f: impl FnOnce() -> R) -> (R, Option<TrampData>) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SHARING.set(false);
        }
    }
    SHARING.set(true);
    let reset = Reset;
    let out = f();
    drop(reset);
    (out, CAPTURED.with_borrow_mut(Option::take))
}

/// `skip_serializing_if` of `BaseInput::tramp_data`: nothing to write, the parent's copy,
/// or the top-level run's own, which its envelope shares ([`sharing_tramp`]).
fn skip_tramp(tramp: &Option<TrampData>) -> bool {
    match tramp {
        None => true,
        // The first one met only (serde asks twice per field): should another appear after
        // all, it is written.
        Some(tramp) if SHARING.get() => CAPTURED.with_borrow_mut(|slot| match slot {
            None => {
                *slot = Some(tramp.clone());
                true
            }
            Some(first) => first.ptr() == tramp.ptr(),
        }),
        Some(tramp) => INHERITED.get() == tramp.ptr(),
    }
}

impl Serialize for TrampData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        captured(self);
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for TrampData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tramp = TrampData::from(Map::deserialize(d)?);
        captured(&tramp);
        Ok(tramp)
    }
}

impl JsonSchema for TrampData {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TrampData".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "Anything the caller wants back in the envelope, untouched.",
            "additionalProperties": true
        })
    }
}

/// The deepest nesting a limit may allow: serde_json's own recursion limit.
pub const MAX_DEPTH_LIMIT: usize = 128;

/// Limits on inputs accepted by `trigger`, `trigger_and_wait`, the CLI and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input, in bytes of JSON. Default 3 MiB.
    pub max_input_bytes: usize,
    /// Deepest accepted nesting of arrays and objects. Default 64; at most
    /// [`MAX_DEPTH_LIMIT`] (128, serde_json's own recursion limit).
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
#[non_exhaustive]
pub enum InputError {
    /// More bytes than `max_input_bytes`.
    #[error("input is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The input's size in bytes of JSON.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Nested deeper than `max_depth`, found while reading bytes.
    #[error("input nests deeper than the limit of {limit} levels (at byte {offset})")]
    TooDeepAt {
        /// The limit.
        limit: usize,
        /// Where the limit was passed.
        offset: usize,
    },
    /// Nested deeper than `max_depth`.
    #[error("input nests deeper than the limit of {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Not JSON.
    #[error("malformed JSON at line {line} column {column}: {message}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message, without the position.
        message: String,
    },
    /// One object names a key twice.
    #[error(
        "duplicate key `{key}` in the object at {} (line {line} column {column})",
        display_pointer(pointer)
    )]
    DuplicateKey {
        /// JSON pointer of the object holding the key twice.
        pointer: String,
        /// The repeated key.
        key: String,
        /// 1-based line of the second occurrence.
        line: usize,
        /// 1-based column of the second occurrence.
        column: usize,
    },
}

fn display_pointer(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}

impl From<InputError> for TaskError {
    fn from(error: InputError) -> Self {
        let path = match &error {
            InputError::DuplicateKey { pointer, key, .. } => {
                let mut path = pointer.clone();
                json::push_pointer(&mut path, key);
                path
            }
            _ => String::new(),
        };
        TaskError::invalid_input(vec![Issue {
            path,
            message: error.to_string(),
        }])
    }
}

impl Limits {
    /// Parses raw JSON bytes, refusing oversized, too deep, malformed input and duplicate
    /// keys, with the place of the problem.
    pub fn parse(&self, bytes: &[u8]) -> Result<Value, InputError> {
        if bytes.len() > self.max_input_bytes {
            return Err(InputError::TooLarge {
                size: bytes.len(),
                limit: self.max_input_bytes,
            });
        }
        self.check_depth_bytes(bytes)?;
        json::parse_strict(bytes).map_err(|error| match error {
            StrictError::Duplicate(duplicate, e) => InputError::DuplicateKey {
                pointer: duplicate.pointer,
                key: duplicate.key,
                line: e.line(),
                column: e.column(),
            },
            StrictError::Syntax(e) => InputError::Malformed {
                line: e.line(),
                column: e.column(),
                message: strip_position(&e.to_string()),
            },
        })
    }

    /// Checks a JSON value already in memory: depth (without recursion), then size.
    pub fn check_value(&self, value: &Value) -> Result<(), InputError> {
        match json::check_limits(value, self.max_depth, self.max_input_bytes) {
            Ok(()) => Ok(()),
            Err(json::Over::Depth) => Err(InputError::TooDeep {
                limit: self.max_depth,
            }),
            // Over the limit: count the rest too, so the error says how large it is.
            Err(json::Over::Length) => Err(InputError::TooLarge {
                size: json::json_len(value, usize::MAX).unwrap_or_else(|n| n),
                limit: self.max_input_bytes,
            }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::drop_deep;

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
    fn the_depth_limit_is_the_same_for_bytes_and_values() {
        let limits = Limits {
            max_depth: MAX_DEPTH_LIMIT,
            ..Limits::default()
        };
        let text = "[".repeat(MAX_DEPTH_LIMIT) + &"]".repeat(MAX_DEPTH_LIMIT);
        let parsed = limits.parse(text.as_bytes()).expect("128 levels parse");
        assert_eq!(limits.check_value(&parsed), Ok(()));
        assert_eq!(
            limits.check_value(&nested(MAX_DEPTH_LIMIT + 1)),
            Err(InputError::TooDeep { limit: 128 })
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
    fn oversized_input_reports_its_actual_size() {
        let limits = Limits {
            max_input_bytes: 10,
            ..Limits::default()
        };
        let value = Value::String("x".repeat(100));
        assert_eq!(
            limits.check_value(&value),
            Err(InputError::TooLarge {
                size: 102,
                limit: 10
            })
        );
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

    #[test]
    fn duplicate_keys_become_invalid_input_naming_the_path() {
        let err = Limits::default()
            .parse(br#"{"tenantId":"a","projectId":"p","tenantId":"b"}"#)
            .unwrap_err();
        assert!(
            matches!(&err, InputError::DuplicateKey { key, pointer, .. } if key == "tenantId" && pointer.is_empty())
        );
        let task_error = TaskError::from(err);
        assert_eq!(task_error.kind_name(), "invalidInput");
        assert_eq!(task_error.issues()[0].path, "/tenantId");
        assert!(
            task_error.to_string().contains("duplicate key `tenantId`"),
            "{task_error}"
        );
    }

    #[test]
    fn children_leave_the_inherited_tramp_data_out() {
        let tramp = TrampData::from(serde_json::json!({ "big": "x" }));
        let mut base = BaseInput::new("t", "p");
        base.tramp_data = Some(tramp.clone());
        let full = serde_json::to_value(&base).unwrap();
        assert_eq!(full["trampData"]["big"], "x");
        let child = without_inherited(Some(&tramp), || serde_json::to_value(&base).unwrap());
        assert!(child.get("trampData").is_none());
        let other = TrampData::from(serde_json::json!({ "big": "x" }));
        let not_inherited =
            without_inherited(Some(&other), || serde_json::to_value(&base).unwrap());
        assert_eq!(not_inherited["trampData"]["big"], "x");
        let ((), captured) = capture_tramp(|| {
            serde_json::to_value(&base).unwrap();
        });
        assert_eq!(captured.unwrap().ptr(), tramp.ptr());
    }
}
