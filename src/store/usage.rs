//! Usage: batched writes from the flusher, the figures GetKeyUsage reads, and
//! pruning of expired keys and old usage.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::{
    backend::Backend, owners_audit::insert_audit, with_pool, AuditRecord, DbPool, Store,
    StoreResult,
};

/// One Check decision about a known key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub key_id: Uuid,
    pub at: DateTime<Utc>,
    pub ip: Option<String>,
    pub method: String,
    pub endpoint: String,
    pub decision: &'static str,
    pub allowed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageLogEntry {
    pub at: DateTime<Utc>,
    pub method: String,
    pub endpoint: String,
    pub ip: Option<String>,
    pub decision: String,
}

/// What GetKeyUsage reports beyond the key's own counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsage {
    pub top_endpoints: Vec<(String, u64)>,
    pub recent_logs: Vec<UsageLogEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneSummary {
    pub keys_expired: u64,
    pub usage_logs_deleted: u64,
    pub daily_counts_deleted: u64,
    pub webhook_deliveries_deleted: u64,
}

/// Per-key counter deltas: allowed requests, latest use and its IP.
struct CounterDelta {
    allowed: i64,
    last_at: DateTime<Utc>,
    last_ip: Option<String>,
}

/// Requests per key, day and endpoint.
type DailyCounts<'a> = HashMap<(Uuid, NaiveDate, &'a str), i64>;

/// Folds a batch into per-key counters and per-day endpoint counts, so each
/// table gets one statement per batch instead of one per event.
fn aggregate(events: &[UsageEvent]) -> (HashMap<Uuid, CounterDelta>, DailyCounts<'_>) {
    let mut counters: HashMap<Uuid, CounterDelta> = HashMap::new();
    let mut daily: DailyCounts<'_> = HashMap::new();
    for event in events {
        let delta = counters
            .entry(event.key_id)
            .or_insert_with(|| CounterDelta {
                allowed: 0,
                last_at: event.at,
                last_ip: event.ip.clone(),
            });
        delta.allowed += i64::from(event.allowed);
        if event.at >= delta.last_at {
            delta.last_at = event.at;
            delta.last_ip.clone_from(&event.ip);
        }
        *daily
            .entry((event.key_id, event.at.date_naive(), event.endpoint.as_str()))
            .or_default() += 1;
    }
    (counters, daily)
}

/// Rows per multi-row SQLite statement: 6 binds a row stays far below
/// SQLite's 32,766 bind limit.
const SQLITE_ROWS_PER_STATEMENT: usize = 1000;
/// `UPDATE … FROM (VALUES …)`: `column1..4` are key id, allowed requests,
/// latest use and its IP.
const SQLITE_BUMP_COUNTERS_HEAD: &str = "UPDATE OR FAIL api_keys SET request_count = api_keys.request_count + v.column2, \
     last_used_at = CASE WHEN api_keys.last_used_at IS NULL OR v.column3 >= api_keys.last_used_at THEN v.column3 ELSE api_keys.last_used_at END, \
     last_used_ip = CASE WHEN api_keys.last_used_at IS NULL OR v.column3 >= api_keys.last_used_at THEN v.column4 ELSE api_keys.last_used_ip END \
     FROM (";
const SQLITE_BUMP_COUNTERS_TAIL: &str = ") AS v WHERE api_keys.id = v.column1";
const PG_BUMP_COUNTERS: &str = "UPDATE api_keys AS k SET request_count = k.request_count + u.n, \
     last_used_at = GREATEST(k.last_used_at, u.at), \
     last_used_ip = CASE WHEN k.last_used_at IS NULL OR u.at >= k.last_used_at THEN u.ip ELSE k.last_used_ip END \
     FROM UNNEST($1::uuid[], $2::int8[], $3::timestamptz[], $4::text[]) AS u(id, n, at, ip) WHERE k.id = u.id";
const DAILY_UPSERT_TAIL: &str =
    " ON CONFLICT (key_id, day, endpoint) DO UPDATE SET count = usage_daily.count + EXCLUDED.count";

