//! What happened to keys, as the transports show it: audit events and a
//! key's usage. Plain values; the store maps its rows into them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: Uuid,
    pub event: String,
    pub key_id: Option<Uuid>,
    pub owner_id: Option<String>,
    pub key_prefix: Option<String>,
    pub actor: String,
    pub metadata: BTreeMap<String, String>,
    pub at: DateTime<Utc>,
}

/// One usage-log row: `count` requests of one key in one second with the
/// same method, endpoint, client IP and decision; `at` is the latest of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLogEntry {
    pub at: DateTime<Utc>,
    pub method: String,
    pub endpoint: String,
    pub ip: Option<String>,
    pub decision: String,
    pub count: i64,
}

/// What GetKeyUsage reports beyond the key's own counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsage {
    pub top_endpoints: Vec<(String, u64)>,
    pub recent_logs: Vec<UsageLogEntry>,
}
