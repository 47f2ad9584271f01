//! The requests the filter decided about known keys, reported to keygate
//! (`KeyFeed.ReportUsage`) for its usage records, as Check records its own:
//! last use, request counts, the recent-request log (docs/envoy-module.md,
//! "Usage").
//!
//! On Envoy's worker threads a decision only puts a small record in a
//! bounded queue, without waiting and without allocating for paths up to
//! 64 bytes; a full queue drops the record and counts it
//! (`usage_dropped`). The feed's thread sends what is queued once a second,
//! and keeps a batch keygate did not take to send again.

use std::{net::IpAddr, time::Duration};

use chrono::{DateTime, Utc};
use keygate::{
    feed_proto::{key_feed_client::KeyFeedClient, UsageRecord, UsageReport},
    usage::{method_label, recorded_path, EventPath},
};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Code;
use uuid::Uuid;

use crate::{
    feed::{Level, Log, Source},
    filter::Stream,
};

/// Records waiting to be sent: several seconds of one busy Envoy.
const QUEUED: usize = 65_536;
/// How often the queue is sent.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// keygate's limit of records per `ReportUsage` call.
const MAX_RECORDS: usize = 10_000;
/// Encoded bytes per call, well below what keygate decodes (8 MiB).
const MAX_REPORT_BYTES: usize = 4 << 20;

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
}

/// A queue and the receiving end the feed's thread sends from.
pub fn queue() -> (UsageQueue, mpsc::Receiver<Used>) {
    let (sender, receiver) = mpsc::channel(QUEUED);
    (UsageQueue { sender }, receiver)
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
        self.sender.try_send(used).is_ok()
    }
}

/// Sends the queue to keygate every [`REPORT_EVERY`] until the queue's
/// senders are gone (the last filter config using the feed was destroyed).
pub async fn report(queued: &mut mpsc::Receiver<Used>, source: &Source, log: Log) {
    let mut client =
        KeyFeedClient::new(source.endpoint.connect_lazy()).max_decoding_message_size(1 << 20);
    let mut batch = Batch::default();
    let mut failing = false;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tick.tick().await;
        // Batch after batch until the queue is empty or keygate refuses.
        loop {
            let Some(full) = batch.fill(queued) else {
                return;
            };
            if batch.records.is_empty() {
                break;
            }
            let request = source.request(UsageReport {
                records: batch.records.clone(),
            });
            match client.report_usage(request).await {
                Ok(response) => {
                    batch.clear();
                    let dropped = response.into_inner().dropped;
                    if dropped > 0 {
                        log(
                            Level::Warn,
                            &format!(
                                "keygate-envoy: keygate's usage buffer was full and dropped \
                                 {dropped} reported records (keygate_usage_dropped_total)"
                            ),
                        );
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
    records: Vec<UsageRecord>,
    bytes: usize,
}

impl Batch {
    /// Moves queued records in, up to [`MAX_RECORDS`] and
    /// [`MAX_REPORT_BYTES`]: whether the batch is full, `None` once the
    /// queue's senders are gone.
    fn fill(&mut self, queued: &mut mpsc::Receiver<Used>) -> Option<bool> {
        while self.records.len() < MAX_RECORDS && self.bytes < MAX_REPORT_BYTES {
            match queued.try_recv() {
                Ok(used) => {
                    let record = record(used);
                    self.bytes += record.encoded_len();
                    self.records.push(record);
                }
                Err(mpsc::error::TryRecvError::Empty) => return Some(false),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            }
        }
        Some(true)
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }
}

fn record(used: Used) -> UsageRecord {
    UsageRecord {
        key_id: used.key_id.to_string(),
        at: Some(prost_types::Timestamp {
            seconds: used.at.timestamp(),
            nanos: used.at.timestamp_subsec_nanos() as i32,
        }),
        ip: used.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        method: used.method.to_owned(),
        path: used.path.as_str().to_owned(),
        decision: used.decision.to_owned(),
    }
}
