-- Children on any worker: an orchestrator's branches and `each` items are runs of their own,
-- queued for any worker to claim. They are claimed like top-level runs (their
-- `parent_run_id` stays NULL, so every claim, lease and wait index serves them as it is);
-- `spawned_by` is their parent, `root_run_id` and `position` their place in its journal.
ALTER TABLE task_runtime.runs
    ADD COLUMN spawned_by         text,
    -- The parent's attempt that (re)queued the child: a retried parent queues again the
    -- children that failed in an earlier attempt of its own, not those of this one.
    ADD COLUMN spawn_attempt      integer NOT NULL DEFAULT 1,
    -- A parent waiting for its spawned children: woken when at most `wait_children` of
    -- them are unfinished, or (`wait_children_fail`) when one of them failed.
    ADD COLUMN wait_children      integer,
    ADD COLUMN wait_children_fail boolean NOT NULL DEFAULT false,
    -- A waiting parent's unfinished and failed children. Counted (under the parent's row
    -- lock) when it suspends, then kept by every child that ends: one row update per
    -- parent and settle, however many children it has, instead of a count of them.
    ADD COLUMN open_children      integer NOT NULL DEFAULT 0,
    ADD COLUMN failed_children    integer NOT NULL DEFAULT 0;

-- One child per position of a parent: a re-attempted parent never enqueues one twice.
-- (Also what a suspending parent counts its children by.)
CREATE UNIQUE INDEX runs_spawned ON task_runtime.runs (spawned_by, position)
    WHERE spawned_by IS NOT NULL;

