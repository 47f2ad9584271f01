//! The filter's key table: key hashes to the keys Check would cache. It
//! never holds a plaintext key.
//!
//! It is filled from keygate's key feed (`crate::feed`), or from a snapshot
//! file, or both: the file first, then the feed's snapshots in its place.
//!
//! Snapshot file format (JSON):
//!
//! ```json
//! {
//!   "complete": true,
//!   "keys": [{
//!     "hash": "<hex SHA-256 of the key's token segment>",
//!     "id": "0190…", "owner_id": "acme", "environment": "live",
//!     "key_prefix": "sk_live_AbCdEfGh", "abilities": ["read:orders"],
//!     "superkey": false, "rate_limit": {"max_attempts": 100, "decay_seconds": 60},
//!     "has_credits": false, "expires_at": null, "revoked_at": null,
//!     "owner_suspended": false, "metadata": {"tier": "gold"}
//!   }]
//! }
//! ```
//!
//! Only a complete table (every key keygate has issued) is used: a key it
//! lacks is then `invalid_key`, decided without a network call. The
//! fallback for partial tables is not built (docs/envoy-module.md).

use std::{
    collections::HashMap,
    fmt,
    path::Path,
    sync::{Arc, PoisonError, RwLock},
};

use chrono::{DateTime, Utc};
use keygate::{
    domain::{ApiKey, CheckKey, KeyHash, RateLimit},
    feed_proto,
};
use serde::Deserialize;
use uuid::Uuid;

use crate::settings::RateLimitSetting;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    complete: bool,
    keys: Vec<SnapshotKey>,
}

/// One key, as the snapshot file and the key feed describe it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotKey {
    hash: String,
    id: Uuid,
    owner_id: String,
    environment: String,
    key_prefix: String,
    #[serde(default)]
    abilities: Vec<String>,
    #[serde(default)]
    superkey: bool,
    #[serde(default)]
    rate_limit: Option<RateLimitSetting>,
    #[serde(default)]
    has_credits: bool,
    /// The key's IP allow-list, checked against Envoy's `source.address`
    /// (docs/envoy-module.md); without one, a key with a list is denied.
    #[serde(default)]
    allowed_cidrs: Vec<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    revoked_at: Option<DateTime<Utc>>,
    #[serde(default)]
    owner_suspended: bool,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

/// Why a snapshot was refused. Never names a hash: it is as secret as a
/// password hash.
#[derive(Debug)]
pub enum TableError {
    Read(String),
    Parse(String),
    Incomplete,
    BadHash {
        key_id: Uuid,
    },
    DuplicateHash {
        key_id: Uuid,
    },
    /// A key from the feed that cannot be read (a bug in keygate or a
    /// feed from another program).
    BadFeedKey {
        field: &'static str,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(e) => write!(f, "cannot read the key snapshot: {e}"),
            Self::Parse(e) => write!(f, "the key snapshot is not valid: {e}"),
            Self::Incomplete => f.write_str(
                "the key snapshot is partial (\"complete\": false); the filter needs every key",
            ),
            Self::BadHash { key_id } => {
                write!(f, "key {key_id}: \"hash\" is not 64 hex digits")
            }
            Self::DuplicateHash { key_id } => {
                write!(f, "key {key_id}: its hash is already in the snapshot")
            }
            Self::BadFeedKey { field } => {
                write!(f, "the key feed sent a key whose {field} is not valid")
            }
        }
    }
}

impl std::error::Error for TableError {}

/// Every issued key by hash, as Check would find it in its cache, and each
/// key's hash by id, so that the feed's changes and removals (by id) find
/// the entry to replace.
#[derive(Debug, Default)]
pub struct KeyTable {
    keys: HashMap<KeyHash, Arc<CheckKey>>,
    hashes: HashMap<Uuid, KeyHash>,
}

impl KeyTable {
    pub fn load(path: &Path) -> Result<Self, TableError> {
        let text = std::fs::read(path)
            .map_err(|e| TableError::Read(format!("{}: {e}", path.display())))?;
        Self::from_json(&text)
    }

    pub fn from_json(json: &[u8]) -> Result<Self, TableError> {
        let snapshot: Snapshot =
            serde_json::from_slice(json).map_err(|e| TableError::Parse(e.to_string()))?;
        if !snapshot.complete {
            return Err(TableError::Incomplete);
        }
        let mut table = Self {
            keys: HashMap::with_capacity(snapshot.keys.len()),
            hashes: HashMap::with_capacity(snapshot.keys.len()),
        };
        for entry in snapshot.keys {
            let key_id = entry.id;
            let hash = hex::decode(&entry.hash)
                .ok()
                .and_then(|bytes| KeyHash::from_bytes(&bytes))
                .ok_or(TableError::BadHash { key_id })?;
            if table.keys.contains_key(&hash) {
                return Err(TableError::DuplicateHash { key_id });
            }
            table.put(hash, entry.into_check_key());
        }
        Ok(table)
    }

    /// Adds a key, or replaces the entry with its id.
    pub fn put(&mut self, hash: KeyHash, key: CheckKey) {
        if let Some(old) = self.hashes.insert(key.id, hash) {
            if old != hash {
                self.keys.remove(&old);
            }
        }
        self.keys.insert(hash, Arc::new(key));
    }

    /// Removes a key by id; an id it does not hold is no error.
    pub fn remove(&mut self, id: Uuid) {
        if let Some(hash) = self.hashes.remove(&id) {
            self.keys.remove(&hash);
        }
    }

