-- Runs, their tree (children are rows too), leases, the journal and the logs, in a schema of
-- their own (`task_runtime`) so they sit beside an application's tables without colliding.
--
-- Times are milliseconds since the epoch (bigint), as the SQLite store keeps them: the
-- library compares them with the clocks of its workers. JSON columns the library only
-- reads back (input, envelope, output, error) are text: never parsed by the server on the
-- hot path (cast with ::jsonb to query them). `tags` and `retried` are jsonb (filtered,
-- appended to in SQL).
CREATE TABLE task_runtime.runs (
    id                     text PRIMARY KEY,
    task                   text NOT NULL,
    tenant_id              text,
    project_id             text,
    -- delayed | queued | executing | waiting | completed | failed | cancelled | expired
    status                 text NOT NULL,
    input                  text NOT NULL,
    envelope               text,
    output                 text,
    error                  text,
    attempts               integer NOT NULL DEFAULT 0,
    -- a JSON array of the errors of attempts that were retried
    retried                jsonb,
    lease_owner            text,
    lease_expires_at       bigint,
    lease_token            bigint NOT NULL DEFAULT 0,
    cancel_requested       boolean NOT NULL DEFAULT false,
    run_at                 bigint NOT NULL,
    expire_at              bigint,
    idempotency_key        text,
    idempotency_ttl_ms     bigint,
    idempotency_expires_at bigint,
    tags                   jsonb,
    -- at most `concurrency_limit` runs of this task with this key execute at once
    concurrency_key        text,
    concurrency_limit      integer,
    parent_run_id          text,
    root_run_id            text,
    position               text,
    replay_of              text,
    created_at             bigint NOT NULL,
    started_at             bigint,
    finished_at            bigint
) WITH (fillfactor = 90);
-- (fillfactor: room on each page for heartbeats, which touch no indexed column and so
-- stay heap-only updates.)

-- What a claim reads: due top-level runs, oldest first. Finished rows are not in it, so a
-- claim costs the same after a million finished runs.
CREATE INDEX runs_due ON task_runtime.runs (run_at, id)
    WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL;

-- Due runs of one task (tasks with a concurrency limit are claimed per task).
CREATE INDEX runs_due_by_task ON task_runtime.runs (task, run_at, id)
    WHERE status IN ('queued', 'delayed') AND parent_run_id IS NULL;

-- Due runs with a concurrency key, by (task, key): claims walk the keys with a skip scan.
CREATE INDEX runs_keyed_due ON task_runtime.runs (task, concurrency_key, run_at, id)
    WHERE concurrency_key IS NOT NULL AND status IN ('queued', 'delayed') AND parent_run_id IS NULL;

-- Runs with a time to live, for the reaper (only they pay for this index).
CREATE INDEX runs_ttl ON task_runtime.runs (expire_at)
    WHERE expire_at IS NOT NULL AND status IN ('queued', 'delayed') AND parent_run_id IS NULL;

-- Executing top-level runs: counts per task and key, expired leases. (Not the lease's
-- expiry: a heartbeat then changes no indexed column and stays a heap-only update.)
CREATE INDEX runs_executing ON task_runtime.runs (task, concurrency_key)
    WHERE status = 'executing' AND parent_run_id IS NULL;

