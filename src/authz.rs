//! The Check decision: credential → cache/store → `decide(key, route, now)` →
//! rate limit, plus the usage event. The gRPC layer turns the [`Outcome`] into
//! an Envoy `CheckResponse`; nothing here knows the proto types.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use chrono::{DateTime, Utc};
use metrics::Counter;

use crate::{
    cache::{CachedKey, KeyCache, LookupError},
    clock::Clock,
    credits::{CreditLedger, Spend},
    domain::{
        decide, path, DenyReason, KeyFormat, KeyHash, KeyParseError, RateLimit, RouteRequirements,
        RouteRule,
    },
    ratelimit::{RateLimiters, RateOutcome},
    usage::{
        client_ip::client_ip, method_label, recorded_path, CheckEvent, EventPath, UsageSender,
    },
};

/// Longest credential tried as an imported key; longer ones are not hashed.
const MAX_IMPORTED_KEY_LEN: usize = 512;

/// Context-extension names Envoy sets per route (`check_settings`).
pub const EXT_ABILITIES: &str = "keygate.abilities";
pub const EXT_ENVIRONMENT: &str = "keygate.environment";
pub const EXT_MODE: &str = "keygate.mode";

/// A header value as received: text, or bytes that are not UTF-8.
pub type HeaderText<'a> = Result<&'a str, NotUtf8>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUtf8;

/// Which header carried the credential (it is stripped before upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Authorization,
    ApiKey,
}

/// What Check needs of a request, borrowed from it.
#[derive(Debug, Default)]
pub struct CheckInput<'a> {
    pub authorization: Option<HeaderText<'a>>,
    pub api_key: Option<HeaderText<'a>>,
    pub forwarded_for: Option<&'a str>,
    pub source_address: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub context_extensions: Option<&'a HashMap<String, String>>,
    /// Requirements the transport read itself (forward-auth's
    /// `Keygate-Require-*` headers); they win like context extensions do.
    pub requirements: Option<RouteRequirements<'a>>,
}

/// A limiter's answer as part of the decision: the headers of an
/// allowance, or the denial. Shared with the keygate-envoy filter.
pub fn rate_decision(outcome: RateOutcome) -> Result<Option<RateHeaders>, DenyReason> {
    match outcome {
        RateOutcome::Allowed {
            limit,
            remaining,
            reset_secs,
        } => Ok(Some(RateHeaders {
            limit,
            remaining,
            reset_secs,
        })),
        RateOutcome::Limited {
            retry_after_secs, ..
        } => Err(DenyReason::RateLimited { retry_after_secs }),
    }
}

/// Rate-limit state reported in response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

/// An allowed request and what to tell Envoy about it.
#[derive(Debug, Clone)]
pub struct Allowance {
    /// `None` for a foreign bearer token let through without identity, or a
    /// shadow-mode request that would have been denied.
    pub identity: Option<Arc<CachedKey>>,
    pub credential: Option<CredentialSource>,
    pub rate: Option<RateHeaders>,
    /// Inside a rotation overlap: when the key stops working.
    pub sunset: Option<DateTime<Utc>>,
    /// Shadow mode: the code the enforced decision would have produced.
    pub shadow_decision: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Allow(Allowance),
    Deny(DenyReason),
}

/// What Check does with a bearer token that does not carry our prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignBearer {
    /// Refused as `malformed_key` (the default).
    Deny,
    /// Allowed without an identity: another system's token, for upstream
    /// to judge.
    Allow,
}

/// What Check needs besides the cache and the limiters; built from the
/// configuration in `config`.
pub struct AuthzSettings {
    pub format: KeyFormat,
    pub foreign_bearer: ForeignBearer,
    pub default_rate_limit: Option<RateLimit>,
    pub routes: Vec<RouteRule>,
    pub trusted_proxy_hops: usize,
    /// Prefixes of keys imported from another system (`ImportKeys`).
    pub imported_prefixes: Vec<String>,
}

pub struct Authorizer {
    settings: AuthzSettings,
    cache: Arc<KeyCache>,
    limiters: Arc<RateLimiters>,
    credits: Option<Arc<CreditLedger>>,
    usage: Option<UsageSender>,
    decisions: DecisionCounters,
    /// Read once per Check: expiry, overlaps and usage events use it.
    clock: Clock,
}

