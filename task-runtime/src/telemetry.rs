//! Traces (feature `otel`): the runtime's spans exported over OTLP, and the trace context a
//! run carries through the store, so a run triggered over HTTP in one process and executed by
//! a worker in another is one trace.
//!
//! - **Export.** The CLI's commands (`worker`, `serve`, `trigger`, `run`, ...) add a
//!   `tracing-opentelemetry` layer to their subscriber when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; `OTEL_SERVICE_NAME` names the service
//!   (default: the binary's name). Spans go out in batches over OTLP/HTTP (protobuf) with the
//!   blocking `reqwest` client, on the batch processor's own thread: no tokio reactor is
//!   needed there, and a run never waits for an export. The provider is flushed and shut down
//!   when the command ends (after a graceful stop of `worker` or `serve`).
//! - **Spans.** `run` (every run: top-level, track step, orchestrator branch and `each` item,
//!   `ctx.run` child; named after the task in the export), `attempt` under it, and `request`
//!   for an HTTP trigger. They carry `task`, `run_id`, `tenant_id`, `project_id`, `attempt`
//!   and, once known, `status`; a failure sets the span's status to error with the message,
//!   and `error.type` to the error's kind.
//! - **Context across the store.** A trigger stores a W3C `traceparent` with the run: the
//!   current span's (an in-process or CLI trigger, the `request` span of an HTTP trigger) or,
//!   when there is no exported span, the HTTP request's own `traceparent` header. The worker
//!   that claims the run makes its `run` span a child of it. An orchestrator's branches and
//!   items enqueued as runs of their own carry the context of the orchestrator's attempt.
//!   (`tracestate` is not kept.)
//!
//! Without the feature every function here is an empty inline one and [`Remote`] is a
//! zero-sized value: an in-process user compiles none of it and a run pays nothing. With the
//! feature but no endpoint, no layer is installed: the span calls find no OpenTelemetry layer
//! and return at once.

use tracing::Span;

/// The status of a run or an attempt once it ended, as spans and logs name it.
pub(crate) fn status_of(error: Option<&crate::TaskError>) -> &'static str {
    match error {
        None => "completed",
        Some(error) if error.kind_name() == "cancelled" => "cancelled",
        Some(_) => "failed",
    }
}

/// Records how a run or an attempt ended on its span: `status`, and for a failure
/// `error.type` (the error's kind) and the span's OpenTelemetry status.
#[inline]
pub(crate) fn ended(span: &Span, status: &'static str, error: Option<&crate::TaskError>) {
    if span.is_disabled() {
        return;
    }
    span.record("status", status);
    if let Some(error) = error {
        span.record("error.type", error.kind_name());
        #[cfg(feature = "otel")]
        imp::failed(span, error);
    }
}

#[cfg(any(feature = "http", feature = "otel"))]
/// Checks a W3C `traceparent` value (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`):
/// `None` for anything else (logged at debug by the caller; a bad header never fails a
/// trigger).
pub(crate) fn traceparent(text: &str) -> Option<&str> {
    let text = text.trim();
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let [version, trace_id, parent_id, flags, rest @ ..] = parts.as_slice() else {
        return None;
    };
    // Version 00 has exactly four fields; a later version may add some after them.
    let valid = hex(version, 2)
        && *version != "ff"
        && (rest.is_empty() || *version != "00")
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then_some(text)
}

/// A trace context to continue: the parent of a claimed run's span (stored with the run), or
/// of an HTTP request's span (its `traceparent` header). Zero-sized without the feature.
#[derive(Debug, Clone, Default)]
pub(crate) struct Remote {
    #[cfg(feature = "otel")]
    parent: Option<Box<opentelemetry::trace::SpanContext>>,
}

impl Remote {
    /// The context a stored or received `traceparent` names; none if it is not one.
    #[inline]
    pub(crate) fn of(traceparent: Option<&str>) -> Remote {
        #[cfg(feature = "otel")]
        return Remote {
            parent: traceparent.and_then(imp::span_context).map(Box::new),
        };
        #[cfg(not(feature = "otel"))]
        {
            let _ = traceparent;
            Remote {}
        }
    }

    /// Makes `span`, not yet entered, a child of this context.
    #[inline]
    pub(crate) fn adopt(self, span: &Span) {
        #[cfg(feature = "otel")]
        if let Some(parent) = self.parent {
            imp::set_parent(span, *parent);
        }
        #[cfg(not(feature = "otel"))]
        let _ = span;
    }
}

/// The `traceparent` of the current span, when an OpenTelemetry layer exports it.
#[inline]
pub(crate) fn current() -> Option<String> {
    #[cfg(feature = "otel")]
    return imp::current();
    #[cfg(not(feature = "otel"))]
    None
}

/// Names a run's exported span after its task (`run` in the logs), and gives an attempt's
/// span the run's attributes, when spans are exported.
#[inline]
pub(crate) fn name_run(span: &Span, task: &'static str) {
    #[cfg(feature = "otel")]
    if imp::exporting() && !span.is_disabled() {
        span.record("otel.name", task);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, task);
}

/// The run's attributes on an attempt's exported span (the logs have them from the run's
/// span around it).
#[inline]
pub(crate) fn attempt_of(
    span: &Span,
    task: &'static str,
    run_id: &crate::RunId,
    scope: &crate::exec::Scope,
) {
    #[cfg(feature = "otel")]
    if imp::exporting() && !span.is_disabled() {
        imp::attempt_of(span, task, run_id, scope);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, task, run_id, scope);
}

/// The exporter a CLI command installs: none without the feature or the endpoint variables.
#[cfg(feature = "cli")]
#[derive(Default)]
pub(crate) struct Exporter {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Why the endpoint the variables name gets no exporter, logged once the subscriber is
    /// installed ([`report`](Self::report)).
    #[cfg(feature = "otel")]
    failure: Option<String>,
}

