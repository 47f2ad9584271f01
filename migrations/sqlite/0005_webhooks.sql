-- Webhooks: owners' endpoints, the transactional outbox of deliveries and
-- the record of every delivery attempt (docs/architecture.md, "Webhooks").

-- Who issued a key: the acting admin token's name or calling key's id.
ALTER TABLE api_keys ADD COLUMN created_by TEXT;

CREATE TABLE webhook_endpoints (
    id            BLOB PRIMARY KEY,
    owner_id      TEXT NOT NULL,
    url           TEXT NOT NULL,
    -- The event filter as ',type,type,' (so one LIKE matches a type in both
    -- backends), or '' for every event.
    events        TEXT NOT NULL,
    enabled       INTEGER NOT NULL,
    -- The whsec_ signing secret, sealed with AES-256-GCM under the
    -- `webhook_secret_key` of server_secrets: nonce || ciphertext || tag.
    sealed_secret BLOB NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner_id, created_at DESC);

-- The outbox: one row per (event, endpoint), written in the transaction of
-- the change it reports. A replica claims a row by setting claim_id and
-- claimed_until, delivers outside any transaction, then records the outcome
-- if its claim still holds.
CREATE TABLE webhook_deliveries (
    event_id         BLOB NOT NULL,
    endpoint_id      BLOB NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    owner_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    claim_id         BLOB,
    claimed_until    TEXT,
    last_status_code INTEGER,
    last_error       TEXT,
    -- Retries stop once this is older than the retry window (reset by a
    -- redelivery).
    retry_from       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    delivered_at     TEXT,
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_claim ON webhook_deliveries (claim_id) WHERE claim_id IS NOT NULL;
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, event_id DESC);

CREATE TABLE webhook_attempts (
    event_id    BLOB NOT NULL,
    endpoint_id BLOB NOT NULL,
    attempt     INTEGER NOT NULL,
    at          TEXT NOT NULL,
    status_code INTEGER,
    latency_ms  INTEGER NOT NULL,
    error       TEXT,
    PRIMARY KEY (event_id, endpoint_id, attempt),
    FOREIGN KEY (event_id, endpoint_id) REFERENCES webhook_deliveries (event_id, endpoint_id) ON DELETE CASCADE
);

-- Which expiry warnings (api_key.expiring) a key has had, so that each is
-- sent once.
CREATE TABLE key_expiry_warnings (
    key_id         BLOB NOT NULL,
    before_seconds INTEGER NOT NULL,
    at             TEXT NOT NULL,
    PRIMARY KEY (key_id, before_seconds)
);
