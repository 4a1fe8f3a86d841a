//! The HTTP API (feature `http`): Trigger.dev's paths on top of any store, for web apps that
//! trigger runs, read them and follow them live.
//!
//! [`router`] is an [`axum::Router`] a program can serve as it is ([`serve`], or the CLI's
//! `serve`) or nest in its own app. Every route under `/api/v1` needs a bearer API key
//! ([`create_key`]); a key belongs to one tenant and reads and triggers only that tenant's
//! runs. Errors are the [`TaskError`] JSON with a fitting status:
//!
//! | status | when |
//! |--------|------|
//! | 400 | the body is not JSON, or an object in it names a key twice |
//! | 401 | no key, an unknown key or a revoked one |
//! | 403 | the payload's `tenantId` is another tenant than the key's |
//! | 404 | no such task, no such run, or another tenant's run |
//! | 409 | the idempotency key is held by a run triggered with another payload |
//! | 413 | the body is over the runtime's input limit (refused before it is parsed) |
//! | 422 | the payload breaks the task's input schema, or the options are invalid |
//! | 503 | the store cannot be reached, or the runtime is shutting down |
//!
//! With feature `metrics`, `GET /metrics` is the process's metrics in the Prometheus text
//! format (see [`crate::metrics`]), without an API key: it holds counts by task id and
//! status, no tenant's data. The router installs the Prometheus recorder when it is built.
//!
//! `GET /` is the runs page: the list with filters, a run's detail (input, envelope, its
//! child runs, logs), following the run live, with cancel and replay buttons.
//!
//! Routes: `POST /api/v1/tasks/{id}/trigger`, `GET /api/v1/runs/{id}`,
//! `GET /api/v1/runs?status=&task=&tag=&cursor=&limit=`, `POST /api/v1/runs/{id}/cancel`,
//! `POST /api/v1/runs/{id}/replay`, `GET /api/v1/runs/{id}/logs`,
//! `GET /api/v1/runs/{id}/events` (server-sent events), `GET /api/v1/tasks`,
//! `GET /api/v1/tasks/{id}/schema`, and wait tokens: `POST /api/v1/waitpoints/tokens`
//! (`{ "timeout": "1h", "tags": [] }` → `{ "id" }`), `GET /api/v1/waitpoints/tokens/{id}`,
//! `POST /api/v1/waitpoints/tokens/{id}/complete` (`{ "data": .. }` → `{ "success",
//! "outcome" }`, `success: false` when it changed nothing).

mod auth;
mod events;
mod runs;
mod tokens;

use std::future::Future;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::Runtime;
use crate::error::{ErrorKind, TaskError};
use crate::store::StoreError;

pub use auth::{ApiKeyInfo, KeyError, NewApiKey, create_key, list_keys, revoke_key};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) rt: Runtime,
    /// Cancelled when [`serve`] stops: event streams end, so open ones do not hold the
    /// graceful shutdown.
    pub(crate) stopping: CancellationToken,
    /// The recorder `GET /metrics` renders, or why there is none.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Result<crate::metrics::Prometheus, crate::metrics::MetricsError>,
}

/// The API's routes on `rt` (which needs a store: keys and runs live there).
///
/// ```no_run
/// # async fn demo(rt: task_runtime::Runtime) {
/// let app = axum::Router::new().nest("/tasks-api", task_runtime::http::router(rt));
/// # }
/// ```
pub fn router(rt: Runtime) -> Router {
    routes(rt, CancellationToken::new())
}

fn routes(rt: Runtime, stopping: CancellationToken) -> Router {
    #[cfg(feature = "metrics")]
    let metrics = crate::metrics::Prometheus::install();
    #[cfg(feature = "metrics")]
    if let Err(error) = &metrics {
        tracing::warn!(%error, "GET /metrics will answer 503");
    }
    let router = Router::new();
    #[cfg(feature = "metrics")]
    let router = router.route("/metrics", get(scrape));
    router
        .route("/", get(page))
        .route("/api/v1/tasks", get(runs::tasks))
        .route("/api/v1/tasks/{id}/schema", get(runs::schema))
        .route("/api/v1/tasks/{id}/trigger", post(runs::trigger))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/runs/{id}", get(runs::get))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/runs/{id}/replay", post(runs::replay))
        .route("/api/v1/runs/{id}/logs", get(runs::logs))
        .route("/api/v1/runs/{id}/events", get(events::events))
        .route("/api/v1/waitpoints/tokens", post(tokens::create))
        .route("/api/v1/waitpoints/tokens/{id}", get(tokens::get))
        .route(
            "/api/v1/waitpoints/tokens/{id}/complete",
            post(tokens::complete),
        )
        .fallback(not_found_route)
        .with_state(AppState {
            rt,
            stopping,
            #[cfg(feature = "metrics")]
            metrics,
        })
}

/// `GET /metrics`: the Prometheus text format.
#[cfg(feature = "metrics")]
async fn scrape(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let prometheus = match &state.metrics {
        Ok(prometheus) => prometheus,
        Err(error) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                TaskError::rejected(error.to_string()),
            )
            .into_response();
        }
    };
    match prometheus.render(state.rt.store_handle()).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => ApiError::store(error).into_response(),
    }
}

/// Serves [`router`] on `listener` until `shutdown` resolves, then lets open requests end
/// (event streams end at once, with no final event: a client reconnects elsewhere with its
/// `Last-Event-ID`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    rt: Runtime,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = CancellationToken::new();
    let stop = stopping.clone();
    axum::serve(listener, routes(rt, stopping))
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
}

/// The runs page: static HTML and script, embedded; it asks for an API key and reads
/// everything through the API (so it sees only that key's tenant).
async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("page.html"))
}

async fn not_found_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        TaskError::rejected("no such route (the API lives under /api/v1)"),
    )
}

/// An error answer: a status and the `TaskError` JSON.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {error}")]
pub(crate) struct ApiError {
    status: StatusCode,
    error: TaskError,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: TaskError) -> Self {
        ApiError { status, error }
    }

    /// The status that fits a run's refusal.
    pub(crate) fn of(error: TaskError) -> Self {
        let status = match error.kind() {
            ErrorKind::NotFound { .. } => StatusCode::NOT_FOUND,
            ErrorKind::InvalidInput { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Rejected { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, error }
    }

    pub(crate) fn store(error: StoreError) -> Self {
        tracing::warn!(%error, "the API could not reach the store");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            TaskError::rejected(error.to_string()),
        )
    }

    pub(crate) fn unauthorized(reason: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, TaskError::rejected(reason))
    }

    /// No run with this id for the caller (also another tenant's run).
    pub(crate) fn no_run(id: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, TaskError::not_found(id, Vec::new()))
    }

    pub(crate) fn invalid(path: &str, message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            TaskError::invalid_input(vec![crate::error::Issue {
                path: path.to_owned(),
                message: message.into(),
            }]),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.error)).into_response()
    }
}
