-- Secrets every replica must share, such as the key that seals page tokens.
-- Each is made by the first server that needs it (INSERT … ON CONFLICT DO
-- NOTHING) and read afterwards; none is ever returned by an API.
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    created_at TEXT NOT NULL
);
