//! The requests the filter decided about known keys, reported to keygate
//! (`KeyFeed.ReportUsage`) for its usage records, as Check records its own:
//! last use, request counts, the recent-request log (docs/envoy-module.md,
//! "Usage").
//!
//! On Envoy's worker threads a decision only puts a small record in a
//! bounded queue, without waiting and without allocating for paths up to
//! 64 bytes; a full queue drops the record and counts it
//! (`usage_dropped`). The feed's thread sends what is queued once a second,
//! and at once whenever a whole call's worth ([`MAX_RECORDS`]) is waiting:
//! a busy Envoy decides more requests a second than the queue holds. It
//! keeps a batch keygate did not take to send again.

use std::{net::IpAddr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use keygate::{
    feed_proto::{key_feed_client::KeyFeedClient, UsageRecord, UsageReport},
    usage::{method_label, recorded_path, EventPath},
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

/// Records waiting to be sent. The queue is sent as soon as it holds
/// [`MAX_RECORDS`], so it fills only when keygate takes reports more slowly
/// than Envoy decides requests (or not at all, for a while).
const QUEUED: usize = 65_536;
/// How often the queue is sent when it holds less than a whole call.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// keygate's limit of records per `ReportUsage` call.
const MAX_RECORDS: usize = 10_000;
/// Encoded bytes per call, well below what keygate decodes (8 MiB).
const MAX_REPORT_BYTES: usize = 4 << 20;
/// The most one record takes encoded, besides its path: a 36-character
/// key id, a timestamp, an IPv6 address written out in full (45), the
/// longest method label and decision code, and the tags and lengths of
/// the fields and of the record. A batch counts records by this bound so
/// that it keeps the records themselves, not their encoding.
const RECORD_BOUND_BESIDES_PATH: usize = 160;

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
        // (a wake-up is kept for it when it is busy sending), so none is
        // missed and none waits for the next second.
        if self.sender.capacity() <= self.call_ready_at {
            self.call_ready.notify_one();
        }
        true
    }
}