/// One pre-registered counter per decision code: no label formatting on the
/// hot path.
struct DecisionCounters {
    allowed: Counter,
    denied: [Counter; DenyReason::ALL_CODES.len()],
    shadow: Counter,
}

impl DecisionCounters {
    fn new() -> Self {
        Self {
            allowed: metrics::counter!("keygate_check_decisions_total", "code" => "allowed"),
            denied: DenyReason::ALL_CODES
                .map(|code| metrics::counter!("keygate_check_decisions_total", "code" => code)),
            shadow: metrics::counter!("keygate_check_shadow_total"),
        }
    }

    fn count(&self, denial: Option<&DenyReason>) {
        match denial {
            Some(reason) => self.denied[reason.index()].increment(1),
            None => self.allowed.increment(1),
        }
    }
}

/// The result of evaluating a credential, before shadow mode is applied.
struct Evaluation {
    decision: Result<Option<RateHeaders>, DenyReason>,
    key: Option<Arc<CachedKey>>,
    credential: Option<CredentialSource>,
}

impl Authorizer {
    pub fn new(
        settings: AuthzSettings,
        cache: Arc<KeyCache>,
        limiters: Arc<RateLimiters>,
        usage: Option<UsageSender>,
    ) -> Self {
        Self {
            settings,
            cache,
            limiters,
            credits: None,
            usage,
            decisions: DecisionCounters::new(),
            clock: Clock::system(),
        }
    }

    /// Reads the current instant from `clock` (the system clock otherwise).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Spends a credit for every allowed Check of a key that has credits.
    pub fn with_credits(mut self, credits: Arc<CreditLedger>) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Decides one request. `Err` only when the store was needed and failed:
    /// the caller returns a gRPC error so Envoy's own failure settings apply.
    pub async fn check(&self, input: &CheckInput<'_>) -> Result<Outcome, LookupError> {
        let now = self.clock.now();
        let route = match self.requirements(input) {
            Ok(route) => route,
            Err(reason) => {
                self.decisions.count(Some(&reason));
                return Ok(Outcome::Deny(reason));
            }
        };
        let evaluation = self.evaluate(input, &route, now).await?;
        let code = match &evaluation.decision {
            Ok(_) => "allowed",
            Err(reason) => reason.code(),
        };
        self.decisions.count(evaluation.decision.as_ref().err());
        if let (Some(key), Some(usage)) = (&evaluation.key, &self.usage) {
            usage.record(CheckEvent {
                key_id: key.key.id,
                at: now,
                ip: self.client_ip(input),
                method: method_label(input.method),
                path: EventPath::new(recorded_path(input.path)),
                decision: code,
                allowed: evaluation.decision.is_ok(),
                requests: 1,
            });
        }
        let sunset = |key: &Arc<CachedKey>| key.key.revoked_at.filter(|at| *at > now);
        Ok(match evaluation.decision {
            Ok(rate) => Outcome::Allow(Allowance {
                sunset: evaluation.key.as_ref().and_then(sunset),
                identity: evaluation.key,
                credential: evaluation.credential,
                rate,
                shadow_decision: route.shadow.then_some(code),
            }),
            Err(_) if route.shadow => {
                self.decisions.shadow.increment(1);
                Outcome::Allow(Allowance {
                    identity: None,
                    credential: evaluation.credential,
                    rate: None,
                    sunset: None,
                    shadow_decision: Some(code),
                })
            }
            Err(reason) => Outcome::Deny(reason),
        })
    }

