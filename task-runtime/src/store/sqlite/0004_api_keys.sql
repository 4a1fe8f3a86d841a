-- API keys of the HTTP API (feature `http`): only a SHA-256 hash of each key is kept, with
-- its last four characters to tell keys apart. A revoked key keeps its row (revoked_at set).
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    last_four   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
