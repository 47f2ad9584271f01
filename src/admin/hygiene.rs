//! Key hygiene use-cases (docs/behaviour.md, "Key hygiene"): keys imported
//! from another system and leaked keys reported. Dormancy is part of
//! [`KeyAdmin::prune`].

use std::{collections::BTreeMap, collections::HashMap, fmt, time::Duration as StdDuration};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::{audit_log, validate, AdminError, AdminResult, Caller, KeyAdmin};
use crate::{
    domain::{allow_list, ApiKey, KeyHash},
    leaks,
    store::{AuditRecord, ImportedRow, NewKey},
};

/// Keys stored per import transaction: large enough for a fast import,
/// small enough that one failure loses little work.
const IMPORT_BATCH: usize = 1000;
/// Display characters kept after an imported key's prefix.
const DISPLAY_CHARS: usize = 8;
/// What stands for the display prefix of a key imported by hash alone.
const UNKNOWN_DISPLAY_PREFIX: &str = "imported_";

/// The hygiene settings the use-cases follow.
#[derive(Debug, Clone, Default)]
pub struct HygienePolicy {
    pub dormant_after: Option<StdDuration>,
    pub imported_prefixes: Vec<String>,
    pub leak_action: LeakAction,
}

/// What a leak report does to a key keygate knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LeakAction {
    /// Revoke it at once (reason `leaked: <url>`).
    #[default]
    Revoke,
    /// Record the audit event and send the webhook; the key keeps working.
    Notify,
}

/// An imported key's plaintext; `Debug` never shows it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ImportedSecret(String);

impl ImportedSecret {
    pub fn new(plaintext: String) -> Self {
        Self(plaintext)
    }
}

impl fmt::Debug for ImportedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ImportedSecret([redacted])")
    }
}

/// One key to import, as a JSON Lines row of `keygate import` or an
/// `ImportKeys` entry. Exactly one of `key` and `key_sha256`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRow {
    pub owner_id: String,
    pub name: String,
    #[serde(default)]
    pub environment: String,
    #[serde(default)]
    pub abilities: Vec<String>,
    #[serde(default)]
    pub superkey: bool,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// The plaintext key.
    #[serde(default)]
    pub key: Option<ImportedSecret>,
    /// Hex SHA-256 of the whole key string.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// What is shown of the key (e.g. `lk_AbCdEfGh`); derived from `key`
    /// when absent.
    #[serde(default)]
    pub key_prefix: Option<String>,
}

/// What became of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Imported {
        id: Uuid,
    },
    /// A key with the same hash is already stored: nothing changed.
    AlreadyPresent {
        id: Uuid,
    },
    /// Refused, with why; nothing of it was stored.
    Invalid {
        reason: String,
    },
}

impl KeyAdmin {
    pub fn with_hygiene(mut self, hygiene: HygienePolicy) -> Self {
        self.hygiene = hygiene;
        self
    }

