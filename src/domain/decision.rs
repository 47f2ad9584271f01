//! The pure Check decision: given a cached key, what the route requires and
//! the current instant, allow or name the reason for denial.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::ability::grants;
use super::api_key::CheckKey;

/// Why a request is denied. A denial is a value, not an error: it becomes an
/// ordinary Check response carrying an HTTP status for Envoy to return.
///
/// What each transport says about a reason is one row of [`REASONS`]; a new
/// reason is a variant, its place in [`DenyReason::index`] and [`ALL`], and
/// its row (the tests below hold the three together).
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

/// The `google.rpc.Code` of an ext_authz denial's status. Envoy answers the
/// client with the HTTP status; the gRPC code is what its logs and the
/// gRPC-mode metrics show. Numbers as in `google/rpc/code.proto`, so the
/// domain needs no gRPC crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum RpcCode {
    InvalidArgument = 3,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unauthenticated = 16,
}

/// Everything a transport says about one reason.
#[derive(Debug)]
pub struct ReasonRow {
    /// The stable machine-readable code clients and dashboards depend on.
    pub code: &'static str,
    pub http_status: u16,
    pub rpc_code: RpcCode,
    /// The REST API's error `code` when a key acting through it is denied:
    /// the class of error, as the REST API names every other one
    /// (docs/behaviour.md, §8).
    pub rest_code: &'static str,
    /// The `message` of the JSON error body.
    pub message: &'static str,
}

const fn row(code: &'static str, http_status: u16, message: &'static str) -> ReasonRow {
    let (rpc_code, rest_code) = match http_status {
        400 => (RpcCode::InvalidArgument, "bad_request"),
        401 => (RpcCode::Unauthenticated, "unauthenticated"),
        403 => (RpcCode::PermissionDenied, "forbidden"),
        _ => (RpcCode::ResourceExhausted, "rate_limited"),
    };
    ReasonRow {
        code,
        http_status,
        rpc_code,
        rest_code,
        message,
    }
}

/// How many reasons there are.
pub const REASON_COUNT: usize = 12;

/// One row per reason, in [`DenyReason::index`] order.
pub static REASONS: [ReasonRow; REASON_COUNT] = REASON_TABLE;

const REASON_TABLE: [ReasonRow; REASON_COUNT] = [
    row("missing_credentials", 401,
        "An API key is required: send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header."),
    row("malformed_key", 401,
        "The API key is malformed: check that it was copied completely."),
    row("invalid_key", 401, "The API key is not valid."),
    row("key_revoked", 401, "The API key has been revoked."),
    row("key_expired", 401, "The API key has expired."),
    row("owner_suspended", 403,
        "The account that owns this API key is suspended."),
    row("environment_not_allowed", 403,
        "This API key's environment is not allowed on this route."),
    row("insufficient_ability", 403,
        "This API key lacks an ability this route requires."),
    row("rate_limited", 429,
        "Too many requests for this API key; retry after the time in Retry-After."),
    row("invalid_path", 400,
        "The request path is ambiguous: an encoded slash or backslash, a backslash, a relative path, .. above the root or an invalid percent-escape."),
    // Spent credits are not a rate: the REST API says which it is.
    ReasonRow {
        rest_code: "credits_exhausted",
        ..row("credits_exhausted", 429, "This API key has no credits left.")
    },
    row(
        "ip_not_allowed",
        403,
        "This API key may not be used from this client's IP address.",
    ),
];

/// One reason of each kind, in [`DenyReason::index`] order; the
/// rate-limited one says to retry at once.
pub const ALL: [DenyReason; REASON_COUNT] = [
    DenyReason::MissingCredentials,
    DenyReason::MalformedKey,
    DenyReason::InvalidKey,
    DenyReason::KeyRevoked,
    DenyReason::KeyExpired,
    DenyReason::OwnerSuspended,
    DenyReason::EnvironmentNotAllowed,
    DenyReason::InsufficientAbility,
    DenyReason::RateLimited {
        retry_after_secs: 0,
    },
    DenyReason::InvalidPath,
    DenyReason::CreditsExhausted,
    DenyReason::IpNotAllowed,
];

impl DenyReason {
    /// This reason's row in [`REASONS`] (and place in [`ALL`]).
    pub const fn index(&self) -> usize {
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

    pub fn row(&self) -> &'static ReasonRow {
        &REASONS[self.index()]
    }

    pub fn code(&self) -> &'static str {
        self.row().code
    }

    pub fn http_status(&self) -> u16 {
        self.row().http_status
    }

    pub fn message(&self) -> &'static str {
        self.row().message
    }

    /// One reason of each kind, in [`ALL`] order; the rate-limited one
    /// carries `retry_after_secs`.
    pub fn one_of_each(retry_after_secs: u64) -> [DenyReason; REASON_COUNT] {
        ALL.map(|reason| match reason {
            Self::RateLimited { .. } => Self::RateLimited { retry_after_secs },
            other => other,
        })
    }

    /// Every code, in [`ALL`] order, for metrics that should show zeros
    /// before the first hit.
    pub const ALL_CODES: [&'static str; REASON_COUNT] = {
        let mut codes = [""; REASON_COUNT];
        let mut i = 0;
        while i < REASON_COUNT {
            codes[i] = REASON_TABLE[i].code;
            i += 1;
        }
        codes
    };
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
    fn every_reason_has_its_own_row() {
        let mut codes = std::collections::HashSet::new();
        for (i, reason) in ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?} is out of place in ALL");
            assert!(
                codes.insert(reason.code()),
                "{} is listed twice",
                reason.code()
            );
            assert_eq!(DenyReason::ALL_CODES[i], reason.code());
            let expected_rpc = match reason.http_status() {
                400 => RpcCode::InvalidArgument,
                401 => RpcCode::Unauthenticated,
                403 => RpcCode::PermissionDenied,
                429 => RpcCode::ResourceExhausted,
                other => panic!("{reason:?} has an unexpected status {other}"),
            };
            assert_eq!(reason.row().rpc_code, expected_rpc, "{reason:?}");
            assert!(reason.message().ends_with('.'), "{reason:?}");
        }
    }

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
