//! The REST/JSON API on `KEYGATE_HTTP_ADDR`: the KeyAdmin use-cases for
//! clients that speak JSON rather than gRPC (see the README's REST section).
//!
//! - [`principal`]: admin token or an owner's own key, and for which owner;
//! - [`extract`]: body, query and path parsing into precise 4xx errors;
//! - [`keys`], [`admin_routes`], [`webhooks`]: handlers that translate and call
//!   [`KeyAdmin`] once;
//! - [`error`]: the one place errors become HTTP responses;
//! - [`model`]: the JSON shapes; [`openapi`]: the document built from them.

pub mod admin_routes;
pub mod error;
pub mod extract;
pub mod keys;
pub mod model;
pub mod openapi;
pub mod principal;
pub mod secret_scanning;
pub mod webhooks;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
    Json, Router,
};
use tokio::net::TcpListener;
use utoipa::OpenApi;

use crate::admin::KeyAdmin;
use error::ApiError;
use principal::Authenticator;

/// What every handler shares.
pub struct RestState {
    pub admin: Arc<KeyAdmin>,
    pub auth: Authenticator,
    /// The keys secret-scanning reports must be signed with; `None` turns
    /// `/v1/secret-scanning/github` off.
    pub leaks: Option<crate::leaks::ScanningKeys>,
}

/// Every route, the body limit and the access log.
pub fn router(state: Arc<RestState>) -> Router {
    let document = openapi::ApiDoc::openapi();
    Router::new()
        .route("/v1/api-keys", get(keys::list).post(keys::create))
        .route("/v1/api-keys/scopes", get(keys::scopes))
        .route(
            "/v1/api-keys/{id}",
            get(keys::get).patch(keys::update).delete(keys::revoke),
        )
        .route("/v1/api-keys/{id}/rotate", post(keys::rotate))
        .route("/v1/api-keys/{id}/usage", get(keys::usage))
        .route("/v1/admin/api-keys", get(admin_routes::list_keys))
        .route(
            "/v1/admin/api-keys/{id}/revoke",
            post(admin_routes::revoke_key),
        )
        .route(
            "/v1/admin/owners/{owner_id}/suspend",
            post(admin_routes::suspend_owner),
        )
        .route(
            "/v1/admin/owners/{owner_id}/resume",
            post(admin_routes::resume_owner),
        )
        .route(
            "/v1/admin/audit-events",
            get(admin_routes::list_audit_events),
        )
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/redeliver", post(webhooks::redeliver))
        .route("/v1/webhooks/{id}/test", post(webhooks::send_test))
        .route("/v1/secret-scanning/github", post(secret_scanning::github))
        .route("/openapi.json", get(move || async move { Json(document) }))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

/// One line per request: method, the route's pattern (never the raw path or
/// query, and never a header), status and latency. Keys travel only in the
/// `authorization` header and in create/rotate response bodies, neither of
/// which is logged.
async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = next.run(request).await;
    tracing::info!(
        target: "keygate::rest",
        %method,
        route,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish
/// (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
