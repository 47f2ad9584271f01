//! Webhook endpoints, their deliveries, and the events they carry
//! (docs/behaviour.md, "Webhooks").
//!
//! An event's payload is built here from what the audit trail records: ids,
//! the key's display prefix, owner, actor, time and reason. Never the key or
//! its hash: the audit record holds neither.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

/// Every event type an endpoint may subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "api_key.created",
    "api_key.updated",
    "api_key.rotated",
    "api_key.revoked",
    "api_key.expired",
    "api_key.expiring",
    "api_key.leaked",
    "api_key.dormant",
    "owner.suspended",
    "owner.resumed",
    "webhook.test",
];

/// The webhook type an audit event is sent as. An administrator's revoke is
/// a revoke to the owner; the payload says who did it (`actor`, `admin`).
pub fn event_type_of(audit_event: &str) -> &str {
    match audit_event {
        "api_key.admin_revoked" => "api_key.revoked",
        other => other,
    }
}

/// A registered endpoint. Its signing secret is never part of it: the
/// secret leaves the server once, in the creation response.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: Uuid,
    pub owner_id: String,
    pub url: String,
    /// Event types delivered; empty means every one.
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Until when none of its deliveries is sent, after an attempt to it
    /// timed out (docs/behaviour.md §9); `None` when it is not paused.
    pub paused_until: Option<DateTime<Utc>>,
}

impl Webhook {
    /// As an owner sees it at `now`: a pause that has run out is none.
    pub fn as_of(mut self, now: DateTime<Utc>) -> Self {
        self.paused_until = self.paused_until.filter(|until| *until > now);
        self
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    Delivered,
    /// Given up after the retry window.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<DeliveryStatus> {
        match raw {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event on its way to one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The `webhook-id`: the same on every attempt, so receivers can drop
    /// duplicates.
    pub event_id: Uuid,
    pub webhook_id: Uuid,
    pub event_type: String,
    pub payload: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<Attempt>,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status; `None` when no response came.
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// The facts an event reports, as the audit trail records them.
#[derive(Debug, Clone)]
pub struct EventFacts<'a> {
    pub event_id: Uuid,
    pub audit_event: &'a str,
    pub owner_id: &'a str,
    pub key_id: Option<Uuid>,
    pub key_prefix: Option<&'a str>,
    pub actor: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    pub at: DateTime<Utc>,
}

/// The JSON body sent for an event, Standard Webhooks' `{type, timestamp,
/// data}`. `data` holds the ids, owner, actor, time and the audit details
/// (reason, fields changed, successor's prefix…), flattened.
pub fn payload(facts: &EventFacts<'_>) -> String {
    let event_type = event_type_of(facts.audit_event);
    let at = facts.at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let mut data = serde_json::Map::new();
    for (name, value) in facts.metadata {
        data.insert(name.clone(), serde_json::Value::String(value.clone()));
    }
    data.insert("event_id".into(), facts.event_id.to_string().into());
    data.insert("owner_id".into(), facts.owner_id.into());
    if let Some(key_id) = facts.key_id {
        data.insert("key_id".into(), key_id.to_string().into());
    }
    if let Some(prefix) = facts.key_prefix {
        data.insert("key_prefix".into(), prefix.into());
    }
    data.insert("actor".into(), facts.actor.into());
    data.insert("at".into(), at.clone().into());
    match facts.audit_event {
        "api_key.created" => {
            data.insert("created_by".into(), facts.actor.into());
        }
        "api_key.admin_revoked" => {
            data.insert("admin".into(), true.into());
        }
        _ => {}
    }
    serde_json::json!({ "type": event_type, "timestamp": at, "data": data }).to_string()
}

/// `events` as stored: `,a,b,` so that one `LIKE '%,type,%'` finds a type
/// in both backends, or empty for every event.
pub fn events_column(events: &[String]) -> String {
    if events.is_empty() {
        String::new()
    } else {
        format!(",{},", events.join(","))
    }
}

/// The inverse of [`events_column`].
pub fn events_from_column(column: &str) -> Vec<String> {
    column
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_shown_paused_only_until_its_pause_runs_out() {
        let at = |seconds: i64| DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap();
        let hook = Webhook {
            id: Uuid::nil(),
            owner_id: "org_1".into(),
            url: "https://hooks.example/in".into(),
            events: Vec::new(),
            enabled: true,
            created_at: at(0),
            updated_at: at(0),
            paused_until: Some(at(60)),
        };
        assert_eq!(hook.clone().as_of(at(59)).paused_until, Some(at(60)));
        assert_eq!(
            hook.clone().as_of(at(60)).paused_until,
            None,
            "due again at its end"
        );
        assert_eq!(hook.as_of(at(61)).paused_until, None);
    }

    fn facts<'a>(event: &'a str, metadata: &'a BTreeMap<String, String>) -> EventFacts<'a> {
        EventFacts {
            event_id: Uuid::nil(),
            audit_event: event,
            owner_id: "org_1",
            key_id: Some(Uuid::nil()),
            key_prefix: Some("sk_live_ABCDEFGH"),
            actor: "backend",
            metadata,
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn an_admin_revoke_is_sent_as_a_revoke_marked_admin() {
        let metadata = BTreeMap::from([("reason".to_owned(), "abuse".to_owned())]);
        let body: serde_json::Value =
            serde_json::from_str(&payload(&facts("api_key.admin_revoked", &metadata))).unwrap();
        assert_eq!(body["type"], "api_key.revoked");
        assert_eq!(body["data"]["admin"], true);
        assert_eq!(body["data"]["reason"], "abuse");
        assert_eq!(body["data"]["key_prefix"], "sk_live_ABCDEFGH");
    }

    #[test]
    fn a_created_event_names_who_created_the_key() {
        let metadata = BTreeMap::new();
        let body: serde_json::Value =
            serde_json::from_str(&payload(&facts("api_key.created", &metadata))).unwrap();
        assert_eq!(body["data"]["created_by"], "backend");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn the_events_column_round_trips_and_matches_whole_types() {
        let events = vec!["api_key.created".to_owned(), "owner.resumed".to_owned()];
        let column = events_column(&events);
        assert_eq!(column, ",api_key.created,owner.resumed,");
        assert_eq!(events_from_column(&column), events);
        assert!(events_from_column(&events_column(&[])).is_empty());
    }
}
