//! Conversions between proto messages and domain types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use tonic::Status;

use super::status::bad_timestamp;
use crate::{
    admin::validate::{MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS},
    domain::{ApiKey, AuditEvent, Credits, KeyState, KeyUsage, RateLimit, Refill, UsageLogEntry},
    proto,
};

pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub fn optional_timestamp(at: Option<DateTime<Utc>>) -> Option<Timestamp> {
    at.map(timestamp)
}

/// A `Timestamp` inside its documented range: years 1 to 9999, `nanos` in
/// `0..1e9` (chrono would read larger `nanos` as a leap second).
pub fn instant(ts: Option<Timestamp>, field: &str) -> Result<Option<DateTime<Utc>>, Status> {
    ts.map(|ts| {
        let seconds = (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds);
        u32::try_from(ts.nanos)
            .ok()
            .filter(|nanos| seconds && *nanos < 1_000_000_000)
            .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
            .ok_or_else(|| bad_timestamp(field))
    })
    .transpose()
}

/// An all-zero message counts as absent (what JSON clients send for `{}`).
pub fn rate_limit(limit: Option<proto::RateLimit>) -> Option<RateLimit> {
    limit
        .filter(|l| l.max_attempts != 0 || l.decay_seconds != 0)
        .map(|l| RateLimit {
            max_attempts: l.max_attempts,
            decay_seconds: l.decay_seconds,
        })
}

pub fn credits(credits: Option<proto::Credits>) -> Option<Credits> {
    credits.map(|c| Credits {
        remaining: c.remaining,
        refill: (c.refill_amount != 0 || c.refill_interval_seconds != 0).then_some(Refill {
            amount: c.refill_amount,
            interval_seconds: c.refill_interval_seconds,
        }),
    })
}

fn credits_message(credits: Credits) -> proto::Credits {
    proto::Credits {
        remaining: credits.remaining,
        refill_amount: credits.refill.map_or(0, |r| r.amount),
        refill_interval_seconds: credits.refill.map_or(0, |r| r.interval_seconds),
    }
}

pub fn metadata(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn text(value: Option<impl ToString>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

pub fn api_key(key: ApiKey, now: DateTime<Utc>) -> proto::ApiKey {
    let state = match key.state(now) {
        KeyState::Active => proto::api_key::State::Active,
        KeyState::Rotating => proto::api_key::State::Rotating,
        KeyState::Revoked => proto::api_key::State::Revoked,
        KeyState::Expired => proto::api_key::State::Expired,
    };
    proto::ApiKey {
        masked_key: key.masked_key(),
        state: state as i32,
        id: key.id.to_string(),
        owner_id: key.owner_id,
        name: key.name,
        environment: key.environment,
        key_prefix: key.key_prefix,
        abilities: key.abilities,
        superkey: key.superkey,
        rate_limit: key.rate_limit.map(|l| proto::RateLimit {
            max_attempts: l.max_attempts,
            decay_seconds: l.decay_seconds,
        }),
        expires_at: optional_timestamp(key.expires_at),
        revoked_at: optional_timestamp(key.revoked_at),
        revocation_reason: key.revocation_reason.unwrap_or_default(),
        rotated_from_id: text(key.rotated_from_id),
        rotated_to_id: text(key.rotated_to_id),
        request_count: key.request_count,
        last_used_at: optional_timestamp(key.last_used_at),
        last_used_ip: key.last_used_ip.unwrap_or_default(),
        metadata: key.metadata.into_iter().collect(),
        created_by: key.created_by.unwrap_or_default(),
        allowed_cidrs: key.allowed_cidrs,
        imported: key.imported,
        created_at: Some(timestamp(key.created_at)),
        updated_at: Some(timestamp(key.updated_at)),
        credits: key.credits.map(credits_message),
    }
}

pub fn audit_event(event: AuditEvent) -> proto::AuditEvent {
    proto::AuditEvent {
        id: event.id.to_string(),
        event: event.event,
        key_id: text(event.key_id),
        owner_id: event.owner_id.unwrap_or_default(),
        key_prefix: event.key_prefix.unwrap_or_default(),
        actor: event.actor,
        metadata: event.metadata.into_iter().collect(),
        at: Some(timestamp(event.at)),
    }
}

pub fn key_usage(key: &ApiKey, usage: KeyUsage) -> proto::KeyUsage {
    proto::KeyUsage {
        request_count: key.request_count,
        last_used_at: optional_timestamp(key.last_used_at),
        last_used_ip: key.last_used_ip.clone().unwrap_or_default(),
        top_endpoints: usage
            .top_endpoints
            .into_iter()
            .map(|(endpoint, count)| proto::EndpointCount { endpoint, count })
            .collect(),
        recent_logs: usage.recent_logs.into_iter().map(usage_log_entry).collect(),
    }
}

fn usage_log_entry(entry: UsageLogEntry) -> proto::UsageLogEntry {
    proto::UsageLogEntry {
        at: Some(timestamp(entry.at)),
        method: entry.method,
        endpoint: entry.endpoint,
        ip: entry.ip.unwrap_or_default(),
        decision: entry.decision,
        count: entry.count.max(1) as u64,
    }
}
