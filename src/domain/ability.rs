//! Abilities such as `read:orders`, their wildcards and the catalog check.
//!
//! A key holding `x:*` is granted every ability that starts with `x:`; one
//! holding `*` (or a superkey) is granted everything.

use std::{collections::BTreeSet, fmt};

use super::Echo;

pub const MAX_ABILITY_LENGTH: usize = 100;

/// A validated ability string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ability(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbilityError {
    #[error("ability {0} must be 1 to 100 characters of letters, digits and _ . : -, optionally ending in :* (or exactly *)")]
    Malformed(Echo),
    #[error("ability {0} is not in the configured catalog")]
    NotInCatalog(Echo),
}

impl Ability {
    pub fn parse(raw: &str) -> Result<Self, AbilityError> {
        let body = raw.strip_suffix(":*").unwrap_or(raw);
        let well_formed = raw == "*"
            || (!raw.is_empty()
                && raw.len() <= MAX_ABILITY_LENGTH
                && !body.is_empty()
                && body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')));
        if well_formed {
            Ok(Self(raw.to_owned()))
        } else {
            Err(AbilityError::Malformed(Echo::of(raw)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0 == "*" || self.0.ends_with(":*")
    }

    /// Whether holding `self` grants `required`.
    pub fn grants(&self, required: &str) -> bool {
        grants(&self.0, required)
    }
}

impl fmt::Display for Ability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a held ability string grants a required one.
pub fn grants(held: &str, required: &str) -> bool {
    if held == "*" || held == required {
        return true;
    }
    // `orders:*` grants `orders:read`: keep the colon, drop the star.
    held.strip_suffix('*')
        .filter(|stem| stem.ends_with(':'))
        .is_some_and(|stem| required.len() > stem.len() && required.starts_with(stem))
}

/// Parses a list of abilities and, when a catalog is configured, checks each
/// against it. A wildcard is accepted when it covers at least one catalog
/// entry, so `orders:*` is valid exactly when some `orders:…` ability exists.
/// Repeats are dropped, keeping the first occurrence's place, in
/// O(n log n).
pub fn parse_all(raw: &[String], catalog: &[Ability]) -> Result<Vec<Ability>, AbilityError> {
    let mut parsed = Vec::with_capacity(raw.len());
    let mut seen = BTreeSet::new();
    for item in raw {
        let item = item.trim();
        let ability = Ability::parse(item)?;
        if !catalog.is_empty() {
            let known = if ability.is_wildcard() {
                catalog.iter().any(|c| ability.grants(c.as_str()))
            } else {
                catalog.contains(&ability)
            };
            if !known {
                return Err(AbilityError::NotInCatalog(Echo::of(&ability.0)));
            }
        }
        if seen.insert(item) {
            parsed.push(ability);
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_grant_their_family_only() {
        assert!(grants("orders:*", "orders:read"));
        assert!(grants("orders:*", "orders:read:deep"));
        assert!(!grants("orders:*", "orders:"));
        assert!(!grants("orders:*", "ordersx:read"));
        assert!(!grants("orders:*", "users:read"));
        assert!(grants("*", "anything:at_all"));
        assert!(grants("read:orders", "read:orders"));
        assert!(!grants("read:orders", "read:orders2"));
    }

    #[test]
    fn malformed_abilities_are_rejected() {
        for bad in ["", "a b", "x*", "*:*", ":*", "é", &"a".repeat(101)] {
            assert!(Ability::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in ["*", "read:orders", "orders:*", "a.b-c_d:e"] {
            assert!(Ability::parse(good).is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn catalog_rejects_unknown_abilities_and_accepts_covering_wildcards() {
        let catalog = vec![
            Ability::parse("read:orders").unwrap(),
            Ability::parse("write:orders").unwrap(),
        ];
        assert!(parse_all(&["read:orders".into()], &catalog).is_ok());
        assert!(parse_all(&["read:*".into()], &catalog).is_ok());
        assert_eq!(
            parse_all(&["delete:orders".into()], &catalog),
            Err(AbilityError::NotInCatalog("delete:orders".into()))
        );
        assert!(parse_all(&["anything".into()], &[]).is_ok());
    }

    #[test]
    fn repeats_are_dropped_keeping_first_occurrences_in_order() {
        let raw: Vec<String> = ["b", "a", "b", " a ", "c", "a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let parsed = parse_all(&raw, &[]).unwrap();
        let names: Vec<&str> = parsed.iter().map(Ability::as_str).collect();
        assert_eq!(names, ["b", "a", "c"]);
    }

    #[test]
    fn a_huge_malformed_ability_is_echoed_as_a_short_prefix() {
        let message = Ability::parse(&"x ".repeat(500_000))
            .unwrap_err()
            .to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains("(1000000 bytes)"), "{message}");
    }
}
