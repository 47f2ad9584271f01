//! Owner suspension and the audit trail.
//!
//! Audit rows are written inside the transaction of the change they record,
//! and carry the key's display prefix, never its hash or plaintext.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{backend::Backend, with_pool, Store, StoreResult};
use crate::domain::{AuditEvent, Owner};

/// The audit part of a change: what happened, who did it, and details.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub event: &'static str,
    pub actor: String,
    pub metadata: BTreeMap<String, String>,
}

impl AuditRecord {
    pub fn new(event: &'static str, actor: &str) -> Self {
        Self {
            event,
            actor: actor.to_owned(),
            metadata: BTreeMap::new(),
        }
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.metadata.insert(name.to_owned(), value.into());
        self
    }
}

/// An `audit_events` row as read; the domain's [`AuditEvent`] once mapped.
#[derive(sqlx::FromRow)]
struct AuditRow {
    id: Uuid,
    event: String,
    key_id: Option<Uuid>,
    owner_id: Option<String>,
    key_prefix: Option<String>,
    actor: String,
    #[sqlx(json)]
    metadata: BTreeMap<String, String>,
    at: DateTime<Utc>,
}

impl From<AuditRow> for AuditEvent {
    fn from(row: AuditRow) -> Self {
        AuditEvent {
            id: row.id,
            event: row.event,
            key_id: row.key_id,
            owner_id: row.owner_id,
            key_prefix: row.key_prefix,
            actor: row.actor,
            metadata: row.metadata,
            at: row.at,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub key_id: Option<Uuid>,
    pub owner_id: Option<String>,
    pub event: Option<String>,
}

/// Writes one audit row inside the transaction `$tx`, and the webhook
/// deliveries of the same event (the outbox, `store::webhooks`): the change,
/// its audit row and its webhooks commit together or not at all.
macro_rules! insert_audit {
    ($tx:expr, $record:expr, $key_id:expr, $owner_id:expr, $key_prefix:expr, $at:expr) => {{
        let record: &$crate::store::AuditRecord = $record;
        let key_id: Option<uuid::Uuid> = $key_id;
        let key_prefix: Option<&str> = $key_prefix.map(|p: &String| p.as_str());
        let event_id = uuid::Uuid::now_v7();
        let owner_id: &str = $owner_id;
        let at: chrono::DateTime<chrono::Utc> = $at;
        sqlx::query(
            "INSERT INTO audit_events (id, event, key_id, owner_id, key_prefix, actor, metadata, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(event_id)
        .bind(record.event)
        .bind(key_id)
        .bind(owner_id)
        .bind(key_prefix)
        .bind(&record.actor)
        .bind(sqlx::types::Json(&record.metadata))
        .bind(at)
        .execute(&mut *$tx)
        .await?;
        $crate::store::webhooks::enqueue_event!(
            $tx,
            &$crate::domain::webhook::EventFacts {
                event_id,
                audit_event: record.event,
                owner_id,
                key_id,
                key_prefix,
                actor: &record.actor,
                metadata: &record.metadata,
                at,
            }
        );
    }};
}
pub(crate) use insert_audit;

const UPSERT_SUSPENSION: &str =
    "INSERT INTO owners (owner_id, suspended_at, suspension_reason, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $4) ON CONFLICT (owner_id) DO UPDATE SET \
     suspended_at = EXCLUDED.suspended_at, suspension_reason = EXCLUDED.suspension_reason, \
     updated_at = EXCLUDED.updated_at";

impl Store {
    /// Suspends (`Some(reason)`) or resumes (`None`) an owner.
    pub async fn set_owner_suspension(
        &self,
        owner_id: &str,
        reason: Option<&str>,
        at: DateTime<Utc>,
        audit: &AuditRecord,
    ) -> StoreResult<Owner> {
        let suspended_at = reason.map(|_| at);
        with_pool!(&self.main, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(UPSERT_SUSPENSION)
                .bind(owner_id)
                .bind(suspended_at)
                .bind(reason)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            insert_audit!(tx, audit, None, owner_id, None::<&String>, at);
            pool.notify(&mut tx, &format!("owner:{owner_id}")).await?;
            tx.commit().await?;
        });
        Ok(Owner {
            owner_id: owner_id.to_owned(),
            suspended_at,
            suspension_reason: reason.map(str::to_owned),
        })
    }

    /// Audit events, newest first, after the `(at, id)` cursor.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEvent>> {
        with_pool!(&self.main, pool => {
            let mut query = QueryBuilder::new(
                "SELECT id, event, key_id, owner_id, key_prefix, actor, metadata, at FROM audit_events WHERE 1 = 1",
            );
            if let Some(key_id) = filter.key_id {
                query.push(" AND key_id = ").push_bind(key_id);
            }
            if let Some(owner_id) = &filter.owner_id {
                query.push(" AND owner_id = ").push_bind(owner_id.clone());
            }
            if let Some(event) = &filter.event {
                query.push(" AND event = ").push_bind(event.clone());
            }
            if let Some((at, id)) = after {
                query.push(" AND (at < ").push_bind(at)
                    .push(" OR (at = ").push_bind(at)
                    .push(" AND id < ").push_bind(id).push("))");
            }
            query.push(" ORDER BY at DESC, id DESC LIMIT ").push_bind(i64::from(limit));
            let rows = query.build_query_as::<AuditRow>().fetch_all(pool).await?;
            Ok(rows.into_iter().map(AuditEvent::from).collect())
        })
    }
}
