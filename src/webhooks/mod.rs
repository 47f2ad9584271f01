//! Webhook delivery: signing secrets and how they are sealed at rest, the
//! Standard Webhooks signature, which targets may be called (SSRF rules),
//! and the dispatcher task every replica runs (docs/architecture.md,
//! "Webhooks").
//!
//! Nothing here runs on the Check path: events enter the outbox inside the
//! KeyAdmin transactions (`store::webhooks`), and the dispatcher reads them
//! from there on its own task and its own connections.

mod client;
pub mod dispatcher;
mod endpoint_cache;
pub mod secret;
pub mod signature;
pub mod target;

pub use dispatcher::{DispatchSettings, Dispatcher};
pub use secret::{SealKey, SigningSecret};
pub use target::TargetPolicy;
