//! Cross-replica cache invalidation through Postgres `LISTEN/NOTIFY`.
//!
//! Every mutation that can change a Check outcome notifies
//! [`INVALIDATION_CHANNEL`] in its own transaction (`key:<uuid>` or
//! `owner:<id>`). Each replica listens and evicts.
//!
//! Notifications sent while the listener is disconnected are lost. The cache
//! is not cleared at the moment of disconnection, because a database outage
//! is exactly when cached keys must keep being answered; instead every
//! (re)connect clears the whole cache before notifications are trusted again,
//! and the cache TTL bounds staleness in between.

use std::{sync::Arc, time::Duration};

use sqlx::{postgres::PgListener, PgPool};
use uuid::Uuid;

use crate::{cache::KeyCache, ratelimit::RateLimiters, store::INVALIDATION_CHANNEL};

/// An invalidation message as sent on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Key(Uuid),
    Owner(String),
}

impl Invalidation {
    pub fn parse(payload: &str) -> Option<Self> {
        match payload.split_once(':')? {
            ("key", id) => Uuid::parse_str(id).ok().map(Invalidation::Key),
            ("owner", owner) if !owner.is_empty() => Some(Invalidation::Owner(owner.to_owned())),
            _ => None,
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens until `stop` resolves, reconnecting with backoff. `first_connect`
/// fires once the first subscription is in place, so the caller can hold
/// traffic until no revocation can slip past unheard.
pub async fn listen(
    pool: PgPool,
    cache: Arc<KeyCache>,
    limiters: Arc<RateLimiters>,
    stop: impl std::future::Future<Output = ()>,
    first_connect: tokio::sync::oneshot::Sender<()>,
) {
    let mut first_connect = Some(first_connect);
    tokio::pin!(stop);
    let received = metrics::counter!("keygate_invalidations_total");
    let reconnects = metrics::counter!("keygate_listener_reconnects_total");
    let clears = metrics::counter!("keygate_cache_clears_total");
    let up = metrics::gauge!("keygate_listener_connected");
    up.set(0.0);
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            // We rely on our own reconnect (which clears the cache), not on
            // sqlx's silent one.
            listener.ignore_pool_close_event(true);
            listener.listen(INVALIDATION_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = &mut stop => return,
            result = connected => match result {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "invalidation listener cannot connect");
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        if !first {
            reconnects.increment(1);
        }
        first = false;
        // Whatever was notified before this point may have been missed.
        cache.clear();
        clears.increment(1);
        backoff = Duration::from_millis(100);
        up.set(1.0);
        tracing::info!("invalidation listener connected");
        if let Some(first_connect) = first_connect.take() {
            let _ = first_connect.send(());
        }
        loop {
            let notification = tokio::select! {
                () = &mut stop => return,
                n = listener.try_recv() => n,
            };
            match notification {
                Ok(Some(notification)) => {
                    received.increment(1);
                    match Invalidation::parse(notification.payload()) {
                        Some(Invalidation::Key(id)) => {
                            cache.invalidate_key(id).await;
                            limiters.forget(id);
                        }
                        Some(Invalidation::Owner(owner)) => cache.invalidate_owner(&owner),
                        None => {
                            tracing::warn!(
                                payload = notification.payload(),
                                "unknown invalidation; clearing the cache"
                            );
                            cache.clear();
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    up.set(0.0);
                    tracing::warn!("invalidation listener lost its connection; reconnecting (the cache is cleared once it is back)");
                    break;
                }
            }
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
