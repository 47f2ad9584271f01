-- Each endpoint's pending deliveries in due order. The dispatcher's round
-- reads the outbox's due head in time order (`webhook_deliveries_due`);
-- when that head is held by endpoints that are paused or disabled, it reads
-- each active endpoint's oldest due deliveries here instead, so that a
-- blocked backlog is not walked by every round (src/store/webhooks.rs,
-- `READ_DUE_BY_ENDPOINT_SQLITE`).
CREATE INDEX webhook_deliveries_due_by_endpoint
    ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
