//! Key rows: issue, read, list, update, rotate, revoke, and the Check lookup.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{types::Json, Database, Encode, QueryBuilder, Type};
use uuid::Uuid;

use super::{
    backend::Backend,
    owners_audit::{insert_audit, AuditRecord},
    rows::{key_columns, keys_from_rows, CheckRow, KeyRow},
    with_pool, Store, StoreError, StoreResult,
};
use crate::domain::{ApiKey, CheckKey, Credits, IssuedKey, KeyHash, RateLimit};

/// A key about to be stored: everything but usage counters.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: Uuid,
    pub owner_id: String,
    pub name: String,
    pub environment: String,
    pub key_hash: KeyHash,
    pub key_prefix: String,
    pub abilities: Vec<String>,
    pub superkey: bool,
    pub rate_limit: Option<RateLimit>,
    pub credits: Option<Credits>,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: BTreeMap<String, String>,
    pub allowed_cidrs: Vec<String>,
    /// `key_hash` is the SHA-256 of the whole key string (`ImportKeys`).
    pub imported: bool,
    pub rotated_from_id: Option<Uuid>,
    /// The acting admin token's name or calling key's id.
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl NewKey {
    /// A key with nothing but an owner and a name: no abilities, rate
    /// limit, expiry or metadata. For filling a store directly (benchmarks
    /// and tests); KeyAdmin builds its keys from a validated request.
    pub fn bare(
        issued: IssuedKey,
        environment: &str,
        owner_id: String,
        name: String,
        created_at: DateTime<Utc>,
    ) -> NewKey {
        NewKey {
            id: Uuid::now_v7(),
            owner_id,
            name,
            environment: environment.to_owned(),
            key_hash: issued.hash,
            key_prefix: issued.key_prefix,
            abilities: vec![],
            superkey: false,
            rate_limit: None,
            credits: None,
            expires_at: None,
            metadata: BTreeMap::new(),
            allowed_cidrs: vec![],
            imported: false,
            rotated_from_id: None,
            created_by: None,
            created_at,
        }
    }
}

/// Fields an update sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub abilities: Option<Vec<String>>,
    pub superkey: Option<bool>,
    /// `Some(None)` removes the key's own limit.
    pub rate_limit: Option<Option<RateLimit>>,
    /// `Some(None)` removes the key's credits: it is no longer counted.
    pub credits: Option<Option<Credits>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub allowed_cidrs: Option<Vec<String>>,
}

