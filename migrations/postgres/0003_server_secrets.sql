-- Secrets every replica must share, such as the key that seals page tokens.
-- Each is made by the first replica that needs it (INSERT … ON CONFLICT DO
-- NOTHING) and read by the others; none is ever returned by an API.
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
