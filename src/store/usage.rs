//! Usage: batched writes from the flusher, the figures GetKeyUsage reads, and
//! pruning of expired keys and old usage.

use std::{
    collections::{hash_map::Entry, HashMap},
    net::IpAddr,
    sync::Arc,
};

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::{
    backend::Backend, owners_audit::insert_audit, with_pool, AuditRecord, DbPool, Store,
    StoreResult,
};
use crate::domain::{KeyUsage, UsageLogEntry};

/// One Check decision about a known key. Cheap to build: the IP becomes
/// text only per written row, and the events of one raw path share their
/// normalised endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub key_id: Uuid,
    pub at: DateTime<Utc>,
    pub ip: Option<IpAddr>,
    pub method: &'static str,
    pub endpoint: Arc<str>,
    pub decision: &'static str,
    pub allowed: bool,
    /// Requests the event stands for (see `CheckEvent::requests`).
    pub requests: u32,
}

/// A `usage_log` row as read; the domain's [`UsageLogEntry`] once mapped.
#[derive(sqlx::FromRow)]
struct UsageLogRow {
    at: DateTime<Utc>,
    method: String,
    endpoint: String,
    ip: Option<String>,
    decision: String,
    count: i64,
}

impl From<UsageLogRow> for UsageLogEntry {
    fn from(row: UsageLogRow) -> Self {
        UsageLogEntry {
            at: row.at,
            method: row.method,
            endpoint: row.endpoint,
            ip: row.ip,
            decision: row.decision,
            count: row.count,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneSummary {
    pub keys_expired: u64,
    /// Keys revoked as dormant (`KEYGATE_DORMANT_AFTER`).
    pub keys_dormant: u64,
    pub usage_logs_deleted: u64,
    pub daily_counts_deleted: u64,
    pub webhook_deliveries_deleted: u64,
    /// Leak reports older than the retention (kept until then to refuse
    /// replays).
    pub leak_reports_deleted: u64,
}

/// Per-key counter deltas: allowed requests, latest use and its IP.
struct CounterDelta {
    allowed: i64,
    last_at: DateTime<Utc>,
    last_ip: Option<IpAddr>,
}

/// Requests per key, day and endpoint.
type DailyCounts<'a> = HashMap<(Uuid, NaiveDate, &'a str), i64, FastHash>;
/// Batches are folded on the core that answers Checks: a seeded foldhash
/// costs a fraction of SipHash per event and still keys on a random seed
/// (endpoints come from request paths).
type FastHash = foldhash::fast::RandomState;

/// Folds a batch into per-key counters and per-day endpoint counts, so each
/// table gets one statement per batch instead of one per event.
///
/// Only allowed requests count: `last_used_at`, `last_used_ip` and the
/// endpoint counts describe the last *authenticated* use, so a denied
/// attempt (a revoked key tried from a new address, say) moves none of
/// them. Denied attempts are written to the usage log only.
fn aggregate(events: &[UsageEvent]) -> (HashMap<Uuid, CounterDelta, FastHash>, DailyCounts<'_>) {
    let mut counters: HashMap<Uuid, CounterDelta, FastHash> = HashMap::default();
    let mut daily: DailyCounts<'_> = HashMap::default();
    for event in events.iter().filter(|event| event.allowed) {
        let delta = counters
            .entry(event.key_id)
            .or_insert_with(|| CounterDelta {
                allowed: 0,
                last_at: event.at,
                last_ip: event.ip,
            });
        delta.allowed += i64::from(event.requests);
        if event.at >= delta.last_at {
            delta.last_at = event.at;
            delta.last_ip = event.ip;
        }
        *daily
            .entry((event.key_id, event.at.date_naive(), &*event.endpoint))
            .or_default() += i64::from(event.requests);
    }
    (counters, daily)
}

/// A usage-log row about to be written (see [`UsageLogEntry`]).
#[derive(Debug, PartialEq, Eq)]
struct LogRow<'a> {
    key_id: Uuid,
    at: DateTime<Utc>,
    method: &'static str,
    endpoint: &'a str,
    ip: Option<IpAddr>,
    decision: &'static str,
    count: i64,
}

/// What makes two events one log row: key, whole second, method, endpoint,
/// client IP and decision.
type LogRowKey<'a> = (
    Uuid,
    i64,
    &'static str,
    &'a str,
    Option<IpAddr>,
    &'static str,
);

