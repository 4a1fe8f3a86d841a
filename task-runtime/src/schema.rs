//! JSON Schemas of task inputs and outputs (from schemars) and their validators (from
//! jsonschema), compiled once per task and reused by every run.
//!
//! Input schemas are closed: every object schema generated from a Rust struct gets
//! `additionalProperties: false` (or `unevaluatedProperties: false` where the object is
//! composed with `allOf`/`oneOf`/`anyOf`, as a flattened enum is), so a misspelt field is an
//! `invalidInput` naming the field and the closest known one, not a default silently used.
//! A type opts out by stating its own policy:
//! `#[schemars(extend("additionalProperties" = true))]`.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use schemars::JsonSchema;
use serde_json::Value;

use crate::error::Issue;

/// A task's input and output schemas with their compiled validators.
pub struct TaskSchemas {
    /// JSON Schema of the input (as deserialised).
    pub input: Value,
    /// JSON Schema of the output (as serialised).
    pub output: Value,
    input_validator: Compiled,
    output_validator: Compiled,
    /// The input may hold floats (which serde_json would write as `null` when not finite).
    pub(crate) input_has_floats: bool,
    /// The output may hold floats.
    pub(crate) output_has_floats: bool,
    /// The input schema asserts more than its type guarantees (a length, a range, a
    /// pattern, ...): a typed input must be validated. See [`asserts`].
    pub(crate) input_asserts: bool,
    /// The same for the output schema.
    pub(crate) output_asserts: bool,
    /// The input's one `trampData` is its own top-level, optional field (a flattened
    /// `BaseInput`): a typed top-level run's JSON can leave it out, and its envelope share
    /// the input's copy (see `input::sharing_tramp`). See [`tramp_at_top`].
    pub(crate) input_tramp_at_top: bool,
}

impl std::fmt::Debug for TaskSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSchemas")
            .field("input", &self.input)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// A compiled validator, or why the schema could not be compiled.
enum Compiled {
    Ok {
        validator: Box<Validator>,
        /// Every property name the schema knows, for "did you mean" on unknown fields.
        fields: Vec<String>,
    },
    Err(String),
}

impl Compiled {
    fn new(schema: &Value) -> Self {
        match jsonschema::validator_for(schema) {
            Ok(validator) => {
                let mut fields = BTreeSet::new();
                collect_properties(schema, &mut fields);
                Compiled::Ok {
                    validator: Box::new(validator),
                    fields: fields.into_iter().collect(),
                }
            }
            Err(e) => Compiled::Err(e.to_string()),
        }
    }

    fn issues(&self, instance: &Value) -> Vec<Issue> {
        match self {
            // The fast path: one pass that allocates nothing for a valid document.
            Compiled::Ok { validator, .. } if validator.is_valid(instance) => Vec::new(),
            Compiled::Ok { validator, fields } => {
                let mut issues = Vec::new();
                for error in validator.iter_errors(instance) {
                    let path = error.instance_path().as_str().to_owned();
                    match error.kind() {
                        ValidationErrorKind::AdditionalProperties { unexpected }
                        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                            for field in unexpected {
                                let mut at = path.clone();
                                crate::json::push_pointer(&mut at, field);
                                issues.push(Issue {
                                    path: at,
                                    message: unknown_field(field, fields),
                                });
                            }
                        }
                        _ => issues.push(Issue {
                            path,
                            message: error.to_string(),
                        }),
                    }
                }
                issues
            }
            Compiled::Err(reason) => vec![Issue {
                path: String::new(),
                message: format!("the task's schema does not compile: {reason}"),
            }],
        }
    }
}

fn unknown_field(field: &str, known: &[String]) -> String {
    let closest = known
        .iter()
        .map(|k| {
            (
                strsim::jaro_winkler(&field.to_lowercase(), &k.to_lowercase()),
                k,
            )
        })
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, k)) => format!("unknown field `{field}`; did you mean `{k}`?"),
        None => format!("unknown field `{field}`"),
    }
}

