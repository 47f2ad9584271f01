-- A delivery's latest attempt is kept in its own row: `last_attempt` (its
-- number), `last_attempt_at`, `last_latency_ms`, with `last_status_code`
-- and `last_error` as before; `webhook_attempts` holds the earlier ones. A
-- delivery answered at its first attempt, most of them, is then one row
-- written once, not a row and a log entry (src/store/webhooks.rs). A row
-- whose `last_attempt` is NULL holds no attempt: rows from before this
-- migration have all of theirs in `webhook_attempts`.
ALTER TABLE webhook_deliveries ADD COLUMN last_attempt INTEGER;
ALTER TABLE webhook_deliveries ADD COLUMN last_attempt_at TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN last_latency_ms INTEGER;
