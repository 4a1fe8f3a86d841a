-- The trace a run continues: the W3C `traceparent` of the span that triggered it (the HTTP
-- request's, an in-process caller's, or an orchestrator attempt's for the children it
-- enqueues). The worker that claims the run makes its span a child of it. NULL: the run
-- starts a trace of its own.
ALTER TABLE task_runtime.runs ADD COLUMN trace_context text;
