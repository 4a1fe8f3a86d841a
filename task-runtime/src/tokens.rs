//! Wait tokens (Trigger.dev's waitpoint tokens): `rt.tokens().create(..)` makes one, a task
//! waits for it with `ctx.wait_for_token(&token, timeout)`, and anyone (code, the CLI's
//! `tokens complete`, another process sharing the store) completes it, once, with JSON that
//! the waiting task receives.
//!
//! A token is completed at most once: completing it again, after its timeout, or when the run
//! waiting for it was cancelled, changes nothing and says so ([`TokenCompletion`]), it is
//! never an error that loses the data silently. In a durable runtime tokens are rows of the
//! store, so the process that completes one need not be the one that created it or the one
//! that runs the waiting task; completing one wakes its waiting run at once. Without a
//! store, tokens live in this runtime's memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::exec::seed::lock;
use crate::id::RunId;
use crate::runtime::Runtime;
use crate::store::{StoreError, later};

/// Where a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum TokenStatus {
    /// Not completed yet, and its timeout (if any) has not passed.
    Waiting,
    /// Completed with data.
    Completed,
    /// Not completed before its timeout.
    TimedOut,
}

impl TokenStatus {
    /// `waiting`, `completed` or `timedOut`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Waiting => "waiting",
            TokenStatus::Completed => "completed",
            TokenStatus::TimedOut => "timedOut",
        }
    }
}

/// A wait token, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct WaitToken {
    /// `token_` and a ULID.
    pub id: String,
    /// Where it is (a waiting token past its timeout reads `timedOut`).
    pub status: TokenStatus,
    /// The tenant it belongs to, when created for one.
    pub tenant_id: Option<String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// When it was created.
    #[serde(with = "crate::envelope::rfc3339")]
    pub created_at: SystemTime,
    /// When it times out (`None`: never).
    #[serde(with = "crate::envelope::rfc3339_option")]
    pub timeout_at: Option<SystemTime>,
    /// When it was completed.
    #[serde(with = "crate::envelope::rfc3339_option")]
    pub completed_at: Option<SystemTime>,
    /// The JSON it was completed with.
    pub data: Option<Value>,
    /// The run that waits (or waited) for it, once one did.
    pub run_id: Option<RunId>,
}

impl WaitToken {
    /// Its status at `now`: a token still waiting after its timeout has timed out.
    pub(crate) fn at(mut self, now: SystemTime) -> Self {
        if self.status == TokenStatus::Waiting && self.timeout_at.is_some_and(|t| t <= now) {
            self.status = TokenStatus::TimedOut;
        }
        self
    }
}

/// A token to create: `NewToken::new().timeout(Duration::from_secs(3600)).tags(["approval"])`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewToken {
    /// It times out this long after its creation (`None`: never).
    pub timeout: Option<Duration>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// The tenant it belongs to.
    pub tenant_id: Option<String>,
}

impl NewToken {
    /// A token without timeout, tags or tenant.
    pub fn new() -> Self {
        NewToken::default()
    }

    /// Times out `timeout` after creation: a wait for it then ends with a `timeout` error,
    /// and completing it is a no-op.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Tags it.
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Makes it one tenant's (the HTTP API lets only that tenant's keys see it).
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }
}

/// What completing a token did. Only [`Completed`](Self::Completed) changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum TokenCompletion {
    /// Completed now; the run waiting for it (if any) resumes with the data.
    Completed,
    /// It was completed before: this completion was ignored.
    AlreadyCompleted,
    /// Its timeout passed: this completion was ignored.
    TimedOut,
    /// The run waiting for it was cancelled: this completion was ignored.
    RunCancelled,
    /// No token has this id.
    NotFound,
}

impl TokenCompletion {
    /// `completed`, `alreadyCompleted`, `timedOut`, `runCancelled` or `notFound`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenCompletion::Completed => "completed",
            TokenCompletion::AlreadyCompleted => "alreadyCompleted",
            TokenCompletion::TimedOut => "timedOut",
            TokenCompletion::RunCancelled => "runCancelled",
            TokenCompletion::NotFound => "notFound",
        }
    }
}

/// Why a token operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The wait tokens of a runtime: `rt.tokens()`.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    pub(crate) rt: &'a Runtime,
}

impl Runtime {
    /// The wait tokens of this runtime (its store's, or this process's without a store).
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens { rt: self }
    }
}

