//! The pure Check decision: given a cached key, what the route requires and
//! the current instant, allow or name the reason for denial.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::ability::grants;
use super::api_key::CheckKey;

/// Why a request is denied. A denial is a value, not an error: it becomes an
/// ordinary Check response carrying an HTTP status for Envoy to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    MissingCredentials,
    MalformedKey,
    InvalidKey,
    KeyRevoked,
    KeyExpired,
    OwnerSuspended,
    EnvironmentNotAllowed,
    InsufficientAbility,
    RateLimited {
        retry_after_secs: u64,
    },
    /// Route rules apply and the path cannot be normalised unambiguously
    /// (`domain::path`).
    InvalidPath,
    /// The key's credits are spent (docs/behaviour.md, "Credits").
    CreditsExhausted,
    /// The client's address is outside the key's allow-list
    /// (docs/behaviour.md, "Key hygiene").
    IpNotAllowed,
}

impl DenyReason {
    /// The stable machine-readable code clients and dashboards depend on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing_credentials",
            Self::MalformedKey => "malformed_key",
            Self::InvalidKey => "invalid_key",
            Self::KeyRevoked => "key_revoked",
            Self::KeyExpired => "key_expired",
            Self::OwnerSuspended => "owner_suspended",
            Self::EnvironmentNotAllowed => "environment_not_allowed",
            Self::InsufficientAbility => "insufficient_ability",
            Self::RateLimited { .. } => "rate_limited",
            Self::InvalidPath => "invalid_path",
            Self::CreditsExhausted => "credits_exhausted",
            Self::IpNotAllowed => "ip_not_allowed",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Self::MissingCredentials
            | Self::MalformedKey
            | Self::InvalidKey
            | Self::KeyRevoked
            | Self::KeyExpired => 401,
            Self::OwnerSuspended
            | Self::EnvironmentNotAllowed
            | Self::InsufficientAbility
            | Self::IpNotAllowed => 403,
            Self::RateLimited { .. } | Self::CreditsExhausted => 429,
            Self::InvalidPath => 400,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Self::MissingCredentials => "An API key is required: send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header.",
            Self::MalformedKey => "The API key is malformed: check that it was copied completely.",
            Self::InvalidKey => "The API key is not valid.",
            Self::KeyRevoked => "The API key has been revoked.",
            Self::KeyExpired => "The API key has expired.",
            Self::OwnerSuspended => "The account that owns this API key is suspended.",
            Self::EnvironmentNotAllowed => "This API key's environment is not allowed on this route.",
            Self::InsufficientAbility => "This API key lacks an ability this route requires.",
            Self::RateLimited { .. } => "Too many requests for this API key; retry after the time in Retry-After.",
            Self::CreditsExhausted => "This API key has no credits left.",
            Self::IpNotAllowed => "This API key may not be used from this client's IP address.",
            Self::InvalidPath => "The request path is ambiguous: an encoded slash or backslash, a backslash, a relative path, .. above the root or an invalid percent-escape.",
        }
    }

    /// This reason's position in [`Self::ALL_CODES`], for tables indexed by
    /// reason.
    pub fn index(&self) -> usize {
        match self {
            Self::MissingCredentials => 0,
            Self::MalformedKey => 1,
            Self::InvalidKey => 2,
            Self::KeyRevoked => 3,
            Self::KeyExpired => 4,
            Self::OwnerSuspended => 5,
            Self::EnvironmentNotAllowed => 6,
            Self::InsufficientAbility => 7,
            Self::RateLimited { .. } => 8,
            Self::InvalidPath => 9,
            Self::CreditsExhausted => 10,
            Self::IpNotAllowed => 11,
        }
    }

    /// One reason of each kind, in [`Self::ALL_CODES`] order; the
    /// rate-limited one carries `retry_after_secs`.
    pub fn one_of_each(retry_after_secs: u64) -> [DenyReason; 12] {
        [
            Self::MissingCredentials,
            Self::MalformedKey,
            Self::InvalidKey,
            Self::KeyRevoked,
            Self::KeyExpired,
            Self::OwnerSuspended,
            Self::EnvironmentNotAllowed,
            Self::InsufficientAbility,
            Self::RateLimited { retry_after_secs },
            Self::InvalidPath,
            Self::CreditsExhausted,
            Self::IpNotAllowed,
        ]
    }

    /// Every code, for metrics that should show zeros before the first hit.
    pub const ALL_CODES: [&'static str; 12] = [
        "missing_credentials",
        "malformed_key",
        "invalid_key",
        "key_revoked",
        "key_expired",
        "owner_suspended",
        "environment_not_allowed",
        "insufficient_ability",
        "rate_limited",
        "invalid_path",
        "credits_exhausted",
        "ip_not_allowed",
    ];
}

/// What a route requires, borrowed from the Check request or the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteRequirements<'a> {
    /// Comma-separated abilities, all required.
    pub abilities: Option<&'a str>,
    pub environment: Option<&'a str>,
    /// Always allow; report the decision that would have been taken.
    pub shadow: bool,
}