-- Children that ended: a waiting parent's counts go down, and the parent is queued again
-- when its wait condition holds. Parents are locked in id order first (two settles never
-- wait for each other's parents), then updated by a statement of their own, whose snapshot
-- sees every child that ended before the lock was granted. A suspending parent locks its
-- row before it counts, so either it counts a child's end or the child's end updates its
-- counts: no wake is missed.
CREATE FUNCTION task_runtime.children_ended(p_parents text[], p_failed boolean[])
RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM 1 FROM task_runtime.runs p
      WHERE p.id IN (SELECT DISTINCT unnest(p_parents)) ORDER BY p.id FOR UPDATE;
    UPDATE task_runtime.runs p
       SET open_children = p.open_children - d.n,
           failed_children = p.failed_children + d.nf,
           status = CASE WHEN d.wake THEN 'queued' ELSE p.status END,
           -- At its creation time: ahead of its own queued children, so a fail-fast parent
           -- cancels them before they run.
           run_at = CASE WHEN d.wake THEN least(p.created_at, task_runtime.now_ms()) ELSE p.run_at END,
           wait_children = CASE WHEN d.wake THEN NULL ELSE p.wait_children END
      FROM (SELECT q.id, q.n, q.nf,
                   q.status = 'waiting' AND q.wait_children IS NOT NULL
                   AND (q.open_children - q.n <= q.wait_children
                        OR (q.wait_children_fail AND q.failed_children + q.nf > 0)) AS wake
              FROM (SELECT r.id, r.status, r.wait_children, r.wait_children_fail,
                           r.open_children, r.failed_children, e.n, e.nf
                      FROM (SELECT u.parent, count(*)::integer AS n,
                                   (count(*) FILTER (WHERE u.failed))::integer AS nf
                              FROM unnest(p_parents, p_failed) AS u(parent, failed)
                             GROUP BY u.parent) e
                      JOIN task_runtime.runs r ON r.id = e.parent) q) d
     WHERE p.id = d.id;
END
$fn$;

-- Every settle of a batch of attempts (finished, retried, released), then the parents of
-- the children among them; returns the ids it applied to. (Replaces one statement: a
-- parent's counts must be updated by a later statement than its children's ends.)
CREATE FUNCTION task_runtime.settle(
    p_now bigint,
    f_id text[], f_token int8[], f_status text[], f_envelope text[], f_before int8[],
    r_id text[], r_token int8[], r_run_at int8[], r_error text[], r_before int8[],
    l_id text[], l_token int8[])
RETURNS SETOF text LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_ids     text[];
    v_parents text[];
    v_failed  boolean[];
BEGIN
    WITH clock AS (SELECT task_runtime.now_ms() AS ms),
    finished AS (
        UPDATE task_runtime.runs r
           SET status = f.status, envelope = f.envelope, finished_at = clock.ms,
               lease_owner = NULL, lease_expires_at = NULL,
               idempotency_key = CASE WHEN f.status = 'completed' THEN r.idempotency_key END,
               idempotency_expires_at = CASE
                   WHEN f.status <> 'completed' OR r.idempotency_ttl_ms IS NULL THEN NULL
                   WHEN r.idempotency_ttl_ms > 9000000000000000000 - p_now THEN 9000000000000000000
                   ELSE p_now + r.idempotency_ttl_ms END
          FROM clock, unnest(f_id, f_token, f_status, f_envelope, f_before)
               AS f(id, token, status, envelope, expired_before)
         WHERE r.id = f.id AND r.lease_token = f.token AND r.status = 'executing'
           AND (f.expired_before IS NULL OR r.lease_expires_at < f.expired_before)
        RETURNING r.id, r.spawned_by, r.status),
    retried AS (
        UPDATE task_runtime.runs r
           SET status = 'queued', run_at = q.run_at, lease_owner = NULL, lease_expires_at = NULL,
               retried = coalesce(r.retried, '[]'::jsonb) || jsonb_build_array(q.error::jsonb)
          FROM unnest(r_id, r_token, r_run_at, r_error, r_before)
               AS q(id, token, run_at, error, expired_before)
         WHERE r.id = q.id AND r.lease_token = q.token AND r.status = 'executing'
           AND (q.expired_before IS NULL OR r.lease_expires_at < q.expired_before)
        RETURNING r.id),
    released AS (
        UPDATE task_runtime.runs r
           SET status = 'queued', attempts = r.attempts - 1,
               lease_owner = NULL, lease_expires_at = NULL
          FROM unnest(l_id, l_token) AS l(id, token)
         WHERE r.id = l.id AND r.lease_token = l.token AND r.status = 'executing'
        RETURNING r.id),
    done AS (
        SELECT id, spawned_by, status FROM finished
        UNION ALL SELECT id, NULL, NULL FROM retried
        UNION ALL SELECT id, NULL, NULL FROM released)
    SELECT coalesce(array_agg(done.id), '{}'),
           coalesce(array_agg(done.spawned_by) FILTER (WHERE done.spawned_by IS NOT NULL), '{}'),
           coalesce(array_agg(done.status <> 'completed') FILTER (WHERE done.spawned_by IS NOT NULL), '{}')
      INTO v_ids, v_parents, v_failed
      FROM done;
    IF cardinality(v_parents) > 0 THEN
        PERFORM task_runtime.children_ended(v_parents, v_failed);
    END IF;
    PERFORM pg_notify('task_runtime', '');
    RETURN QUERY SELECT unnest(v_ids);
END
$fn$;

-- Ends queued (or delayed, or waiting) runs without running them, then the parents of the
-- children among them; returns the ids it ended.
CREATE FUNCTION task_runtime.end_queued(p_ids text[], p_statuses text[], p_envelopes text[])
RETURNS SETOF text LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_ids     text[];
    v_parents text[];
    v_failed  boolean[];
BEGIN
    WITH clock AS (SELECT task_runtime.now_ms() AS ms),
    ended AS (
        UPDATE task_runtime.runs r
           SET status = e.status, envelope = e.envelope, finished_at = clock.ms,
               idempotency_key = NULL, wait_children = NULL
          FROM clock, unnest(p_ids, p_statuses, p_envelopes) AS e(id, status, envelope)
         WHERE r.id = e.id AND r.status IN ('queued', 'delayed', 'waiting')
        RETURNING r.id, r.spawned_by, r.status)
    SELECT coalesce(array_agg(ended.id), '{}'),
           coalesce(array_agg(ended.spawned_by) FILTER (WHERE ended.spawned_by IS NOT NULL), '{}'),
           coalesce(array_agg(ended.status <> 'completed') FILTER (WHERE ended.spawned_by IS NOT NULL), '{}')
      INTO v_ids, v_parents, v_failed
      FROM ended;
    IF cardinality(v_parents) > 0 THEN
        PERFORM task_runtime.children_ended(v_parents, v_failed);
    END IF;
    PERFORM pg_notify('task_runtime', '');
    RETURN QUERY SELECT unnest(v_ids);
END
$fn$;
