//! A pooled connection in any doubt is replaced, never reused.
//!
//! A writing connection can come back to its pool still inside a
//! transaction that nothing will ever end:
//! - a call cancelled at the wrong await (a client deadline, a dropped
//!   request): sqlx-sqlite's `begin_with` awaits once more after `BEGIN` has
//!   run, and a future dropped there leaves no `Transaction` to roll back;
//! - a failed write (disk full, a file size limit, an I/O error): SQLite may
//!   roll the transaction back on its own, the `ROLLBACK` sqlx sends then
//!   fails, and sqlx still counts the connection as inside a transaction.
//!
//! Reused, such a connection fails every later `BEGIN` ("attempted to call
//! begin_with at non-zero transaction depth"), and SQLite has one writer: no
//! revoke, key or usage flush could be written again until a restart. So
//! each pool checks a connection before handing it out and closes one that
//! is still inside a transaction (closing rolls back whatever it held); the
//! pool opens a fresh one in its place. sqlx pings an idle connection
//! before this check, so commands still queued on it (a rollback started by
//! a dropped `Transaction`) have run by then.

use sqlx::{pool::PoolConnectionMetadata, Connection, Database, Error};

/// The pools' `before_acquire` hook: `Ok(false)` makes the pool close this
/// connection and open another.
pub(super) fn reusable<DB: Database>(
    connection: &mut DB::Connection,
    _meta: PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<bool, Error>> {
    let in_transaction = connection.is_in_transaction();
    if in_transaction {
        metrics::counter!("keygate_store_connections_replaced_total", "reason" => "in_transaction")
            .increment(1);
        tracing::warn!(
            "a database connection came back inside a transaction (a cancelled call or a failed \
             write); closing it, which rolls that transaction back, and opening a fresh one"
        );
    }
    Box::pin(std::future::ready(Ok(!in_transaction)))
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use crate::store::{backend::Backend, DbPool, Store, StoreOptions};

    #[tokio::test]
    async fn a_writer_returned_inside_a_transaction_is_replaced_before_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("reuse.db").display());
        let store = Store::connect(&StoreOptions::new(url)).await.unwrap();
        store.migrate().await.unwrap();
        let DbPool::Sqlite(pool) = &store.main else {
            unreachable!("a sqlite: URL opens SQLite pools")
        };
        let mut connection = pool.acquire().await.unwrap();
        // What a call cancelled inside `begin_with` leaves behind: a
        // transaction that no `Transaction` value will ever end.
        std::mem::forget(connection.begin_with("BEGIN IMMEDIATE").await.unwrap());
        drop(connection);

        let mut tx = pool.begin_write().await.expect("the next writer begins");
        sqlx::query("INSERT INTO owners (owner_id, created_at, updated_at) VALUES ('o', $1, $1)")
            .bind(crate::clock::Clock::system().now())
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        store.close().await;
    }
}