impl<'a> RouteRequirements<'a> {
    pub fn required_abilities(&self) -> impl Iterator<Item = &'a str> {
        self.abilities
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
    }
}

/// Decides everything about a known key except its rate limit and credits.
/// Time conditions use `now`, never the instant the key was cached. The
/// allow-list comes before the route's requirements, so that a client
/// outside it learns nothing about what the key may do.
pub fn decide(
    key: &CheckKey,
    route: &RouteRequirements<'_>,
    client: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<(), DenyReason> {
    if key.revoked_at.is_some_and(|at| at <= now) {
        return Err(DenyReason::KeyRevoked);
    }
    if key.deleted || key.expires_at.is_some_and(|at| at <= now) {
        return Err(DenyReason::KeyExpired);
    }
    if key.owner_suspended {
        return Err(DenyReason::OwnerSuspended);
    }
    if !key.allow_list.permits(client) {
        return Err(DenyReason::IpNotAllowed);
    }
    if route.environment.is_some_and(|env| env != key.environment) {
        return Err(DenyReason::EnvironmentNotAllowed);
    }
    if !key.superkey {
        let mut required = route.required_abilities();
        if !required.all(|need| key.abilities.iter().any(|held| grants(held, need))) {
            return Err(DenyReason::InsufficientAbility);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use uuid::Uuid;

    #[test]
    fn every_reason_indexes_its_own_code() {
        for (index, reason) in DenyReason::one_of_each(1).into_iter().enumerate() {
            assert_eq!(reason.index(), index);
            assert_eq!(DenyReason::ALL_CODES[index], reason.code());
        }
    }

    fn key(abilities: &[&str]) -> CheckKey {
        CheckKey::sample(Uuid::nil(), "o", abilities)
    }

    fn route(abilities: &str) -> RouteRequirements<'_> {
        RouteRequirements {
            abilities: Some(abilities),
            ..Default::default()
        }
    }

    #[test]
    fn time_conditions_are_evaluated_at_check_time() {
        let now = Utc::now();
        let mut k = key(&[]);
        k.revoked_at = Some(now + Duration::minutes(5));
        assert_eq!(decide(&k, &route(""), None, now), Ok(()));
        assert_eq!(
            decide(&k, &route(""), None, now + Duration::minutes(5)),
            Err(DenyReason::KeyRevoked)
        );
        let mut k = key(&[]);
        k.expires_at = Some(now + Duration::seconds(1));
        assert_eq!(decide(&k, &route(""), None, now), Ok(()));
        assert_eq!(
            decide(&k, &route(""), None, now + Duration::seconds(2)),
            Err(DenyReason::KeyExpired)
        );
    }

    #[test]
    fn every_required_ability_must_be_granted() {
        let now = Utc::now();
        let k = key(&["read:orders", "users:*"]);
        assert_eq!(
            decide(&k, &route("read:orders, users:list"), None, now),
            Ok(())
        );
        assert_eq!(
            decide(&k, &route("read:orders,write:orders"), None, now),
            Err(DenyReason::InsufficientAbility)
        );
        assert_eq!(decide(&key(&[]), &route(""), None, now), Ok(()));
        assert_eq!(
            decide(&key(&[]), &route("read:orders"), None, now),
            Err(DenyReason::InsufficientAbility)
        );
        let mut superkey = key(&[]);
        superkey.superkey = true;
        assert_eq!(
            decide(&superkey, &route("anything:goes"), None, now),
            Ok(())
        );
    }

    #[test]
    fn suspension_and_environment_deny_with_403() {
        let now = Utc::now();
        let mut k = key(&[]);
        let live_only = RouteRequirements {
            environment: Some("test"),
            ..Default::default()
        };
        assert_eq!(
            decide(&k, &live_only, None, now),
            Err(DenyReason::EnvironmentNotAllowed)
        );
        k.owner_suspended = true;
        assert_eq!(
            decide(&k, &route(""), None, now),
            Err(DenyReason::OwnerSuspended)
        );
        assert_eq!(DenyReason::OwnerSuspended.http_status(), 403);
    }

    #[test]
    fn a_client_outside_the_allow_list_is_denied_before_abilities_are_judged() {
        let now = Utc::now();
        let mut k = key(&[]);
        k.allow_list = crate::domain::AllowList::from_stored(&["198.51.100.0/24".into()]);
        let inside = "198.51.100.4".parse().ok();
        let outside = "192.0.2.1".parse().ok();
        assert_eq!(decide(&k, &route(""), inside, now), Ok(()));
        assert_eq!(
            decide(&k, &route("read:orders"), outside, now),
            Err(DenyReason::IpNotAllowed)
        );
        assert_eq!(
            decide(&k, &route(""), None, now),
            Err(DenyReason::IpNotAllowed)
        );
        assert_eq!(DenyReason::IpNotAllowed.http_status(), 403);
    }
}
