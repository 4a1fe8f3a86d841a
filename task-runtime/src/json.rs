//! JSON at the boundary, where serde_json alone is too trusting:
//!
//! - [`parse_strict`] builds a `Value` from bytes and refuses a key that appears twice in one
//!   object (serde_json keeps the last one, so `{"tenantId":"a","tenantId":"b"}` would run as
//!   tenant `b` after whatever looked at the first value let it through);
//! - [`non_finite`] finds a NaN or infinite float in a value about to be serialized
//!   (serde_json writes both as `null`, which a schema then reports as a wrong type, or
//!   accepts where the field is optional);
//! - [`drop_deep`] and [`depth_exceeds`] walk documents of any depth without recursion.

use std::cell::RefCell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize};
use serde_json::{Map, Value};
use smallvec::SmallVec;

/// A key found twice in one object: where (JSON pointer of the object) and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DuplicateKey {
    pub pointer: String,
    pub key: String,
}

/// Parses JSON text, refusing duplicate keys. The caller must have bounded the depth
/// already: the recursion here (and serde_json's) is bounded by that check alone.
pub(crate) fn parse_strict(bytes: &[u8]) -> Result<Value, StrictError> {
    let path = RefCell::new(Vec::new());
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // serde_json stops at 127 levels; `Limits` has checked the depth already (at most 128).
    deserializer.disable_recursion_limit();
    let seed = Strict {
        path: &path,
        duplicate: &duplicate,
    };
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(value),
        Err(error) => match duplicate.into_inner() {
            Some(duplicate) => Err(StrictError::Duplicate(duplicate, error)),
            None => Err(StrictError::Syntax(error)),
        },
    }
}

/// A JSON value held as its compact text: what a run triggered in the background keeps of
/// its input while it waits to start and after it ended, until its envelope is built (a
/// four-field object is about 0.9 KiB as a `Value`, a 632-byte map node and a string per key
/// and value, and under 100 bytes as text).
pub(crate) struct CompactJson(Box<str>);

impl CompactJson {
    pub(crate) fn new(value: &Value) -> Self {
        // A `Value` always serializes: its keys are strings and its numbers finite.
        CompactJson(
            serde_json::to_string(value)
                .unwrap_or_default()
                .into_boxed_str(),
        )
    }

    /// The value again, equal to the one it was made from.
    pub(crate) fn value(&self) -> Value {
        let mut deserializer = serde_json::Deserializer::from_str(&self.0);
        // Its depth was bounded (by `Limits`, at most 128) before it was made.
        deserializer.disable_recursion_limit();
        match Value::deserialize(&mut deserializer) {
            Ok(value) => value,
            Err(error) => {
                // Unreachable: the text is serde_json's own writing of a value.
                tracing::error!(%error, "a run's input did not read back from its compact form");
                Value::Null
            }
        }
    }
}

/// Why [`parse_strict`] refused its input.
#[derive(Debug)]
pub(crate) enum StrictError {
    /// A key appears twice in one object; the error carries line and column.
    Duplicate(DuplicateKey, serde_json::Error),
    /// Not JSON.
    Syntax(serde_json::Error),
}

/// Appends a JSON pointer segment (`~` and `/` escaped as RFC 6901 says).
pub(crate) fn push_pointer(pointer: &mut String, segment: &str) {
    pointer.push('/');
    for c in segment.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

#[derive(Clone, Copy)]
struct Strict<'a> {
    path: &'a RefCell<Vec<String>>,
    duplicate: &'a RefCell<Option<DuplicateKey>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            self.path.borrow_mut().push(items.len().to_string());
            let next = seq.next_element_seed(self);
            self.path.borrow_mut().pop();
            match next? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                let mut pointer = String::new();
                for segment in self.path.borrow().iter() {
                    push_pointer(&mut pointer, segment);
                }
                let message = format!("duplicate key `{key}`");
                *self.duplicate.borrow_mut() = Some(DuplicateKey { pointer, key });
                return Err(de::Error::custom(message));
            }
            self.path.borrow_mut().push(key.clone());
            let value = access.next_value_seed(self);
            self.path.borrow_mut().pop();
            map.insert(key, value?);
        }
        Ok(Value::Object(map))
    }
}

/// Which limit a value passed (see [`check_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// It nests deeper than the depth limit.
    Depth,
    /// Its compact JSON is longer than the length limit.
    Length,
}

