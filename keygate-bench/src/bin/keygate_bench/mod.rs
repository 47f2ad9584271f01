//! The modules of `keygate-bench` (see `src/bin/keygate-bench.rs`).

pub mod admin;
pub mod check;
pub mod grpc;
pub mod grpc_body;
pub mod http;
pub mod load;
pub mod noop;
pub mod noop_http;
pub mod procstat;
pub mod propagation;
pub mod stats;
pub mod usage_flush;
pub mod workload;
