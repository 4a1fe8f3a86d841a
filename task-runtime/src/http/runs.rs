//! The handlers of tasks and runs: trigger, read, list, cancel, replay, logs, the catalog.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::catalog;
use crate::error::TaskError;
use crate::input::InputError;
use crate::store::{CancelOutcome, RunFilter};
use crate::telemetry;
use crate::{RunId, RunInfo, RunStatus, Runtime, TriggerOptions};

/// Bytes a trigger body may hold beyond the payload limit (the options around it).
const OPTIONS_ALLOWANCE: usize = 64 * 1024;

/// The run `id` if it is the caller's tenant's; a 404 otherwise, the same as for no run.
pub(super) async fn owned_run(
    rt: &Runtime,
    caller: &Caller,
    id: &str,
) -> Result<RunInfo, ApiError> {
    let run_id: RunId = id.parse().map_err(|_| ApiError::no_run(id))?;
    let info = rt
        .runs()
        .get(&run_id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::no_run(id))?;
    if info.tenant_id.as_deref() != Some(caller.tenant.as_str()) {
        return Err(ApiError::no_run(id));
    }
    Ok(info)
}

pub(super) async fn tasks(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let entries = state.rt.registry().entries();
    Json(serde_json::to_value(catalog::list(&entries)).unwrap_or(Value::Null))
}

pub(super) async fn schema(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let registry = state.rt.registry();
    let descriptor = registry
        .get(&id)
        .ok_or_else(|| ApiError::of(TaskError::not_found(&id, registry.suggest(&id))))?;
    Ok(Json(
        serde_json::to_value(catalog::schema(descriptor)).unwrap_or(Value::Null),
    ))
}

/// `{ "payload": .., "options": { .. } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    payload: Value,
    #[serde(default)]
    options: TriggerBodyOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TriggerBodyOptions {
    idempotency_key: Option<String>,
    idempotency_key_ttl: Option<String>,
    delay: Option<String>,
    ttl: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

pub(super) fn duration(path: &str, text: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text).map_err(|e| {
        ApiError::invalid(
            path,
            format!("`{text}` is not a duration like 500ms, 10m or 1h 30m: {e}"),
        )
    })
}

impl TriggerBodyOptions {
    fn into_options(self) -> Result<TriggerOptions, ApiError> {
        let mut options = TriggerOptions::new().tags(self.tags);
        if let Some(key) = self.idempotency_key {
            options = options.idempotency_key(key);
        }
        if let Some(ttl) = &self.idempotency_key_ttl {
            options = options.idempotency_ttl(duration("/options/idempotencyKeyTtl", ttl)?);
        }
        if let Some(delay) = &self.delay {
            options = options.delay(duration("/options/delay", delay)?);
        }
        if let Some(ttl) = &self.ttl {
            options = options.ttl(duration("/options/ttl", ttl)?);
        }
        Ok(options)
    }
}

/// Reads a body of at most `limit` bytes and parses it strictly (duplicate keys refused).
pub(super) async fn read_json(rt: &Runtime, body: Body, limit: usize) -> Result<Value, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            TaskError::invalid_input(vec![crate::error::Issue {
                path: String::new(),
                message: format!("the request body is over the limit of {limit} bytes"),
            }]),
        )
    };
    let bytes = to_bytes(body, limit).await.map_err(|error| {
        let over = std::error::Error::source(&error)
            .is_some_and(|e| e.is::<http_body_util::LengthLimitError>())
            || error.into_inner().is::<http_body_util::LengthLimitError>();
        if over {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                TaskError::rejected("the request body could not be read"),
            )
        }
    })?;
    let limits = crate::Limits {
        max_input_bytes: limit,
        ..rt.limits()
    };
    limits.parse(&bytes).map_err(|error| {
        let status = match &error {
            InputError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InputError::Malformed { .. } | InputError::DuplicateKey { .. } => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, error.into())
    })
}

/// `POST /api/v1/tasks/{id}/trigger`, in a `request` span that continues the trace of the
/// request's W3C `traceparent` header; the run stores that span's context (or, when no span
/// is exported, the header's), so the worker that executes it continues the trace. A
/// `traceparent` that is not one is ignored.
pub(super) async fn trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        otel.name = "POST /api/v1/tasks/{id}/trigger",
        http.request.method = "POST",
        http.route = "/api/v1/tasks/{id}/trigger",
        task = %id,
        tenant_id = %caller.tenant,
        run_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = headers.get("traceparent").and_then(|value| {
        match value.to_str().ok().and_then(telemetry::traceparent) {
            Some(traceparent) => Some(traceparent.to_owned()),
            None => {
                tracing::debug!(header = ?value, "ignored a traceparent header that is not one");
                None
            }
        }
    });
    telemetry::Remote::of(traceparent.as_deref()).adopt(&span);
    let answer = trigger_in_span(state, caller, id, traceparent, body)
        .instrument(span.clone())
        .await;
    match &answer {
        Ok(reply) => {
            span.record("http.response.status_code", 200);
            if let Some(id) = reply.0["id"].as_str() {
                span.record("run_id", id);
            }
        }
        Err(error) => {
            span.record("http.response.status_code", error.status.as_u16());
        }
    }
    answer
}

