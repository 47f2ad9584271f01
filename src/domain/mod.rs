//! Pure domain types: the key format, abilities, key records, request paths
//! and Check decisions. Nothing here knows about tonic, sqlx or the clock's
//! source.

pub mod ability;
pub mod activity;
pub mod allow_list;
pub mod api_key;
pub mod decision;
pub mod echo;
pub mod key;
pub mod path;
pub mod route_rule;
pub mod webhook;

pub use ability::{Ability, AbilityError};
pub use activity::{AuditEvent, KeyUsage, UsageLogEntry};
pub use allow_list::{AllowList, CidrError};
pub use api_key::{ApiKey, CheckKey, Credits, KeyState, Owner, RateLimit, Refill};
pub use decision::{decide, DenyReason, RouteRequirements};
pub use echo::Echo;
pub use key::{
    contains_key_shaped, IssuedKey, KeyFormat, KeyFormatError, KeyHash, KeyParseError, ParsedKey,
    PlaintextKey,
};
pub use route_rule::RouteRule;
