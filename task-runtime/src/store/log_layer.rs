//! `StoreLogLayer`: the seed's "Supabase logging" on a real table. A `tracing` layer that
//! writes every event inside a run's span to the store, off the hot path: the event becomes
//! a [`LogLine`] handed to the store's bounded buffer (a full buffer drops and counts the
//! line; it never blocks the task), and the store's writer commits lines in batches.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::{LogLine, RunStore};
use crate::id::RunId;

/// Writes the events of runs to a store; see [`Store::log_layer`](super::Store::log_layer).
#[derive(Clone)]
pub struct StoreLogLayer {
    /// Set once the store is connected: a binary installs its subscriber before it has one.
    store: Arc<OnceLock<Arc<dyn RunStore>>>,
}

impl fmt::Debug for StoreLogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreLogLayer").finish_non_exhaustive()
    }
}

impl StoreLogLayer {
    pub(crate) fn new(store: Arc<dyn RunStore>) -> Self {
        let layer = StoreLogLayer::unattached();
        let _ = layer.store.set(store);
        layer
    }

    /// A layer that writes nothing until [`attach`](Self::attach)ed to a store.
    pub(crate) fn unattached() -> Self {
        StoreLogLayer {
            store: Arc::default(),
        }
    }

    /// Starts writing to `store` (the first store attached stays).
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    pub(crate) fn attach(&self, store: &super::Store) {
        let _ = self.store.set(store.inner.clone());
    }
}

/// Kept in the extensions of every `run` span: which run its events belong to.
struct RunOf(RunId);

/// Reads the `run_id` field of a `run` span.
#[derive(Default)]
struct RunIdField(Option<RunId>);

impl Visit for RunIdField {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "run_id" {
            self.0 = format!("{value:?}").trim_matches('"').parse().ok();
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "run_id" {
            self.0 = value.parse().ok();
        }
    }
}

/// An event's message and other fields.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Map<String, Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields
                .insert(field.name().to_owned(), Value::String(text));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .insert(field.name().to_owned(), Value::String(value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }
}

impl<S> tracing_subscriber::Layer<S> for StoreLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "run" {
            return;
        }
        let mut field = RunIdField::default();
        attrs.record(&mut field);
        if let (Some(run_id), Some(span)) = (field.0, ctx.span(id)) {
            span.extensions_mut().insert(RunOf(run_id));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(store) = self.store.get() else {
            return;
        };
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        // The innermost run the event happened in.
        let Some(run_id) = scope
            .into_iter()
            .find_map(|span| span.extensions().get::<RunOf>().map(|run| run.0.clone()))
        else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        store.log(LogLine {
            run_id,
            at: SystemTime::now(),
            level: event.metadata().level().to_string(),
            message: fields.message,
            fields: Value::Object(fields.fields),
        });
    }
}
