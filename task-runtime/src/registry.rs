//! The registry: every task, track and orchestrator, collected at link time by `inventory`.
//!
//! Each `#[task]`, `track!` and `orchestrator!` submits one [`TaskDescriptor`]. The registry
//! is built on first use; a duplicate id is an error naming both definitions.
//!
//! Pitfall: a crate that nothing in the binary references is not linked, and its tasks are
//! silently missing (dtolnay/inventory#7). Reference the crate (`use my_tasks as _;`) or
//! register handles explicitly with `Runtime::builder().register::<Handle>()`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::envelope::RunOutput;
use crate::exec::{Compact, Ended, Executor, RunInput, Seed, execute};
use crate::json::CompactJson;
use crate::policy::RunPolicy;
use crate::schema::TaskSchemas;
use crate::task::{Kind, Task};

/// A branch of an orchestrator as the registry lists it.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchInfo {
    /// The branch's field name.
    pub name: &'static str,
    /// The id of the branch's task.
    pub task: &'static str,
    /// Fans out over a collection (`each`).
    pub each: bool,
}

/// Everything the runtime and CLI know about one registered task.
pub struct TaskDescriptor {
    /// The id it is triggered by.
    pub id: &'static str,
    /// Task, track or orchestrator.
    pub kind: Kind,
    /// From the doc comment.
    pub description: &'static str,
    /// Where it is defined.
    pub file: &'static str,
    /// The line of the definition.
    pub line: u32,
    /// Step ids, in order (tracks).
    pub steps: &'static [&'static str],
    /// Branches (orchestrators).
    pub branches: &'static [BranchInfo],
    /// Retry, timeout and concurrency settings.
    pub policy: RunPolicy,
    /// The cron schedule it declares (`#[task(schedule = "..")]`).
    pub schedule: Option<crate::schedules::ScheduleSpec>,
    schemas: fn() -> &'static TaskSchemas,
    run_json: for<'a> fn(&'a Executor, Value, Seed) -> BoxFuture<'a, RunOutput<Value>>,
    run_stored: for<'a> fn(&'a Executor, Value, Seed) -> BoxFuture<'a, StoredEnd>,
    run_background: for<'a> fn(&'a Executor, CompactJson, Seed) -> BoxFuture<'a, Box<dyn Ended>>,
}

/// How one attempt of a stored run ended: its envelope (`results` is the output as JSON),
/// and when the attempt failed with retries left, how long until the retry.
pub(crate) struct StoredEnd {
    pub(crate) envelope: RunOutput<Value>,
    pub(crate) retry_in: Option<Duration>,
}

/// What `inventory` collects: a pointer to the descriptor static each definition generates.
/// Reached by generated code through `__private` only.
#[derive(Debug)]
pub struct Registration(pub &'static TaskDescriptor);

inventory::collect!(Registration);

impl TaskDescriptor {
    /// The descriptor of handle `T`; generated code calls this inside `inventory::submit!`.
    #[doc(hidden)]
    pub const fn of<T: Task>(
        description: &'static str,
        file: &'static str,
        line: u32,
        steps: &'static [&'static str],
        branches: &'static [BranchInfo],
    ) -> Self {
        TaskDescriptor {
            id: T::ID,
            kind: T::KIND,
            description,
            file,
            line,
            steps,
            branches,
            policy: T::POLICY,
            schedule: T::SCHEDULE,
            schemas: T::schemas,
            run_json: run_json::<T>,
            run_stored: run_stored::<T>,
            run_background: run_background::<T>,
        }
    }

    /// Input and output schemas (built on first call).
    pub fn schemas(&self) -> &'static TaskSchemas {
        (self.schemas)()
    }

    /// Runs the task by id: JSON in, JSON envelope out. Boxed, so a spawned run costs only
    /// its captures until it is first polled.
    pub(crate) fn run_json<'a>(
        &self,
        exec: &'a Executor,
        input: Value,
        seed: Seed,
    ) -> BoxFuture<'a, RunOutput<Value>> {
        (self.run_json)(exec, input, seed)
    }

    /// Runs a background run by id (`Runtime::trigger`) to its end, kept until waited for.
    pub(crate) fn run_background<'a>(
        &self,
        exec: &'a Executor,
        input: CompactJson,
        seed: Seed,
    ) -> BoxFuture<'a, Box<dyn Ended>> {
        (self.run_background)(exec, input, seed)
    }

    /// Runs one attempt of a stored run (`seed.attempt` says which).
    pub(crate) fn run_stored<'a>(
        &self,
        exec: &'a Executor,
        input: Value,
        seed: Seed,
    ) -> BoxFuture<'a, StoredEnd> {
        (self.run_stored)(exec, input, seed)
    }

    /// `file:line` of the definition.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