-- At most one run holds an idempotency key (per task and tenant); a failed, cancelled or
-- expired run, or one past its key's TTL, gives the key up.
CREATE UNIQUE INDEX runs_idempotency
    ON task_runtime.runs (task, coalesce(tenant_id, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The journal: one child per position of a parent; a tree by its root.
CREATE UNIQUE INDEX runs_position ON task_runtime.runs (parent_run_id, position)
    WHERE parent_run_id IS NOT NULL AND position IS NOT NULL;
CREATE INDEX runs_children ON task_runtime.runs (parent_run_id, id)
    WHERE parent_run_id IS NOT NULL AND position IS NULL;
CREATE INDEX runs_tree ON task_runtime.runs (root_run_id) WHERE root_run_id IS NOT NULL;

-- Listing top-level runs, newest first, by tenant, task or status. Every index costs each
-- state change of every run a write (a claim and a settle change `status`, so neither is a
-- heap-only update), about 2 µs each: by tenant (what the API lists by) and by task for
-- every run; by status only for the rare statuses, as queued, executing and completed
-- runs are found quickly walking ids backwards.
CREATE INDEX runs_by_tenant ON task_runtime.runs (tenant_id, id) WHERE parent_run_id IS NULL;
CREATE INDEX runs_by_task ON task_runtime.runs (task, id) WHERE parent_run_id IS NULL;
CREATE INDEX runs_by_status ON task_runtime.runs (status, id)
    WHERE parent_run_id IS NULL AND status IN ('delayed', 'failed', 'cancelled', 'expired');

CREATE TABLE task_runtime.run_logs (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id  text NOT NULL,
    at      bigint NOT NULL,
    level   text NOT NULL,
    message text NOT NULL,
    fields  text
);
CREATE INDEX run_logs_by_run ON task_runtime.run_logs (run_id, seq);

-- The server's clock in milliseconds. Runs' started_at and finished_at are the server's
-- time of the write: claims and settles of every worker are then ordered as they
-- committed, whatever the workers' clocks say.
CREATE FUNCTION task_runtime.now_ms() RETURNS bigint LANGUAGE sql VOLATILE
    AS $$ SELECT (date_part('epoch', clock_timestamp()) * 1000)::bigint $$;

-- Claims, in one call: up to p_limit due runs for p_owner, oldest first, respecting
--   * p_tasks/p_limits: at most that many runs of each such task execute at once (across
--     every worker of the database), and
--   * each run's concurrency_key/concurrency_limit: at most that many runs of its task
--     with its key execute at once.
-- Returns the claimed runs, then one row with a NULL id carrying when the next queued run
-- is due (NULL: nothing queued).
--
-- Why a function: a limit is only correct if two claimers never count at once. Claims of a
-- limited task, and of one key, are serialized by transaction-scoped advisory locks, taken
-- with try (a claimer that finds one taken leaves that queue to the holder this time:
-- nothing waits, nothing deadlocks). The counts are read by a later statement than the
-- locks, so its snapshot (read committed takes one per statement in a volatile function)
-- sees every claim committed by an earlier holder. One plain UPDATE could not: its
-- snapshot would be taken before the locks are granted.
--
-- Fairness: keys are visited by their oldest due run (a skip scan over runs_keyed_due, one
-- probe per key, however long each backlog is), and within the claim, runs are taken
-- round-robin: every key's first run before any key's second.
CREATE FUNCTION task_runtime.claim(
    p_owner text, p_until bigint, p_now bigint, p_limit integer,
    p_tasks text[], p_limits integer[])
RETURNS TABLE (id text, task text, input text, attempts integer, lease_token bigint, next_due bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_tasks   text[]    := '{}';
    v_limits  integer[] := '{}';
    v_ktasks  text[]    := '{}';
    v_keys    text[]    := '{}';
    v_klimits integer[] := '{}';
    v_ids     text[]    := '{}';
    v_taken   integer   := 0;
    v_n       integer;
    v_at      bigint;
BEGIN
    -- A claim is committed without waiting for the disk (every other write waits): one
    -- lost to a crash of the server only makes its runs claimable again, which a lost
    -- worker does too. Its worker then learns at its next heartbeat that the lease is not
    -- its own, and its writes are fenced off, because a claim's token is never reused:
    -- it is at least the server's clock in milliseconds, so a claim made after a crash
    -- has a larger token than any claim the crash lost. Any later durable commit (a
    -- trigger, a settle) makes every claim before it durable too (the log is written in
    -- order). This halves the disk flushes a drained run costs and keeps one off the path
    -- from trigger to start.
    PERFORM set_config('synchronous_commit', 'off', true);
    IF cardinality(p_tasks) > 0 THEN
        SELECT coalesce(array_agg(l.task), '{}'), coalesce(array_agg(l.lim), '{}')
          INTO v_tasks, v_limits
          FROM unnest(p_tasks, p_limits) AS l(task, lim)
         WHERE CASE WHEN EXISTS (
                        SELECT 1 FROM task_runtime.runs r
                         WHERE r.task = l.task AND r.status IN ('queued', 'delayed')
                           AND r.parent_run_id IS NULL AND r.run_at <= p_now)
                    THEN pg_try_advisory_xact_lock(hashtextextended('task_runtime/task/' || l.task, 0))
                    ELSE false END;
    END IF;

    IF EXISTS (SELECT 1 FROM task_runtime.runs r
                WHERE r.concurrency_key IS NOT NULL AND r.status IN ('queued', 'delayed')
                  AND r.parent_run_id IS NULL) THEN
        WITH RECURSIVE heads AS (
            (SELECT r.task, r.concurrency_key AS key, r.run_at, r.concurrency_limit AS lim
               FROM task_runtime.runs r
              WHERE r.concurrency_key IS NOT NULL AND r.status IN ('queued', 'delayed')
                AND r.parent_run_id IS NULL
              ORDER BY r.task, r.concurrency_key, r.run_at, r.id LIMIT 1)
            UNION ALL
            SELECT nxt.task, nxt.key, nxt.run_at, nxt.lim FROM heads h, LATERAL (
                SELECT r.task, r.concurrency_key AS key, r.run_at, r.concurrency_limit AS lim
                  FROM task_runtime.runs r
                 WHERE r.concurrency_key IS NOT NULL AND r.status IN ('queued', 'delayed')
                   AND r.parent_run_id IS NULL
                   AND (r.task, r.concurrency_key) > (h.task, h.key)
                 ORDER BY r.task, r.concurrency_key, r.run_at, r.id LIMIT 1) nxt
        ), open AS (
            -- Due keys that look open (a stale look; checked again under the lock), limited
            -- tasks' keys only under their task's lock.
            SELECT heads.task, heads.key, heads.lim FROM heads
             WHERE heads.run_at <= p_now
               AND (heads.task <> ALL (p_tasks) OR heads.task = ANY (v_tasks))
               AND (SELECT count(*) FROM task_runtime.runs e
                     WHERE e.task = heads.task AND e.concurrency_key = heads.key
                       AND e.status = 'executing' AND e.parent_run_id IS NULL) < heads.lim
             ORDER BY heads.run_at
             LIMIT 2 * p_limit
        )
        SELECT coalesce(array_agg(o.task), '{}'), coalesce(array_agg(o.key), '{}'),
               coalesce(array_agg(o.lim), '{}')
          INTO v_ktasks, v_keys, v_klimits
          FROM open o
         WHERE pg_try_advisory_xact_lock(
                   hashtextextended('task_runtime/key/' || o.task || '/' || o.key, 0));
    END IF;

    IF cardinality(v_tasks) > 0 OR cardinality(v_keys) > 0 THEN
        WITH task_room AS (
            SELECT t.task, t.lim - (SELECT count(*) FROM task_runtime.runs e
                                     WHERE e.task = t.task AND e.status = 'executing'
                                       AND e.parent_run_id IS NULL) AS room
              FROM unnest(v_tasks, v_limits) AS t(task, lim)
        ), key_room AS (
            SELECT k.task, k.key, k.lim - (SELECT count(*) FROM task_runtime.runs e
                                            WHERE e.task = k.task AND e.concurrency_key = k.key
                                              AND e.status = 'executing'
                                              AND e.parent_run_id IS NULL) AS room
              FROM unnest(v_ktasks, v_keys, v_klimits) AS k(task, key, lim)
        ), candidates AS (
            SELECT c.* FROM key_room kr, LATERAL (
                SELECT r.id, r.task, r.run_at,
                       row_number() OVER (ORDER BY r.run_at, r.id) AS turn
                  FROM task_runtime.runs r
                 WHERE r.task = kr.task AND r.concurrency_key = kr.key
                   AND r.status IN ('queued', 'delayed') AND r.parent_run_id IS NULL
                   AND r.run_at <= p_now AND (r.expire_at IS NULL OR r.expire_at > p_now)
                 ORDER BY r.run_at, r.id
                 LIMIT greatest(kr.room, 0)) c
            UNION ALL
            SELECT c.* FROM task_room tr, LATERAL (
                SELECT r.id, r.task, r.run_at,
                       row_number() OVER (ORDER BY r.run_at, r.id) AS turn
                  FROM task_runtime.runs r
                 WHERE r.task = tr.task AND r.concurrency_key IS NULL
                   AND r.status IN ('queued', 'delayed') AND r.parent_run_id IS NULL
                   AND r.run_at <= p_now AND (r.expire_at IS NULL OR r.expire_at > p_now)
                 ORDER BY r.run_at, r.id
                 LIMIT greatest(tr.room, 0)) c
        ), within_task AS (
            SELECT c.*, row_number() OVER (PARTITION BY c.task ORDER BY c.turn, c.run_at, c.id) AS nth
              FROM candidates c
        )
        SELECT coalesce(array_agg(s.id), '{}') INTO v_ids FROM (
            SELECT w.id FROM within_task w LEFT JOIN task_room tr ON tr.task = w.task
             WHERE tr.task IS NULL OR w.nth <= tr.room
             ORDER BY w.turn, w.run_at, w.id
             LIMIT p_limit) s;

        -- When the claimed runs start: read after the statement that counted, so that any
        -- settle it saw finished earlier (and started_at/finished_at order runs as the
        -- limits did).
        v_at := task_runtime.now_ms();
        RETURN QUERY
        UPDATE task_runtime.runs r
           SET status = 'executing', lease_owner = p_owner, lease_expires_at = p_until,
               lease_token = greatest(r.lease_token + 1, v_at), attempts = r.attempts + 1,
               started_at = coalesce(r.started_at, v_at)
          FROM (SELECT x.id FROM task_runtime.runs x
                 WHERE x.id = ANY (v_ids) AND x.status IN ('queued', 'delayed')
                   FOR UPDATE SKIP LOCKED) pick
         WHERE r.id = pick.id
        RETURNING r.id, r.task, r.input, r.attempts, r.lease_token, NULL::bigint;
        GET DIAGNOSTICS v_taken = ROW_COUNT;
    END IF;

    IF v_taken < p_limit THEN
        v_at := task_runtime.now_ms();
        RETURN QUERY
        UPDATE task_runtime.runs r
           SET status = 'executing', lease_owner = p_owner, lease_expires_at = p_until,
               lease_token = greatest(r.lease_token + 1, v_at), attempts = r.attempts + 1,
               started_at = coalesce(r.started_at, v_at)
          FROM (SELECT x.id FROM task_runtime.runs x
                 WHERE x.status IN ('queued', 'delayed') AND x.parent_run_id IS NULL
                   AND x.run_at <= p_now AND (x.expire_at IS NULL OR x.expire_at > p_now)
                   AND x.concurrency_key IS NULL AND x.task <> ALL (p_tasks)
                 ORDER BY x.run_at, x.id
                 LIMIT p_limit - v_taken
                   FOR UPDATE SKIP LOCKED) pick
         WHERE r.id = pick.id
        RETURNING r.id, r.task, r.input, r.attempts, r.lease_token, NULL::bigint;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_taken := v_taken + v_n;
    END IF;

    IF v_taken < p_limit THEN
        RETURN QUERY
        SELECT NULL::text, NULL::text, NULL::text, NULL::integer, NULL::bigint, min(r.run_at)
          FROM task_runtime.runs r
         WHERE r.status IN ('queued', 'delayed') AND r.parent_run_id IS NULL;
    END IF;
END
$fn$;