/// Every key of every `properties` object in the schema.
fn collect_properties(schema: &Value, into: &mut BTreeSet<String>) {
    let mut stack = vec![schema];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    into.extend(props.keys().cloned());
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
}

/// Whether the schema allows a float anywhere (`"type": "number"`).
fn has_floats(schema: &Value) -> bool {
    let mut stack = vec![schema];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                match map.get("type") {
                    Some(Value::String(t)) if t == "number" => return true,
                    Some(Value::Array(types)) if types.iter().any(|t| t == "number") => {
                        return true;
                    }
                    _ => {}
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    false
}

/// Whether the schema's one property named `trampData` is an optional, free-form object at
/// its top level: then the only `trampData` a value of the type writes is its own top-level
/// one, and it can go back there.
fn tramp_at_top(schema: &Value) -> bool {
    let top = schema
        .get("properties")
        .and_then(|p| p.get("trampData"))
        .is_some_and(|tramp| {
            let object = match tramp.get("type") {
                Some(Value::String(t)) => t == "object",
                Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
                _ => false,
            };
            object && tramp.get("properties").is_none()
        });
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|k| k == "trampData"));
    if !top || required {
        return false;
    }
    let mut named = 0;
    let mut stack = vec![schema];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties")
                    && props.contains_key("trampData")
                {
                    named += 1;
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    named == 1
}

/// Keywords that constrain a value beyond what its Rust type guarantees once serde has
/// serialized it: a value of the type can break them, so it must be validated.
const ASSERTIONS: &[&str] = &[
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "minProperties",
    "maxProperties",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "if",
    "not",
    "const",
    "enum",
    "format",
];

/// The range schemars states for an integer type, which the type itself guarantees.
fn integer_range(format: &str) -> Option<(f64, f64)> {
    Some(match format {
        "uint8" => (0.0, f64::from(u8::MAX)),
        "uint16" => (0.0, f64::from(u16::MAX)),
        "uint32" => (0.0, f64::from(u32::MAX)),
        "uint64" | "uint" => (0.0, u64::MAX as f64),
        "int8" => (f64::from(i8::MIN), f64::from(i8::MAX)),
        "int16" => (f64::from(i16::MIN), f64::from(i16::MAX)),
        "int32" => (f64::from(i32::MIN), f64::from(i32::MAX)),
        "int64" | "int" => (i64::MIN as f64, i64::MAX as f64),
        _ => return None,
    })
}

/// Formats schemars writes for number types: annotations the type guarantees.
const TYPE_FORMATS: &[&str] = &[
    "uint8", "uint16", "uint32", "uint64", "uint", "int8", "int16", "int32", "int64", "int",
    "float", "double",
];

