//! The filter's key table: key hashes to the keys Check would cache,
//! loaded from a snapshot file. It never holds a plaintext key.
//!
//! Snapshot format (JSON):
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
//! Only a complete snapshot (every key keygate has issued) is accepted: a
//! key it lacks is then `invalid_key`, decided without a network call. The
//! fallback for partial tables is not built (docs/envoy-module.md).

use std::{collections::HashMap, fmt, path::Path, sync::Arc};

use chrono::{DateTime, Utc};
use keygate::domain::{ApiKey, CheckKey, KeyHash, RateLimit};
use serde::Deserialize;
use uuid::Uuid;

use crate::settings::RateLimitSetting;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    complete: bool,
    keys: Vec<SnapshotKey>,
}

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
    BadHash { key_id: Uuid },
    DuplicateHash { key_id: Uuid },
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
        }
    }
}

impl std::error::Error for TableError {}

/// Every issued key by hash, as Check would find it in its cache.
#[derive(Debug, Default)]
pub struct KeyTable {
    keys: HashMap<KeyHash, Arc<CheckKey>>,
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
        let mut keys = HashMap::with_capacity(snapshot.keys.len());
        for entry in snapshot.keys {
            let key_id = entry.id;
            let hash = hex::decode(&entry.hash)
                .ok()
                .and_then(|bytes| KeyHash::from_bytes(&bytes))
                .ok_or(TableError::BadHash { key_id })?;
            if keys
                .insert(hash, Arc::new(entry.into_check_key()))
                .is_some()
            {
                return Err(TableError::DuplicateHash { key_id });
            }
        }
        Ok(Self { keys })
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

impl SnapshotKey {
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
