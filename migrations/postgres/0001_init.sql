-- keygate schema (PostgreSQL). Every instant is TIMESTAMPTZ (UTC).
-- Keys are stored only as the SHA-256 of their token segment.

CREATE TABLE owners (
    owner_id          TEXT PRIMARY KEY,
    suspended_at      TIMESTAMPTZ,
    suspension_reason TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_keys (
    id                UUID PRIMARY KEY,
    owner_id          TEXT NOT NULL,
    name              TEXT NOT NULL,
    environment       TEXT NOT NULL,
    key_hash          BYTEA NOT NULL,
    key_prefix        TEXT NOT NULL,
    abilities         JSONB NOT NULL,
    superkey          BOOLEAN NOT NULL,
    rate_limit_max    BIGINT,
    rate_limit_decay  BIGINT,
    expires_at        TIMESTAMPTZ,
    revoked_at        TIMESTAMPTZ,
    revocation_reason TEXT,
    rotated_from_id   UUID,
    rotated_to_id     UUID,
    request_count     BIGINT NOT NULL DEFAULT 0,
    last_used_at      TIMESTAMPTZ,
    last_used_ip      TEXT,
    metadata          JSONB NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    deleted_at        TIMESTAMPTZ
-- Every usage flush rewrites request_count / last_used_* of each active key;
-- none of them is indexed, so with room on the page the update is HOT (no
-- index writes).
) WITH (fillfactor = 80);
CREATE UNIQUE INDEX api_keys_key_hash ON api_keys (key_hash);
CREATE INDEX api_keys_owner_newest ON api_keys (owner_id, created_at DESC, id DESC);
CREATE INDEX api_keys_newest ON api_keys (created_at DESC, id DESC);
CREATE INDEX api_keys_expiring ON api_keys (expires_at) WHERE deleted_at IS NULL AND expires_at IS NOT NULL;

CREATE TABLE audit_events (
    id         UUID PRIMARY KEY,
    event      TEXT NOT NULL,
    key_id     UUID,
    owner_id   TEXT,
    key_prefix TEXT,
    actor      TEXT NOT NULL,
    metadata   JSONB NOT NULL,
    at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_events_newest ON audit_events (at DESC, id DESC);
CREATE INDEX audit_events_key ON audit_events (key_id, at DESC);
CREATE INDEX audit_events_owner ON audit_events (owner_id, at DESC);

CREATE TABLE usage_daily (
    key_id   UUID NOT NULL,
    day      DATE NOT NULL,
    endpoint TEXT NOT NULL,
    count    BIGINT NOT NULL,
    PRIMARY KEY (key_id, day, endpoint)
-- Upserted once per flush per (key, day, endpoint): room for HOT updates.
) WITH (fillfactor = 80);
-- Rows arrive in day order, so a BRIN index serves pruning at almost no
-- cost per insert.
CREATE INDEX usage_daily_day ON usage_daily USING brin (day);

CREATE TABLE usage_log (
    id       BIGSERIAL PRIMARY KEY,
    key_id   UUID NOT NULL,
    at       TIMESTAMPTZ NOT NULL,
    method   TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    ip       TEXT,
    decision TEXT NOT NULL
);
CREATE INDEX usage_log_key_newest ON usage_log (key_id, at DESC);
-- Append-only in time order: BRIN serves pruning without a B-tree insert per
-- logged request.
CREATE INDEX usage_log_at ON usage_log USING brin (at);