async fn trigger_in_span(
    state: AppState,
    caller: Caller,
    id: String,
    traceparent: Option<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let rt = &state.rt;
    let limit = rt
        .limits()
        .max_input_bytes
        .saturating_add(OPTIONS_ALLOWANCE);
    let body = read_json(rt, body, limit).await?;
    let TriggerBody {
        mut payload,
        options,
    } = serde_json::from_value(body).map_err(|e| ApiError::invalid("", e.to_string()))?;
    let mut options = options.into_options()?;
    if let Some(traceparent) = &traceparent {
        options = options.trace_context(traceparent);
    }
    if let Value::Object(fields) = &mut payload {
        match fields.get("tenantId") {
            None => {
                fields.insert("tenantId".to_owned(), Value::String(caller.tenant.clone()));
            }
            Some(Value::String(tenant)) if *tenant == caller.tenant => {}
            Some(other) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    TaskError::rejected(format!(
                        "the payload's tenantId {other} is not the API key's tenant '{}'",
                        caller.tenant
                    )),
                ));
            }
        }
    }
    let registry = rt.registry();
    let descriptor = registry
        .get(&id)
        .ok_or_else(|| ApiError::of(TaskError::not_found(&id, registry.suggest(&id))))?;
    let issues = descriptor.schemas().input_issues(&payload);
    if !issues.is_empty() {
        return Err(ApiError::of(TaskError::invalid_input(issues)));
    }
    let keyed = options
        .get_idempotency_key()
        .map(|key| (key.to_owned(), payload.clone()));
    let handle = rt
        .trigger_with(&id, payload, options)
        .await
        .map_err(|e| ApiError::of(e.error))?;
    if let Some((key, payload)) = keyed {
        // A live key returns the run holding it; with another payload that is a conflict.
        let held = rt
            .runs()
            .get(handle.run_id())
            .await
            .map_err(ApiError::store)?;
        if let Some(held) = held
            && held.input != payload
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                TaskError::rejected(format!(
                    "idempotency key '{key}' is held by run {} of another payload",
                    held.id
                )),
            ));
        }
    }
    Ok(Json(json!({ "id": handle.run_id() })))
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = owned_run(&state.rt, &caller, &id).await?;
    let children = state
        .rt
        .runs()
        .children(&info.id)
        .await
        .map_err(ApiError::store)?;
    let mut value = serde_json::to_value(&info).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut value {
        fields.insert(
            "children".to_owned(),
            serde_json::to_value(children).unwrap_or(Value::Null),
        );
    }
    Ok(Json(value))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    task: Option<String>,
    tag: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("", e.body_text()))?;
    let mut filter = RunFilter::new().tenant(caller.tenant);
    if let Some(status) = query.status.filter(|s| !s.is_empty()) {
        let status: RunStatus = status
            .parse()
            .map_err(|e: String| ApiError::invalid("status", e))?;
        filter = filter.status(status);
    }
    if let Some(task) = query.task.filter(|s| !s.is_empty()) {
        filter = filter.task(task);
    }
    if let Some(tag) = query.tag.filter(|s| !s.is_empty()) {
        filter = filter.tag(tag);
    }
    if let Some(cursor) = query.cursor.filter(|s| !s.is_empty()) {
        let cursor: RunId = cursor
            .parse()
            .map_err(|e: crate::InvalidRunId| ApiError::invalid("cursor", e.to_string()))?;
        filter = filter.before(cursor);
    }
    if let Some(limit) = query.limit.filter(|s| !s.is_empty()) {
        let limit: usize = limit
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "limit is a number from 1 to 1000"))?;
        filter = filter.limit(limit);
    }
    let page = filter.page_size();
    let runs = state
        .rt
        .runs()
        .list(filter)
        .await
        .map_err(ApiError::store)?;
    let next_cursor = if runs.len() == page {
        runs.last().map(|run| run.id.to_string())
    } else {
        None
    };
    Ok(Json(json!({ "data": runs, "nextCursor": next_cursor })))
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = owned_run(&state.rt, &caller, &id).await?;
    let outcome = state
        .rt
        .runs()
        .cancel(&info.id)
        .await
        .map_err(ApiError::store)?;
    let (outcome, status) = match outcome {
        CancelOutcome::Cancelled => ("cancelled", Some(RunStatus::Cancelled)),
        CancelOutcome::Requested => ("requested", None),
        CancelOutcome::AlreadyFinished(status) => ("alreadyFinished", Some(status)),
        _ => return Err(ApiError::no_run(&id)),
    };
    Ok(Json(
        json!({ "id": info.id, "outcome": outcome, "status": status }),
    ))
}

pub(super) async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = owned_run(&state.rt, &caller, &id).await?;
    let new_id = state
        .rt
        .runs()
        .replay(&info.id)
        .await
        .map_err(|e| ApiError::of(e.error))?;
    Ok(Json(json!({ "id": new_id, "replayOf": info.id })))
}

pub(super) async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = owned_run(&state.rt, &caller, &id).await?;
    let lines = state
        .rt
        .runs()
        .logs(&info.id)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(json!({ "data": lines })))
}
