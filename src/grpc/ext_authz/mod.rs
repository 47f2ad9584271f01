//! Envoy's `envoy.service.auth.v3.Authorization/Check`.
//!
//! Translates a `CheckRequest` into a borrowed [`CheckInput`], asks the
//! [`Authorizer`], and renders the outcome (`render`) for the hand-written
//! gRPC service (`server`). A denial is an ordinary response carrying the
//! HTTP status Envoy returns; only store trouble is a gRPC error, so Envoy's
//! own `failure_mode_allow` / `status_on_error` decide.

mod render;
mod server;

pub use crate::answer::{
    HEADER_ABILITIES, HEADER_ENVIRONMENT, HEADER_KEY_ID, HEADER_KEY_PREFIX, HEADER_OWNER_ID,
    HEADER_SHADOW_DECISION,
};
pub use render::{denied, EncodedCheckResponse};
pub use server::AuthorizationServer;

use std::{sync::Arc, time::Instant};

use envoy_types::{ext_authz::v3::pb::CheckRequest, pb::envoy::config::core::v3::address::Address};
use metrics::Histogram;
use tonic::{Request, Response, Status};

use self::render::Renderer;
use super::status::check_unavailable;
use crate::{
    answer::MetadataHeaders,
    authz::{Authorizer, CheckInput, HeaderText, NotUtf8, Outcome},
};

/// Header names the Check service reads, sets and strips.
#[derive(Debug, Clone)]
pub struct CredentialHeaders {
    pub authorization: String,
    pub api_key: String,
    pub strip: bool,
    /// Key metadata exported as `x-keygate-meta-<name>` upstream headers.
    pub metadata: MetadataHeaders,
}

pub struct ExtAuthzService {
    authorizer: Arc<Authorizer>,
    headers: CredentialHeaders,
    render: Renderer,
    latency: Histogram,
}

impl ExtAuthzService {
    pub fn new(authorizer: Arc<Authorizer>, headers: CredentialHeaders) -> Self {
        Self {
            authorizer,
            render: Renderer::new(&headers),
            headers,
            latency: metrics::histogram!("keygate_check_duration_seconds"),
        }
    }

    /// Decides one request; shared by the gRPC handler and the benchmarks.
    pub async fn decide(&self, request: &CheckRequest) -> Result<EncodedCheckResponse, Status> {
        let input = self.input(request);
        let outcome = self
            .authorizer
            .check(&input)
            .await
            .map_err(|e| check_unavailable(&e))?;
        Ok(match outcome {
            Outcome::Allow(allowance) => self.render.allowed(allowance),
            Outcome::Deny(reason) => self.render.denied(reason),
        })
    }

    // Debug level: with the default filter the span is a disabled callsite,
    // one cached check on the hot path; `RUST_LOG=keygate=debug` shows it.
    #[tracing::instrument(level = "debug", name = "Check", skip_all)]
    async fn handle(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<EncodedCheckResponse>, Status> {
        let started = Instant::now();
        let response = self.decide(request.get_ref()).await;
        self.latency.record(started.elapsed().as_secs_f64());
        response.map(Response::new)
    }

    fn input<'a>(&self, request: &'a CheckRequest) -> CheckInput<'a> {
        let attributes = request.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let headers = http.map(|h| &h.headers);
        let raw_headers = http
            .and_then(|h| h.header_map.as_ref())
            .map(|m| m.headers.as_slice());
        let header = |name: &str| -> Option<HeaderText<'a>> {
            if let Some(value) = headers.and_then(|h| h.get(name)) {
                return Some(Ok(value.as_str()));
            }
            raw_headers?
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .map(|h| match h.raw_value.is_empty() {
                    true => Ok(h.value.as_str()),
                    false => std::str::from_utf8(&h.raw_value).map_err(|_| NotUtf8),
                })
        };
        let source_address = attributes
            .and_then(|a| a.source.as_ref())
            .and_then(|peer| peer.address.as_ref())
            .and_then(|address| address.address.as_ref())
            .and_then(|address| match address {
                Address::SocketAddress(socket) => Some(socket.address.as_str()),
                _ => None,
            });
        CheckInput {
            authorization: header(&self.headers.authorization),
            api_key: header(&self.headers.api_key),
            forwarded_for: header("x-forwarded-for").and_then(Result::ok),
            source_address,
            method: http.map_or("", |h| h.method.as_str()),
            path: http.map_or("", |h| h.path.as_str()),
            context_extensions: attributes.map(|a| &a.context_extensions),
            requirements: None,
        }
    }
}
