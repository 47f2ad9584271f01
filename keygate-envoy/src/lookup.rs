//! Asking keygate when the table cannot decide (`lookup` in the filter
//! config; docs/envoy-module.md, "Asking keygate"): before the first key
//! table has arrived, and for keys with credits, which only keygate's
//! database can spend. The question is an HTTP callout, through an Envoy
//! cluster, to keygate's forward-auth listener, carrying what forward-auth
//! reads (README, "Forward-auth"); keygate decides, records usage and
//! spends credits, and its answer is applied as the filter's own would be.
//!
//! Only a key the table cannot decide is asked about: a key the complete
//! table does not hold is `invalid_key` without a call.

use std::{borrow::Cow, net::IpAddr};

use keygate::{
    answer::{
        HEADERS_TO_REMOVE, HEADER_KEY_ID, HEADER_SHADOW_DECISION, META_HEADER_PREFIX, RATE_HEADERS,
    },
    domain::RouteRequirements,
};
use serde::Deserialize;

/// `lookup` of the filter config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupSettings {
    /// The Envoy cluster of keygate's forward-auth listener
    /// (`KEYGATE_FORWARD_AUTH_ADDR`); it must be defined in Envoy's config.
    pub cluster: String,
    /// The `:authority` of the lookup request.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// How long a request waits for keygate's answer before a 503.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl LookupSettings {
    /// Envoy takes a zero timeout as none: a request would wait for ever.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster.is_empty() {
            return Err(
                "lookup.cluster: name the Envoy cluster of keygate's forward-auth listener".into(),
            );
        }
        if self.timeout_ms == 0 {
            return Err("lookup.timeout_ms must be above 0 (Envoy takes 0 as no timeout)".into());
        }
        Ok(())
    }
}

fn default_authority() -> String {
    "keygate".to_owned()
}

fn default_timeout_ms() -> u64 {
    1000
}

/// What the lookup request carries besides its credential headers.
pub struct Question<'a> {
    /// The client's request, as Envoy has it.
    pub method: &'a [u8],
    pub path: &'a [u8],
    /// Envoy's `source.address`, which keygate checks IP allow-lists
    /// against (the module's own decisions use the same).
    pub client: IpAddr,
    pub route: &'a RouteRequirements<'a>,
}

/// The headers of the lookup request: forward-auth's original method and
/// URI (`X-Original-*`), the client address (`X-Real-IP`), the route's
/// requirements (`Keygate-Require-*`, `Keygate-Mode`), then the credential
/// headers the caller adds.
pub fn request_headers<'a>(
    settings: &'a LookupSettings,
    question: &Question<'a>,
) -> Vec<(&'static str, Cow<'a, [u8]>)> {
    let mut headers: Vec<(&'static str, Cow<'a, [u8]>)> = vec![
        (":method", Cow::Borrowed(b"GET")),
        (":path", Cow::Borrowed(b"/")),
        (":authority", Cow::Borrowed(settings.authority.as_bytes())),
        ("x-original-method", Cow::Borrowed(question.method)),
        ("x-original-uri", Cow::Borrowed(question.path)),
    ];
    headers.push((
        "x-real-ip",
        Cow::Owned(question.client.to_string().into_bytes()),
    ));
    let route = question.route;
    if let Some(abilities) = route.abilities {
        headers.push((
            "keygate-require-abilities",
            Cow::Borrowed(abilities.as_bytes()),
        ));
    }
    if let Some(environment) = route.environment {
        headers.push((
            "keygate-require-environment",
            Cow::Borrowed(environment.as_bytes()),
        ));
    }
    if route.shadow {
        headers.push(("keygate-mode", Cow::Borrowed(b"shadow")));
    }
    headers
}

