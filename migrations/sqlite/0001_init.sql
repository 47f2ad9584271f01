-- keygate schema (SQLite). Instants are RFC 3339 TEXT in UTC, which sorts chronologically; UUIDs are 16-byte BLOBs.
-- Keys are stored only as the SHA-256 of their token segment.

CREATE TABLE owners (
    owner_id          TEXT PRIMARY KEY,
    suspended_at      TEXT,
    suspension_reason TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE TABLE api_keys (
    id                BLOB PRIMARY KEY,
    owner_id          TEXT NOT NULL,
    name              TEXT NOT NULL,
    environment       TEXT NOT NULL,
    key_hash          BLOB NOT NULL,
    key_prefix        TEXT NOT NULL,
    abilities         TEXT NOT NULL,
    superkey          INTEGER NOT NULL,
    rate_limit_max    INTEGER,
    rate_limit_decay  INTEGER,
    expires_at        TEXT,
    revoked_at        TEXT,
    revocation_reason TEXT,
    rotated_from_id   BLOB,
    rotated_to_id     BLOB,
    request_count     INTEGER NOT NULL DEFAULT 0,
    last_used_at      TEXT,
    last_used_ip      TEXT,
    metadata          TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    deleted_at        TEXT
);
CREATE UNIQUE INDEX api_keys_key_hash ON api_keys (key_hash);
CREATE INDEX api_keys_owner_newest ON api_keys (owner_id, created_at DESC, id DESC);
CREATE INDEX api_keys_newest ON api_keys (created_at DESC, id DESC);
CREATE INDEX api_keys_expiring ON api_keys (expires_at) WHERE deleted_at IS NULL AND expires_at IS NOT NULL;

CREATE TABLE audit_events (
    id         BLOB PRIMARY KEY,
    event      TEXT NOT NULL,
    key_id     BLOB,
    owner_id   TEXT,
    key_prefix TEXT,
    actor      TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE INDEX audit_events_newest ON audit_events (at DESC, id DESC);
CREATE INDEX audit_events_key ON audit_events (key_id, at DESC);
CREATE INDEX audit_events_owner ON audit_events (owner_id, at DESC);

CREATE TABLE usage_daily (
    key_id   BLOB NOT NULL,
    day      TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (key_id, day, endpoint)
);
CREATE INDEX usage_daily_day ON usage_daily (day);

CREATE TABLE usage_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id   BLOB NOT NULL,
    at       TEXT NOT NULL,
    method   TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    ip       TEXT,
    decision TEXT NOT NULL
);
CREATE INDEX usage_log_key_newest ON usage_log (key_id, at DESC);
CREATE INDEX usage_log_at ON usage_log (at);
