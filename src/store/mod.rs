//! Persistence: the only module that holds SQL.
//!
//! PostgreSQL is the production store and SQLite the embedded default. Most
//! statements are written once (both accept `$N` placeholders) and run on
//! whichever pool is configured via [`with_pool!`]; what differs between the
//! two (transaction mode, owner serialisation, NOTIFY, batch inserts) lives in
//! [`backend::Backend`].

mod backend;
mod credits;
mod hygiene;
mod issued;
mod key_pages;
mod key_table;
mod keys;
mod owners_audit;
mod reuse;
mod rows;
mod secrets;
mod sqlite_owner;
mod usage;
pub(crate) mod webhooks;
mod writer_priority;

use std::{str::FromStr, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    ConnectOptions, PgPool, SqlitePool,
};

pub use backend::PRUNE_LOCK_ID;
pub use credits::Lease;
pub use hygiene::ImportedRow;
pub use issued::heartbeat;
pub use key_table::TableKey;
pub use keys::{Cursor, KeyChanges, KeyFilter, NewKey};
pub use owners_audit::{AuditFilter, AuditRecord};
pub use sqlite_owner::{OwnerError, SqliteOwner};
pub use usage::{PruneSummary, UsageEvent};
pub use webhooks::{
    AttemptOutcome, ClaimedDelivery, EndpointPause, EndpointTarget, NewWebhook, OutboxStats,
    WebhookChanges,
};

pub(crate) static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("migrations/postgres");
pub(crate) static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long `migrate` waits for its connection to PostgreSQL.
const MIGRATE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Postgres channel on which every replica hears of changed keys.
pub const INVALIDATION_CHANNEL: &str = "keygate_invalidate";

/// The Postgres channel on which every replica hears of newly issued keys
/// (created or rotated in), by id, or [`ISSUED_ALL`] after an import.
pub const ISSUED_CHANNEL: &str = "keygate_issued";

/// The issued-key payload that asks replicas to read every issued key
/// again: an import issues too many keys to name each one.
pub const ISSUED_ALL: &str = "*";

/// Runs `$body` with `$pool` bound to the concrete pool of either backend.
/// The body is type-checked once per backend, so one text serves both.
macro_rules! with_pool {
    ($pools:expr, $pool:ident => $body:expr) => {
        match $pools {
            $crate::store::DbPool::Postgres($pool) => $body,
            $crate::store::DbPool::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

#[derive(Debug, Clone)]
pub(crate) enum DbPool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Why a store call failed. Variants carry data; `grpc::status` turns them
/// into client-safe statuses. Each names its cause in one line, since the
/// flusher and the Check path log them as they are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("owner already holds the maximum of {limit} keys")]
    OwnerKeyLimit { limit: u32 },
    #[error("owner already holds the maximum of {limit} webhooks")]
    OwnerWebhookLimit { limit: u32 },
    #[error("key is already revoked")]
    AlreadyRevoked,
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    /// The database could not write to its storage: a full disk, a file
    /// size limit, an I/O error. It passes when the cause does.
    #[error(
        "the database cannot write to its storage (disk full, file size limit or I/O error): {0}"
    )]
    Storage(sqlx::Error),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            sqlx::Error::Database(ref db) if is_storage_fault(db.as_ref()) => {
                StoreError::Storage(error)
            }
            other => StoreError::Database(other),
        }
    }
}

/// SQLite's SQLITE_FULL and SQLITE_IOERR (any extended code; EFBIG is an
/// IOERR_WRITE), Postgres's classes 53 (insufficient resources: disk full)
/// and 58 (system error: I/O).
fn is_storage_fault(error: &dyn sqlx::error::DatabaseError) -> bool {
    const SQLITE_IOERR: i32 = 10;
    const SQLITE_FULL: i32 = 13;
    let Some(code) = error.code() else {
        return false;
    };
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        code.parse::<i32>()
            .is_ok_and(|extended| matches!(extended & 0xff, SQLITE_IOERR | SQLITE_FULL))
    } else {
        code.starts_with("53") || code.starts_with("58")
    }
}

impl StoreError {
    /// A failure that passes without anyone changing the request: the
    /// database is unreachable, slow, or cannot write for now.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Timeout(_) | Self::Storage(_)
        )
    }

    /// The database could not write to its storage.
    pub fn is_storage(&self) -> bool {
        matches!(self, Self::Storage(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    /// Bound on the Check path's cache-miss read (acquire and query).
    pub check_timeout: Duration,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            check_timeout: Duration::from_millis(100),
        }
    }
}

/// The store. Cheap to clone.
///
/// Two pools: `main` for KeyAdmin, usage and pruning, and `check` for the
/// Check path's cache misses, whose acquire timeout is short so that Envoy
/// gets `UNAVAILABLE` well inside its own deadline when the database is gone.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) main: DbPool,
    pub(crate) check: DbPool,
    check_timeout: Duration,
}

