//! Usage tracking off the hot path.
//!
//! Check hands each decision about a known key to a bounded channel with
//! `try_send` and never waits; when the buffer is full the event is dropped
//! and counted. The [`Flusher`] task batches events into the store every
//! `flush_interval` or `batch_size` events, retries failed writes with backoff
//! while it holds them, and drains the buffer on a graceful stop.
//!
//! Memory is bounded twice: by event count (`KEYGATE_USAGE_BUFFER`) and by
//! bytes (`KEYGATE_USAGE_BUFFER_BYTES`), and what one event may hold is
//! bounded too (a method label from a fixed set, a path cut at
//! [`MAX_EVENT_PATH`]), so a flood of huge requests during a store outage
//! cannot grow the process beyond the byte bound (see README, "Usage").

pub mod client_ip;
pub mod event;
pub mod normalize;
mod tally;

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

pub use tally::UsageTally;

use chrono::{DateTime, Utc};
use metrics::{Counter, Histogram};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    Notify,
};
use uuid::Uuid;

use crate::store::{Store, UsageEvent};

pub use event::{method_label, recorded_path, EventPath, MAX_EVENT_PATH};

/// A decision as Check records it: cheap to build and bounded in size (build
/// `method` with [`method_label`] and `path` from [`recorded_path`]; a short
/// path is held in place, so recording allocates nothing).
/// Normalisation happens in the flusher, off the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckEvent {
    pub key_id: Uuid,
    pub at: DateTime<Utc>,
    pub ip: Option<IpAddr>,
    pub method: &'static str,
    pub path: EventPath,
    pub decision: &'static str,
    pub allowed: bool,
    /// Requests the event stands for: 1 for Check; more for a record the
    /// Envoy module coalesced (`KeyFeed.ReportUsage`), every one of them in
    /// the second of `at`, the latest of their times.
    pub requests: u32,
}

impl CheckEvent {
    /// Bytes this event holds while it waits in the buffer.
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>() + self.path.heap_bytes()
    }
}

/// The Check side of the buffer. Cheap to clone.
#[derive(Clone)]
pub struct UsageSender {
    tx: mpsc::Sender<CheckEvent>,
    /// Bytes held by buffered events, shared with the flusher.
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    dropped: Counter,
    /// Wakes the flusher early once a full batch is waiting.
    batch_ready: Arc<Notify>,
    batch_size: usize,
    tally: Arc<UsageTally>,
}

impl UsageSender {
    /// Records an event without waiting; drops and counts it when the
    /// buffer is full by count or by bytes. Whether it was taken.
    pub fn record(&self, event: CheckEvent) -> bool {
        let size = event.footprint();
        if self.bytes.fetch_add(size, Ordering::AcqRel) + size > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            self.dropped.increment(1);
            return false;
        }
        match self.tx.try_send(event) {
            Ok(()) => {
                self.tally.accepted();
                if self.depth() >= self.batch_size {
                    self.batch_ready.notify_one();
                }
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.bytes.fetch_sub(size, Ordering::AcqRel);
                self.dropped.increment(1);
                false
            }
        }
    }

    /// What entered the buffer and what was written of it.
    pub fn tally(&self) -> &Arc<UsageTally> {
        &self.tally
    }

    /// Bytes held by buffered events.
    pub fn buffered_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Events waiting in the buffer.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FlushSettings {
    pub interval: Duration,
    pub batch_size: usize,
    pub log_enabled: bool,
}

/// How much the buffer may hold before Check drops events.
#[derive(Debug, Clone, Copy)]
pub struct BufferBounds {
    pub events: usize,
    pub bytes: usize,
}

/// The flushing side of the buffer; run it with [`Flusher::run`].
///
/// Events stay in the bounded channel until a flush takes them, so the
/// configured bounds limit memory: at most `events` events or `bytes` bytes
/// wait, plus one batch being written (or retried).
pub struct Flusher {
    rx: mpsc::Receiver<CheckEvent>,
    bytes: Arc<AtomicUsize>,
    store: Store,
    settings: FlushSettings,
    batch_ready: Arc<Notify>,
    tally: Arc<UsageTally>,
    flushed: Counter,
    failures: Counter,
    latency: Histogram,
    endpoints: normalize::EndpointMemo,
}

