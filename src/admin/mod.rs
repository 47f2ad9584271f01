//! Key lifecycle use-cases: create, read, list, update, rotate, revoke,
//! usage, owner suspension, audit listing and pruning.
//!
//! Every mutation is stored with its audit event in one transaction, then
//! evicts the affected keys from this replica's cache before returning, so a
//! Check on this replica never sees the old state after the call returns.

pub mod caller;
pub mod ceiling;
pub mod hygiene;
pub mod page_token;
pub mod pages;
pub mod validate;
pub mod webhooks;

use std::{collections::BTreeMap, sync::Arc, time::Duration as StdDuration};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::{
    clock::Clock,
    domain::{
        ability, Ability, AbilityError, ApiKey, AuditEvent, Credits, Echo, KeyFormat, KeyUsage,
        Owner, PlaintextKey, RateLimit,
    },
    replica_state::ReplicaKeyState,
    store::{
        AuditFilter, AuditRecord, Cursor, KeyChanges, KeyFilter, NewKey, PruneSummary, Store,
        StoreError,
    },
};

pub use caller::{parse_admin_tokens, AdminRole, AdminToken, Caller};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
pub const DEFAULT_RECENT_LOGS: u32 = 20;
pub const MAX_RECENT_LOGS: u32 = 100;
const TOP_ENDPOINTS: u32 = 10;

/// What callers may ask for, beyond the shape of their input.
#[derive(Debug, Clone)]
pub struct AdminPolicy {
    /// Longest overlap a rotation may keep the old key working for.
    pub max_rotation_overlap: StdDuration,
    /// Whether `service` tokens may grant or raise `superkey`.
    pub services_may_grant_superkey: bool,
}

