//! The JSON shapes of the REST API: the proto's fields in snake_case,
//! timestamps in RFC 3339, an absent value as `null`. Conversions from the
//! domain live beside each shape; no shape ever holds a key hash, and only
//! [`IssuedKey`] / [`RotatedKey`] hold a plaintext key.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    admin::pages::{ListKeyPage, NumberedPage},
    domain::{self, AuditEvent, KeyState, KeyUsage},
};

/// What the create and rotate responses say about the plaintext key.
pub const KEY_SHOWN_ONCE: &str = "Store this key securely. It will not be shown again.";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[schema(minimum = 1)]
    pub max_attempts: u32,
    #[schema(minimum = 1)]
    pub decay_seconds: u32,
}

impl From<RateLimit> for domain::RateLimit {
    fn from(limit: RateLimit) -> Self {
        Self {
            max_attempts: limit.max_attempts,
            decay_seconds: limit.decay_seconds,
        }
    }
}

impl From<domain::RateLimit> for RateLimit {
    fn from(limit: domain::RateLimit) -> Self {
        Self {
            max_attempts: limit.max_attempts,
            decay_seconds: limit.decay_seconds,
        }
    }
}

/// A key's budget of calls: each allowed Check spends one; at zero Check
/// answers 429 `credits_exhausted`. `remaining` excludes credits replicas
/// hold in leases.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credits {
    pub remaining: u64,
    /// With `refill_interval_seconds`: `remaining` is set back to this
    /// every interval.
    #[schema(minimum = 1)]
    pub refill_amount: Option<u64>,
    #[schema(minimum = 1)]
    pub refill_interval_seconds: Option<u32>,
}

impl From<Credits> for domain::Credits {
    fn from(credits: Credits) -> Self {
        let refill = match (credits.refill_amount, credits.refill_interval_seconds) {
            (None, None) => None,
            // One without the other is refused by validation (zero is invalid).
            (amount, interval) => Some(domain::Refill {
                amount: amount.unwrap_or(0),
                interval_seconds: interval.unwrap_or(0),
            }),
        };
        Self {
            remaining: credits.remaining,
            refill,
        }
    }
}

