//! Rate limits shared by every replica through Redis
//! (`KEYGATE_RATE_LIMIT_STORE=redis://…`, docs/behaviour.md "Rate limits").
//!
//! One decision is one atomic Lua script (`gcra.lua`) on one multiplexed,
//! pipelined connection that every Check shares. Redis's own clock
//! (`TIME`) is the only clock, so replicas whose clocks drift still agree.
//!
//! Redis must never fail a Check: a decision that does not come back within
//! `KEYGATE_RATE_LIMIT_TIMEOUT` is taken by this replica's local limiter
//! instead, and for [`PROBE_INTERVAL`] afterwards every decision is local
//! without waiting, but for one probe per interval that finds out whether
//! Redis answers again. Each change of state is logged once.

use std::{
    fmt::Display,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge};
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Script,
};
use uuid::Uuid;

use super::{ceil_secs, RateOutcome, RedisSettings};
use crate::domain::RateLimit;

/// While Redis is unavailable, how often one decision tries it again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Reconnecting is the connection manager's business, off the Check path;
/// these bound each attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_RETRIES: usize = 3;

pub struct SharedLimiter {
    redis: ConnectionManager,
    script: Script,
    prefix: String,
    timeout: Duration,
    availability: Availability,
    fallbacks: Counter,
}

impl SharedLimiter {
    /// Prepares the connection; it is opened by the first decision, so a
    /// Redis that is down at start-up only means local limits until it is up.
    pub fn new(settings: &RedisSettings) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(CONNECT_TIMEOUT);
        Ok(Self {
            redis: ConnectionManager::new_lazy_with_config(client, config)?,
            script: Script::new(include_str!("gcra.lua")),
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            availability: Availability::new(),
            fallbacks: metrics::counter!("keygate_rate_limit_fallbacks_total"),
        })
    }

    /// Counts one request in Redis. `None` when Redis did not answer in
    /// time (or is known to be unavailable): the caller asks the local
    /// limiter, and the fallback is counted.
    pub async fn check(&self, key_id: Uuid, limit: RateLimit) -> Option<RateOutcome> {
        if !self.availability.may_try() {
            self.fallbacks.increment(1);
            return None;
        }
        let interval_us = super::per_request_interval(limit).as_micros().max(1) as u64;
        // The limit is part of the name: a key whose limit changes starts
        // afresh under the new one, as it does locally, and the old state
        // expires on its own.
        let state = format!(
            "{}rl:{key_id}:{}:{}",
            self.prefix, limit.max_attempts, limit.decay_seconds
        );
        let answer = tokio::time::timeout(
            self.timeout,
            self.evaluate(&state, interval_us, limit.max_attempts),
        )
        .await;
        match answer {
            Ok(Ok(reply)) => {
                self.availability.answered();
                Some(outcome(limit, reply))
            }
            Ok(Err(error)) => {
                self.availability.failed(&error);
                self.fallbacks.increment(1);
                None
            }
            Err(_) => {
                self.availability
                    .failed(&format_args!("no answer within {:?}", self.timeout));
                self.fallbacks.increment(1);
                None
            }
        }
    }
    /// `EVALSHA` of the script as one command built in place (redis-rs's
    /// `ScriptInvocation` copies each key and argument into vectors of its
    /// own first: five allocations a Check); `SCRIPT LOAD` and once more
    /// when Redis does not know the script (a restart, a failover).
    async fn evaluate(
        &self,
        state: &str,
        interval_us: u64,
        burst: u32,
    ) -> redis::RedisResult<(i64, i64, i64)> {
        let mut redis = self.redis.clone();
        let mut command = redis::Cmd::with_capacity(6, 96 + state.len());
        command
            .arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(1)
            .arg(state)
            .arg(interval_us)
            .arg(burst);
        match command.query_async(&mut redis).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.script.prepare_invoke().load_async(&mut redis).await?;
                command.query_async(&mut redis).await
            }
            answer => answer,
        }
    }
}

/// The script's `{allowed, remaining, microseconds}` as an outcome.
fn outcome(limit: RateLimit, (allowed, remaining, micros): (i64, i64, i64)) -> RateOutcome {
    let wait = Duration::from_micros(micros.max(0) as u64);
    if allowed == 1 {
        RateOutcome::Allowed {
            limit: limit.max_attempts,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_secs: ceil_secs(wait),
        }
    } else {
        RateOutcome::Limited {
            limit: limit.max_attempts,
            retry_after_secs: ceil_secs(wait).max(1),
        }
    }
}

/// Whether Redis is believed to answer, and when to try it again if not.
/// Lock-free: every Check reads it.
struct Availability {
    epoch: Instant,
    down: AtomicBool,
    /// Milliseconds since `epoch` before which no decision tries Redis.
    next_probe_ms: AtomicU64,
    up: Gauge,
}

impl Availability {
    fn new() -> Self {
        let up = metrics::gauge!("keygate_rate_limit_redis_up");
        up.set(1.0);
        Self {
            epoch: Instant::now(),
            down: AtomicBool::new(false),
            next_probe_ms: AtomicU64::new(0),
            up,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Up: always. Down: only the one caller that claims the next probe.
    fn may_try(&self) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.now_ms();
        let next = self.next_probe_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_probe_ms
                .compare_exchange(
                    next,
                    now + PROBE_INTERVAL.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            self.up.set(1.0);
            tracing::info!("Redis answers again: rate limits are shared across replicas again");
        }
    }

    fn failed(&self, cause: &dyn Display) {
        self.next_probe_ms.store(
            self.now_ms() + PROBE_INTERVAL.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !self.down.swap(true, Ordering::Relaxed) {
            self.up.set(0.0);
            tracing::warn!(
                %cause,
                "Redis is unavailable: rate limits fall back to this replica's local limiter until it answers again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        max_attempts: 10,
        decay_seconds: 60,
    };

    #[test]
    fn a_script_reply_becomes_the_same_outcome_the_local_limiter_gives() {
        assert_eq!(
            outcome(LIMIT, (1, 9, 6_000_000)),
            RateOutcome::Allowed {
                limit: 10,
                remaining: 9,
                reset_secs: 6
            }
        );
        assert_eq!(
            outcome(LIMIT, (0, 0, 1)),
            RateOutcome::Limited {
                limit: 10,
                retry_after_secs: 1
            }
        );
    }

    #[test]
    fn while_down_only_one_caller_per_interval_probes() {
        let availability = Availability::new();
        assert!(availability.may_try());
        availability.failed(&"refused");
        assert!(!availability.may_try(), "a probe right after a failure");
        availability
            .next_probe_ms
            .store(availability.now_ms(), Ordering::Relaxed);
        assert!(availability.may_try());
        assert!(!availability.may_try(), "two probes in one interval");
        availability.answered();
        assert!(availability.may_try());
        assert!(availability.may_try());
    }
}