impl Store {
    /// Writes a batch of usage events: one statement per table on Postgres
    /// (array binds), one transaction on SQLite.
    pub async fn record_usage(&self, events: &[UsageEvent], log_enabled: bool) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let (counters, daily) = aggregate(events);
        match &self.main {
            DbPool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let (ids, rest): (Vec<Uuid>, Vec<_>) = counters
                    .into_iter()
                    .map(|(id, d)| (id, (d.allowed, d.last_at, d.last_ip)))
                    .unzip();
                let (counts, rest): (Vec<i64>, Vec<_>) =
                    rest.into_iter().map(|(n, at, ip)| (n, (at, ip))).unzip();
                let (ats, ips): (Vec<DateTime<Utc>>, Vec<Option<String>>) =
                    rest.into_iter().unzip();
                sqlx::query(PG_BUMP_COUNTERS)
                    .bind(ids)
                    .bind(counts)
                    .bind(ats)
                    .bind(ips)
                    .execute(&mut *tx)
                    .await?;

                let mut daily_keys = Vec::with_capacity(daily.len());
                let mut days = Vec::with_capacity(daily.len());
                let mut endpoints = Vec::with_capacity(daily.len());
                let mut daily_counts = Vec::with_capacity(daily.len());
                for ((key_id, day, endpoint), count) in daily {
                    daily_keys.push(key_id);
                    days.push(day);
                    endpoints.push(endpoint);
                    daily_counts.push(count);
                }
                sqlx::query(&format!(
                    "INSERT INTO usage_daily (key_id, day, endpoint, count) \
                     SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::text[], $4::int8[]){DAILY_UPSERT_TAIL}"
                ))
                .bind(daily_keys).bind(days).bind(endpoints).bind(daily_counts)
                .execute(&mut *tx).await?;

                if log_enabled {
                    sqlx::query(
                        "INSERT INTO usage_log (key_id, at, method, endpoint, ip, decision) \
                         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[])",
                    )
                    .bind(events.iter().map(|e| e.key_id).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.method.as_str()).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.endpoint.as_str()).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.ip.as_deref()).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.decision).collect::<Vec<_>>())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            DbPool::Sqlite(pool) => {
                // Multi-row statements: each sqlx SQLite statement is a hop to
                // the connection's worker thread, so per-row statements cost
                // more than the writes themselves. `OR FAIL`: a failed
                // row fails the whole batch anyway (the transaction is rolled
                // back and the batch retried), and a statement that need not
                // undo itself keeps no statement journal, a copy of every
                // page it touches. (The daily upsert keeps one: SQLite runs
                // `DO UPDATE` with ABORT whatever the statement says.)
                let mut tx = pool.begin_write().await?;
                let counters: Vec<_> = counters.into_iter().collect();
                for chunk in counters.chunks(SQLITE_ROWS_PER_STATEMENT) {
                    let mut update = QueryBuilder::<Sqlite>::new(SQLITE_BUMP_COUNTERS_HEAD);
                    update.push_values(chunk, |mut row, (key_id, delta)| {
                        row.push_bind(*key_id)
                            .push_bind(delta.allowed)
                            .push_bind(delta.last_at)
                            .push_bind(delta.last_ip.clone());
                    });
                    update.push(SQLITE_BUMP_COUNTERS_TAIL);
                    update.build().execute(&mut *tx).await?;
                }
                let daily: Vec<_> = daily.into_iter().collect();
                for chunk in daily.chunks(SQLITE_ROWS_PER_STATEMENT) {
                    let mut upsert = QueryBuilder::<Sqlite>::new(
                        "INSERT OR FAIL INTO usage_daily (key_id, day, endpoint, count) ",
                    );
                    upsert.push_values(chunk, |mut row, ((key_id, day, endpoint), count)| {
                        row.push_bind(*key_id)
                            .push_bind(*day)
                            .push_bind(endpoint.to_string())
                            .push_bind(*count);
                    });
                    upsert.push(DAILY_UPSERT_TAIL);
                    upsert.build().execute(&mut *tx).await?;
                }
                if log_enabled {
                    for chunk in events.chunks(SQLITE_ROWS_PER_STATEMENT) {
                        let mut insert = QueryBuilder::<Sqlite>::new(
                            "INSERT OR FAIL INTO usage_log (key_id, at, method, endpoint, ip, decision) ",
                        );
                        insert.push_values(chunk, |mut row, e| {
                            row.push_bind(e.key_id)
                                .push_bind(e.at)
                                .push_bind(e.method.clone())
                                .push_bind(e.endpoint.clone())
                                .push_bind(e.ip.clone())
                                .push_bind(e.decision);
                        });
                        insert.build().execute(&mut *tx).await?;
                    }
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Top endpoints since `since` and the most recent log rows of a key.
    pub async fn key_usage(
        &self,
        key_id: Uuid,
        since: NaiveDate,
        top: u32,
        recent: u32,
    ) -> StoreResult<KeyUsage> {
        with_pool!(&self.main, pool => {
            let top_endpoints: Vec<(String, i64)> = sqlx::query_as(
                "SELECT endpoint, CAST(SUM(count) AS BIGINT) AS total FROM usage_daily \
                 WHERE key_id = $1 AND day >= $2 GROUP BY endpoint ORDER BY total DESC, endpoint LIMIT $3",
            )
            .bind(key_id).bind(since).bind(i64::from(top))
            .fetch_all(pool).await?;
            let recent_logs: Vec<UsageLogEntry> = sqlx::query_as(
                "SELECT at, method, endpoint, ip, decision FROM usage_log \
                 WHERE key_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
            )
            .bind(key_id).bind(i64::from(recent))
            .fetch_all(pool).await?;
            Ok(KeyUsage {
                top_endpoints: top_endpoints.into_iter().map(|(e, n)| (e, n.max(0) as u64)).collect(),
                recent_logs,
            })
        })
    }

    /// Soft-deletes keys whose expiry has passed (one `api_key.expired` audit
    /// event each) and deletes usage and finished webhook deliveries older
    /// than `cutoff`. Returns `None` when
    /// another replica holds the prune lock.
    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        actor: &str,
    ) -> StoreResult<Option<PruneSummary>> {
        with_pool!(&self.main, pool => {
            let mut tx = pool.begin_write().await?;
            if !pool.try_prune_lock(&mut tx).await? {
                return Ok(None);
            }
            let expired: Vec<(Uuid, String, String)> = sqlx::query_as(
                "SELECT id, owner_id, key_prefix FROM api_keys \
                 WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $1",
            )
            .bind(now)
            .fetch_all(&mut *tx).await?;
            let audit = AuditRecord::new("api_key.expired", actor);
            for (id, owner_id, key_prefix) in &expired {
                sqlx::query("UPDATE api_keys SET deleted_at = $2, updated_at = $2 WHERE id = $1")
                    .bind(id).bind(now)
                    .execute(&mut *tx).await?;
                insert_audit!(tx, &audit, Some(*id), owner_id, Some(key_prefix), now);
                pool.notify(&mut tx, &format!("key:{id}")).await?;
            }
            let logs = sqlx::query("DELETE FROM usage_log WHERE at < $1").bind(cutoff).execute(&mut *tx).await?;
            let daily = sqlx::query("DELETE FROM usage_daily WHERE day < $1").bind(cutoff.date_naive()).execute(&mut *tx).await?;
            // Finished webhook deliveries (and their attempts, by cascade)
            // are kept as long as usage; pending ones are never pruned.
            let deliveries = sqlx::query(
                "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < $1",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(PruneSummary {
                keys_expired: expired.len() as u64,
                usage_logs_deleted: logs.rows_affected(),
                daily_counts_deleted: daily.rows_affected(),
                webhook_deliveries_deleted: deliveries.rows_affected(),
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: u128, secs: i64, ip: &str, endpoint: &str, allowed: bool) -> UsageEvent {
        UsageEvent {
            key_id: Uuid::from_u128(key),
            at: DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap(),
            ip: Some(ip.into()),
            method: "GET".into(),
            endpoint: endpoint.into(),
            decision: if allowed { "allowed" } else { "rate_limited" },
            allowed,
        }
    }

    #[test]
    fn aggregation_counts_allowed_requests_and_keeps_the_latest_ip() {
        let events = [
            event(1, 5, "10.0.0.2", "/a", true),
            event(1, 1, "10.0.0.1", "/a", true),
            event(1, 9, "10.0.0.3", "/b", false),
            event(2, 0, "10.0.0.9", "/a", true),
        ];
        let (counters, daily) = aggregate(&events);
        let one = &counters[&Uuid::from_u128(1)];
        assert_eq!(one.allowed, 2);
        assert_eq!(one.last_ip.as_deref(), Some("10.0.0.3"));
        let day = events[0].at.date_naive();
        assert_eq!(daily[&(Uuid::from_u128(1), day, "/a")], 2);
        assert_eq!(daily[&(Uuid::from_u128(1), day, "/b")], 1);
        assert_eq!(counters.len(), 2);
    }
}
