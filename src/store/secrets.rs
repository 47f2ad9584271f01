//! Secrets shared by every replica, kept in the database: the first replica
//! that needs one stores the value it drew; every replica then reads the
//! stored one, so all of them agree without any configuration.

use chrono::{DateTime, Utc};

use super::{with_pool, Store, StoreResult};

const INSERT_IF_ABSENT: &str = "INSERT INTO server_secrets (name, value, created_at) \
     VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";
const SELECT_SECRET: &str = "SELECT value FROM server_secrets WHERE name = $1";

impl Store {
    /// The secret stored under `name`; `fresh` is stored first when there is
    /// none yet. Concurrent callers all get the value of whichever insert
    /// won.
    pub async fn shared_secret(
        &self,
        name: &str,
        fresh: &[u8],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<u8>> {
        with_pool!(&self.main, pool => {
            sqlx::query(INSERT_IF_ABSENT)
                .bind(name)
                .bind(fresh)
                .bind(at)
                .execute(pool)
                .await?;
            Ok(sqlx::query_scalar(SELECT_SECRET).bind(name).fetch_one(pool).await?)
        })
    }
}
