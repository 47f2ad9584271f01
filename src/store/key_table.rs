//! What the key feed (`grpc::key_feed`) reads: keys with their hashes, for
//! the key table of keygate's Envoy module (docs/envoy-module.md).
//!
//! The only reads that let a key's hash leave the store. Imported keys are
//! left out: they are found by the hash of the whole key string, which the
//! module does not compute (docs/envoy-module.md, "The key feed"). Deleted
//! keys are left out too: Check finds them as unknown.

use uuid::Uuid;

use super::{rows::key_columns, rows::KeyRow, with_pool, Store, StoreError, StoreResult};
use crate::domain::{ApiKey, KeyHash};

/// A key as the module's table holds it.
#[derive(Debug, Clone)]
pub struct TableKey {
    pub hash: KeyHash,
    pub key: ApiKey,
    pub owner_suspended: bool,
}

macro_rules! select_table_keys {
    ($condition:literal) => {
        concat!(
            "SELECT ",
            key_columns!(),
            ", k.key_hash, (o.suspended_at IS NOT NULL) AS owner_suspended \
             FROM api_keys k LEFT JOIN owners o ON o.owner_id = k.owner_id \
             WHERE k.deleted_at IS NULL AND NOT k.imported AND ",
            $condition
        )
    };
}

const SELECT_PAGE: &str = select_table_keys!("k.id > $1 ORDER BY k.id LIMIT $2");
const SELECT_BY_ID: &str = select_table_keys!("k.id = $1");
const SELECT_OF_OWNER: &str = select_table_keys!("k.owner_id = $1");

#[derive(sqlx::FromRow)]
struct TableRow {
    #[sqlx(flatten)]
    key: KeyRow,
    key_hash: Vec<u8>,
    owner_suspended: bool,
}

impl TryFrom<TableRow> for TableKey {
    type Error = StoreError;

    fn try_from(row: TableRow) -> Result<Self, StoreError> {
        let key = ApiKey::try_from(row.key)?;
        let hash = KeyHash::from_bytes(&row.key_hash)
            .ok_or_else(|| StoreError::Corrupt(format!("key {} key_hash length", key.id)))?;
        Ok(Self {
            hash,
            key,
            owner_suspended: row.owner_suspended,
        })
    }
}

fn table_keys(rows: Vec<TableRow>) -> StoreResult<Vec<TableKey>> {
    rows.into_iter().map(TableKey::try_from).collect()
}

impl Store {
    /// Up to `limit` keys with ids after `after` (`Uuid::nil()` for the
    /// first page), in id order.
    pub async fn table_keys_after(&self, after: Uuid, limit: u32) -> StoreResult<Vec<TableKey>> {
        let rows: Vec<TableRow> = with_pool!(&self.main, pool => {
            sqlx::query_as(SELECT_PAGE).bind(after).bind(i64::from(limit)).fetch_all(pool).await?
        });
        table_keys(rows)
    }

    /// One key, `None` if it is gone (deleted, purged) or imported.
    pub async fn table_key(&self, id: Uuid) -> StoreResult<Option<TableKey>> {
        let row: Option<TableRow> = with_pool!(&self.main, pool => {
            sqlx::query_as(SELECT_BY_ID).bind(id).fetch_optional(pool).await?
        });
        row.map(TableKey::try_from).transpose()
    }

    /// Every key of one owner.
    pub async fn table_keys_of_owner(&self, owner_id: &str) -> StoreResult<Vec<TableKey>> {
        let rows: Vec<TableRow> = with_pool!(&self.main, pool => {
            sqlx::query_as(SELECT_OF_OWNER).bind(owner_id).fetch_all(pool).await?
        });
        table_keys(rows)
    }
}
