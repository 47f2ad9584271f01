//! The key feed's follower: keeps the filter's [`SharedTable`] current from
//! keygate's `KeyFeed.WatchKeys` stream (docs/envoy-module.md, "The key
//! feed").
//!
//! One thread per filter config, with a single-threaded Tokio runtime of
//! its own: Envoy's worker threads never wait on it, they only read the
//! table. A snapshot is built aside and put in place whole once complete;
//! changes after it are applied in place. When the stream fails, ends, or
//! goes quiet for longer than [`QUIET_LIMIT`] (keygate sends a heartbeat
//! every 5 s), the follower reconnects with backoff and starts from a fresh
//! snapshot; meanwhile the filter keeps deciding from the table it has, so
//! Envoy keeps serving while keygate is away (a key issued meanwhile is
//! unknown until the feed is back).

use std::{
    fmt,
    panic::{self, AssertUnwindSafe},
    sync::{Arc, Mutex, PoisonError, Weak},
    thread,
    time::Duration,
};

use keygate::feed_proto::{key_feed_client::KeyFeedClient, KeyTableUpdate, WatchKeysRequest};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

use crate::{
    settings::FeedSettings,
    table::{Changes, KeyTable, SharedTable, TableError},
    usage::{Queued, UsageQueue},
};

/// A stream that has sent nothing, not even a heartbeat, for this long is
/// taken for dead.
pub const QUIET_LIMIT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest update taken: keygate cuts its updates at 1 MiB, but one key
/// alone may be larger.
const MAX_UPDATE_BYTES: usize = 16 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where the follower reports what happens to it (Envoy's log, in Envoy).
pub type Log = fn(Level, &str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

/// Why a feed could not be set up from the filter config.
#[derive(Debug)]
pub struct FeedSetupError(String);

impl fmt::Display for FeedSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "feed: {}", self.0)
    }
}

impl std::error::Error for FeedSetupError {}

/// A feed and the table it keeps, shared by every filter config in the
/// process that names the same `feed` settings: Envoy builds a new filter
/// config on every listener update (often, under Istio), and a new config
/// must not start from an empty table, nor open another stream.
#[derive(Debug)]
pub struct SharedFeed {
    pub table: Arc<SharedTable>,
    /// Where decisions go to be reported; `None` with `report_usage: false`.
    pub usage: Option<UsageQueue>,
    /// Stops the feed's thread when the last config using it goes.
    _stop: DropGuard,
}

/// The feeds running in this process, by settings. Entries of feeds no
/// config holds any more are swept on the next lookup.
static FEEDS: Mutex<Vec<(FeedSettings, Weak<SharedFeed>)>> = Mutex::new(Vec::new());

impl SharedFeed {
    /// The running feed for `settings`, or a new one: reads the token and
    /// CA files and starts the feed's thread, which also sends the usage
    /// queue to keygate.
    pub fn get_or_start(settings: &FeedSettings, log: Log) -> Result<Arc<Self>, FeedSetupError> {
        let mut feeds = FEEDS.lock().unwrap_or_else(PoisonError::into_inner);
        feeds.retain(|(_, feed)| feed.strong_count() > 0);
        if let Some(feed) = feeds
            .iter()
            .find(|(running, _)| running == settings)
            .and_then(|(_, feed)| feed.upgrade())
        {
            return Ok(feed);
        }
        let feed = Arc::new(Self::start(settings, log)?);
        feeds.push((settings.clone(), Arc::downgrade(&feed)));
        Ok(feed)
    }

    fn start(settings: &FeedSettings, log: Log) -> Result<Self, FeedSetupError> {
        let source = Source::new(settings)?;
        let table = Arc::new(SharedTable::default());
        let (usage, queued) = match settings.report_usage {
            true => {
                let (usage, queued) = crate::usage::queue();
                (Some(usage), Some(queued))
            }
            false => (None, None),
        };
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let followed = Arc::clone(&table);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FeedSetupError(format!("cannot start its runtime: {e}")))?;
        thread::Builder::new()
            .name("keygate-feed".into())
            .spawn(move || run(&runtime, &source, &followed, queued, log, &stopped))
            .map_err(|e| FeedSetupError(format!("cannot start its thread: {e}")))?;
        Ok(Self {
            table,
            usage,
            _stop: stop.drop_guard(),
        })
    }
}

