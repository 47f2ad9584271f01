//! gRPC transport: Envoy's ext_authz `Check`, the KeyAdmin service, admin
//! token authentication, how connections are accepted, server reflection per
//! listener, and the one place errors become `tonic::Status`.

pub mod accept;
pub mod auth;
pub mod codec;
mod convert;
pub mod ext_authz;
mod hygiene;
pub mod key_admin;
pub mod key_feed;
pub mod reflection;
pub mod status;
mod webhooks;