impl KeyChanges {
    /// The names of the fields this update sets, for the audit event.
    pub fn field_names(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("abilities", self.abilities.is_some()),
            ("superkey", self.superkey.is_some()),
            ("rate_limit", self.rate_limit.is_some()),
            ("credits", self.credits.is_some()),
            ("metadata", self.metadata.is_some()),
            ("allowed_cidrs", self.allowed_cidrs.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Which keys a listing shows.
#[derive(Debug, Clone)]
pub struct KeyFilter {
    pub owner_id: Option<String>,
    pub environment: Option<String>,
    pub include_revoked: bool,
    pub now: DateTime<Utc>,
}

/// Keyset position for newest-first paging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

const SELECT_KEY_BY_ID: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM api_keys k WHERE k.id = $1 AND k.deleted_at IS NULL"
);

const SELECT_CHECK_BY_HASH: &str = concat!(
    "SELECT ",
    key_columns!(),
    ", (o.suspended_at IS NOT NULL) AS owner_suspended \
     FROM api_keys k LEFT JOIN owners o ON o.owner_id = k.owner_id WHERE k.key_hash = $1"
);

const COUNT_LIVE_KEYS_OF_OWNER: &str = "SELECT COUNT(*) FROM api_keys \
     WHERE owner_id = $1 AND deleted_at IS NULL AND (revoked_at IS NULL OR revoked_at > $2) \
     AND (expires_at IS NULL OR expires_at > $2)";

pub(super) const INSERT_KEY: &str =
    "INSERT INTO api_keys (id, owner_id, name, environment, key_hash, key_prefix, \
     abilities, superkey, rate_limit_max, rate_limit_decay, expires_at, rotated_from_id, metadata, \
     created_at, updated_at, credits_remaining, credits_refill_amount, credits_refill_interval, \
     credits_refilled_at, created_by, allowed_cidrs, imported) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15, $16, $17, $18, $19, \
     $20, $21)";

const UPDATE_KEY: &str = "UPDATE api_keys SET name = COALESCE($2, name), \
     abilities = COALESCE($3, abilities), superkey = COALESCE($4, superkey), \
     rate_limit_max = CASE WHEN $5 THEN $6 ELSE rate_limit_max END, \
     rate_limit_decay = CASE WHEN $5 THEN $7 ELSE rate_limit_decay END, \
     metadata = COALESCE($8, metadata), updated_at = $9, \
     credits_remaining = CASE WHEN $10 THEN $11 ELSE credits_remaining END, \
     credits_refill_amount = CASE WHEN $10 THEN $12 ELSE credits_refill_amount END, \
     credits_refill_interval = CASE WHEN $10 THEN $13 ELSE credits_refill_interval END, \
     credits_refilled_at = CASE WHEN $10 THEN $14 ELSE credits_refilled_at END, \
     credits_generation = CASE WHEN $10 THEN credits_generation + 1 ELSE credits_generation END, \
     allowed_cidrs = COALESCE($15, allowed_cidrs) \
     WHERE id = $1 AND deleted_at IS NULL";

const MARK_ROTATED: &str = "UPDATE api_keys SET revoked_at = $2, revocation_reason = 'rotated', \
     rotated_to_id = $3, updated_at = $4 \
     WHERE id = $1 AND deleted_at IS NULL AND revoked_at IS NULL";

/// Revokes now; a key inside a rotation overlap has its overlap cut short.
/// A rotation moves the old key's unleased credits to its successor (`$2`),
/// within the rotation's transaction, so that no credit can be spent under
/// both keys; leases the old key's replicas hold are void with the new
/// generation. Without credits on the old key nothing changes.
const CARRY_CREDITS: &str = "UPDATE api_keys SET credits_last_lease = credits_remaining, \
     credits_remaining = 0, credits_generation = credits_generation + 1 \
     WHERE id = $1 AND credits_remaining IS NOT NULL RETURNING credits_last_lease";
const RECEIVE_CREDITS: &str =
    "UPDATE api_keys SET credits_remaining = $2 WHERE id = $1 AND credits_remaining IS NOT NULL";

/// Only a rotation leaves `revoked_at` later than `updated_at` (a revoke sets
/// both to the same instant), so a revoke whose `$2` was taken before a
/// concurrent revoke committed finds nothing to do instead of revoking twice.
const REVOKE: &str =
    "UPDATE api_keys SET revoked_at = $2, revocation_reason = $3, updated_at = $2 \
     WHERE id = $1 AND deleted_at IS NULL \
     AND (revoked_at IS NULL OR (revoked_at > $2 AND revoked_at > updated_at))";

/// `credits_remaining`, `_refill_amount`, `_refill_interval`,
/// `_refilled_at`: the refill period starts at `at`.
pub(super) fn credit_columns(
    credits: Option<Credits>,
    at: DateTime<Utc>,
) -> (Option<i64>, Option<i64>, Option<i64>, Option<i64>) {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let refill = credits.and_then(|c| c.refill);
    (
        credits.map(|c| clamp(c.remaining)),
        refill.map(|r| clamp(r.amount)),
        refill.map(|r| i64::from(r.interval_seconds)),
        credits.map(|_| at.timestamp()),
    )
}

pub(super) fn limit_columns(limit: Option<RateLimit>) -> (Option<i64>, Option<i64>) {
    (
        limit.map(|l| i64::from(l.max_attempts)),
        limit.map(|l| i64::from(l.decay_seconds)),
    )
}

/// Appends the WHERE clause of a key listing (without paging).
pub(super) fn push_key_filter<'a, DB>(query: &mut QueryBuilder<'a, DB>, filter: &KeyFilter)
where
    DB: Database,
    String: Encode<'a, DB> + Type<DB>,
    DateTime<Utc>: Encode<'a, DB> + Type<DB>,
{
    query.push(" WHERE k.deleted_at IS NULL");
    if let Some(owner) = &filter.owner_id {
        query.push(" AND k.owner_id = ").push_bind(owner.clone());
    }
    if let Some(environment) = &filter.environment {
        query
            .push(" AND k.environment = ")
            .push_bind(environment.clone());
    }
    if !filter.include_revoked {
        query
            .push(" AND (k.revoked_at IS NULL OR k.revoked_at > ")
            .push_bind(filter.now)
            .push(")");
    }
}

macro_rules! insert_key {
    ($tx:expr, $new:expr) => {{
        let new: &$crate::store::keys::NewKey = $new;
        let (max, decay) = $crate::store::keys::limit_columns(new.rate_limit);
        let (credits, refill_amount, refill_interval, refilled_at) =
            $crate::store::keys::credit_columns(new.credits, new.created_at);
        sqlx::query($crate::store::keys::INSERT_KEY)
            .bind(new.id)
            .bind(&new.owner_id)
            .bind(&new.name)
            .bind(&new.environment)
            .bind(&new.key_hash.as_bytes()[..])
            .bind(&new.key_prefix)
            .bind(sqlx::types::Json(&new.abilities))
            .bind(new.superkey)
            .bind(max)
            .bind(decay)
            .bind(new.expires_at)
            .bind(new.rotated_from_id)
            .bind(sqlx::types::Json(&new.metadata))
            .bind(new.created_at)
            .bind(credits)
            .bind(refill_amount)
            .bind(refill_interval)
            .bind(refilled_at)
            .bind(new.created_by.as_deref())
            .bind(sqlx::types::Json(&new.allowed_cidrs))
            .bind(new.imported)
            .execute(&mut *$tx)
            .await?;
    }};
}

/// Also for imported keys (`store::hygiene`): one column list for every new key.
pub(crate) use insert_key;

macro_rules! fetch_key {
    ($executor:expr, $id:expr) => {
        sqlx::query_as::<_, KeyRow>(SELECT_KEY_BY_ID)
            .bind($id)
            .fetch_optional($executor)
            .await?
            .ok_or(StoreError::NotFound)
            .and_then(ApiKey::try_from)
    };
}

impl Store {
    /// Stores a new key. With `owner_limit`, refuses when the owner already
    /// holds that many live keys; the count and the insert are serialised per
    /// owner, so concurrent creates cannot overshoot.
    pub async fn insert_key(
        &self,
        new: &NewKey,
        owner_limit: Option<u32>,
        audit: &AuditRecord,
    ) -> StoreResult<ApiKey> {
        with_pool!(&self.main, pool => {
            let mut tx = pool.begin_write().await?;
            pool.serialize_owner(&mut tx, &new.owner_id).await?;
            if let Some(limit) = owner_limit {
                let live: i64 = sqlx::query_scalar(COUNT_LIVE_KEYS_OF_OWNER)
                    .bind(&new.owner_id)
                    .bind(new.created_at)
                    .fetch_one(&mut *tx)
                    .await?;
                if live >= i64::from(limit) {
                    return Err(StoreError::OwnerKeyLimit { limit });
                }
            }
            insert_key!(tx, new);
            let key = fetch_key!(&mut *tx, new.id)?;
            insert_audit!(tx, audit, Some(key.id), &key.owner_id, Some(&key.key_prefix), new.created_at);
            // Other replicas add the new key to their set of issued keys.
            pool.notify_issued(&mut tx, new.id).await?;
            tx.commit().await?;
            Ok(key)
        })
    }