/// The feed's thread: follows the feed and reports usage until `stopped`.
/// A panic in either (a bug) is logged and both start again, rather than
/// leave a table that silently stops changing.
fn run(
    runtime: &tokio::runtime::Runtime,
    source: &Source,
    table: &SharedTable,
    mut queued: Option<Queued>,
    log: Log,
    stopped: &CancellationToken,
) {
    while !stopped.is_cancelled() {
        let ran = panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(async {
                let reporting = async {
                    match queued.as_mut() {
                        Some(queued) => crate::usage::report(queued, source, log).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stopped.cancelled() => {}
                    () = follow(source, table, log) => {}
                    () = reporting => {}
                }
            })
        }));
        if ran.is_err() {
            log(
                Level::Warn,
                "keygate-envoy: the key feed's thread panicked; starting it again in 1s",
            );
            thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The feed's endpoint and credentials, read once.
pub struct Source {
    pub endpoint: Endpoint,
    /// `Bearer <token>`.
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Source {
    pub(crate) fn new(settings: &FeedSettings) -> Result<Self, FeedSetupError> {
        let error = |what: &str| FeedSetupError(what.to_owned());
        let mut endpoint = Endpoint::from_shared(settings.address.clone())
            .map_err(|_| error("address is not a URI (http://host:port or https://host:port)"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let https = settings.address.starts_with("https://");
        match (&settings.ca_file, https) {
            (Some(ca_file), true) => {
                let pem = std::fs::read(ca_file).map_err(|e| {
                    FeedSetupError(format!("cannot read ca_file {}: {e}", ca_file.display()))
                })?;
                endpoint = endpoint
                    .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                    .map_err(|e| FeedSetupError(format!("ca_file: {e}")))?;
            }
            (None, true) => return Err(error("an https:// address needs ca_file")),
            (Some(_), false) => return Err(error("ca_file is for https:// addresses")),
            (None, false) => {}
        }
        let authorization = match &settings.token_file {
            None => None,
            Some(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| {
                    FeedSetupError(format!("cannot read token_file {}: {e}", path.display()))
                })?;
                let value = format!("Bearer {}", token.trim());
                Some(value.parse().map_err(|_| {
                    // The token itself is never repeated in a message.
                    error("token_file does not hold a token (printable ASCII)")
                })?)
            }
        };
        Ok(Self {
            endpoint,
            authorization,
        })
    }

    /// A request to keygate with the feed's credentials.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }
}

/// How many failed attempts in a row are logged once: with the backoff at
/// its 5 s ceiling, a keygate that stays away is logged once a minute.
const LOG_EVERY_FAILURES: u32 = 12;

/// Follows the feed for good, reconnecting with backoff.
async fn follow(source: &Source, table: &SharedTable, log: Log) {
    let mut backoff = FIRST_BACKOFF;
    let mut failures: u32 = 0;
    loop {
        let mut session = Session::default();
        let ended = session.run(source, table, log).await;
        if session.snapshots > 0 {
            backoff = FIRST_BACKOFF;
            failures = 0;
        }
        if failures.is_multiple_of(LOG_EVERY_FAILURES) {
            let keys = table.key_count().unwrap_or(0);
            log(
                Level::Warn,
                &format!(
                    "keygate-envoy: the key feed {ended}; deciding from the {keys} keys held \
                     until it is back (retrying in {backoff:?})"
                ),
            );
        }
        failures += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why a stream stopped.
#[derive(Debug)]
enum Ended {
    Connect(tonic::transport::Error),
    Refused(tonic::Status),
    Quiet,
    Closed,
    BadUpdate(TableError),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot be reached ({e})"),
            Self::Refused(status) => write!(
                f,
                "stream failed ({:?}: {})",
                status.code(),
                status.message()
            ),
            Self::Quiet => write!(f, "sent nothing for {QUIET_LIMIT:?}"),
            Self::Closed => f.write_str("stream was closed by keygate"),
            Self::BadUpdate(e) => write!(f, "sent an update that cannot be used ({e})"),
        }
    }
}

/// One stream's follower: a snapshot being built, and how many were put
/// in place.
#[derive(Debug, Default)]
pub struct Session {
    building: Option<KeyTable>,
    snapshots: u32,
}

impl Session {
    async fn run(&mut self, source: &Source, table: &SharedTable, log: Log) -> Ended {
        let channel = match source.endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => return Ended::Connect(error),
        };
        let request = source.request(WatchKeysRequest {});
        let mut client = KeyFeedClient::new(channel).max_decoding_message_size(MAX_UPDATE_BYTES);
        let mut updates = match client.watch_keys(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Ended::Refused(status),
        };
        loop {
            let update = match tokio::time::timeout(QUIET_LIMIT, updates.message()).await {
                Err(_) => return Ended::Quiet,
                Ok(Err(status)) => return Ended::Refused(status),
                Ok(Ok(None)) => return Ended::Closed,
                Ok(Ok(Some(update))) => update,
            };
            match self.apply(update, table) {
                Ok(Some(keys)) => log(
                    Level::Info,
                    &format!("keygate-envoy: key table snapshot from the feed: {keys} keys"),
                ),
                Ok(None) => {}
                Err(error) => return Ended::BadUpdate(error),
            }
        }
    }

    /// Applies one update: into the snapshot being built (put in place of
    /// `table` once complete), else into `table` itself. The size of the
    /// table when it completed a snapshot. An update that cannot be read
    /// changes nothing.
    pub fn apply(
        &mut self,
        update: KeyTableUpdate,
        table: &SharedTable,
    ) -> Result<Option<usize>, TableError> {
        let changes = Changes::read(update.keys, &update.removed_key_ids)?;
        if update.snapshot_begins {
            self.building = Some(KeyTable::default());
        }
        let Some(building) = self.building.as_mut() else {
            // Before any snapshot a change has no table to go to: the feed
            // always sends one first, so this is only a heartbeat.
            table.change(changes);
            return Ok(None);
        };
        changes.apply_to(building);
        if !update.snapshot_complete {
            return Ok(None);
        }
        let complete = self.building.take().unwrap_or_default();
        let keys = complete.len();
        table.replace(complete);
        self.snapshots += 1;
        Ok(Some(keys))
    }
}
