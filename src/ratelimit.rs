//! Per-key rate limits: per replica in memory (`local`), or shared by every
//! replica through Redis ([`shared`]) with the local limiter answering
//! whenever Redis does not in time.
//!
//! Each limited key gets a GCRA limiter (governor) allowing `max_attempts`
//! per `decay_seconds`. Limiter state is kept in a bounded moka cache and
//! expires after `decay_seconds` without use: by then the key's allowance is
//! full again, so forgetting it loses nothing.

pub mod shared;

use std::{
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::{InMemoryState, NotKeyed},
    Quota, RateLimiter,
};
use moka::{sync::Cache, Expiry};
use uuid::Uuid;

use crate::domain::RateLimit;
pub use shared::SharedLimiter;

/// Where rate-limit state lives (`KEYGATE_RATE_LIMIT_STORE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitStore {
    /// Each replica counts on its own: `N` replicas allow `N` times the limit.
    Local,
    Redis(RedisSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: RedisUrl,
    /// How long a Check waits for Redis before the local limiter answers.
    pub timeout: Duration,
    /// Prefix of every Redis key written.
    pub prefix: String,
}

/// A Redis URL, which may carry a password: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(pub String);

impl RedisUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

struct KeyLimiter {
    limit: RateLimit,
    gcra: Gcra,
}

/// The result of counting one request against a key's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    Allowed {
        limit: u32,
        remaining: u32,
        /// Seconds until the full allowance is back.
        reset_secs: u64,
    },
    Limited {
        limit: u32,
        retry_after_secs: u64,
    },
}

struct IdleForDecay;

impl Expiry<Uuid, Arc<KeyLimiter>> for IdleForDecay {
    fn expire_after_create(
        &self,
        _: &Uuid,
        limiter: &Arc<KeyLimiter>,
        _: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(limiter.limit.decay_seconds.into()))
    }

    fn expire_after_read(
        &self,
        _: &Uuid,
        limiter: &Arc<KeyLimiter>,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(limiter.limit.decay_seconds.into()))
    }
}

pub struct RateLimiters {
    limiters: Cache<Uuid, Arc<KeyLimiter>>,
    clock: DefaultClock,
    shared: Option<SharedLimiter>,
}

impl RateLimiters {
    pub fn new(capacity: u64) -> Self {
        Self {
            limiters: Cache::builder()
                .max_capacity(capacity)
                .expire_after(IdleForDecay)
                .build(),
            clock: DefaultClock::default(),
            shared: None,
        }
    }

    /// Counts in Redis first; the local limiters stay for the fallback.
    pub fn with_shared(mut self, shared: SharedLimiter) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Counts one request for `key_id` against `limit`: in Redis when it is
    /// configured and answers in time, otherwise on this replica. Local mode
    /// never waits on anything.
    pub async fn check(&self, key_id: Uuid, limit: RateLimit) -> RateOutcome {
        if let Some(shared) = &self.shared {
            if let Some(outcome) = shared.check(key_id, limit).await {
                return outcome;
            }
        }
        self.check_local(key_id, limit)
    }

    /// Counts one request for `key_id` against `limit` on this replica.
    pub fn check_local(&self, key_id: Uuid, limit: RateLimit) -> RateOutcome {
        let mut limiter = self.limiters.get_with(key_id, || new_limiter(limit));
        if limiter.limit != limit {
            // The key's limit was updated: start afresh under the new one.
            limiter = new_limiter(limit);
            self.limiters.insert(key_id, limiter.clone());
        }
        let per_request = per_request_interval(limit);
        match limiter.gcra.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = limit.max_attempts.saturating_sub(remaining);
                RateOutcome::Allowed {
                    limit: limit.max_attempts,
                    remaining,
                    reset_secs: ceil_secs(per_request * missing),
                }
            }
            Err(not_until) => RateOutcome::Limited {
                limit: limit.max_attempts,
                retry_after_secs: ceil_secs(not_until.wait_time_from(self.clock.now())).max(1),
            },
        }
    }

    /// Forgets a key's state, e.g. after its limit changed or it was revoked.
    pub fn forget(&self, key_id: Uuid) {
        self.limiters.invalidate(&key_id);
    }
}

fn per_request_interval(limit: RateLimit) -> Duration {
    Duration::from_secs(limit.decay_seconds.into()) / limit.max_attempts.max(1)
}

fn new_limiter(limit: RateLimit) -> Arc<KeyLimiter> {
    let burst = NonZeroU32::new(limit.max_attempts).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(per_request_interval(limit).max(Duration::from_nanos(1)))
        .expect("period is positive")
        .allow_burst(burst);
    Arc::new(KeyLimiter {
        limit,
        gcra: RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
    })
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_attempts_then_limits_with_retry_after() {
        let limiters = RateLimiters::new(100);
        let key = Uuid::from_u128(7);
        let limit = RateLimit {
            max_attempts: 3,
            decay_seconds: 60,
        };
        let remaining: Vec<_> = (0..3)
            .map(|_| match limiters.check_local(key, limit) {
                RateOutcome::Allowed { remaining, .. } => remaining,
                other => panic!("expected allowed, got {other:?}"),
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        match limiters.check_local(key, limit) {
            RateOutcome::Limited {
                retry_after_secs,
                limit,
            } => {
                assert_eq!(limit, 3);
                assert!((1..=20).contains(&retry_after_secs), "{retry_after_secs}");
            }
            other => panic!("expected limited, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_limited_independently_and_a_new_limit_starts_afresh() {
        let limiters = RateLimiters::new(100);
        let one = RateLimit {
            max_attempts: 1,
            decay_seconds: 60,
        };
        assert!(matches!(
            limiters.check_local(Uuid::from_u128(1), one),
            RateOutcome::Allowed { .. }
        ));
        assert!(matches!(
            limiters.check_local(Uuid::from_u128(1), one),
            RateOutcome::Limited { .. }
        ));
        assert!(matches!(
            limiters.check_local(Uuid::from_u128(2), one),
            RateOutcome::Allowed { .. }
        ));
        let two = RateLimit {
            max_attempts: 2,
            decay_seconds: 60,
        };
        assert!(matches!(
            limiters.check_local(Uuid::from_u128(1), two),
            RateOutcome::Allowed { .. }
        ));
    }
}
