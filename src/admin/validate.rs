//! Input rules for KeyAdmin, checked before anything is stored.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use super::AdminError;
use crate::domain::{Credits, RateLimit};

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_OWNER_ID_CHARS: usize = 255;
pub const MAX_METADATA_ENTRIES: usize = 50;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;
pub const MAX_REASON_CHARS: usize = 500;
/// Abilities one key may hold: far above any real role, low enough that
/// validating a request stays a matter of microseconds.
pub const MAX_ABILITIES_PER_KEY: usize = 256;
/// The range of seconds a `google.protobuf.Timestamp` may carry (years 1 to
/// 9999). Beyond year 9999 SQLite's RFC 3339 text no longer sorts
/// chronologically, so no stored instant may leave it.
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Characters that are invisible or reorder text: controls, format
/// characters (zero-width spaces and joiners, bidi overrides, the BOM) and
/// line or paragraph separators. In an identifier they make two owners that
/// look the same (`bob` and `bob\u{200b}`) or a name that displays as
/// something else.
fn invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// An identifier as it is shown: no surrounding whitespace, nothing
/// invisible, 1 to `max` characters.
fn plain(raw: &str, max: usize) -> bool {
    !raw.is_empty()
        && raw.trim() == raw
        && raw.chars().count() <= max
        && !raw.chars().any(invisible)
}

pub fn owner_id(raw: &str) -> Result<&str, AdminError> {
    if !plain(raw, MAX_OWNER_ID_CHARS) {
        return Err(AdminError::InvalidOwnerId);
    }
    Ok(raw)
}

pub fn name(raw: &str) -> Result<String, AdminError> {
    if !plain(raw, MAX_NAME_CHARS) {
        return Err(AdminError::InvalidName {
            chars: raw.chars().count(),
        });
    }
    Ok(raw.to_owned())
}

/// Refuses a list longer than [`MAX_ABILITIES_PER_KEY`] before any entry is
/// parsed.
pub fn ability_count(raw: &[String]) -> Result<(), AdminError> {
    if raw.len() > MAX_ABILITIES_PER_KEY {
        return Err(AdminError::TooManyAbilities { got: raw.len() });
    }
    Ok(())
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

/// Credits as stored: a refill has both an amount and an interval, and
/// every number fits the store's signed 64-bit columns.
pub fn credits(credits: Option<Credits>) -> Result<Option<Credits>, AdminError> {
    let Some(credits) = credits else {
        return Ok(None);
    };
    let too_big = |n: u64| i64::try_from(n).is_err();
    let refill_ok = credits
        .refill
        .is_none_or(|r| r.amount > 0 && r.interval_seconds > 0 && !too_big(r.amount));
    if too_big(credits.remaining) || !refill_ok {
        return Err(AdminError::InvalidCredits);
    }
    Ok(Some(credits))
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
    fn identifiers_refuse_surrounding_whitespace_and_invisible_characters() {
        for bad in [
            " bob",
            "bob ",
            "bob\t",
            "\u{a0}bob",
            "bob\u{200b}",
            "b\u{200d}ob",
            "bob\u{202e}",
            "\u{2066}bob",
            "\u{feff}bob",
            "bo\u{ad}b",
            "bob\u{2028}x",
            "bo\u{0}b",
            "",
        ] {
            assert!(owner_id(bad).is_err(), "owner_id {bad:?}");
            assert!(name(bad).is_err(), "name {bad:?}");
        }
        for good in ["bob", "Bob Smith", "владелец-7", "用户", "acme/billing:eu"] {
            assert_eq!(owner_id(good).unwrap(), good);
            assert_eq!(name(good).unwrap(), good);
        }
        assert!(owner_id(&"o".repeat(MAX_OWNER_ID_CHARS)).is_ok());
        assert!(owner_id(&"o".repeat(MAX_OWNER_ID_CHARS + 1)).is_err());
    }

    #[test]
    fn at_most_256_abilities_per_key() {
        let list = |n| vec!["read:orders".to_owned(); n];
        assert!(ability_count(&list(MAX_ABILITIES_PER_KEY)).is_ok());
        assert!(matches!(
            ability_count(&list(MAX_ABILITIES_PER_KEY + 1)),
            Err(AdminError::TooManyAbilities { got: 257 })
        ));
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0, 50, 500).unwrap(), 50);
        assert_eq!(page_size(9999, 50, 500).unwrap(), 500);
        assert!(page_size(-1, 50, 500).is_err());
    }

    #[test]
    fn credits_need_a_whole_refill_and_numbers_the_store_can_hold() {
        use crate::domain::{Credits, Refill};
        let credits = |remaining, refill| credits(Some(Credits { remaining, refill }));
        let refill = |amount, interval_seconds| {
            Some(Refill {
                amount,
                interval_seconds,
            })
        };
        assert!(credits(0, None).is_ok());
        assert!(credits(10, refill(5, 60)).is_ok());
        for bad in [refill(0, 60), refill(5, 0), refill(u64::MAX, 60)] {
            assert!(matches!(credits(1, bad), Err(AdminError::InvalidCredits)));
        }
        assert!(matches!(
            credits(u64::MAX, None),
            Err(AdminError::InvalidCredits)
        ));
    }
}
