//! The request and cached keys both in-process Check measurements use
//! (`benches/decision_path.rs` and `src/bin/keygate-check-cost.rs`), so
//! that their figures describe the same work.

use std::collections::HashMap;

use chrono::Utc;
use envoy_types::{
    ext_authz::v3::pb::CheckRequest,
    pb::envoy::service::auth::v3::{
        attribute_context::{HttpRequest, Request as AttrRequest},
        AttributeContext,
    },
};
use keygate::domain::CheckKey;
use uuid::Uuid;

/// The ability the route requires and every cached key holds.
pub const ABILITY: &str = "read:orders";

/// What Envoy sends for `GET /v1/orders/42` with `key` as the bearer, on a
/// route requiring [`ABILITY`].
pub fn check_request(key: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/v1/orders/42".into(),
                    headers: HashMap::from([
                        ("authorization".into(), format!("Bearer {key}")),
                        ("x-forwarded-for".into(), "203.0.113.7".into()),
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([("keygate.abilities".into(), ABILITY.into())]),
            ..Default::default()
        }),
    }
}

/// Writes `value` into the request's `authorization` header in place (a
/// served request has just been decoded; rebuilding one would measure an
/// allocation no server pays).
pub fn set_authorization(request: &mut CheckRequest, value: &str) {
    let header = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .and_then(|h| h.headers.get_mut("authorization"));
    if let Some(header) = header {
        header.clear();
        header.push_str(value);
    }
}

/// A cached key holding [`ABILITY`], revoked an hour ago when `revoked`.
pub fn check_key(id: Uuid, key_prefix: String, revoked: bool) -> CheckKey {
    CheckKey {
        id,
        owner_id: format!("owner-{}", id.as_u128() % 10_000),
        environment: "live".into(),
        key_prefix,
        abilities: vec![ABILITY.into()],
        superkey: false,
        rate_limit: None,
        has_credits: false,
        expires_at: None,
        revoked_at: revoked.then(|| Utc::now() - chrono::Duration::hours(1)),
        owner_suspended: false,
        deleted: false,
        metadata: Default::default(),
        allow_list: Default::default(),
        imported: false,
    }
}
