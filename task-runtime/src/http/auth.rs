//! API keys: `tk_<id>_<secret>`, shown once when created; the store keeps the key's SHA-256
//! hash, its tenant and its last four characters. A request's key is looked up by its id and
//! its hash compared in constant time; a revoked key is refused from the next request on.

use std::time::SystemTime;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::Store;
use crate::store::{ApiKeyRow, StoreError};

const PREFIX: &str = "tk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;

/// An API key as listed: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ApiKeyInfo {
    /// The key's id (the part after `tk_`, before the secret).
    pub id: String,
    /// The tenant whose runs the key reads and triggers.
    pub tenant_id: String,
    /// The key's last four characters.
    pub last_four: String,
    /// When it was created.
    #[serde(with = "crate::envelope::rfc3339")]
    pub created_at: SystemTime,
    /// When it was revoked.
    #[serde(
        with = "crate::envelope::rfc3339_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<SystemTime>,
}

impl From<ApiKeyRow> for ApiKeyInfo {
    fn from(row: ApiKeyRow) -> Self {
        ApiKeyInfo {
            id: row.id,
            tenant_id: row.tenant_id,
            last_four: row.last_four,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// A key just created: `key` is shown this once, the store keeps only its hash.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewApiKey {
    /// The key, for the `Authorization: Bearer` header.
    pub key: String,
    /// What is stored of it.
    pub info: ApiKeyInfo,
}

/// Why a key could not be created, listed or revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key needs a tenant.
    #[error("a key needs a non-empty tenant")]
    EmptyTenant,
    /// No live key has this id or these last four characters.
    #[error("no live API key with id or last four characters '{0}'")]
    NotFound(String),
    /// More than one live key ends in these four characters.
    #[error("'{given}' names several keys ({}): give the key's id", ids.join(", "))]
    Ambiguous {
        /// What was given.
        given: String,
        /// The ids of the keys it could mean.
        ids: Vec<String>,
    },
}

fn random_text(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Creates a key for `tenant` in `store`.
pub async fn create_key(store: &Store, tenant: &str) -> Result<NewApiKey, KeyError> {
    if tenant.trim().is_empty() {
        return Err(KeyError::EmptyTenant);
    }
    let id = random_text(ID_LEN).to_ascii_lowercase();
    let key = format!("{PREFIX}{id}_{}", random_text(SECRET_LEN));
    let row = ApiKeyRow {
        id,
        tenant_id: tenant.to_owned(),
        hash: hash(&key),
        last_four: key[key.len() - 4..].to_owned(),
        created_at: SystemTime::now(),
        revoked_at: None,
    };
    store.inner.insert_api_key(row.clone()).await?;
    tracing::info!(key_id = %row.id, tenant_id = tenant, "API key created");
    Ok(NewApiKey {
        key,
        info: row.into(),
    })
}

/// Every key of `store` (live and revoked), oldest first.
pub async fn list_keys(store: &Store) -> Result<Vec<ApiKeyInfo>, KeyError> {
    let rows = store.inner.api_keys(None).await?;
    Ok(rows.into_iter().map(ApiKeyInfo::from).collect())
}

/// Revokes the live key with this id, or the only live key ending in these four characters.
/// Requests with it are refused from then on.
pub async fn revoke_key(store: &Store, id_or_last_four: &str) -> Result<ApiKeyInfo, KeyError> {
    let live: Vec<ApiKeyRow> = store
        .inner
        .api_keys(None)
        .await?
        .into_iter()
        .filter(|row| row.revoked_at.is_none())
        .collect();
    let by_id: Vec<&ApiKeyRow> = live.iter().filter(|r| r.id == id_or_last_four).collect();
    let matches = if by_id.is_empty() {
        live.iter()
            .filter(|r| r.last_four == id_or_last_four)
            .collect()
    } else {
        by_id
    };
    let row = match matches.as_slice() {
        [] => return Err(KeyError::NotFound(id_or_last_four.to_owned())),
        [row] => (*row).clone(),
        several => {
            return Err(KeyError::Ambiguous {
                given: id_or_last_four.to_owned(),
                ids: several.iter().map(|r| r.id.clone()).collect(),
            });
        }
    };
    if !store.inner.revoke_api_key(row.id.clone()).await? {
        return Err(KeyError::NotFound(id_or_last_four.to_owned()));
    }
    tracing::info!(key_id = %row.id, tenant_id = %row.tenant_id, "API key revoked");
    let mut info = ApiKeyInfo::from(row);
    info.revoked_at = Some(SystemTime::now());
    Ok(info)
}

/// The tenant of the request's API key.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) tenant: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing API key (Authorization: Bearer tk_...)")
        })?;
        let key = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header is not `Bearer <key>`")
            })?;
        let unknown = || ApiError::unauthorized("unknown or revoked API key");
        let id = key
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| id.len() == ID_LEN)
            .ok_or_else(unknown)?;
        let Some(store) = state.rt.store_handle() else {
            return Err(unknown());
        };
        let rows = store
            .inner
            .api_keys(Some(id.to_owned()))
            .await
            .map_err(ApiError::store)?;
        let presented = hash(key);
        let row = rows
            .into_iter()
            .find(|row| bool::from(row.hash.as_bytes().ct_eq(presented.as_bytes())))
            .ok_or_else(unknown)?;
        if row.revoked_at.is_some() {
            return Err(unknown());
        }
        Ok(Caller {
            tenant: row.tenant_id,
        })
    }
}