#[cfg(feature = "cli")]
impl Exporter {
    /// An exporter to the endpoint the standard `OTEL_*` variables name; none when they name
    /// none (or the exporter cannot be built: [`report`](Self::report) logs why).
    pub(crate) fn from_env() -> Exporter {
        #[cfg(feature = "otel")]
        return match imp::provider_from_env() {
            Ok(provider) => Exporter {
                provider,
                failure: None,
            },
            Err(failure) => Exporter {
                provider: None,
                failure: Some(failure),
            },
        };
        #[cfg(not(feature = "otel"))]
        Exporter {}
    }

    /// Logs why traces are not exported, if the variables asked for it (called once the
    /// subscriber is installed, so the warning goes where the logs go).
    pub(crate) fn report(&self) {
        #[cfg(feature = "otel")]
        if let Some(error) = &self.failure {
            tracing::warn!(%error, "traces are not exported");
        }
    }

    /// The layer exporting spans, for the subscriber the CLI installs.
    pub(crate) fn layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        #[cfg(feature = "otel")]
        return self.provider.as_ref().map(imp::layer);
        #[cfg(not(feature = "otel"))]
        None::<tracing_subscriber::layer::Identity>
    }

    /// Exports what is buffered and stops the exporter's thread.
    pub(crate) fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider {
            imp::shutdown(provider);
        }
    }
}

#[cfg(feature = "otel")]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};

    use opentelemetry::trace::{
        SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    #[cfg(feature = "cli")]
    use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    #[cfg(feature = "cli")]
    use tracing_subscriber::{Layer, registry::LookupSpan};

    /// Set once this process installed an exporter: spans get their export-only names and
    /// attributes only then, so the logs of a process that exports nothing stay as they are.
    static EXPORTING: AtomicBool = AtomicBool::new(false);

    pub(super) fn exporting() -> bool {
        EXPORTING.load(Ordering::Relaxed)
    }

    pub(super) fn span_context(traceparent: &str) -> Option<SpanContext> {
        let text = super::traceparent(traceparent)?;
        let mut parts = text.split('-').skip(1);
        let trace_id = TraceId::from_hex(parts.next()?).ok()?;
        let span_id = SpanId::from_hex(parts.next()?).ok()?;
        let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
        let context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags) & TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        context.is_valid().then_some(context)
    }

    pub(super) fn set_parent(span: &Span, parent: SpanContext) {
        let context = opentelemetry::Context::new().with_remote_span_context(parent);
        match span.set_parent(context) {
            // No OpenTelemetry layer in this process: nothing is exported to continue.
            Ok(()) | Err(tracing_opentelemetry::SetParentError::LayerNotFound) => {}
            Err(error) => tracing::debug!(%error, "the span does not continue the stored trace"),
        }
    }

    pub(super) fn current() -> Option<String> {
        let context = Span::current().context();
        let span = context.span();
        let span = span.span_context();
        span.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                span.trace_id(),
                span.span_id(),
                span.trace_flags().to_u8()
            )
        })
    }

    pub(super) fn failed(span: &Span, error: &crate::TaskError) {
        span.set_status(Status::error(error.to_string()));
    }

    pub(super) fn attempt_of(
        span: &Span,
        task: &'static str,
        run_id: &crate::RunId,
        scope: &crate::exec::Scope,
    ) {
        span.set_attribute("task", task);
        span.set_attribute("run_id", run_id.to_string());
        if let Some(tenant) = &scope.tenant_id {
            span.set_attribute("tenant_id", tenant.to_string());
        }
        if let Some(project) = &scope.project_id {
            span.set_attribute("project_id", project.to_string());
        }
    }

    #[cfg(feature = "cli")]
    /// Whether the standard variables name an endpoint to export traces to.
    fn endpoint_set() -> bool {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
    }

    #[cfg(feature = "cli")]
    pub(super) fn provider_from_env() -> Result<Option<SdkTracerProvider>, String> {
        if !endpoint_set() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|error| error.to_string())?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty())
            && let Some(name) = binary_name()
        {
            resource = resource.with_service_name(name);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Some(provider))
    }

    #[cfg(feature = "cli")]
    fn binary_name() -> Option<String> {
        let exe = std::env::current_exe().ok()?;
        Some(exe.file_stem()?.to_string_lossy().into_owned())
    }

    #[cfg(feature = "cli")]
    /// The name and target of the worker's own span: it lasts as long as the worker, so it is
    /// not exported (runs a worker claims without a stored context start traces of their own
    /// instead of all joining one that never ends).
    const WORKER_SPAN: (&str, &str) = ("worker", "task_runtime::worker");

    #[cfg(feature = "cli")]
    pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        use opentelemetry::trace::TracerProvider;
        let tracer = provider.tracer("task-runtime");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !(meta.is_span() && (meta.name(), meta.target()) == WORKER_SPAN)
            }))
    }

    #[cfg(feature = "cli")]
    pub(super) fn shutdown(provider: SdkTracerProvider) {
        if let Err(error) = provider.shutdown() {
            tracing::warn!(%error, "exporting the last spans failed");
        }
    }
}

#[cfg(all(test, any(feature = "http", feature = "otel")))]
mod tests {
    use super::traceparent;

    #[test]
    fn traceparents_are_checked_not_trusted() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent(good), Some(good));
        assert_eq!(traceparent(&format!(" {good} ")), Some(good));
        // A later version may append fields; version 00 may not.
        assert!(traceparent(&format!("01{}-extra", &good[2..])).is_some());
        for bad in [
            "",
            "garbage",
            &format!("{good}-extra"),
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(traceparent(bad), None, "{bad:?}");
        }
    }
}
