//! JSON Schemas of task inputs and outputs (from schemars) and their validators (from
//! jsonschema), compiled once per task and reused by every run.

use std::sync::OnceLock;

use jsonschema::Validator;
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
}

/// A compiled validator, or why the schema could not be compiled.
enum Compiled {
    Ok(Box<Validator>),
    Err(String),
}

impl Compiled {
    fn new(schema: &Value) -> Self {
        match jsonschema::validator_for(schema) {
            Ok(validator) => Compiled::Ok(Box::new(validator)),
            Err(e) => Compiled::Err(e.to_string()),
        }
    }

    fn issues(&self, instance: &Value) -> Vec<Issue> {
        match self {
            // The fast path: one pass that allocates nothing for a valid document.
            Compiled::Ok(validator) if validator.is_valid(instance) => Vec::new(),
            Compiled::Ok(validator) => validator
                .iter_errors(instance)
                .map(|error| Issue {
                    path: error.instance_path().as_str().to_owned(),
                    message: error.to_string(),
                })
                .collect(),
            Compiled::Err(reason) => vec![Issue {
                path: String::new(),
                message: format!("the task's schema does not compile: {reason}"),
            }],
        }
    }
}

impl TaskSchemas {
    /// Generates both schemas and compiles their validators.
    pub fn build<I: JsonSchema, O: JsonSchema>() -> Self {
        let input: Value = schemars::generate::SchemaSettings::draft2020_12()
            .for_deserialize()
            .into_generator()
            .into_root_schema_for::<I>()
            .into();
        let output: Value = schemars::generate::SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator()
            .into_root_schema_for::<O>()
            .into();
        TaskSchemas {
            input_validator: Compiled::new(&input),
            output_validator: Compiled::new(&output),
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
pub struct SchemaCell(OnceLock<TaskSchemas>);

impl SchemaCell {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        SchemaCell(OnceLock::new())
    }

    /// The schemas, built on first call.
    pub fn get<I: JsonSchema, O: JsonSchema>(&self) -> &TaskSchemas {
        self.0.get_or_init(TaskSchemas::build::<I, O>)
    }
}
