//! keygate: API keys for the Envoy / Istio data plane.
//!
//! - [`domain`]: key format, abilities, key records, the pure Check decision.
//! - [`store`]: PostgreSQL and SQLite persistence; the only home of SQL.
//! - [`cache`], [`issued_keys`], [`ratelimit`]: the in-memory state behind
//!   the Check hot path.
//! - [`authz`]: the Check decision from credential to outcome.
//! - [`credits`]: credits spent from leases of the database's blocks.
//! - [`answer`]: what an outcome tells the proxy, whichever the transport.
//! - [`admin`]: key lifecycle use-cases behind KeyAdmin.
//! - [`usage`]: the off-hot-path usage buffer and flusher.
//! - [`webhooks`]: webhook signing, SSRF rules and the outbox dispatcher.
//! - [`invalidation`]: cross-replica cache invalidation via LISTEN/NOTIFY.
//! - [`grpc`]: the ext_authz and KeyAdmin services and error mapping.
//! - [`forward_auth`]: the same decision over HTTP for NGINX, Traefik, Caddy
//!   and Envoy's HTTP ext_authz.
//! - [`rest`]: the REST/JSON API over the same use-cases, and its OpenAPI.
//! - [`clock`]: the one source of the current instant, set by tests.
//! - [`app`]: the composition root: listeners, tasks and the ordered drain.
//! - [`admin_token`]: what `keygate admin-token` prints.

pub mod admin;
mod admin_runtime;
pub mod admin_token;
pub mod answer;
pub mod app;
pub mod authz;
pub mod cache;
pub mod clock;
pub mod config;
pub mod credits;
pub mod domain;
pub(crate) mod forward_auth;
pub mod grpc;
pub(crate) mod invalidation;
pub(crate) mod issued_keys;
pub(crate) mod key_events;
pub(crate) mod leaks;
mod low_priority;
pub mod ratelimit;
pub mod replica_state;
pub(crate) mod rest;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod usage;
pub(crate) mod webhooks;

/// Generated KeyAdmin API (`proto/keygate/admin/v1/key_admin.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("keygate.admin.v1");

    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("keygate_admin_descriptor");
}

/// Generated KeyFeed API (`proto/keygate/feed/v1/key_feed.proto`): the key
/// table for keygate's Envoy module. Its descriptors are in
/// [`proto::FILE_DESCRIPTOR_SET`].
pub mod feed_proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("keygate.feed.v1");
}
