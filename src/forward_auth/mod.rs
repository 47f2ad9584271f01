//! Forward-auth over HTTP (`KEYGATE_FORWARD_AUTH_ADDR`): the Check decision
//! for proxies that ask an HTTP endpoint (NGINX `auth_request`, Traefik
//! `forwardAuth`, Caddy `forward_auth`, Envoy's HTTP ext_authz).
//!
//! One decision, two transports: a request is read into the same
//! [`CheckInput`](crate::authz::CheckInput) that the gRPC Check builds
//! (`input`), decided by the same [`Authorizer::check`], and rendered from
//! the same transport-independent parts (`render`, over [`crate::answer`]).
//! Usage, metrics and the miss bound are therefore Check's. A store failure
//! on a miss is a 503 within the same check timeout. README.md,
//! "Forward-auth", is the operators' description.

mod input;
mod render;
mod server;

pub use input::InputSettings;
pub use render::{Body, RenderSettings};
pub use server::serve;

use std::{sync::Arc, time::Instant};

use http::{Request, Response};
use metrics::Histogram;

use crate::{
    authz::{Authorizer, Outcome},
    grpc::status::report_check_failure,
};

/// The forward-auth use of the [`Authorizer`].
pub struct ForwardAuth {
    authorizer: Arc<Authorizer>,
    input: input::Reader,
    render: render::Renderer,
    latency: Histogram,
}

impl ForwardAuth {
    pub fn new(authorizer: Arc<Authorizer>, input: InputSettings, render: RenderSettings) -> Self {
        Self {
            authorizer,
            input: input::Reader::new(&input),
            render: render::Renderer::new(&render),
            latency: metrics::histogram!("keygate_forward_auth_duration_seconds"),
        }
    }

    /// Answers one request; `peer` is the connection's remote IP address.
    pub async fn answer<B>(&self, request: &Request<B>, peer: &str) -> Response<Body> {
        let started = Instant::now();
        let response = match input::read(request, &self.input, peer) {
            Err(problem) => render::bad_request(&problem),
            Ok(input) => match self.authorizer.check(&input).await {
                Ok(Outcome::Allow(allowance)) => self.render.allowed(&allowance),
                Ok(Outcome::Deny(reason)) => self.render.denied(reason),
                Err(error) => {
                    if !error.is_contended() {
                        report_check_failure(&error);
                    }
                    render::unavailable()
                }
            },
        };
        self.latency.record(started.elapsed().as_secs_f64());
        response
    }
}