/// Checks `root` against a depth limit (levels of arrays and objects) and a length limit
/// (its compact JSON, as [`json_len`] counts it) in one walk, without recursion, and without
/// allocating for documents of up to 32 pending values (a run by id checks every input). A
/// value over both is `Over::Depth`: a document too deep to drop recursively must be known
/// as such.
pub(crate) fn check_limits(root: &Value, max_depth: usize, max_len: usize) -> Result<(), Over> {
    let mut stack: SmallVec<[(&Value, usize); 32]> = SmallVec::new();
    stack.push((root, 1));
    let mut total = 0usize;
    while let Some((value, depth)) = stack.pop() {
        let container = matches!(value, Value::Array(_) | Value::Object(_));
        if container && depth > max_depth {
            return Err(Over::Depth);
        }
        total += match value {
            Value::Array(items) => {
                stack.extend(items.iter().map(|item| (item, depth + 1)));
                2 + items.len().saturating_sub(1)
            }
            Value::Object(map) => {
                stack.extend(map.values().map(|item| (item, depth + 1)));
                object_len(map)
            }
            scalar => scalar_len(scalar),
        };
        if total > max_len {
            return Err(if depth_exceeds(root, max_depth) {
                Over::Depth
            } else {
                Over::Length
            });
        }
    }
    Ok(())
}

/// Whether `value` nests deeper than `limit` levels of arrays and objects. Iterative.
pub(crate) fn depth_exceeds(value: &Value, limit: usize) -> bool {
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

/// Compact JSON length of an object's own text: braces, commas, and per entry its key and
/// a colon (not its values).
fn object_len(map: &Map<String, Value>) -> usize {
    2 + map.len().saturating_sub(1) + map.keys().map(|k| string_len(k) + 1).sum::<usize>()
}

/// Compact JSON length of a scalar (arrays and objects count 0 here).
fn scalar_len(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => number_len(n),
        Value::String(s) => string_len(s),
        Value::Array(_) | Value::Object(_) => 0,
    }
}

fn string_len(s: &str) -> usize {
    // Quotes, plus what `format_escaped_str` adds: `\"`, `\\` and the short escapes
    // are two bytes, other control characters six (`\u00XX`). Most strings have none:
    // a branch-free count first (it vectorizes), the byte-by-byte weights only then.
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        return s.len() + 2;
    }
    let extra: usize = bytes
        .iter()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    s.len() + 2 + extra
}

fn number_len(n: &serde_json::Number) -> usize {
    let mut counter = LenCounter(0);
    // A number's own formatting (itoa/ryu), a handful of bytes.
    let _ = serde_json::to_writer(&mut counter, n);
    counter.0
}

/// The length of `value` as compact JSON (what `serde_json::to_vec` writes), counted without
/// writing it and without recursion, stopping as soon as it passes `limit`: `Err(counted so
/// far)` then. A run by id checks this on every input, so it walks the tree once and
/// scans strings for the few bytes JSON escapes, instead of serializing them.
pub(crate) fn json_len(value: &Value, limit: usize) -> Result<usize, usize> {
    let mut total = 0usize;
    let mut stack = Vec::with_capacity(16);
    stack.push(value);
    while let Some(value) = stack.pop() {
        total += match value {
            Value::Array(items) => {
                stack.extend(items);
                2 + items.len().saturating_sub(1)
            }
            Value::Object(map) => {
                stack.extend(map.values());
                object_len(map)
            }
            scalar => scalar_len(scalar),
        };
        if total > limit {
            return Err(total);
        }
    }
    Ok(total)
}

/// Whether any byte is one JSON escapes (a control character, `"` or `\\`), eight bytes at
/// a time: `x - 0x20..` borrows into a byte's high bit only where the byte was below `0x20`,
/// and `"` and `\\` are found the same way after an XOR that zeroes them.
fn needs_escape(bytes: &[u8]) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(LOW * n) & !x & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        if below(x, 0x20)
            | below(x ^ (LOW * u64::from(b'"')), 1)
            | below(x ^ (LOW * u64::from(b'\\')), 1)
            != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

struct LenCounter(usize);

impl std::io::Write for LenCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

/// The JSON pointer of the first NaN or infinite float in `value`'s serialized form, with
/// what it is (`"NaN"`, `"inf"`, `"-inf"`), or `None` when every float is finite.
///
/// Walks the value with a serializer that writes nothing, so it costs a fraction of a
/// serialization; the engine calls it only for types whose schema has numbers.
pub(crate) fn non_finite<T: Serialize + ?Sized>(value: &T) -> Option<(String, String)> {
    match value.serialize(Finite) {
        Ok(()) => None,
        Err(NonFinite::Found { mut path, what }) => {
            path.reverse();
            let mut pointer = String::new();
            for segment in &path {
                push_pointer(&mut pointer, segment);
            }
            Some((pointer, what))
        }
        // A type whose `Serialize` fails on its own fails the real serialization too.
        Err(NonFinite::Custom) => None,
    }
}