/// Whether any part of `schema` asserts more than the types it describes guarantee.
///
/// A typed value serialized by serde always has the shape its derived schema describes
/// (types, required fields, properties, enum variants as serde writes them are covered by
/// `type`/`oneOf` and need no check), but not the refinements: lengths, ranges, patterns,
/// formats, enumerations written by hand. When a schema has none, validating a typed value
/// against it can never fail, and typed runs skip it (a JSON input is always validated). An
/// integer type's own range (`format: "uint32"` with `minimum: 0`) is not a refinement.
pub(crate) fn asserts(schema: &Value) -> bool {
    let mut stack = vec![schema];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                let format = map.get("format").and_then(Value::as_str);
                let range = format.and_then(integer_range);
                for keyword in ASSERTIONS {
                    let Some(value) = map.get(*keyword) else {
                        continue;
                    };
                    let implied = match *keyword {
                        "format" => format.is_some_and(|f| TYPE_FORMATS.contains(&f)),
                        "minimum" => range.is_some_and(|(min, _)| value.as_f64() == Some(min)),
                        "maximum" => range.is_some_and(|(_, max)| value.as_f64() == Some(max)),
                        // `properties` and `$defs` hold schemas keyed by name: a property
                        // named like a keyword is not one.
                        _ => false,
                    };
                    if !implied {
                        return true;
                    }
                }
                for (key, child) in map {
                    match key.as_str() {
                        "properties" | "$defs" | "definitions" => {
                            if let Value::Object(named) = child {
                                stack.extend(named.values());
                            }
                        }
                        _ => stack.push(child),
                    }
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    false
}

const COMPOSITIONS: [&str; 3] = ["allOf", "oneOf", "anyOf"];

/// Closes every struct-shaped object schema (see the module docs). Schemas that are direct
/// parts of a composition are left open: their siblings' properties are valid there too, and
/// the composing object is the one closed (with `unevaluatedProperties`).
fn close_objects(schema: &mut Value) {
    let mut stack: Vec<(&mut Value, bool)> = vec![(schema, false)];
    while let Some((node, in_composition)) = stack.pop() {
        match node {
            Value::Object(map) => {
                let is_struct = map.contains_key("properties")
                    && !map.contains_key("additionalProperties")
                    && !map.contains_key("unevaluatedProperties");
                if is_struct && !in_composition {
                    let composed = COMPOSITIONS.iter().any(|k| map.contains_key(*k));
                    let keyword = if composed {
                        "unevaluatedProperties"
                    } else {
                        "additionalProperties"
                    };
                    map.insert(keyword.to_owned(), Value::Bool(false));
                }
                for (key, child) in map.iter_mut() {
                    let composition = COMPOSITIONS.contains(&key.as_str());
                    stack.push((child, composition));
                }
            }
            // The items of a composition array are its parts; any other array holds schemas
            // (`prefixItems`) or plain values (`enum`, `required`), which nothing here changes.
            Value::Array(items) => {
                for item in items {
                    stack.push((item, in_composition));
                }
            }
            _ => {}
        }
    }
}

impl TaskSchemas {
    /// Generates both schemas and compiles their validators.
    pub fn build<I: JsonSchema, O: JsonSchema>() -> Self {
        let mut input: Value = schemars::generate::SchemaSettings::draft2020_12()
            .for_deserialize()
            .into_generator()
            .into_root_schema_for::<I>()
            .into();
        close_objects(&mut input);
        let output: Value = schemars::generate::SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator()
            .into_root_schema_for::<O>()
            .into();
        TaskSchemas {
            input_validator: Compiled::new(&input),
            output_validator: Compiled::new(&output),
            input_has_floats: has_floats(&input),
            output_has_floats: has_floats(&output),
            input_asserts: asserts(&input),
            output_asserts: asserts(&output),
            input_tramp_at_top: tramp_at_top(&input),
            input,
            output,
        }
    }

    /// Every violation of the input schema, with JSON pointer paths; empty when valid.
    pub fn input_issues(&self, input: &Value) -> Vec<Issue> {
        self.input_validator.issues(input)
    }

    /// Every violation of the output schema, with JSON pointer paths; empty when valid.
    pub fn output_issues(&self, output: &Value) -> Vec<Issue> {
        self.output_validator.issues(output)
    }
}

/// Lazily built [`TaskSchemas`]; `#[task]` puts one in a `static` per task.
#[derive(Debug)]
pub struct SchemaCell(OnceLock<TaskSchemas>);

impl SchemaCell {
    /// An empty cell.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        SchemaCell(OnceLock::new())
    }

    /// The schemas, built on first call.
    pub fn get<I: JsonSchema, O: JsonSchema>(&self) -> &TaskSchemas {
        self.0.get_or_init(TaskSchemas::build::<I, O>)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::BaseInput;

    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Invoice {
        #[serde(flatten)]
        base: BaseInput,
        #[serde(default)]
        tax_rate: f64,
        lines: Vec<Line>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Line {
        sku: String,
    }

    /// A `BaseInput` nested under a field, not flattened.
    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Nested {
        job: BaseInput,
    }

    /// Its own `trampData` at the top and more in its items.
    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Batch {
        #[serde(flatten)]
        base: BaseInput,
        items: Vec<BaseInput>,
    }

    /// A required `trampData` of its own.
    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Required {
        tramp_data: crate::TrampData,
    }

    #[test]
    fn only_a_lone_optional_top_level_tramp_data_is_shared() {
        assert!(TaskSchemas::build::<Invoice, ()>().input_tramp_at_top);
        assert!(!TaskSchemas::build::<Nested, ()>().input_tramp_at_top);
        assert!(!TaskSchemas::build::<Batch, ()>().input_tramp_at_top);
        assert!(!TaskSchemas::build::<Required, ()>().input_tramp_at_top);
        assert!(!TaskSchemas::build::<Line, ()>().input_tramp_at_top);
    }

    #[derive(Deserialize, JsonSchema)]
    #[schemars(extend("additionalProperties" = true))]
    #[allow(dead_code)]
    struct Open {
        a: u32,
    }

    #[test]
    fn unknown_fields_are_refused_with_the_closest_known_one() {
        let schemas = TaskSchemas::build::<Invoice, ()>();
        assert_eq!(schemas.input["additionalProperties"], false);
        let issues = schemas.input_issues(&serde_json::json!({
            "tenantId": "t", "projectId": "p", "tax_rate": 0.07,
            "lines": [{ "sku": "a", "skew": 1 }]
        }));
        let messages: Vec<(&str, &str)> = issues
            .iter()
            .map(|i| (i.path.as_str(), i.message.as_str()))
            .collect();
        assert!(
            messages.contains(&(
                "/tax_rate",
                "unknown field `tax_rate`; did you mean `taxRate`?"
            )),
            "{messages:?}"
        );
        assert!(
            messages.contains(&("/lines/0/skew", "unknown field `skew`; did you mean `sku`?")),
            "{messages:?}"
        );
        assert!(schemas.input_has_floats);
    }

    #[derive(serde::Serialize, JsonSchema)]
    #[allow(dead_code)]
    struct Plain {
        count: u32,
        small: u8,
        ratio: f64,
        name: String,
        items: Vec<i64>,
        maybe: Option<u16>,
    }

    #[derive(serde::Serialize, JsonSchema)]
    #[allow(dead_code)]
    struct Refined {
        #[schemars(length(min = 1))]
        name: String,
    }

    #[test]
    fn only_refinements_make_a_schema_assert() {
        assert!(!TaskSchemas::build::<(), Plain>().output_asserts);
        assert!(TaskSchemas::build::<(), Refined>().output_asserts);
        assert!(
            TaskSchemas::build::<Invoice, ()>().input_asserts,
            "BaseInput's ids are non-empty"
        );
    }

    #[test]
    fn a_type_can_keep_its_schema_open() {
        let schemas = TaskSchemas::build::<Open, ()>();
        assert!(
            schemas
                .input_issues(&serde_json::json!({ "a": 1, "b": 2 }))
                .is_empty()
        );
        assert!(!schemas.input_has_floats);
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    #[allow(dead_code)]
    enum Shape {
        Circle { radius: u32 },
        Square { side: u32 },
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Drawing {
        #[serde(flatten)]
        shape: Shape,
        name: String,
    }

    #[test]
    fn flattened_enums_stay_valid_and_closed() {
        let schemas = TaskSchemas::build::<Drawing, ()>();
        let ok = serde_json::json!({ "kind": "circle", "radius": 2, "name": "c" });
        assert!(
            schemas.input_issues(&ok).is_empty(),
            "{:?}",
            schemas.input_issues(&ok)
        );
        let typo = serde_json::json!({ "kind": "circle", "radius": 2, "name": "c", "nmae": 1 });
        let issues = schemas.input_issues(&typo);
        assert!(issues.iter().any(|i| i.path == "/nmae"), "{issues:?}");
    }
}
