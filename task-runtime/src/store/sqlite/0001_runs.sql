-- Runs, their tree (children are rows too), leases and the journal.
CREATE TABLE runs (
    id                     TEXT PRIMARY KEY NOT NULL,
    task                   TEXT NOT NULL,
    tenant_id              TEXT,
    project_id             TEXT,
    -- delayed | queued | executing | waiting | completed | failed | cancelled | expired
    status                 TEXT NOT NULL,
    input                  TEXT NOT NULL,
    envelope               TEXT,
    output                 TEXT,
    error                  TEXT,
    attempts               INTEGER NOT NULL DEFAULT 0,
    -- JSON array of the errors of attempts that were retried
    retried                TEXT,
    lease_owner            TEXT,
    lease_expires_at       INTEGER,
    lease_token            INTEGER NOT NULL DEFAULT 0,
    cancel_requested       INTEGER NOT NULL DEFAULT 0,
    run_at                 INTEGER NOT NULL,
    expire_at              INTEGER,
    idempotency_key        TEXT,
    idempotency_ttl_ms     INTEGER,
    idempotency_expires_at INTEGER,
    tags                   TEXT,
    parent_run_id          TEXT,
    root_run_id            TEXT,
    position               TEXT,
    replay_of              TEXT,
    created_at             INTEGER NOT NULL,
    started_at             INTEGER,
    finished_at            INTEGER
) STRICT;

-- What a claim reads: due top-level runs, oldest first. Finished rows are not in it, so
-- claims cost the same after a million finished runs.
CREATE INDEX runs_due ON runs (run_at, id)
    WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL;

-- Leases to reclaim, and per-task counts of executing runs.
CREATE INDEX runs_executing ON runs (task, lease_expires_at)
    WHERE status = 'executing' AND parent_run_id IS NULL;

-- At most one run holds an idempotency key (per task and tenant); a failed, cancelled or
-- expired run, or one past its key's TTL, gives the key up.
CREATE UNIQUE INDEX runs_idempotency ON runs (task, coalesce(tenant_id, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The journal: one child per position of a parent.
CREATE UNIQUE INDEX runs_position ON runs (parent_run_id, position)
    WHERE parent_run_id IS NOT NULL AND position IS NOT NULL;
CREATE INDEX runs_tree ON runs (root_run_id) WHERE root_run_id IS NOT NULL;
CREATE INDEX runs_children ON runs (parent_run_id, id) WHERE parent_run_id IS NOT NULL;

-- Listing top-level runs, newest first, by tenant, task or status.
CREATE INDEX runs_by_tenant ON runs (tenant_id, id) WHERE parent_run_id IS NULL;
CREATE INDEX runs_by_task ON runs (task, id) WHERE parent_run_id IS NULL;
CREATE INDEX runs_by_status ON runs (status, id) WHERE parent_run_id IS NULL;

CREATE TABLE run_logs (
    run_id  TEXT NOT NULL,
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL,
    fields  TEXT
) STRICT;
CREATE INDEX run_logs_by_run ON run_logs (run_id, seq);