#[derive(Debug)]
enum NonFinite {
    /// Path segments innermost first, pushed while the error travels outwards.
    Found {
        path: Vec<String>,
        what: String,
    },
    Custom,
}

impl NonFinite {
    fn at(self, segment: impl FnOnce() -> String) -> Self {
        match self {
            NonFinite::Found { mut path, what } => {
                path.push(segment());
                NonFinite::Found { path, what }
            }
            other => other,
        }
    }
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("non-finite float")
    }
}

impl std::error::Error for NonFinite {}

impl ser::Error for NonFinite {
    fn custom<T: fmt::Display>(_: T) -> Self {
        NonFinite::Custom
    }
}

fn float(v: f64) -> Result<(), NonFinite> {
    if v.is_finite() {
        return Ok(());
    }
    let what = if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "inf"
    } else {
        "-inf"
    };
    Err(NonFinite::Found {
        path: Vec::new(),
        what: what.to_owned(),
    })
}

/// The walking serializer of [`non_finite`].
#[derive(Clone, Copy)]
struct Finite;

/// A compound (sequence, map, struct) of [`Finite`]: counts elements for the path.
struct FiniteCompound {
    index: usize,
    key: Option<String>,
}

impl FiniteCompound {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        let index = self.index;
        self.index += 1;
        value
            .serialize(Finite)
            .map_err(|e| e.at(|| index.to_string()))
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), NonFinite> {
        value.serialize(Finite).map_err(|e| e.at(|| key.to_owned()))
    }
}

macro_rules! finite_ok {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), NonFinite> { Ok(()) })*
    };
}

impl ser::Serializer for Finite {
    type Ok = ();
    type Error = NonFinite;
    type SerializeSeq = FiniteCompound;
    type SerializeTuple = FiniteCompound;
    type SerializeTupleStruct = FiniteCompound;
    type SerializeTupleVariant = FiniteCompound;
    type SerializeMap = FiniteCompound;
    type SerializeStruct = FiniteCompound;
    type SerializeStructVariant = FiniteCompound;

    finite_ok! {
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_char: char,
        serialize_str: &str, serialize_bytes: &[u8],
    }