impl From<domain::Credits> for Credits {
    fn from(credits: domain::Credits) -> Self {
        Self {
            remaining: credits.remaining,
            refill_amount: credits.refill.map(|r| r.amount),
            refill_interval_seconds: credits.refill.map(|r| r.interval_seconds),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Active,
    /// Revoked by a rotation, still usable until `revoked_at`.
    Rotating,
    Revoked,
    Expired,
}

/// A key, masked: never the secret or its hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub owner_id: String,
    pub name: String,
    pub environment: String,
    pub key_prefix: String,
    pub masked_key: String,
    pub abilities: Vec<String>,
    pub superkey: bool,
    pub rate_limit: Option<RateLimit>,
    pub credits: Option<Credits>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revocation_reason: Option<String>,
    pub state: State,
    pub rotated_from_id: Option<Uuid>,
    pub rotated_to_id: Option<Uuid>,
    pub request_count: u64,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Networks (CIDRs, IPv4 or IPv6) the key may be used from; empty
    /// allows every address.
    pub allowed_cidrs: Vec<String>,
    /// Brought from another system (`keygate import`, `ImportKeys`).
    pub imported: bool,
    /// Who issued the key: the admin token's name, or `key:<prefix>` for a
    /// key acting through the REST API.
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ApiKey {
    pub fn of(key: domain::ApiKey, now: DateTime<Utc>) -> Self {
        let state = match key.state(now) {
            KeyState::Active => State::Active,
            KeyState::Rotating => State::Rotating,
            KeyState::Revoked => State::Revoked,
            KeyState::Expired => State::Expired,
        };
        Self {
            masked_key: key.masked_key(),
            state,
            id: key.id,
            owner_id: key.owner_id,
            name: key.name,
            environment: key.environment,
            key_prefix: key.key_prefix,
            abilities: key.abilities,
            superkey: key.superkey,
            rate_limit: key.rate_limit.map(Into::into),
            credits: key.credits.map(Into::into),
            expires_at: key.expires_at,
            revoked_at: key.revoked_at,
            revocation_reason: key.revocation_reason,
            rotated_from_id: key.rotated_from_id,
            rotated_to_id: key.rotated_to_id,
            request_count: key.request_count,
            last_used_at: key.last_used_at,
            last_used_ip: key.last_used_ip,
            metadata: key.metadata,
            allowed_cidrs: key.allowed_cidrs,
            imported: key.imported,
            created_by: key.created_by,
            created_at: key.created_at,
            updated_at: key.updated_at,
        }
    }
}

/// `POST /v1/api-keys`. `abilities` absent or `null` (and `superkey` not
/// given) issues a superkey, as the JSON key packages do.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    /// Required with a service or admin token; a key acts for its own owner.
    pub owner_id: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// One of the configured environments; the first configured one
    /// (`KEYGATE_ENVIRONMENTS`, `live` by default) when omitted.
    pub environment: Option<String>,
    pub abilities: Option<Vec<String>>,
    pub superkey: Option<bool>,
    pub rate_limit: Option<RateLimit>,
    pub credits: Option<Credits>,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Networks the key may be used from (`203.0.113.0/24`,
    /// `2001:db8::/32`, or a bare address); empty or absent allows every
    /// address. Check denies any other client with 403 `ip_not_allowed`.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub allowed_cidrs: Vec<String>,
}

/// `PATCH /v1/api-keys/{id}`: the fields present are changed. `rate_limit:
/// null` removes the key's own limit; `environment` cannot be changed (422).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyBody {
    pub owner_id: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    pub abilities: Option<Vec<String>>,
    pub superkey: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
    /// Sets the credits anew (leases held by replicas become void); `null`
    /// removes them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Credits>)]
    pub credits: Option<Option<Credits>>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// Replaces the allow-list; `[]` allows every address again.
    #[schema(max_items = 100)]
    pub allowed_cidrs: Option<Vec<String>>,
    /// Immutable: sending it is refused with 422.
    #[schema(value_type = Option<String>)]
    pub environment: Option<serde_json::Value>,
}

/// Tells `"rate_limit": null` (present, clear it) from an absent field.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `POST /v1/api-keys/{id}/rotate`; the body may be omitted.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyBody {
    pub owner_id: Option<String>,
    /// How long the old key keeps working; 0 (the default) revokes it now.
    #[serde(default)]
    pub overlap_minutes: u32,
}

/// `DELETE /v1/api-keys/{id}` and the admin revoke; the body may be omitted.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyBody {
    pub owner_id: Option<String>,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: String,
}

/// `POST /v1/admin/owners/{owner_id}/suspend`; the body may be omitted.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendOwnerBody {
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: String,
}

/// The owner named with a service or admin token on routes without a body.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OwnerQuery {
    /// Required with a service or admin token; a key acts for its own owner.
    pub owner_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListKeysQuery {
    /// Required with a service or admin token; on the admin route a filter.
    pub owner_id: Option<String>,
    /// 1 or more; default 1.
    #[param(minimum = 1)]
    pub page: Option<u64>,
    /// 1 or more; default 20, capped at 100.
    #[param(minimum = 1)]
    pub per_page: Option<u64>,
    /// Only keys of this environment.
    #[serde(default)]
    pub environment: String,
    /// Also list revoked keys.
    #[serde(default)]
    pub include_revoked: bool,
}

