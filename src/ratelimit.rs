//! Per-key rate limits, enforced per replica in memory.
//!
//! Each limited key gets a GCRA limiter (governor) allowing `max_attempts`
//! per `decay_seconds`. Limiter state is kept in a bounded moka cache and
//! expires after `decay_seconds` without use: by then the key's allowance is
//! full again, so forgetting it loses nothing.

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
}

impl RateLimiters {
    pub fn new(capacity: u64) -> Self {
        Self {
            limiters: Cache::builder()
                .max_capacity(capacity)
                .expire_after(IdleForDecay)
                .build(),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one request for `key_id` against `limit`.
    pub fn check(&self, key_id: Uuid, limit: RateLimit) -> RateOutcome {
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
            .map(|_| match limiters.check(key, limit) {
                RateOutcome::Allowed { remaining, .. } => remaining,
                other => panic!("expected allowed, got {other:?}"),
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        match limiters.check(key, limit) {
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
            limiters.check(Uuid::from_u128(1), one),
            RateOutcome::Allowed { .. }
        ));
        assert!(matches!(
            limiters.check(Uuid::from_u128(1), one),
            RateOutcome::Limited { .. }
        ));
        assert!(matches!(
            limiters.check(Uuid::from_u128(2), one),
            RateOutcome::Allowed { .. }
        ));
        let two = RateLimit {
            max_attempts: 2,
            decay_seconds: 60,
        };
        assert!(matches!(
            limiters.check(Uuid::from_u128(1), two),
            RateOutcome::Allowed { .. }
        ));
    }
}