    /// A key that has not been pruned.
    pub async fn get_key(&self, id: Uuid) -> StoreResult<ApiKey> {
        with_pool!(&self.main, pool => fetch_key!(pool, id))
    }

    /// One page of keys, newest first, and the total matching the filter.
    pub async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> StoreResult<(Vec<ApiKey>, i64)> {
        with_pool!(&self.main, pool => {
            let mut count = QueryBuilder::new("SELECT COUNT(*) FROM api_keys k");
            push_key_filter(&mut count, filter);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;

            let mut page = QueryBuilder::new(concat!("SELECT ", key_columns!(), " FROM api_keys k"));
            push_key_filter(&mut page, filter);
            if let Some(cursor) = after {
                page.push(" AND (k.created_at < ")
                    .push_bind(cursor.created_at)
                    .push(" OR (k.created_at = ")
                    .push_bind(cursor.created_at)
                    .push(" AND k.id < ")
                    .push_bind(cursor.id)
                    .push("))");
            }
            page.push(" ORDER BY k.created_at DESC, k.id DESC LIMIT ")
                .push_bind(i64::from(limit));
            let rows: Vec<KeyRow> = page.build_query_as().fetch_all(pool).await?;
            Ok((keys_from_rows(rows)?, total))
        })
    }

    pub async fn update_key(
        &self,
        id: Uuid,
        changes: &KeyChanges,
        at: DateTime<Utc>,
        audit: &AuditRecord,
    ) -> StoreResult<ApiKey> {
        let (max, decay) = limit_columns(changes.rate_limit.flatten());
        let (credits, refill_amount, refill_interval, refilled_at) =
            credit_columns(changes.credits.flatten(), at);
        with_pool!(&self.main, pool => {
            let mut tx = pool.begin_write().await?;
            let updated = sqlx::query(UPDATE_KEY)
                .bind(id)
                .bind(changes.name.as_deref())
                .bind(changes.abilities.as_ref().map(Json))
                .bind(changes.superkey)
                .bind(changes.rate_limit.is_some())
                .bind(max)
                .bind(decay)
                .bind(changes.metadata.as_ref().map(Json))
                .bind(at)
                .bind(changes.credits.is_some())
                .bind(credits)
                .bind(refill_amount)
                .bind(refill_interval)
                .bind(refilled_at)
                .bind(changes.allowed_cidrs.as_ref().map(Json))
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            let key = fetch_key!(&mut *tx, id)?;
            insert_audit!(tx, audit, Some(key.id), &key.owner_id, Some(&key.key_prefix), at);
            pool.notify(&mut tx, &format!("key:{id}")).await?;
            tx.commit().await?;
            Ok(key)
        })
    }

