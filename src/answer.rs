//! What an answer to the proxy says, whichever transport carries it.
//!
//! Check (gRPC ext_authz) and forward-auth (HTTP) render the same
//! [`Outcome`](crate::authz::Outcome): the same identity header names and
//! values, the same denial status, JSON body, `WWW-Authenticate` and
//! `Retry-After`, the same rate-limit, `Deprecation` and `Sunset` headers.
//! Each transport only encodes these parts in its own wire form
//! (`grpc::ext_authz::render`, `forward_auth::render`), so the two can never
//! drift apart. README.md, "Decisions", is the operators' description.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use crate::{
    authz::RateHeaders,
    domain::{CheckKey, DenyReason},
};

pub const HEADER_KEY_ID: &str = "x-keygate-key-id";
pub const HEADER_OWNER_ID: &str = "x-keygate-owner-id";
pub const HEADER_ENVIRONMENT: &str = "x-keygate-environment";
pub const HEADER_KEY_PREFIX: &str = "x-keygate-key-prefix";
pub const HEADER_ABILITIES: &str = "x-keygate-abilities";
pub const HEADER_SHADOW_DECISION: &str = "x-keygate-shadow-decision";
/// Prefix of the headers that carry a key's metadata values.
pub const META_HEADER_PREFIX: &str = "x-keygate-meta-";
/// Forward-auth's answer for Envoy's HTTP ext_authz: the comma-separated
/// headers to remove upstream (the credential, and every keygate header the
/// answer does not set).
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// The identity headers a key sets upstream. With the shadow header and the
/// metadata headers they are every header keygate owns: whichever a response
/// does not set is removed, so a client can never forge one.
pub const IDENTITY_HEADERS: [&str; 5] = [
    HEADER_KEY_ID,
    HEADER_OWNER_ID,
    HEADER_ENVIRONMENT,
    HEADER_KEY_PREFIX,
    HEADER_ABILITIES,
];

/// The same facts as [`IDENTITY_HEADERS`], as named in dynamic metadata.
pub const IDENTITY_FIELDS: [&str; 5] = [
    "key_id",
    "owner_id",
    "environment",
    "key_prefix",
    "abilities",
];

pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"keygate\"";

/// A key's identity header values, in [`IDENTITY_HEADERS`] order. The id
/// is written into `id_text` (`Uuid::encode_buffer()`), so that building
/// the values allocates only for a key with several abilities.
pub fn identity_values<'a>(key: &'a CheckKey, id_text: &'a mut [u8; 45]) -> [Cow<'a, str>; 5] {
    [
        Cow::Borrowed(key.id.hyphenated().encode_lower(id_text)),
        Cow::Borrowed(&key.owner_id),
        Cow::Borrowed(&key.environment),
        Cow::Borrowed(&key.key_prefix),
        abilities_value(key),
    ]
}

/// The abilities header: comma-separated, `*` for a superkey.
fn abilities_value(key: &CheckKey) -> Cow<'_, str> {
    match key.abilities.as_slice() {
        _ if key.superkey => Cow::Borrowed("*"),
        [] => Cow::Borrowed(""),
        [one] => Cow::Borrowed(one),
        several => Cow::Owned(several.join(",")),
    }
}

/// The denial body: `{"error":{"code":"…","message":"…"}}`.
pub fn denial_body(reason: DenyReason) -> String {
    // Codes and messages are static ASCII without quotes or backslashes
    // (a test checks every one parses), so no JSON tree is needed: the
    // rate-limited denial is built per request, and floods are when it is.
    format!(
        r#"{{"error":{{"code":"{}","message":"{}"}}}}"#,
        reason.code(),
        reason.message()
    )
}

/// The headers of a denial besides its status: the content type, and
/// `Retry-After` for a rate limit or `WWW-Authenticate` for a 401.
pub fn denial_headers(reason: DenyReason) -> Vec<(&'static str, String)> {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    match reason {
        DenyReason::RateLimited { retry_after_secs } => {
            headers.push(("retry-after", retry_after_secs.to_string()))
        }
        _ if reason.http_status() == 401 => {
            headers.push(("www-authenticate", WWW_AUTHENTICATE.to_owned()))
        }
        _ => {}
    }
    headers
}

