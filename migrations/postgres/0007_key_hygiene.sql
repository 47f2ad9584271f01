-- Key hygiene (docs/behaviour.md, "Key hygiene"): IP allow-lists, keys
-- imported from another system, and the leak reports already acted on.

-- CIDRs a key may be used from, as a JSON array of strings; empty allows all.
ALTER TABLE api_keys ADD COLUMN allowed_cidrs JSONB NOT NULL DEFAULT '[]';
-- Imported keys are stored as the SHA-256 of the whole key string, not of
-- the token segment, and have no checksum.
ALTER TABLE api_keys ADD COLUMN imported BOOLEAN NOT NULL DEFAULT FALSE;

-- Dormancy: keys by their last use, or creation when never used.
CREATE INDEX api_keys_dormancy ON api_keys ((COALESCE(last_used_at, created_at)))
    WHERE deleted_at IS NULL AND revoked_at IS NULL;

-- The SHA-256 of every signed secret-scanning report body handled, so that a
-- replayed report is refused on every replica.
CREATE TABLE leak_reports (
    body_sha256 BYTEA PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL
);
