//! The handlers of wait tokens, at Trigger.dev's waitpoint-token paths: create, read,
//! complete. A token created through the API belongs to the key's tenant, and another
//! tenant's token is a 404, as for runs.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::runs::{duration, read_json};
use super::{ApiError, AppState};
use crate::error::TaskError;
use crate::tokens::{NewToken, TokenCompletion, TokenError, WaitToken};

/// `{ "timeout": "1h", "tags": [..] }`, both optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    timeout: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// `{ "data": .. }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    #[serde(default)]
    data: Value,
}

fn token_error(error: TokenError) -> ApiError {
    match error {
        TokenError::Store(error) => ApiError::store(error),
    }
}

fn no_token(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, TaskError::not_found(id, Vec::new()))
}

fn body_of<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::invalid("", e.to_string()))
}

/// `POST /api/v1/waitpoints/tokens` → `{ "id", "isCached": false }`.
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let limit = state.rt.limits().max_input_bytes;
    let raw = read_json(&state.rt, body, limit).await?;
    let body: CreateBody = if raw.is_null() {
        CreateBody::default()
    } else {
        body_of(raw)?
    };
    let mut new = NewToken::new().tags(body.tags).tenant(caller.tenant);
    if let Some(timeout) = &body.timeout {
        new = new.timeout(duration("/timeout", timeout)?);
    }
    let token = state.rt.tokens().create(new).await.map_err(token_error)?;
    Ok(Json(json!({ "id": token.id, "isCached": false })))
}

/// `GET /api/v1/waitpoints/tokens/{id}` → the token.
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WaitToken>, ApiError> {
    let token = state
        .rt
        .tokens()
        .get_in(Some(&caller.tenant), &id)
        .await
        .map_err(token_error)?
        .ok_or_else(|| no_token(&id))?;
    Ok(Json(token))
}

/// `POST /api/v1/waitpoints/tokens/{id}/complete` → `{ "success", "outcome" }`: `success`
/// is `false`, with the reason in `outcome`, when the completion changed nothing.
pub(super) async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let limit = state.rt.limits().max_input_bytes;
    let raw = read_json(&state.rt, body, limit).await?;
    let body: CompleteBody = if raw.is_null() {
        CompleteBody::default()
    } else {
        body_of(raw)?
    };
    let outcome = state
        .rt
        .tokens()
        .complete_in(Some(&caller.tenant), &id, body.data)
        .await
        .map_err(token_error)?;
    if outcome == TokenCompletion::NotFound {
        return Err(no_token(&id));
    }
    Ok(Json(json!({
        "success": outcome == TokenCompletion::Completed,
        "outcome": outcome.as_str(),
    })))
}
