-- Cron schedules (`#[task(schedule = "..")]`, `rt.schedules().create(..)`). A worker fires
-- a due schedule by moving `next_fire_at` from the value it read, in the transaction that
-- commits the run: two workers never fire one slot twice. Times in milliseconds.
CREATE TABLE task_runtime.schedules (
    id            text PRIMARY KEY,
    task          text NOT NULL,
    cron          text NOT NULL,
    timezone      text NOT NULL,
    tenant_id     text,
    project_id    text,
    external_id   text,
    declared      boolean NOT NULL DEFAULT false,
    next_fire_at  bigint,
    last_fired_at bigint,
    created_at    bigint NOT NULL
);

CREATE INDEX schedules_due ON task_runtime.schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;
