-- Concurrency keys (`TriggerOptions::concurrency_key`): at most `concurrency_limit` runs of
-- a task with one key execute at once, across every process sharing the file.
ALTER TABLE runs ADD COLUMN concurrency_key TEXT;
ALTER TABLE runs ADD COLUMN concurrency_limit INTEGER;

-- Whether any keyed run is due (claims take the general path only then), and counts of the
-- keyed runs executing per key.
CREATE INDEX runs_keyed_due ON runs (task, concurrency_key, run_at)
    WHERE concurrency_key IS NOT NULL AND status IN ('queued', 'delayed') AND parent_run_id IS NULL;
CREATE INDEX runs_keyed_executing ON runs (task, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND status = 'executing' AND parent_run_id IS NULL;
