//! What one replica holds about keys beside the database: the cached
//! records, the local rate-limit windows and the credits it has leased.
//!
//! A key that changed is forgotten here in one step, whichever way the news
//! arrives: the admin call that made the change on this replica, or the
//! PostgreSQL notification that tells every other replica
//! (docs/architecture.md, "The path of an invalidation"). Both paths call
//! [`ReplicaKeyState::forget_key`], so they cannot drift apart. The same
//! calls tell the key feed's followers ([`KeyEvents`]).

use std::sync::Arc;

use uuid::Uuid;

use crate::{
    cache::KeyCache,
    credits::CreditLedger,
    key_events::{KeyEvent, KeyEvents},
    ratelimit::RateLimiters,
};

#[derive(Clone)]
pub struct ReplicaKeyState {
    cache: Arc<KeyCache>,
    limiters: Arc<RateLimiters>,
    credits: Arc<CreditLedger>,
    events: KeyEvents,
}

impl ReplicaKeyState {
    pub fn new(
        cache: Arc<KeyCache>,
        limiters: Arc<RateLimiters>,
        credits: Arc<CreditLedger>,
    ) -> Self {
        Self {
            cache,
            limiters,
            credits,
            events: KeyEvents::default(),
        }
    }

    /// Where the key feed hears of changed keys.
    pub fn events(&self) -> &KeyEvents {
        &self.events
    }

    pub fn cache(&self) -> &Arc<KeyCache> {
        &self.cache
    }

    pub fn credits(&self) -> &Arc<CreditLedger> {
        &self.credits
    }

    /// After a key changed (updated, rotated, revoked): the next Check reads
    /// it from the database, its rate-limit window starts afresh under the
    /// settings it has now, and the credits this replica leased for it go
    /// back, so that the database's count is the one that holds.
    pub async fn forget_key(&self, id: Uuid) {
        self.cache.invalidate_key(id).await;
        self.limiters.forget(id);
        self.credits.release(id).await;
        self.events.tell(KeyEvent::Key(id));
    }

    /// After a key was issued and committed: the key feed's followers add
    /// it. (Check needs no news: the issued-key set learnt of it before the
    /// commit, and a miss reads the store.)
    pub fn key_issued(&self, id: Uuid) {
        self.events.tell(KeyEvent::Key(id));
    }

    /// After any key may have changed unheard of (the invalidation
    /// listener reconnected, a notification could not be read, a prune
    /// changed keys it does not name): every key is read again, and the key
    /// feed's followers start again from a snapshot.
    pub fn forget_everything(&self) {
        self.cache.clear();
        self.events.tell(KeyEvent::Everything);
    }

    /// After an owner was suspended or resumed: every key of theirs is read
    /// again.
    pub fn forget_owner(&self, owner_id: &str) {
        self.cache.invalidate_owner(owner_id);
        self.events.tell(KeyEvent::Owner(owner_id.to_owned()));
    }
}
