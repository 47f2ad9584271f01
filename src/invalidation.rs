//! Cross-replica cache invalidation through Postgres `LISTEN/NOTIFY`.
//!
//! Every mutation that can change a Check outcome notifies
//! [`INVALIDATION_CHANNEL`] in its own transaction (`key:<uuid>` or
//! `owner:<id>`), and creates and rotations name the new key on
//! [`ISSUED_CHANNEL`]. Each replica listens, evicts, and adds new keys to
//! its set of issued keys. A new key evicts nothing: an entry a Check filled
//! for it before the notification arrived is current.
//!
//! Notifications sent while the listener is disconnected are lost. The cache
//! is not cleared at the moment of disconnection, because a database outage
//! is exactly when cached keys must keep being answered; instead every
//! (re)connect clears the whole cache and refills the issued-key set before
//! notifications are trusted again, and the cache TTL bounds staleness in
//! between. The set is not trusted while the listener is away.
//!
//! A connection can also die silently (a peer or middlebox dropping packets
//! without a reset): the listener then hears nothing, which looks like
//! quiet. So every second it sends a NOTIFY to a channel of its own through
//! its own connection, and a heartbeat that has not come back within
//! [`HEARTBEAT_DEADLINE`] condemns the connection: it is replaced, and the
//! replacement clears the cache as any reconnect does.

use std::time::{Duration, Instant};

use sqlx::{
    postgres::{PgListener, PgPoolOptions},
    PgPool,
};
use uuid::Uuid;

use crate::{
    replica_state::ReplicaKeyState,
    store::{Store, StoreError, INVALIDATION_CHANNEL, ISSUED_CHANNEL},
};

/// How long a reconnect waits for unspent credits to go back.
const RETURN_CREDITS_WAIT: Duration = Duration::from_secs(2);

/// An invalidation message as sent on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Key(Uuid),
    Owner(String),
}

