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
        denial_body, denial_headers, identity_values, rate_headers, sunset_headers,
        MetadataHeaders, HEADER_SHADOW_DECISION, IDENTITY_HEADERS,
    },
    authz::{Allowance, CredentialSource},
    domain::DenyReason,
};

pub type Body = Full<Bytes>;

/// Envoy HTTP ext_authz: comma-separated headers to remove upstream.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Builds responses; what never changes is prepared at start.
pub struct Renderer {
    metadata: MetadataHeaders,
    /// The credential header names to strip upstream, when stripping.
    strip_authorization: Option<String>,
    strip_api_key: Option<String>,
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

impl Renderer {
    pub fn new(settings: &RenderSettings) -> Self {
        let strip = |name: &String| settings.strip_credential.then(|| name.clone());
        Self {
            metadata: settings.metadata.clone(),
            strip_authorization: strip(&settings.authorization_header),
            strip_api_key: strip(&settings.api_key_header),
            denials: DenyReason::one_of_each(0).map(denial_parts).to_vec(),
        }
    }

    pub fn allowed(&self, allowance: &Allowance) -> Response<Body> {
        let mut headers = HeaderMap::with_capacity(16);
        let mut removed: Vec<&str> = Vec::new();
        match &allowance.identity {
            Some(cached) => {
                let key = &cached.key;
                let mut id_text = uuid::Uuid::encode_buffer();
                for (name, value) in IDENTITY_HEADERS
                    .iter()
                    .zip(identity_values(key, &mut id_text))
                {
                    insert(&mut headers, name, &value);
                }
                for (name, value) in self.metadata.values(key) {
                    match value {
                        Some(value) => insert(&mut headers, name, value),
                        None => removed.push(name),
                    }
                }
            }
            None => {
                removed.extend(IDENTITY_HEADERS);
                removed.extend(self.metadata.header_names());
            }
        }
        match allowance.shadow_decision {
            Some(code) => insert(&mut headers, HEADER_SHADOW_DECISION, code),
            None => removed.push(HEADER_SHADOW_DECISION),
        }
        let strip = match allowance.credential {
            Some(CredentialSource::Authorization) => self.strip_authorization.as_deref(),
            Some(CredentialSource::ApiKey) => self.strip_api_key.as_deref(),
            None => None,
        };
        removed.extend(strip);
        if let Some(rate) = allowance.rate {
            for (name, value) in rate_headers(rate) {
                insert(&mut headers, name, &value);
            }
        }
        if let Some(sunset) = allowance.sunset {
            for (name, value) in sunset_headers(sunset) {
                insert(&mut headers, name, &value);
            }
        }
        if !removed.is_empty() {
            insert(&mut headers, HEADERS_TO_REMOVE, &removed.join(","));
        }
        response(StatusCode::OK, headers, Bytes::new())
    }

    pub fn denied(&self, reason: DenyReason) -> Response<Body> {
        let (status, headers, body) = match reason {
            DenyReason::RateLimited { .. } => denial_parts(reason),
            _ => self.denials[reason.index()].clone(),
        };
        response(status, headers, body)
    }
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
