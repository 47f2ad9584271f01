-- Credits: a key's budget of calls (docs/behaviour.md, "Credits").
-- credits_remaining is the part no replica has leased; NULL means the key
-- has no credits and is not counted. Refill instants are whole seconds since
-- the Unix epoch so that the lease statement is the same integer arithmetic
-- on both stores. credits_generation changes whenever KeyAdmin sets the
-- credits, so that a lease taken before cannot be returned on top.
ALTER TABLE api_keys ADD COLUMN credits_remaining BIGINT;
ALTER TABLE api_keys ADD COLUMN credits_refill_amount BIGINT;
ALTER TABLE api_keys ADD COLUMN credits_refill_interval BIGINT;
ALTER TABLE api_keys ADD COLUMN credits_refilled_at BIGINT;
ALTER TABLE api_keys ADD COLUMN credits_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN credits_last_lease BIGINT NOT NULL DEFAULT 0;
