//! The KeyFeed gRPC service: keygate's key table, streamed to its Envoy
//! module (docs/envoy-module.md, "The key feed").
//!
//! Each stream follows [`KeyEvents`] from before it reads its snapshot, so a
//! key that changes while the snapshot is read is sent again after it. Then
//! every change this replica hears of is read again from the store and sent
//! (a key gone from the store as a removal), and a heartbeat goes out while
//! nothing changes. A store that cannot be read ends the stream with an
//! error (UNAVAILABLE when the database cannot be reached) rather than skip
//! a change: the module reconnects and starts from a fresh snapshot,
//! keeping the table it has meanwhile.
//!
//! The module reports the requests it decided back through `ReportUsage`;
//! they enter the usage buffer as Check's own events do.

use std::{net::IpAddr, pin::Pin, time::Duration};

use futures::Stream;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    convert::{instant, optional_timestamp},
    key_admin::{caller, observe},
};
use crate::{
    admin::AdminError,
    domain::DenyReason,
    feed_proto::{
        self, key_feed_server, KeyTableUpdate, UsageRecord, UsageReport, UsageReportResponse,
    },
    key_events::{KeyEvent, KeyEvents},
    store::{Store, StoreError, TableKey},
    usage::{method_label, recorded_path, CheckEvent, EventPath, UsageSender},
};

/// Records per ReportUsage call: about a second of one busy Envoy.
const MAX_USAGE_RECORDS: usize = 10_000;
/// Keys read from the store at a time for a snapshot.
const SNAPSHOT_PAGE: u32 = 1_000;
/// Encoded bytes per update: a key can carry 50 metadata entries and 256
/// abilities, so a page of keys is cut into updates well below the 4 MiB
/// that gRPC implementations accept by default.
const MAX_UPDATE_BYTES: usize = 1 << 20;
/// What ReportUsage accepts: 10,000 records of 512-byte paths fit.
pub const MAX_USAGE_REPORT_BYTES: usize = 8 << 20;
/// A stream quiet for this long sends an empty update.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Updates a stream may have queued before it stops reading changes.
const QUEUED_UPDATES: usize = 8;

pub struct KeyFeedService {
    store: Store,
    events: KeyEvents,
    /// Where reported usage goes; `None` when usage recording is off.
    usage: Option<UsageSender>,
    /// Streams never end on their own; they end when the listener drains,
    /// or the server's graceful shutdown would wait for them forever.
    drain: CancellationToken,
}

impl KeyFeedService {
    pub fn new(
        store: Store,
        events: KeyEvents,
        usage: Option<UsageSender>,
        drain: CancellationToken,
    ) -> Self {
        Self {
            store,
            events,
            usage,
            drain,
        }
    }

    /// Checks every record, then takes them into the usage buffer as
    /// Check's own events; with usage recording off, takes none.
    fn take_usage(&self, report: UsageReport) -> Result<UsageReportResponse, Status> {
        if report.records.len() > MAX_USAGE_RECORDS {
            return Err(Status::invalid_argument(format!(
                "a report holds at most {MAX_USAGE_RECORDS} records, not {}",
                report.records.len()
            )));
        }
        let events = report
            .records
            .into_iter()
            .enumerate()
            .map(|(index, record)| check_event(record, index))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(usage) = &self.usage else {
            return Ok(UsageReportResponse::default());
        };
        let mut response = UsageReportResponse::default();
        for event in events {
            if usage.record(event) {
                response.accepted += 1;
            } else {
                response.dropped += 1;
            }
        }
        Ok(response)
    }
}

type Updates = Pin<Box<dyn Stream<Item = Result<KeyTableUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl key_feed_server::KeyFeed for KeyFeedService {
    type WatchKeysStream = Updates;

    #[tracing::instrument(skip_all, fields(rpc = "WatchKeys"))]
    async fn watch_keys(
        &self,
        request: Request<feed_proto::WatchKeysRequest>,
    ) -> Result<Response<Updates>, Status> {
        // Hashes leave the store here: admin and feed tokens only.
        let allowed = caller(&request).and_then(|caller| Ok(caller.require_feed()?));
        observe("WatchKeys", allowed)?;
        let (updates, queued) = mpsc::channel(QUEUED_UPDATES);
        let events = self.events.follow();
        let drain = self.drain.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = drain.cancelled() => {}
                () = follow(store, events, updates) => {}
            }
        });
        tracing::info!("a key feed follower connected");
        Ok(Response::new(Box::pin(futures::stream::unfold(
            queued,
            |mut queued| async move { queued.recv().await.map(|update| (update, queued)) },
        ))))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ReportUsage"))]
    async fn report_usage(
        &self,
        request: Request<UsageReport>,
    ) -> Result<Response<UsageReportResponse>, Status> {
        let taken = caller(&request)
            .and_then(|caller| Ok(caller.require_feed()?))
            .and_then(|()| self.take_usage(request.into_inner()));
        observe("ReportUsage", taken).map(Response::new)
    }
}