    async fn evaluate(
        &self,
        input: &CheckInput<'_>,
        route: &RouteRequirements<'_>,
        now: DateTime<Utc>,
    ) -> Result<Evaluation, LookupError> {
        let denied = |reason, credential| Evaluation {
            decision: Err(reason),
            key: None,
            credential,
        };
        let Some((raw, source)) = credential(input) else {
            return Ok(denied(DenyReason::MissingCredentials, None));
        };
        let Ok(raw) = raw else {
            return Ok(denied(DenyReason::MalformedKey, Some(source)));
        };
        let parsed = match self.settings.format.parse(raw) {
            Ok(parsed) => parsed,
            // keygate's own keys never get here: they parse above.
            Err(_) if self.is_imported(raw) => {
                return self.evaluate_imported(input, raw, source, route, now).await
            }
            Err(KeyParseError::NotOurPrefix) => {
                let allow = source == CredentialSource::Authorization
                    && self.settings.foreign_bearer == ForeignBearer::Allow;
                return Ok(Evaluation {
                    decision: if allow {
                        Ok(None)
                    } else {
                        Err(DenyReason::MissingCredentials)
                    },
                    key: None,
                    credential: None,
                });
            }
            Err(_) => return Ok(denied(DenyReason::MalformedKey, Some(source))),
        };
        let Some(cached) = self.cache.lookup(&parsed.hash()).await? else {
            return Ok(denied(DenyReason::InvalidKey, Some(source)));
        };
        // The hash covers only the token, so the environment written in the
        // key must be checked against the key's own.
        if cached.key.environment != parsed.environment || cached.key.imported {
            return Ok(denied(DenyReason::InvalidKey, Some(source)));
        }
        self.judge(input, cached, source, route, now).await
    }

    /// The client IP usage records and allow-lists judge.
    fn client_ip(&self, input: &CheckInput<'_>) -> Option<IpAddr> {
        client_ip(
            input.forwarded_for,
            input.source_address,
            self.settings.trusted_proxy_hops,
        )
    }

    fn is_imported(&self, raw: &str) -> bool {
        is_imported_key(raw, &self.settings.imported_prefixes)
    }

    /// An imported key: no checksum to reject garbage early, so it is found
    /// by the hash of the whole string; the issued-key set still answers
    /// unknown ones without the store. Every other rule is the same.
    async fn evaluate_imported(
        &self,
        input: &CheckInput<'_>,
        raw: &str,
        source: CredentialSource,
        route: &RouteRequirements<'_>,
        now: DateTime<Utc>,
    ) -> Result<Evaluation, LookupError> {
        let found = self.cache.lookup(&KeyHash::of_imported(raw)).await?;
        match found {
            Some(cached) if cached.key.imported => {
                self.judge(input, cached, source, route, now).await
            }
            _ => Ok(Evaluation {
                decision: Err(DenyReason::InvalidKey),
                key: None,
                credential: Some(source),
            }),
        }
    }

    /// The decision about a key found in the cache: its state, allow-list
    /// and the route's requirements, then its rate limit and credits.
    async fn judge(
        &self,
        input: &CheckInput<'_>,
        cached: Arc<CachedKey>,
        source: CredentialSource,
        route: &RouteRequirements<'_>,
        now: DateTime<Utc>,
    ) -> Result<Evaluation, LookupError> {
        // Only a key with an allow-list needs the address now; usage reads
        // it again later, so a key without one pays nothing more here.
        let client = if cached.key.allow_list.is_open() {
            None
        } else {
            self.client_ip(input)
        };
        let mut decision = match decide(&cached.key, route, client, now) {
            Ok(()) => self.rate_limit(&cached).await,
            Err(reason) => Err(reason),
        };
        // Last, so that no denied request spends a credit.
        if decision.is_ok() && cached.key.has_credits {
            if let Some(credits) = &self.credits {
                if credits.spend(cached.key.id).await? == Spend::Exhausted {
                    decision = Err(DenyReason::CreditsExhausted);
                }
            }
        }
        Ok(Evaluation {
            decision,
            key: Some(cached),
            credential: Some(source),
        })
    }

    async fn rate_limit(&self, cached: &CachedKey) -> Result<Option<RateHeaders>, DenyReason> {
        let Some(limit) = cached.key.rate_limit.or(self.settings.default_rate_limit) else {
            return Ok(None);
        };
        rate_decision(self.limiters.check(cached.key.id, limit).await)
    }

