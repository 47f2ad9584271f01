//! gRPC transport: Envoy's ext_authz `Check`, the KeyAdmin service, admin
//! token authentication, and the one place errors become `tonic::Status`.

pub mod auth;
mod convert;
pub mod ext_authz;
pub mod key_admin;
pub mod status;
