//! What the in-memory set of issued keys and the invalidation listener read
//! and send: hash prefixes (never whole hashes) and the listener's
//! heartbeat.

use sqlx::postgres::PgListener;
use uuid::Uuid;

use super::{with_pool, Store, StoreError, StoreResult};

/// The first 8 bytes of every stored key hash (revoked and expired keys
/// included: they still decide their Checks).
const SELECT_PREFIXES: &str = "SELECT substr(key_hash, 1, 8) FROM api_keys";
const SELECT_PREFIX_BY_ID: &str = "SELECT substr(key_hash, 1, 8) FROM api_keys WHERE id = $1";

fn prefix(bytes: &[u8]) -> StoreResult<[u8; 8]> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("key_hash shorter than 8 bytes".into()))
}

impl Store {
    /// The 8-byte hash prefix of every key in the store.
    pub async fn issued_hash_prefixes(&self) -> StoreResult<Vec<[u8; 8]>> {
        let prefixes: Vec<Vec<u8>> = with_pool!(&self.main, pool => {
            sqlx::query_scalar(SELECT_PREFIXES).fetch_all(pool).await?
        });
        prefixes.iter().map(|bytes| prefix(bytes)).collect()
    }

    /// The 8-byte hash prefix of one key, `None` if it is not stored.
    pub async fn hash_prefix_of(&self, id: Uuid) -> StoreResult<Option<[u8; 8]>> {
        let found: Option<Vec<u8>> = with_pool!(&self.main, pool => {
            sqlx::query_scalar(SELECT_PREFIX_BY_ID).bind(id).fetch_optional(pool).await?
        });
        found.as_deref().map(prefix).transpose()
    }
}

/// Sends `payload` on `channel` through the listener's own connection, so
/// that its coming back proves this very connection still delivers.
pub async fn heartbeat(
    listener: &mut PgListener,
    channel: &str,
    payload: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(listener)
        .await?;
    Ok(())
}
