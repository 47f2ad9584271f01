//! A SQLite database serves one keygate process, and this makes it so.
//!
//! Several parts of a SQLite keygate count on being the only server of its
//! file (README, Configuration; docs/architecture.md):
//! - a revocation reaches other caches only through PostgreSQL's
//!   `NOTIFY`: a second process on the file would keep serving a revoked
//!   key from its cache until the entry's TTL;
//! - the webhook dispatcher reads due deliveries instead of claiming them,
//!   so a second process would send every event a second time;
//! - the issued-key filter is filled once at start and then only by the
//!   process's own issuing.
//!
//! So `keygate serve` takes an exclusive lock on `<database>.lock` beside
//! the file before it opens it (on Linux, where keygate is deployed),
//! holds it until it has stopped, and a second server of the same file
//! refuses to start and says why; one started while the old one still
//! drains exits too, rather than wait. The lock is the operating system's
//! (`flock`): a process that dies, even killed, releases it, so no stale
//! lock outlives a crash. The lock file itself is left in place (removing
//! it would let two processes each lock a different file of the same
//! name). Two names of one file (a symbolic link) lock two files.
//! `keygate import` takes the lock as well: the keys it adds would be
//! missing from a running server's issued-key set. `migrate` and `prune`
//! do not: SQLite serialises their writes, and they serve no cache.

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    str::FromStr,
};

use sqlx::sqlite::SqliteConnectOptions;

/// Held for as long as this process serves the SQLite database; dropping it
/// lets another process serve it.
#[derive(Debug)]
pub struct SqliteOwner {
    _lock: File,
}

/// Why this process may not serve a SQLite database.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "another keygate process is serving the SQLite database {database} (it holds {lock}); \
         a SQLite database serves one keygate process: stop the other, or run replicas on \
         PostgreSQL"
    )]
    Taken { database: PathBuf, lock: PathBuf },
    #[error("cannot lock {lock}, which keeps a second keygate from serving the same SQLite database: {source}")]
    Io {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SqliteOwner {
    /// Locks the database `url` names for this process. `Ok(None)` for a
    /// PostgreSQL URL and for an in-memory SQLite database, which no other
    /// process can open. A URL that does not parse is left to the store to
    /// refuse, with its own message.
    pub fn claim(url: &str) -> Result<Option<SqliteOwner>, OwnerError> {
        let Some(database) = database_file(url) else {
            return Ok(None);
        };
        let lock = lock_path(&database);
        let io = |source| OwnerError::Io {
            lock: lock.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(io)?;
        if try_lock(&file).map_err(io)? {
            Ok(Some(SqliteOwner { _lock: file }))
        } else {
            Err(OwnerError::Taken { database, lock })
        }
    }
}

/// The file a SQLite URL names, or `None` when it names no file.
fn database_file(url: &str) -> Option<PathBuf> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if !url.starts_with("sqlite:") || in_memory {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename().to_str()?;
    // SQLite opens `sqlite:file:…` as a URI filename (sqlx asks for URI
    // names): the path is what follows the scheme and any empty authority.
    let file = file
        .strip_prefix("file://")
        .or_else(|| file.strip_prefix("file:"))
        .unwrap_or(file);
    (!file.is_empty()).then(|| PathBuf::from(file))
}

/// Takes the exclusive lock on `file` if no other open file holds it.
#[cfg(target_os = "linux")]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use rustix::{
        fs::{flock, FlockOperation},
        io::Errno,
    };
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

/// Off Linux (a development machine) nothing is locked.
#[cfg(not(target_os = "linux"))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_of_one_file_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/keys.db", dir.path().display());
        let first = SqliteOwner::claim(&url).unwrap().expect("a file is locked");
        let refused = SqliteOwner::claim(&url).unwrap_err();
        let message = refused.to_string();
        assert!(matches!(refused, OwnerError::Taken { .. }), "{message}");
        assert!(message.contains("keys.db.lock"), "{message}");
        assert!(message.contains("another keygate process"), "{message}");
        drop(first);
        assert!(SqliteOwner::claim(&url).unwrap().is_some());
    }

    #[test]
    fn each_form_of_a_sqlite_url_locks_the_file_sqlite_opens() {
        for (url, file) in [
            ("sqlite:keygate.db", "keygate.db"),
            ("sqlite://keygate.db", "keygate.db"),
            ("sqlite:///srv/keygate.db", "/srv/keygate.db"),
            ("sqlite:///srv/keygate.db?mode=rwc", "/srv/keygate.db"),
            ("sqlite:///srv/my%20keys.db", "/srv/my keys.db"),
            ("sqlite:file:/srv/keygate.db", "/srv/keygate.db"),
            ("sqlite:file:///srv/keygate.db", "/srv/keygate.db"),
            ("sqlite:file:keygate.db", "keygate.db"),
        ] {
            assert_eq!(database_file(url), Some(PathBuf::from(file)), "{url}");
        }
        assert_eq!(
            lock_path(Path::new("/srv/keygate.db")),
            Path::new("/srv/keygate.db.lock")
        );
    }

    #[test]
    fn other_files_postgres_and_memory_databases_are_not_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _one = SqliteOwner::claim(&format!("sqlite://{}/a.db", dir.path().display()))
            .unwrap()
            .unwrap();
        assert!(
            SqliteOwner::claim(&format!("sqlite://{}/b.db", dir.path().display()))
                .unwrap()
                .is_some()
        );
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://file.db?mode=memory",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ] {
            assert!(SqliteOwner::claim(url).unwrap().is_none(), "{url}");
        }
    }

    #[test]
    fn a_lock_that_cannot_be_created_is_a_clear_error() {
        let url = "sqlite:///nonexistent-keygate-dir/keys.db";
        let error = SqliteOwner::claim(url).unwrap_err();
        assert!(matches!(error, OwnerError::Io { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("/nonexistent-keygate-dir/keys.db.lock"),
            "{error}"
        );
    }
}