/// How often at most the module logs that keygate dropped reported records:
/// an overloaded keygate drops some from call after call.
const DROPPED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Sends the queue to keygate every [`REPORT_EVERY`], and whenever it
/// holds a whole call, until the queue's senders are gone (the last filter
/// config using the feed was destroyed).
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
        // While keygate refuses, once a second only: a full queue must not
        // turn into a call per record.
        if failing {
            tick.tick().await;
        } else {
            tokio::select! {
                _ = tick.tick() => {}
                () = queued.call_ready.notified() => {}
            }
        }
        // Batch after batch until the queue is empty or keygate refuses.
        loop {
            let Some(full) = batch.fill(queued) else {
                return;
            };
            if batch.used.is_empty() {
                break;
            }
            // Built for each call from the records kept, so that a batch
            // sent again needs no copy kept aside.
            let request = source.request(UsageReport {
                records: records(&batch.used),
            });
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
                    // tick; meanwhile new records queue up, and are dropped
                    // once the queue is full.
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

/// Records on their way to keygate, within the limits of one call.
#[derive(Default)]
struct Batch {
    used: Vec<Used>,
    /// At least the encoded size of `used`.
    bytes: usize,
}

impl Batch {
    /// Moves queued records in, up to the queue's records per call and
    /// [`MAX_REPORT_BYTES`]: whether the batch is full, `None` once the
    /// queue's senders are gone.
    fn fill(&mut self, queued: &mut Queued) -> Option<bool> {
        while self.used.len() < queued.per_call && self.bytes < MAX_REPORT_BYTES {
            match queued.receiver.try_recv() {
                Ok(used) => {
                    self.bytes += RECORD_BOUND_BESIDES_PATH + used.path.as_str().len();
                    self.used.push(used);
                }
                Err(mpsc::error::TryRecvError::Empty) => return Some(false),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            }
        }
        Some(true)
    }

    fn clear(&mut self) {
        self.used.clear();
        self.bytes = 0;
    }
}

/// The text of the last client address converted: consecutive records
/// mostly share it (one busy client), and formatting an address costs more
/// than the rest of a record.
#[derive(Default)]
struct LastAddress(Option<(IpAddr, String)>);

impl LastAddress {
    fn text(&mut self, ip: Option<IpAddr>) -> String {
        let Some(ip) = ip else {
            return String::new();
        };
        match &self.0 {
            Some((last, text)) if *last == ip => text.clone(),
            _ => {
                let text = ip.to_string();
                self.0 = Some((ip, text.clone()));
                text
            }
        }
    }
}

/// One call's records, in the form `KeyFeed.ReportUsage` takes.
fn records(used: &[Used]) -> Vec<UsageRecord> {
    let mut address = LastAddress::default();
    used.iter().map(|used| record(used, &mut address)).collect()
}

fn record(used: &Used, address: &mut LastAddress) -> UsageRecord {
    let mut id_text = Uuid::encode_buffer();
    UsageRecord {
        // Encoded in place: `to_string` goes through the formatter.
        key_id: used
            .key_id
            .hyphenated()
            .encode_lower(&mut id_text)
            .to_owned(),
        at: Some(prost_types::Timestamp {
            seconds: used.at.timestamp(),
            nanos: used.at.timestamp_subsec_nanos() as i32,
        }),
        ip: address.text(used.ip),
        method: used.method.to_owned(),
        path: used.path.as_str().to_owned(),
        decision: used.decision.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use keygate::{
        config::Settings,
        domain::DenyReason,
        feed_proto::UsageReport,
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

    #[test]
    fn a_batch_counts_each_record_at_no_less_than_its_encoded_size() {
        let longest_decision = DenyReason::ALL_CODES
            .into_iter()
            .chain(["allowed"])
            .max_by_key(|code| code.len())
            .unwrap();
        let path = "/".repeat(MAX_EVENT_PATH);
        let widest_ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().ok();
        let largest = used(Uuid::max(), &path, widest_ip, longest_decision);
        let bound = RECORD_BOUND_BESIDES_PATH + largest.path.as_str().len();
        let one = UsageReport {
            records: records(&[largest]),
        };
        assert!(
            one.encoded_len() <= bound,
            "{} encoded > {bound} counted",
            one.encoded_len()
        );
    }

    #[test]
    fn each_record_carries_its_own_address_and_key_whatever_came_before() {
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let here: IpAddr = "203.0.113.9".parse().unwrap();
        let there: IpAddr = "2001:db8::1".parse().unwrap();
        let converted = records(&[
            used(first, "/a", Some(here), "allowed"),
            used(first, "/b", Some(here), "allowed"),
            used(second, "/c", None, "key_revoked"),
            used(second, "/d", Some(there), "allowed"),
            used(first, "/e", Some(here), "allowed"),
        ]);
        let seen: Vec<_> = converted
            .iter()
            .map(|r| (r.key_id.as_str(), r.ip.as_str(), r.path.as_str()))
            .collect();
        let (first, second) = (first.to_string(), second.to_string());
        assert_eq!(
            seen,
            [
                (first.as_str(), "203.0.113.9", "/a"),
                (first.as_str(), "203.0.113.9", "/b"),
                (second.as_str(), "", "/c"),
                (second.as_str(), "2001:db8::1", "/d"),
                (first.as_str(), "203.0.113.9", "/e"),
            ]
        );
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
    /// interval (3 s here; the push takes about 0.4 s): without sending as
    /// soon as a whole call is queued, the queue would fill and drop. The
    /// last records, less than a call, go with the next interval.
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
            recent_limit: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut counted = 0;
        while Instant::now() < deadline {
            let usage = admin.get_key_usage(request.clone()).await.unwrap();
            counted = usage.into_inner().request_count;
            if counted == RECORDS as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(counted, RECORDS as u64, "requests keygate recorded");
        reporting.abort();
        running.stop().await;
    }
}
