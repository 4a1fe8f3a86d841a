//! Transactional enqueue (feature `postgres`): [`Runtime::trigger_in`] inserts a run inside
//! the caller's own PostgreSQL transaction, so the run exists if and only if that
//! transaction commits: an order row and the run that ships it are written together or not
//! at all. Workers are woken by a `NOTIFY` that PostgreSQL delivers only on commit.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::envelope::{RunError, RunOutput};
use crate::error::TaskError;
use crate::handle::{Done, RunHandle};
use crate::runtime::{Runtime, TriggerOptions};
use crate::store::postgres::{classify, insert_runs};

impl Runtime {
    /// Triggers the task registered under `id` inside `tx`, a transaction (or connection) of
    /// yours on the database of this runtime's PostgreSQL store: the run is stored, and a
    /// worker executes it, only once `tx` commits; rolled back, nothing remains. Refused like
    /// [`trigger_with`](Self::trigger_with) (unknown id, oversized or invalid input), and
    /// when the runtime has no store. An idempotency key matching a live run returns that
    /// run, as `trigger_with` does.
    ///
    /// A statement that fails here fails your transaction, as any failed statement does in
    /// PostgreSQL: roll it back.
    ///
    /// ```no_run
    /// # use task_runtime::{Runtime, Store, TriggerOptions};
    /// # async fn demo(pool: task_runtime::sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let store = Store::connect("postgres://app@localhost/app").await?;
    /// let rt = Runtime::builder().store(store).build()?;
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
    /// let json = serde_json::json!({ "tenantId": "t1", "projectId": "p1", "order": 42 });
    /// let run = rt.trigger_in(&mut tx, "ship_order", json, TriggerOptions::new()).await?;
    /// tx.commit().await?; // now the order and its run exist, together
    /// # let _ = run; Ok(()) }
    /// # use task_runtime::sqlx;
    /// ```
    pub async fn trigger_in(
        &self,
        tx: &mut sqlx::PgConnection,
        id: &str,
        input: Value,
        options: TriggerOptions,
    ) -> Result<RunHandle, RunError> {
        let (descriptor, input) = self
            .admit(id, input)
            .map_err(|envelope| RunError::from_envelope(*envelope))?;
        let refuse = |run_id, error: String| {
            RunError::from_envelope(RunOutput::refused(
                descriptor.id,
                run_id,
                Value::Null,
                TaskError::rejected(error),
            ))
        };
        let new = Runtime::new_run(descriptor, input, &options, None)?;
        let run_id = new.id.clone();
        let Some(store) = self.store_handle() else {
            return Err(refuse(
                run_id,
                "trigger_in needs a runtime with a store: Runtime::builder().store(..)".to_owned(),
            ));
        };
        match insert_runs(tx, std::slice::from_ref(&new)).await {
            Ok(mut enqueued) => {
                let enqueued = enqueued.pop().expect("one run in, one out");
                if enqueued.existing {
                    tracing::info!(task = descriptor.id, run_id = %enqueued.id, "idempotency key matched an existing run");
                }
                Ok(RunHandle {
                    run_id: enqueued.id,
                    task: descriptor.id,
                    cancel: CancellationToken::new(),
                    done: Done::Stored(self.clone()),
                })
            }
            Err(error) => {
                let error = classify(store.url(), &error);
                tracing::warn!(task = descriptor.id, %error, "trigger_in not stored");
                Err(refuse(run_id, format!("the run was not stored: {error}")))
            }
        }
    }
}