    fn serialize_f32(self, v: f32) -> Result<(), NonFinite> {
        float(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), NonFinite> {
        float(v)
    }

    fn serialize_none(self) -> Result<(), NonFinite> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NonFinite> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), NonFinite> {
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NonFinite> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NonFinite> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NonFinite> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), NonFinite> {
        value
            .serialize(self)
            .map_err(|e| e.at(|| variant.to_owned()))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<FiniteCompound, NonFinite> {
        Ok(FiniteCompound {
            index: 0,
            key: None,
        })
    }

    fn serialize_tuple(self, _: usize) -> Result<FiniteCompound, NonFinite> {
        self.serialize_seq(None)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<FiniteCompound, NonFinite> {
        self.serialize_seq(None)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<FiniteCompound, NonFinite> {
        self.serialize_seq(None)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<FiniteCompound, NonFinite> {
        self.serialize_seq(None)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<FiniteCompound, NonFinite> {
        self.serialize_seq(None)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<FiniteCompound, NonFinite> {
        self.serialize_seq(None)
    }
}

impl ser::SerializeSeq for FiniteCompound {
    type Ok = ();
    type Error = NonFinite;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        self.element(value)
    }

    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeTuple for FiniteCompound {
    type Ok = ();
    type Error = NonFinite;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        self.element(value)
    }

    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for FiniteCompound {
    type Ok = ();
    type Error = NonFinite;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        self.element(value)
    }

    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for FiniteCompound {
    type Ok = ();
    type Error = NonFinite;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        self.element(value)
    }

    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeMap for FiniteCompound {
    type Ok = ();
    type Error = NonFinite;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NonFinite> {
        // Keys of JSON maps are strings; keep the text for the path when it is one.
        self.key = serde_json::to_value(key)
            .ok()
            .and_then(|k| k.as_str().map(str::to_owned));
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        let key = self.key.take().unwrap_or_default();
        self.field(&key, value)
    }

    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeStruct for FiniteCompound {
    type Ok = ();
    type Error = NonFinite;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), NonFinite> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for FiniteCompound {
    type Ok = ();
    type Error = NonFinite;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), NonFinite> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let err = parse_strict(br#"{"a": {"list": [{"x": 1, "x": 2}]}}"#).unwrap_err();
        match err {
            StrictError::Duplicate(dup, e) => {
                assert_eq!(dup.pointer, "/a/list/0");
                assert_eq!(dup.key, "x");
                assert_eq!(e.line(), 1);
            }
            other => panic!("unexpected {other:?}"),
        }
        let ok = parse_strict(br#"{"a": 1, "b": [1, 2.5, "x", null, true]}"#).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"a": 1, "b": [1, 2.5, "x", null, true]})
        );
        assert!(matches!(parse_strict(b"{} x"), Err(StrictError::Syntax(_))));
    }

    #[test]
    fn escapes_are_found_anywhere_in_a_string() {
        for len in 0..24 {
            let plain = "a".repeat(len);
            assert!(!needs_escape(plain.as_bytes()));
            for at in 0..len {
                for special in [b'"', b'\\', b'\n', 0x00, 0x1f] {
                    let mut bytes = plain.clone().into_bytes();
                    bytes[at] = special;
                    assert!(needs_escape(&bytes), "{len} {at} {special}");
                }
                let mut high = plain.clone().into_bytes();
                high[at] = 0xff; // bytes of UTF-8 above ASCII are not escaped
                assert!(!needs_escape(&high));
            }
        }
    }

    #[test]
    fn json_len_is_the_serialized_length() {
        let values = [
            serde_json::json!(null),
            serde_json::json!({ "a": [1, -2.5, true, false, null], "b\"c": "x\u{1}y\n\\", "é": {} }),
            serde_json::json!([[], {}, "", 1e300, u64::MAX, i64::MIN]),
        ];
        for value in values {
            let len = serde_json::to_vec(&value).unwrap().len();
            assert_eq!(json_len(&value, usize::MAX), Ok(len), "{value}");
            assert!(json_len(&value, len - 1).is_err());
        }
    }

    #[test]
    fn limits_are_checked_in_one_walk_depth_first() {
        let doc = serde_json::json!({"a": [1, {"b": "x\"y"}], "c": null, "d": [[[]]]});
        let len = serde_json::to_vec(&doc).unwrap().len();
        let depth = 4; // {} > [] > [] > []
        assert_eq!(check_limits(&doc, depth, len), Ok(()));
        assert_eq!(check_limits(&doc, depth, len - 1), Err(Over::Length));
        assert_eq!(check_limits(&doc, depth - 1, len), Err(Over::Depth));
        // Over both, however the walk meets them: the depth is what is reported.
        assert_eq!(check_limits(&doc, depth - 1, 1), Err(Over::Depth));
        let mut deep = serde_json::json!(1);
        for _ in 0..10_000 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(check_limits(&deep, 128, usize::MAX), Err(Over::Depth));
        assert_eq!(check_limits(&deep, 128, 10), Err(Over::Depth));
        drop_deep(deep);
        // Wider than the inline stack: still counted exactly.
        let wide = Value::Array((0..1000).map(Value::from).collect());
        let len = serde_json::to_vec(&wide).unwrap().len();
        assert_eq!(check_limits(&wide, 1, len), Ok(()));
        assert_eq!(check_limits(&wide, 1, len - 1), Err(Over::Length));
    }

    #[test]
    fn pointer_segments_are_escaped() {
        let err = parse_strict(br#"{"a/b~c": {"k": 1, "k": 1}}"#).unwrap_err();
        let StrictError::Duplicate(dup, _) = err else {
            panic!()
        };
        assert_eq!(dup.pointer, "/a~1b~0c");
    }

    #[derive(serde::Serialize)]
    struct Scores {
        name: String,
        best: Option<f64>,
        all: Vec<f32>,
    }

    #[test]
    fn non_finite_floats_are_found_with_their_path() {
        let ok = Scores {
            name: "a".into(),
            best: Some(1.5),
            all: vec![1.0],
        };
        assert_eq!(non_finite(&ok), None);
        let nan = Scores {
            name: "a".into(),
            best: None,
            all: vec![1.0, f32::NAN],
        };
        assert_eq!(
            non_finite(&nan),
            Some(("/all/1".to_owned(), "NaN".to_owned()))
        );
        let inf = Scores {
            name: "a".into(),
            best: Some(f64::INFINITY),
            all: vec![],
        };
        assert_eq!(
            non_finite(&inf),
            Some(("/best".to_owned(), "inf".to_owned()))
        );
    }
}