/// A reported record as the event Check would have recorded; which field of
/// which record is wrong, otherwise.
fn check_event(record: UsageRecord, index: usize) -> Result<CheckEvent, Status> {
    let invalid =
        |field: &str| Status::invalid_argument(format!("records[{index}].{field} is not valid"));
    let key_id = Uuid::try_parse(&record.key_id).map_err(|_| invalid("key_id"))?;
    let at = instant(record.at, "at")
        .ok()
        .flatten()
        .ok_or_else(|| invalid("at"))?;
    let ip = match record.ip.as_str() {
        "" => None,
        ip => Some(ip.parse::<IpAddr>().map_err(|_| invalid("ip"))?),
    };
    let decision = std::iter::once("allowed")
        .chain(DenyReason::ALL_CODES)
        .find(|code| *code == record.decision)
        .ok_or_else(|| invalid("decision"))?;
    Ok(CheckEvent {
        key_id,
        at,
        ip,
        method: method_label(&record.method),
        path: EventPath::new(recorded_path(&record.path)),
        decision,
        allowed: decision == "allowed",
        // 0: a reporter sending a record per request.
        requests: record.requests.max(1),
    })
}

type Sender = mpsc::Sender<Result<KeyTableUpdate, Status>>;

/// Feeds one stream until its receiver goes or the store fails.
async fn follow(store: Store, mut events: broadcast::Receiver<KeyEvent>, updates: Sender) {
    let ended = async {
        snapshot(&store, &updates).await?;
        loop {
            let event = tokio::select! {
                () = updates.closed() => return Ok(()),
                () = tokio::time::sleep(HEARTBEAT_EVERY) => {
                    send(&updates, KeyTableUpdate::default()).await?;
                    continue;
                }
                event = events.recv() => event,
            };
            match event {
                Ok(KeyEvent::Key(id)) => send(&updates, changed_key(&store, id).await?).await?,
                Ok(KeyEvent::Owner(owner)) => {
                    for update in cut(store.table_keys_of_owner(&owner).await?) {
                        send(&updates, update).await?;
                    }
                }
                Ok(KeyEvent::Everything) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    snapshot(&store, &updates).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    };
    match ended.await {
        Ok(()) | Err(Ended::Gone) => tracing::info!("a key feed follower left"),
        Err(Ended::Store(error)) => {
            tracing::warn!(error = %super::status::chain(&error), "the key feed cannot read the keys; ending the stream");
            let _ = updates
                .send(Err(Status::from(AdminError::from(error))))
                .await;
        }
    }
}

/// Why a stream stopped being fed.
enum Ended {
    /// The follower went away.
    Gone,
    Store(StoreError),
}

impl From<StoreError> for Ended {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

async fn send(updates: &Sender, update: KeyTableUpdate) -> Result<(), Ended> {
    updates.send(Ok(update)).await.map_err(|_| Ended::Gone)
}

/// Every key, page by page.
async fn snapshot(store: &Store, updates: &Sender) -> Result<(), Ended> {
    let mut after = Uuid::nil();
    let mut first = true;
    loop {
        let keys = store.table_keys_after(after, SNAPSHOT_PAGE).await?;
        let complete = keys.len() < SNAPSHOT_PAGE as usize;
        if let Some(last) = keys.last() {
            after = last.key.id;
        }
        let mut parts = cut(keys).peekable();
        while let Some(mut update) = parts.next() {
            update.snapshot_begins = std::mem::take(&mut first);
            update.snapshot_complete = complete && parts.peek().is_none();
            send(updates, update).await?;
        }
        if complete {
            return Ok(());
        }
    }
}

/// Keys as updates of at most [`MAX_UPDATE_BYTES`] (one key each beyond
/// that); always at least one update, empty for no keys.
fn cut(keys: Vec<TableKey>) -> impl Iterator<Item = KeyTableUpdate> {
    let mut updates = vec![KeyTableUpdate::default()];
    let mut bytes = 0;
    for key in keys.into_iter().map(table_key) {
        let size = key.encoded_len();
        let current = updates.last_mut().expect("never empty");
        if bytes + size > MAX_UPDATE_BYTES && !current.keys.is_empty() {
            updates.push(KeyTableUpdate::default());
            bytes = 0;
        }
        bytes += size;
        updates.last_mut().expect("never empty").keys.push(key);
    }
    updates.into_iter()
}

/// One key as it is now, or its removal.
async fn changed_key(store: &Store, id: Uuid) -> Result<KeyTableUpdate, StoreError> {
    Ok(match store.table_key(id).await? {
        Some(key) => KeyTableUpdate {
            keys: vec![table_key(key)],
            ..KeyTableUpdate::default()
        },
        None => KeyTableUpdate {
            removed_key_ids: vec![id.to_string()],
            ..KeyTableUpdate::default()
        },
    })
}

fn table_key(entry: TableKey) -> feed_proto::TableKey {
    let key = entry.key;
    feed_proto::TableKey {
        hash: entry.hash.as_bytes().to_vec(),
        id: key.id.to_string(),
        owner_id: key.owner_id,
        environment: key.environment,
        key_prefix: key.key_prefix,
        abilities: key.abilities,
        superkey: key.superkey,
        rate_limit: key.rate_limit.map(|limit| feed_proto::RateLimit {
            max_attempts: limit.max_attempts,
            decay_seconds: limit.decay_seconds,
        }),
        has_credits: key.credits.is_some(),
        allowed_cidrs: key.allowed_cidrs,
        expires_at: optional_timestamp(key.expires_at),
        revoked_at: optional_timestamp(key.revoked_at),
        owner_suspended: entry.owner_suspended,
        metadata: key.metadata.into_iter().collect(),
    }
}
