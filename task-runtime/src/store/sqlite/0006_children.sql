-- Children on any worker: an orchestrator's branches and `each` items are runs of their own,
-- queued for any worker to claim. They are claimed like top-level runs (their
-- `parent_run_id` stays NULL, so every claim, lease and wait index serves them as it is);
-- `spawned_by` is their parent, `root_run_id` and `position` their place in its journal.
ALTER TABLE runs ADD COLUMN spawned_by TEXT;
-- The parent's attempt that (re)queued the child: a retried parent queues again the children
-- that failed in an earlier attempt of its own, not those that failed in this one.
ALTER TABLE runs ADD COLUMN spawn_attempt INTEGER NOT NULL DEFAULT 1;

-- A parent waiting for its spawned children: woken when at most `wait_children` of them are
-- unfinished, or (`wait_children_fail` = 1) when one of them failed.
ALTER TABLE runs ADD COLUMN wait_children INTEGER;
ALTER TABLE runs ADD COLUMN wait_children_fail INTEGER NOT NULL DEFAULT 0;

-- One child per position of a parent: a re-attempted parent never enqueues one twice.
CREATE UNIQUE INDEX runs_spawned ON runs (spawned_by, position) WHERE spawned_by IS NOT NULL;
-- A parent's unfinished children, counted on every settle of one of them.
CREATE INDEX runs_spawned_status ON runs (spawned_by, status) WHERE spawned_by IS NOT NULL;
-- Parents waiting for children.
CREATE INDEX runs_waiting_children ON runs (id) WHERE status = 'waiting' AND wait_children IS NOT NULL;