    /// Imports keys from another system so that their holders keep using
    /// them. Rows are judged one by one: a bad row is reported and skipped,
    /// never half-written; a key already stored is reported and left alone
    /// (an import can be run again). Rows are stored in batches, each in
    /// one transaction with its audit events.
    pub async fn import_keys(
        &self,
        caller: &Caller,
        rows: Vec<Result<ImportRow, String>>,
    ) -> AdminResult<Vec<RowOutcome>> {
        caller.require_admin()?;
        if self.hygiene.imported_prefixes.is_empty() {
            return Err(AdminError::ImportsDisabled);
        }
        let now = self.now();
        let mut outcomes: Vec<Option<RowOutcome>> = vec![None; rows.len()];
        let mut first_row_of: HashMap<KeyHash, usize> = HashMap::with_capacity(rows.len());
        let mut valid: Vec<(usize, NewKey)> = Vec::with_capacity(rows.len());
        for (index, row) in rows.into_iter().enumerate() {
            let judged = row.and_then(|row| self.imported_key(caller, row, now));
            match judged {
                Ok(new) => match first_row_of.get(&new.key_hash) {
                    Some(first) => {
                        outcomes[index] = Some(RowOutcome::Invalid {
                            reason: format!("the same key as row {}", first + 1),
                        })
                    }
                    None => {
                        first_row_of.insert(new.key_hash, index);
                        valid.push((index, new));
                    }
                },
                Err(reason) => outcomes[index] = Some(RowOutcome::Invalid { reason }),
            }
        }
        for (_, new) in &valid {
            // Known to Check before the store commits them (as for CreateKey),
            // and no longer "unknown" to this replica's negative cache.
            let cache = self.replica.cache();
            cache
                .issued()
                .insert(crate::issued_keys::prefix(&new.key_hash));
            cache.forget_unknown(&new.key_hash);
        }
        for batch in valid.chunks(IMPORT_BATCH) {
            let keys: Vec<NewKey> = batch.iter().map(|(_, new)| new.clone()).collect();
            let stored = self
                .store
                .import_keys(&keys, self.max_keys_per_owner, &caller.actor, now)
                .await?;
            for ((index, new), stored) in batch.iter().zip(stored) {
                outcomes[*index] = Some(match stored {
                    ImportedRow::Inserted => {
                        tracing::info!(
                            target: "keygate::audit",
                            event = "api_key.imported",
                            actor = %caller.actor,
                            owner_id = %new.owner_id,
                            key_id = %new.id,
                            key_prefix = %new.key_prefix,
                            "audit"
                        );
                        RowOutcome::Imported { id: new.id }
                    }
                    ImportedRow::Present(id) => RowOutcome::AlreadyPresent { id },
                    ImportedRow::OwnerLimit(limit) => RowOutcome::Invalid {
                        reason: AdminError::OwnerKeyLimit { limit }.to_string(),
                    },
                });
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or(RowOutcome::Invalid {
                    reason: "not judged".into(),
                })
            })
            .collect())
    }

    /// Validates one row into the key to store, or says why it cannot be.
    fn imported_key(
        &self,
        caller: &Caller,
        row: ImportRow,
        now: DateTime<Utc>,
    ) -> Result<NewKey, String> {
        let text = |e: AdminError| e.to_string();
        let owner_id = validate::owner_id(&row.owner_id).map_err(text)?.to_owned();
        let name = validate::name(&row.name).map_err(text)?;
        let environment = match row.environment.trim() {
            "" => self.format.default_environment().to_owned(),
            env if self.format.has_environment(env) => env.to_owned(),
            env => {
                return Err(AdminError::UnknownEnvironment(crate::domain::Echo::of(env)).to_string())
            }
        };
        self.may_grant_superkey(caller, row.superkey)
            .map_err(text)?;
        let abilities = self.abilities_of(&row.abilities).map_err(text)?;
        let expires_at = validate::expiry(row.expires_at, now).map_err(text)?;
        let metadata = validate::metadata(row.metadata).map_err(text)?;
        let allowed_cidrs = allow_list::validate(&row.allowed_cidrs).map_err(|e| e.to_string())?;
        let (key_hash, derived_prefix) = match (row.key, row.key_sha256) {
            (Some(ImportedSecret(key)), None) => {
                let prefix = self.imported_prefix_of(&key).ok_or_else(|| {
                    "key does not start with a prefix listed in KEYGATE_IMPORTED_PREFIXES"
                        .to_owned()
                })?;
                if key.len() > 512 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("key must be at most 512 printable ASCII characters".into());
                }
                if self.format.parse(&key).is_ok() {
                    return Err("key is in keygate's own format; it needs no import".into());
                }
                let shown = key[prefix.len()..]
                    .chars()
                    .take(DISPLAY_CHARS.min((key.len() - prefix.len()) / 2))
                    .collect::<String>();
                (KeyHash::of_imported(&key), Some(format!("{prefix}{shown}")))
            }
            (None, Some(hex_digest)) => {
                let digest = hex::decode(hex_digest.trim()).map_err(|_| {
                    "key_sha256 must be hexadecimal (the SHA-256 of the whole key)".to_owned()
                })?;
                let hash = KeyHash::from_bytes(&digest).ok_or_else(|| {
                    format!(
                        "key_sha256 must be 64 hexadecimal digits (32 bytes), got {} bytes",
                        digest.len()
                    )
                })?;
                (hash, None)
            }
            (Some(_), Some(_)) => return Err("give key or key_sha256, not both".into()),
            (None, None) => return Err("key or key_sha256 is required".into()),
        };
        let key_prefix = match (row.key_prefix.map(|p| p.trim().to_owned()), derived_prefix) {
            (Some(_), Some(_)) => {
                return Err("key_prefix is taken from key; give it only with key_sha256".into())
            }
            (Some(shown), None) => {
                if shown.is_empty()
                    || shown.len() > 32
                    || !shown.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err("key_prefix must be 1 to 32 printable ASCII characters".into());
                }
                shown
            }
            (None, Some(derived)) => derived,
            // With one imported prefix configured, it is the key's.
            (None, None) => match self.hygiene.imported_prefixes.as_slice() {
                [only] => only.clone(),
                _ => UNKNOWN_DISPLAY_PREFIX.to_owned(),
            },
        };
        Ok(NewKey {
            id: Uuid::now_v7(),
            owner_id,
            name,
            environment,
            key_hash,
            key_prefix,
            abilities,
            superkey: row.superkey,
            rate_limit: None,
            credits: None,
            expires_at,
            metadata,
            allowed_cidrs,
            imported: true,
            rotated_from_id: None,
            created_by: Some(caller.actor.clone()),
            created_at: now,
        })
    }

    fn imported_prefix_of<'a>(&'a self, key: &str) -> Option<&'a str> {
        self.hygiene
            .imported_prefixes
            .iter()
            .map(String::as_str)
            .find(|prefix| key.starts_with(prefix))
    }

    /// The stored key a credential names, if any: keygate's own keys by
    /// the hash of their token, imported ones by the hash of the whole
    /// string. Anything else is unknown, however close to a real key.
    async fn key_named_by(&self, credential: &str) -> AdminResult<Option<ApiKey>> {
        let credential = credential.trim();
        let (hash, imported) = match self.format.parse(credential) {
            Ok(parsed) => (parsed.hash(), false),
            Err(_) if self.imported_prefix_of(credential).is_some() => {
                (KeyHash::of_imported(credential), true)
            }
            Err(_) => return Ok(None),
        };
        let key = self.store.find_key_by_hash(&hash).await?;
        Ok(key.filter(|key| key.imported == imported))
    }

    /// Acts on a report that `credential` was published at `url`: with
    /// `KEYGATE_LEAK_ACTION=revoke` a key keygate knows is revoked now
    /// (reason `leaked: <url>`) on every replica; either way the
    /// `api_key.leaked` event is recorded and sent to webhooks. `None` when
    /// the credential is no key of ours.
    pub async fn report_leak(
        &self,
        actor: &str,
        credential: &str,
        url: &str,
    ) -> AdminResult<Option<ApiKey>> {
        let Some(key) = self.key_named_by(credential).await? else {
            return Ok(None);
        };
        let now = self.now();
        let reason = leaks::revocation_reason(url);
        let revoke = self.hygiene.leak_action == LeakAction::Revoke
            && key.revoked_at.is_none_or(|at| at > now);
        let audit = AuditRecord::new("api_key.leaked", actor)
            .with("reason", reason.clone())
            .with("action", if revoke { "revoked" } else { "notified" });
        if revoke {
            let revoked = self.store.revoke_key(key.id, &reason, now, &audit).await?;
            self.after_key_change(&audit, &revoked).await;
            Ok(Some(revoked))
        } else {
            self.store.record_key_event(&key, &audit, now).await?;
            audit_log(&audit, Some(&key), &key.owner_id);
            Ok(Some(key))
        }
    }
}

/// What a signed secret-scanning report came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The same body was handled before: nothing was done.
    Replayed,
    /// One flag per reported token, in order: whether it is a key of ours.
    Handled(Vec<bool>),
}

impl KeyAdmin {
    /// Handles a verified report once: its body's digest is recorded first,
    /// so that a replay changes nothing; if handling fails the record is
    /// dropped again, so that the reporter's retry is handled.
    pub async fn handle_leak_report(
        &self,
        actor: &str,
        body: &[u8],
        tokens: &[leaks::ReportedToken],
    ) -> AdminResult<ReportOutcome> {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(body).into();
        if !self.store.claim_leak_report(&digest, self.now()).await? {
            return Ok(ReportOutcome::Replayed);
        }
        let mut known = Vec::with_capacity(tokens.len());
        for reported in tokens {
            match self
                .report_leak(actor, &reported.token, &reported.url)
                .await
            {
                Ok(found) => known.push(found.is_some()),
                Err(error) => {
                    if let Err(release) = self.store.release_leak_report(&digest).await {
                        tracing::warn!(error = %release, "a failed leak report stays recorded; its retry will be refused");
                    }
                    return Err(error);
                }
            }
        }
        Ok(ReportOutcome::Handled(known))
    }
}
