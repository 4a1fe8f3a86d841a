-- Durable waits (`ctx.sleep`, `ctx.wait_for_token`): a suspended run is `waiting` until
-- its run_at (a sleep's end, a token wait's deadline), when a worker queues it again, or
-- until its token is completed, which queues it at once. `waits` counts its suspensions
-- (a resumed run replays its journal even on its first attempt).
ALTER TABLE task_runtime.runs ADD COLUMN waits integer NOT NULL DEFAULT 0;

-- Waiting runs by wake time.
CREATE INDEX runs_waiting ON task_runtime.runs (run_at)
    WHERE status = 'waiting' AND parent_run_id IS NULL;

-- Wait tokens: completed at most once; `run_id` is the run that waits for it. A completion
-- and the suspension of the run waiting for it both lock the token's row first, so one
-- of them always sees the other.
CREATE TABLE task_runtime.wait_tokens (
    id           text PRIMARY KEY,
    tenant_id    text,
    tags         jsonb,
    -- waiting | completed (a waiting token past timeout_at has timed out)
    status       text NOT NULL,
    data         text,
    timeout_at   bigint,
    created_at   bigint NOT NULL,
    completed_at bigint,
    run_id       text
);