impl Tokens<'_> {
    /// Creates a token; wait for it with `ctx.wait_for_token(&token.id, timeout)`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use task_runtime::{NewToken, Runtime, TokenCompletion};
    /// # async fn demo() -> Result<(), task_runtime::TokenError> {
    /// let rt = Runtime::new();
    /// let token = rt.tokens().create(NewToken::new().timeout(Duration::from_secs(3600))).await?;
    /// let done = rt.tokens().complete(&token.id, serde_json::json!({ "approved": true })).await?;
    /// assert_eq!(done, TokenCompletion::Completed);
    /// let again = rt.tokens().complete(&token.id, serde_json::json!({ "approved": false })).await?;
    /// assert_eq!(again, TokenCompletion::AlreadyCompleted);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn create(self, new: NewToken) -> Result<WaitToken, TokenError> {
        let now = self.rt.executor().clock.now();
        let token = WaitToken {
            id: format!("token_{}", ulid::Ulid::from_datetime(now)),
            status: TokenStatus::Waiting,
            tenant_id: new.tenant_id,
            tags: new.tags,
            created_at: now,
            timeout_at: new.timeout.map(|t| later(now, t)),
            completed_at: None,
            data: None,
            run_id: None,
        };
        match self.rt.store() {
            Some(store) => store.create_token(token.clone()).await?,
            None => self.rt.executor().tokens.insert(token.clone()),
        }
        tracing::info!(token = %token.id, "wait token created");
        Ok(token)
    }

    /// The token with this id, `None` when there is none.
    pub async fn get(self, id: &str) -> Result<Option<WaitToken>, TokenError> {
        self.get_in(None, id).await
    }

    /// Completes the token with `data` (once: see [`TokenCompletion`]); the run waiting for
    /// it resumes with the data.
    pub async fn complete(self, id: &str, data: Value) -> Result<TokenCompletion, TokenError> {
        self.complete_in(None, id, data).await
    }

    /// `get`, seeing only `tenant`'s tokens when given.
    pub(crate) async fn get_in(
        self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<WaitToken>, TokenError> {
        let now = self.rt.executor().clock.now();
        let token = match self.rt.store() {
            Some(store) => store.get_token(id.to_owned()).await?,
            None => self.rt.executor().tokens.get(id),
        };
        Ok(token
            .filter(|t| tenant.is_none() || t.tenant_id.as_deref() == tenant)
            .map(|t| t.at(now)))
    }

    /// `complete`, for `tenant`'s tokens only when given (another tenant's is `NotFound`).
    pub(crate) async fn complete_in(
        self,
        tenant: Option<&str>,
        id: &str,
        data: Value,
    ) -> Result<TokenCompletion, TokenError> {
        if tenant.is_some() && self.get_in(tenant, id).await?.is_none() {
            return Ok(TokenCompletion::NotFound);
        }
        let now = self.rt.executor().clock.now();
        let outcome = match self.rt.store() {
            Some(store) => store.complete_token(id.to_owned(), data, now).await?,
            None => self.rt.executor().tokens.complete(id, data, now),
        };
        match outcome {
            TokenCompletion::Completed => tracing::info!(token = id, "wait token completed"),
            other => {
                tracing::info!(
                    token = id,
                    outcome = other.as_str(),
                    "wait token not completed"
                )
            }
        }
        Ok(outcome)
    }
}

/// The tokens of a runtime without a store, and a signal that one was completed.
#[derive(Debug)]
pub(crate) struct MemoryTokens {
    tokens: Mutex<HashMap<String, WaitToken>>,
    completed: watch::Sender<u64>,
}

impl Default for MemoryTokens {
    fn default() -> Self {
        MemoryTokens {
            tokens: Mutex::default(),
            completed: watch::Sender::new(0),
        }
    }
}

impl MemoryTokens {
    fn insert(&self, token: WaitToken) {
        lock(&self.tokens).insert(token.id.clone(), token);
    }

    pub(crate) fn get(&self, id: &str) -> Option<WaitToken> {
        lock(&self.tokens).get(id).cloned()
    }

    /// Notes that `run` waits for the token.
    pub(crate) fn waited_by(&self, id: &str, run: &RunId) {
        if let Some(token) = lock(&self.tokens).get_mut(id) {
            token.run_id = Some(run.clone());
        }
    }

    /// Resolves after the next completion (subscribe before looking at the token).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.completed.subscribe()
    }

    fn complete(&self, id: &str, data: Value, now: SystemTime) -> TokenCompletion {
        let mut tokens = lock(&self.tokens);
        let Some(token) = tokens.get_mut(id) else {
            return TokenCompletion::NotFound;
        };
        if token.status == TokenStatus::Completed {
            return TokenCompletion::AlreadyCompleted;
        }
        if token.timeout_at.is_some_and(|t| t <= now) {
            return TokenCompletion::TimedOut;
        }
        token.status = TokenStatus::Completed;
        token.data = Some(data);
        token.completed_at = Some(now);
        drop(tokens);
        self.completed.send_modify(|n| *n += 1);
        TokenCompletion::Completed
    }
}