/// keygate's answer, copied out of Envoy's buffers (names lowercase, as
/// Envoy keeps them).
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the filter does with an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// 2xx with keygate's identity or shadow decision: the request goes
    /// upstream with these `x-keygate-*` headers (the identity,
    /// `x-keygate-meta-*`, the shadow decision) and without the `x-keygate-*`
    /// headers keygate named for removal (`x-envoy-auth-headers-to-remove`),
    /// and the client's response gets `respond_with` (rate-limit,
    /// `Deprecation`, `Sunset`).
    Allow {
        upstream: Vec<(&'a str, &'a str)>,
        remove: Vec<&'a str>,
        respond_with: Vec<(&'static str, String)>,
    },
    /// keygate's denial, passed on as it came: its status, JSON body and
    /// the headers a client needs (`WWW-Authenticate`, `Retry-After`,
    /// `x-ratelimit-*`).
    Deny {
        status: u16,
        headers: Vec<(&'a str, &'a str)>,
        body: &'a str,
        /// `keygate_<code>` for Envoy's access log, as the filter's own
        /// denials.
        details: String,
    },
    /// No answer from keygate itself: a reset, a timeout or an unreachable
    /// cluster (Envoy answers those for it, with no JSON), a body that is
    /// not text, or a 2xx without keygate's headers (the cluster is not
    /// keygate's forward-auth listener): never an allowance.
    NoAnswer,
}

/// Headers of keygate's allowed answer for the client's response.
const RESPONSE_HEADERS: [&str; 5] = [
    RATE_HEADERS[0],
    RATE_HEADERS[1],
    RATE_HEADERS[2],
    "deprecation",
    "sunset",
];

/// Headers of keygate's denial the client gets.
const DENIAL_HEADERS: [&str; 6] = [
    "content-type",
    "www-authenticate",
    "retry-after",
    RATE_HEADERS[0],
    RATE_HEADERS[1],
    RATE_HEADERS[2],
];

impl Answer {
    pub fn verdict(&self) -> Verdict<'_> {
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()));
        if (200..300).contains(&self.status) {
            let upstream: Vec<_> = headers
                .clone()
                .filter(|(name, _)| is_identity_header(name))
                .collect();
            let decided = upstream
                .iter()
                .any(|(name, _)| *name == HEADER_KEY_ID || *name == HEADER_SHADOW_DECISION);
            if !decided {
                return Verdict::NoAnswer;
            }
            let remove = headers
                .clone()
                .filter(|(name, _)| *name == HEADERS_TO_REMOVE)
                .flat_map(|(_, names)| names.split(','))
                .map(str::trim)
                .filter(|name| name.starts_with("x-keygate-"))
                .collect();
            let respond_with = headers
                .filter_map(|(name, value)| {
                    let name = RESPONSE_HEADERS.iter().find(|known| **known == name)?;
                    Some((*name, value.to_owned()))
                })
                .collect();
            return Verdict::Allow {
                upstream,
                remove,
                respond_with,
            };
        }
        let from_keygate = self
            .headers
            .iter()
            .any(|(name, value)| name == "content-type" && value.starts_with("application/json"));
        match std::str::from_utf8(&self.body) {
            Ok(body) if from_keygate && (400..600).contains(&self.status) => Verdict::Deny {
                status: self.status,
                headers: headers
                    .filter(|(name, _)| DENIAL_HEADERS.contains(name))
                    .collect(),
                body,
                details: format!("keygate_{}", denial_code(body)),
            },
            _ => Verdict::NoAnswer,
        }
    }
}

/// The `error.code` of keygate's JSON denial.
fn denial_code(body: &str) -> String {
    #[derive(Deserialize)]
    struct Denial {
        error: Error,
    }
    #[derive(Deserialize)]
    struct Error {
        code: String,
    }
    serde_json::from_str::<Denial>(body)
        .map(|denial| denial.error.code)
        .unwrap_or_else(|_| "lookup_denied".to_owned())
}

/// An `x-keygate-*` header keygate sets on an allowed answer: what the
/// upstream request carries.
fn is_identity_header(name: &str) -> bool {
    keygate::answer::IDENTITY_HEADERS.contains(&name)
        || name == HEADER_SHADOW_DECISION
        || name.starts_with(META_HEADER_PREFIX)
}
