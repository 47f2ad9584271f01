//! Input rules for KeyAdmin, checked before anything is stored.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};

use super::AdminError;
use crate::domain::RateLimit;

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_OWNER_ID_CHARS: usize = 255;
pub const MAX_METADATA_ENTRIES: usize = 50;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;
pub const MAX_REASON_CHARS: usize = 500;
/// The range of seconds a `google.protobuf.Timestamp` may carry (years 1 to
/// 9999). Beyond year 9999 SQLite's RFC 3339 text no longer sorts
/// chronologically, so no stored instant may leave it.
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

pub fn owner_id(raw: &str) -> Result<&str, AdminError> {
    let count = raw.chars().count();
    if raw.trim().is_empty() || count > MAX_OWNER_ID_CHARS || !printable(raw) {
        return Err(AdminError::InvalidOwnerId);
    }
    Ok(raw)
}

pub fn name(raw: &str) -> Result<String, AdminError> {
    let trimmed = raw.trim();
    let count = trimmed.chars().count();
    if count == 0 || count > MAX_NAME_CHARS || !printable(trimmed) {
        return Err(AdminError::InvalidName { chars: count });
    }
    Ok(trimmed.to_owned())
}

/// A future expiry, at the microsecond precision both stores keep, so that
/// every backend reads back the instant it was given.
pub fn expiry(
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, AdminError> {
    match expires_at.map(|at| at.trunc_subsecs(6)) {
        Some(at) if at <= now => Err(AdminError::ExpiryInPast),
        other => Ok(other),
    }
}

pub fn rate_limit(limit: Option<RateLimit>) -> Result<Option<RateLimit>, AdminError> {
    match limit {
        Some(l) if l.max_attempts == 0 || l.decay_seconds == 0 => Err(AdminError::InvalidRateLimit),
        other => Ok(other),
    }
}

pub fn metadata(raw: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, AdminError> {
    let too_big = raw.len() > MAX_METADATA_ENTRIES
        || raw.iter().any(|(k, v)| {
            k.is_empty()
                || k.chars().count() > MAX_METADATA_KEY_CHARS
                || v.chars().count() > MAX_METADATA_VALUE_CHARS
                || !printable(k)
        });
    if too_big {
        return Err(AdminError::InvalidMetadata);
    }
    Ok(raw)
}

pub fn reason(raw: &str) -> Result<String, AdminError> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > MAX_REASON_CHARS || !printable(trimmed) {
        return Err(AdminError::InvalidReason);
    }
    Ok(trimmed.to_owned())
}

pub fn page_size(requested: i32, default: u32, max: u32) -> Result<u32, AdminError> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err(AdminError::InvalidPageSize),
        n => Ok((n as u32).min(max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_to_a_hundred_characters() {
        assert!(name("").is_err());
        assert!(name("   ").is_err());
        assert_eq!(name(&"é".repeat(100)).unwrap().chars().count(), 100);
        assert!(matches!(
            name(&"a".repeat(101)),
            Err(AdminError::InvalidName { chars: 101 })
        ));
        assert!(name("line\nbreak").is_err());
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0, 50, 500).unwrap(), 50);
        assert_eq!(page_size(9999, 50, 500).unwrap(), 500);
        assert!(page_size(-1, 50, 500).is_err());
    }
}
