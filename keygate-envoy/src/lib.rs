//! keygate inside Envoy: an HTTP filter loaded by Envoy 1.40's
//! `envoy.filters.http.dynamic_modules` extension from `libkeygate_envoy.so`
//! (docs/envoy-module.md).
//!
//! - [`filter`]: what the filter does with a request, in safe Rust, against
//!   the [`filter::Stream`] trait.
//! - [`feed`]: keeps the key table current from keygate's key feed;
//!   [`usage`] reports the decisions back.
//! - [`lookup`]: asks keygate about what the table cannot decide.
//! - `client_address`: the client's IP from Envoy's `source.address`.
//! - `abi`: the hand-written C ABI bindings and exported event hooks; the
//!   only module allowed `unsafe`.

#[allow(unsafe_code)]
mod abi;
mod client_address;
pub mod feed;
pub mod filter;
pub mod lookup;
pub mod settings;
pub mod table;
pub mod usage;
