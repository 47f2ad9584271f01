//! An [`Outcome`](crate::authz::Outcome) as an HTTP response, from the
//! transport-independent parts in [`crate::answer`].
//!
//! Allowed: 200, empty body, the `x-keygate-*` headers for the proxy to copy
//! upstream, the rate-limit, `Deprecation` and `Sunset` headers for it to
//! return to the client, and `x-envoy-auth-headers-to-remove` naming the
//! credential and every keygate header this answer does not set (Envoy's
//! HTTP ext_authz removes those from the upstream request; other proxies
//! ignore it and copy only what their configuration names). Denied: the
//! decision's status, JSON body and headers.

use bytes::Bytes;
use http::{header::HeaderName, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::input::BadRequest;
use crate::{
    answer::{
        denial_body, denial_headers, identity_values, rate_values, sunset_headers, MetadataHeaders,
        HEADERS_TO_REMOVE, HEADER_SHADOW_DECISION, IDENTITY_HEADERS, RATE_HEADERS,
    },
    authz::{Allowance, CredentialSource},
    cache::HttpIdentity,
    domain::{CheckKey, DenyReason},
};

pub type Body = Full<Bytes>;

// The names of every allowed answer, parsed once (`from_static` shares
// their bytes; a name parsed per answer would be copied per answer).
static IDENTITY_NAMES: [HeaderName; 5] = [
    HeaderName::from_static(IDENTITY_HEADERS[0]),
    HeaderName::from_static(IDENTITY_HEADERS[1]),
    HeaderName::from_static(IDENTITY_HEADERS[2]),
    HeaderName::from_static(IDENTITY_HEADERS[3]),
    HeaderName::from_static(IDENTITY_HEADERS[4]),
];
static RATE_NAMES: [HeaderName; 3] = [
    HeaderName::from_static(RATE_HEADERS[0]),
    HeaderName::from_static(RATE_HEADERS[1]),
    HeaderName::from_static(RATE_HEADERS[2]),
];
static SHADOW_DECISION: HeaderName = HeaderName::from_static(HEADER_SHADOW_DECISION);
static REMOVE: HeaderName = HeaderName::from_static(HEADERS_TO_REMOVE);

/// Builds responses; what never changes is prepared at start, and what
/// depends on the key once per cached key ([`HttpIdentity`]).
pub struct Renderer {
    metadata: MetadataHeaders,
    /// [`MetadataHeaders::header_names`], parsed.
    metadata_names: Vec<HeaderName>,
    /// The credential header to strip upstream, when stripping, by
    /// [`credential_index`].
    strip: [Option<String>; 3],
    /// Indexed by [`DenyReason::index`]; the rate-limited one is built per
    /// request for its `Retry-After`.
    denials: Vec<(StatusCode, HeaderMap, Bytes)>,
}

/// The credential headers and whether to strip them upstream.
#[derive(Debug, Clone)]
pub struct RenderSettings {
    pub authorization_header: String,
    pub api_key_header: String,
    pub strip_credential: bool,
    pub metadata: MetadataHeaders,
}

/// Where the allowed credential came from, as an index into
/// [`HttpIdentity::removed`] and `Renderer::strip`.
fn credential_index(credential: Option<CredentialSource>) -> usize {
    match credential {
        None => 0,
        Some(CredentialSource::Authorization) => 1,
        Some(CredentialSource::ApiKey) => 2,
    }
}

impl Renderer {
    pub fn new(settings: &RenderSettings) -> Self {
        let strip = |name: &String| settings.strip_credential.then(|| name.clone());
        Self {
            metadata: settings.metadata.clone(),
            metadata_names: settings
                .metadata
                .header_names()
                .map(|name| {
                    HeaderName::from_bytes(name.as_bytes())
                        .expect("the configuration validates metadata header names")
                })
                .collect(),
            strip: [
                None,
                strip(&settings.authorization_header),
                strip(&settings.api_key_header),
            ],
            denials: DenyReason::one_of_each(0).map(denial_parts).to_vec(),
        }
    }

    pub fn allowed(&self, allowance: &Allowance) -> Response<Body> {
        let mut headers = HeaderMap::with_capacity(16);
        let credential = credential_index(allowance.credential);
        match (&allowance.identity, allowance.shadow_decision) {
            // Nearly every answer: clones of what the entry keeps.
            (Some(cached), None) => {
                let identity = cached
                    .http_identity
                    .get_or_init(|| self.identity(&cached.key));
                for (name, value) in identity.headers.iter() {
                    headers.insert(name.clone(), value.clone());
                }
                headers.insert(REMOVE.clone(), identity.removed[credential].clone());
            }
            (cached, shadow) => {
                let key = cached.as_ref().map(|cached| &cached.key);
                if let Some(key) = key {
                    for (name, value) in self.identity_headers(key) {
                        headers.insert(name, value);
                    }
                }
                if let Some(code) = shadow {
                    headers.insert(SHADOW_DECISION.clone(), HeaderValue::from_static(code));
                }
                let removed = self.removed(key, shadow.is_some(), credential);
                if !removed.is_empty() {
                    insert(&mut headers, HEADERS_TO_REMOVE, &removed);
                }
            }
        }
        if let Some(rate) = allowance.rate {
            for (name, value) in RATE_NAMES.iter().zip(rate_values(rate)) {
                headers.insert(name.clone(), HeaderValue::from(value));
            }
        }
        if let Some(sunset) = allowance.sunset {
            for (name, value) in sunset_headers(sunset) {
                insert(&mut headers, name, &value);
            }
        }
        response(StatusCode::OK, headers, Bytes::new())
    }

    /// What an allowance of `key` without a shadow decision always says.
    fn identity(&self, key: &CheckKey) -> HttpIdentity {
        HttpIdentity {
            headers: self.identity_headers(key).into(),
            // Never empty: it names at least the shadow-decision header.
            removed: [0, 1, 2].map(|credential| {
                HeaderValue::from_str(&self.removed(Some(key), false, credential))
                    .expect("header names joined by commas are a header value")
            }),
        }
    }

    /// The identity and metadata headers `key` sets (built once per cached
    /// key, or for an uncommon answer).
    fn identity_headers(&self, key: &CheckKey) -> Vec<(HeaderName, HeaderValue)> {
        let mut id_text = uuid::Uuid::encode_buffer();
        let identity = IDENTITY_NAMES
            .iter()
            .zip(identity_values(key, &mut id_text))
            .filter_map(|(name, value)| Some((name.clone(), header_value(name, &value)?)));
        let metadata = self
            .metadata_names
            .iter()
            .zip(self.metadata.values(key))
            .filter_map(|(name, (_, value))| Some((name.clone(), header_value(name, value?)?)));
        identity.chain(metadata).collect()
    }

    /// The keygate headers this answer does not set, and the credential when
    /// it is stripped, comma-separated, for Envoy to remove upstream.
    fn removed(&self, key: Option<&CheckKey>, shadow: bool, credential: usize) -> String {
        let mut removed: Vec<&str> = Vec::new();
        match key {
            Some(key) => removed.extend(
                self.metadata
                    .values(key)
                    .filter_map(|(name, value)| value.is_none().then_some(name)),
            ),
            None => {
                removed.extend(IDENTITY_HEADERS);
                removed.extend(self.metadata.header_names());
            }
        }
        if !shadow {
            removed.push(HEADER_SHADOW_DECISION);
        }
        removed.extend(self.strip[credential].as_deref());
        removed.join(",")
    }

    pub fn denied(&self, reason: DenyReason) -> Response<Body> {
        let (status, headers, body) = match reason {
            DenyReason::RateLimited { .. } => denial_parts(reason),
            _ => self.denials[reason.index()].clone(),
        };
        response(status, headers, body)
    }
}

/// A header value keygate wrote (key fields, filtered metadata): one that
/// cannot be sent is a bug, logged and skipped rather than a panic.
fn header_value(name: &HeaderName, value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value)
        .inspect_err(|_| tracing::error!(header = %name, "forward-auth: unusable header skipped"))
        .ok()
}

