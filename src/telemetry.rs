//! Logs (tracing, human or JSON) and the Prometheus metrics listener.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// How log lines are written (`KEYGATE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer()).try_init(),
    };
    if installed.is_err() {
        tracing::debug!("a global tracing subscriber was already installed");
    }
}

/// Counts a store failure by the operation that met it (`admin`, `check`,
/// `usage_flush`).
pub fn store_error(operation: &'static str) {
    metrics::counter!("keygate_store_errors_total", "operation" => operation).increment(1);
}

/// Check latency buckets: microseconds matter on a cache hit.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Installs the Prometheus recorder and serves `/metrics` on `addr`.
pub fn init_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install()?;
    describe_metrics();
    Ok(())
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "keygate_check_duration_seconds",
        Unit::Seconds,
        "Check handling time, from request to response"
    );
    describe_histogram!(
        "keygate_forward_auth_duration_seconds",
        Unit::Seconds,
        "Forward-auth handling time, from request head to response"
    );
    describe_counter!(
        "keygate_check_decisions_total",
        "Check decisions by code (allowed or the denial code)"
    );
    describe_counter!(
        "keygate_check_shadow_total",
        "Shadow-mode requests that would have been denied"
    );
    describe_counter!(
        "keygate_cache_hits_total",
        "Check lookups answered from the key cache"
    );
    describe_counter!(
        "keygate_cache_misses_total",
        "Check lookups that needed the store"
    );
    describe_counter!(
        "keygate_cache_negative_hits_total",
        "Check lookups answered by the unknown-key cache"
    );
    describe_gauge!("keygate_cache_entries", "Keys in the cache");
    describe_counter!(
        "keygate_usage_dropped_total",
        "Usage events dropped because the buffer was full"
    );
    describe_counter!(
        "keygate_usage_flushed_total",
        "Usage events written to the store"
    );
    describe_counter!(
        "keygate_usage_flush_failures_total",
        "Usage flushes that failed and will be retried"
    );
    describe_gauge!(
        "keygate_usage_buffer_depth",
        "Usage events waiting to be flushed"
    );
    describe_histogram!(
        "keygate_usage_flush_seconds",
        Unit::Seconds,
        "Time to write one usage batch"
    );
    describe_counter!("keygate_store_errors_total", "Store failures by operation");
    describe_counter!(
        "keygate_admin_calls_total",
        "KeyAdmin calls by method and gRPC code, calls refused for their token included"
    );
    describe_counter!(
        "keygate_invalidations_total",
        "Cache invalidations received from other replicas"
    );
    describe_gauge!(
        "keygate_listener_connected",
        "1 while the Postgres LISTEN connection is up: at 0, revokes made on other replicas are not heard (alert on it)"
    );
    describe_counter!(
        "keygate_listener_reconnects_total",
        "Reconnects of the Postgres LISTEN connection"
    );
    describe_counter!(
        "keygate_cache_stale_served_total",
        "Checks answered from a cache entry past its TTL because the store could not be reached (KEYGATE_CACHE_STALE_IF_ERROR)"
    );
    describe_counter!(
        "keygate_check_misses_shed_total",
        "Cache misses refused with UNAVAILABLE because KEYGATE_MAX_CONCURRENT_MISSES store reads were in flight"
    );
    describe_counter!(
        "keygate_cache_unissued_total",
        "Checks of well-formed keys that no issued key matches, answered invalid_key without the store"
    );
    describe_gauge!(
        "keygate_issued_keys",
        "Key hash prefixes in the in-memory set of issued keys"
    );
    describe_gauge!(
        "keygate_listener_heartbeat_age_seconds",
        "Seconds since the LISTEN connection last delivered its own heartbeat NOTIFY (a dead connection is replaced after 3 s)"
    );
    describe_counter!(
        "keygate_cache_clears_total",
        "Full cache clears (lost LISTEN connection)"
    );
    describe_counter!(
        "keygate_rate_limit_fallbacks_total",
        "Rate-limit decisions the local limiter took because Redis did not answer within KEYGATE_RATE_LIMIT_TIMEOUT or was known to be down"
    );
    describe_gauge!(
        "keygate_rate_limit_redis_up",
        "1 while Redis answers rate-limit decisions, 0 while the local limiter answers (redis mode only)"
    );
}