    pub fn get(&self, hash: &KeyHash) -> Option<&Arc<CheckKey>> {
        self.keys.get(hash)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Keys to put and ids to remove, read from one feed update.
#[derive(Debug, Default)]
pub struct Changes {
    put: Vec<(KeyHash, CheckKey)>,
    removed: Vec<Uuid>,
}

impl Changes {
    /// Reads an update's keys and removals; an entry that cannot be read
    /// refuses the whole update, before any table is touched.
    pub fn read(keys: Vec<feed_proto::TableKey>, removed: &[String]) -> Result<Self, TableError> {
        Ok(Self {
            put: keys
                .into_iter()
                .map(|fed| {
                    SnapshotKey::from_feed(fed).map(|(hash, key)| (hash, key.into_check_key()))
                })
                .collect::<Result<_, _>>()?,
            removed: removed
                .iter()
                .map(|id| Uuid::try_parse(id).map_err(|_| TableError::BadFeedKey { field: "id" }))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply_to(self, table: &mut KeyTable) {
        for (hash, key) in self.put {
            table.put(hash, key);
        }
        for id in self.removed {
            table.remove(id);
        }
    }
}

/// What a lookup in the [`SharedTable`] found.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<CheckKey>),
    /// The table is complete and has no such key: `invalid_key`.
    Unknown,
    /// No complete table has arrived yet: nothing can be decided.
    NotReady,
}

/// The table the filter reads on Envoy's worker threads while the feed's
/// thread changes it: replaced whole by a complete snapshot, changed in
/// place by each change after it. A read holds the lock for one hash
/// lookup and an `Arc` clone.
#[derive(Debug, Default)]
pub struct SharedTable {
    /// `None` until the first complete table.
    table: RwLock<Option<KeyTable>>,
}

impl SharedTable {
    pub fn new(table: Option<KeyTable>) -> Self {
        Self {
            table: RwLock::new(table),
        }
    }

    pub fn lookup(&self, hash: &KeyHash) -> Lookup {
        // A panic while the lock was held cannot leave a HashMap half
        // changed in a way a read could notice, so poisoning is ignored.
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        match table.as_ref() {
            None => Lookup::NotReady,
            Some(table) => table
                .get(hash)
                .map_or(Lookup::Unknown, |key| Lookup::Found(Arc::clone(key))),
        }
    }

    /// Puts a complete table in place of the current one. The old one is
    /// freed after the lock is let go: dropping a large table takes long
    /// enough to hold up Envoy's workers.
    pub fn replace(&self, table: KeyTable) {
        let old = self
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(table);
        drop(old);
    }

    /// Puts `table` in place only if there is none yet; whether it did.
    pub fn fill(&self, table: KeyTable) -> bool {
        let mut current = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if current.is_some() {
            return false;
        }
        *current = Some(table);
        true
    }

    /// Applies changes already read (nothing is parsed under the lock);
    /// `false` (and nothing changed) when there is no table yet.
    pub fn change(&self, changes: Changes) -> bool {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        match table.as_mut() {
            Some(table) => {
                changes.apply_to(table);
                true
            }
            None => false,
        }
    }

    /// How many keys the table holds, `None` before the first table.
    pub fn key_count(&self) -> Option<usize> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(KeyTable::len)
    }
}

impl SnapshotKey {
    /// A key as the feed sends it, checked as the snapshot file's are; its
    /// hash beside it (the file's hex `hash` field is left empty).
    fn from_feed(fed: feed_proto::TableKey) -> Result<(KeyHash, Self), TableError> {
        let bad = |field| TableError::BadFeedKey { field };
        let hash = KeyHash::from_bytes(&fed.hash).ok_or(bad("hash"))?;
        let instant = |at: Option<prost_types::Timestamp>, field| {
            at.map(|at| {
                let nanos = u32::try_from(at.nanos).map_err(|_| bad(field))?;
                DateTime::<Utc>::from_timestamp(at.seconds, nanos).ok_or(bad(field))
            })
            .transpose()
        };
        let key = Self {
            hash: String::new(),
            id: Uuid::try_parse(&fed.id).map_err(|_| bad("id"))?,
            owner_id: fed.owner_id,
            environment: fed.environment,
            key_prefix: fed.key_prefix,
            abilities: fed.abilities,
            superkey: fed.superkey,
            rate_limit: fed.rate_limit.map(|limit| RateLimitSetting {
                max_attempts: limit.max_attempts,
                decay_seconds: limit.decay_seconds,
            }),
            has_credits: fed.has_credits,
            allowed_cidrs: fed.allowed_cidrs,
            expires_at: instant(fed.expires_at, "expires_at")?,
            revoked_at: instant(fed.revoked_at, "revoked_at")?,
            owner_suspended: fed.owner_suspended,
            metadata: fed.metadata.into_iter().collect(),
        };
        Ok((hash, key))
    }

    /// Through [`CheckKey::from_key`], so that the upstream header values
    /// (`*` for a superkey's abilities) are rendered exactly as Check's.
    fn into_check_key(self) -> CheckKey {
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        let key = ApiKey {
            id: self.id,
            owner_id: self.owner_id,
            name: String::new(),
            environment: self.environment,
            key_prefix: self.key_prefix,
            abilities: self.abilities,
            superkey: self.superkey,
            rate_limit: self.rate_limit.map(RateLimit::from),
            credits: None,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            revocation_reason: None,
            rotated_from_id: None,
            rotated_to_id: None,
            request_count: 0,
            last_used_at: None,
            last_used_ip: None,
            metadata: self.metadata,
            created_by: None,
            allowed_cidrs: self.allowed_cidrs,
            imported: false,
            created_at: epoch,
            updated_at: epoch,
            deleted_at: None,
        };
        let mut check_key = CheckKey::from_key(&key, self.owner_suspended);
        check_key.has_credits = self.has_credits;
        check_key
    }
}