impl Invalidation {
    pub fn parse(payload: &str) -> Option<Self> {
        match payload.split_once(':')? {
            ("key", id) => Uuid::try_parse(id).ok().map(Invalidation::Key),
            ("owner", owner) if !owner.is_empty() => Some(Invalidation::Owner(owner.to_owned())),
            _ => None,
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the listener sends itself a heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A connection whose heartbeat has not come back within this is dead.
pub const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(3);
/// Bound on opening the LISTEN connection and refilling the issued-key set.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a (re)connect did not produce a working listener.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot LISTEN")]
    Listen(#[from] sqlx::Error),
    #[error("cannot read the issued keys")]
    Issued(#[from] StoreError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The gauges and counters the listener keeps.
struct ListenerMetrics {
    received: metrics::Counter,
    reconnects: metrics::Counter,
    clears: metrics::Counter,
    up: metrics::Gauge,
    heartbeat_age: metrics::Gauge,
    issued: metrics::Gauge,
}

/// Listens until `stop` resolves, reconnecting with backoff. `first_connect`
/// fires once the first subscription is in place, so the caller can hold
/// traffic until no revocation can slip past unheard.
pub async fn listen(
    store: Store,
    replica: ReplicaKeyState,
    stop: impl std::future::Future<Output = ()>,
    first_connect: tokio::sync::oneshot::Sender<()>,
) {
    let Some(pool) = store.postgres_pool().cloned() else {
        return;
    };
    let cache = replica.cache();
    let mut first_connect = Some(first_connect);
    tokio::pin!(stop);
    let metrics = ListenerMetrics {
        received: metrics::counter!("keygate_invalidations_total"),
        reconnects: metrics::counter!("keygate_listener_reconnects_total"),
        clears: metrics::counter!("keygate_cache_clears_total"),
        up: metrics::gauge!("keygate_listener_connected"),
        heartbeat_age: metrics::gauge!("keygate_listener_heartbeat_age_seconds"),
        issued: metrics::gauge!("keygate_issued_keys"),
    };
    metrics.up.set(0.0);
    // A channel of this process's own, so replicas do not hear each other's
    // heartbeats (and replicas that predate heartbeats hear none).
    let heartbeat_channel = format!("keygate_heartbeat_{}", Uuid::new_v4().simple());
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&listener_pool(&pool)).await?;
            // We rely on our own reconnect (which clears the cache), not on
            // sqlx's silent one.
            listener.ignore_pool_close_event(true);
            listener
                .listen_all([
                    INVALIDATION_CHANNEL,
                    ISSUED_CHANNEL,
                    heartbeat_channel.as_str(),
                ])
                .await?;
            Ok::<_, ConnectError>(listener)
        };
        let mut listener = tokio::select! {
            () = &mut stop => return,
            result = bounded(connected) => match result {
                Ok(listener) => listener,
                Err(error) => {
                    let Some(next) = retry_after(&error, backoff, &mut stop).await else {
                        return;
                    };
                    backoff = next;
                    continue;
                }
            },
        };
        if !first {
            metrics.reconnects.increment(1);
        }
        first = false;
        // Whatever was notified before LISTEN may have been missed. Cleared
        // before anything else is read: the pool's other connections may be
        // as dead as the one the heartbeat condemned, and a revoke heard of
        // late must not wait on them.
        replica.forget_everything();
        // Credits set anew while away make held leases void; the rest go
        // back and are leased again. Bounded: the pool may be as dead as
        // the listener was, and what is not returned is only lost, never
        // spent twice.
        if tokio::time::timeout(RETURN_CREDITS_WAIT, replica.credits().return_all())
            .await
            .is_err()
        {
            tracing::warn!("could not return all unspent credits after reconnecting");
        }
        metrics.clears.increment(1);
        // Read after LISTEN: a key created meanwhile is in the read or is
        // notified after it.
        let issued = tokio::select! {
            () = &mut stop => return,
            result = bounded(async { Ok(store.issued_hash_prefixes().await?) }) => match result {
                Ok(issued) => issued,
                Err(error) => {
                    let Some(next) = retry_after(&error, backoff, &mut stop).await else {
                        return;
                    };
                    backoff = next;
                    continue;
                }
            },
        };
        cache.issued().fill(issued);
        metrics.issued.set(cache.issued().len() as f64);
        backoff = Duration::from_millis(100);
        metrics.up.set(1.0);
        tracing::info!("invalidation listener connected");
        if let Some(first_connect) = first_connect.take() {
            let _ = first_connect.send(());
        }
        let lost = tokio::select! {
            () = &mut stop => return,
            lost = serve(&mut listener, &heartbeat_channel, &store, &replica, &metrics) => lost,
        };
        cache.issued().distrust();
        metrics.up.set(0.0);
        tracing::warn!(cause = lost, "invalidation listener lost its connection; reconnecting (the cache is cleared once it is back)");
    }
}

/// A connect step, bounded by [`CONNECT_TIMEOUT`].
async fn bounded<T>(
    step: impl std::future::Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    tokio::time::timeout(CONNECT_TIMEOUT, step)
        .await
        .unwrap_or(Err(ConnectError::Timeout(CONNECT_TIMEOUT)))
}

/// Logs a failed (re)connect and waits `backoff`; the next backoff, or
/// `None` when `stop` resolved meanwhile.
async fn retry_after(
    error: &ConnectError,
    backoff: Duration,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<Duration> {
    tracing::warn!(error = %crate::grpc::status::chain(error), retry_in = ?backoff, "invalidation listener cannot connect");
    tokio::select! {
        () = stop.as_mut() => return None,
        () = tokio::time::sleep(backoff) => {}
    }
    Some((backoff * 2).min(MAX_BACKOFF))
}

/// A pool of one connection for one LISTEN session. It is never reused: a
/// connection given up as dead is closed on release instead of being tested
/// and handed out again.
fn listener_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_release(|_, _| Box::pin(async { Ok(false) }))
        .connect_lazy_with((*pool.connect_options()).clone())
}

/// Applies notifications and keeps the heartbeat going until the connection
/// is lost or its heartbeat stops coming back; returns why.
async fn serve(
    listener: &mut PgListener,
    heartbeat_channel: &str,
    store: &Store,
    replica: &ReplicaKeyState,
    metrics: &ListenerMetrics,
) -> &'static str {
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    let mut heard = Instant::now();
    let mut sent: u64 = 0;
    loop {
        tokio::select! {
            notification = listener.try_recv() => match notification {
                Ok(Some(notification)) if notification.channel() == heartbeat_channel => {
                    heard = Instant::now();
                    metrics.heartbeat_age.set(0.0);
                }
                Ok(Some(notification)) => {
                    metrics.received.increment(1);
                    let applied = if notification.channel() == ISSUED_CHANNEL {
                        issued(notification.payload(), store, replica).await
                    } else {
                        apply(notification.payload(), replica).await;
                        Ok(())
                    };
                    if let Err(error) = applied {
                        // The key may be missing from the issued-key set:
                        // refill it through a reconnect.
                        tracing::warn!(error = %crate::grpc::status::chain(&error), "cannot read a notified key");
                        return "a notified key could not be read";
                    }
                    metrics.issued.set(replica.cache().issued().len() as f64);
                }
                Ok(None) | Err(_) => return "the connection closed",
            },
            _ = ticker.tick() => {
                let age = heard.elapsed();
                metrics.heartbeat_age.set(age.as_secs_f64());
                if age > HEARTBEAT_DEADLINE {
                    return "its heartbeat did not come back";
                }
                sent += 1;
                let payload = sent.to_string();
                let send = crate::store::heartbeat(listener, heartbeat_channel, &payload);
                match tokio::time::timeout(HEARTBEAT_DEADLINE, send).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "its heartbeat could not be sent",
                    Err(_) => return "its heartbeat could not be sent in time",
                }
            }
        }
    }
}

