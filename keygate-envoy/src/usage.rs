//! The requests the filter decided about known keys, reported to keygate
//! (`KeyFeed.ReportUsage`) for its usage records, as Check records its own:
//! last use, request counts, the recent-request log (docs/envoy-module.md,
//! "Usage").
//!
//! On Envoy's worker threads a decision only puts a small record in a
//! bounded queue, without waiting and without allocating for paths up to
//! 64 bytes; a full queue drops the record and counts it
//! (`usage_dropped`). The feed's thread takes the queue into a batch
//! whenever a whole call's worth ([`MAX_RECORDS`]) is waiting (a busy Envoy
//! decides more requests a second than the queue holds), counting requests
//! alike within a second as one record, as keygate's usage log keeps them.
//! It sends the batch once a second, or at once when it holds a whole
//! call, and keeps a batch keygate did not take to send again.

use std::{
    collections::{hash_map::Entry, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use keygate::{
    feed_proto::{key_feed_client::KeyFeedClient, UsageRecord, UsageReport},
    usage::{method_label, normalize::EndpointMemo, recorded_path, EventPath},
};
use tokio::{
    sync::{mpsc, Notify},
    time::MissedTickBehavior,
};
use tonic::Code;
use uuid::Uuid;

use crate::{
    feed::{Level, Log, Source},
    filter::Stream,
};

/// Requests waiting for the feed's thread. It takes them into its batch as
/// soon as the queue holds [`MAX_RECORDS`], so the queue fills only when
/// the batch is full and keygate takes reports more slowly than Envoy
/// decides requests (or not at all, for a while).
const QUEUED: usize = 65_536;
/// How often the batch is sent when it holds less than a whole call.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// keygate's limit of records per `ReportUsage` call.
const MAX_RECORDS: usize = 10_000;
/// Encoded bytes per call, well below what keygate decodes (8 MiB). A
/// safeguard: [`MAX_RECORDS`] records of the longest endpoint keygate
/// stores (256 bytes) stay below it.
const MAX_REPORT_BYTES: usize = 4 << 20;
/// How long a report may take before it is given up and sent again.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most one record takes encoded, besides its endpoint: a 36-character
/// key id, a timestamp, an IPv6 address written out in full (45), the
/// longest method label and decision code, the number of requests, and
/// the tags and lengths of the fields and of the record. A batch counts
/// records by this bound so that it keeps the records themselves, not their
/// encoding.
const RECORD_BOUND_BESIDES_ENDPOINT: usize = 160;

/// One decided request, as Check's usage event holds it.
#[derive(Debug)]
pub struct Used {
    key_id: Uuid,
    at: DateTime<Utc>,
    ip: Option<IpAddr>,
    method: &'static str,
    path: EventPath,
    decision: &'static str,
}

/// The workers' end of the queue.
#[derive(Debug)]
pub struct UsageQueue {
    sender: mpsc::Sender<Used>,
    /// Woken once the queue holds a whole call: at or below this many free
    /// places.
    call_ready_at: usize,
    call_ready: Arc<Notify>,
}

/// The feed thread's end of the queue.
#[derive(Debug)]
pub struct Queued {
    receiver: mpsc::Receiver<Used>,
    call_ready: Arc<Notify>,
    /// Records per `ReportUsage` call.
    per_call: usize,
    /// How often the queue is sent when it holds less than a whole call.
    every: Duration,
}

/// A queue and the end the feed's thread sends from.
pub fn queue() -> (UsageQueue, Queued) {
    queue_of(QUEUED, MAX_RECORDS, REPORT_EVERY)
}

/// A queue of `capacity` records, sent `per_call` at a time and at least
/// `every` (other than keygate's limit and a second only in tests).
fn queue_of(capacity: usize, per_call: usize, every: Duration) -> (UsageQueue, Queued) {
    let (sender, receiver) = mpsc::channel(capacity);
    let call_ready = Arc::new(Notify::new());
    let workers = UsageQueue {
        sender,
        call_ready_at: capacity.saturating_sub(per_call),
        call_ready: Arc::clone(&call_ready),
    };
    let queued = Queued {
        receiver,
        call_ready,
        per_call,
        every,
    };
    (workers, queued)
}

impl UsageQueue {
    /// Queues one decision about `key_id`; `false` when the queue is full
    /// and the record was dropped.
    pub fn record(
        &self,
        stream: &impl Stream,
        key_id: Uuid,
        at: DateTime<Utc>,
        decision: &'static str,
    ) -> bool {
        let text = |name| {
            stream
                .request_header(name)
                .and_then(|value| std::str::from_utf8(value).ok())
        };
        let used = Used {
            key_id,
            at,
            ip: stream.client_address(),
            method: text(":method").map_or("OTHER", method_label),
            path: EventPath::new(recorded_path(text(":path").unwrap_or("/"))),
            decision,
        };
        self.push(used)
    }

    fn push(&self, used: Used) -> bool {
        if self.sender.try_send(used).is_err() {
            return false;
        }
        // An atomic load. Every record past the mark wakes the thread again
        // (a wake-up is kept for it when it is busy sending), so a filling
        // queue is always taken into the batch.
        if self.sender.capacity() <= self.call_ready_at {
            self.call_ready.notify_one();
        }
        true
    }
}

/// How often at most the module logs that keygate dropped reported records:
/// an overloaded keygate drops some from call after call.
const DROPPED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Takes the queue into a batch whenever it holds a whole call, and sends
/// the batch to keygate every [`REPORT_EVERY`] and whenever it is full,
/// until the queue's senders are gone (the last filter config using the
/// feed was destroyed).
///
/// Reports are sent at least once: a batch whose call failed in a way that
/// leaves open whether keygate took it (a timeout, a lost connection) is
/// sent again.
pub async fn report(queued: &mut Queued, source: &Source, log: Log) {
    let mut client =
        KeyFeedClient::new(source.endpoint.connect_lazy()).max_decoding_message_size(1 << 20);
    let mut batch = Batch::default();
    let mut failing = false;
    // Records keygate dropped since the last warning, and when that was.
    let mut dropped_unlogged = 0;
    let mut dropped_logged_at: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(queued.every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // Woken by a filling queue, the thread counts what is queued into
        // the batch, which goes with the tick unless it holds a whole call:
        // one busy route makes one call a second, not one per 10,000
        // requests. While keygate refuses, still into the batch (an outage
        // costs nothing while the batch has room), but sent once a second
        // only; a full batch waits for the tick.
        let tick_due = tokio::select! {
            _ = tick.tick() => true,
            () = queued.call_ready.notified(), if !batch.is_full(queued) => false,
        };
        // Batch after batch until the queue is empty or keygate refuses.
        loop {
            if !batch.fill(queued) {
                return;
            }
            let full = batch.is_full(queued);
            if batch.is_empty() || !(tick_due || full && !failing) {
                break;
            }
            // Built for each call from the counts kept, so that a batch sent
            // again needs no copy kept aside (and counts what came since).
            let mut request = source.request(batch.report());
            request.set_timeout(REPORT_TIMEOUT);
            match client.report_usage(request).await {
                Ok(response) => {
                    batch.clear();
                    dropped_unlogged += response.into_inner().dropped;
                    let due = dropped_logged_at.is_none_or(|at| at.elapsed() >= DROPPED_LOG_EVERY);
                    if dropped_unlogged > 0 && due {
                        log(
                            Level::Warn,
                            &format!(
                                "keygate-envoy: keygate's usage buffer was full and dropped \
                                 {dropped_unlogged} reported records (keygate_usage_dropped_total)"
                            ),
                        );
                        dropped_unlogged = 0;
                        dropped_logged_at = Some(tokio::time::Instant::now());
                    }
                    if failing {
                        log(Level::Info, "keygate-envoy: usage reports are taken again");
                        failing = false;
                    }
                    if !full {
                        break;
                    }
                }
                Err(status) => {
                    if !failing {
                        log(
                            Level::Warn,
                            &format!(
                                "keygate-envoy: keygate did not take a usage report ({:?}: {}); \
                                 retrying every {REPORT_EVERY:?}",
                                status.code(),
                                status.message()
                            ),
                        );
                        failing = true;
                    }
                    // A report keygate refused as it is will never be taken:
                    // dropped. Any other is kept and sent again with the next
                    // tick; meanwhile new requests are counted into it until
                    // it is full, then queue up, and are dropped once the
                    // queue is full too.
                    if matches!(
                        status.code(),
                        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted
                    ) {
                        batch.clear();
                    }
                    break;
                }
            }
        }
    }
}

/// Records on their way to keygate, within the limits of one call: one a
/// kind of request a second, as keygate's usage log keeps them (one row per
/// key, second, method, endpoint, client address and decision, with the
/// requests it stands for). A busy client repeating one call sends one
/// record a second instead of one a request, and keygate folds one event.
#[derive(Default)]
struct Batch {
    records: Vec<(Alike, Requests)>,
    /// Where each kind of request is in `records`.
    index: HashMap<Alike, usize, foldhash::fast::RandomState>,
    /// The request added last and where it was counted: a busy client's
    /// requests mostly follow one another, and comparing one with the last
    /// costs a fraction of normalising its path and finding its record.
    last: Option<(Used, usize)>,
    /// At least the encoded size of `records`.
    bytes: usize,
    /// Paths as keygate stores them (`/v1/orders/42` → `/v1/orders/{id}`),
    /// so that requests to one route coalesce whatever their ids.
    endpoints: EndpointMemo,
}

/// What makes requests one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Alike {
    key_id: Uuid,
    /// The whole second (Unix time) they were decided in.
    second: i64,
    ip: Option<IpAddr>,
    method: &'static str,
    endpoint: Arc<str>,
    decision: &'static str,
}

/// The requests one record stands for.
#[derive(Debug, PartialEq, Eq)]
struct Requests {
    latest: DateTime<Utc>,
    count: u32,
}

impl Requests {
    fn add(&mut self, at: DateTime<Utc>) {
        self.count = self.count.saturating_add(1);
        self.latest = self.latest.max(at);
    }
}

impl Used {
    /// Whether `other` is counted in the same record: alike in everything
    /// but the time within one second, and with the same path (so the
    /// same endpoint).
    fn alike(&self, other: &Used) -> bool {
        self.key_id == other.key_id
            && self.at.timestamp() == other.at.timestamp()
            && self.ip == other.ip
            && self.method == other.method
            && self.decision == other.decision
            && self.path == other.path
    }
}

impl Batch {
    /// Moves queued records in until the queue is empty or the batch full;
    /// `false` once the queue's senders are gone.
    fn fill(&mut self, queued: &mut Queued) -> bool {
        while !self.is_full(queued) {
            match queued.receiver.try_recv() {
                Ok(used) => self.add(used),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    /// Counts one request in the record of its kind.
    fn add(&mut self, used: Used) {
        let at = used.at;
        let position = match &self.last {
            Some((last, position)) if last.alike(&used) => *position,
            _ => self.position_of(&used),
        };
        self.records[position].1.add(at);
        self.last = Some((used, position));
    }

    /// Where the record of `used`'s kind is, made (counting nothing yet)
    /// when there is none.
    fn position_of(&mut self, used: &Used) -> usize {
        let alike = Alike {
            key_id: used.key_id,
            second: used.at.timestamp(),
            ip: used.ip,
            method: used.method,
            endpoint: self.endpoints.endpoint(used.path.as_str()),
            decision: used.decision,
        };
        match self.index.entry(alike) {
            Entry::Occupied(position) => *position.get(),
            Entry::Vacant(position) => {
                self.bytes += RECORD_BOUND_BESIDES_ENDPOINT + position.key().endpoint.len();
                let requests = Requests {
                    latest: used.at,
                    count: 0,
                };
                self.records.push((position.key().clone(), requests));
                *position.insert(self.records.len() - 1)
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether the batch holds a whole call: the queue's records per call,
    /// or [`MAX_REPORT_BYTES`].
    fn is_full(&self, queued: &Queued) -> bool {
        self.records.len() >= queued.per_call || self.bytes >= MAX_REPORT_BYTES
    }

    fn clear(&mut self) {
        self.records.clear();
        self.index.clear();
        self.last = None;
        self.bytes = 0;
    }

    /// The batch in the form `KeyFeed.ReportUsage` takes.
    fn report(&self) -> UsageReport {
        UsageReport {
            records: self.records.iter().map(record).collect(),
        }
    }
}

fn record((alike, requests): &(Alike, Requests)) -> UsageRecord {
    let mut id_text = Uuid::encode_buffer();
    UsageRecord {
        // Encoded in place: `to_string` goes through the formatter.
        key_id: alike
            .key_id
            .hyphenated()
            .encode_lower(&mut id_text)
            .to_owned(),
        at: Some(prost_types::Timestamp {
            seconds: requests.latest.timestamp(),
            nanos: requests.latest.timestamp_subsec_nanos() as i32,
        }),
        ip: alike.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        method: alike.method.to_owned(),
        path: alike.endpoint.to_string(),
        decision: alike.decision.to_owned(),
        requests: requests.count,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use keygate::{
        config::Settings,
        domain::DenyReason,
        proto::{key_admin_client::KeyAdminClient, CreateKeyRequest, GetKeyUsageRequest},
        usage::MAX_EVENT_PATH,
    };
    use prost::Message;

    use super::*;
    use crate::settings::FeedSettings;

    fn used(key_id: Uuid, path: &str, ip: Option<IpAddr>, decision: &'static str) -> Used {
        Used {
            key_id,
            at: Utc::now(),
            ip,
            method: "OPTIONS",
            path: EventPath::new(path),
            decision,
        }
    }

    fn batch_of(used: impl IntoIterator<Item = Used>) -> Batch {
        let mut batch = Batch::default();
        used.into_iter().for_each(|used| batch.add(used));
        batch
    }

    #[test]
    fn a_batch_counts_each_record_at_no_less_than_its_encoded_size() {
        let longest_decision = DenyReason::ALL_CODES
            .into_iter()
            .chain(["allowed"])
            .max_by_key(|code| code.len())
            .unwrap();
        // Segments normalisation keeps as they are, up to the longest path
        // an event holds.
        let path = "/a".repeat(MAX_EVENT_PATH / 2);
        let widest_ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().ok();
        let mut batch = batch_of([used(Uuid::max(), &path, widest_ip, longest_decision)]);
        batch
            .records
            .iter_mut()
            .for_each(|(_, requests)| requests.count = u32::MAX);
        let encoded = batch.report().encoded_len();
        assert!(
            encoded <= batch.bytes,
            "{encoded} encoded > {} counted",
            batch.bytes
        );
    }

    #[test]
    fn a_cleared_batch_counts_from_nothing() {
        let key_id = Uuid::new_v4();
        let mut batch = batch_of([
            used(key_id, "/orders", None, "allowed"),
            used(key_id, "/orders", None, "allowed"),
        ]);
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.bytes, 0);
        batch.add(used(key_id, "/orders", None, "allowed"));
        let counts: Vec<_> = batch.report().records.iter().map(|r| r.requests).collect();
        assert_eq!(counts, [1]);
    }

    #[test]
    fn requests_alike_within_a_second_are_one_record_with_their_count_and_latest_time() {
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let here: IpAddr = "203.0.113.9".parse().unwrap();
        let there: IpAddr = "2001:db8::1".parse().unwrap();
        let at = |millis: i64| DateTime::from_timestamp_millis(1_800_000_000_000 + millis).unwrap();
        let request = |key_id, millis: i64, ip, method, path: &str, decision| Used {
            key_id,
            at: at(millis),
            ip,
            method,
            path: EventPath::new(path),
            decision,
        };
        let mut requests = vec![
            request(first, 100, Some(here), "GET", "/orders/1", "allowed"),
            // The same again (counted as the one before), then the same
            // route with other ids, later in the same second.
            request(first, 100, Some(here), "GET", "/orders/1", "allowed"),
            request(first, 900, Some(here), "GET", "/orders/2", "allowed"),
            request(first, 500, Some(here), "GET", "/orders/3", "allowed"),
            // As the one before, but in the next second.
            request(first, 1_000, Some(here), "GET", "/orders/3", "allowed"),
        ];
        // Each differs from the request before it in one thing only.
        let others = [
            request(first, 200, Some(there), "GET", "/orders/1", "allowed"),
            request(first, 200, None, "GET", "/orders/1", "allowed"),
            request(first, 200, Some(here), "POST", "/orders/1", "allowed"),
            request(first, 200, Some(here), "GET", "/invoices/1", "allowed"),
            request(first, 200, Some(here), "GET", "/orders/1", "rate_limited"),
            request(second, 200, Some(here), "GET", "/orders/1", "allowed"),
        ];
        for other in others {
            requests.push(request(
                first,
                200,
                Some(here),
                "GET",
                "/orders/1",
                "allowed",
            ));
            requests.push(other);
        }
        let batch = batch_of(requests);
        let mut seen: Vec<_> = batch
            .report()
            .records
            .into_iter()
            .map(|r| {
                let at = r.at.unwrap();
                let latest = at.seconds * 1_000 + i64::from(at.nanos / 1_000_000);
                (
                    r.key_id,
                    latest - 1_800_000_000_000,
                    r.ip,
                    r.method,
                    r.path,
                    r.decision,
                    r.requests,
                )
            })
            .collect();
        seen.sort();
        let (here, there) = ("203.0.113.9", "2001:db8::1");
        let want = [
            (first, 900, here, "GET", "/orders/{id}", "allowed", 10),
            (first, 1_000, here, "GET", "/orders/{id}", "allowed", 1),
            (first, 200, there, "GET", "/orders/{id}", "allowed", 1),
            (first, 200, "", "GET", "/orders/{id}", "allowed", 1),
            (first, 200, here, "POST", "/orders/{id}", "allowed", 1),
            (first, 200, here, "GET", "/invoices/{id}", "allowed", 1),
            (first, 200, here, "GET", "/orders/{id}", "rate_limited", 1),
            (second, 200, here, "GET", "/orders/{id}", "allowed", 1),
        ];
        let text = |s: &str| s.to_owned();
        let mut want: Vec<_> = want
            .into_iter()
            .map(|(key_id, millis, ip, method, path, decision, requests)| {
                let key_id = key_id.to_string();
                (
                    key_id,
                    millis,
                    text(ip),
                    text(method),
                    text(path),
                    text(decision),
                    requests,
                )
            })
            .collect();
        want.sort();
        assert_eq!(seen, want);
    }

    fn no_log(_: crate::feed::Level, _: &str) {}

    /// A real keygate on SQLite and loopback ports, as the module reports to.
    async fn keygate(dir: &std::path::Path) -> keygate::app::Running {
        let settings = Settings {
            database_url: Some(format!("sqlite://{}", dir.join("keygate.db").display())),
            authz_addr: Some("127.0.0.1:0".into()),
            admin_addr: Some("127.0.0.1:0".into()),
            forward_auth_addr: Some("127.0.0.1:0".into()),
            http_addr: Some("127.0.0.1:0".into()),
            usage_flush_interval: Some("50ms".into()),
            ..Default::default()
        };
        keygate::app::start(settings.validate().expect("valid settings"))
            .await
            .expect("keygate starts")
    }

    /// Many more records than the queue holds, pushed well within one report
    /// interval (3 s here; the push takes about 0.4 s): without taking the
    /// queue in as soon as a whole call is queued, the queue would fill and
    /// drop. Alike, they are one record a second, sent with the interval:
    /// keygate logs a row for each second they span (at most two), and one
    /// more if the interval's first tick, at the start, found some queued;
    /// sent as they were taken in (80 calls), they would make a row for
    /// each of keygate's 50 ms flushes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_filling_faster_than_the_report_interval_loses_nothing() {
        const CAPACITY: usize = 4_000;
        const RECORDS: usize = 8_000;
        let dir = tempfile::tempdir().unwrap();
        let running = keygate(dir.path()).await;
        let admin_url = format!("http://{}", running.admin_addr);
        let mut admin = KeyAdminClient::connect(admin_url.clone()).await.unwrap();
        let created = admin
            .create_key(CreateKeyRequest {
                owner_id: "acme".into(),
                name: "usage".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let id = created.api_key.unwrap().id;
        let key_id: Uuid = id.parse().unwrap();

        let source = Source::new(&FeedSettings {
            address: admin_url,
            token_file: None,
            ca_file: None,
            report_usage: true,
        })
        .unwrap();
        let (workers, mut queued) = queue_of(CAPACITY, 100, Duration::from_secs(3));
        let reporting = tokio::spawn(async move { report(&mut queued, &source, no_log).await });
        for _ in 0..RECORDS / 200 {
            for _ in 0..200 {
                assert!(
                    workers.push(used(key_id, "/orders", None, "allowed")),
                    "a record was dropped"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let request = GetKeyUsageRequest {
            owner_id: "acme".into(),
            id,
            recent_limit: 100,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut usage = Default::default();
        while Instant::now() < deadline {
            usage = admin
                .get_key_usage(request.clone())
                .await
                .unwrap()
                .into_inner();
            if usage.request_count == RECORDS as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            usage.request_count, RECORDS as u64,
            "requests keygate recorded"
        );
        let rows: Vec<_> = usage.recent_logs.iter().map(|row| row.count).collect();
        assert!(rows.len() <= 3, "one row a second, not a call: {rows:?}");
        reporting.abort();
        running.stop().await;
    }
}
