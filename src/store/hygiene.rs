//! Key hygiene (docs/behaviour.md, "Key hygiene"): keys imported in
//! batches, keys found by hash for leak reports, audit events about a key
//! that change nothing else, and the record of leak reports handled.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    backend::Backend,
    keys::{insert_key, NewKey},
    owners_audit::{insert_audit, AuditRecord},
    rows::{key_columns, KeyRow},
    with_pool, Store, StoreResult,
};
use crate::domain::{ApiKey, KeyHash};

/// What became of one key of an import batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportedRow {
    Inserted,
    /// A key with this hash is already stored (under this id).
    Present(Uuid),
    /// Its owner already holds this many live keys.
    OwnerLimit(u32),
}

const SELECT_ID_BY_HASH: &str = "SELECT id FROM api_keys WHERE key_hash = $1";

const SELECT_KEY_BY_HASH: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM api_keys k WHERE k.key_hash = $1 AND k.deleted_at IS NULL"
);

const COUNT_LIVE_KEYS_OF_OWNER: &str = "SELECT COUNT(*) FROM api_keys \
     WHERE owner_id = $1 AND deleted_at IS NULL AND (revoked_at IS NULL OR revoked_at > $2) \
     AND (expires_at IS NULL OR expires_at > $2)";

impl Store {
    /// Stores a batch of imported keys in one transaction, each with its
    /// `api_key.imported` audit event, skipping keys whose hash is already
    /// stored and keys whose owner would exceed `owner_limit`. Every
    /// replica then refills its set of issued keys once.
    pub async fn import_keys(
        &self,
        batch: &[NewKey],
        owner_limit: u32,
        actor: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<ImportedRow>> {
        let mut owners: Vec<&str> = batch.iter().map(|k| k.owner_id.as_str()).collect();
        owners.sort_unstable();
        owners.dedup();
        with_pool!(&self.main, pool => {
            let mut tx = pool.begin_write().await?;
            let mut live: HashMap<&str, i64> = HashMap::with_capacity(owners.len());
            // In a fixed order, so that two imports cannot deadlock.
            for owner in owners {
                pool.serialize_owner(&mut tx, owner).await?;
                let count: i64 = sqlx::query_scalar(COUNT_LIVE_KEYS_OF_OWNER)
                    .bind(owner)
                    .bind(at)
                    .fetch_one(&mut *tx)
                    .await?;
                live.insert(owner, count);
            }
            let mut outcomes = Vec::with_capacity(batch.len());
            for new in batch {
                let present: Option<Uuid> = sqlx::query_scalar(SELECT_ID_BY_HASH)
                    .bind(&new.key_hash.as_bytes()[..])
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(id) = present {
                    outcomes.push(ImportedRow::Present(id));
                    continue;
                }
                let count = live.entry(new.owner_id.as_str()).or_default();
                if *count >= i64::from(owner_limit) {
                    outcomes.push(ImportedRow::OwnerLimit(owner_limit));
                    continue;
                }
                insert_key!(tx, new);
                let audit = AuditRecord::new("api_key.imported", actor)
                    .with("environment", new.environment.clone())
                    .with("name", new.name.clone());
                insert_audit!(tx, &audit, Some(new.id), &new.owner_id, Some(&new.key_prefix), at);
                *count += 1;
                outcomes.push(ImportedRow::Inserted);
            }
            if outcomes.contains(&ImportedRow::Inserted) {
                pool.notify_issued_all(&mut tx).await?;
            }
            tx.commit().await?;
            Ok(outcomes)
        })
    }

    /// The key stored under `hash`, unless pruned.
    pub async fn find_key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<ApiKey>> {
        let row: Option<KeyRow> = with_pool!(&self.main, pool => {
            sqlx::query_as(SELECT_KEY_BY_HASH)
                .bind(&hash.as_bytes()[..])
                .fetch_optional(pool)
                .await?
        });
        row.map(ApiKey::try_from).transpose()
    }

    /// Records an audit event about `key` (and its webhooks) without
    /// changing the key.
    pub async fn record_key_event(
        &self,
        key: &ApiKey,
        audit: &AuditRecord,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        with_pool!(&self.main, pool => {
            let mut tx = pool.begin_write().await?;
            insert_audit!(tx, audit, Some(key.id), &key.owner_id, Some(&key.key_prefix), at);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records a leak report's body digest; `false` if it was already
    /// recorded (a replay).
    pub async fn claim_leak_report(
        &self,
        digest: &[u8; 32],
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        with_pool!(&self.main, pool => {
            let claimed = sqlx::query(
                "INSERT INTO leak_reports (body_sha256, received_at) VALUES ($1, $2) \
                 ON CONFLICT (body_sha256) DO NOTHING",
            )
            .bind(&digest[..])
            .bind(at)
            .execute(pool)
            .await?;
            Ok(claimed.rows_affected() == 1)
        })
    }

    /// Forgets a claimed report whose handling failed, so that the
    /// reporter's retry is handled rather than refused as a replay.
    pub async fn release_leak_report(&self, digest: &[u8; 32]) -> StoreResult<()> {
        with_pool!(&self.main, pool => {
            sqlx::query("DELETE FROM leak_reports WHERE body_sha256 = $1")
                .bind(&digest[..])
                .execute(pool)
                .await?;
            Ok(())
        })
    }
}
