-- API keys of the HTTP API (feature `http`): only a SHA-256 hash of each key is kept, with
-- its last four characters to tell keys apart. A revoked key keeps its row (revoked_at set).
CREATE TABLE task_runtime.api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    hash        text NOT NULL,
    last_four   text NOT NULL,
    created_at  bigint NOT NULL,
    revoked_at  bigint
);
