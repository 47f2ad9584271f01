//! Key records: the full `ApiKey` that KeyAdmin shows and the slim `CheckKey`
//! that the Check path caches.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

use super::{allow_list::AllowList, key::masked};

/// `max_attempts` per `decay_seconds`, enforced per replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max_attempts: u32,
    pub decay_seconds: u32,
}

/// A key's budget of calls: each allowed Check spends one
/// (docs/behaviour.md, "Credits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits {
    /// Credits no replica has leased yet.
    pub remaining: u64,
    pub refill: Option<Refill>,
}

/// Every `interval_seconds`, `remaining` is set back to `amount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    pub amount: u64,
    pub interval_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    /// Revoked by a rotation, still usable until `revoked_at`.
    Rotating,
    Revoked,
    Expired,
}

/// A key as KeyAdmin reports it. It never holds the secret or its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub owner_id: String,
    pub name: String,
    pub environment: String,
    pub key_prefix: String,
    pub abilities: Vec<String>,
    pub superkey: bool,
    pub rate_limit: Option<RateLimit>,
    pub credits: Option<Credits>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revocation_reason: Option<String>,
    pub rotated_from_id: Option<Uuid>,
    pub rotated_to_id: Option<Uuid>,
    pub request_count: u64,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Networks the key may be used from; empty allows every address.
    pub allowed_cidrs: Vec<String>,
    /// Brought from another system (`ImportKeys`): stored as the SHA-256 of
    /// the whole key string, checked without a checksum.
    pub imported: bool,
    /// Who issued it: the admin token's name, or `key:<prefix>` for a key
    /// acting through the REST API (`None` for keys issued before keygate
    /// recorded it).
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn masked_key(&self) -> String {
        masked(&self.key_prefix)
    }

    pub fn state(&self, now: DateTime<Utc>) -> KeyState {
        match (self.revoked_at, self.expires_at) {
            (Some(revoked), _) if revoked <= now => KeyState::Revoked,
            _ if self.deleted_at.is_some() => KeyState::Expired,
            (_, Some(expires)) if expires <= now => KeyState::Expired,
            (Some(_), _) => KeyState::Rotating,
            _ => KeyState::Active,
        }
    }

    /// Revoked now or at a future instant: no further rotation or revoke.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// What the Check path needs of a key, with its upstream header values
/// rendered once at cache-fill time rather than on every request.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckKey {
    pub id: Uuid,
    pub owner_id: String,
    pub environment: String,
    pub key_prefix: String,
    pub abilities: Vec<String>,
    pub superkey: bool,
    pub rate_limit: Option<RateLimit>,
    /// Each allowed Check spends a credit (`credits::CreditLedger`).
    pub has_credits: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub owner_suspended: bool,
    pub deleted: bool,
    /// The key's metadata, handed to the proxy (`KEYGATE_METADATA_HEADERS`
    /// and Check's `dynamic_metadata`).
    pub metadata: BTreeMap<String, String>,
    /// Parsed once, when the key is cached.
    pub allow_list: AllowList,
    /// Found by the hash of the whole key string (see [`ApiKey::imported`]).
    pub imported: bool,
}

impl CheckKey {
    /// An active key for unit tests, prefix `sk_live_abcdefgh`.
    #[cfg(test)]
    pub(crate) fn sample(id: Uuid, owner_id: &str, abilities: &[&str]) -> Self {
        Self {
            id,
            owner_id: owner_id.into(),
            environment: "live".into(),
            key_prefix: "sk_live_abcdefgh".into(),
            abilities: abilities.iter().map(|s| s.to_string()).collect(),
            superkey: false,
            rate_limit: None,
            has_credits: false,
            expires_at: None,
            revoked_at: None,
            owner_suspended: false,
            deleted: false,
            metadata: BTreeMap::new(),
            allow_list: AllowList::default(),
            imported: false,
        }
    }

    pub fn from_key(key: &ApiKey, owner_suspended: bool) -> Self {
        Self {
            id: key.id,
            owner_id: key.owner_id.clone(),
            environment: key.environment.clone(),
            key_prefix: key.key_prefix.clone(),
            abilities: key.abilities.clone(),
            superkey: key.superkey,
            rate_limit: key.rate_limit,
            has_credits: key.credits.is_some(),
            expires_at: key.expires_at,
            revoked_at: key.revoked_at,
            owner_suspended,
            deleted: key.deleted_at.is_some(),
            metadata: key.metadata.clone(),
            allow_list: AllowList::from_stored(&key.allowed_cidrs),
            imported: key.imported,
        }
    }
}

/// An owner's suspension state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub owner_id: String,
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspension_reason: Option<String>,
}
