//! Row shapes shared by both backends and their conversion to domain types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{ApiKey, CheckKey, Credits, RateLimit, Refill};

/// The columns of `api_keys` that may leave the store. `key_hash` is absent
/// on purpose: it is matched in SQL, never read back.
macro_rules! key_columns {
    () => {
        "k.id, k.owner_id, k.name, k.environment, k.key_prefix, k.abilities, k.superkey, \
         k.rate_limit_max, k.rate_limit_decay, k.expires_at, k.revoked_at, k.revocation_reason, \
         k.rotated_from_id, k.rotated_to_id, k.request_count, k.last_used_at, k.last_used_ip, \
         k.metadata, k.created_by, k.created_at, k.updated_at, k.deleted_at, \
         k.credits_remaining, k.credits_refill_amount, k.credits_refill_interval, \
         k.allowed_cidrs, k.imported"
    };
}
pub(crate) use key_columns;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct KeyRow {
    id: Uuid,
    owner_id: String,
    name: String,
    environment: String,
    key_prefix: String,
    abilities: Json<Vec<String>>,
    superkey: bool,
    rate_limit_max: Option<i64>,
    rate_limit_decay: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    revocation_reason: Option<String>,
    rotated_from_id: Option<Uuid>,
    rotated_to_id: Option<Uuid>,
    request_count: i64,
    last_used_at: Option<DateTime<Utc>>,
    last_used_ip: Option<String>,
    metadata: Json<BTreeMap<String, String>>,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    credits_remaining: Option<i64>,
    credits_refill_amount: Option<i64>,
    credits_refill_interval: Option<i64>,
    allowed_cidrs: Json<Vec<String>>,
    imported: bool,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> Result<Self, StoreError> {
        let rate_limit = match (row.rate_limit_max, row.rate_limit_decay) {
            (Some(max), Some(decay)) => Some(RateLimit {
                max_attempts: u32::try_from(max).map_err(|_| {
                    StoreError::Corrupt(format!("key {} rate_limit_max {max}", row.id))
                })?,
                decay_seconds: u32::try_from(decay).map_err(|_| {
                    StoreError::Corrupt(format!("key {} rate_limit_decay {decay}", row.id))
                })?,
            }),
            _ => None,
        };
        let corrupt = |column: &str, value: i64| {
            StoreError::Corrupt(format!("key {} {column} {value}", row.id))
        };
        let refill = match (row.credits_refill_amount, row.credits_refill_interval) {
            (Some(amount), Some(interval)) => Some(Refill {
                amount: u64::try_from(amount)
                    .map_err(|_| corrupt("credits_refill_amount", amount))?,
                interval_seconds: u32::try_from(interval)
                    .map_err(|_| corrupt("credits_refill_interval", interval))?,
            }),
            _ => None,
        };
        let credits = row
            .credits_remaining
            .map(|remaining| {
                Ok::<_, StoreError>(Credits {
                    remaining: u64::try_from(remaining)
                        .map_err(|_| corrupt("credits_remaining", remaining))?,
                    refill,
                })
            })
            .transpose()?;
        Ok(ApiKey {
            id: row.id,
            owner_id: row.owner_id,
            name: row.name,
            environment: row.environment,
            key_prefix: row.key_prefix,
            abilities: row.abilities.0,
            superkey: row.superkey,
            rate_limit,
            credits,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            revocation_reason: row.revocation_reason,
            rotated_from_id: row.rotated_from_id,
            rotated_to_id: row.rotated_to_id,
            request_count: row.request_count.max(0) as u64,
            last_used_at: row.last_used_at,
            last_used_ip: row.last_used_ip,
            metadata: row.metadata.0,
            allowed_cidrs: row.allowed_cidrs.0,
            imported: row.imported,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
        })
    }
}

/// A key joined with its owner's suspension, as the Check path reads it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CheckRow {
    #[sqlx(flatten)]
    key: KeyRow,
    owner_suspended: bool,
}

impl TryFrom<CheckRow> for CheckKey {
    type Error = StoreError;

    fn try_from(row: CheckRow) -> Result<Self, StoreError> {
        let key = ApiKey::try_from(row.key)?;
        Ok(CheckKey::from_key(&key, row.owner_suspended))
    }
}

pub(crate) fn keys_from_rows(rows: Vec<KeyRow>) -> Result<Vec<ApiKey>, StoreError> {
    rows.into_iter().map(ApiKey::try_from).collect()
}