impl std::fmt::Debug for TaskDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskDescriptor")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

/// The entry point of runs by id for handle `T`.
fn run_json<T: Task>(exec: &Executor, input: Value, seed: Seed) -> BoxFuture<'_, RunOutput<Value>> {
    Box::pin(async move {
        execute::<T>(exec, RunInput::Json(input), seed)
            .await
            .into_json_envelope()
    })
}

/// The entry point of background runs by id for handle `T`.
fn run_background<T: Task>(
    exec: &Executor,
    input: CompactJson,
    seed: Seed,
) -> BoxFuture<'_, Box<dyn Ended>> {
    Box::pin(async move {
        let json = input.value();
        let mut finished = execute::<T>(exec, RunInput::Json(json), seed)
            .await
            .without_json();
        // Kept as text until the envelope is built (see `Compact`).
        finished.input = Value::Null;
        Box::new(Compact { finished, input }) as Box<dyn Ended>
    })
}

/// The entry point of stored runs for handle `T`.
fn run_stored<T: Task>(exec: &Executor, input: Value, seed: Seed) -> BoxFuture<'_, StoredEnd> {
    Box::pin(async move {
        let finished = execute::<T>(exec, RunInput::Json(input), seed).await;
        let retry_in = finished.retry_in;
        StoredEnd {
            envelope: finished.into_json_envelope(),
            retry_in,
        }
    })
}

/// Why the registry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two definitions share an id.
    #[error("task id '{id}' is defined twice: at {first} and at {second}")]
    DuplicateId {
        /// The shared id.
        id: String,
        /// `file:line` of one definition.
        first: String,
        /// `file:line` of the other.
        second: String,
    },
}

/// Lookup of registered tasks by id.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_id: HashMap<&'static str, &'static TaskDescriptor>,
}

impl Registry {
    /// Everything `inventory` collected, built once per process.
    pub fn global() -> Result<&'static Registry, RegistryError> {
        static GLOBAL: OnceLock<Result<Registry, RegistryError>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                Registry::from_entries(inventory::iter::<Registration>.into_iter().map(|r| r.0))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A registry of exactly these entries.
    pub fn from_entries(
        entries: impl IntoIterator<Item = &'static TaskDescriptor>,
    ) -> Result<Registry, RegistryError> {
        let mut registry = Registry::default();
        for entry in entries {
            registry.insert(entry)?;
        }
        Ok(registry)
    }

    /// Adds one entry; the same definition twice is fine, two definitions of one id are not.
    pub fn insert(&mut self, entry: &'static TaskDescriptor) -> Result<(), RegistryError> {
        match self.by_id.get(entry.id) {
            Some(existing) if std::ptr::eq(*existing, entry) => Ok(()),
            Some(existing) => {
                // Report in a stable order whatever order the linker chose.
                let (mut first, mut second) = (existing.location(), entry.location());
                if second < first {
                    std::mem::swap(&mut first, &mut second);
                }
                Err(RegistryError::DuplicateId {
                    id: entry.id.to_owned(),
                    first,
                    second,
                })
            }
            None => {
                self.by_id.insert(entry.id, entry);
                Ok(())
            }
        }
    }

    /// The entry registered under `id`.
    pub fn get(&self, id: &str) -> Option<&'static TaskDescriptor> {
        self.by_id.get(id).copied()
    }

    /// All entries, sorted by id.
    pub fn entries(&self) -> Vec<&'static TaskDescriptor> {
        let mut all: Vec<_> = self.by_id.values().copied().collect();
        all.sort_by_key(|entry| entry.id);
        all
    }

    /// Up to three registered ids closest to `id`, for "did you mean" messages.
    pub fn suggest(&self, id: &str) -> Vec<String> {
        let mut scored: Vec<(f64, &str)> = self
            .by_id
            .keys()
            .map(|candidate| (strsim_score(id, candidate), *candidate))
            .filter(|(score, _)| *score >= 0.6)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        scored
            .into_iter()
            .take(3)
            .map(|(_, c)| c.to_owned())
            .collect()
    }
}

fn strsim_score(a: &str, b: &str) -> f64 {
    strsim::jaro_winkler(&a.to_lowercase(), &b.to_lowercase())
}