impl Default for AdminPolicy {
    fn default() -> Self {
        Self {
            max_rotation_overlap: StdDuration::from_secs(7 * 24 * 60 * 60),
            services_may_grant_superkey: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("owner_id must be 1 to 255 characters, without surrounding whitespace or control or format characters (zero-width, bidi)")]
    InvalidOwnerId,
    #[error("name must be 1 to 100 characters, without surrounding whitespace or control or format characters (got {chars} characters)")]
    InvalidName { chars: usize },
    #[error("environment {0} is not configured")]
    UnknownEnvironment(Echo),
    #[error(transparent)]
    InvalidAbility(#[from] AbilityError),
    #[error("a key may hold at most {max} abilities (got {got})", max = validate::MAX_ABILITIES_PER_KEY)]
    TooManyAbilities { got: usize },
    #[error("expires_at must be in the future")]
    ExpiryInPast,
    #[error("rate_limit needs max_attempts and decay_seconds greater than zero")]
    InvalidRateLimit,
    #[error("credits: refill_amount and refill_interval_seconds go together, both greater than zero, and no number may exceed 9223372036854775807")]
    InvalidCredits,
    #[error("metadata allows 50 entries, keys of 1 to 40 characters and values of up to 500")]
    InvalidMetadata,
    #[error(transparent)]
    InvalidCidr(#[from] crate::domain::CidrError),
    #[error("reason must be at most 500 printable characters")]
    InvalidReason,
    #[error("id must be a UUID")]
    InvalidId,
    #[error("page_size must not be negative")]
    InvalidPageSize,
    #[error("{0} must be 1 or more")]
    InvalidPageNumber(&'static str),
    #[error(transparent)]
    InvalidPageToken(#[from] page_token::BadPageToken),
    #[error("update_mask path {0} cannot be changed")]
    ImmutableField(Echo),
    #[error("update_mask path {0} is not a field of ApiKey")]
    UnknownField(Echo),
    #[error("update_mask must name at least one field")]
    EmptyUpdateMask,
    #[error("no such key")]
    NotFound,
    #[error("the key belongs to another owner")]
    OtherOwnersKey,
    #[error("this call requires an admin token")]
    AdminRoleRequired,
    #[error("a feed token may call only KeyFeed (WatchKeys, ReportUsage)")]
    FeedRoleOnlyFollowsTheFeed,
    #[error("KeyFeed requires an admin or feed token")]
    FeedRoleRequired,
    #[error("the calling key does not hold {0:?}, so it cannot grant it")]
    AboveCallerAbilities(String),
    #[error("the calling key may be used only from its allowed_cidrs, so it cannot grant {0}")]
    AboveCallerNetworks(String),
    #[error("only an admin token may grant superkey")]
    SuperkeyRequiresAdmin,
    #[error("owner already holds the maximum of {limit} keys")]
    OwnerKeyLimit { limit: u32 },
    #[error("the key is already revoked")]
    AlreadyRevoked,
    #[error("the key has expired; create a new one instead")]
    AlreadyExpired,
    #[error("overlap_minutes would keep the old key working past the year 9999")]
    OverlapTooLong,
    #[error("the server stopped during the change; read the key before retrying")]
    Interrupted,
    #[error("overlap_minutes may be at most {max_minutes}")]
    OverlapAboveMaximum { max_minutes: u64 },
    #[error("the owner would hold more than {limit} keys plus one in rotation overlap; rotate with overlap_minutes = 0 or revoke a key first")]
    RotationOverlapLimit { limit: u32 },
    #[error(transparent)]
    InvalidWebhookUrl(crate::webhooks::target::TargetError),
    #[error("event type {0} is not one keygate sends")]
    UnknownEventType(Echo),
    #[error("no such webhook")]
    WebhookNotFound,
    #[error("the webhook belongs to another owner")]
    OtherOwnersWebhook,
    #[error("no such delivery for this webhook")]
    DeliveryNotFound,
    #[error("owner already holds the maximum of {limit} webhooks")]
    OwnerWebhookLimit { limit: u32 },
    #[error("imports are off: list the prefixes of the keys to import in KEYGATE_IMPORTED_PREFIXES first, or Check would never find them")]
    ImportsDisabled,
    #[error("the server's random source failed")]
    RandomSourceFailed,
    #[error("the key store failed")]
    Store(#[source] StoreError),
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => AdminError::NotFound,
            StoreError::OwnerKeyLimit { limit } => AdminError::OwnerKeyLimit { limit },
            StoreError::AlreadyRevoked => AdminError::AlreadyRevoked,
            StoreError::OwnerWebhookLimit { limit } => AdminError::OwnerWebhookLimit { limit },
            other => AdminError::Store(other),
        }
    }
}

pub type AdminResult<T> = Result<T, AdminError>;

/// A key just issued: the plaintext, shown once, and the stored record.
#[derive(Debug)]
pub struct Issued {
    pub plaintext: PlaintextKey,
    pub key: ApiKey,
}

#[derive(Debug, Clone, Default)]
pub struct CreateKey {
    pub owner_id: String,
    pub name: String,
    pub environment: String,
    pub abilities: Vec<String>,
    pub superkey: bool,
    pub rate_limit: Option<RateLimit>,
    pub credits: Option<Credits>,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: BTreeMap<String, String>,
    pub allowed_cidrs: Vec<String>,
}

/// An update as requested: the mask's paths and the values they refer to.
#[derive(Debug, Clone, Default)]
pub struct UpdateKey {
    pub paths: Vec<String>,
    pub name: String,
    pub abilities: Vec<String>,
    pub superkey: bool,
    pub rate_limit: Option<RateLimit>,
    pub credits: Option<Credits>,
    pub metadata: BTreeMap<String, String>,
    pub allowed_cidrs: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ListKeys {
    pub owner_id: Option<String>,
    pub environment: String,
    pub include_revoked: bool,
    pub page_size: i32,
    pub page_token: String,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
    pub total_size: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct ListAudit {
    pub key_id: String,
    pub owner_id: String,
    pub event: String,
    pub page_size: i32,
    pub page_token: String,
}

pub struct KeyAdmin {
    store: Store,
    format: KeyFormat,
    catalog: Vec<Ability>,
    max_keys_per_owner: u32,
    retention_days: u32,
    replica: ReplicaKeyState,
    policy: AdminPolicy,
    /// Read from the database (or made there) on first use.
    page_key: OnceCell<page_token::PageKey>,
    /// Which URLs webhooks may be registered with.
    webhook_targets: crate::webhooks::TargetPolicy,
    /// Seals webhook signing secrets; read from the database on first use.
    seal_key: OnceCell<crate::webhooks::SealKey>,
    /// Dormancy, imports and leak reports.
    hygiene: hygiene::HygienePolicy,
    /// Every instant a use-case records or compares.
    clock: Clock,
}

pub fn parse_id(raw: &str) -> AdminResult<Uuid> {
    Uuid::try_parse(raw.trim()).map_err(|_| AdminError::InvalidId)
}

fn audit_log(record: &AuditRecord, key: Option<&ApiKey>, owner_id: &str) {
    tracing::info!(
        target: "keygate::audit",
        event = record.event,
        actor = %record.actor,
        owner_id,
        key_id = key.map(|k| k.id.to_string()).unwrap_or_default(),
        key_prefix = key.map(|k| k.key_prefix.as_str()).unwrap_or_default(),
        metadata = ?record.metadata,
        "audit"
    );
}

impl KeyAdmin {
    pub fn new(
        store: Store,
        format: KeyFormat,
        catalog: Vec<Ability>,
        max_keys_per_owner: u32,
        retention_days: u32,
        replica: ReplicaKeyState,
    ) -> Self {
        Self {
            store,
            format,
            catalog,
            max_keys_per_owner,
            retention_days,
            replica,
            policy: AdminPolicy::default(),
            page_key: OnceCell::new(),
            webhook_targets: crate::webhooks::TargetPolicy::default(),
            seal_key: OnceCell::new(),
            hygiene: hygiene::HygienePolicy::default(),
            clock: Clock::system(),
        }
    }

    /// Reads the current instant from `clock` (the system clock otherwise).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The instant the use-cases work at; transports show a key's state as
    /// of it.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn with_webhook_targets(mut self, targets: crate::webhooks::TargetPolicy) -> Self {
        self.webhook_targets = targets;
        self
    }

    /// Runs a mutation on its own task so that it finishes, cache
    /// invalidation included, even if the client goes away mid-call: a commit
    /// whose local invalidation never ran would leave this replica answering
    /// from the old row until the cache TTL (SQLite has no NOTIFY to catch up
    /// with). Every transport's mutating handlers go through here.
    pub async fn run_to_completion<T, F, Fut>(self: &Arc<Self>, mutation: F) -> AdminResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<KeyAdmin>) -> Fut,
        Fut: std::future::Future<Output = AdminResult<T>> + Send + 'static,
    {
        match tokio::spawn(mutation(self.clone())).await {
            Ok(done) => done,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(AdminError::Interrupted),
        }
    }

    /// The step after every committed change to a key: this replica
    /// forgets what it held about it (the same step a notification runs on
    /// the other replicas) before the call returns, and the audit event
    /// goes to the log.
    async fn after_key_change(&self, audit: &AuditRecord, key: &ApiKey) {
        self.replica.forget_key(key.id).await;
        audit_log(audit, Some(key), &key.owner_id);
    }

    pub fn with_policy(mut self, policy: AdminPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn abilities(&self) -> &[Ability] {
        &self.catalog
    }

    /// The key sealing page tokens, shared by every replica through the
    /// database.
    async fn page_key(&self) -> AdminResult<&page_token::PageKey> {
        self.page_key
            .get_or_try_init(|| async {
                use rand::{rngs::OsRng, TryRngCore};
                let mut fresh = [0u8; 32];
                OsRng
                    .try_fill_bytes(&mut fresh)
                    .expect("the OS random source is available");
                let secret = self
                    .store
                    .shared_secret(page_token::SECRET_NAME, &fresh, self.now())
                    .await?;
                Ok(page_token::PageKey::new(&secret))
            })
            .await
    }

    /// Refuses `superkey = true` from a caller that may not grant it.
    fn may_grant_superkey(&self, caller: &Caller, superkey: bool) -> AdminResult<()> {
        let allowed =
            !superkey || caller.role == AdminRole::Admin || self.policy.services_may_grant_superkey;
        if allowed {
            Ok(())
        } else {
            Err(AdminError::SuperkeyRequiresAdmin)
        }
    }

    fn abilities_of(&self, raw: &[String]) -> AdminResult<Vec<String>> {
        validate::ability_count(raw)?;
        Ok(ability::parse_all(raw, &self.catalog)?
            .into_iter()
            .map(|a| a.as_str().to_owned())
            .collect())
    }

    /// Reads a key and checks that `owner_id` owns it.
    async fn owned_key(&self, owner_id: &str, id: &str) -> AdminResult<ApiKey> {
        let owner_id = validate::owner_id(owner_id)?;
        let key = self.store.get_key(parse_id(id)?).await?;
        if key.owner_id != owner_id {
            return Err(AdminError::OtherOwnersKey);
        }
        Ok(key)
    }

    fn new_key(&self, template: NewKeyTemplate, now: DateTime<Utc>) -> (PlaintextKey, NewKey) {
        let issued = self.format.generate(&template.environment);
        let new = NewKey {
            id: Uuid::now_v7(),
            owner_id: template.owner_id,
            name: template.name,
            environment: template.environment,
            key_hash: issued.hash,
            key_prefix: issued.key_prefix,
            abilities: template.abilities,
            superkey: template.superkey,
            rate_limit: template.rate_limit,
            credits: template.credits,
            expires_at: template.expires_at,
            metadata: template.metadata,
            allowed_cidrs: template.allowed_cidrs,
            imported: false,
            rotated_from_id: template.rotated_from_id,
            created_by: Some(template.created_by),
            created_at: now,
        };
        // Known to Check before the store commits it, so no Check can find
        // the new key missing from the set.
        self.replica
            .cache()
            .issued()
            .insert(crate::issued_keys::prefix(&new.key_hash));
        (issued.plaintext, new)
    }

    pub async fn create_key(&self, caller: &Caller, request: CreateKey) -> AdminResult<Issued> {
        let now = self.now();
        let owner_id = validate::owner_id(&request.owner_id)?.to_owned();
        let name = validate::name(&request.name)?;
        let environment = match request.environment.trim() {
            "" => self.format.default_environment().to_owned(),
            env if self.format.has_environment(env) => env.to_owned(),
            env => return Err(AdminError::UnknownEnvironment(Echo::of(env))),
        };
        self.may_grant_superkey(caller, request.superkey)?;
        let template = NewKeyTemplate {
            owner_id,
            name,
            environment,
            abilities: self.abilities_of(&request.abilities)?,
            superkey: request.superkey,
            rate_limit: validate::rate_limit(request.rate_limit)?,
            credits: validate::credits(request.credits)?,
            expires_at: validate::expiry(request.expires_at, now)?,
            metadata: validate::metadata(request.metadata)?,
            allowed_cidrs: crate::domain::allow_list::validate(&request.allowed_cidrs)?,
            rotated_from_id: None,
            created_by: caller.actor.clone(),
        };
        let (plaintext, new) = self.new_key(template, now);
        let audit = AuditRecord::new("api_key.created", &caller.actor)
            .with("environment", new.environment.clone())
            .with("name", new.name.clone());
        let key = self
            .store
            .insert_key(&new, Some(self.max_keys_per_owner), &audit)
            .await?;
        self.replica.key_issued(key.id);
        audit_log(&audit, Some(&key), &key.owner_id);
        Ok(Issued { plaintext, key })
    }

    pub async fn get_key(&self, owner_id: &str, id: &str) -> AdminResult<ApiKey> {
        self.owned_key(owner_id, id).await
    }

    /// Lists keys newest first. `request.owner_id = None` lists across owners
    /// (admin only; the gRPC layer enforces the role).
    pub async fn list_keys(&self, request: ListKeys) -> AdminResult<Page<ApiKey>> {
        let filter = self.key_filter(
            request.owner_id.as_deref(),
            &request.environment,
            request.include_revoked,
        )?;
        let limit = validate::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let query = page_token::fingerprint(&[
            "keys",
            filter.owner_id.as_deref().unwrap_or("*"),
            filter.environment.as_deref().unwrap_or("*"),
            if request.include_revoked {
                "all"
            } else {
                "live"
            },
        ]);
        let page_key = self.page_key().await?;
        let after = page_token::decode(page_key, &request.page_token, query)?
            .map(|(created_at, id)| Cursor { created_at, id });
        let (keys, total) = self.store.list_keys(&filter, after, limit).await?;
        let next_page_token = next_token(page_key, &keys, limit, query, |k| (k.created_at, k.id));
        Ok(Page {
            items: keys,
            next_page_token,
            total_size: Some(total),
        })
    }

    /// A listing's filter: `owner_id = None` spans owners; an empty
    /// environment means every environment.
    fn key_filter(
        &self,
        owner_id: Option<&str>,
        environment: &str,
        include_revoked: bool,
    ) -> AdminResult<KeyFilter> {
        Ok(KeyFilter {
            owner_id: owner_id
                .map(validate::owner_id)
                .transpose()?
                .map(str::to_owned),
            environment: self.environment_filter(environment)?,
            include_revoked,
            now: self.now(),
        })
    }

    /// A listing's environment filter: empty means every environment.
    fn environment_filter(&self, raw: &str) -> AdminResult<Option<String>> {
        match raw.trim() {
            "" => Ok(None),
            env if self.format.has_environment(env) => Ok(Some(env.to_owned())),
            env => Err(AdminError::UnknownEnvironment(Echo::of(env))),
        }
    }

    pub async fn update_key(
        &self,
        caller: &Caller,
        owner_id: &str,
        id: &str,
        update: UpdateKey,
    ) -> AdminResult<ApiKey> {
        if update.paths.is_empty() {
            return Err(AdminError::EmptyUpdateMask);
        }
        let mut changes = KeyChanges::default();
        for path in &update.paths {
            match path.as_str() {
                "name" => changes.name = Some(validate::name(&update.name)?),
                "abilities" => changes.abilities = Some(self.abilities_of(&update.abilities)?),
                "superkey" => {
                    self.may_grant_superkey(caller, update.superkey)?;
                    changes.superkey = Some(update.superkey);
                }
                "rate_limit" => changes.rate_limit = Some(validate::rate_limit(update.rate_limit)?),
                "credits" => changes.credits = Some(validate::credits(update.credits)?),
                "metadata" => changes.metadata = Some(validate::metadata(update.metadata.clone())?),
                "allowed_cidrs" => {
                    changes.allowed_cidrs =
                        Some(crate::domain::allow_list::validate(&update.allowed_cidrs)?)
                }
                "environment" | "id" | "owner_id" | "key_prefix" | "masked_key" | "expires_at"
                | "revoked_at" | "created_at" | "updated_at" | "rotated_from_id"
                | "rotated_to_id" | "request_count" | "last_used_at" | "last_used_ip" | "state"
                | "revocation_reason" | "imported" => {
                    return Err(AdminError::ImmutableField(Echo::of(path)))
                }
                other => return Err(AdminError::UnknownField(Echo::of(other))),
            }
        }
        let key = self.owned_key(owner_id, id).await?;
        let audit = AuditRecord::new("api_key.updated", &caller.actor)
            .with("fields", changes.field_names().join(","));
        let updated = self
            .store
            .update_key(key.id, &changes, self.now(), &audit)
            .await?;
        self.after_key_change(&audit, &updated).await;
        Ok(updated)
    }

    /// Issues a successor with the same settings; the old key stops working
    /// now or after `overlap_minutes`, never later than its own expiry.
    ///
    /// An overlap keeps two keys live, so a chain of overlapping rotations
    /// could otherwise grow an owner past `max_keys_per_owner`: one that
    /// would leave the owner more than that plus one live key is refused.
    pub async fn rotate_key(
        &self,
        caller: &Caller,
        owner_id: &str,
        id: &str,
        overlap_minutes: u32,
    ) -> AdminResult<(Issued, ApiKey)> {
        let overlap = StdDuration::from_secs(u64::from(overlap_minutes) * 60);
        if overlap > self.policy.max_rotation_overlap {
            return Err(AdminError::OverlapAboveMaximum {
                max_minutes: self.policy.max_rotation_overlap.as_secs() / 60,
            });
        }
        let old = self.owned_key(owner_id, id).await?;
        if old.is_revoked() {
            return Err(AdminError::AlreadyRevoked);
        }
        let now = self.now();
        if old.expires_at.is_some_and(|expiry| expiry <= now) {
            // The successor would inherit the expiry and be born dead.
            return Err(AdminError::AlreadyExpired);
        }
        let overlap_end = now + Duration::minutes(i64::from(overlap_minutes));
        let old_revoked_at = old
            .expires_at
            .map_or(overlap_end, |expiry| overlap_end.min(expiry))
            .max(now);
        if old_revoked_at.timestamp() > validate::MAX_TIMESTAMP_SECONDS {
            return Err(AdminError::OverlapTooLong);
        }
        let template = NewKeyTemplate {
            owner_id: old.owner_id.clone(),
            name: old.name.clone(),
            environment: old.environment.clone(),
            abilities: old.abilities.clone(),
            superkey: old.superkey,
            rate_limit: old.rate_limit,
            // The store moves the old key's unleased credits over.
            credits: old.credits,
            expires_at: old.expires_at,
            metadata: old.metadata.clone(),
            allowed_cidrs: old.allowed_cidrs.clone(),
            rotated_from_id: Some(old.id),
            created_by: caller.actor.clone(),
        };
        let (plaintext, new) = self.new_key(template, now);
        let audit = AuditRecord::new("api_key.rotated", &caller.actor)
            .with("rotated_to_id", new.id.to_string())
            .with("rotated_to_prefix", new.key_prefix.clone())
            .with("overlap_minutes", overlap_minutes.to_string())
            .with("revoked_at", old_revoked_at.to_rfc3339());
        let limit = self.max_keys_per_owner;
        let live_after_limit = (old_revoked_at > now).then_some(limit.saturating_add(1));
        let (key, previous) = self
            .store
            .rotate_key(old.id, &new, old_revoked_at, live_after_limit, &audit)
            .await
            .map_err(|error| match error {
                StoreError::OwnerKeyLimit { .. } => AdminError::RotationOverlapLimit { limit },
                other => other.into(),
            })?;
        self.replica.key_issued(key.id);
        self.after_key_change(&audit, &previous).await;
        Ok((Issued { plaintext, key }, previous))
    }

    /// Revokes a key now. `owner_id = None` is the admin form (any owner).
    pub async fn revoke_key(
        &self,
        caller: &Caller,
        owner_id: Option<&str>,
        id: &str,
        reason: &str,
    ) -> AdminResult<ApiKey> {
        let reason = validate::reason(reason)?;
        let key = match owner_id {
            Some(owner_id) => self.owned_key(owner_id, id).await?,
            None => self.store.get_key(parse_id(id)?).await?,
        };
        let event = if owner_id.is_some() {
            "api_key.revoked"
        } else {
            "api_key.admin_revoked"
        };
        let reason = if reason.is_empty() {
            "revoked".to_owned()
        } else {
            reason
        };
        let audit = AuditRecord::new(event, &caller.actor).with("reason", reason.clone());
        let revoked = self
            .store
            .revoke_key(key.id, &reason, self.now(), &audit)
            .await?;
        self.after_key_change(&audit, &revoked).await;
        Ok(revoked)
    }

    pub async fn key_usage(
        &self,
        owner_id: &str,
        id: &str,
        recent_limit: i32,
    ) -> AdminResult<(ApiKey, KeyUsage)> {
        let recent = validate::page_size(recent_limit, DEFAULT_RECENT_LOGS, MAX_RECENT_LOGS)?;
        let key = self.owned_key(owner_id, id).await?;
        let since = (self.now() - Duration::days(i64::from(self.retention_days))).date_naive();
        let usage = self
            .store
            .key_usage(key.id, since, TOP_ENDPOINTS, recent)
            .await?;
        Ok((key, usage))
    }

    pub async fn set_owner_suspension(
        &self,
        caller: &Caller,
        owner_id: &str,
        suspend: Option<&str>,
    ) -> AdminResult<Owner> {
        let owner_id = validate::owner_id(owner_id)?;
        let reason = suspend.map(validate::reason).transpose()?;
        let audit = match &reason {
            Some(reason) => {
                AuditRecord::new("owner.suspended", &caller.actor).with("reason", reason.clone())
            }
            None => AuditRecord::new("owner.resumed", &caller.actor),
        };
        let owner = self
            .store
            .set_owner_suspension(owner_id, reason.as_deref(), self.now(), &audit)
            .await?;
        self.replica.forget_owner(owner_id);
        audit_log(&audit, None, owner_id);
        Ok(owner)
    }

    pub async fn list_audit(&self, request: ListAudit) -> AdminResult<Page<AuditEvent>> {
        let limit = validate::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let filter = AuditFilter {
            key_id: Some(request.key_id.trim())
                .filter(|s| !s.is_empty())
                .map(parse_id)
                .transpose()?,
            owner_id: Some(request.owner_id.trim())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            event: Some(request.event.trim())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        };
        let key_part = filter.key_id.map(|k| k.to_string()).unwrap_or_default();
        let query = page_token::fingerprint(&[
            "audit",
            &key_part,
            filter.owner_id.as_deref().unwrap_or(""),
            filter.event.as_deref().unwrap_or(""),
        ]);
        let page_key = self.page_key().await?;
        let after = page_token::decode(page_key, &request.page_token, query)?;
        let events = self.store.list_audit(&filter, after, limit).await?;
        let next_page_token = next_token(page_key, &events, limit, query, |e| (e.at, e.id));
        Ok(Page {
            items: events,
            next_page_token,
            total_size: None,
        })
    }

    /// Soft-deletes expired keys and deletes usage past the retention.
    /// `None` when another replica is pruning. A test of dormancy or
    /// expiry moves the clock (`Clock::manual`) instead of waiting.
    pub async fn prune(&self, actor: &str) -> AdminResult<Option<PruneSummary>> {
        let now = self.now();
        let cutoff = now - Duration::days(i64::from(self.retention_days));
        let dormant_before = self
            .hygiene
            .dormant_after
            .and_then(|after| Duration::from_std(after).ok())
            .and_then(|after| now.checked_sub_signed(after));
        let summary = self.store.prune(now, cutoff, dormant_before, actor).await?;
        if let Some(summary) = &summary {
            if summary.keys_expired > 0 || summary.keys_dormant > 0 {
                // Which keys is not returned; expired keys already fail Check
                // by time, and a full clear only costs refills. The key
                // feed's followers take a fresh snapshot (on SQLite no
                // notification tells them of these keys).
                self.replica.forget_everything();
            }
            tracing::info!(
                target: "keygate::prune",
                keys_expired = summary.keys_expired,
                keys_dormant = summary.keys_dormant,
                usage_logs_deleted = summary.usage_logs_deleted,
                daily_counts_deleted = summary.daily_counts_deleted,
                webhook_deliveries_deleted = summary.webhook_deliveries_deleted,
                leak_reports_deleted = summary.leak_reports_deleted,
                "prune finished"
            );
        }
        Ok(summary)
    }
}

/// The token for the page after `items`: empty when this page was not full.
fn next_token<T>(
    key: &page_token::PageKey,
    items: &[T],
    limit: u32,
    query: [u8; 8],
    position: impl Fn(&T) -> (DateTime<Utc>, Uuid),
) -> String {
    match items.last() {
        Some(last) if items.len() == limit as usize => {
            let (at, id) = position(last);
            page_token::encode(key, at, id, query)
        }
        _ => String::new(),
    }
}

/// The settings a new key is issued with (by create or by rotation).
struct NewKeyTemplate {
    owner_id: String,
    name: String,
    environment: String,
    abilities: Vec<String>,
    superkey: bool,
    rate_limit: Option<RateLimit>,
    credits: Option<Credits>,
    expires_at: Option<DateTime<Utc>>,
    metadata: BTreeMap<String, String>,
    allowed_cidrs: Vec<String>,
    rotated_from_id: Option<Uuid>,
    /// The acting token's name or key's id.
    created_by: String,
}
