-- The columns SQLite keeps a delivery's latest attempt in (its migration
-- 0008). On Postgres they stay NULL: every attempt goes to
-- `webhook_attempts`, since replicas of two versions may record attempts
-- side by side during a rolling upgrade, and one that did not know these
-- columns would leave a row's attempt out of date. They exist here so that
-- both backends read deliveries with one statement.
ALTER TABLE webhook_deliveries ADD COLUMN last_attempt INTEGER;
ALTER TABLE webhook_deliveries ADD COLUMN last_attempt_at TIMESTAMPTZ;
ALTER TABLE webhook_deliveries ADD COLUMN last_latency_ms BIGINT;