/// A usage buffer within `bounds`.
pub fn buffer(
    bounds: BufferBounds,
    store: Store,
    settings: FlushSettings,
) -> (UsageSender, Flusher) {
    let (tx, rx) = mpsc::channel(bounds.events);
    let batch_ready = Arc::new(Notify::new());
    let tally = Arc::new(UsageTally::default());
    let bytes = Arc::new(AtomicUsize::new(0));
    let sender = UsageSender {
        tx,
        bytes: bytes.clone(),
        max_bytes: bounds.bytes,
        dropped: metrics::counter!("keygate_usage_dropped_total"),
        batch_ready: batch_ready.clone(),
        batch_size: settings.batch_size,
        tally: tally.clone(),
    };
    let flusher = Flusher {
        rx,
        bytes,
        store,
        settings,
        batch_ready,
        tally,
        flushed: metrics::counter!("keygate_usage_flushed_total"),
        failures: metrics::counter!("keygate_usage_flush_failures_total"),
        latency: metrics::histogram!("keygate_usage_flush_seconds"),
        endpoints: normalize::EndpointMemo::default(),
    };
    (sender, flusher)
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl Flusher {
    /// Flushes every interval (or as soon as a full batch waits) until
    /// `finish` resolves, then drains whatever is buffered. `finish` should
    /// fire only after the Check listener has drained, so no event arrives
    /// after the final flush.
    pub async fn run(mut self, finish: impl std::future::Future<Output = ()>) {
        tokio::pin!(finish);
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Events are normalised once, as they leave the channel, so a retried
        // batch is not converted again.
        let mut batch: Vec<UsageEvent> = Vec::with_capacity(self.settings.batch_size);
        let mut backoff = FIRST_BACKOFF;
        'flushing: loop {
            tokio::select! {
                biased;
                () = &mut finish => break,
                () = self.batch_ready.notified() => {}
                _ = ticker.tick() => {}
            }
            loop {
                if batch.is_empty() {
                    self.take_batch(&mut batch);
                }
                if batch.is_empty() {
                    break;
                }
                if self.write(&batch).await {
                    batch.clear();
                    backoff = FIRST_BACKOFF;
                    if self.rx.len() < self.settings.batch_size {
                        break;
                    }
                } else {
                    // Keep the batch and retry after a pause; stay stoppable.
                    tokio::select! {
                        () = &mut finish => break 'flushing,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.drain(batch).await;
    }

    fn take_batch(&mut self, batch: &mut Vec<UsageEvent>) {
        while batch.len() < self.settings.batch_size {
            match self.rx.try_recv() {
                Ok(event) => batch.push(self.take(event)),
                Err(_) => break,
            }
        }
    }

    /// Converts an event leaving the channel and releases its bytes: the
    /// batch it joins is bounded by `batch_size` and normalised endpoints.
    fn take(&mut self, event: CheckEvent) -> UsageEvent {
        self.bytes.fetch_sub(event.footprint(), Ordering::AcqRel);
        UsageEvent {
            key_id: event.key_id,
            at: event.at,
            ip: event.ip,
            method: event.method,
            endpoint: self.endpoints.endpoint(event.path.as_str()),
            decision: event.decision,
            allowed: event.allowed,
            requests: event.requests,
        }
    }

    /// The final flush: everything buffered, retried until written. The
    /// caller bounds it with the shutdown grace.
    async fn drain(&mut self, mut batch: Vec<UsageEvent>) {
        self.rx.close();
        while let Ok(event) = self.rx.try_recv() {
            batch.push(self.take(event));
        }
        tracing::info!(events = batch.len(), "final usage flush");
        let mut backoff = Duration::from_millis(50);
        for chunk in batch.chunks(self.settings.batch_size.max(1)) {
            while !self.write(chunk).await {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    async fn write(&self, events: &[UsageEvent]) -> bool {
        let started = std::time::Instant::now();
        match self
            .store
            .record_usage(events, self.settings.log_enabled)
            .await
        {
            Ok(()) => {
                self.latency.record(started.elapsed().as_secs_f64());
                self.flushed.increment(events.len() as u64);
                self.tally.written(events.len());
                true
            }
            Err(error) => {
                self.failures.increment(1);
                crate::telemetry::store_error("usage_flush");
                tracing::warn!(error = %error, events = events.len(), "usage flush failed; will retry");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn event(path: &str) -> CheckEvent {
        CheckEvent {
            key_id: Uuid::now_v7(),
            at: Utc::now(),
            ip: None,
            method: method_label("GET"),
            path: EventPath::new(recorded_path(path)),
            decision: "allowed",
            allowed: true,
            requests: 1,
        }
    }

    #[tokio::test]
    async fn the_buffer_drops_events_beyond_its_byte_bound_and_frees_what_it_flushes() {
        let store = Store::connect(&StoreOptions {
            url: "sqlite::memory:".into(),
            max_connections: 1,
            check_timeout: Duration::from_secs(1),
        })
        .await
        .unwrap();
        let long = format!("/{}", "segment/".repeat(1000));
        let one = event(&long).footprint();
        let (sender, mut flusher) = buffer(
            BufferBounds {
                events: 1000,
                bytes: 10 * one,
            },
            store,
            FlushSettings {
                interval: Duration::from_secs(1),
                batch_size: 1000,
                log_enabled: false,
            },
        );
        for _ in 0..25 {
            sender.record(event(&long));
        }
        assert_eq!(sender.depth(), 10);
        assert_eq!(sender.buffered_bytes(), 10 * one);
        let mut batch = Vec::new();
        flusher.take_batch(&mut batch);
        assert_eq!(batch.len(), 10);
        assert_eq!(sender.buffered_bytes(), 0);
        sender.record(event(&long));
        assert_eq!(sender.depth(), 1);
    }
}