    /// Requirements the transport read (forward-auth's `Keygate-Require-*`
    /// headers), else Envoy's context extensions when it sends any
    /// `keygate.*` entry, otherwise the first configured rule that matches
    /// the normalised path. A path that cannot be normalised is denied when
    /// rules would judge it: any guess could be the one the upstream does
    /// not make.
    fn requirements<'a>(
        &'a self,
        input: &CheckInput<'a>,
    ) -> Result<RouteRequirements<'a>, DenyReason> {
        if let Some(requirements) = input.requirements {
            return Ok(requirements);
        }
        if let Some(ext) = input.context_extensions {
            let abilities = ext.get(EXT_ABILITIES).map(String::as_str);
            let environment = ext
                .get(EXT_ENVIRONMENT)
                .map(String::as_str)
                .filter(|e| !e.is_empty());
            let mode = ext.get(EXT_MODE).map(String::as_str);
            if abilities.is_some() || environment.is_some() || mode.is_some() {
                return Ok(RouteRequirements {
                    abilities,
                    environment,
                    shadow: mode == Some("shadow"),
                });
            }
        }
        if self.settings.routes.is_empty() {
            return Ok(RouteRequirements::default());
        }
        let path = path::normalize(input.path).map_err(|error| {
            // The kind only: the path itself may carry a secret.
            tracing::debug!(%error, "denied a path route rules cannot judge");
            DenyReason::InvalidPath
        })?;
        Ok(self
            .settings
            .routes
            .iter()
            .find(|rule| rule.matches(input.method, &path))
            .map(|rule| RouteRequirements {
                abilities: Some(rule.abilities.as_str()),
                environment: rule.environment.as_deref(),
                shadow: rule.shadow,
            })
            .unwrap_or_default())
    }
}

/// Whether `raw`, which did not parse as one of keygate's keys, carries the
/// prefix of keys imported from another system (`KEYGATE_IMPORTED_PREFIXES`)
/// and is short enough to be hashed as one. The Envoy module asks the same.
pub fn is_imported_key(raw: &str, imported_prefixes: &[String]) -> bool {
    raw.len() <= MAX_IMPORTED_KEY_LEN
        && imported_prefixes
            .iter()
            .any(|prefix| raw.starts_with(prefix.as_str()))
}

/// The credential, first match wins: `Authorization: Bearer <key>` (scheme
/// case-insensitive), then the API-key header. Another scheme (Basic) in
/// `Authorization` is not a credential of ours. Public for the keygate-envoy
/// filter, which reads credentials the same way.
pub fn credential<'a>(input: &CheckInput<'a>) -> Option<(HeaderText<'a>, CredentialSource)> {
    let bearer = input.authorization.and_then(|value| match value {
        Ok(text) => {
            let text = text.trim();
            let (scheme, rest) = text.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case("bearer ")
                .then(|| Ok(rest.trim_start()))
        }
        Err(NotUtf8) => Some(Err(NotUtf8)),
    });
    if let Some(token) = bearer.filter(|t| t.is_err() || t.is_ok_and(|s| !s.is_empty())) {
        return Some((token, CredentialSource::Authorization));
    }
    input
        .api_key
        .map(|value| value.map(str::trim))
        .filter(|v| v.is_err() || v.is_ok_and(|s| !s.is_empty()))
        .map(|value| (value, CredentialSource::ApiKey))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(authorization: Option<&'a str>, api_key: Option<&'a str>) -> CheckInput<'a> {
        CheckInput {
            authorization: authorization.map(Ok),
            api_key: api_key.map(Ok),
            method: "GET",
            path: "/",
            ..Default::default()
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_wins_over_the_api_key_header() {
        let i = input(Some("BeArEr sk_live_x"), Some("sk_live_y"));
        assert_eq!(
            credential(&i),
            Some((Ok("sk_live_x"), CredentialSource::Authorization))
        );
    }

    #[test]
    fn other_schemes_and_empty_values_fall_through_to_the_api_key_header() {
        let i = input(Some("Basic dXNlcjpwYXNz"), Some(" sk_live_y "));
        assert_eq!(
            credential(&i),
            Some((Ok("sk_live_y"), CredentialSource::ApiKey))
        );
        let i = input(Some("Bearer   "), None);
        assert_eq!(credential(&i), None);
        assert_eq!(credential(&input(None, Some(""))), None);
        assert_eq!(credential(&input(Some("Bearer"), None)), None);
    }

    #[test]
    fn non_utf8_credentials_are_reported_as_such() {
        let i = CheckInput {
            api_key: Some(Err(NotUtf8)),
            ..Default::default()
        };
        assert_eq!(
            credential(&i),
            Some((Err(NotUtf8), CredentialSource::ApiKey))
        );
    }
}
