//! Rate limits shared by every replica through Redis
//! (`KEYGATE_RATE_LIMIT_STORE=redis://…`, docs/behaviour.md "Rate limits").
//!
//! Decisions are atomic in Redis, in a Lua script (`gcra.lua`) on one
//! multiplexed connection that every Check shares. A Check queues its
//! decision for [`batches`], the one task that talks to Redis: the decisions
//! that arrive while its script call is out go together in the next one. Redis's
//! own clock (`TIME`) is the only clock, so replicas whose clocks drift
//! still agree.
//!
//! Redis must never fail a Check: a decision that does not come back within
//! `KEYGATE_RATE_LIMIT_TIMEOUT` is taken by this replica's local limiter
//! instead, and for [`PROBE_INTERVAL`] afterwards every decision is local
//! without waiting, but for one probe per interval that finds out whether
//! Redis answers again. Each change of state is logged once.

mod batches;

use std::{
    fmt::Display,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge};
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Script,
};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};
use uuid::Uuid;

use super::{ceil_secs, RateOutcome, RedisSettings};
use crate::domain::RateLimit;
use batches::{Batches, Decision, Verdict};

/// While Redis is unavailable, how often one decision tries it again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Reconnecting is the connection manager's business, off the Check path;
/// these bound each attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_RETRIES: usize = 3;

/// Decisions waiting for Redis at most. Only a Redis slower than the
/// timeout for this many Checks at once fills it; a Check that finds it
/// full is decided locally.
const QUEUE_CAPACITY: usize = 8192;

pub struct SharedLimiter {
    queue: mpsc::Sender<Decision>,
    timeout: Duration,
    availability: Arc<Availability>,
    fallbacks: Counter,
}

impl SharedLimiter {
    /// Prepares the connection and starts the task that carries decisions to
    /// Redis (so it must be called within the Tokio runtime). The connection
    /// is opened by the first decision, so a Redis that is down at start-up
    /// only means local limits until it is up.
    pub fn new(settings: &RedisSettings) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(CONNECT_TIMEOUT);
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        let availability = Arc::new(Availability::new());
        let (queue, decisions) = mpsc::channel(QUEUE_CAPACITY);
        let batches = Batches::new(
            redis,
            Script::new(include_str!("gcra.lua")),
            settings,
            availability.clone(),
        );
        tokio::spawn(batches.run(decisions));
        Ok(Self {
            queue,
            timeout: settings.timeout,
            availability,
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
        let (reply, verdict) = oneshot::channel();
        let decision = Decision {
            key_id,
            limit,
            deadline: Instant::now() + self.timeout,
            reply,
        };
        match self.queue.try_send(decision) {
            Ok(()) => {}
            // More decisions waiting than Redis takes within the timeout.
            Err(TrySendError::Full(_)) => {
                self.fallbacks.increment(1);
                return None;
            }
            Err(TrySendError::Closed(_)) => {
                self.availability
                    .failed(&"the task that sends decisions to Redis has stopped");
                self.fallbacks.increment(1);
                return None;
            }
        }
        // No timer here: the batches answer or let go every decision by
        // its deadline, and one let go is a closed channel.
        match verdict.await {
            Ok(verdict) => Some(outcome(limit, verdict)),
            Err(_) => {
                self.fallbacks.increment(1);
                None
            }
        }
    }
}

/// The script's `{allowed, remaining, microseconds}` as an outcome.
fn outcome(limit: RateLimit, (allowed, remaining, micros): Verdict) -> RateOutcome {
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

    #[tokio::test]
    async fn a_stopped_batch_task_marks_redis_down_and_checks_fall_back() {
        let (queue, decisions) = mpsc::channel(1);
        drop(decisions);
        let limiter = SharedLimiter {
            queue,
            timeout: Duration::from_secs(5),
            availability: Arc::new(Availability::new()),
            fallbacks: metrics::counter!("keygate_rate_limit_fallbacks_total"),
        };
        assert_eq!(limiter.check(Uuid::new_v4(), LIMIT).await, None);
        assert!(limiter.availability.down.load(Ordering::Relaxed));
        // Down: the next Check does not even queue until the probe is due.
        assert!(!limiter.availability.may_try());
    }

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