/// Coalesces a batch into log rows, in the order of each row's first event:
/// a client repeating one call writes a row a second, not one a request.
fn coalesce(events: &[UsageEvent]) -> Vec<LogRow<'_>> {
    let mut rows: Vec<LogRow<'_>> = Vec::new();
    let mut index: HashMap<LogRowKey<'_>, usize, FastHash> = HashMap::default();
    for event in events {
        let key = (
            event.key_id,
            event.at.timestamp(),
            event.method,
            &*event.endpoint,
            event.ip,
            event.decision,
        );
        match index.entry(key) {
            Entry::Occupied(slot) => {
                let row = &mut rows[*slot.get()];
                row.count += i64::from(event.requests);
                row.at = row.at.max(event.at);
            }
            Entry::Vacant(slot) => {
                slot.insert(rows.len());
                rows.push(LogRow {
                    key_id: event.key_id,
                    at: event.at,
                    method: event.method,
                    endpoint: &event.endpoint,
                    ip: event.ip,
                    decision: event.decision,
                    count: i64::from(event.requests),
                });
            }
        }
    }
    rows
}

/// An IP as stored: its text.
fn ip_text(ip: Option<IpAddr>) -> Option<String> {
    ip.map(|ip| ip.to_string())
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
    /// (array binds), one transaction on SQLite. The log gets one row per
    /// [`coalesce`]d group, not one per event.
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
                    .map(|(id, d)| (id, (d.allowed, d.last_at, ip_text(d.last_ip))))
                    .unzip();
                let (counts, rest): (Vec<i64>, Vec<_>) =
                    rest.into_iter().map(|(n, at, ip)| (n, (at, ip))).unzip();
                let (ats, ips): (Vec<DateTime<Utc>>, Vec<Option<String>>) =
                    rest.into_iter().unzip();
                // A batch of denied attempts only has log rows to write.
                if !ids.is_empty() {
                    sqlx::query(PG_BUMP_COUNTERS)
                        .bind(ids)
                        .bind(counts)
                        .bind(ats)
                        .bind(ips)
                        .execute(&mut *tx)
                        .await?;
                }

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
                if !daily_keys.is_empty() {
                    sqlx::query(&format!(
                        "INSERT INTO usage_daily (key_id, day, endpoint, count) \
                         SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::text[], $4::int8[]){DAILY_UPSERT_TAIL}"
                    ))
                    .bind(daily_keys).bind(days).bind(endpoints).bind(daily_counts)
                    .execute(&mut *tx).await?;
                }

                if log_enabled {
                    let rows = coalesce(events);
                    sqlx::query(
                        "INSERT INTO usage_log (key_id, at, method, endpoint, ip, decision, count) \
                         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[])",
                    )
                    .bind(rows.iter().map(|r| r.key_id).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.method).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.endpoint).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| ip_text(r.ip)).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.decision).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.count).collect::<Vec<_>>())
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
                            .push_bind(ip_text(delta.last_ip));
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
                    let rows = coalesce(events);
                    for chunk in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
                        let mut insert = QueryBuilder::<Sqlite>::new(
                            "INSERT OR FAIL INTO usage_log (key_id, at, method, endpoint, ip, decision, count) ",
                        );
                        insert.push_values(chunk, |mut row, r| {
                            row.push_bind(r.key_id)
                                .push_bind(r.at)
                                .push_bind(r.method)
                                .push_bind(r.endpoint.to_owned())
                                .push_bind(ip_text(r.ip))
                                .push_bind(r.decision)
                                .push_bind(r.count);
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
            let recent_logs: Vec<UsageLogRow> = sqlx::query_as(
                "SELECT at, method, endpoint, ip, decision, count FROM usage_log \
                 WHERE key_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
            )
            .bind(key_id).bind(i64::from(recent))
            .fetch_all(pool).await?;
            Ok(KeyUsage {
                top_endpoints: top_endpoints.into_iter().map(|(e, n)| (e, n.max(0) as u64)).collect(),
                recent_logs: recent_logs.into_iter().map(UsageLogEntry::from).collect(),
            })
        })
    }

    /// Soft-deletes keys whose expiry has passed (one `api_key.expired` audit
    /// event each) and deletes usage and finished webhook deliveries older
    /// than `cutoff`. Returns `None` when
    /// another replica holds the prune lock.
    ///
    /// With `dormant_before`, keys not revoked whose last use (or creation,
    /// when never used) is at or before it are revoked with the reason
    /// `dormant` (one `api_key.dormant` event each).
    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        dormant_before: Option<DateTime<Utc>>,
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
            let mut dormant: Vec<(Uuid, String, String, DateTime<Utc>)> = Vec::new();
            if let Some(before) = dormant_before {
                dormant = sqlx::query_as(
                    "SELECT id, owner_id, key_prefix, COALESCE(last_used_at, created_at) FROM api_keys \
                     WHERE deleted_at IS NULL AND revoked_at IS NULL \
                     AND COALESCE(last_used_at, created_at) <= $1",
                )
                .bind(before)
                .fetch_all(&mut *tx).await?;
            }
            for (id, owner_id, key_prefix, last_active) in &dormant {
                sqlx::query(
                    "UPDATE api_keys SET revoked_at = $2, revocation_reason = 'dormant', updated_at = $2 \
                     WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id).bind(now)
                .execute(&mut *tx).await?;
                let audit = AuditRecord::new("api_key.dormant", actor)
                    .with("reason", "dormant")
                    .with("last_active_at", last_active.to_rfc3339());
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
            // Leak reports are remembered to refuse replays; one older than
            // the retention, replayed, would find its key revoked already.
            let leak_reports = sqlx::query("DELETE FROM leak_reports WHERE received_at < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(PruneSummary {
                keys_expired: expired.len() as u64,
                keys_dormant: dormant.len() as u64,
                usage_logs_deleted: logs.rows_affected(),
                daily_counts_deleted: daily.rows_affected(),
                webhook_deliveries_deleted: deliveries.rows_affected(),
                leak_reports_deleted: leak_reports.rows_affected(),
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
            ip: Some(ip.parse().unwrap()),
            method: "GET",
            endpoint: endpoint.into(),
            decision: if allowed { "allowed" } else { "rate_limited" },
            allowed,
            requests: 1,
        }
    }

    #[test]
    fn aggregation_counts_allowed_requests_and_keeps_their_latest_ip() {
        let events = [
            event(1, 5, "10.0.0.2", "/a", true),
            event(1, 1, "10.0.0.1", "/a", true),
            event(1, 9, "10.0.0.3", "/b", false),
            event(2, 0, "10.0.0.9", "/a", true),
            event(3, 0, "10.0.0.7", "/a", false),
        ];
        let (counters, daily) = aggregate(&events);
        let one = &counters[&Uuid::from_u128(1)];
        assert_eq!(one.allowed, 2);
        // The later denied attempt from 10.0.0.3 is not a use.
        assert_eq!(one.last_ip, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(one.last_at, events[0].at);
        let day = events[0].at.date_naive();
        assert_eq!(daily[&(Uuid::from_u128(1), day, "/a")], 2);
        assert!(!daily.contains_key(&(Uuid::from_u128(1), day, "/b")));
        // A key only ever denied has no counter row to write.
        assert_eq!(counters.len(), 2);
        assert!(!counters.contains_key(&Uuid::from_u128(3)));
    }

    #[test]
    fn the_log_keeps_one_row_per_key_second_and_request_shape() {
        let at = |secs: i64, millis: u32| {
            DateTime::from_timestamp(1_700_000_000 + secs, millis * 1_000_000).unwrap()
        };
        let mut events = vec![
            event(1, 0, "10.0.0.1", "/a", true),
            event(1, 0, "10.0.0.1", "/a", true),
            event(1, 0, "10.0.0.1", "/b", true),
            event(1, 0, "10.0.0.2", "/a", true),
            event(1, 0, "10.0.0.1", "/a", false),
            event(2, 0, "10.0.0.1", "/a", true),
            event(1, 1, "10.0.0.1", "/a", true),
        ];
        events[1].at = at(0, 900);
        let rows = coalesce(&events);
        let counts: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.key_id.as_u128(),
                    r.at,
                    r.endpoint,
                    ip_text(r.ip),
                    r.decision,
                    r.count,
                )
            })
            .collect();
        assert_eq!(
            counts,
            vec![
                (1, at(0, 900), "/a", Some("10.0.0.1".into()), "allowed", 2),
                (1, at(0, 0), "/b", Some("10.0.0.1".into()), "allowed", 1),
                (1, at(0, 0), "/a", Some("10.0.0.2".into()), "allowed", 1),
                (
                    1,
                    at(0, 0),
                    "/a",
                    Some("10.0.0.1".into()),
                    "rate_limited",
                    1
                ),
                (2, at(0, 0), "/a", Some("10.0.0.1".into()), "allowed", 1),
                (1, at(1, 0), "/a", Some("10.0.0.1".into()), "allowed", 1),
            ]
        );
    }
}
