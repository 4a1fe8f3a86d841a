-- Durable waits (`ctx.sleep`, `ctx.wait_for_token`): a suspended run is `waiting` until
-- its run_at (a sleep's end, a token wait's deadline), when a worker queues it again, or
-- until its token is completed, which queues it at once. `waits` counts its suspensions
-- (a resumed run replays its journal even on its first attempt).
ALTER TABLE runs ADD COLUMN waits INTEGER NOT NULL DEFAULT 0;

-- Waiting runs by wake time.
CREATE INDEX runs_waiting ON runs (run_at) WHERE status = 'waiting' AND parent_run_id IS NULL;

-- Wait tokens: completed at most once; `run_id` is the run that waits for it.
CREATE TABLE wait_tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant_id    TEXT,
    tags         TEXT,
    -- waiting | completed (a waiting token past timeout_at has timed out)
    status       TEXT NOT NULL,
    data         TEXT,
    timeout_at   INTEGER,
    created_at   INTEGER NOT NULL,
    completed_at INTEGER,
    run_id       TEXT
) STRICT;
