-- One B-tree insert per logged request instead of two. `recent_logs` reads
-- a key's newest rows through usage_log_key_newest (key_id, at DESC); the
-- primary key on `id` served no query, yet its index took a B-tree insert
-- and a uniqueness check per row: dropping it raised the flusher's rate by
-- 12-27 % (`scripts/bench.sh flush`, BENCHMARKS.md); Check throughput with
-- usage on moved within noise.
-- A unique (key_id, at, id) key instead was measured too: its uniqueness
-- check cost as much as the two indexes did. `id` stays, as the tie-break
-- of `recent_logs`. Without a primary key, logical replication identifies
-- pruned rows by their whole content.
ALTER TABLE usage_log DROP CONSTRAINT usage_log_pkey;
ALTER TABLE usage_log REPLICA IDENTITY FULL;