/// The `x-ratelimit-*` response headers, in [`rate_values`] order.
pub const RATE_HEADERS: [&str; 3] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// The limit, what is left of it, and the seconds until it resets.
pub fn rate_values(rate: RateHeaders) -> [u64; 3] {
    [rate.limit.into(), rate.remaining.into(), rate.reset_secs]
}

/// `x-ratelimit-*` response headers for a key with a limit.
pub fn rate_headers(rate: RateHeaders) -> [(&'static str, String); 3] {
    let [limit, remaining, reset] = rate_values(rate);
    [
        (RATE_HEADERS[0], limit.to_string()),
        (RATE_HEADERS[1], remaining.to_string()),
        (RATE_HEADERS[2], reset.to_string()),
    ]
}

/// `Deprecation` and `Sunset` for a key inside a rotation overlap.
pub fn sunset_headers(sunset: DateTime<Utc>) -> [(&'static str, String); 2] {
    [
        ("deprecation", "true".to_owned()),
        (
            "sunset",
            sunset.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        ),
    ]
}

/// The metadata keys exported as `x-keygate-meta-<name>` headers
/// (`KEYGATE_METADATA_HEADERS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataHeaders {
    /// `(metadata key, header name)`, in configured order.
    names: Vec<(String, String)>,
}

impl MetadataHeaders {
    /// `names` are metadata keys already validated as header-name tokens.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        Self {
            names: names
                .iter()
                .map(|name| {
                    let name = name.as_ref();
                    let header = format!("{META_HEADER_PREFIX}{}", name.to_ascii_lowercase());
                    (name.to_owned(), header)
                })
                .collect(),
        }
    }

    /// Every header name, for removal when a response sets none of them.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|(_, header)| header.as_str())
    }

    /// Each configured header with the key's value, or `None` when the key
    /// has no such metadata or its value cannot travel in a header (control
    /// characters, non-ASCII): such a header is removed instead, never
    /// passed on from the client.
    pub fn values<'k>(
        &'k self,
        key: &'k CheckKey,
    ) -> impl Iterator<Item = (&'k str, Option<&'k str>)> {
        self.names.iter().map(|(name, header)| {
            let value = key
                .metadata
                .get(name)
                .map(String::as_str)
                .filter(|value| is_header_value(value));
            (header.as_str(), value)
        })
    }
}

/// Visible ASCII, spaces and tabs: what every proxy accepts unchanged.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        && value.trim() == value
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn every_denial_body_is_the_documented_json() {
        for reason in DenyReason::one_of_each(7) {
            let body: serde_json::Value = serde_json::from_str(&denial_body(reason)).unwrap();
            assert_eq!(body["error"]["code"], reason.code());
            assert_eq!(body["error"]["message"], reason.message());
        }
    }

    #[test]
    fn denials_name_their_challenge_or_their_retry_delay() {
        let names = |reason| -> Vec<(&str, String)> { denial_headers(reason) };
        assert_eq!(
            names(DenyReason::InvalidKey)[1],
            ("www-authenticate", WWW_AUTHENTICATE.to_owned())
        );
        assert_eq!(
            names(DenyReason::RateLimited {
                retry_after_secs: 9
            })[1],
            ("retry-after", "9".to_owned())
        );
        assert_eq!(names(DenyReason::InsufficientAbility).len(), 1);
    }

    #[test]
    fn metadata_headers_carry_usable_values_and_name_the_rest_for_removal() {
        let mut key = CheckKey::sample(Uuid::nil(), "o", &[]);
        key.metadata.insert("tier".into(), "gold".into());
        key.metadata.insert("Plan".into(), "bad\r\nvalue".into());
        let headers = MetadataHeaders::new(&["tier", "Plan", "region"]);
        assert_eq!(
            headers.values(&key).collect::<Vec<_>>(),
            [
                ("x-keygate-meta-tier", Some("gold")),
                ("x-keygate-meta-plan", None),
                ("x-keygate-meta-region", None),
            ]
        );
        assert_eq!(
            headers.header_names().collect::<Vec<_>>(),
            [
                "x-keygate-meta-tier",
                "x-keygate-meta-plan",
                "x-keygate-meta-region"
            ]
        );
    }
}
