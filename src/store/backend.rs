//! What differs between PostgreSQL and SQLite, behind one small trait so the
//! shared statements in the sibling modules stay written once.

use sqlx::{Database, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use super::{INVALIDATION_CHANNEL, ISSUED_ALL, ISSUED_CHANNEL};

pub(crate) trait Backend {
    type Db: Database;

    /// Opens a transaction that will write.
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;

    /// Serialises writers that act on one owner until the transaction ends,
    /// so that counting an owner's keys and inserting one is race-free.
    async fn serialize_owner(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        owner_id: &str,
    ) -> Result<(), sqlx::Error>;

    /// Tells every replica, at commit, that cached state for `payload`
    /// (`key:<uuid>` or `owner:<id>`) is stale.
    async fn notify(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        payload: &str,
    ) -> Result<(), sqlx::Error>;

    /// Tells every replica, at commit, that key `id` was issued, so that it
    /// joins their set of issued keys. A channel of its own: a new key makes
    /// no cached entry stale, and replicas that predate the set ignore it.
    async fn notify_issued(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        id: uuid::Uuid,
    ) -> Result<(), sqlx::Error>;

    /// Tells every replica, at commit, to read its set of issued keys
    /// again (after an import of many keys).
    async fn notify_issued_all(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
    ) -> Result<(), sqlx::Error>;

    /// Takes the cluster-wide prune lock for this transaction, if free.
    async fn try_prune_lock(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
    ) -> Result<bool, sqlx::Error>;
}

/// Arbitrary constant naming keygate's prune job among advisory locks.
pub const PRUNE_LOCK_ID: i64 = 0x6b65_7967_6174_6501;

impl Backend for PgPool {
    type Db = Postgres;

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }

    async fn serialize_owner(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        owner_id: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(owner_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn notify(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        payload: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(INVALIDATION_CHANNEL)
            .bind(payload)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn notify_issued(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        id: uuid::Uuid,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(ISSUED_CHANNEL)
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn notify_issued_all(
        &self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(ISSUED_CHANNEL)
            .bind(ISSUED_ALL)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn try_prune_lock(
        &self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PRUNE_LOCK_ID)
            .fetch_one(&mut **tx)
            .await
    }
}

impl Backend for SqlitePool {
    type Db = Sqlite;

    /// `BEGIN IMMEDIATE` takes the write lock up front: a deferred transaction
    /// that reads and then writes can fail with SQLITE_BUSY mid-way.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }

    /// The immediate transaction already excludes every other writer.
    async fn serialize_owner(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _owner_id: &str,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// One process owns a SQLite file; local invalidation suffices.
    async fn notify(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _payload: &str,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// The one process adds its new keys to its set itself.
    async fn notify_issued(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _id: uuid::Uuid,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// The one process adds imported keys to its set itself.
    async fn notify_issued_all(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn try_prune_lock(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
    ) -> Result<bool, sqlx::Error> {
        Ok(true)
    }
}
