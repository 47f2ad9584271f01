//! The crate's one source of "now", handed to components where they are
//! built (`app.rs`), so that a test can move time instead of waiting for it.
//!
//! Production uses [`Clock::system`]. A test builds [`Clock::manual`]: it
//! stands still at the instant it was given until the test moves it with
//! [`Clock::advance`] or [`Clock::set`], and every clone sees the move. Only
//! the instants the use-cases record and compare (expiry, overlaps,
//! dormancy, audit and usage times, webhook schedules) come from it; timers,
//! timeouts and the cache's TTL run on tokio's monotonic time as before.
//!
//! Reading it costs what `Utc::now()` costs; the manual clock costs one
//! relaxed atomic load. No lock, no allocation: Check reads it once per
//! request.

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};

use chrono::{DateTime, Duration, SubsecRound, Utc};

/// Where components read the current instant from. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock. Otherwise the manual clock's instant, in
    /// microseconds since the Unix epoch, shared by every clone.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that reads `at` until it is moved.
    pub fn manual(at: DateTime<Utc>) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(at.timestamp_micros()))),
        }
    }

    /// The current instant at the precision both stores keep
    /// (microseconds), so values read back compare equal to values written.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => Utc::now().trunc_subsecs(6),
            Some(micros) => DateTime::from_timestamp_micros(micros.load(Ordering::Relaxed))
                .expect("a manual clock holds an instant chrono represents"),
        }
    }

    /// Moves a manual clock by `by` (backward if negative).
    ///
    /// # Panics
    /// On the system clock: moving it is a test's mistake, never a
    /// production path.
    pub fn advance(&self, by: Duration) {
        let micros = by
            .num_microseconds()
            .expect("an advance within ±292,000 years");
        self.manual_instant().fetch_add(micros, Ordering::Relaxed);
    }

    /// Makes a manual clock read `at`.
    ///
    /// # Panics
    /// On the system clock, as [`Clock::advance`].
    pub fn set(&self, at: DateTime<Utc>) {
        self.manual_instant()
            .store(at.timestamp_micros(), Ordering::Relaxed);
    }

    fn manual_instant(&self) -> &AtomicI64 {
        self.manual
            .as_deref()
            .expect("only a manual clock (Clock::manual) can be moved")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instant(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_system_clock_reads_the_system_time_in_microseconds() {
        let before = Utc::now() - Duration::microseconds(1);
        let now = Clock::system().now();
        assert!(before <= now && now <= Utc::now());
        assert_eq!(now.timestamp_subsec_nanos() % 1_000, 0);
    }

    #[test]
    fn a_manual_clock_stands_still_until_moved_and_every_clone_sees_the_move() {
        let at = instant("2031-05-06T07:08:09.123456Z");
        let clock = Clock::manual(at);
        let copy = clock.clone();
        assert_eq!((clock.now(), copy.now()), (at, at));
        clock.advance(Duration::days(30));
        assert_eq!(copy.now(), at + Duration::days(30));
        copy.set(instant("2020-01-01T00:00:00Z"));
        assert_eq!(clock.now(), instant("2020-01-01T00:00:00Z"));
    }

    #[test]
    #[should_panic(expected = "only a manual clock")]
    fn the_system_clock_cannot_be_moved() {
        Clock::system().advance(Duration::seconds(1));
    }
}