/// 400 for a request that cannot be decided; the message names the problem.
pub fn bad_request(problem: &BadRequest) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "bad_request", &problem.to_string())
}

/// 503 when the store could not be read on a cache miss: proxies fail closed.
pub fn unavailable() -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "The key store is unavailable; retry later.",
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut headers = HeaderMap::new();
    insert(&mut headers, "content-type", "application/json");
    response(status, headers, Bytes::from(body.to_string()))
}

fn denial_parts(reason: DenyReason) -> (StatusCode, HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    for (name, value) in denial_headers(reason) {
        insert(&mut headers, name, &value);
    }
    let status = StatusCode::from_u16(reason.http_status()).expect("denial statuses are valid");
    (status, headers, Bytes::from(denial_body(reason)))
}

fn response(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Names are keygate's own constants or configured metadata names validated
/// at start; values are checked (`MetadataHeaders` filters metadata values,
/// the others are ASCII keygate wrote), so a failure here is a bug, logged
/// and skipped rather than a panic on the request path.
fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
        }
        _ => tracing::error!(header = name, "forward-auth: unusable header skipped"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use http_body_util::BodyExt;
    use uuid::Uuid;

    use super::*;
    use crate::{authz::RateHeaders, cache::CachedKey, domain::CheckKey};

    fn renderer() -> Renderer {
        Renderer::new(&RenderSettings {
            authorization_header: "authorization".into(),
            api_key_header: "x-api-key".into(),
            strip_credential: true,
            metadata: MetadataHeaders::new(&["tier", "plan"]),
        })
    }

    fn allowance(identity: Option<Arc<CachedKey>>) -> Allowance {
        Allowance {
            identity,
            credential: Some(CredentialSource::Authorization),
            rate: None,
            sunset: None,
            shadow_decision: None,
        }
    }

    fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
        response.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn an_allowed_key_is_described_to_the_proxy_and_the_rest_is_named_for_removal() {
        let mut key = CheckKey::sample(Uuid::from_u128(5), "acme", &["read:orders"]);
        key.metadata.insert("tier".into(), "gold".into());
        let mut allowed = allowance(Some(Arc::new(CachedKey::detached(key))));
        allowed.rate = Some(RateHeaders {
            limit: 10,
            remaining: 9,
            reset_secs: 60,
        });
        allowed.sunset = Some(Utc.with_ymd_and_hms(2026, 12, 1, 8, 30, 0).unwrap());
        let response = renderer().allowed(&allowed);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "x-keygate-key-id"),
            Some(Uuid::from_u128(5).to_string().as_str())
        );
        assert_eq!(header(&response, "x-keygate-owner-id"), Some("acme"));
        assert_eq!(
            header(&response, "x-keygate-abilities"),
            Some("read:orders")
        );
        assert_eq!(header(&response, "x-keygate-meta-tier"), Some("gold"));
        assert_eq!(header(&response, "x-ratelimit-remaining"), Some("9"));
        assert_eq!(header(&response, "deprecation"), Some("true"));
        assert_eq!(
            header(&response, "sunset"),
            Some("Tue, 01 Dec 2026 08:30:00 GMT")
        );
        assert_eq!(
            header(&response, HEADERS_TO_REMOVE),
            Some("x-keygate-meta-plan,x-keygate-shadow-decision,authorization")
        );
    }

    #[test]
    fn a_cached_key_answers_each_credential_source_with_its_own_removal_list() {
        let cached = Arc::new(CachedKey::detached(CheckKey::sample(
            Uuid::from_u128(6),
            "acme",
            &["read:orders"],
        )));
        let renderer = renderer();
        let removed_for = |credential| {
            let mut allowed = allowance(Some(cached.clone()));
            allowed.credential = credential;
            let response = renderer.allowed(&allowed);
            assert_eq!(header(&response, "x-keygate-owner-id"), Some("acme"));
            header(&response, HEADERS_TO_REMOVE).unwrap().to_owned()
        };
        // The first answer builds the entry's headers; the others reuse them.
        let all_metadata = "x-keygate-meta-tier,x-keygate-meta-plan,x-keygate-shadow-decision";
        assert_eq!(
            removed_for(Some(CredentialSource::Authorization)),
            format!("{all_metadata},authorization")
        );
        assert!(cached.http_identity.get().is_some());
        assert_eq!(
            removed_for(Some(CredentialSource::ApiKey)),
            format!("{all_metadata},x-api-key")
        );
        assert_eq!(removed_for(None), all_metadata);
    }

    #[test]
    fn an_allowance_without_identity_sets_no_keygate_header() {
        let mut shadowed = allowance(None);
        shadowed.shadow_decision = Some("invalid_key");
        let response = renderer().allowed(&shadowed);
        let keygate: Vec<&str> = response
            .headers()
            .keys()
            .map(HeaderName::as_str)
            .filter(|name| name.starts_with("x-keygate-"))
            .collect();
        assert_eq!(keygate, [HEADER_SHADOW_DECISION]);
        let removed = header(&response, HEADERS_TO_REMOVE).unwrap();
        assert!(removed.contains("x-keygate-owner-id") && removed.contains("x-keygate-meta-tier"));
    }

    #[tokio::test]
    async fn every_denial_has_its_status_json_body_and_headers() {
        for reason in DenyReason::one_of_each(4) {
            let response = renderer().denied(reason);
            assert_eq!(response.status().as_u16(), reason.http_status());
            assert_eq!(header(&response, "content-type"), Some("application/json"));
            match reason.http_status() {
                401 => assert_eq!(
                    header(&response, "www-authenticate"),
                    Some("Bearer realm=\"keygate\"")
                ),
                _ if matches!(reason, DenyReason::RateLimited { .. }) => {
                    assert_eq!(header(&response, "retry-after"), Some("4"))
                }
                _ => assert_eq!(response.headers().len(), 1, "{reason:?}"),
            }
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"]["code"], reason.code());
        }
    }
}
