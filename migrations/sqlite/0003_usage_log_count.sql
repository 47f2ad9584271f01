-- The usage log coalesces repeated requests: one row per key, second,
-- method, endpoint, client IP and decision in a flush, with how many
-- requests it stands for. Rows written before hold one request each.
ALTER TABLE usage_log ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