/// Adds a newly issued key, named by id, to the set of issued keys. The
/// read is bounded by [`HEARTBEAT_DEADLINE`]: while it waits, this loop
/// neither hears notifications nor checks its heartbeat, and a store that
/// does not answer is as likely dead as the listener's own connection.
async fn issued(payload: &str, store: &Store, replica: &ReplicaKeyState) -> Result<(), StoreError> {
    let cache = replica.cache();
    if payload == crate::store::ISSUED_ALL {
        let prefixes = tokio::time::timeout(HEARTBEAT_DEADLINE, store.issued_hash_prefixes())
            .await
            .map_err(|_| StoreError::Timeout(HEARTBEAT_DEADLINE))??;
        // Only imports announce every key at once; the key feed leaves
        // imported keys out, so its followers need not hear of it.
        cache.issued().fill(prefixes);
        return Ok(());
    }
    let Ok(id) = Uuid::try_parse(payload) else {
        tracing::warn!(payload, "unknown issued-key notification; ignored");
        return Ok(());
    };
    let prefix = tokio::time::timeout(HEARTBEAT_DEADLINE, store.hash_prefix_of(id))
        .await
        .map_err(|_| StoreError::Timeout(HEARTBEAT_DEADLINE))??;
    if let Some(prefix) = prefix {
        cache.issued().insert(prefix);
        replica.key_issued(id);
    }
    Ok(())
}

/// Acts on one invalidation payload.
async fn apply(payload: &str, replica: &ReplicaKeyState) {
    match Invalidation::parse(payload) {
        Some(Invalidation::Key(id)) => replica.forget_key(id).await,
        Some(Invalidation::Owner(owner)) => replica.forget_owner(&owner),
        None => {
            tracing::warn!(payload, "unknown invalidation; clearing the cache");
            replica.forget_everything();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        let id = Uuid::now_v7();
        assert_eq!(
            Invalidation::parse(&format!("key:{id}")),
            Some(Invalidation::Key(id))
        );
        assert_eq!(
            Invalidation::parse("owner:acme:eu"),
            Some(Invalidation::Owner("acme:eu".into()))
        );
        assert_eq!(Invalidation::parse("key:nope"), None);
        assert_eq!(Invalidation::parse("owner:"), None);
        assert_eq!(Invalidation::parse("garbage"), None);
    }
}