    /// Stores `successor` and revokes `old_id` at `old_revoked_at`, in one
    /// transaction. Returns `(successor, old)`. With `live_limit`, refuses
    /// (`OwnerKeyLimit`) when the owner would hold more live keys than that
    /// afterwards, counted under the same per-owner lock as `insert_key`.
    pub async fn rotate_key(
        &self,
        old_id: Uuid,
        successor: &NewKey,
        old_revoked_at: DateTime<Utc>,
        live_limit: Option<u32>,
        audit: &AuditRecord,
    ) -> StoreResult<(ApiKey, ApiKey)> {
        with_pool!(&self.main, pool => {
            let mut tx = pool.begin_write().await?;
            if let Some(limit) = live_limit {
                pool.serialize_owner(&mut tx, &successor.owner_id).await?;
                let live: i64 = sqlx::query_scalar(COUNT_LIVE_KEYS_OF_OWNER)
                    .bind(&successor.owner_id)
                    .bind(successor.created_at)
                    .fetch_one(&mut *tx)
                    .await?;
                // The old key is among `live` and stays live in the overlap.
                if live + 1 > i64::from(limit) {
                    return Err(StoreError::OwnerKeyLimit { limit });
                }
            }
            let marked = sqlx::query(MARK_ROTATED)
                .bind(old_id)
                .bind(old_revoked_at)
                .bind(successor.id)
                .bind(successor.created_at)
                .execute(&mut *tx)
                .await?;
            if marked.rows_affected() == 0 {
                fetch_key!(&mut *tx, old_id)?;
                return Err(StoreError::AlreadyRevoked);
            }
            insert_key!(tx, successor);
            let carried: Option<i64> = sqlx::query_scalar(CARRY_CREDITS)
                .bind(old_id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(carried) = carried {
                sqlx::query(RECEIVE_CREDITS)
                    .bind(successor.id)
                    .bind(carried)
                    .execute(&mut *tx)
                    .await?;
            }
            let new_key = fetch_key!(&mut *tx, successor.id)?;
            let old_key = fetch_key!(&mut *tx, old_id)?;
            insert_audit!(tx, audit, Some(old_key.id), &old_key.owner_id, Some(&old_key.key_prefix), successor.created_at);
            pool.notify(&mut tx, &format!("key:{old_id}")).await?;
            pool.notify_issued(&mut tx, successor.id).await?;
            tx.commit().await?;
            Ok((new_key, old_key))
        })
    }

    /// Revokes a key now. Revoking a revoked key changes nothing.
    pub async fn revoke_key(
        &self,
        id: Uuid,
        reason: &str,
        at: DateTime<Utc>,
        audit: &AuditRecord,
    ) -> StoreResult<ApiKey> {
        with_pool!(&self.main, pool => {
            let mut tx = pool.begin_write().await?;
            let revoked = sqlx::query(REVOKE)
                .bind(id)
                .bind(at)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            let key = fetch_key!(&mut *tx, id)?;
            if revoked.rows_affected() > 0 {
                insert_audit!(tx, audit, Some(key.id), &key.owner_id, Some(&key.key_prefix), at);
                pool.notify(&mut tx, &format!("key:{id}")).await?;
            }
            tx.commit().await?;
            Ok(key)
        })
    }

    /// The Check path's read on a cache miss, bounded by the check timeout
    /// (pool acquire included) so Envoy hears `UNAVAILABLE` in time.
    pub async fn find_for_check(&self, hash: &KeyHash) -> StoreResult<Option<CheckKey>> {
        let read = async {
            with_pool!(&self.check, pool => {
                sqlx::query_as::<_, CheckRow>(SELECT_CHECK_BY_HASH)
                    .bind(&hash.as_bytes()[..])
                    .fetch_optional(pool)
                    .await
            })
        };
        match tokio::time::timeout(self.check_timeout, read).await {
            Err(_) => Err(StoreError::Timeout(self.check_timeout)),
            Ok(row) => row?.map(CheckKey::try_from).transpose(),
        }
    }
}
