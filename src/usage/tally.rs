//! How many usage events were accepted and how many written, so that a stop
//! can say how many it abandoned.
//!
//! Counted at the two ends rather than read from the buffer: a flusher cut
//! short by the shutdown grace drops its receiver, and tokio then empties the
//! channel, so what it held can no longer be counted afterwards.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct UsageTally {
    accepted: AtomicU64,
    written: AtomicU64,
}

impl UsageTally {
    /// One event entered the buffer. On the Check path: one relaxed add.
    pub(super) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// `events` were stored.
    pub(super) fn written(&self, events: usize) {
        self.written.fetch_add(events as u64, Ordering::Relaxed);
    }

    /// Events accepted and not (yet) written. Read once the flusher has
    /// ended: every event it dropped is counted.
    pub fn unwritten(&self) -> u64 {
        let written = self.written.load(Ordering::Relaxed);
        self.accepted
            .load(Ordering::Relaxed)
            .saturating_sub(written)
    }
}
