//! keygate's integration tests: real servers on loopback ports, real
//! clients, a fresh SQLite file or PostgreSQL database per test
//! (`common`), and Redis for the shared limits.
//!
//! One test binary, not one per file: each binary links the whole crate and
//! its dependencies, and linking them one by one was most of a clean run of
//! `scripts/test.sh`. Run one file's tests with a filter on its module,
//! e.g. `cargo test --test it replicas::`.

#[macro_use]
mod common;

mod admin_api;
mod admin_auth;
mod admin_lifecycle_edges;
mod check_path;
mod hygiene;
mod key_feed;
mod limits;
mod metrics;
mod outage;
mod replicas;
mod rest_api;
mod secrets_never_leak;
mod tls;
mod usage;
mod webhooks;