/// The SQLite writer carries the usage flushes: thousands of rows a second,
/// most of them into the usage log and its per-key index. Measured with
/// `perf` under `scripts/bench.sh usage`, its defaults spent a third of
/// its time on avoidable I/O:
/// - multi-row statements inside a transaction keep a statement journal,
///   a temporary *file* by default: kept in memory instead;
/// - a batch dirties more pages than the default 2 MiB page cache holds,
///   so pages spilled to the WAL mid-transaction: a transaction may now
///   hold up to 64 MiB of dirty pages before it spills (`cache_spill`,
///   16,384 pages), while the pages kept between transactions are bounded
///   at about 8 MiB (`cache_size`). It was 64 MiB of both until the webhook
///   dispatcher showed what a large cache costs: a commit after a b-tree
///   rebalance (a delivered row grows, so most delivering commits have
///   one) walks every cached page (SQLite's `pcache1TruncateUnsafe`: the
///   rebalance gives a page the locking page's number for a moment, far
///   past the file's end, and the commit's truncation then scans the whole
///   cache), about 0.25 % of the replica's core at 1,000 deliveries a
///   second with 16,384 pages cached (BENCHMARKS.md, sessions 20 and 21);
/// - a checkpoint every 1,000 WAL pages rewrote hot index pages again and
///   again: every 10,000 (about 40 MiB of 4 KiB pages; more while readers
///   hold old snapshots), and the `-wal` file is truncated back to 64 MiB
///   after a checkpoint rather than kept at its high-water mark.
///
/// A round of the webhook dispatcher reads up to 128 due rows on this
/// connection: the row buffer holds them all, so that the worker thread
/// hands them over at once instead of stopping after sqlx's default of 50
/// until the caller drains them (each stop two more thread switches on the
/// replica's core; BENCHMARKS.md, session 18).
///
/// `temp_store` covers every statement on this connection (KeyAdmin and
/// pruning too); the page cache is a ceiling, not allocated up front.
///
/// Its worker thread is named so that it can be given a lower CPU priority
/// than Check (`writer_priority`).
fn writer_tuning(connect: SqliteConnectOptions) -> SqliteConnectOptions {
    connect
        .thread_name(writer_priority::writer_thread_name)
        .pragma("temp_store", "memory")
        .pragma("cache_size", "-8192")
        .pragma("cache_spill", "16384")
        .pragma("wal_autocheckpoint", "10000")
        .pragma("journal_size_limit", "67108864")
        .row_buffer_size(WRITER_ROW_BUFFER)
}

/// More than a dispatcher round's rows (`DispatchSettings::batch`, 128).
const WRITER_ROW_BUFFER: usize = 256;

impl Store {
    /// Opens the pools. Connections are made lazily, so a server can start
    /// while the database is still coming up.
    pub async fn connect(options: &StoreOptions) -> StoreResult<Store> {
        let url = options.url.as_str();
        let (main, check) = if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            // SQLite has one writer; a single writing connection makes
            // serialisation explicit instead of surfacing SQLITE_BUSY.
            let main = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .before_acquire(reuse::reusable::<sqlx::Sqlite>)
                .after_connect(|_, _| {
                    Box::pin(async {
                        writer_priority::lower_writer_threads();
                        Ok(())
                    })
                })
                .connect_lazy_with(writer_tuning(connect.clone()));
            let check = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(options.check_timeout)
                .connect_lazy_with(connect);
            (DbPool::Sqlite(main), DbPool::Sqlite(check))
        } else {
            let connect = PgConnectOptions::from_str(url)?.application_name("keygate");
            let main = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .before_acquire(reuse::reusable::<sqlx::Postgres>)
                .connect_lazy_with(connect.clone());
            // Kept warm: a connection handshake alone can exceed the Check
            // bound, so a cold pool would fail the first misses after start.
            let check = PgPoolOptions::new()
                .max_connections(options.max_connections.clamp(2, 8))
                .min_connections(2)
                .acquire_timeout(options.check_timeout)
                .connect_lazy_with(connect);
            (DbPool::Postgres(main), DbPool::Postgres(check))
        };
        Ok(Store {
            main,
            check,
            check_timeout: options.check_timeout,
        })
    }

    /// How long a Check-path read may take before it fails.
    pub fn check_timeout(&self) -> Duration {
        self.check_timeout
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.main, DbPool::Postgres(_))
    }

    /// The Postgres pool, for the LISTEN side of cross-replica invalidation.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.main {
            DbPool::Postgres(pool) => Some(pool),
            DbPool::Sqlite(_) => None,
        }
    }

    /// Applies pending migrations for the configured backend.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.main {
            DbPool::Postgres(pool) => {
                // Connected directly rather than through the pool: when the
                // server refuses or is unreachable, this error names the
                // cause, where the pool's only says it timed out waiting.
                let connect = pool.connect_options();
                let mut connection =
                    match tokio::time::timeout(MIGRATE_CONNECT_TIMEOUT, connect.connect()).await {
                        Ok(connection) => connection?,
                        Err(_) => {
                            return Err(sqlx::Error::Io(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!(
                                "no connection to PostgreSQL within {MIGRATE_CONNECT_TIMEOUT:?}"
                            ),
                            ))
                            .into())
                        }
                    };
                let migrated = POSTGRES_MIGRATIONS.run(&mut connection).await;
                let _ = sqlx::Connection::close(connection).await;
                migrated
            }
            DbPool::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
        }
    }

    pub async fn close(&self) {
        for pools in [&self.main, &self.check] {
            with_pool!(pools, pool => pool.close().await);
        }
    }
}
