-- Cron schedules (`#[task(schedule = "..")]`, `rt.schedules().create(..)`). A worker fires
-- a due schedule by moving `next_fire_at` from the value it read, in the transaction that
-- commits the run: two workers never fire one slot twice.
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY NOT NULL,
    task          TEXT NOT NULL,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    tenant_id     TEXT,
    project_id    TEXT,
    external_id   TEXT,
    -- 1: declared on the task, kept in step with the code by workers
    declared      INTEGER NOT NULL DEFAULT 0,
    -- milliseconds since the epoch; NULL: never again
    next_fire_at  INTEGER,
    last_fired_at INTEGER,
    created_at    INTEGER NOT NULL
);

CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;