impl ListKeysQuery {
    /// The use-case request; `owner_id` as the caller resolved it.
    pub fn for_owner(self, owner_id: Option<String>) -> ListKeyPage {
        ListKeyPage {
            owner_id,
            environment: self.environment,
            include_revoked: self.include_revoked,
            page: self.page,
            per_page: self.per_page,
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    pub owner_id: Option<String>,
    /// Recent log entries to return; default 20, capped at 100.
    pub recent: Option<u32>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub key_id: Option<String>,
    pub owner_id: Option<String>,
    /// e.g. `api_key.created`.
    pub event: Option<String>,
    /// Default 50, capped at 500.
    pub per_page: Option<u32>,
    /// `meta.next_page_token` of the previous page.
    pub page_token: Option<String>,
}

/// `{"data": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyData {
    pub data: ApiKey,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PageMeta {
    pub page: u64,
    pub per_page: u32,
    pub total: u64,
    pub last_page: u64,
}

/// `{"data": [ApiKey…], "meta": {page, per_page, total, last_page}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<ApiKey>,
    pub meta: PageMeta,
}

impl KeyList {
    pub fn of(page: NumberedPage<domain::ApiKey>, now: DateTime<Utc>) -> Self {
        Self {
            data: page.items.into_iter().map(|k| ApiKey::of(k, now)).collect(),
            meta: PageMeta {
                page: page.page,
                per_page: page.per_page,
                total: page.total,
                last_page: page.last_page,
            },
        }
    }
}

/// A key just issued: the plaintext `key` appears here and nowhere else.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKey {
    pub key: String,
    pub message: &'static str,
    pub api_key: ApiKey,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKeyData {
    pub data: IssuedKey,
}

/// A rotation: the successor's plaintext, the successor and the old key.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    pub key: String,
    pub message: &'static str,
    pub api_key: ApiKey,
    pub previous: ApiKey,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKeyData {
    pub data: RotatedKey,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScopesData {
    pub data: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointCount {
    pub endpoint: String,
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLogEntry {
    /// The latest of the requests this row stands for.
    pub at: DateTime<Utc>,
    pub method: String,
    pub endpoint: String,
    pub ip: Option<String>,
    pub decision: String,
    /// Requests of this key in this second with the same method, endpoint,
    /// IP and decision, coalesced into this row.
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub request_count: u64,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub top_endpoints: Vec<EndpointCount>,
    pub recent_logs: Vec<UsageLogEntry>,
}

impl Usage {
    pub fn of(key: domain::ApiKey, usage: KeyUsage) -> Self {
        Self {
            request_count: key.request_count,
            last_used_at: key.last_used_at,
            last_used_ip: key.last_used_ip,
            top_endpoints: usage
                .top_endpoints
                .into_iter()
                .map(|(endpoint, count)| EndpointCount { endpoint, count })
                .collect(),
            recent_logs: usage
                .recent_logs
                .into_iter()
                .map(|entry| UsageLogEntry {
                    at: entry.at,
                    method: entry.method,
                    endpoint: entry.endpoint,
                    ip: entry.ip,
                    decision: entry.decision,
                    count: entry.count.max(1) as u64,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageData {
    pub data: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Owner {
    pub owner_id: String,
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspension_reason: Option<String>,
}

impl From<domain::Owner> for Owner {
    fn from(owner: domain::Owner) -> Self {
        Self {
            owner_id: owner.owner_id,
            suspended_at: owner.suspended_at,
            suspension_reason: owner.suspension_reason,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OwnerData {
    pub data: Owner,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AuditEvent)]
pub struct AuditEventJson {
    pub id: Uuid,
    pub event: String,
    pub key_id: Option<Uuid>,
    pub owner_id: Option<String>,
    pub key_prefix: Option<String>,
    pub actor: String,
    pub metadata: BTreeMap<String, String>,
    pub at: DateTime<Utc>,
}

impl From<AuditEvent> for AuditEventJson {
    fn from(event: AuditEvent) -> Self {
        Self {
            id: event.id,
            event: event.event,
            key_id: event.key_id,
            owner_id: event.owner_id,
            key_prefix: event.key_prefix,
            actor: event.actor,
            metadata: event.metadata,
            at: event.at,
        }
    }
}

/// Audit events page by cursor: the log only grows, so a total is not kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditMeta {
    pub per_page: u32,
    /// Pass as `page_token` for the next page; `null` on the last page.
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventList {
    pub data: Vec<AuditEventJson>,
    pub meta: AuditMeta,
}
